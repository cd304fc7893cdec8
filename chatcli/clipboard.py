"""Copying text for the REPL's ``/copy``: the system's clipboard tool where there is one, else
the terminal's own clipboard through OSC 52 (which works over SSH and in tmux with
``set-clipboard on``).

OSC 52 is an escape sequence that sets the clipboard; chatcli writes one only here, on the
user's ``/copy``. Everything else it prints is sanitized so that no answer, file or server can
make the terminal write to the clipboard (see ``render.sanitize``).
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from typing import Final

from chatcli.errors import ChatcliError

#: The tools tried, in order: (program, its arguments, the variable that must be set for it to
#: reach a clipboard, or ``None``).
TOOLS: Final = (
    ("wl-copy", (), "WAYLAND_DISPLAY"),
    ("xclip", ("-selection", "clipboard"), "DISPLAY"),
    ("xsel", ("--clipboard", "--input"), "DISPLAY"),
    ("pbcopy", (), None),
    ("clip.exe", (), None),  # Windows, and WSL
)
#: The most copied through OSC 52 (terminals drop longer ones, some silently).
OSC52_LIMIT: Final = 100_000


def copy(text: str, env: Mapping[str, str], write_terminal: Callable[[str], None] | None) -> str:
    """Copy ``text``; how it went (the tool's name, or OSC 52). ``write_terminal`` writes raw
    to the terminal (``None``: there is none). Failing every way is a :class:`ChatcliError`."""
    data = text.encode("utf-8")
    for program, arguments, needs in TOOLS:
        if needs is not None and not env.get(needs):
            continue
        path = shutil.which(program, path=env.get("PATH", os.defpath))
        if path is None:
            continue
        try:
            subprocess.run(
                [path, *arguments],
                input=data,
                env=dict(env),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=5,
                check=True,
            )
        except (OSError, subprocess.SubprocessError):
            continue  # the next way
        return program
    if write_terminal is None:
        raise ChatcliError("no clipboard tool found, and no terminal to copy through")
    if len(data) > OSC52_LIMIT:
        raise ChatcliError(
            f"no clipboard tool found, and {len(data):,} bytes is more than a terminal takes "
            f"through OSC 52 ({OSC52_LIMIT:,}); /save N FILE writes a block to a file"
        )
    payload = base64.b64encode(data).decode("ascii")
    write_terminal(f"\x1b]52;c;{payload}\x07")
    return "the terminal's clipboard (OSC 52)"


def terminal_writer(stream: object) -> Callable[[str], None] | None:
    """A raw writer to ``stream`` (under chatcli's sanitizing wrapper) when it is a terminal."""
    from chatcli.render import unwrapped

    raw = unwrapped(stream)  # type: ignore[arg-type]
    try:
        if not os.isatty(raw.fileno()):
            return None
    except (AttributeError, OSError, ValueError):
        return None

    def write(text: str) -> None:
        raw.write(text)
        raw.flush()

    return write


__all__ = ["OSC52_LIMIT", "TOOLS", "copy", "terminal_writer"]
