"""``chatcli ask`` on a real pseudo-terminal: live Markdown, --raw, and escape-sequence safety."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import termios
import time

import pytest

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
    assert code == 3, text  # cut at the token limit: not whole
    warning = text.index("chatcli: warning: ollama: the answer was cut at the token limit")
    assert text.rindex("word59") < warning


def test_ctrl_z_during_an_answer_gives_the_shell_a_sane_terminal_and_fg_resumes(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    """Job control for real: an interactive bash on a pty runs chatcli, Ctrl-Z stops it."""
    import shutil

    import pyte

    bash = shutil.which("bash")
    assert bash is not None
    fake.pieces = ["Slow ", "first ", "part. ", "then ", "the ", "rest ", "of ", "it."]
    fake.delay = 0.3
    env = {**isolated.env, "TERM": "xterm-256color", "PS1": "$ ", "HISTFILE": "/dev/null"}
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(bash, [bash, "--norc", "--noprofile", "-i"], env)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    screen = pyte.Screen(80, 24)
    stream = pyte.ByteStream(screen)
    raw = bytearray()

    def pump_until(check: object, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if callable(check) and check():
                return
            ready, _, _ = select.select([fd], [], [], 0.05)
            if ready:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    data = b""
                raw.extend(data)
                stream.feed(data)
        text = "\n".join(line.rstrip() for line in screen.display)
        raise AssertionError(f"timed out; the screen:\n{text}")

    def shown(needle: str) -> bool:
        return needle in "\n".join(screen.display)

    try:
        pump_until(lambda: shown("$ "))
        command = f"{CHATCLI} ask -p ollama -m m --base-url {fake.base_url} go\r"
        os.write(fd, command.encode())
        pump_until(lambda: shown("Slow first"))
        os.write(fd, b"\x1a")  # Ctrl-Z
        pump_until(lambda: b"$ " in raw[raw.find(b"Stopped") :])  # the shell's prompt is back
        stopped = raw[: raw.find(b"Stopped")]
        assert stopped.rfind(b"\x1b[?25h") > stopped.rfind(b"\x1b[?25l")  # cursor visible
        os.write(fd, b"fg\r")
        pump_until(lambda: raw.count(b"\x1b[?25l") >= 2)  # chatcli took the terminal back
        os.write(fd, b"typed-during")  # not echoed into the answer: echo is off again
        pump_until(lambda: shown("it."))
        pump_until(lambda: raw.rstrip().endswith(b"typed-during"))  # now bash has it
        os.write(fd, b"\x15echo done-$?\r")  # Ctrl-U, then chatcli's exit status
        pump_until(lambda: shown("done-0"))
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(fd)
    text = "\n".join(line.rstrip() for line in screen.display)
    answer = text[text.index("$ fg") : text.index("it.")]
    assert "Slow first part." in answer and "typed-during" not in answer


def screen_of(output: bytes) -> str:
    import pyte

    screen = pyte.Screen(80, 24)
    pyte.ByteStream(screen).feed(output)
    return "\n".join(line.rstrip() for line in screen.display)


@pytest.mark.parametrize("mode", ["collapse", "show", "hide"])
def test_a_models_thinking_streams_above_the_answer_then_collapses_shows_or_hides(
    fake: FakeOpenAI, isolated: Isolated, mode: str
) -> None:
    fake.reasoning = ["The user greets me. ", "I should greet back \x1b]0;pwned\x07politely."]
    fake.pieces = ["Hello", " there!"]
    fake.delay = 0.1
    args = [
        "ask",
        "-p",
        "ollama",
        "-m",
        "m",
        "--base-url",
        fake.base_url,
        "--reasoning",
        mode,
        "hi",
    ]
    code, out = run_in_terminal(args, {**isolated.env, "TERM": "xterm-256color"})
    assert code == 0, out
    screen = screen_of(out)
    assert "Hello there!" in screen
    assert b"\x1b]0;pwned" not in out  # reasoning is sanitized like any text
    if mode == "hide":
        assert b"greets me" not in out and "thought for" not in screen
    elif mode == "show":
        assert "The user greets me. I should greet back" in screen
        assert screen.index("greets me") < screen.index("Hello there!")
        assert b"\x1b[2m" in out  # dimmed
    else:
        assert b"greets me" in out  # it was drawn while the model thought...
        assert "greets me" not in screen  # ...and on the screen one line stays
        line = next(line for line in screen.splitlines() if "thought for" in line)
        assert line.strip().endswith("characters)")
        assert screen.index("thought for") < screen.index("Hello there!")
