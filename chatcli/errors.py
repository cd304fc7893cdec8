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
        ├── CertificateError                TLS verification failed (never retried)
        ├── ResponseStatusError             an HTTP error status; carries ``status``
        │   ├── AuthenticationError         401 / 403
        │   ├── RateLimitError              429; carries ``retry_after``
        │   └── BlockedError                a Cloudflare challenge page
        ├── ProtocolError                   a reply that does not follow the protocol
        │   └── LimitError                  the server sent more than chatcli reads; ``limit``
        └── StreamInterruptedError          the stream broke off; ``partial`` holds the text so far

Messages are one line, name the provider and the cause, and where possible the next step.
They never contain secrets: callers pass URLs through :func:`redact_url` first, server text
goes through :func:`quote`, and every line bound for stderr through
:func:`redact_credentials`; the last two blank out the secrets noted with
:func:`note_secrets` (a proxy's password, in every spelling) wherever they appear, whether a
server, a proxy or a library wrote them.
"""

from __future__ import annotations

import base64
import re
from typing import Final
from urllib.parse import unquote, urlsplit, urlunsplit

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2
#: The answer arrived but is not whole: cut at the token limit or the context, withheld by a
#: content filter, or stopped because the model kept repeating itself.
EXIT_CUT: Final = 3
EXIT_INTERRUPTED: Final = 130

#: Longest piece of server text quoted in an error message.
QUOTE_LIMIT: Final = 200

#: ``scheme://user:password@`` anywhere in a text (libraries quote proxy URLs in their errors).
#: A password may hold any character but whitespace, ``/`` and ``@`` (those must be
#: percent-encoded in a URL); quotes and brackets are legal in it, so they do not end it.
_CREDENTIALS: Final = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://[^\s/:@]*:)[^\s/@]*@")

#: Secrets shorter than this are not blanked out on their own: "ab" would blank out half
#: of every message. (A short password is still blanked out with its user name.)
_SECRET_MIN: Final = 4

#: The secrets this process was given (see :func:`note_secrets`).
_SECRETS: set[str] = set()


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
    """The server answered with an HTTP error status. ``retry_after``: the wait in seconds its
    ``Retry-After`` asked for (429 and 503 carry one), when it gave one."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        provider: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, provider=provider)
        self.status = status
        self.retryable = status in (408, 409, 429) or status >= 500
        self.retry_after = retry_after


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
        super().__init__(message, status=status, provider=provider, retry_after=retry_after)


class BlockedError(ResponseStatusError):
    """The site answered with a Cloudflare (or similar) challenge page instead of the API."""


class CertificateError(ProviderError):
    """The server's TLS certificate failed verification. Not retried: it would fail the same."""


class ProtocolError(ProviderError):
    """The server's reply does not follow the protocol (bad JSON, missing fields)."""


class LimitError(ProtocolError):
    """The server sent more than chatcli reads (an SSE line or event, a whole reply), so
    reading stopped there. Not retried: the same server would send the same again."""

    def __init__(self, what: str, limit: int, *, provider: str | None = None) -> None:
        super().__init__(
            f"the server sent {what} over {format_size(limit)}; stopped (limit)",
            provider=provider,
        )
        self.limit = limit


class StreamInterruptedError(ProviderError):
    """The answer broke off before its end marker. ``partial`` is the text received so far."""

    def __init__(self, message: str, *, partial: str = "", provider: str | None = None) -> None:
        super().__init__(message, provider=provider)
        self.partial = partial


def one_line(text: str) -> str:
    """Collapse whitespace runs (newlines included) so a message always prints as one line."""
    return " ".join(text.split())


def quote(text: str, limit: int = QUOTE_LIMIT) -> str:
    """A server's text made fit to quote in an error: one line, credentials blanked out (a
    server may echo them), cut to ``limit`` characters."""
    text = one_line(redact_credentials(text))
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
    """``text`` with every noted secret, and the password of every
    ``scheme://user:password@host``, replaced by ``***``.

    Applied to everything chatcli writes to stderr, since libraries quote URLs in their errors
    and servers echo what they were sent.
    """
    for secret in sorted(_SECRETS, key=len, reverse=True):  # "user:pw" before "pw"
        if secret in text:
            text = text.replace(secret, "***")
    return _CREDENTIALS.sub(r"\1***@", text)


def note_secrets(*secrets: str | None) -> None:
    """Blank these out of every message from now on (:func:`redact_credentials`, :func:`quote`).

    For what this process was given to send (a proxy's password): a server or a proxy that
    repeats it back, or a library that prints it, cannot get it onto the screen, into a log
    or into the session database (which keeps a turn's error).
    """
    _SECRETS.update(s for s in secrets if s and len(s) >= _SECRET_MIN)


def note_url_credentials(url: str) -> None:
    """Note the credentials in ``url`` (a proxy's) in every spelling they may come back in:
    as written, percent-decoded, as ``user:password``, and base64-encoded as in a
    ``Proxy-Authorization: Basic`` header."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return
    if parts.password is None:
        return
    raw_user, raw_password = parts.username or "", parts.password
    user, password = unquote(raw_user), unquote(raw_password)
    pairs = {f"{raw_user}:{raw_password}", f"{user}:{password}"}
    encoded = set()
    for pair in pairs:
        for charset in ("latin-1", "utf-8"):
            try:
                encoded.add(base64.b64encode(pair.encode(charset)).decode("ascii"))
            except UnicodeEncodeError:
                continue
    note_secrets(raw_password, password, *pairs, *encoded)


def format_size(size: int) -> str:
    """A byte count as people read it: ``8 MiB``, ``64 KiB``, ``1.5 MiB``, ``100 bytes``."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{size} bytes"


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
