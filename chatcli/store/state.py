"""Small per-provider state (auth tokens, their expiry and use counts), one private file each.

``DATA/providers/NAME.json``, 0600, replaced atomically. A damaged file is moved aside and the
provider starts afresh (it logs in again), with a warning.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from chatcli.store.files import locked, read_json, write_json


class StateStore:
    """One provider's state as a JSON object."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Any]:
        data = read_json(self.path, what="the provider state file")
        return data if isinstance(data, dict) else {}

    def save(self, data: dict[str, Any]) -> None:
        write_json(self.path, data)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the state for a load-change-save (other processes wait)."""
        with locked(self.path):
            yield
