"""The HTTP layer every provider shares: one session factory, error mapping, SSE reading.

* :func:`open_session` builds an :class:`aiohttp.ClientSession` with the chosen proxy (HTTP, or
  SOCKS through ``aiohttp-socks``), a connect timeout and an
  idle-read timeout but **no total limit**, so a long answer that keeps streaming is never cut.
* :func:`http_errors` turns aiohttp's exceptions into chatcli's error tree, naming the URL.
* :func:`check_status` turns an HTTP error reply into one clear error (JSON error bodies, HTML
  pages, Cloudflare challenges, rate limits).
* :func:`iter_sse` yields Server-Sent Events from a response however its bytes are split.

This module imports aiohttp at the top: provider modules import it inside their methods so that
``import chatcli.providers`` stays cheap.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp

from chatcli.errors import (
    AuthenticationError,
    BlockedError,
    ConfigError,
    ProtocolError,
    ProviderConnectionError,
    ProviderTimeoutError,
    RateLimitError,
    ResponseStatusError,
    StreamInterruptedError,
    quote,
    redact_credentials,
    redact_url,
)
from chatcli.providers.sse import SSEDecoder, SSEEvent

log = logging.getLogger("chatcli.http")

DEFAULT_CONNECT_TIMEOUT: Final = 20.0
DEFAULT_READ_TIMEOUT: Final = 120.0

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
    )


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
            f"cannot resolve the host of {shown}; check the URL or your network", provider=provider
        ) from exc
    except aiohttp.ClientProxyConnectionError as exc:
        raise ProviderConnectionError(
            f"cannot connect to the proxy for {shown}: {_reason(exc)}", provider=provider
        ) from exc
    except aiohttp.ClientSSLError as exc:
        raise ProviderConnectionError(
            f"TLS failed talking to {shown}: {_reason(exc)}", provider=provider
        ) from exc
    except aiohttp.ClientConnectorError as exc:
        raise ProviderConnectionError(
            f"cannot connect to {shown} ({_reason(exc)}); is the server running there?",
            provider=provider,
        ) from exc
    except aiohttp.ClientHttpProxyError as exc:
        hint = "; check the proxy's user and password" if exc.status == 407 else ""
        raise ProviderConnectionError(
            f"the proxy refused the request to {shown} (HTTP {exc.status} {exc.message}){hint}",
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


def _reason(exc: BaseException) -> str:
    os_error = getattr(exc, "os_error", None)
    if isinstance(os_error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(os_error, OSError) and os_error.strerror:
        return os_error.strerror.lower()
    text = redact_credentials(str(exc).strip())
    return quote(text, 120) if text else type(exc).__name__


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds asked by ``Retry-After`` (a number or an HTTP date), capped; ``None`` if absent."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_CAP)


def error_message_from_body(body: str) -> str | None:
    """The human message inside a JSON error body, in the shapes services use; else ``None``."""
    try:
        data = json.loads(body)
    except ValueError:
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
    body = redact_secrets(raw.decode("utf-8", errors="replace"), secrets)
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
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        wait = f"; the server asks to wait {retry_after:.0f} s" if retry_after else ""
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
    raise ResponseStatusError(f"{reason} from {url}: {what}", status=status, provider=provider)


async def iter_sse(response: aiohttp.ClientResponse) -> AsyncIterator[SSEEvent]:
    """The events of an SSE response body, as they complete."""
    decoder = SSEDecoder()
    async for chunk in response.content.iter_any():
        for event in decoder.feed(chunk):
            yield event
    for event in decoder.close():
        yield event


async def read_json(response: aiohttp.ClientResponse, provider: str) -> Any:
    """The JSON body of a successful reply; a clear :class:`ProtocolError` when it is not JSON."""
    text = await response.text(errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        what = describe_error_body(text, response.headers.get("Content-Type", ""))
        raise ProtocolError(
            f"expected JSON from {redact_url(str(response.url))} but got {what}", provider=provider
        ) from None
