"""Which proxy a request goes through. Pure functions, no aiohttp (the CLI uses them too).

Order: the ``--proxy`` flag wins outright. Otherwise a configured proxy (``proxy`` in
config.toml), then ``HTTPS_PROXY``/``HTTP_PROXY`` by the URL's scheme, then ``ALL_PROXY``
(lower-case names first) apply unless ``NO_PROXY`` names the host.

``NO_PROXY`` is a comma list of host names (matching their subdomains too; a leading dot is
allowed), ``host:port`` entries, IP addresses (IPv6 bare or in brackets), CIDR ranges such as
``10.0.0.0/8``, or ``*`` for everything.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlsplit

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def resolve_proxy(
    url: str,
    explicit: str | None,
    env: Mapping[str, str],
    *,
    configured: str | None = None,
) -> str | None:
    """The proxy URL to use for ``url``, or ``None`` to connect directly. ``env`` is the
    environment snapshot the caller was given (nothing here reads the process's own)."""
    if explicit:
        return explicit

    def get(name: str) -> str:
        return env.get(name.lower()) or env.get(name.upper()) or ""

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    proxy = configured or get(f"{parts.scheme}_proxy") or get("all_proxy")
    if not proxy:
        return None
    port = port or _DEFAULT_PORTS.get(parts.scheme)
    if bypassed(parts.hostname or "", port, get("no_proxy")):
        return None
    return proxy


def bypassed(host: str, port: int | None, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` (its raw value) exempts ``host:port``."""
    host = host.lower().strip("[]")
    address = _ip(host)
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        name, entry_port = _split_entry(entry)
        if entry_port is not None and entry_port != port:
            continue
        if "/" in name:
            try:
                network = ipaddress.ip_network(name, strict=False)
            except ValueError:
                continue
            if address is not None and address in network:
                return True
            continue
        if address is not None:
            if _ip(name) == address:
                return True
            continue
        name = name.lstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _split_entry(entry: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]:port``, bare ``v6`` or CIDR -> (name, port)."""
    if entry.startswith("["):
        name, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return name, int(port) if port.isdigit() else None
    if entry.count(":") == 1:
        name, _, port = entry.partition(":")
        if port.isdigit():
            return name, int(port)
    return entry, None  # a bare host, a bare IPv6 address or a CIDR range
