"""The one context object a command runs with: streams, terminal facts, environment, paths.

``main()`` builds it once from the real process with :meth:`AppContext.from_process`, or takes
the one it is given (tests run commands in-process with their own streams, terminal facts and
environment); each command gets it with :meth:`AppContext.current`. Nothing below the CLI reads
``sys.stdout`` or ``os.environ`` for these facts.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import IO

from chatcli.config import Paths, Settings, environment, load_settings
from chatcli.render.sanitize import SafeStream


def _isatty(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError, OSError):
        return False


@dataclass(slots=True)
class AppContext:
    stdin: IO[str] | None
    stdout: IO[str]
    stderr: IO[str]
    stdin_isatty: bool
    stdout_isatty: bool
    stderr_isatty: bool
    env: Mapping[str, str]
    paths: Paths
    _settings: Settings | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # The one sanitizing sink: stderr always, stdout when a person reads it on a terminal
        # (into a pipe or file the answer goes byte for byte). See render.sanitize.
        if not isinstance(self.stderr, SafeStream):
            self.stderr = SafeStream(self.stderr)
        if self.stdout_isatty and not isinstance(self.stdout, SafeStream):
            self.stdout = SafeStream(self.stdout)

    @classmethod
    def from_process(cls) -> AppContext:
        env = environment()
        return cls(
            stdin=sys.stdin,
            stdout=sys.stdout,
            stderr=sys.stderr,
            stdin_isatty=sys.stdin is None or _isatty(sys.stdin),
            stdout_isatty=_isatty(sys.stdout),
            stderr_isatty=_isatty(sys.stderr),
            env=env,
            paths=Paths.from_env(env),
        )

    @classmethod
    def current(cls) -> AppContext:
        """The context of the command being run: the one :meth:`using` set, else the process's."""
        ctx = _CURRENT.get()
        return ctx if ctx is not None else cls.from_process()

    @contextmanager
    def using(self) -> Iterator[AppContext]:
        """Make this the context commands run with, inside the block."""
        token = _CURRENT.set(self)
        try:
            yield self
        finally:
            _CURRENT.reset(token)

    @property
    def settings(self) -> Settings:
        """Config file and environment, read on first use (errors are :class:`ConfigError`)."""
        if self._settings is None:
            self._settings = load_settings(self.paths, self.env)
        return self._settings

    @property
    def debug(self) -> bool:
        return self.env.get("CHATCLI_DEBUG", "") not in ("", "0")


_CURRENT: ContextVar[AppContext | None] = ContextVar("chatcli_context", default=None)
