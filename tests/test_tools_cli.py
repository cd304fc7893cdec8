"""Tools on the command line (issue 19): ``--tool``, ``--allow-tool``, ``[tools]`` in config,
``chatcli tools list``, the REPL's ``/tools``, and the rounds in ``sessions show`` and exports.
Off a terminal a tool that acts is refused unless allow-listed; the model is told so."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from chatcli.store import Stores
from tests.conftest import Isolated, assert_one_line_error, run
from tests.servers import FakeOpenAI
from tests.test_repl import ENTER, Harness


def call(index: int, name: str, arguments: dict[str, Any] | str, call_id: str) -> dict[str, Any]:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {
        "index": index,
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": text},
    }


def calls_reply(*calls: dict[str, Any], text: str = "") -> dict[str, Any]:
    return {
        "pieces": [text] if text else [],
        "tool_call_chunks": [list(calls)],
        "finish_reason": "tool_calls",
    }


def text_reply(text: str) -> dict[str, Any]:
    return {"pieces": [text], "tool_call_chunks": [], "finish_reason": "stop"}


def ask(fake: FakeOpenAI, *args: str) -> list[str]:
    return ["ask", "-p", "ollama", "-m", "m", "--base-url", fake.base_url, *args]


def tool_messages(fake: FakeOpenAI, index: int = -1) -> list[dict[str, Any]]:
    chats = [r for r in fake.requests if r.path.endswith("/chat/completions")]
    return [m for m in chats[index].body["messages"] if m["role"] == "tool"]


def test_a_read_only_tool_runs_off_a_terminal_and_the_answer_follows(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    (isolated.root / "notes.txt").write_text("the code is 4711\n")
    fake.replies = [
        calls_reply(call(0, "read_file", {"path": "notes.txt"}, "c1"), text="Reading."),
        text_reply("The code is 4711."),
    ]
    result = run(ask(fake, "--tool", "read_file", "what is the code?"), isolated)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Reading.\n\nThe code is 4711.\n"
    assert tool_messages(fake) == [
        {"role": "tool", "tool_call_id": "c1", "content": "the code is 4711\n"}
    ]
    assert '⚙ read_file {"path": "notes.txt"} → 17 characters, 1 lines' in result.stderr
    tools = next(r for r in fake.requests if r.path.endswith("/chat/completions")).body["tools"]
    assert [t["function"]["name"] for t in tools] == ["read_file"]


def test_off_a_terminal_run_shell_is_refused_unless_allow_listed(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    target = isolated.root / "ran.txt"
    command = {"command": f"echo ran > {target}"}
    fake.replies = [calls_reply(call(0, "run_shell", command, "c1")), text_reply("I could not.")]
    result = run(ask(fake, "--tool", "run_shell", "make the file"), isolated)
    assert result.returncode == 0 and not target.exists()
    [refusal] = tool_messages(fake)
    assert "nobody is at a terminal" in refusal["content"]
    assert "--allow-tool run_shell" in refusal["content"]

    fake.replies = [calls_reply(call(0, "run_shell", command, "c2")), text_reply("Done.")]
    result = run(
        ask(fake, "--tool", "run_shell", "--allow-tool", "run_shell", "make the file"), isolated
    )
    assert result.returncode == 0 and target.read_text() == "ran\n"
    assert tool_messages(fake)[0]["content"] == "[exit status 0]"


def test_tools_in_config_are_on_for_every_question_and_allow_lists_there_too(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    target = isolated.root / "ran.txt"
    isolated.write_config('[tools]\nenabled = ["run_shell"]\nallow = ["run_shell"]\n')
    command = {"command": f"echo ran > {target}"}
    fake.replies = [calls_reply(call(0, "run_shell", command, "c1")), text_reply("Done.")]
    result = run(ask(fake, "make the file"), isolated)
    assert result.returncode == 0, result.stderr
    assert target.read_text() == "ran\n"


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ("[tools]\nmax_rounds = 0\n", "tools.max_rounds must be 1 to 100"),
        ('[tools]\nenabled = "read_file"\n', "tools.enabled has the wrong type"),
        ('[tools]\nrun = ["x"]\n', "unknown setting tools.run"),
        ('[tools]\nenabled = ["format_disk"]\n', "no tool or MCP server 'format_disk'"),
        ("[mcp]\nclients = 1\n", "unknown setting mcp.clients"),
    ],
)
def test_bad_tool_settings_are_one_line_errors(
    fake: FakeOpenAI, isolated: Isolated, config: str, fragment: str
) -> None:
    isolated.write_config(config)
    result = run(ask(fake, "hi"), isolated)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, fragment)
    assert not [r for r in fake.requests if r.path.endswith("/chat/completions")]


def test_unknown_tools_and_servers_and_providers_without_tools_are_refused(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    result = run(ask(fake, "--tool", "format_disk", "hi"), isolated)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "no tool or MCP server 'format_disk'", "read_file")
    result = run(ask(fake, "--mcp", "nowhere", "hi"), isolated)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "--mcp nowhere: no such MCP server")
    result = run(["ask", "-p", "gptalk", "--tool", "read_file", "hi"], isolated)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "gptalk cannot call tools (--tool, --mcp)")
    assert not fake.requests


def test_tools_list_shows_the_built_in_tools_and_whether_they_ask(isolated: Isolated) -> None:
    result = run(["tools", "list"], isolated)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [
        "read_file", "list_dir", "search_text", "run_shell",
    ]  # fmt: skip
    assert "reads only" in lines[0] and "asks first" in lines[3]
    rows = json.loads(run(["tools", "list", "--json"], isolated).stdout)
    assert rows[0]["parameters"]["required"] == ["path"] and rows[3]["asks"] is True


def test_sessions_show_and_export_give_the_calls_and_results_in_place(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    (isolated.root / "notes.txt").write_text("```\nfenced\n```\n")
    fake.replies = [
        calls_reply(call(0, "read_file", {"path": "notes.txt"}, "c1"), text="Reading."),
        text_reply("It holds a fence."),
    ]
    assert run(ask(fake, "-S", "t", "--tool", "read_file", "look"), isolated).returncode == 0
    shown = run(["sessions", "show", "t"], isolated).stdout
    assert shown.index("Reading.") < shown.index("Tool call:"), shown
    assert shown.index("Tool call:") < shown.index("fenced") < shown.index("It holds a fence.")
    exported = run(["sessions", "export", "t", "--format", "md"], isolated).stdout
    assert '**Tool call:** `read_file` `{"path": "notes.txt"}`' in exported
    assert "````\n```\nfenced\n```\n````" in exported  # a longer fence: the text cannot close it
    data = json.loads(run(["sessions", "export", "t", "--format", "json"], isolated).stdout)
    [rounds] = [m["tool_rounds"] for m in data["messages"] if m["role"] == "assistant"]
    assert rounds == [
        {
            "text": "Reading.",
            "calls": [
                {
                    "id": "c1",
                    "name": "read_file",
                    "arguments": '{"path": "notes.txt"}',
                    "result": "```\nfenced\n```\n",
                    "failed": False,
                }
            ],
        }
    ]


def test_continuing_with_tools_sends_the_rounds_back(fake: FakeOpenAI, isolated: Isolated) -> None:
    (isolated.root / "notes.txt").write_text("4711\n")
    fake.replies = [
        calls_reply(call(0, "read_file", {"path": "notes.txt"}, "c1")),
        text_reply("4711."),
    ]
    assert run(ask(fake, "--tool", "read_file", "code?"), isolated).returncode == 0
    fake.replies = [text_reply("Sure.")]
    assert run(ask(fake, "-c", "--tool", "read_file", "sure?"), isolated).returncode == 0
    chats = [r for r in fake.requests if r.path.endswith("/chat/completions")]
    roles = [m["role"] for m in chats[-1].body["messages"]]
    assert roles == ["user", "assistant", "tool", "assistant", "user"]


def test_the_repl_turns_tools_on_and_off_with_slash_tools(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    from chatcli.config import load_settings
    from chatcli.tools.setup import ToolSet

    harness = Harness(fake, isolated.root)
    settings = load_settings(
        __import__("chatcli.config").config.Paths.from_env(isolated.env), isolated.env
    )
    harness.conversation.toolset = ToolSet(settings.tools, cwd=isolated.root, env=isolated.env)
    (isolated.root / "notes.txt").write_text("4711\n")
    fake.replies = [
        text_reply("no tools yet"),
        calls_reply(call(0, "read_file", {"path": "notes.txt"}, "c1")),
        text_reply("4711."),
    ]
    out = harness.run(f"/tools{ENTER}first{ENTER}/tools on read_file{ENTER}second{ENTER}")
    assert "tools on: none" in out and "also known: read_file, list_dir" in out
    assert "read_file: Read a UTF-8 text file" in out
    chats = [r.body for r in fake.requests if r.path.endswith("/chat/completions")]
    assert "tools" not in chats[0]
    assert [t["function"]["name"] for t in chats[1]["tools"]] == ["read_file"]
    assert "4711." in out
    stores = Stores(isolated.root / "data")
    assert harness.conversation.session is not None
    answers = [
        m
        for m in stores.sessions.messages(harness.conversation.session.id)
        if m.role == "assistant"
    ]
    assert answers[-1].tools is not None and '"c1"' in answers[-1].tools
    out = harness.run(f"/tools off read_file{ENTER}/tools off read_file{ENTER}")
    assert "'read_file' is not on" in out


def test_a_tool_name_from_the_model_cannot_reach_the_terminal_raw(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    fake.replies = [
        calls_reply(call(0, "read_file", '{"path": "\x1b[2J\x1b]52;c;aGk=\x07"}', "c1")),
        text_reply("ok"),
    ]
    result = run(ask(fake, "--tool", "read_file", "x"), isolated)
    assert result.returncode == 0
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    assert "␛[2J" in result.stderr  # shown, made visible


def test_file_tools_stay_inside_the_working_directory(
    fake: FakeOpenAI, isolated: Isolated, tmp_path: Path
) -> None:
    secret = tmp_path.parent / f"{tmp_path.name}-secret.txt"  # outside (cwd is tmp_path)
    secret.write_text("hunter2\n")
    fake.replies = [
        calls_reply(call(0, "read_file", {"path": str(secret)}, "c1")),
        text_reply("no"),
    ]
    assert run(ask(fake, "--tool", "read_file", "x"), isolated).returncode == 0
    [refused] = tool_messages(fake)
    assert "hunter2" not in refused["content"] and "outside" in refused["content"]


def test_json_output_carries_the_rounds(fake: FakeOpenAI, isolated: Isolated) -> None:
    fake.replies = [calls_reply(call(0, "list_dir", {}, "c1")), text_reply("Empty-ish.")]
    (isolated.root / "a.txt").write_text("x")
    result = run(ask(fake, "--tool", "list_dir", "--json", "what is here?"), isolated)
    data = json.loads(result.stdout)
    assert data["text"] == "Empty-ish." and data["status"] == "complete"
    [done] = data["tool_rounds"]
    assert done["calls"][0]["name"] == "list_dir" and "a.txt" in done["calls"][0]["result"]


def test_a_command_from_the_model_cannot_print_the_keys(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    command = {"command": "echo key=$OPENAI_API_KEY"}
    fake.replies = [calls_reply(call(0, "run_shell", command, "c1")), text_reply("ok")]
    args = ask(fake, "--tool", "run_shell", "--allow-tool", "run_shell", "x")
    result = run(args, isolated, env={"OPENAI_API_KEY": "sk-secret-4711"})
    assert result.returncode == 0
    assert tool_messages(fake)[0]["content"] == "key=\n[exit status 0]"


def test_allow_lists_and_server_names_are_checked(fake: FakeOpenAI, isolated: Isolated) -> None:
    result = run(ask(fake, "--tool", "run_shell", "--allow-tool", "run_shel", "x"), isolated)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "--allow-tool run_shel: no such tool")
    isolated.write_config('[mcp.servers.read_file]\ncommand = "x"\n')
    result = run(ask(fake, "x"), isolated)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "mcp.servers.read_file", "a built-in tool's name")


def test_cmd_takes_no_tools(fake: FakeOpenAI, isolated: Isolated) -> None:
    cmd = ["cmd", "-p", "ollama", "-m", "m", "--base-url", fake.base_url]
    result = run([*cmd, "--tool", "read_file", "list files"], isolated)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "this command takes no tools")
    isolated.write_config('[tools]\nenabled = ["read_file"]\n')
    fake.pieces = ["ls -la"]
    result = run([*cmd, "list files"], isolated)
    assert result.returncode == 0 and result.stdout == "ls -la\n"
    assert "tools" not in fake.requests[-1].body  # config's tools are not for commands


def test_slash_tools_on_a_server_that_cannot_start_leaves_it_off(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    from chatcli.tools.mcp import ServerConfig
    from chatcli.tools.setup import ToolSet, ToolSettings

    harness = Harness(fake, isolated.root)
    settings = ToolSettings(servers={"gone": ServerConfig("gone", command="/nonexistent/x")})
    harness.conversation.toolset = ToolSet(settings, cwd=isolated.root, env=isolated.env)
    pytest.importorskip("mcp")
    out = harness.run(f"/tools on gone{ENTER}hello{ENTER}")
    assert "MCP server gone" in out
    assert harness.conversation.toolset.servers == []
    assert "Hello, world!" in out  # the next question goes on without it
