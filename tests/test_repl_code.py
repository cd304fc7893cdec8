"""The REPL's ``/copy`` and ``/save`` on a real pseudo-terminal: the clipboard tool when there is
one, else OSC 52 (written on ``/copy`` only), and a block saved to a file, asked before it
replaces one."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

from tests.conftest import Isolated
from tests.servers import FakeOpenAI
from tests.test_repl_terminal import Terminal

ANSWER = [
    "Two ways:\n\n```python\nprint('one')\n```\n\n",
    "and\n\n```sh\necho two\n```\n",
]
SCRUBBED = ("DISPLAY", "WAYLAND_DISPLAY")


def repl(fake: FakeOpenAI, isolated: Isolated, path: Path, **env: str) -> Terminal:
    base = {k: v for k, v in isolated.env.items() if k not in SCRUBBED}
    full = {**base, "TERM": "xterm-256color", "PATH": str(path), **env}
    terminal = Terminal(["repl", "-p", "ollama", "-m", "m", "--base-url", fake.base_url], full)
    terminal.wait_for("/help lists commands")
    fake.pieces = ANSWER
    terminal.type("show me\r")
    terminal.wait_for("echo two")
    return terminal


def test_copy_goes_through_osc_52_only_when_asked(
    fake: FakeOpenAI, isolated: Isolated, tmp_path: Path
) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()  # no clipboard tool on PATH
    terminal = repl(fake, isolated, empty)
    try:
        assert b"\x1b]52" not in terminal.raw  # the answer itself never sets the clipboard
        terminal.type("/copy 2\r")
        terminal.wait_for("copied 9 characters to the terminal's clipboard (OSC 52)")
        expected = base64.b64encode(b"echo two\n")
        assert terminal.raw.count(b"\x1b]52;c;") == 1
        assert b"\x1b]52;c;" + expected + b"\x07" in terminal.raw
        terminal.type("/copy 9\r")
        terminal.wait_for("has 2 code blocks")
        assert terminal.raw.count(b"\x1b]52;c;") == 1
        terminal.type("\x04")
        assert terminal.wait_exit() == 0
    finally:
        terminal.close()


def test_copy_uses_the_clipboard_tool_when_there_is_one(
    fake: FakeOpenAI, isolated: Isolated, tmp_path: Path
) -> None:
    tools = tmp_path / "bin"
    tools.mkdir()
    copied = tmp_path / "clipboard.txt"
    xclip = tools / "xclip"
    xclip.write_text(f"#!/bin/sh\n/bin/cat > {copied}\n")
    xclip.chmod(stat.S_IRWXU)
    terminal = repl(fake, isolated, tools, DISPLAY=":0")
    try:
        terminal.type("/copy\r")  # the whole answer
        terminal.wait_for("to xclip")
        terminal.type("\x04")
        assert terminal.wait_exit() == 0
    finally:
        terminal.close()
    assert copied.read_text() == "".join(ANSWER)
    assert b"\x1b]52" not in terminal.raw


def test_save_writes_a_block_and_asks_before_it_replaces_a_file(
    fake: FakeOpenAI, isolated: Isolated, tmp_path: Path
) -> None:
    target = tmp_path / "out.py"
    terminal = repl(fake, isolated, tmp_path)
    try:
        terminal.type(f"/save 1 {target}\r")
        terminal.wait_for("wrote code block 1")
        assert target.read_text() == "print('one')\n"
        terminal.type(f"/save 2 {target}\r")
        terminal.wait_for("exists; replace it? [y/N]")
        terminal.type("n\r")
        terminal.wait_for("(not saved)")
        assert target.read_text() == "print('one')\n"
        terminal.type(f"/save 2 {target}\r")
        terminal.wait_for("replace it? [y/N]")
        terminal.type("y\r")
        terminal.wait_for("wrote code block 2")
        terminal.type("\x04")
        assert terminal.wait_exit() == 0
    finally:
        terminal.close()
    assert target.read_text() == "echo two\n"
    assert not os.path.exists(isolated.root / "y")  # the answer went to the question, not a file
