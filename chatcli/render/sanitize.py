"""The terminal sanitizer: text from outside made safe to print on a terminal.

Model text, model names, error bodies, cookie names, config values: none is trusted.
:func:`sanitize` makes every control character except newline and tab visible (ESC, CR, BEL,
DEL, C1 such as 0x9B). It works per character with no state, so an escape sequence split across
two stream pieces is caught too.

:class:`SafeStream` is the sink in front of the terminal: the context wraps stderr in one always
and stdout when it is a terminal, so every command's output passes through :func:`sanitize`
without having to remember it. Writers that emit escape sequences of their own (Rich, the
Markdown renderer) take :attr:`SafeStream.raw` and make the text they are given safe themselves
(see ``render.make_console``). Into pipes and files stdout is not wrapped: the answer arrives
byte for byte.
"""

from __future__ import annotations

import io
from typing import IO, Final, TextIO


def _visible_table() -> dict[int, str]:
    table: dict[int, str] = {}
    for code in range(0x20):
        if code not in (0x09, 0x0A):
            table[code] = chr(0x2400 + code)  # U+2400.. "control pictures": ␛ ␍ ␇ ...
    table[0x7F] = "\u2421"  # ␡
    for code in range(0x80, 0xA0):
        table[code] = f"\\x{code:02x}"
    return table


_VISIBLE: Final = _visible_table()


def sanitize(text: str) -> str:
    """``text`` safe for a terminal: control characters other than ``\\n``/``\\t`` made visible."""
    return text.translate(_VISIBLE)


#: Characters that reorder or hide text (bidirectional overrides and isolates, zero-width
#: marks): harmless in prose, but in code they can make what is shown differ from what runs
#: (the "Trojan Source" trick). Code spans and blocks show them as ``<U+202E>``.
INVISIBLE_IN_CODE: Final = frozenset(
    [*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200B, 0x200C, 0x200D, 0x200E, 0x200F,
     0x2060, 0x061C, 0xFEFF]
)  # fmt: skip
_CODE_VISIBLE: Final = {code: f"<U+{code:04X}>" for code in INVISIBLE_IN_CODE}


def reveal_in_code(text: str) -> str:
    """Code's text with the characters of :data:`INVISIBLE_IN_CODE` shown by name."""
    return text.translate(_CODE_VISIBLE)


class SafeStream(io.TextIOBase, TextIO):
    """A text stream that passes everything written through :func:`sanitize` on to ``raw``."""

    def __init__(self, raw: IO[str]) -> None:
        super().__init__()
        self.raw = raw

    def write(self, text: str) -> int:
        self.raw.write(sanitize(text))
        return len(text)

    def flush(self) -> None:
        self.raw.flush()

    def fileno(self) -> int:
        return self.raw.fileno()

    def isatty(self) -> bool:
        return self.raw.isatty()

    def writable(self) -> bool:
        return True


def unwrapped(stream: IO[str]) -> IO[str]:
    """The stream under a :class:`SafeStream`, for a writer that sanitizes text itself."""
    return stream.raw if isinstance(stream, SafeStream) else stream
