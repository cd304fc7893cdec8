"""Everything chatcli keeps on disk, usable from Python without the CLI.

    >>> from chatcli.config import Paths, environment
    >>> from chatcli.store import Stores
    >>> env = environment()
    >>> stores = Stores.at(Paths.from_env(env), env=env)   # CHATCLI_HOME or the platform's dirs
    >>> stores.cookies.for_domain("chat-gpt.org")

``Stores`` reads neither the environment nor config.toml: it is given what it needs.

Files live under the data directory with owner-only permissions, and nothing in it is followed
through a symbolic link (see :mod:`chatcli.store.files`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from chatcli.config import Paths, Settings, browser_opt_in
from chatcli.store.cookies import Cookie, CookieStore
from chatcli.store.sessions import Session, SessionStore, StoredMessage
from chatcli.store.state import StateStore

if TYPE_CHECKING:
    from chatcli.context import AppContext

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
    """The stores under one data directory, and what reading a browser for cookies needs."""

    data_dir: Path
    #: chatcli's cache dir, where a locked browser database is copied to be read (``None``: the
    #: system's temporary directory).
    cache_dir: Path | None = None
    #: The environment chatcli runs in: where a browser keeps its profiles, the session bus.
    env: Mapping[str, str] = field(default_factory=dict)
    #: The ``[cookies] from_browser`` opt-in and its profile, as config.toml gave them (already
    #: read: see :func:`chatcli.config.browser_opt_in`); ``None``: never read a browser.
    browser: tuple[str, str | None] | None = None
    cookies: CookieStore = field(init=False)
    sessions: SessionStore = field(init=False)

    def __post_init__(self) -> None:
        # The data directory is the top of chatcli's tree here: nothing in it is a link.
        self.cookies = CookieStore(self.data_dir / "cookies.json", base=self.data_dir)
        # Opened (and migrated) only when first used.
        self.sessions = SessionStore(self.data_dir / "sessions.db", base=self.data_dir)

    def state(self, provider: str) -> StateStore:
        safe = re.sub(r"[^a-z0-9_.-]", "_", provider.lower())
        return StateStore(self.data_dir / "providers" / f"{safe}.json", base=self.data_dir)

    def browser_source(self) -> tuple[str, str | None] | None:
        """``[cookies] from_browser`` (and ``profile``) of config.toml, when the user opted in."""
        return self.browser

    @classmethod
    def at(
        cls,
        paths: Paths,
        *,
        env: Mapping[str, str] | None = None,
        browser: tuple[str, str | None] | None = None,
    ) -> Stores:
        """The stores of these paths; ``env`` and the ``browser`` opt-in as :class:`Stores`."""
        return cls(
            paths.data_dir,
            cache_dir=paths.cache_dir,
            env=env if env is not None else {},
            browser=browser,
        )

    @classmethod
    def for_settings(cls, paths: Paths, settings: Settings) -> Stores:
        """The stores of these paths, with the settings' environment and config.toml's opt-in
        to read a browser."""
        return cls.at(paths, env=settings.env, browser=browser_opt_in(settings))

    @classmethod
    def for_context(cls, ctx: AppContext) -> Stores:
        """The stores of a command (the settings are read here if the command has not yet)."""
        return cls.for_settings(ctx.paths, ctx.settings)
