"""The real ``chatcli repl`` in a pseudo-terminal, read through a VT100 screen emulator."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import sqlite3
import struct
import termios
import time

import pyte
import pytest

from chatcli.store import Stores
from tests.conftest import CHATCLI, Isolated
from tests.servers import FakeOpenAI

COLUMNS, ROWS = 100, 30


class AnsweringScreen(pyte.Screen):
    """A screen that answers the program's queries (cursor position reports), as terminals do."""

    def __init__(self, columns: int, rows: int) -> None:
        super().__init__(columns, rows)
        self.fd: int | None = None

    def write_process_input(self, data: str) -> None:
        if self.fd is not None:
            os.write(self.fd, data.encode())


class Terminal:
    """chatcli running on a pty; what it draws is kept on a pyte screen."""

    def __init__(self, args: list[str], env: dict[str, str], *, shell: str | None = None) -> None:
        """chatcli ``args`` on a new pseudo-terminal; ``shell``: a sh command line instead
        (a pipeline into chatcli, say), with the terminal as its controlling one."""
        self.screen = AnsweringScreen(COLUMNS, ROWS)
        self.stream = pyte.ByteStream(self.screen)
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            if shell is not None:
                os.execve("/bin/sh", ["/bin/sh", "-c", shell], env)
            os.execve(str(CHATCLI), [str(CHATCLI), *args], env)
        self.screen.fd = self.fd
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
        self.raw = bytearray()
        self.exit_code: int | None = None

    def pump(self, seconds: float = 0.05) -> None:
        ready, _, _ = select.select([self.fd], [], [], seconds)
        if ready:
            try:
                data = os.read(self.fd, 65536)
            except OSError:
                data = b""
            self.raw += data
            self.stream.feed(data)

    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display)

    def wait_for(self, needle: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.text():
                return
            self.pump()
        raise AssertionError(f"{needle!r} never appeared; the screen:\n{self.text()}")

    def wait_prompt(self, timeout: float = 20) -> None:
        """Until the prompt reads keys itself (the terminal out of line mode): keys typed
        before then go through the terminal's line discipline, as for any program starting."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not termios.tcgetattr(self.fd)[3] & termios.ICANON:
                return
            self.pump()
        raise AssertionError(f"the prompt never started; the screen:\n{self.text()}")

    def type(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def wait_exit(self, timeout: float = 20) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump()
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.exit_code = os.waitstatus_to_exitcode(status)
                return self.exit_code
        raise AssertionError(f"chatcli repl did not exit; the screen:\n{self.text()}")

    def close(self) -> None:
        if self.exit_code is None:
            os.kill(self.pid, 9)
            os.waitpid(self.pid, 0)
        os.close(self.fd)


def test_two_messages_a_command_and_ctrl_c_during_a_slow_answer(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    env = {**isolated.env, "TERM": "xterm-256color"}
    terminal = Terminal(
        ["repl", "-p", "ollama", "-m", "first-model", "--base-url", fake.base_url], env
    )
    try:
        terminal.wait_for("/help lists commands")
        terminal.wait_for("ollama · first-model · new session")  # the bottom toolbar

        terminal.type("What is **Markdown**?\r")
        terminal.wait_for("Hello, world!")
        terminal.wait_for("ollama · first-model · What is **Markdown**?")

        terminal.type("/model second-model\r")
        terminal.wait_for("model: second-model")

        fake.pieces = ["Slow ", "answer ", "number ", "two ", "goes ", "on ", "and ", "on."]
        fake.delay = 0.4
        terminal.type("Tell me more\r")
        terminal.wait_for("Slow answer")
        terminal.type("\x03")  # Ctrl-C while it streams
        terminal.wait_for("[interrupted]")
        assert "and on." not in terminal.text()

        terminal.type("\x04")  # Ctrl-D on the empty prompt
        assert terminal.wait_exit() == 0
    finally:
        terminal.close()

    screen = terminal.text()
    assert "What is **Markdown**?" in screen  # the input line as typed
    # The second request carried the first exchange, to the model chosen with /model.
    second = fake.requests[-1].body
    assert second["model"] == "second-model"
    assert [m["content"] for m in second["messages"]] == [
        "What is **Markdown**?",
        "Hello, world!",
        "Tell me more",
    ]
    db = sqlite3.connect(isolated.chatcli_home / "data" / "sessions.db")
    rows = db.execute("SELECT role, content, model, status FROM messages ORDER BY id").fetchall()
    db.close()
    assert rows[:3] == [
        ("user", "What is **Markdown**?", "first-model", "complete"),
        ("assistant", "Hello, world!", "first-model", "complete"),
        ("user", "Tell me more", "second-model", "complete"),
    ]
    role, content, model, status = rows[3]
    assert (role, model, status) == ("assistant", "second-model", "interrupted")
    assert content.startswith("Slow answer") and not content.endswith("on.")


def test_a_question_typed_during_an_answer_is_sent_by_its_enter(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    env = {**isolated.env, "TERM": "xterm-256color"}
    terminal = Terminal(["repl", "-p", "ollama", "-m", "m", "--base-url", fake.base_url], env)
    try:
        terminal.wait_prompt()
        fake.pieces = ["Slow ", "first ", "answer ", "ends."]
        fake.delay = 0.3
        terminal.type("first question\r")
        terminal.wait_for("Slow first")
        # Typed ahead while the answer streams, Enter included, as one does in a shell.
        terminal.type("second question\r")
        terminal.wait_for("ends.")
        fake.delay = 0
        terminal.wait_for("> second question")
        deadline = time.monotonic() + 20
        while terminal.text().count("ends.") < 2 and time.monotonic() < deadline:
            terminal.pump()  # the second answer: its Enter sent it
        assert terminal.text().count("ends.") == 2, terminal.text()
        terminal.wait_for("\n>")  # and the prompt is back
        terminal.type("\x04")
        assert terminal.wait_exit() == 0
    finally:
        terminal.close()
    asked = [r.body["messages"][-1]["content"] for r in fake.requests]
    assert asked == ["first question", "second question"]
    first_answer = terminal.text().split("> first question", 1)[1].split("> second", 1)[0]
    assert "second question" not in first_answer  # not echoed into the streaming answer


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_or_sighup_during_an_answer_keeps_the_part_shown(
    fake: FakeOpenAI, isolated: Isolated, signum: int, code: int
) -> None:
    env = {**isolated.env, "TERM": "xterm-256color"}
    args = ["repl", "-p", "ollama", "-m", "m", "--base-url", fake.base_url, "-S", "held"]
    terminal = Terminal(args, env)
    try:
        terminal.wait_prompt()
        fake.mode, fake.stall_seconds = "stall", 20.0
        terminal.type("tell me\r")
        terminal.wait_for("Hello")
        os.kill(terminal.pid, signum)
        assert terminal.wait_exit() == code
    finally:
        terminal.close()
    rows = Stores(isolated.chatcli_home / "data").sessions
    session = rows.find_or_none("held")
    assert session is not None
    saved = [(m.role, m.content, m.status) for m in rows.messages(session.id)]
    assert saved == [("user", "tell me", "complete"), ("assistant", "Hello", "interrupted")]
    # The answer was ended on screen as for Ctrl-C: the cursor it hid is shown again.
    assert b"\x1b[?25h" in terminal.raw[terminal.raw.rindex(b"Hello") :]


def test_piped_text_becomes_context_and_the_keys_come_from_the_terminal(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    # git diff | chatcli repl: stdin is the pipe, the REPL reads keys from /dev/tty.
    env = {**isolated.env, "TERM": "xterm-256color"}
    command = (
        f"printf 'the diff\\n' | exec {CHATCLI} repl -p ollama -m m --base-url {fake.base_url}"
    )
    terminal = Terminal([], env, shell=command)
    try:
        terminal.wait_for("+ (stdin) (9 bytes, ~3 tokens)")
        terminal.wait_prompt()
        terminal.type("explain\r")
        terminal.wait_for("Hello, world!")
        terminal.wait_for("Hello, world!\n>")  # the prompt is back (a key before it is lost)
        terminal.type("\x04")
        assert terminal.wait_exit() == 0
    finally:
        terminal.close()
    content = fake.requests[-1].body["messages"][-1]["content"]
    assert content == "(stdin)\n```\nthe diff\n```\n\nexplain"


def test_ctrl_d_typed_during_an_answer_leaves_once_it_ends(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    env = {**isolated.env, "TERM": "xterm-256color"}
    terminal = Terminal(["repl", "-p", "ollama", "-m", "m", "--base-url", fake.base_url], env)
    try:
        terminal.wait_prompt()
        fake.pieces = ["Slow ", "answer ", "ends."]
        fake.delay = 0.3
        terminal.type("question\r")
        terminal.wait_for("Slow")
        terminal.type("\x04")  # typed ahead, as a key: the next (empty) prompt reads it
        assert terminal.wait_exit() == 0
    finally:
        terminal.close()
    assert "ends." in terminal.text()
