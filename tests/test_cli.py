"""`chatcli` on the command line: pipes, streams, exit codes, isolation (in-process, and the
real binary where only a process can show it: Ctrl-C, a closed pipe, concurrent writers)."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chatcli.transcript import STATUS_WORDS
from chatcli.turn import CUT
from tests.conftest import CHATCLI, Isolated, assert_one_line_error, run, run_with_terminal_stdin
from tests.servers import FakeOpenAI, ForwardProxy, Socks5Proxy

pytestmark = pytest.mark.usefixtures("fast_retries")


def ask(fake: FakeOpenAI, *args: str) -> list[str]:
    return ["ask", "-p", "ollama", "-m", "m", "--base-url", fake.base_url, *args]


def user_message(fake: FakeOpenAI) -> str:
    content: str = fake.requests[-1].body["messages"][-1]["content"]
    return content


# -- stdin and the prompt -------------------------------------------------------------------------


def test_piped_stdin_then_blank_line_then_prompt(fake: FakeOpenAI, isolated: Isolated) -> None:
    diff = "diff --git a/x b/x\n+new line\n"
    result = run([*ask(fake), "write", "a commit message"], isolated, input=diff)
    assert result.returncode == 0, result.stderr
    assert user_message(fake) == "diff --git a/x b/x\n+new line\n\nwrite a commit message"
    assert result.stdout == "Hello, world!\n"
    assert result.stderr == ""


def test_piped_stdin_alone_is_the_message(fake: FakeOpenAI, isolated: Isolated) -> None:
    question = "What is a monad?\nAnswer in one line.\n"
    result = run(ask(fake), isolated, input=question)
    assert result.returncode == 0, result.stderr
    assert user_message(fake) == question


def test_large_stdin_is_sent_whole(fake: FakeOpenAI, isolated: Isolated) -> None:
    text = "".join(f"line {i} ünïcode\n" for i in range(50_000))
    result = run([*ask(fake), "summarise"], isolated, input=text)
    assert result.returncode == 0, result.stderr
    assert user_message(fake) == text.rstrip("\n") + "\n\nsummarise"


def test_no_stdin_and_no_prompt_is_a_usage_error(isolated: Isolated) -> None:
    result = run(["ask", "-p", "ollama"], isolated, input="")
    assert result.returncode == 2
    assert result.stdout == ""
    assert_one_line_error(result.stderr, "no prompt")


def test_terminal_stdin_and_no_prompt_does_not_wait(isolated: Isolated) -> None:
    # stdin is a real pseudo-terminal: chatcli must not sit reading it.
    result = run_with_terminal_stdin(["ask", "-p", "ollama"], isolated)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "no prompt")


# -- output streams, exit codes, formats ----------------------------------------------------------


def test_stdout_carries_only_the_answer_and_errors_go_to_stderr(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    ok = run([*ask(fake), "hi"], isolated)
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "Hello, world!\n", "")
    fake.mode, fake.status, fake.body = "status", 500, '{"error": {"message": "kaboom"}}'
    failed = run([*ask(fake), "--retries", "0", "hi"], isolated)
    assert failed.returncode == 1
    assert failed.stdout == ""
    assert_one_line_error(failed.stderr, "ollama", "HTTP 500", "kaboom")


def test_cut_stream_keeps_the_partial_answer_and_exits_1(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    fake.mode = "cut"
    result = run([*ask(fake), "hi"], isolated)
    assert result.returncode == 1
    assert result.stdout == "Hello, world!\n"
    assert_one_line_error(result.stderr, "ollama", "incomplete")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["ask", "-p", "nope", "hi"], "unknown provider 'nope'"),
        (["ask", "-p", "ollama", "--temperature", "5", "hi"], "temperature"),
        (["ask", "-p", "ollama", "-o", "max_tokens"], "requires 2 arguments"),
    ],
)
def test_usage_and_config_errors_exit_2(isolated: Isolated, args: list[str], fragment: str) -> None:
    result = run(args, isolated)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr


def test_broken_config_names_file_and_line(isolated: Isolated) -> None:
    path = isolated.write_config('provider = "ollama"\nmodel = = "x"\n')
    result = run(["ask", "hi"], isolated)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, str(path), "line 2")


def test_json_output(fake: FakeOpenAI, isolated: Isolated) -> None:
    result = run([*ask(fake), "--json", "hi"], isolated)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    session = data.pop("session")
    usage = data.pop("usage")
    assert data == {
        "text": "Hello, world!",
        "reasoning": None,
        "provider": "ollama",
        "model": "m",
        "status": "complete",
        "finish_reason": "stop",
    }
    assert usage["seconds"] >= usage["first_token_seconds"] >= 0 and usage["cost"] is None
    assert isinstance(session, str) and len(session) == 12
    unsaved = json.loads(run([*ask(fake), "--json", "--no-save", "hi"], isolated).stdout)
    assert unsaved["session"] is None
    assert result.stdout.count("\n") == 1


@pytest.mark.parametrize(
    ("raw", "status", "note"),
    [
        ("length", "length", "cut at the token limit (-o max_tokens N allows more)"),
        ("max_tokens", "length", "cut at the token limit"),
        ("content_filter", "content_filter", "content filter withheld the rest"),
    ],
)
def test_a_cut_answer_is_never_passed_off_as_complete(
    fake: FakeOpenAI, isolated: Isolated, raw: str, status: str, note: str
) -> None:
    fake.finish_reason = raw
    result = run([*ask(fake), "-S", "cut", "--json", "Write a long poem"], isolated)
    assert result.returncode == 3  # the answer came, but not whole
    data = json.loads(result.stdout)
    assert (data["status"], data["finish_reason"], data["text"]) == (
        status, status, "Hello, world!",
    )  # fmt: skip
    assert result.stderr == f"chatcli: warning: ollama: {CUT[status]}\n" and note in result.stderr
    # The session keeps why, and shows it.
    assert stored(isolated)[-1][1:] == ("assistant", "Hello, world!", status)
    shown = run(["sessions", "show", "cut"], isolated).stdout
    assert f"## 2 · Assistant · ollama · m ({STATUS_WORDS[status]})" in shown
    plain = run([*ask(fake), "Write a long poem"], isolated)
    assert plain.returncode == 3 and plain.stdout == "Hello, world!\n"


def test_raw_into_a_pipe_has_no_escape_codes(fake: FakeOpenAI, isolated: Isolated) -> None:
    fake.pieces = ["# Title\n\n", "Some **bold** text and `code`.\n"]
    for flags in (["--raw"], []):
        result = run([*ask(fake), *flags, "hi"], isolated)
        assert result.returncode == 0, result.stderr
        # Exactly the model's text: no styling, no rendering.
        assert result.stdout == "# Title\n\nSome **bold** text and `code`.\n"


def test_markdown_flag_renders_even_into_a_pipe(fake: FakeOpenAI, isolated: Isolated) -> None:
    fake.pieces = ["# Title\n\n", "Some **bold** text.\n"]
    result = run([*ask(fake), "--markdown", "hi"], isolated)
    assert result.returncode == 0, result.stderr
    assert "\x1b[" in result.stdout
    assert "**bold**" not in result.stdout and "bold" in result.stdout


def test_options_system_and_temperature_reach_the_request(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    result = run(
        [*ask(fake), "--system", "Be brief", "--temperature", "0.2", "-o", "max_tokens", "64",
         "-o", "stop", '["\\n"]', "-o", "user", "alice", "--no-stream", "hi"],
        isolated,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    body = fake.requests[-1].body
    assert body["messages"] == [
        {"role": "system", "content": "Be brief"},
        {"role": "user", "content": "hi"},
    ]
    assert body["temperature"] == 0.2 and body["stream"] is False
    assert (body["max_tokens"], body["stop"], body["user"]) == (64, ["\n"], "alice")
    assert result.stdout == "Hello, world!\n"


def test_version_and_module_entry_point(isolated: Isolated) -> None:
    from chatcli import __version__

    assert run(["--version"], isolated).stdout == f"chatcli {__version__}\n"
    module = subprocess.run(
        [sys.executable, "-m", "chatcli", "--version"], capture_output=True, text=True,
        env=isolated.env, timeout=30,
    )  # fmt: skip
    assert module.stdout == f"chatcli {__version__}\n"


# -- configuration and isolation ------------------------------------------------------------------


def test_config_in_chatcli_home_defines_the_default_provider(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    isolated.write_config(
        'provider = "mybox"\nsystem = "From config"\n\n'
        f'[providers.mybox]\ntype = "openai"\nbase_url = "{fake.base_url}"\n'
        'api_key_env = "MYBOX_KEY"\nmodel = "box-model"\n'
    )
    result = run(["ask", "hi"], isolated, env={"MYBOX_KEY": "box-secret"})
    assert result.returncode == 0, result.stderr
    request = fake.requests[-1]
    assert request.headers["Authorization"] == "Bearer box-secret"
    assert request.body["model"] == "box-model"
    assert request.body["messages"][0] == {"role": "system", "content": "From config"}
    # Nothing was written outside CHATCLI_HOME.
    assert list(isolated.home.iterdir()) == []


def test_env_provider_and_model_override_config(fake: FakeOpenAI, isolated: Isolated) -> None:
    isolated.write_config('provider = "openai"\nmodel = "from-config"\n')
    result = run(
        ["ask", "--base-url", fake.base_url, "hi"],
        isolated,
        env={"CHATCLI_PROVIDER": "lmstudio", "CHATCLI_MODEL": "from-env"},
    )
    assert result.returncode == 0, result.stderr
    assert fake.requests[-1].body["model"] == "from-env"


def test_paths_follow_chatcli_home(isolated: Isolated) -> None:
    result = run(["paths", "--json"], isolated)
    where = json.loads(result.stdout)
    for key in ("config", "data", "cache", "state"):
        assert Path(where[key]).is_relative_to(isolated.chatcli_home), where


def test_providers_table_and_json(isolated: Isolated) -> None:
    listed = json.loads(
        run(["providers", "--json"], isolated, env={"GROQ_API_KEY": "gsk-x"}).stdout
    )
    by_name = {row["name"]: row for row in listed}
    assert by_name["groq"]["key_set"] is True and by_name["openai"]["key_set"] is False
    assert by_name["ollama"]["url"] == "http://localhost:11434/v1"
    assert all(row["supports_stream"] for row in listed if row["kind"] == "openai-compatible")
    assert by_name["aichat"]["supports_stream"] is False and by_name["aichat"]["needs_auth"]
    assert by_name["aichat"]["cookies_stored"] == 0
    assert by_name["chatgptt"]["default_model"] == "gpt-4o"
    assert "gsk-x" not in json.dumps(listed)
    table = run(["providers"], isolated).stdout
    assert "openrouter" in table and "OPENAI_API_KEY (not set)" in table
    # Piped, every provider is one whole line (for grep), with every column.
    rows = table.splitlines()[1 : 1 + len(listed)]
    assert [row.split()[0] for row in rows] == [row["name"] for row in listed]
    assert "TOOLS" in table and "left out" not in table


def test_models_lists_the_server_models(fake: FakeOpenAI, isolated: Isolated) -> None:
    result = run(["models", "-p", "ollama", "--base-url", fake.base_url], isolated)
    assert (result.returncode, result.stdout) == (0, "fake-large\nfake-small\n")


# -- errors, verbosity and secrets ----------------------------------------------------------------


def test_connection_refused_says_which_url(isolated: Isolated) -> None:
    result = run(
        ["ask", "-p", "ollama", "-m", "m", "--base-url", "http://localhost:9/v1", "--retries", "0",
         "hi"], isolated,
    )  # fmt: skip
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "ollama", "http://localhost:9/v1", "connection refused")


def test_missing_key_says_which_variable(isolated: Isolated) -> None:
    result = run(["ask", "-p", "openrouter", "hi"], isolated)
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "openrouter", "OPENROUTER_API_KEY")


def test_keys_never_reach_output_even_verbose_or_echoed(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    canary = "sk-CANARY-5f1d2e3c4b5a"
    fake.mode, fake.status = "status", 401
    fake.body = json.dumps({"error": {"message": f"Incorrect API key provided: {canary}"}})
    env = {"OPENAI_API_KEY": canary}
    result = run(
        ["ask", "-p", "openai", "-v", "--base-url", fake.base_url, "hi"], isolated, env=env
    )
    assert result.returncode == 1
    assert fake.requests[-1].headers["Authorization"] == f"Bearer {canary}"
    assert canary not in result.stdout + result.stderr
    assert "Traceback" in result.stderr  # -v shows it
    assert "not authorised" in result.stderr and "OPENAI_API_KEY" in result.stderr


def test_debug_variable_shows_tracebacks(isolated: Isolated) -> None:
    result = run(["ask", "-p", "ollama", "-m", "m", "--base-url", "http://localhost:9/v1", "hi"],
                 isolated, env={"CHATCLI_DEBUG": "1"})  # fmt: skip
    assert result.returncode == 1 and "Traceback" in result.stderr


# -- proxies --------------------------------------------------------------------------------------


def test_proxy_flag_sends_the_request_through_the_proxy(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    with ForwardProxy(require_auth="Basic dXNlcjpwQHNz") as proxy:
        proxy_url = f"http://user:p%40ss@localhost:{proxy.port}"
        result = run([*ask(fake), "--proxy", proxy_url, "-v", "hi"], isolated)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Hello, world!\n"
    assert proxy.seen == [f"POST {fake.base_url}/chat/completions"]
    assert proxy.auth_headers == ["Basic dXNlcjpwQHNz"]  # user:p@ss
    assert "p%40ss" not in result.stderr and "p@ss" not in result.stderr
    assert "user:***@" in result.stderr  # -v names the proxy, without its password


def test_proxy_from_environment_and_no_proxy(fake: FakeOpenAI, isolated: Isolated) -> None:
    with ForwardProxy() as proxy:
        through = run([*ask(fake), "hi"], isolated, env={"HTTP_PROXY": proxy.url})
        bypass = run(
            [*ask(fake), "hi"], isolated, env={"HTTP_PROXY": proxy.url, "NO_PROXY": "localhost"}
        )
    assert through.returncode == 0 and bypass.returncode == 0, through.stderr + bypass.stderr
    assert len(proxy.seen) == 1 and len(fake.requests) == 2


def test_socks5_proxy(fake: FakeOpenAI, isolated: Isolated) -> None:
    with Socks5Proxy() as proxy:
        result = run([*ask(fake), "--proxy", f"socks5://localhost:{proxy.port}", "hi"], isolated)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Hello, world!\n"
    port = fake.base_url.rsplit(":", 1)[1].split("/")[0]
    assert proxy.seen == [f"localhost:{port}"]  # the name went to the proxy (no local DNS)


def test_unreachable_proxy_is_a_clear_error(fake: FakeOpenAI, isolated: Isolated) -> None:
    result = run([*ask(fake), "--proxy", "http://localhost:9", "--retries", "0", "hi"], isolated)
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "ollama", "proxy")


def test_unsupported_proxy_scheme(fake: FakeOpenAI, isolated: Isolated) -> None:
    result = run([*ask(fake), "--proxy", "ftp://user:secret@host:21", "hi"], isolated)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "--proxy: expected a http/https/socks5")
    assert "secret" not in result.stderr
    assert fake.requests == []


def test_proxy_that_refuses_credentials_never_shows_the_password(isolated: Isolated) -> None:
    # An https target goes through CONNECT; the proxy answers 407 and aiohttp's error quotes
    # the proxy URL with its password.
    with ForwardProxy(require_auth="Basic nope") as proxy:
        env = {"HTTPS_PROXY": f"http://user:S3CRETPW@localhost:{proxy.port}"}
        result = run(["ask", "-p", "ollama", "-m", "m", "--base-url", "https://localhost:9/v1",
                      "-v", "--retries", "0", "hi"], isolated, env=env)  # fmt: skip
    assert result.returncode == 1
    assert "S3CRETPW" not in result.stderr + result.stdout
    assert "407" in result.stderr and "proxy" in result.stderr
    assert proxy.seen == ["CONNECT localhost:9"]


def test_configured_proxy_is_used_unless_no_proxy_exempts_the_host(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    with ForwardProxy() as proxy:
        isolated.write_config(f'proxy = "{proxy.url}"\n')
        through = run([*ask(fake), "hi"], isolated)
        exempt = run([*ask(fake), "hi"], isolated, env={"NO_PROXY": "localhost"})
    assert through.returncode == exempt.returncode == 0, through.stderr + exempt.stderr
    assert len(proxy.seen) == 1 and len(fake.requests) == 2


def test_bad_base_url_is_a_usage_error(isolated: Isolated) -> None:
    for url in ("localhost:11434/v1", "http://[bad/v1"):
        result = run(["ask", "-p", "ollama", "--base-url", url, "hi"], isolated)
        assert result.returncode == 2, result.stderr
        assert_one_line_error(result.stderr, "--base-url")


@pytest.mark.parametrize(("key", "hint"), [("model", "-m/--model"), ("stream", "--no-stream")])
def test_reserved_option_keys_exit_2(
    fake: FakeOpenAI, isolated: Isolated, key: str, hint: str
) -> None:
    result = run([*ask(fake), "-o", key, "x", "hi"], isolated)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, f"-o {key}", hint)
    assert fake.requests == []


def test_an_option_a_web_provider_does_not_take_exits_2_before_any_request(
    isolated: Isolated,
) -> None:
    # -o max_tokens used to be accepted and silently dropped by the web providers.
    result = run(["ask", "-p", "gptalk", "--base-url", "http://localhost:9", "-o", "max_tokens",
                  "5", "hi"], isolated)  # fmt: skip
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "gptalk: unknown option -o max_tokens", "no -o options")
    # A provider that takes options names them.
    result = run(["ask", "-p", "aichat", "-o", "max_tokens", "5", "hi"], isolated)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "aichat: unknown option -o max_tokens", "known: top_p")


def test_config_provider_names_are_case_insensitive(fake: FakeOpenAI, isolated: Isolated) -> None:
    isolated.write_config(f'[providers.MyBox]\ntype = "openai"\nbase_url = "{fake.base_url}"\n')
    for name in ("MyBox", "mybox"):
        result = run(["ask", "-p", name, "-m", "m", "hi"], isolated)
        assert result.returncode == 0, result.stderr


def test_json_keeps_a_partial_answer_marked_interrupted(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    fake.mode = "cut"
    result = run([*ask(fake), "--json", "hi"], isolated)
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert data["text"] == "Hello, world!" and data["status"] == "interrupted"
    assert "incomplete" in data["error"]
    assert_one_line_error(result.stderr, "incomplete")


def test_invalid_utf8_on_stdin_is_replaced_with_a_warning(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    result = run([*ask(fake), "explain"], isolated, input=b"caf\xe9 au lait\n")
    assert result.returncode == 0
    assert user_message(fake) == "caf\ufffd au lait\n\nexplain"
    assert_one_line_error(result.stderr, "warning: stdin is not valid UTF-8")


# -- Ctrl-C ---------------------------------------------------------------------------------------


def test_ctrl_c_mid_stream_keeps_the_partial_answer_and_exits_130(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    fake.mode, fake.stall_seconds = "stall", 20.0
    process = subprocess.Popen(
        [str(CHATCLI), *ask(fake), "hi"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=isolated.env,
        # A runner started in the background ignores SIGINT, and children inherit that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    assert process.stdout is not None
    first = os.read(process.stdout.fileno(), 100)  # blocks until the first piece is shown
    assert first == b"Hello"
    time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    rest, stderr = process.communicate(timeout=15)
    assert process.returncode == 130
    assert first + rest == b"Hello\n"
    assert stderr.decode() == "chatcli: interrupted\n"


# -- sessions through ask -------------------------------------------------------------------------


def stored(isolated: Isolated) -> list[tuple[str, str, str, str]]:
    """(session id, role, content, status) of every stored message, oldest first."""
    import sqlite3

    db = sqlite3.connect(isolated.chatcli_home / "data" / "sessions.db")
    rows = db.execute(
        "SELECT session_id, role, content, status FROM messages ORDER BY id"
    ).fetchall()
    db.close()
    return rows


def test_ask_saves_by_default_and_continue_sends_the_history(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    first = run([*ask(fake), "--system", "Be brief", "What is 2+2?"], isolated)
    assert (first.returncode, first.stdout, first.stderr) == (0, "Hello, world!\n", "")
    fake.pieces = ["Six", "."]
    second = run([*ask(fake), "-c", "And 3+3?"], isolated)
    assert second.returncode == 0, second.stderr
    assert fake.requests[-1].body["messages"] == [
        {"role": "system", "content": "Be brief"},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "Hello, world!"},
        {"role": "user", "content": "And 3+3?"},
    ]
    rows = stored(isolated)
    assert len({row[0] for row in rows}) == 1
    assert [(r[1], r[2], r[3]) for r in rows] == [
        ("user", "What is 2+2?", "complete"),
        ("assistant", "Hello, world!", "complete"),
        ("user", "And 3+3?", "complete"),
        ("assistant", "Six.", "complete"),
    ]


def test_continue_reuses_the_sessions_provider_and_model(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    assert run([*ask(fake), "-m", "special-model", "hi"], isolated).returncode == 0
    # No -p or -m: the session's own provider and model answer again.
    result = run(["ask", "-c", "--base-url", fake.base_url, "again"], isolated)
    assert result.returncode == 0, result.stderr
    assert fake.requests[-1].body["model"] == "special-model"


def test_named_sessions_are_created_then_continued(fake: FakeOpenAI, isolated: Isolated) -> None:
    assert run([*ask(fake), "-S", "work", "first at work"], isolated).returncode == 0
    assert run([*ask(fake), "unrelated"], isolated).returncode == 0
    assert run([*ask(fake), "-S", "work", "second at work"], isolated).returncode == 0
    assert [m["content"] for m in fake.requests[-1].body["messages"]] == [
        "first at work",
        "Hello, world!",
        "second at work",
    ]
    assert len({row[0] for row in stored(isolated)}) == 2


def test_no_save_writes_nothing_but_can_read_a_session(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    assert run([*ask(fake), "--no-save", "hi"], isolated).returncode == 0
    assert not (isolated.chatcli_home / "data" / "sessions.db").exists() or stored(isolated) == []
    assert run([*ask(fake), "-S", "kept", "hello"], isolated).returncode == 0
    before = stored(isolated)
    assert run([*ask(fake), "-S", "kept", "--no-save", "more"], isolated).returncode == 0
    assert [m["content"] for m in fake.requests[-1].body["messages"]][:2] == [
        "hello",
        "Hello, world!",
    ]
    assert stored(isolated) == before


def test_continue_and_session_together_is_a_usage_error(isolated: Isolated) -> None:
    result = run(["ask", "-p", "ollama", "-c", "-S", "x", "hi"], isolated)
    assert result.returncode == 2 and "either -c/--continue or -S/--session" in result.stderr


def test_failed_and_interrupted_answers_are_kept(fake: FakeOpenAI, isolated: Isolated) -> None:
    fake.mode = "cut"
    assert run([*ask(fake), "-S", "s", "first"], isolated).returncode == 1
    fake.mode, fake.status, fake.body = "status", 500, '{"error": "down"}'
    assert run([*ask(fake), "-S", "s", "second"], isolated).returncode == 1
    assert [(r[1], r[2], r[3]) for r in stored(isolated)] == [
        ("user", "first", "complete"),
        ("assistant", "Hello, world!", "interrupted"),
        ("user", "second", "complete"),  # the question stays even though no answer came
    ]


def test_ctrl_c_keeps_the_partial_answer_in_the_session(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    fake.mode, fake.stall_seconds = "stall", 20.0
    process = subprocess.Popen(
        [str(CHATCLI), *ask(fake), "-S", "cut", "hi"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=isolated.env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    assert process.stdout is not None
    assert os.read(process.stdout.fileno(), 100) == b"Hello"
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=15)
    assert process.returncode == 130
    assert [(r[1], r[2], r[3]) for r in stored(isolated)] == [
        ("user", "hi", "complete"),
        ("assistant", "Hello", "interrupted"),
    ]


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_keep_the_partial_answer_as_ctrl_c_does(
    fake: FakeOpenAI, isolated: Isolated, signum: int, code: int
) -> None:
    # A `timeout`, a closed terminal or tmux window, a killed job.
    fake.mode, fake.stall_seconds = "stall", 20.0
    process = subprocess.Popen(
        [str(CHATCLI), *ask(fake), "-S", "cut", "hi"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=isolated.env,
    )  # fmt: skip
    assert process.stdout is not None
    assert os.read(process.stdout.fileno(), 100) == b"Hello"
    process.send_signal(signum)
    rest, stderr = process.communicate(timeout=15)
    assert process.returncode == code
    assert rest == b"\n"  # the line is ended, as for Ctrl-C
    name = signal.Signals(signum).name
    assert stderr.decode() == f"chatcli: stopped by {name}\n"
    assert [(r[1], r[2], r[3]) for r in stored(isolated)] == [
        ("user", "hi", "complete"),
        ("assistant", "Hello", "interrupted"),
    ]


@pytest.mark.parametrize("mode", [["--raw"], []])
def test_sighup_with_the_terminal_gone_still_saves_and_exits_129(
    fake: FakeOpenAI, isolated: Isolated, mode: list[str]
) -> None:
    fake.mode, fake.stall_seconds = "stall", 20.0
    controller, terminal = pty.openpty()
    # Buffered stderr, as for a user (the exit's own flush must not fail and turn 129 into 120).
    env = {k: v for k, v in isolated.env.items() if k != "PYTHONUNBUFFERED"}
    process = subprocess.Popen(
        [str(CHATCLI), *ask(fake), *mode, "-S", "cut", "hi"],
        stdin=terminal, stdout=terminal, stderr=terminal, env={**env, "TERM": "xterm-256color"},
    )  # fmt: skip
    os.close(terminal)
    try:
        seen = b""
        deadline = time.monotonic() + 15
        while b"Hello" not in seen and time.monotonic() < deadline:
            seen += os.read(controller, 100)
    finally:
        os.close(controller)  # the terminal window closes...
    process.send_signal(signal.SIGHUP)  # ...and the kernel hangs up on the job
    assert process.wait(timeout=15) == 129
    assert [(r[1], r[2], r[3]) for r in stored(isolated)][-1] == (
        "assistant",
        "Hello",
        "interrupted",
    )


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM])
def test_a_signal_the_user_ignores_stays_ignored(
    fake: FakeOpenAI, isolated: Isolated, signum: int
) -> None:
    # `nohup chatcli ask ... &`: logging out must not stop it.
    fake.pieces, fake.delay = ["one ", "two ", "three"], 0.3
    process = subprocess.Popen(
        [str(CHATCLI), *ask(fake), "hi"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=isolated.env, preexec_fn=lambda: signal.signal(signum, signal.SIG_IGN),
    )  # fmt: skip
    assert process.stdout is not None
    assert os.read(process.stdout.fileno(), 100) == b"one "
    process.send_signal(signum)
    rest, stderr = process.communicate(timeout=15)
    assert process.returncode == 0, stderr
    assert b"one " + rest == b"one two three\n"


def test_concurrent_ask_with_one_new_session_name_loses_nothing(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    processes = [
        subprocess.Popen(
            [str(CHATCLI), *ask(fake), "-S", "fresh", f"question {i}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=isolated.env,
        )
        for i in range(4)
    ]
    for process in processes:
        _, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
    rows = stored(isolated)
    assert len({row[0] for row in rows}) == 1 and len(rows) == 8
    assert sorted(r[2] for r in rows if r[1] == "user") == [f"question {i}" for i in range(4)]
    # Each answer is linked to its own question, and follows it: q, a, q, a, ...
    import sqlite3

    db = sqlite3.connect(isolated.chatcli_home / "data" / "sessions.db")
    links = db.execute("SELECT reply_to FROM messages WHERE role = 'assistant'").fetchall()
    questions = db.execute("SELECT id FROM messages WHERE role = 'user'").fetchall()
    db.close()
    assert sorted(link for (link,) in links) == sorted(q for (q,) in questions)
    shown = json.loads(run(["sessions", "show", "fresh", "--json"], isolated).stdout)
    assert [m["role"] for m in shown["messages"]] == ["user", "assistant"] * 4


# -- the shared chat options ----------------------------------------------------------------------


def test_ask_and_repl_take_the_one_table_of_chat_options(isolated: Isolated) -> None:
    from chatcli.cli import build_command
    from chatcli.clikit import CHAT_OPTIONS

    commands = build_command().commands
    declared = {
        name: {p.name: (tuple(p.opts), p.nargs, p.help) for p in commands[name].params}
        for name in ("ask", "repl")
    }
    for option in CHAT_OPTIONS:
        assert declared["ask"][option.name] == declared["repl"][option.name]
    assert declared["ask"]["option"][1] == 2  # -o KEY VALUE
    # A bad -o is one usage error for both, before repl even looks for a terminal.
    for command in ("ask", "repl"):
        result = run([command, "-p", "ollama", "-o", "temperature", "1"], isolated)
        assert result.returncode == 2
        assert_one_line_error(result.stderr, "-o temperature: not a provider option")


def test_a_failed_question_never_rewrites_the_sessions_provider_and_model(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    assert run([*ask(fake), "-S", "s", "first"], isolated).returncode == 0
    # Another provider, not running: the question is kept, the session's pair is not touched.
    down = ["-p", "vllm", "-m", "other", "--base-url", "http://localhost:9/v1", "--retries", "0"]
    assert run(["ask", "-S", "s", *down, "second"], isolated).returncode == 1
    listed = json.loads(run(["sessions", "list", "--json"], isolated).stdout)
    assert [(s["provider"], s["model"]) for s in listed] == [("ollama", "m")]
    # So the session carries on with what last answered, as one choice.
    again = run(["ask", "-S", "s", "--base-url", fake.base_url, "third"], isolated)
    assert again.returncode == 0, again.stderr
    assert fake.requests[-1].body["model"] == "m"


def test_an_unanswered_question_is_not_sent_again_unseen(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    assert run([*ask(fake), "-S", "s", "first"], isolated).returncode == 0
    fake.mode, fake.status = "status", 500
    assert run([*ask(fake), "-S", "s", "--retries", "0", "lost"], isolated).returncode == 1
    fake.mode = "ok"
    result = run([*ask(fake), "-S", "s", "third"], isolated)
    assert result.returncode == 0
    sent = [(m["role"], m["content"]) for m in fake.requests[-1].body["messages"]]
    assert sent == [("user", "first"), ("assistant", "Hello, world!"), ("user", "third")]
    assert result.stderr == (
        "chatcli: 1 earlier question(s) of this session got no answer and are not sent again "
        "(in the REPL, /retry asks the last one)\n"
    )
    # The session keeps the question that got no answer.
    shown = json.loads(run(["sessions", "show", "s", "--json"], isolated).stdout)
    assert [m["content"] for m in shown["messages"] if m["role"] == "user"] == [
        "first", "lost", "third",
    ]  # fmt: skip


def test_a_command_that_fails_before_any_request_leaves_creates_no_session(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    for args in (["ask", "-p", "openai", "hi"], ["ask", "-p", "groq", "-m", "x", "-S", "n", "hi"]):
        result = run(args, isolated)
        assert result.returncode == 1
        assert_one_line_error(result.stderr, "no API key")
    assert json.loads(run(["sessions", "list", "--json"], isolated).stdout) == []
    assert not fake.requests
    # A chain is ready when one of its providers is: the question is stored and answered.
    isolated.write_config(
        f'[providers.mine]\ntype = "openai"\nbase_url = "{fake.base_url}"\nmodel = "m"\n'
    )
    chain = run(["ask", "-p", "openai,mine", "-S", "c", "hi"], isolated)
    assert chain.returncode == 0, chain.stderr
    assert [
        s["name"] for s in json.loads(run(["sessions", "list", "--json"], isolated).stdout)
    ] == ["c"]


def test_a_character_split_into_utf16_halves_is_joined_and_a_lone_half_replaced(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    # JSON escapes "\\ud83d\\ude00" for an emoji; a server may split the pair across events.
    fake.pieces = ["Hi ", "\ud83d", "\ude00", " and \udc00 lone ", "\ud83d"]
    result = run([*ask(fake), "-S", "u", "--json", "hi"], isolated)
    assert result.returncode == 0, result.stderr
    expected = "Hi \U0001f600 and \ufffd lone \ufffd"
    assert json.loads(result.stdout)["text"] == expected
    shown = json.loads(run(["sessions", "show", "u", "--json"], isolated).stdout)
    assert shown["messages"][-1]["content"] == expected
    plain = run([*ask(fake), "hi"], isolated)
    assert plain.returncode == 0 and plain.stdout == expected + "\n"


def test_reasoning_and_usage_are_reported_stored_and_summed(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    isolated.write_config('[providers.ollama]\nprices = { "m" = { input = 1.0, output = 2.0 } }\n')
    fake.reasoning = ["Let me ", "think."]
    fake.usage = {"prompt_tokens": 1000, "completion_tokens": 500}
    result = run([*ask(fake), "-S", "r", "--json", "hi"], isolated)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["reasoning"] == "Let me think." and data["text"] == "Hello, world!"
    used = data["usage"]
    assert (used["input_tokens"], used["output_tokens"], used["estimated"]) == (1000, 500, False)
    assert used["cost"] == 0.002  # 1000 x 1.0 + 500 x 2.0 per million
    # --usage says it in one line on stderr; stdout stays the answer alone.
    line = run([*ask(fake), "--usage", "hi"], isolated)
    assert line.stdout == "Hello, world!\n"
    assert "1,000 tokens in, 500 out" in line.stderr and "cost 0.0020" in line.stderr
    # The session keeps the reasoning apart, and never sends it back.
    shown = json.loads(run(["sessions", "show", "r", "--json"], isolated).stdout)
    answer = shown["messages"][-1]
    assert answer["reasoning"] == "Let me think." and answer["content"] == "Hello, world!"
    assert answer["usage"]["input_tokens"] == 1000
    collapsed = run(["sessions", "show", "r"], isolated).stdout
    assert "_thought: 13 characters · 1,000 tokens in, 500 out_" in collapsed
    assert "Let me think." not in collapsed
    assert "> Let me think." in run(["sessions", "show", "r", "--reasoning"], isolated).stdout
    again = run([*ask(fake), "-S", "r", "and?"], isolated)
    assert again.returncode == 0
    sent = [m["content"] for m in fake.requests[-1].body["messages"]]
    assert "Let me think." not in " ".join(sent)
    # chatcli usage sums them per provider and model.
    table = json.loads(run(["usage", "--json"], isolated).stdout)
    assert table == [
        {
            "provider": "ollama", "model": "m", "turns": 3, "input_tokens": 3000,
            "output_tokens": 1500, "estimated_turns": 0, "uncounted_turns": 0, "cost": 0.006,
        }
    ]  # fmt: skip
    assert json.loads(run(["usage", "--since", "1h", "--json"], isolated).stdout) == table
    bad = run(["usage", "--since", "lately"], isolated)
    assert bad.returncode == 2 and "30m, 12h, 7d or 2w" in bad.stderr


def test_a_configured_context_length_refuses_an_input_that_cannot_fit(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    isolated.write_config(
        f'[providers.box]\ntype = "openai"\nbase_url = "{fake.base_url}"\nmodel = "m"\n'
        "context_length = 1000\n"
    )
    result = run(["ask", "-p", "box", "-S", "big", "sum up"], isolated, input="x" * 8000)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "at least 2,002 tokens, more than the 1,000")
    assert (
        not fake.requests and json.loads(run(["sessions", "list", "--json"], isolated).stdout) == []
    )
    assert run(["ask", "-p", "box", "sum up"], isolated, input="x" * 2000).returncode == 0


def test_a_conversation_nearly_filling_a_known_context_is_warned_about_first(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    isolated.write_config(
        f'[providers.box]\ntype = "openai"\nbase_url = "{fake.base_url}"\nmodel = "m"\n'
        "context_length = 1000\n"
    )
    result = run(["ask", "-p", "box", "sum up"], isolated, input="x" * 3400)  # >= 850 tokens
    assert result.returncode == 0
    assert "fills at least 85% of the 1,000 tokens" in result.stderr
    assert "/new in the REPL" in result.stderr
    quiet = run(["ask", "-p", "box", "sum up"], isolated, input="x" * 1000)
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_a_context_length_from_the_model_list_is_used(fake: FakeOpenAI, isolated: Isolated) -> None:
    from chatcli.providers.openai import OpenAICompatible

    OpenAICompatible.listed_contexts.clear()
    fake.models, fake.contexts = ["small-ctx"], {"small-ctx": 1000}
    base = ["ask", "-p", "ollama", "--base-url", fake.base_url]
    # No -m: the server's list is read (and with it, the model's context), then the answer.
    assert run([*base, "hi"], isolated).returncode == 0
    big = run([*base, "-m", "small-ctx", "sum up"], isolated, input="x" * 8000)
    assert big.returncode == 2 and "more than the 1,000 its model's context holds" in big.stderr
    OpenAICompatible.listed_contexts.clear()
