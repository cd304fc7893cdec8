"""The installed binary, as a shell runs it: real pipes, the process's exit codes, the locale.

Most command-line tests run in-process (``tests.conftest.run``); these prove that the real
process behaves the same where only a process can show it. Ctrl-C, a closed pipe and
concurrent writers are in ``test_cli``; the terminal itself in ``test_terminal`` and
``test_repl_terminal``.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess

import pytest

from tests.conftest import CHATCLI, Isolated, assert_one_line_error, run, run_binary
from tests.servers import FakeOpenAI


def ask(fake: FakeOpenAI, *args: str) -> list[str]:
    return ["ask", "-p", "ollama", "-m", "m", "--base-url", fake.base_url, *args]


def test_a_shell_pipeline_feeds_stdin_and_reads_stdout(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    fake.pieces = ["line one\n", "line two\n", "line three"]
    command = " ".join(shlex.quote(a) for a in [str(CHATCLI), *ask(fake, "explain")])
    script = f"set -o pipefail; printf 'a diff\\n+added\\n' | {command} | tr a-z A-Z | head -n 2"
    result = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env=isolated.env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "LINE ONE\nLINE TWO\n"
    assert result.stderr == ""
    assert fake.requests[-1].body["messages"][-1]["content"] == "a diff\n+added\n\nexplain"


@pytest.mark.parametrize(
    ("setup", "args", "code", "fragment"),
    [
        ("ok", ["hi"], 0, None),
        ("status", ["--retries", "0", "hi"], 1, "HTTP 500"),
        ("cut", ["hi"], 1, "incomplete"),
        ("ok", ["-o", "temperature", "1", "hi"], 2, "not a provider option"),
    ],
)
def test_the_process_exits_as_the_in_process_run_says(
    fake: FakeOpenAI,
    isolated: Isolated,
    setup: str,
    args: list[str],
    code: int,
    fragment: str | None,
) -> None:
    fake.mode = setup
    real = run_binary(ask(fake, *args), isolated)
    inside = run(ask(fake, *args), isolated)
    assert real.returncode == inside.returncode == code
    assert (real.stdout, real.stderr) == (inside.stdout, inside.stderr)
    if fragment is None:
        assert real.stdout == "Hello, world!\n" and real.stderr == ""
    else:
        assert_one_line_error(real.stderr, fragment)


def test_a_c_locale_still_writes_utf8(fake: FakeOpenAI, isolated: Isolated) -> None:
    fake.pieces = ["café ", "→ ", "日本"]
    env = {"LC_ALL": "C", "LANG": "C"}
    result = subprocess.run(
        [str(CHATCLI), *ask(fake, "hi")],
        capture_output=True,
        env={**isolated.env, **env},
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode("utf-8") == "café → 日本\n"


def test_arguments_that_are_not_utf8_are_repaired_with_a_warning(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    # Python keeps such bytes as lone surrogates, which no database can store: before, this
    # was an internal error that left an empty session behind.
    args = [str(CHATCLI).encode(), *(a.encode() for a in ask(fake)), b"-S", b"n\xff", b"caf\xe9"]
    result = subprocess.run(
        args, capture_output=True, env=isolated.env, stdin=subprocess.DEVNULL, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.decode() == (
        "chatcli: warning: an argument is not valid UTF-8; undecodable bytes became U+FFFD\n"
    )
    assert fake.requests[-1].body["messages"][-1]["content"] == "caf\ufffd"
    listed = run(["sessions", "list", "--json"], isolated)
    sessions = json.loads(listed.stdout)
    assert [(s["name"], s["messages"]) for s in sessions] == [("n\ufffd", 2)]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--temperature", "nan"], "nan is not a number chatcli can use"),
        (["--timeout", "nan"], "nan is not a number chatcli can use"),
        (["--timeout", "inf"], "0.001<=x<=86400.0"),
        (["-o", "max_tokens", "NaN"], "-o max_tokens NaN: NaN is not a finite number"),
        (["-o", "top_p", "1e400"], "-o top_p 1e400: 1e400 is not a finite number"),
        (["-o", "stop", "[1, -Infinity]"], "-Infinity is not a finite number"),
    ],
)
def test_numbers_that_are_not_finite_are_usage_errors(
    fake: FakeOpenAI, isolated: Isolated, args: list[str], fragment: str
) -> None:
    result = run_binary(ask(fake, *args, "hi"), isolated)
    assert result.returncode == 2, result.stderr
    assert fragment in result.stderr and "internal error" not in result.stderr
    assert not fake.requests


def test_a_reader_that_goes_away_mid_answer_ends_chatcli_quietly_and_keeps_the_session(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    # `chatcli ask ... | less`, then q while the answer streams (or `| head -c 5`). The case
    # where the closed pipe meets the flush timer is made deterministic in test_render.
    fake.pieces = ["Hello", " there", " more", " and", " more", " text"]
    fake.delay = 0.2
    process = subprocess.Popen(
        [str(CHATCLI), *ask(fake, "-S", "piped", "hi")],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=isolated.env,
    )  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    assert os.read(process.stdout.fileno(), 5) == b"Hello"
    process.stdout.close()  # the reader quits; the next pieces meet a closed pipe
    assert process.wait(timeout=30) == 0
    assert process.stderr.read() == b""  # no "Exception in callback", no traceback
    process.stderr.close()
    shown = json.loads(run(["sessions", "show", "piped", "--json"], isolated).stdout)
    answer = shown["messages"][-1]
    assert answer["role"] == "assistant" and answer["content"].startswith("Hello")
    assert answer["status"] == "interrupted"  # the rest never reached anyone
