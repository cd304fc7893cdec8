"""The fault matrix: every protocol against every fault, through the real ``chatcli`` binary.

Each cell asserts the exit code, one line on stderr naming the provider (no traceback),
nothing on stdout but answer text, and a session database that kept the question (and any
partial answer, marked interrupted). Retries are off here (--retries 0) so each fault shows
once; tests/test_retries.py proves retries and fallback by counting requests.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import pytest

from chatcli.store import Cookie, Stores
from tests.conftest import Isolated, run
from tests.fakes.aichat import FakeAichat
from tests.fakes.anthropic import API_KEY, FakeAnthropic, error_body
from tests.fakes.chatgptt import FakeChatGptt
from tests.fakes.fakegpt import FakeFakeGpt
from tests.fakes.gptalk import FakeGPTalk
from tests.fakes.opchatgpts import FakeOpchatgpts
from tests.faults import HangingPort, failing_resolver, refusing_port
from tests.servers import AppServer, FakeOpenAI

#: provider -> (fake class, the path whose answer carries the reply, the root's path suffix)
PROTOCOLS: dict[str, tuple[Any, str, str]] = {
    "ollama": (FakeOpenAI, "/v1/chat/completions", "/v1"),
    "gptalk": (FakeGPTalk, "/api/chatgpt/chatapi/stream", ""),
    "chatgptt": (FakeChatGptt, "/wp-admin/admin-ajax.php", ""),
    "opchatgpts": (FakeOpchatgpts, "/wp-json/mwai-ui/v1/chats/submit", ""),
    "fakegpt": (FakeFakeGpt, "/api/conversation", ""),
    "aichat": (FakeAichat, "/api/text", ""),
    "anthropic": (FakeAnthropic, "/v1/messages", "/v1"),
}
#: fault -> a fragment of the one error line
HTTP_FAULTS = {
    "500": "HTTP 500",
    "502": "HTTP 502",
    "503": "HTTP 503",
    "429": "rate limited (HTTP 429",
    "html": "an HTML page titled '502 Bad Gateway'",
    "cloudflare": "blocked by Cloudflare",
    "malformed_json": "",
    "malformed_sse": "",
    "empty": "",
    "stall": "went silent",
}
#: protocols whose reply is a stream (the others answer with one JSON document)
STREAMING = {"ollama", "gptalk", "opchatgpts", "fakegpt", "anthropic"}
#: streaming protocols that read a JSON reply too (a server that ignores ``stream``)
READS_JSON = {"ollama", "anthropic"}


def credentials(name: str, isolated: Isolated) -> None:
    """What the provider needs before it sends anything: Aichat's cookies, Anthropic's key."""
    if name == "aichat":
        Stores(isolated.chatcli_home / "data").cookies.save([Cookie("chat-gpt.org", "a", "b")])
    if name == "anthropic":
        isolated.env["ANTHROPIC_API_KEY"] = API_KEY


def served(name: str, isolated: Isolated) -> Iterator[tuple[Any, str]]:
    fake_class, _, suffix = PROTOCOLS[name]
    fake = fake_class()
    if name == "aichat":
        Stores(isolated.chatcli_home / "data").cookies.save(
            [Cookie("chat-gpt.org", k, v, expires=time.time() + 3600)
             for k, v in fake.required_cookies.items()]
        )  # fmt: skip
    if name == "anthropic":
        credentials(name, isolated)
    if isinstance(fake, FakeOpenAI):
        server = AppServer(fake.app())
        server.start()
        try:
            yield fake, f"{server.url}{suffix}"
        finally:
            server.stop()
    else:
        with fake.serve():
            yield fake, f"{fake.base_url}{suffix}"


def ask(name: str, root: str, *extra: str) -> list[str]:
    model = ["-m", "m"] if name == "ollama" else []
    return ["ask", "-p", name, *model, "--base-url", root, "--retries", "0", "-S", "matrix",
            *extra, "the question"]  # fmt: skip


def stored(isolated: Isolated) -> list[tuple[str, str, str]]:
    db = sqlite3.connect(isolated.chatcli_home / "data" / "sessions.db")
    rows = db.execute("SELECT role, content, status FROM messages ORDER BY id").fetchall()
    db.close()
    return rows


def check(result: Any, name: str, fragment: str, isolated: Isolated, answer: str = "") -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"chatcli: {name}: "), lines[0]
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    shown = result.stdout.rstrip("\n")
    assert not shown or answer.startswith(shown), result.stdout
    rows = stored(isolated)
    assert rows[0] == ("user", "the question", "complete")  # the question is never lost
    if shown:
        assert rows[1][2] == "interrupted" and rows[1][1] == shown
    else:
        assert len(rows) == 1


@pytest.mark.parametrize("fault", list(HTTP_FAULTS))
@pytest.mark.parametrize("name", list(PROTOCOLS))
def test_http_faults(name: str, fault: str, isolated: Isolated) -> None:
    if fault == "malformed_sse" and name not in STREAMING:
        pytest.skip("this protocol answers with JSON, not a stream")
    if fault == "malformed_json" and name in STREAMING - READS_JSON:
        pytest.skip("this protocol streams; malformed_sse covers it")
    for fake, root in served(name, isolated):
        path = PROTOCOLS[name][1]
        fake.faults.set(fault, path)
        extra = ["--timeout", "0.5"] if fault == "stall" else []
        result = run(ask(name, root, *extra), isolated)
        assert fake.faults.hits >= 1, "the fault was never reached"
        check(result, name, HTTP_FAULTS[fault], isolated)


@pytest.mark.parametrize("name", list(PROTOCOLS))
def test_connection_refused(name: str, isolated: Isolated) -> None:
    credentials(name, isolated)
    root = f"http://localhost:{refusing_port()}" + PROTOCOLS[name][2]
    check(run(ask(name, root), isolated), name, "connection refused", isolated)


@pytest.mark.parametrize("name", list(PROTOCOLS))
def test_unknown_host(name: str, isolated: Isolated) -> None:
    credentials(name, isolated)
    env = failing_resolver(isolated.root / "resolver", "no-such-host.test")
    root = "http://no-such-host.test" + PROTOCOLS[name][2]
    result = run(ask(name, root), isolated, env=env)
    check(result, name, "cannot resolve the host", isolated)


@pytest.mark.parametrize("name", list(PROTOCOLS))
def test_connect_timeout(name: str, isolated: Isolated) -> None:
    credentials(name, isolated)
    hanging = HangingPort()
    try:
        root = f"http://localhost:{hanging.port}" + PROTOCOLS[name][2]
        result = run(ask(name, root, "--timeout", "0.5"), isolated)
    finally:
        hanging.close()
    check(result, name, "timed out connecting", isolated)


CUT_MODES = {
    "ollama": "cut", "gptalk": "cut", "opchatgpts": "cut", "fakegpt": "cut", "anthropic": "cut",
}  # fmt: skip


@pytest.mark.parametrize("name", list(CUT_MODES))
def test_a_stream_cut_before_its_end_marker_keeps_the_part(name: str, isolated: Isolated) -> None:
    for fake, root in served(name, isolated):
        fake.mode = CUT_MODES[name]
        result = run(ask(name, root), isolated)
        check(result, name, "ended before", isolated, answer="".join(fake.pieces))
        assert result.stdout.strip(), "some text was shown before the cut"


@pytest.mark.parametrize("name", ["ollama", "anthropic"])
def test_a_stall_mid_stream_keeps_the_part(name: str, isolated: Isolated) -> None:
    for fake, root in served(name, isolated):
        fake.mode, fake.stall_seconds = "stall", 10
        result = run(ask(name, root, "--timeout", "0.5"), isolated)
        check(result, name, "went silent", isolated, answer="".join(fake.pieces))
        assert result.stdout == "Hello\n"


#: Anthropic's own faults: fault -> (the fake's setting, a fragment of the one error line)
ANTHROPIC_FAULTS: dict[str, tuple[dict[str, Any], str]] = {
    "529": ({"mode": "status", "status": 529, "body": error_body("overloaded_error", "Overloaded")},
            "HTTP 529"),
    "401": ({"mode": "status", "status": 401,
             "body": error_body("authentication_error", "invalid x-api-key")},
            "not authorised (HTTP 401"),
    "overloaded_event_first": ({"mode": "error_event", "error_after": 0},
                               "the service is overloaded (overloaded_error)"),
    "overloaded_event_mid_answer": ({"mode": "error_event", "error_after": 2},
                                    "the service is overloaded (overloaded_error)"),
    "dropped_connection": ({"mode": "drop", "error_after": 2}, "broke off mid-reply"),
}  # fmt: skip


@pytest.mark.parametrize("fault", list(ANTHROPIC_FAULTS))
def test_anthropic_faults(fault: str, isolated: Isolated) -> None:
    settings, fragment = ANTHROPIC_FAULTS[fault]
    for fake, root in served("anthropic", isolated):
        for key, value in settings.items():
            setattr(fake, key, value)
        result = run(ask("anthropic", root), isolated)
        check(result, "anthropic", fragment, isolated, answer="".join(fake.pieces))
        shown_before_the_fault = fake.error_after > 0 and fake.mode != "status"
        assert bool(result.stdout) == shown_before_the_fault, result.stdout
