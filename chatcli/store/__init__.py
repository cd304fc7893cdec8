"""Everything chatcli keeps on disk, usable from Python without the CLI.

    >>> from chatcli.store import Stores
    >>> stores = Stores.default()          # CHATCLI_HOME or the platform's data dir
    >>> stores.cookies.for_domain("chat-gpt.org")

Files live under the data directory with owner-only permissions (see :mod:`chatcli.store.files`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from chatcli.config import Paths
from chatcli.store.cookies import Cookie, CookieStore
from chatcli.store.sessions import Session, SessionStore, StoredMessage
from chatcli.store.state import StateStore

__all__ = [
    "Cookie",
    "CookieStore",
    "Session",
    "SessionStore",
    "StateStore",
    "StoredMessage",
    "Stores",
]


@dataclass(slots=True)
class Stores:
    """The stores under one data directory."""

    data_dir: Path
    #: config.toml, where the ``[cookies] from_browser`` opt-in is read (``None``: never).
    config_file: Path | None = None
    cookies: CookieStore = field(init=False)
    sessions: SessionStore = field(init=False)

    def __post_init__(self) -> None:
        self.cookies = CookieStore(self.data_dir / "cookies.json")
        # Opened (and migrated) only when first used.
        self.sessions = SessionStore(self.data_dir / "sessions.db")

    def state(self, provider: str) -> StateStore:
        safe = re.sub(r"[^a-z0-9_.-]", "_", provider.lower())
        return StateStore(self.data_dir / "providers" / f"{safe}.json")

    def browser_source(self) -> tuple[str, str | None] | None:
        """``[cookies] from_browser`` (and ``profile``) of config.toml, when the user opted in.

        Read only when asked (a provider found no cookies), so the config is not parsed for it
        otherwise; a broken file is a :class:`~chatcli.errors.ConfigError` as everywhere.
        """
        if self.config_file is None:
            return None
        from chatcli.config import read_config_file

        table = read_config_file(self.config_file).get("cookies", {})
        browser = table.get("from_browser")
        return (browser, table.get("profile")) if browser else None

    @classmethod
    def at(cls, paths: Paths) -> Stores:
        """The stores of these paths; their config.toml may opt in to reading a browser."""
        return cls(paths.data_dir, config_file=paths.config_file)

    @classmethod
    def default(cls) -> Stores:
        """The stores the environment points at (``CHATCLI_HOME`` or platform dirs)."""
        return cls.at(Paths.from_env(os.environ))
