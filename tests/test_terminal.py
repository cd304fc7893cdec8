"""``chatcli ask`` on a real pseudo-terminal: live Markdown, --raw, and escape-sequence safety."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import termios
import time

from tests.conftest import CHATCLI, Isolated
from tests.servers import FakeOpenAI

HOSTILE = [
    "# Title\n\n",
    "Some **bold** text.\n\n",
    "clip \x1b]52;c;ZXZpbA==\x07 link \x1b]8;;http://evil\x1b\\x\x1b]8;;\x1b\\ ",
    "clear \x1b[2J\x1b[H csi \x9b2J split \x1b",
    "]0;title\x07 end\n\n",
    "[docs](https://evil.example/pwn)\n",
]


def run_in_terminal(args: list[str], env: dict[str, str], timeout: float = 30) -> tuple[int, bytes]:
    """Run chatcli with stdin, stdout and stderr on one 80x24 pseudo-terminal.

    Also checks that chatcli leaves the terminal's echo as it found it.
    """
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec chatcli on the terminal
        os.execve(str(CHATCLI), [str(CHATCLI), *args], env)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    output = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            continue
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        output += data
    _, status = os.waitpid(pid, 0)
    lflag = termios.tcgetattr(fd)[3]
    os.close(fd)
    assert lflag & termios.ECHO and lflag & termios.ECHOCTL, "terminal echo left off"
    return os.waitstatus_to_exitcode(status), bytes(output)


def test_markdown_renders_live_and_model_escapes_never_reach_the_terminal(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    fake.pieces = HOSTILE
    env = {**isolated.env, "TERM": "xterm-256color"}
    code, out = run_in_terminal(
        ["ask", "-p", "ollama", "-m", "m", "--base-url", fake.base_url, "hi"], env
    )
    assert code == 0, out
    text = out.decode("utf-8", errors="replace")
    assert "Title" in text and "bold" in text
    assert "**bold**" not in text  # rendered, not raw Markdown
    assert "\x1b[1m" in text  # Rich's own styling does reach the terminal
    for sequence in ("\x1b]52", "\x1b]8;;http://evil", "\x1b[2J", "\x1b]0;title"):
        assert sequence not in text
    assert b"\xc2\x9b" not in out  # the C1 CSI of the model
    assert "␛]52;c;ZXZpbA==" in text  # shown visibly instead
    assert "https://evil.example/pwn" in text  # a link shows its real target


def test_raw_on_a_terminal_is_plain_and_sanitized(fake: FakeOpenAI, isolated: Isolated) -> None:
    fake.pieces = HOSTILE
    code, out = run_in_terminal(
        ["ask", "--raw", "-p", "ollama", "-m", "m", "--base-url", fake.base_url, "hi"],
        {**isolated.env, "TERM": "xterm-256color"},
    )
    assert code == 0, out
    assert b"**bold**" in out
    assert b"\x1b" not in out and b"\xc2\x9b" not in out
    assert "␛[2J".encode() in out


def test_a_warning_during_a_live_answer_waits_until_the_answer_is_drawn(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    # A line written under the live region would leave a stale copy of the answer on screen.
    fake.pieces = [f"word{i} " for i in range(60)]
    fake.delay, fake.finish_reason = 0.01, "length"
    code, out = run_in_terminal(
        ["ask", "-p", "ollama", "-m", "m", "--base-url", fake.base_url, "hi"],
        {**isolated.env, "TERM": "xterm-256color"},
    )
    text = out.decode()
    assert code == 0, text
    warning = text.index("chatcli: warning: ollama: the answer was cut at the token limit")
    assert text.rindex("word59") < warning
