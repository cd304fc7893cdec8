"""The HTTP layer every provider shares: one session factory, error mapping, bounded reading.

* :func:`open_session` builds an :class:`aiohttp.ClientSession` with the chosen proxy (HTTP, or
  SOCKS through ``aiohttp-socks``), a connect timeout and an
  idle-read timeout but **no total limit**, so a long answer that keeps streaming is never cut.
  It follows at most :data:`MAX_REDIRECTS` redirects.
* :func:`http_errors` turns aiohttp's exceptions into chatcli's error tree, naming the URL.
* :func:`check_status` turns an HTTP error reply into one clear error (JSON error bodies, HTML
  pages, Cloudflare challenges, rate limits).
* :func:`iter_sse` yields Server-Sent Events from a response however its bytes are split;
  :func:`read_json`, :func:`read_text` and :func:`read_body` read a whole reply.

Every byte of a reply is read through :func:`iter_body`, which stops at
:data:`MAX_REPLY_BYTES`, counted after decompression; :func:`iter_sse` also stops at an SSE
line or event over :data:`MAX_EVENT_BYTES`. Whatever a server sends, memory stays bounded: the
reply ends with a :class:`~chatcli.errors.LimitError` (and the text already shown is kept).

This module imports aiohttp at the top: provider modules import it inside their methods so that
``import chatcli.providers`` stays cheap.
"""

from __future__ import annotations

import codecs
import contextlib
import email.utils
import ipaddress
import json
import logging
import math
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp

from chatcli.errors import (
    AuthenticationError,
    BlockedError,
    CertificateError,
    ConfigError,
    LimitError,
    ProtocolError,
    ProviderConnectionError,
    ProviderTimeoutError,
    RateLimitError,
    ResponseStatusError,
    StreamInterruptedError,
    note_url_credentials,
    quote,
    redact_credentials,
    redact_url,
)
from chatcli.providers.sse import SSEDecoder, SSEEvent

log = logging.getLogger("chatcli.http")

DEFAULT_CONNECT_TIMEOUT: Final = 20.0
DEFAULT_READ_TIMEOUT: Final = 120.0

#: The most one SSE line, or one SSE event's data, may hold. A real event is a few hundred
#: bytes; a web service that resends the whole answer in every event stays far below too.
MAX_EVENT_BYTES: Final = 8 * 1024 * 1024
#: The most one reply may hold, counted after decompression: a whole stream, a JSON answer, a
#: page. Millions of words: no real answer comes near it.
MAX_REPLY_BYTES: Final = 64 * 1024 * 1024
#: Redirects followed before giving up (a site's login redirects once; a loop never ends).
MAX_REDIRECTS: Final = 5

#: A current desktop Chrome; web providers send it because their sites expect a browser.
CHROME_USER_AGENT: Final = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)
CHROME_CLIENT_HINTS: Final = {
    "sec-ch-ua": '"Google Chrome";v="131", "Chromium";v="131", "Not_A Brand";v="24"',
    "sec-ch-ua-mobile": "?0",
    "sec-ch-ua-platform": '"Windows"',
}

#: Markers of a Cloudflare challenge or block page instead of the service's API.
CLOUDFLARE_MARKERS: Final = (
    "<title>Just a moment...</title>",
    "cf-please-wait",
    "Attention Required! | Cloudflare",
    "cf-chl-",
)

_TITLE_RE: Final = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
#: Statuses that say the request itself was refused: its body (an option the server does not
#: take, a value out of range, too long an input), not the server's state.
PAYLOAD_STATUSES: Final = (400, 413, 422)
#: How services say the input does not fit the model's context (OpenAI, vLLM, llama.cpp's
#: server, Groq, Mistral, Anthropic-style proxies).
_CONTEXT_RE: Final = re.compile(
    r"context[ _-]?(length|size|window)|maximum context|too many tokens|prompt is too long"
    r"|reduce the length",
    re.IGNORECASE,
)
#: How much of an error body is read to explain it.
_ERROR_BODY_LIMIT: Final = 64 * 1024
#: The longest wait asked by Retry-After that is believed (seconds).
RETRY_AFTER_CAP: Final = 120.0


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds allowed to connect, and of silence while reading. There is no total limit."""

    connect: float = DEFAULT_CONNECT_TIMEOUT
    read: float = DEFAULT_READ_TIMEOUT

    @classmethod
    def from_option(cls, timeout: float | None) -> Timeouts:
        """``--timeout N`` sets both limits to N; ``None`` keeps the defaults."""
        if timeout is None:
            return cls()
        return cls(connect=timeout, read=timeout)


def open_session(
    *,
    base_url: str,
    proxy: str | None = None,
    timeout: float | None = None,
    headers: Mapping[str, str] | None = None,
    cookies: Mapping[str, str] | None = None,
) -> aiohttp.ClientSession:
    """A session for talking to one service at ``base_url``.

    ``proxy`` is the proxy already chosen for it (see :mod:`chatcli.providers.proxy`: the
    flag, config and ``*_PROXY`` variables are weighed once, where the provider is configured);
    ``None`` connects directly.
    """
    limits = Timeouts.from_option(timeout)
    if proxy:
        note_url_credentials(proxy)  # a proxy may echo them back: blank them out everywhere
    # ``connect`` covers name resolution and the proxy as well as the socket connect.
    client_timeout = aiohttp.ClientTimeout(
        total=None, connect=limits.connect, sock_connect=limits.connect, sock_read=limits.read
    )
    connector: aiohttp.BaseConnector | None = None
    session_proxy: str | None = None
    if proxy:
        scheme = urlsplit(proxy).scheme.lower()
        if scheme in ("http", "https"):
            # aiohttp speaks HTTP proxies itself: absolute-form requests for http://, CONNECT
            # for https://; credentials in the URL become Proxy-Authorization.
            session_proxy = proxy
        elif scheme in ("socks4", "socks4a", "socks5", "socks5h"):
            connector = _socks_connector(proxy, scheme)
        else:
            raise ConfigError(
                f"unsupported proxy scheme {scheme!r} in {redact_url(proxy)}: "
                "use http://, socks5:// or socks4://"
            )
        log.debug("proxy for %s: %s", base_url, redact_url(proxy))
    return aiohttp.ClientSession(
        connector=connector,
        timeout=client_timeout,
        headers=dict(headers or {}),
        cookies=dict(cookies or {}),
        proxy=session_proxy,
        # unsafe=True keeps cookies of sites reached by IP address (a mirror, a test fake).
        cookie_jar=aiohttp.CookieJar(unsafe=True),
        trust_env=False,  # the environment was read where the proxy was chosen
        trace_configs=[_redirect_limit()],
    )


def _redirect_limit() -> aiohttp.TraceConfig:
    """Every request of a session follows at most :data:`MAX_REDIRECTS` redirects.

    aiohttp takes the limit per request only (10 unless told); a trace sees every request of
    the session, so no call can forget it. The context is per request: it keeps the history.
    """

    async def on_redirect(
        session: aiohttp.ClientSession,
        context: SimpleNamespace,
        params: aiohttp.TraceRequestRedirectParams,
    ) -> None:
        history = context.__dict__.setdefault("redirects", [])
        history.append(params.response)
        if len(history) > MAX_REDIRECTS:
            raise aiohttp.TooManyRedirects(history[0].request_info, tuple(history))

    trace = aiohttp.TraceConfig()
    trace.on_request_redirect.append(on_redirect)
    return trace


def _socks_connector(proxy_url: str, scheme: str) -> aiohttp.BaseConnector:
    from aiohttp_socks import ProxyConnector

    # socks5h / socks4a mean "let the proxy resolve names"; rdns=True does that for every scheme
    # so that no DNS query leaks around the proxy.
    if scheme in ("socks5h", "socks4a"):
        proxy_url = scheme[:-1] + proxy_url[len(scheme) :]
    connector: aiohttp.BaseConnector = ProxyConnector.from_url(proxy_url, rdns=True)
    return connector


@contextlib.contextmanager
def http_errors(provider: str, url: str) -> Iterator[None]:
    """Translate aiohttp and socket failures inside the block into chatcli errors naming ``url``."""
    shown = redact_url(url)
    try:
        yield
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
        raise StreamInterruptedError(
            f"the connection to {shown} broke off mid-reply ({_reason(exc)})", provider=provider
        ) from exc
    except aiohttp.ConnectionTimeoutError as exc:
        raise ProviderTimeoutError(
            f"timed out connecting to {shown}; is the server up? (raise --timeout to wait longer)",
            provider=provider,
        ) from exc
    except (aiohttp.SocketTimeoutError, aiohttp.ServerTimeoutError, TimeoutError) as exc:
        raise ProviderTimeoutError(
            f"{shown} went silent for longer than the timeout (raise --timeout to wait longer)",
            provider=provider,
        ) from exc
    except aiohttp.ClientConnectorDNSError as exc:
        raise ProviderConnectionError(
            f"cannot resolve the host of {_failed_url(exc, url)}; check the URL or your network",
            provider=provider,
        ) from exc
    except aiohttp.ClientProxyConnectionError as exc:
        raise ProviderConnectionError(
            f"cannot connect to the proxy for {shown}: {_reason(exc)}", provider=provider
        ) from exc
    except aiohttp.ClientConnectorCertificateError as exc:
        why = getattr(exc.certificate_error, "verify_message", "") or _reason(exc)
        raise CertificateError(
            f"certificate verify failed for {exc.host} ({quote(str(why), 120)}) at "
            f"{_failed_url(exc, url)}; chatcli always verifies TLS certificates",
            provider=provider,
        ) from exc
    except aiohttp.ClientSSLError as exc:
        raise ProviderConnectionError(
            f"TLS failed talking to {_failed_url(exc, url)}: {_reason(exc)}", provider=provider
        ) from exc
    except aiohttp.ClientConnectorError as exc:
        error = ProviderConnectionError(
            f"cannot connect to {_failed_url(exc, url)} ({_reason(exc)}); is the server "
            "running there?",
            provider=provider,
        )
        # Nothing listens on this machine (Ollama not started): asking again will not start it.
        error.retryable = not _refused_on_loopback(exc)
        raise error from exc
    except aiohttp.ClientHttpProxyError as exc:
        hint = "; check the proxy's user and password" if exc.status == 407 else ""
        raise ProviderConnectionError(
            f"the proxy refused the request to {shown} (HTTP {exc.status} {exc.message}){hint}",
            provider=provider,
        ) from exc
    except aiohttp.TooManyRedirects as exc:
        last = redact_url(str(exc.history[-1].url)) if exc.history else shown
        raise ProtocolError(
            f"too many redirects from {shown} (more than {MAX_REDIRECTS}; the last from "
            f"{last}); stopped",
            provider=provider,
        ) from exc
    except aiohttp.RedirectClientError as exc:
        # A Location that is not a URL, or not an http(s) one: name it, not only where we began.
        target = quote(str(exc.args[0]) if exc.args else "", 120)
        raise ProtocolError(
            f"{shown} redirected to {target!r}, which is not an http(s) URL; stopped",
            provider=provider,
        ) from exc
    except aiohttp.InvalidURL as exc:
        raise ConfigError(f"{provider}: invalid URL {shown}") from exc
    except aiohttp.ClientError as exc:
        raise ProviderConnectionError(
            f"request to {shown} failed: {_reason(exc)}", provider=provider
        ) from exc
    except ConnectionError as exc:
        raise ProviderConnectionError(
            f"connection to {shown} failed: {_reason(exc)}", provider=provider
        ) from exc
    except Exception as exc:
        # aiohttp-socks raises its own ProxyError family; match by module to avoid importing it.
        if type(exc).__module__.startswith(("python_socks", "aiohttp_socks")):
            raise ProviderConnectionError(
                f"the proxy for {shown} failed: {_reason(exc)}", provider=provider
            ) from exc
        raise


def _refused_on_loopback(exc: aiohttp.ClientConnectorError) -> bool:
    """The connection was refused by this machine: localhost, 127.0.0.0/8 or ::1."""
    if not isinstance(exc.os_error, ConnectionRefusedError):
        return False
    host = (exc.host or "").strip("[]").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def _failed_url(exc: aiohttp.ClientConnectorError, url: str) -> str:
    """``url``, or where a redirect from it led when the connection that failed went elsewhere."""
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        asked = (parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    except ValueError:
        return shown
    if not exc.host or (exc.host, exc.port) == asked:
        return shown
    host = f"[{exc.host}]" if ":" in exc.host else exc.host
    return f"{host}:{exc.port} (redirected from {shown})"


def _reason(exc: BaseException) -> str:
    os_error = getattr(exc, "os_error", None)
    if isinstance(os_error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(os_error, OSError) and os_error.strerror:
        return os_error.strerror.lower()
    text = redact_credentials(str(exc).strip())
    return quote(text, 120) if text else type(exc).__name__


def retry_after_asked(value: str | None, *, now: float | None = None) -> float | None:
    """The seconds ``Retry-After`` asks for (a number or an HTTP date), however many.

    ``None`` when it is absent, not a number or a date, or asks for no wait at all (0, a
    negative number, a date in the past): the caller's own backoff applies then.
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        try:
            seconds = when.timestamp() - (time.time() if now is None else now)
        except (OverflowError, OSError, ValueError):
            return None
    if not math.isfinite(seconds) or seconds <= 0:
        return None
    return seconds


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """:func:`retry_after_asked`, capped at :data:`RETRY_AFTER_CAP`: a wait the turn may
    honour. ``None``: no usable wait was asked for (the normal backoff applies)."""
    seconds = retry_after_asked(value, now=now)
    return None if seconds is None else min(seconds, RETRY_AFTER_CAP)


def format_wait(seconds: float) -> str:
    """``45 s``, ``90 s``, ``15 min``, ``3 h``, ``12 days``: a wait as people say it."""
    for unit, scale in (("days", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= 2 * scale:
            return f"{seconds / scale:.0f} {unit}"
    return f"{seconds:.0f} s"


def error_message_from_body(body: str) -> str | None:
    """The human message inside a JSON error body, in the shapes services use; else ``None``."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # nested too deep: not JSON we read
        return None
    return _message_in(data)


def _message_in(data: Any) -> str | None:
    if isinstance(data, str):
        return data or None
    if not isinstance(data, dict):
        return None
    for key in ("error", "message", "detail", "msg", "error_message"):
        if key in data:
            found = _message_in(data[key])
            if found:
                return found
    return None


def describe_error_body(body: str, content_type: str) -> str:
    """One line saying what an error reply contained."""
    message = error_message_from_body(body)
    if message:
        return quote(message)
    if "html" in content_type or body.lstrip()[:15].lower().startswith(("<!doctype", "<html")):
        title = _TITLE_RE.search(body)
        if title and title.group(1).strip():
            return f"an HTML page titled {quote(title.group(1), 80)!r}, not the API"
        return "an HTML page, not the API"
    if body.strip():
        return quote(body)
    return "an empty body"


def is_cloudflare_page(body: str) -> bool:
    return any(marker in body for marker in CLOUDFLARE_MARKERS)


def redact_secrets(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every occurrence of each secret replaced by ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


@contextlib.asynccontextmanager
async def api_call(
    provider: str,
    method: str,
    url: str,
    *,
    headers: Mapping[str, str],
    body: Any = None,
    proxy: str | None = None,
    timeout: float | None = None,
    auth_hint: str = "",
    secrets: Iterable[str | None] = (),
) -> AsyncIterator[aiohttp.ClientResponse]:
    """One JSON request to an API, its HTTP errors raised (``secrets`` blanked out of what
    the server says) and failures while reading it mapped to chatcli's errors."""
    from chatcli.errors import redact_url

    log.debug("%s %s", method, redact_url(url))
    with http_errors(provider, url):
        async with (
            open_session(base_url=url, proxy=proxy, timeout=timeout) as session,
            session.request(method, url, json=body, headers=dict(headers)) as response,
        ):
            await check_status(response, provider, auth_hint=auth_hint, secrets=secrets)
            yield response


async def check_status(
    response: aiohttp.ClientResponse,
    provider: str,
    *,
    auth_hint: str = "",
    secrets: Iterable[str | None] = (),
) -> None:
    """Raise the fitting :class:`ResponseStatusError` if ``response`` is an HTTP error.

    ``secrets`` (the key that was sent, say) are blanked out of the server's text, since some
    services echo the credential back in their error message.
    """
    if response.status < 400:
        return
    url = redact_url(str(response.url))
    raw = bytearray()
    try:
        while len(raw) < _ERROR_BODY_LIMIT:
            chunk = await response.content.read(_ERROR_BODY_LIMIT - len(raw))
            if not chunk:
                break
            raw += chunk
    except (aiohttp.ClientError, TimeoutError):
        pass  # explain what did arrive
    body = redact_credentials(redact_secrets(raw.decode("utf-8", errors="replace"), secrets))
    content_type = response.headers.get("Content-Type", "")
    status = response.status
    reason = f"HTTP {status}" + (f" {response.reason}" if response.reason else "")
    if status in (403, 429, 503) and is_cloudflare_page(body):
        raise BlockedError(
            f"blocked by Cloudflare at {url} ({reason}); try again later or through another "
            "network or --proxy",
            status=status,
            provider=provider,
        )
    what = describe_error_body(body, content_type)
    wait, retry_after = "", None
    if status in (429, 503):  # how long to wait may come with either (RFC 9110)
        header = response.headers.get("Retry-After")
        asked = retry_after_asked(header)
        # Said as the server asked (an hour is an hour), though the wait honoured is capped.
        wait = f"; the server asks to wait {format_wait(asked)}" if asked else ""
        retry_after = parse_retry_after(header)
    if status == 429:
        raise RateLimitError(
            f"rate limited ({reason}): {what}{wait}",
            status=status,
            retry_after=retry_after,
            provider=provider,
        )
    if status in (401, 403):
        hint = f"; {auth_hint}" if auth_hint else ""
        raise AuthenticationError(
            f"not authorised ({reason}): {what}{hint}", status=status, provider=provider
        )
    if status in PAYLOAD_STATUSES:
        raise ResponseStatusError(
            f"the server rejected the request: {what} ({reason} from {url}); "
            f"{_payload_hint(body, status)}",
            status=status,
            provider=provider,
        )
    raise ResponseStatusError(
        f"{reason} from {url}: {what}{wait}",
        status=status,
        provider=provider,
        retry_after=retry_after,
    )


def _payload_hint(body: str, status: int) -> str:
    """The likely cause of a request the server refused, said as what to do."""
    if _CONTEXT_RE.search(body):
        return (
            "the input is longer than the model's context: send a shorter one, or start a new "
            "session"
        )
    if status == 413:
        return "the request is too large: send a shorter input"
    return "check the -o options and the model name"


async def iter_body(
    response: aiohttp.ClientResponse, provider: str | None = None
) -> AsyncGenerator[bytes, None]:
    """The body's bytes as they arrive, and no more than :data:`MAX_REPLY_BYTES` of them.

    aiohttp inflates gzip and deflate (and brotli or zstd, when their modules are installed)
    a bounded step at a time, and the count here is taken after it: it counts what came out,
    not what went in, so a small compressed body cannot grow into a huge one unseen.
    """
    limit = MAX_REPLY_BYTES
    total = 0
    async for chunk in response.content.iter_any():
        total += len(chunk)
        if total > limit:
            raise LimitError("a reply", limit, provider=provider)
        yield chunk


async def iter_sse(
    response: aiohttp.ClientResponse, provider: str | None = None
) -> AsyncIterator[SSEEvent]:
    """The events of an SSE response body, as they complete.

    The events that completed before a line or an event outgrew :data:`MAX_EVENT_BYTES` are
    delivered first; then :class:`LimitError` ends the stream.
    """
    limit = MAX_EVENT_BYTES
    decoder = SSEDecoder(max_event=limit)
    body = iter_body(response, provider)
    async with contextlib.aclosing(body):
        async for chunk in body:
            for event in decoder.feed(chunk):
                yield event
            if decoder.overflow:
                raise LimitError(f"an SSE {decoder.overflow}", limit, provider=provider)
    for event in decoder.close():
        yield event


async def read_body(response: aiohttp.ClientResponse, provider: str | None = None) -> bytearray:
    """The whole body of a reply (at most :data:`MAX_REPLY_BYTES`, else :class:`LimitError`)."""
    data = bytearray()
    body = iter_body(response, provider)
    async with contextlib.aclosing(body):
        async for chunk in body:
            data += chunk
    return data


async def read_text(response: aiohttp.ClientResponse, provider: str | None = None) -> str:
    """The whole body as text, in the charset the reply names (else UTF-8); bounded as
    :func:`read_body` is."""
    return (await read_body(response, provider)).decode(_charset(response), errors="replace")


def _charset(response: aiohttp.ClientResponse) -> str:
    charset = response.charset or "utf-8"
    try:
        codecs.lookup(charset)
    except LookupError:
        return "utf-8"
    return charset


async def read_json(response: aiohttp.ClientResponse, provider: str) -> Any:
    """The JSON body of a successful reply; a clear :class:`ProtocolError` when it is not JSON.
    Bounded as :func:`read_body` is."""
    text = await read_text(response, provider)
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # nested too deep: not JSON we read
        what = describe_error_body(text, response.headers.get("Content-Type", ""))
        raise ProtocolError(
            f"expected JSON from {redact_url(str(response.url))} but got {what}", provider=provider
        ) from None
