"""``chatcli sessions`` subcommands through real subprocesses."""

from __future__ import annotations

import json
import os
import pty
import subprocess

from tests.conftest import CHATCLI, Isolated, run
from tests.servers import FakeOpenAI


def ask(fake: FakeOpenAI, *args: str) -> list[str]:
    return ["ask", "-p", "ollama", "-m", "m", "--base-url", fake.base_url, *args]


def make_sessions(fake: FakeOpenAI, isolated: Isolated) -> dict[str, str]:
    """Three sessions; returns label -> id."""
    fake.pieces = ["Monads wrap values.\n", "They chain with bind."]
    assert run([*ask(fake), "-S", "haskell", "What is a monad?"], isolated).returncode == 0
    fake.pieces = ["Use WAL mode."]
    assert (
        run([*ask(fake), "How do I speed up SQLite writes?\nDetails follow."], isolated).returncode
        == 0
    )
    fake.mode = "cut"
    fake.pieces = ["Partial ", "answer"]
    assert run([*ask(fake), "Tell me a long story"], isolated).returncode == 1
    fake.mode = "ok"
    listed = json.loads(run(["sessions", "list", "--json"], isolated).stdout)
    return {s["name"] or s["title"]: s["id"] for s in listed}


def test_list_newest_first_with_counts(fake: FakeOpenAI, isolated: Isolated) -> None:
    ids = make_sessions(fake, isolated)
    listed = json.loads(run(["sessions", "list", "--json"], isolated).stdout)
    assert [s["name"] or s["title"] for s in listed] == [
        "Tell me a long story",
        "How do I speed up SQLite writes?",
        "haskell",
    ]
    assert [s["messages"] for s in listed] == [2, 2, 2]
    assert listed[2]["title"] == "What is a monad?" and listed[2]["provider"] == "ollama"
    plain = run(["sessions", "list", "-n", "2"], isolated).stdout.splitlines()
    assert len(plain) == 2
    assert plain[0].split("\t")[:5] == [
        ids["Tell me a long story"],
        "Tell me a long story",
        "ollama",
        "m",
        "2",
    ]


def test_show_in_a_pipe_and_as_json(fake: FakeOpenAI, isolated: Isolated) -> None:
    ids = make_sessions(fake, isolated)
    shown = run(["sessions", "show", "haskell"], isolated)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("# haskell\n")
    assert "## 1 · You\n\nWhat is a monad?\n" in shown.stdout
    assert (
        "## 2 · Assistant · ollama · m\n\n_about 4 tokens in, 11 out_\n\n"
        "Monads wrap values.\nThey chain with bind.\n" in shown.stdout
    )
    assert "\x1b" not in shown.stdout
    cut = run(["sessions", "show", ids["Tell me a long story"][:6]], isolated).stdout
    assert "## 2 · Assistant · ollama · m (interrupted)\n\nPartial answer" in cut
    data = json.loads(run(["sessions", "show", "haskell", "--json"], isolated).stdout)
    assert data["session"]["name"] == "haskell"
    assert [(m["role"], m["status"]) for m in data["messages"]] == [
        ("user", "complete"),
        ("assistant", "complete"),
    ]
    assert data["messages"][1]["duration"] >= 0


def test_show_on_a_terminal_is_rendered(fake: FakeOpenAI, isolated: Isolated) -> None:
    make_sessions(fake, isolated)
    controller, terminal = pty.openpty()
    try:
        process = subprocess.run(
            [str(CHATCLI), "sessions", "show", "haskell"],
            stdin=subprocess.DEVNULL, stdout=terminal, stderr=subprocess.PIPE,
            env={**isolated.env, "TERM": "xterm-256color"}, timeout=30,
        )  # fmt: skip
        os.close(terminal)
        output = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(controller)
    assert process.returncode == 0, process.stderr
    text = output.decode()
    assert "\x1b[" in text and "What is a monad?" in text and "## You" not in text


def test_addressing_by_name_id_and_prefix(fake: FakeOpenAI, isolated: Isolated) -> None:
    ids = make_sessions(fake, isolated)
    target = ids["How do I speed up SQLite writes?"]
    for ref in (target, target[:5]):
        assert (
            json.loads(run(["sessions", "show", ref, "--json"], isolated).stdout)["session"]["id"]
            == target
        )
    missing = run(["sessions", "show", "nope"], isolated)
    assert missing.returncode == 2 and missing.stderr.startswith("chatcli: no session named 'nope'")


def test_rename_then_continue_by_the_new_name(fake: FakeOpenAI, isolated: Isolated) -> None:
    ids = make_sessions(fake, isolated)
    target = ids["How do I speed up SQLite writes?"]
    renamed = run(["sessions", "rename", target[:6], "sqlite"], isolated)
    assert renamed.returncode == 0 and "now named 'sqlite'" in renamed.stderr
    clash = run(["sessions", "rename", target, "haskell"], isolated)
    assert clash.returncode == 2 and "already named 'haskell'" in clash.stderr
    assert run([*ask(fake), "-S", "sqlite", "and reads?"], isolated).returncode == 0
    sent = [m["content"] for m in fake.requests[-1].body["messages"]]
    assert sent == [
        "How do I speed up SQLite writes?\nDetails follow.",
        "Use WAL mode.",
        "and reads?",
    ]


def test_export_markdown_and_json_to_a_file(fake: FakeOpenAI, isolated: Isolated) -> None:
    make_sessions(fake, isolated)
    md = run(["sessions", "export", "haskell"], isolated)
    assert md.returncode == 0 and md.stdout == run(["sessions", "show", "haskell"], isolated).stdout
    target = isolated.root / "out.json"
    written = run(
        ["sessions", "export", "haskell", "--format", "json", "-o", str(target)], isolated
    )
    assert written.returncode == 0, written.stderr
    assert written.stdout == "" and "wrote 2 message(s)" in written.stderr
    data = json.loads(target.read_text())
    assert data["messages"][0]["content"] == "What is a monad?"
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    bad = run(["sessions", "export", "haskell", "--format", "html"], isolated)
    assert bad.returncode == 2 and "--format must be md or json" in bad.stderr


def test_search_shows_the_matching_line(fake: FakeOpenAI, isolated: Isolated) -> None:
    ids = make_sessions(fake, isolated)
    found = run(["sessions", "search", "BIND"], isolated)
    assert found.returncode == 0
    assert found.stdout == f"{ids['haskell']}\thaskell\tassistant: They chain with bind.\n"
    as_json = json.loads(run(["sessions", "search", "sqlite", "--json"], isolated).stdout)
    assert [(h["message"]["role"], h["line"]) for h in as_json] == [
        ("user", "How do I speed up SQLite writes?"),
    ]
    nothing = run(["sessions", "search", "zebra"], isolated)
    assert nothing.returncode == 1 and "no message contains 'zebra'" in nothing.stderr


def test_rm_one_or_many_with_and_without_confirmation(fake: FakeOpenAI, isolated: Isolated) -> None:
    ids = make_sessions(fake, isolated)
    # A typo anywhere deletes nothing.
    typo = run(["sessions", "rm", "-y", "haskell", "no-such-session"], isolated)
    assert (
        typo.returncode == 2
        and len(json.loads(run(["sessions", "list", "--json"], isolated).stdout)) == 3
    )
    # On a terminal, the answer decides.
    for answer, expected_left in ((b"n\n", 3), (b"y\n", 1)):
        controller, terminal = pty.openpty()
        os.write(controller, answer)
        result = subprocess.run(
            [str(CHATCLI), "sessions", "rm", "haskell", ids["Tell me a long story"]],
            stdin=terminal, capture_output=True, text=True, env=isolated.env, timeout=30,
        )  # fmt: skip
        os.close(terminal)
        os.close(controller)
        assert "Delete 2 session(s)" in result.stderr
        left = json.loads(run(["sessions", "list", "--json"], isolated).stdout)
        assert len(left) == expected_left, result.stderr
    assert (
        run(["sessions", "rm", "-y", ids["How do I speed up SQLite writes?"]], isolated).returncode
        == 0
    )
    assert json.loads(run(["sessions", "list", "--json"], isolated).stdout) == []
