"""Small fixes from a newcomer's trial: exports, short id prefixes, empty streams, refused
requests, config typos and a local server that is not running."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from chatcli.errors import ProviderConnectionError
from chatcli.providers import http
from chatcli.store import Stores
from tests.conftest import Isolated, assert_one_line_error, run
from tests.faults import refusing_port
from tests.servers import AppServer, FakeOpenAI
from tests.test_small_screens import terminal_run

pytestmark = pytest.mark.usefixtures("fast_retries")


def ask(fake: FakeOpenAI, *args: str) -> list[str]:
    return ["ask", "-p", "ollama", "-m", "m", "--base-url", fake.base_url, *args]


def make_session(fake: FakeOpenAI, isolated: Isolated) -> None:
    assert run([*ask(fake), "-S", "notes", "What is a monad?"], isolated).returncode == 0


# -- 4. sessions export -o ------------------------------------------------------------------------


@pytest.fixture
def written(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The paths exports wrote through ``write_user_file`` (which still writes them)."""
    from chatcli.store import files

    paths: list[Path] = []
    real = files.write_user_file

    def spy(path: Path, data: bytes) -> None:
        paths.append(path)
        real(path, data)

    monkeypatch.setattr(files, "write_user_file", spy)
    return paths


@pytest.mark.parametrize(
    ("name", "json_expected"), [("out.json", True), ("OUT.JSON", True), ("out.md", False),
                                ("out.markdown", False), ("out.txt", False)],
)  # fmt: skip
def test_export_picks_the_format_from_the_file_name(
    fake: FakeOpenAI, isolated: Isolated, written: list[Path], name: str, json_expected: bool
) -> None:
    make_session(fake, isolated)
    target = isolated.root / name
    result = run(["sessions", "export", "notes", "-o", str(target)], isolated)
    assert result.returncode == 0, result.stderr
    assert written == [target]
    text = target.read_text()
    if json_expected:
        assert json.loads(text)["session"]["name"] == "notes"
    else:
        assert text.startswith("# notes\n")
    assert "warning" not in result.stderr


def test_an_explicit_format_wins_and_says_so(
    fake: FakeOpenAI, isolated: Isolated, written: list[Path]
) -> None:
    make_session(fake, isolated)
    target = isolated.root / "out.json"
    result = run(["sessions", "export", "notes", "--format", "md", "-o", str(target)], isolated)
    assert result.returncode == 0, result.stderr
    assert target.read_text().startswith("# notes\n")
    assert f"warning: writing Markdown to {target}, as --format md says" in result.stderr
    # To stdout, --format alone decides, and the default stays Markdown.
    assert run(["sessions", "export", "notes"], isolated).stdout.startswith("# notes\n")
    as_json = run(["sessions", "export", "notes", "--format", "json", "-o", "-"], isolated)
    assert json.loads(as_json.stdout)["session"]["name"] == "notes"


def test_export_refuses_to_replace_a_file_without_a_terminal_unless_forced(
    fake: FakeOpenAI, isolated: Isolated, written: list[Path]
) -> None:
    make_session(fake, isolated)
    target = isolated.root / "notes.md"
    target.write_text("my own notes\n")
    refused = run(["sessions", "export", "notes", "-o", str(target)], isolated)
    assert refused.returncode == 2
    assert_one_line_error(refused.stderr, f"{target} already exists", "-f (--force)")
    assert target.read_text() == "my own notes\n" and written == []
    for flag in ("-f", "--force"):
        target.write_text("my own notes\n")
        forced = run(["sessions", "export", "notes", flag, "-o", str(target)], isolated)
        assert forced.returncode == 0, forced.stderr
        assert target.read_text().startswith("# notes\n")
    assert written == [target, target]


@pytest.mark.parametrize(("answer", "replaced"), [("n\n", False), ("\n", False), ("y\n", True)])
def test_export_asks_before_replacing_a_file_on_a_terminal(
    fake: FakeOpenAI, isolated: Isolated, written: list[Path], answer: str, replaced: bool
) -> None:
    make_session(fake, isolated)
    target = isolated.root / "notes.md"
    target.write_text("my own notes\n")
    result = terminal_run(["sessions", "export", "notes", "-o", str(target)], isolated,
                          answer=answer)  # fmt: skip
    assert f"Replace {target}? [y/N]" in result.stderr
    assert target.read_text().startswith("# notes\n") == replaced
    assert result.returncode == (0 if replaced else 1)
    if not replaced:
        assert "nothing written" in result.stderr and written == []


def test_a_new_file_is_written_without_asking(
    fake: FakeOpenAI, isolated: Isolated, written: list[Path]
) -> None:
    make_session(fake, isolated)
    target = isolated.root / "new.md"
    result = terminal_run(["sessions", "export", "notes", "-o", str(target)], isolated, answer="")
    assert result.returncode == 0 and "Replace" not in result.stderr
    assert written == [target]


# -- 5. an id prefix too short --------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 2, 3])
def test_a_short_id_prefix_says_how_long_it_must_be(isolated: Isolated, length: int) -> None:
    session = Stores(isolated.chatcli_home / "data").sessions.create()
    result = run(["sessions", "show", session.id[:length]], isolated)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "too short for an id prefix", "at least 4 characters")
    assert run(["sessions", "show", session.id[:4], "--json"], isolated).returncode == 0


def test_a_short_name_that_is_no_prefix_is_simply_not_found(isolated: Isolated) -> None:
    Stores(isolated.chatcli_home / "data").sessions.create(name="ab")
    assert run(["sessions", "show", "ab", "--json"], isolated).returncode == 0
    result = run(["sessions", "show", "zz"], isolated)
    assert_one_line_error(result.stderr, "no session named 'zz' or with an id starting 'zz'")


# -- 6. an empty stream ---------------------------------------------------------------------------


def stream_app(*events: bytes) -> web.Application:
    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in events:
            await response.write(event)
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


@pytest.mark.parametrize(
    ("events", "held"),
    [((), "nothing at all"), ((b"data: [DONE]\n\n",), "only its end marker")],
)
def test_an_empty_stream_says_no_text_arrived(
    isolated: Isolated, events: tuple[bytes, ...], held: str
) -> None:
    with AppServer(stream_app(*events)) as server:
        result = run(["ask", "-p", "ollama", "-m", "m", "--base-url", f"{server.url}/v1", "hi"],
                     isolated)  # fmt: skip
    assert result.returncode == 1 and result.stdout == ""
    assert_one_line_error(
        result.stderr, "ollama: no text arrived: the server answered with a stream holding",
        held,
    )  # fmt: skip
    assert "incomplete" not in result.stderr and "end marker;" not in result.stderr


def test_a_stream_that_ends_without_text_says_so_with_its_finish_reason(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    fake.pieces = []  # the role chunk, a finish reason and [DONE]: no text
    result = run(ask(fake, "hi"), isolated)
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "no text arrived", "no answer text", "'stop'")
    fake.reasoning, fake.finish_reason = ["Let me think."], "length"
    result = run(ask(fake, "hi"), isolated)
    assert_one_line_error(
        result.stderr, "only the model's reasoning", "'length'", "-o max_tokens N"
    )


# -- 7. a request the server refused --------------------------------------------------------------


def chat_requests(fake: FakeOpenAI) -> int:
    return sum(1 for r in fake.requests if r.path.endswith("/chat/completions"))


@pytest.mark.parametrize(
    ("status", "body", "hint"),
    [
        (400, {"error": {"message": "Unrecognized request argument supplied: foo",
                         "type": "invalid_request_error"}},
         "check the -o options and the model name"),
        (400, {"error": {"message": "This model's maximum context length is 8192 tokens. However, "
                                    "your messages resulted in 9001 tokens.",
                         "code": "context_length_exceeded"}},
         "the input is longer than the model's context: send a shorter one"),
        (400, {"error": {"message": "the request exceeds the available context size, try "
                                    "increasing it", "type": "exceed_context_size_error"}},
         "send a shorter one, or start a new session"),
        (422, {"detail": "temperature: Input should be less than or equal to 2"},
         "check the -o options"),
    ],
)  # fmt: skip
def test_a_refused_request_quotes_the_server_first_and_names_the_cause(
    fake: FakeOpenAI, isolated: Isolated, status: int, body: dict[str, Any], hint: str
) -> None:
    fake.mode, fake.status, fake.body = "status", status, json.dumps(body)
    result = run(ask(fake, "-o", "foo", "1", "hi"), isolated)
    assert result.returncode == 1 and chat_requests(fake) == 1  # not retried
    message = body["error"]["message"] if "error" in body else body["detail"]
    line = assert_one_line_error(result.stderr, hint, f"HTTP {status}")
    assert line.startswith(f"chatcli: ollama: the server rejected the request: {message[:60]}")


def test_other_statuses_read_as_before(fake: FakeOpenAI, isolated: Isolated) -> None:
    fake.mode, fake.status, fake.body = "status", 404, '{"error": "model not found"}'
    result = run(ask(fake, "--retries", "0", "hi"), isolated)
    assert_one_line_error(result.stderr, "ollama: HTTP 404 Not Found from", "model not found")
    assert "rejected" not in result.stderr


# -- 8. a TOML mistake in config.toml -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "hint"),
    [
        ('provider = "ollama"\nmodel = llama3\n', 2, 'strings need quotes: model = "llama3"'),
        ("[providers.box]\ntype = openai\n", 2, 'strings need quotes: type = "openai"'),
        ('fallback = [ollama, "groq"]\n', 1, 'strings need quotes: fallback = ["ollama", "groq"]'),
        ('model: "llama3"\n', 1, "write key = value"),
        ('[cookies]\nprofile = "C:\\Users\\me"\n', 2, "put a path in single quotes"),
        ('model = "a"\nmodel = "b"\n', 2, "may be given only once"),
        ('system = "Be brief\n', 1, "a string ends on its own line"),
    ],
)
def test_a_toml_mistake_gets_a_hint_on_one_line(
    isolated: Isolated, text: str, line: int, hint: str
) -> None:
    config = isolated.write_config(text)
    result = run(["providers"], isolated)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, str(config), f"line {line}", hint)


def test_a_toml_error_without_a_known_cause_has_no_made_up_hint(isolated: Isolated) -> None:
    config = isolated.write_config("timeout = 10s\n")
    result = run(["providers"], isolated)
    line = assert_one_line_error(result.stderr, str(config), "line 1")
    assert "quotes" not in line and line.rstrip().endswith(")")


# -- 9. nothing listening on this machine ---------------------------------------------------------


def test_a_refused_local_server_fails_at_once(isolated: Isolated) -> None:
    root = f"http://localhost:{refusing_port()}/v1"
    result = run(["ask", "-p", "ollama", "-m", "m", "--base-url", root, "hi"], isolated)
    assert result.returncode == 1
    assert "retrying" not in result.stderr
    assert_one_line_error(
        result.stderr, f"cannot connect to {root}/chat/completions (connection refused)",
        "is the server running there?",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("host", "error", "retryable"),
    [
        ("localhost", ConnectionRefusedError(111, "refused"), False),
        ("127.0.0.1", ConnectionRefusedError(111, "refused"), False),
        ("127.1.2.3", ConnectionRefusedError(111, "refused"), False),
        ("::1", ConnectionRefusedError(111, "refused"), False),
        ("api.localhost", ConnectionRefusedError(111, "refused"), False),
        ("10.0.0.7", ConnectionRefusedError(111, "refused"), True),
        ("gpu-box.lan", ConnectionRefusedError(111, "refused"), True),
        ("localhost", ConnectionResetError(104, "reset"), True),
        ("localhost", OSError(113, "No route to host"), True),
    ],
)
def test_only_a_refusal_on_this_machine_is_not_retried(
    host: str, error: OSError, retryable: bool
) -> None:
    key = SimpleNamespace(host=host, port=11434, ssl=False)
    url = f"http://{host if ':' not in host else f'[{host}]'}:11434/v1"
    with pytest.raises(ProviderConnectionError) as info, http.http_errors("ollama", url):
        raise aiohttp.ClientConnectorError(key, error)  # type: ignore[arg-type]
    assert info.value.retryable is retryable
