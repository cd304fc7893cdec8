"""Cookies per domain, kept in one private JSON file (``DATA/cookies.json``, 0600).

Cookies are credentials: values are never printed (``chatcli cookies list`` masks them) and
the file is written atomically with owner-only permissions. Expired cookies are never handed
out. Two import formats are read: the Netscape ``cookies.txt`` that browser extensions
export, and a JSON list of ``{domain, name, value, ...}`` objects (``expirationDate`` or
``expires`` in Unix seconds, as extensions write them).

An expiry is a finite Unix time up to the end of year 9999 (:data:`MAX_EXPIRY`): an import
with ``inf`` or ``nan`` is refused, a stored row with one is skipped, and a browser's "never"
beyond year 9999 is kept as that last second. A file over 8 MiB is refused before it is read.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final

from chatcli.errors import UsageError
from chatcli.store.files import (
    MAX_FILE_BYTES,
    FileTooLargeError,
    locked,
    read_json,
    read_limited,
    set_aside,
    write_json,
)

log = logging.getLogger("chatcli.store")

FORMAT_VERSION: Final = 1
#: The last second of year 9999 (UTC): the latest expiry kept, and one any clock can show.
MAX_EXPIRY: Final = 253_402_300_799.0


@dataclass(frozen=True, slots=True)
class Cookie:
    """One cookie. ``domain`` has no leading dot; ``expires`` is Unix seconds or ``None``."""

    domain: str
    name: str
    value: str
    path: str = "/"
    expires: float | None = None
    secure: bool = False
    http_only: bool = False
    #: Also sent to subdomains of ``domain`` (a leading dot or the Netscape TRUE flag).
    include_subdomains: bool = True

    def expired(self, now: float | None = None) -> bool:
        return self.expires is not None and self.expires <= (time.time() if now is None else now)

    def matches(self, domain: str) -> bool:
        """Whether this cookie belongs to requests for ``domain``."""
        domain = normalise_domain(domain)
        if domain == self.domain:
            return True
        return self.include_subdomains and domain.endswith("." + self.domain)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.domain, self.path, self.name)


def normalise_domain(domain: str) -> str:
    return domain.strip().lstrip(".").lower()


def mask(value: str) -> str:
    """A value shown only by its length: enough to tell cookies apart, nothing to steal."""
    if not value:
        return "<empty>"
    return f"<{len(value)} char{'s' if len(value) != 1 else ''}>"


class CookieStore:
    """The cookie file. Every change is written at once; nothing is cached between calls.

    ``base``: the top of chatcli's tree the file is in (the data directory; by default the
    file's own directory)."""

    def __init__(self, path: Path, *, base: Path | None = None) -> None:
        self.path = path
        self.base = base if base is not None else path.parent

    def all(self) -> list[Cookie]:
        data = read_json(self.path, what="the cookie file", base=self.base)
        if data is None:
            return []
        rows = data.get("cookies") if isinstance(data, dict) else None
        if not isinstance(rows, list):
            set_aside(self.path, "the cookie file", "without a cookie list")
            return []
        cookies = []
        for index, row in enumerate(rows):
            cookie = _row_to_cookie(row)
            if cookie is None:
                # One bad row costs that row only, not every cookie in the file.
                log.warning("skipped malformed entry %d in the cookie file %s", index, self.path)
            else:
                cookies.append(cookie)
        return cookies

    def for_domain(self, domain: str, *, now: float | None = None) -> dict[str, str]:
        """Name -> value of the unexpired cookies for ``domain`` (more specific ones win)."""
        return self.lookup(domain, now=now)[0]

    def lookup(self, domain: str, *, now: float | None = None) -> tuple[dict[str, str], bool]:
        """:meth:`for_domain`, and whether any of ``domain``'s stored cookies has expired
        (expired ones are kept until the next write), from one read of the file."""
        now = time.time() if now is None else now
        mine = [c for c in self.all() if c.matches(domain)]
        found = [c for c in mine if not c.expired(now)]
        found.sort(key=lambda c: len(c.domain))  # a subdomain's cookie overrides its parent's
        return {c.name: c.value for c in found}, len(found) < len(mine)

    def drop_expired(self, domain: str) -> int:
        """Remove ``domain``'s expired cookies (and its subdomains'); returns the count."""
        target, now = normalise_domain(domain), time.time()
        return self._drop(lambda c: c.matches(target) and c.expired(now))

    def save(self, cookies: Iterable[Cookie]) -> int:
        """Add or replace (by domain, path and name); returns how many were given.

        An expiry beyond :data:`MAX_EXPIRY` is kept as that; one that is no finite number is
        a :class:`UsageError` (the parsers refuse those first)."""
        new = [_in_range(cookie) for cookie in cookies]
        if not new:
            return 0
        with locked(self.path, base=self.base):
            merged = {c.key: c for c in self.all()}
            for cookie in new:
                merged[cookie.key] = cookie
            self._write(merged.values())
        return len(new)

    def remove(self, domain: str, names: Iterable[str]) -> int:
        """Remove the cookies of exactly ``domain`` with these names; returns the count."""
        target, doomed = normalise_domain(domain), set(names)
        return self._drop(lambda c: c.domain == target and c.name in doomed)

    def clear(self, domain: str | None = None) -> int:
        """Remove every cookie, or those of ``domain`` and its subdomains; returns the count."""
        if domain is None:
            return self._drop(lambda c: True)
        target = normalise_domain(domain)
        return self._drop(lambda c: c.domain == target or c.domain.endswith("." + target))

    def _drop(self, doomed: Callable[[Cookie], bool]) -> int:
        with locked(self.path, base=self.base):
            current = self.all()
            kept = [c for c in current if not doomed(c)]
            if len(kept) != len(current):
                self._write(kept)
        return len(current) - len(kept)

    def _write(self, cookies: Iterable[Cookie]) -> None:
        now = time.time()
        kept = sorted((c for c in cookies if not c.expired(now)), key=lambda c: c.key)
        rows = [asdict(c) for c in kept]
        write_json(self.path, {"version": FORMAT_VERSION, "cookies": rows}, base=self.base)


def _in_range(cookie: Cookie) -> Cookie:
    """``cookie`` with an expiry past :data:`MAX_EXPIRY` brought back to it."""
    if cookie.expires is None:
        return cookie
    if not math.isfinite(cookie.expires):
        raise UsageError(
            f"cookie {cookie.name!r} of {cookie.domain}: expiry {cookie.expires} is not a time"
        )
    return replace(cookie, expires=MAX_EXPIRY) if cookie.expires > MAX_EXPIRY else cookie


def _row_to_cookie(row: Any) -> Cookie | None:
    """A stored row as a cookie, or ``None`` when its fields have the wrong types."""
    if not isinstance(row, dict):
        return None
    texts = ("domain", "name", "value", "path")
    if not all(isinstance(row.get(key, "/"), str) for key in texts):
        return None
    expires = row.get("expires")
    if expires is not None and (
        isinstance(expires, bool)
        or not isinstance(expires, int | float)
        or not 0 <= expires <= MAX_EXPIRY  # NaN fails this too
    ):
        return None
    flags = ("secure", "http_only", "include_subdomains")
    if not all(isinstance(row.get(key, False), bool) for key in flags):
        return None
    if not row.get("domain") or not row.get("name"):
        return None
    return Cookie(
        domain=normalise_domain(row["domain"]),
        name=row["name"],
        value=row.get("value", ""),
        path=row.get("path", "/"),
        expires=float(expires) if expires is not None else None,
        secure=row.get("secure", False),
        http_only=row.get("http_only", False),
        include_subdomains=row.get("include_subdomains", True),
    )


# -- import formats -------------------------------------------------------------------------------


def parse_cookie_file(path: Path) -> list[Cookie]:
    """Cookies from a Netscape ``cookies.txt`` or a JSON export. Errors are one line (exit 2).

    A file over 8 MiB is refused before it is read (real exports are kilobytes).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if size > MAX_FILE_BYTES:
                raise FileTooLargeError(f"{path} is larger than {MAX_FILE_BYTES // 2**20} MiB")
            text = read_limited(fd, path).decode("utf-8-sig")
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise UsageError(f"no such file: {path}") from None
    except FileTooLargeError as exc:
        raise UsageError(f"{exc}; a cookie export is kilobytes: is it the right file?") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")):
        return parse_json_cookies(text, source=str(path))
    return parse_netscape_cookies(text, source=str(path))


def parse_netscape_cookies(text: str, *, source: str = "cookies.txt") -> list[Cookie]:
    """The Netscape format: ``domain  flag  path  secure  expires  name  value``, tab-separated."""
    cookies: list[Cookie] = []
    for number, line in enumerate(text.splitlines(), start=1):
        http_only = False
        if line.startswith("#HttpOnly_"):
            line = line[len("#HttpOnly_") :]
            http_only = True
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) == 6:
            fields.append("")  # an empty value, its tab trimmed by some exporters
        if len(fields) != 7:
            raise UsageError(
                f"{source} line {number}: expected 7 tab-separated fields "
                "(domain, subdomains, path, secure, expires, name, value)"
            )
        domain, subdomains, cookie_path, secure, expires, name, value = fields
        try:
            expiry = float(expires)
        except ValueError:
            raise UsageError(f"{source} line {number}: expiry {expires!r} is no number") from None
        _check_expiry(expiry, f"{source} line {number}")
        cookies.append(
            Cookie(
                domain=normalise_domain(domain),
                name=name,
                value=value,
                path=cookie_path or "/",
                expires=expiry if expiry > 0 else None,  # 0 marks a session cookie
                secure=secure.upper() == "TRUE",
                http_only=http_only,
                include_subdomains=subdomains.upper() == "TRUE" or domain.startswith("."),
            )
        )
    return cookies


def parse_json_cookies(text: str, *, source: str = "cookies.json") -> list[Cookie]:
    """A JSON list of cookie objects (or ``{"cookies": [...]}``)."""
    try:
        data: Any = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{source}: not valid JSON ({exc})") from None
    except RecursionError:
        raise UsageError(f"{source}: not a cookie export (nested too deeply)") from None
    if isinstance(data, dict) and isinstance(data.get("cookies"), list):
        data = data["cookies"]
    if not isinstance(data, list):
        raise UsageError(f"{source}: expected a list of cookie objects")
    cookies: list[Cookie] = []
    for index, item in enumerate(data):
        where = f"{source} item {index}"
        if not isinstance(item, dict):
            raise UsageError(f"{where}: expected an object with domain, name and value")
        missing = [key for key in ("domain", "name", "value") if not isinstance(item.get(key), str)]
        if missing:
            raise UsageError(f"{where}: missing or non-text {', '.join(missing)}")
        raw_expiry: Any = item.get("expirationDate", item.get("expires"))
        session = bool(item.get("session")) or raw_expiry in (None, "", 0, -1)
        try:
            expiry = None if session else float(raw_expiry)
        except OverflowError:  # an integer beyond any float
            expiry = math.inf  # out of range, said below
        except (TypeError, ValueError):
            raise UsageError(f"{where}: expiry {raw_expiry!r} is not a number") from None
        if expiry is not None:
            _check_expiry(expiry, where)
        domain = item["domain"]
        host_only = item.get("hostOnly")
        cookies.append(
            Cookie(
                domain=normalise_domain(domain),
                name=item["name"],
                value=item["value"],
                path=str(item.get("path") or "/"),
                expires=expiry,
                secure=bool(item.get("secure", False)),
                http_only=bool(item.get("httpOnly", item.get("http_only", False))),
                include_subdomains=not host_only if host_only is not None else True,
            )
        )
    return cookies


def _check_expiry(expiry: float, where: str) -> None:
    """Refuse an expiry that is no finite time within year 9999 (either way from 1970)."""
    if not (math.isfinite(expiry) and abs(expiry) <= MAX_EXPIRY):
        raise UsageError(
            f"{where}: expiry {expiry} is out of range (Unix seconds, at most {MAX_EXPIRY:.0f})"
        )


def import_cookies(
    store: CookieStore, path: Path, *, domain: str | None = None
) -> tuple[list[Cookie], int]:
    """Save the unexpired cookies of ``path`` (only ``domain``'s and its subdomains', if given).

    Returns the cookies saved and how many were skipped as already expired.
    """
    cookies = parse_cookie_file(path)
    if domain is not None:
        target = normalise_domain(domain)
        cookies = [c for c in cookies if c.domain == target or c.domain.endswith("." + target)]
    fresh = [c for c in cookies if not c.expired()]
    store.save(fresh)
    return fresh, len(cookies) - len(fresh)
