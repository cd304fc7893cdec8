"""Small per-provider state (auth tokens, their expiry and use counts), one private file each.

``DATA/providers/NAME.json``, 0600, replaced atomically. A damaged file is moved aside and the
provider starts afresh (it logs in again), with a warning. A number no state holds (NaN, an
infinity such as ``1e400``, or beyond 2**53) makes the file damaged too: it would otherwise
break every later run of the provider that reads it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from chatcli.store.files import locked, read_json, set_aside, write_json

#: The largest number (in size) a state file may hold: every integer up to it is exact as a
#: float too (timestamps, in seconds or milliseconds, and counts are far below it).
MAX_NUMBER: Final = 2.0**53


class StateStore:
    """One provider's state as a JSON object. ``base``: the top of chatcli's tree it is in
    (the data directory; by default the file's own directory)."""

    def __init__(self, path: Path, *, base: Path | None = None) -> None:
        self.path = path
        self.base = base if base is not None else path.parent

    def load(self) -> dict[str, Any]:
        what = "the provider state file"
        data = read_json(self.path, what=what, base=self.base)
        if data is None:
            return {}
        if not isinstance(data, dict) or not numbers_in_range(data):
            set_aside(self.path, what, "not a state object with numbers in range")
            return {}
        return data

    def save(self, data: dict[str, Any]) -> None:
        write_json(self.path, data, base=self.base)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the state for a load-change-save (other processes wait)."""
        with locked(self.path, base=self.base):
            yield


def numbers_in_range(data: Any, limit: float = MAX_NUMBER) -> bool:
    """Whether every number in ``data`` (JSON: dicts, lists, scalars) is finite and at most
    ``limit`` in size. Walked with a stack, so no depth of nesting can overflow it."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, int | float) and not isinstance(item, bool):
            if isinstance(item, float) and not math.isfinite(item):
                return False
            if abs(item) > limit:  # compared exactly: a huge int never becomes a float
                return False
    return True
