"""The terminal sanitizer: model text made safe to print on a terminal.

Model text is untrusted: :func:`sanitize` makes every control character except newline and tab
visible before it reaches a terminal (ESC, CR, BEL, DEL, C1 such as 0x9B). It works per
character with no state, so an escape sequence split across two stream pieces is caught too.
"""

from __future__ import annotations

from typing import Final


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
