"""``chatcli render``: Markdown piped in, rendered as it arrives on a real pseudo-terminal, and
passed through unchanged into a pipe."""

from __future__ import annotations

import contextlib
import os
import select
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

from tests.conftest import (
    CHATCLI,
    Isolated,
    assert_one_line_error,
    run,
    run_with_terminal_stdin,
)
from tests.test_repl_terminal import Terminal

NOTES = """\
# Release notes

Some *emphasis*, some **strength** and `inline code`.

- one item
- another item, long enough to wrap around the edge of the screen when it is rendered there
  by the terminal of a hundred columns

> a quote

```python
def greet(name):
    return f"hello {name}"
```

| name | size |
| ---- | ---: |
| a    |    1 |
| b    |   22 |

The end.
"""

#: Writes argv[1]'s text in pieces of argv[2] characters, pausing between them.
FEEDER = """
import sys, time
text, size = open(sys.argv[1]).read(), int(sys.argv[2])
for start in range(0, len(text), size):
    sys.stdout.write(text[start:start + size])
    sys.stdout.flush()
    time.sleep(0.03)
"""


def rendered_on_a_terminal(shell: str, isolated: Isolated) -> tuple[str, bytes, int]:
    """(the screen, the bytes written, the exit code) of a sh pipeline on a pseudo-terminal."""
    term = Terminal([], {**isolated.env, "TERM": "xterm-256color"}, shell=shell)
    try:
        code = term.wait_exit(timeout=30)
        return term.text(), bytes(term.raw), code
    finally:
        term.close()


def test_markdown_fed_in_pieces_shows_what_the_whole_text_shows(
    isolated: Isolated, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.md"
    notes.write_text(NOTES)
    feeder = tmp_path / "feeder.py"
    feeder.write_text(FEEDER)
    render = f"{shlex.quote(str(CHATCLI))} render"
    whole, _, code = rendered_on_a_terminal(f"cat {notes} | {render}", isolated)
    assert code == 0
    for size in (7, 61):  # pieces that cut words, lines and blocks anywhere
        feed = f"{shlex.quote(sys.executable)} {feeder} {notes} {size}"
        pieces, _, code = rendered_on_a_terminal(f"{feed} | {render}", isolated)
        assert code == 0
        assert pieces == whole
    # It was rendered, not echoed: the Markdown's marks are gone, the text is there.
    assert "Release notes" in whole and "# Release" not in whole and "**" not in whole
    assert 'return f"hello {name}"' in whole and "```" not in whole
    # Code blocks are numbered on a terminal, from the start of the input.
    assert "[1] python" in whole.splitlines()


def test_into_a_pipe_the_bytes_pass_unchanged(isolated: Isolated) -> None:
    data = b"# Title\n\n\x1b[31mred\x1b[0m \xff\xfe not UTF-8 \xe2\x82\xac\r\nend"
    result = subprocess.run(
        [str(CHATCLI), "render"], input=data, capture_output=True, env=isolated.env, timeout=30
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, data, b"")
    # --markdown renders into a pipe too, still sanitized of the input's own escapes.
    marked = run(["render", "--markdown"], isolated, input="# Title\n\nbody \x1b]52;c;eA==\x07\n")
    assert marked.returncode == 0
    assert "Title" in marked.stdout and "# Title" not in marked.stdout
    assert "\x1b]52" not in marked.stdout and "\x07" not in marked.stdout
    # No code block labels into a pipe.
    fenced = run(["render", "--markdown"], isolated, input="```sh\nls\n```\n")
    assert fenced.returncode == 0 and "ls" in fenced.stdout and "[1]" not in fenced.stdout


def test_nothing_hostile_reaches_the_terminal(isolated: Isolated, tmp_path: Path) -> None:
    hostile = tmp_path / "hostile.md"
    hostile.write_bytes(b"# Hi\n\ncopy \x1b]52;c;SGVsbG8=\x07 me \x1b[2J and \x9b31m this\n")
    screen, raw, code = rendered_on_a_terminal(
        f"cat {hostile} | {shlex.quote(str(CHATCLI))} render", isolated
    )
    assert code == 0
    assert b"\x1b]52" not in raw and b"\x1b[2J" not in raw and b"\x07" not in raw
    assert "copy" in screen and "me" in screen


def test_ctrl_c_stops_it_keeping_what_was_shown(isolated: Isolated, tmp_path: Path) -> None:
    stalled = tmp_path / "stalled.py"
    stalled.write_text(
        "import sys, time\nsys.stdout.write('# Partial\\n\\nfirst line\\n\\n')\n"
        "sys.stdout.flush()\ntime.sleep(30)\n"
    )
    # The shell outlives Ctrl-C (a trap, which its children do not inherit) to say how
    # chatcli ended.
    pipeline = f"{shlex.quote(sys.executable)} {stalled} 2>/dev/null | {CHATCLI} render"
    term = Terminal(
        [],
        {**isolated.env, "TERM": "xterm-256color"},
        shell=f"trap true INT; {pipeline}; echo chatcli exited $?",
    )
    try:
        term.wait_for("first line")
        term.type("\x03")
        term.wait_for("chatcli exited 130", timeout=15)
        assert "Partial" in term.text() and "interrupted" in term.text()
    finally:
        term.close()


def test_a_terminal_on_stdin_is_a_usage_error(isolated: Isolated) -> None:
    result = run_with_terminal_stdin(["render"], isolated)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "nothing piped in")


#: Writes argv[1] MiB of one paragraph (lines, never a blank one), touches argv[2], then goes
#: on writing a word now and then (ending when the reader is gone).
ENDLESS = """
import sys, time
out = sys.stdout.buffer
line = ("word " * 19 + "word\\n").encode()
for _ in range((int(sys.argv[1]) << 20) // len(line)):
    out.write(line)
out.flush()
open(sys.argv[2], "w").close()
while True:
    time.sleep(0.2)
    out.write(b"word ")
    out.flush()
"""


def _child_running(parent: int, word: str) -> int:
    """The pid of ``parent``'s child whose command line has ``word``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and word.encode() in command:
            return int(entry.name)
    raise AssertionError(f"no {word} process under {parent}")


def _peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(kib) / 1024


#: chatcli render's peak memory while an endless paragraph streams in: about 31 MiB with
#: what it holds bounded, over 120 MiB (and growing with the input) without.
PEAK_RSS_MIB: Final = 80


def test_an_endless_paragraph_is_held_in_bounds_and_sigterm_ends_it_at_once(
    isolated: Isolated, tmp_path: Path
) -> None:
    feeder, done = tmp_path / "endless.py", tmp_path / "done"
    feeder.write_text(ENDLESS)
    feed = f"{shlex.quote(sys.executable)} {feeder} 6 {done} 2>/dev/null"
    term = Terminal(
        [],
        {**isolated.env, "TERM": "xterm-256color"},
        shell=f"{feed} | {shlex.quote(str(CHATCLI))} render; echo chatcli exited $?",
    )
    shown = bytearray()

    def drain(seconds: float) -> None:
        # Read what is drawn without a screen emulator (6 MiB through one is slow).
        ready, _, _ = select.select([term.fd], [], [], seconds)
        if ready:
            with contextlib.suppress(OSError):
                shown.extend(os.read(term.fd, 1 << 16))
                del shown[: -(1 << 16)]

    try:
        deadline = time.monotonic() + 60
        while not done.exists():  # chatcli took in all but what the pipe and its queue hold
            assert time.monotonic() < deadline, "6 MiB of one paragraph not read in 60 s"
            drain(0.05)
        settle = time.monotonic() + 2
        while time.monotonic() < settle:  # the paragraph goes on: chatcli keeps showing it
            drain(0.05)
        chatcli = _child_running(term.pid, "render")
        peak = _peak_rss_mib(chatcli)
        assert peak < PEAK_RSS_MIB, f"peak RSS {peak:.0f} MiB"
        os.kill(chatcli, signal.SIGTERM)
        stopped = time.monotonic()
        while b"chatcli exited" not in shown:
            assert time.monotonic() - stopped < 5, "still running 5 s after SIGTERM"
            drain(0.05)
        drain(0.2)
        assert b"chatcli exited 143" in shown
        assert b"word word" in shown and b"\x1b]" not in shown
    finally:
        term.close()
