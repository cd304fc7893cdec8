"""The one error tree of chatcli.

Everything chatcli raises on purpose derives from :class:`ChatcliError`. Code below the CLI raises;
only the boundary (``cli.py``, later the REPL) catches, prints ``str(error)`` as one line and exits
with ``error.exit_code``::

    ChatcliError                    exit 1 unless said otherwise
    ├── UsageError                  exit 2  bad command-line input (no prompt, bad option value)
    ├── ConfigError                 exit 2  unreadable config, unknown provider name
    ├── StorageError                        a data file cannot be read or written
    └── ProviderError                       a backend failed; carries ``provider``; also a
        │                                   ``RuntimeError``, as the seed providers' errors were
        ├── MissingAuthError                no API key or cookies: says how to provide them
        ├── ModelNotSupportedError          the provider does not offer that model
        ├── ProviderConnectionError         connect failed / refused / DNS (``retryable``)
        │   └── ProviderTimeoutError        connect or idle-read timeout (``retryable``)
        ├── ResponseStatusError             an HTTP error status; carries ``status``
        │   ├── AuthenticationError         401 / 403
        │   ├── RateLimitError              429; carries ``retry_after``
        │   └── BlockedError                a Cloudflare challenge page
        ├── ProtocolError                   a reply that does not follow the protocol
        └── StreamInterruptedError          the stream broke off; ``partial`` holds the text so far

Messages are one line, name the provider and the cause, and where possible the next step.
They never contain secrets: callers pass URLs through :func:`redact_url` first.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import urlsplit, urlunsplit

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130

#: Longest piece of server text quoted in an error message.
QUOTE_LIMIT: Final = 200

#: ``scheme://user:password@`` anywhere in a text (libraries quote proxy URLs in their errors).
_CREDENTIALS: Final = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://[^\s/:@'\"]*:)[^\s/@'\"]*@")


class ChatcliError(Exception):
    """Base of every error chatcli raises on purpose."""

    exit_code: int = EXIT_ERROR

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return one_line(self.message)


class UsageError(ChatcliError):
    """The command line asked for something impossible."""

    exit_code = EXIT_USAGE


class ConfigError(ChatcliError):
    """The configuration (file, environment or an unknown name) is wrong."""

    exit_code = EXIT_USAGE


class StorageError(ChatcliError):
    """A file under chatcli's directories cannot be read or written."""


class ProviderError(ChatcliError, RuntimeError):
    """A backend failed. ``provider`` names it; the engine fills it in when a provider did not.

    The seed providers raised ``RuntimeError`` (a missing nonce, a malformed stream line, no
    valid response) and their callers catch that, so every provider error is one too.
    """

    #: Worth another attempt before any text was shown (used by retries and fallback).
    retryable: bool = False

    def __init__(self, message: str, *, provider: str | None = None) -> None:
        super().__init__(message)
        self.provider = provider

    def __str__(self) -> str:
        text = one_line(self.message)
        if self.provider and not text.startswith(f"{self.provider}:"):
            text = f"{self.provider}: {text}"
        return text


class MissingAuthError(ProviderError):
    """Credentials (an API key, cookies) are needed and absent."""


class ModelNotSupportedError(ProviderError):
    """The provider does not offer the requested model."""


class ProviderConnectionError(ProviderError):
    """The server could not be reached."""

    retryable = True


class ProviderTimeoutError(ProviderConnectionError):
    """Connecting took too long, or the server went silent for longer than the idle timeout."""


class ResponseStatusError(ProviderError):
    """The server answered with an HTTP error status."""

    def __init__(self, message: str, *, status: int, provider: str | None = None) -> None:
        super().__init__(message, provider=provider)
        self.status = status
        self.retryable = status in (408, 409, 429) or status >= 500


class AuthenticationError(ResponseStatusError):
    """The server refused the credentials (401/403)."""


class RateLimitError(ResponseStatusError):
    """HTTP 429. ``retry_after`` is the server's requested wait in seconds, when it gave one."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 429,
        retry_after: float | None = None,
        provider: str | None = None,
    ) -> None:
        super().__init__(message, status=status, provider=provider)
        self.retry_after = retry_after


class BlockedError(ResponseStatusError):
    """The site answered with a Cloudflare (or similar) challenge page instead of the API."""


class ProtocolError(ProviderError):
    """The server's reply does not follow the protocol (bad JSON, missing fields)."""


class StreamInterruptedError(ProviderError):
    """The answer broke off before its end marker. ``partial`` is the text received so far."""

    def __init__(self, message: str, *, partial: str = "", provider: str | None = None) -> None:
        super().__init__(message, provider=provider)
        self.partial = partial


def one_line(text: str) -> str:
    """Collapse whitespace runs (newlines included) so a message always prints as one line."""
    return " ".join(text.split())


def quote(text: str, limit: int = QUOTE_LIMIT) -> str:
    """A server's text made fit to quote in an error: one line, cut to ``limit`` characters."""
    text = one_line(text)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def redact_url(url: str) -> str:
    """``url`` with any password (a proxy's, say) replaced by ``***``; other parts unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


def redact_credentials(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` replaced by ``***``.

    Applied to everything chatcli writes to stderr, since libraries quote URLs in their errors.
    """
    return _CREDENTIALS.sub(r"\1***@", text)


def check_url(
    url: str, *, what: str, schemes: tuple[str, ...] = ("http", "https"), error: type[ChatcliError]
) -> str:
    """``url`` if it has one of ``schemes`` and a host; else ``error`` saying what is wrong."""
    shown = redact_credentials(url)
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise error(f"{what}: invalid URL {shown!r} ({exc})") from None
    if parts.scheme.lower() not in schemes or not host:
        kinds = "/".join(schemes)
        raise error(
            f"{what}: expected a {kinds} URL such as {schemes[0]}://HOST:PORT, got {shown!r}"
        )
    return url
