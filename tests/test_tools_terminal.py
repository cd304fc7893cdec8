"""Consent on a real pseudo-terminal (issue 19): a tool that acts shows its call and waits for
one key: y runs it, n does not (the model is told), a runs it and the tool's later calls
without asking. Keys typed before the question are no answer; the model's arguments and the
tool's output reach the screen only made safe."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.conftest import CHATCLI, Isolated
from tests.servers import FakeOpenAI
from tests.test_repl_terminal import Terminal
from tests.test_tools_cli import call, calls_reply, text_reply, tool_messages

QUESTION = "Allow it? [y]es, [n]o, [a]lways for this tool:"


def start(fake: FakeOpenAI, isolated: Isolated, *args: str) -> Terminal:
    env = {**isolated.env, "TERM": "xterm-256color"}
    command = ["ask", "-p", "ollama", "-m", "m", "--base-url", fake.base_url, "--tool"]
    return Terminal([*command, "run_shell", *args, "do it"], env)


def shell(command: str, call_id: str = "c1") -> dict[str, Any]:
    return calls_reply(call(0, "run_shell", {"command": command}, call_id), text="Running it.")


def wait_question(terminal: Terminal, count: int = 1) -> None:
    deadline = time.monotonic() + 20
    while terminal.text().count(QUESTION) < count and time.monotonic() < deadline:
        terminal.pump()
    assert terminal.text().count(QUESTION) >= count, terminal.text()
    time.sleep(0.2)  # reading keys one at a time now


def test_yes_runs_the_command_and_the_answer_goes_on(
    fake: FakeOpenAI, isolated: Isolated, tmp_path: Path
) -> None:
    target = tmp_path / "ran.txt"
    fake.replies = [shell(f"echo ran > {target}"), text_reply("Done: it ran.")]
    terminal = start(fake, isolated)
    try:
        wait_question(terminal)
        assert "run_shell (built-in) would run with:" in terminal.text()
        assert f'"command": "echo ran > {target}"' in terminal.text()
        assert not target.exists()
        terminal.type("y")
        terminal.wait_for("Done: it ran.")
        assert terminal.wait_exit() == 0
    finally:
        terminal.close()
    assert target.read_text() == "ran\n"
    assert "→ 15 characters" in terminal.text()  # "[exit status 0]"
    assert tool_messages(fake)[0]["content"] == "[exit status 0]"


def test_no_runs_nothing_and_tells_the_model(
    fake: FakeOpenAI, isolated: Isolated, tmp_path: Path
) -> None:
    target = tmp_path / "ran.txt"
    fake.replies = [shell(f"echo ran > {target}"), text_reply("Fine, I will not.")]
    terminal = start(fake, isolated)
    try:
        wait_question(terminal)
        terminal.type("x")  # not an answer: passed over
        time.sleep(0.3)
        assert "Fine" not in terminal.text()
        terminal.type("n")
        terminal.wait_for("Fine, I will not.")
        assert terminal.wait_exit() == 0
    finally:
        terminal.close()
    assert not target.exists()
    assert "declined" in tool_messages(fake)[0]["content"]


def test_always_asks_once_for_the_tool_and_keys_typed_early_are_no_answer(
    fake: FakeOpenAI, isolated: Isolated, tmp_path: Path
) -> None:
    first, second = tmp_path / "one.txt", tmp_path / "two.txt"
    slow = {**shell(f"echo 1 > {first}", "c1"), "pieces": ["Running", " it", " now", "."]}
    fake.replies = [slow, shell(f"echo 2 > {second}", "c2"), text_reply("Both done.")]
    fake.delay = 0.4  # the first reply streams slowly: a key typed now comes before the question
    terminal = start(fake, isolated)
    try:
        terminal.wait_for("Running")
        terminal.type("y")  # typed ahead, before the question: dropped, not consent
        wait_question(terminal)
        time.sleep(0.5)
        assert not first.exists()
        terminal.type("a")
        terminal.wait_for("Both done.")
        assert terminal.wait_exit() == 0
    finally:
        terminal.close()
    assert first.read_text() == "1\n" and second.read_text() == "2\n"
    assert terminal.text().count(QUESTION) == 1


def test_hostile_arguments_and_output_reach_the_screen_made_safe(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    hostile = "printf '\\033]52;c;aGk=\\007\\033[2J\\033[31mred'"
    fake.replies = [
        calls_reply(call(0, "run_shell", '{"command": "\x1b[2J' + hostile[1:] + "}", "c1")),
        calls_reply(call(0, "run_shell", {"command": hostile}, "c2")),
        text_reply("ok"),
    ]
    terminal = start(fake, isolated, "--allow-tool", "run_shell")
    try:
        terminal.wait_for("ok")
        assert terminal.wait_exit() == 0
    finally:
        terminal.close()
    raw = bytes(terminal.raw)
    assert b"\x1b]52" not in raw and b"\x1b[2J" not in raw and b"\x07" not in raw
    # The model got the output as it was: data, not the terminal's business.
    output = tool_messages(fake)[-1]["content"]
    assert output.startswith("\x1b]52;c;aGk=\x07\x1b[2J\x1b[31mred")
    assert QUESTION not in terminal.text()  # allow-listed: not asked


def test_characters_that_hide_or_reorder_text_are_shown_by_name(
    fake: FakeOpenAI, isolated: Isolated, tmp_path: Path
) -> None:
    target = tmp_path / "ran.txt"
    # On screen "echo safe" would seem to end the line; the override hides what follows.
    fake.replies = [shell(f"echo safe \u202e; touch {target}"), text_reply("ok")]
    terminal = start(fake, isolated)
    try:
        wait_question(terminal)
        assert "echo safe <U+202E>; touch" in terminal.text()
        assert "\u202e" not in terminal.text()
        terminal.type("n")
        assert terminal.wait_exit() == 0
    finally:
        terminal.close()
    assert not target.exists()


def test_with_stderr_not_on_the_terminal_nobody_is_asked(
    fake: FakeOpenAI, isolated: Isolated, tmp_path: Path
) -> None:
    target = tmp_path / "ran.txt"
    fake.replies = [shell(f"echo ran > {target}"), text_reply("refused, fine")]
    env = {**isolated.env, "TERM": "xterm-256color"}
    args = ["ask", "-p", "ollama", "-m", "m", "--base-url", fake.base_url, "--tool", "run_shell"]
    log = tmp_path / "err.log"
    line = " ".join([*args, "do-it"])
    terminal = Terminal([], env, shell=f"{CHATCLI} {line} 2>{log}")
    try:
        terminal.wait_for("refused, fine")
        assert terminal.wait_exit() == 0
    finally:
        terminal.close()
    assert not target.exists()
    assert QUESTION not in log.read_text() and "refused" in tool_messages(fake)[0]["content"]


def test_in_the_repl_consent_is_asked_and_the_prompt_comes_back(
    fake: FakeOpenAI, isolated: Isolated, tmp_path: Path
) -> None:
    target = tmp_path / "ran.txt"
    fake.replies = [shell(f"echo ran > {target}"), text_reply("It ran.")]
    env = {**isolated.env, "TERM": "xterm-256color"}
    args = ["repl", "-p", "ollama", "-m", "m", "--base-url", fake.base_url, "--tool", "run_shell"]
    terminal = Terminal(args, env)
    try:
        terminal.wait_for("/help lists commands")
        terminal.wait_prompt()
        terminal.type("make the file\r")
        wait_question(terminal)
        terminal.type("a")
        terminal.wait_for("It ran.")
        terminal.wait_prompt()  # reading keys again
        terminal.type("/tools\r")
        terminal.wait_for("run_shell: Run a command")
        terminal.wait_for("(allowed)")  # "always" holds for the session
        terminal.type("\x04")
        assert terminal.wait_exit() == 0
    finally:
        terminal.close()
    assert target.read_text() == "ran\n"


def test_with_stdin_piped_in_consent_is_read_from_the_terminal(
    fake: FakeOpenAI, isolated: Isolated, tmp_path: Path
) -> None:
    target = tmp_path / "ran.txt"
    fake.replies = [shell(f"echo ran > {target}"), text_reply("Done.")]
    env = {**isolated.env, "TERM": "xterm-256color"}
    args = ["ask", "-p", "ollama", "-m", "m", "--base-url", fake.base_url, "--tool", "run_shell"]
    terminal = Terminal([], env, shell=f"echo piped context | {CHATCLI} {' '.join(args)} do-it")
    try:
        wait_question(terminal)
        terminal.type("y")
        terminal.wait_for("Done.")
        assert terminal.wait_exit() == 0
    finally:
        terminal.close()
    assert target.read_text() == "ran\n"
    assert fake.requests[0].body["messages"][0]["content"].startswith("piped context")
