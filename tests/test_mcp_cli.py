"""MCP servers through the command line (issue 19): ``[mcp.servers.NAME]`` in config.toml,
``--mcp NAME`` for a question, ``chatcli tools list``; the real test server over stdio, the
model's calls answered by it, and its tools that act refused off a terminal unless allowed.

The real binary runs these (the SDK reads the process environment to start a server, which
the in-process runner forbids chatcli's own code to do)."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import Isolated, assert_one_line_error, run_binary
from tests.servers import FakeOpenAI
from tests.test_mcp import HOSTILE, SERVER, needs_sdk
from tests.test_tools_cli import ask, call, calls_reply, text_reply, tool_messages

pytestmark = needs_sdk


@pytest.fixture
def configured(isolated: Isolated) -> Isolated:
    isolated.env["NO_PROXY"] = "*"
    isolated.write_config(
        "[mcp.servers.demo]\n"
        f"command = {json.dumps(sys.executable)}\n"
        f'args = [{json.dumps(str(SERVER))}, "stdio"]\n'
        'read_only = ["echo", "hostile"]\n'
        "timeout = 20\n"
    )
    return isolated


def test_a_question_with_mcp_calls_the_servers_tools(
    fake: FakeOpenAI, configured: Isolated
) -> None:
    fake.replies = [
        calls_reply(
            call(0, "demo__echo", {"text": "ping"}, "c1"),
            call(1, "demo__add", {"a": 2, "b": 3}, "c2"),
            call(2, "demo__hostile", {}, "c3"),
        ),
        text_reply("ping, and 5 I could not get."),
    ]
    result = run_binary(ask(fake, "--mcp", "demo", "go"), configured)
    assert result.returncode == 0, result.stderr
    offered = [t["function"]["name"] for t in fake.requests[0].body["tools"]]
    assert {"demo__echo", "demo__add", "demo__files_read"} <= set(offered)
    echo, add, hostile = tool_messages(fake)
    assert echo["content"] == "ping"
    assert "refused" in add["content"] and "--allow-tool demo__add" in add["content"]
    assert hostile["content"] == HOSTILE  # data for the model, as the server sent it
    assert not {"\x1b", "\x07", "\x9b"} & set(result.stderr)
    log = configured.chatcli_home / "state" / "mcp-demo.log"
    assert log.exists() and log.stat().st_mode & 0o077 == 0  # its stderr: private, off screen

    fake.replies = [calls_reply(call(0, "demo__add", {"a": 2, "b": 3}, "c4")), text_reply("5")]
    result = run_binary(ask(fake, "--mcp", "demo", "--allow-tool", "demo__add", "go"), configured)
    assert result.returncode == 0 and tool_messages(fake)[0]["content"] == "5"


def test_tools_list_asks_each_server_for_its_tools(configured: Isolated) -> None:
    result = run_binary(["tools", "list", "demo"], configured)
    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert "demo__echo" in names and "demo__files_read" in names and "read_file" not in names
    echo = next(line for line in result.stdout.splitlines() if line.startswith("demo__echo"))
    add = next(line for line in result.stdout.splitlines() if line.startswith("demo__add"))
    assert "reads only" in echo and "asks first" in add
    hostile = next(line for line in result.stdout.splitlines() if "hostile" in line)
    assert "\x1b" not in hostile  # the server's description, made safe


def test_a_server_that_cannot_start_is_one_line_and_nothing_is_asked(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    isolated.write_config('[mcp.servers.gone]\ncommand = "/nonexistent/mcp-server"\n')
    result = run_binary(ask(fake, "--mcp", "gone", "hi"), isolated)
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "MCP server gone", "not found")
    assert not fake.requests
    listed = run_binary(["tools", "list"], isolated)
    assert listed.returncode == 1 and "gone" in listed.stdout and "read_file" in listed.stdout


def test_bad_server_settings_are_one_line_errors(fake: FakeOpenAI, isolated: Isolated) -> None:
    isolated.write_config('[mcp.servers.both]\ncommand = "x"\nurl = "http://127.0.0.1:1/mcp"\n')
    result = run_binary(ask(fake, "hi"), isolated)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "mcp.servers.both")
