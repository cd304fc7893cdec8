"""The cookie tables of Firefox and of the Chrome family, read into :class:`Cookie` rows.

Only the cookies of the domains asked for (and their subdomains) are kept. Firefox's values are
plain text; the Chrome family's are decrypted by :class:`~chatcli.browser.decrypt.ChromiumKeys`
(:func:`decrypted`), which needs the database's version (from its ``meta`` table).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from chatcli.store.cookies import Cookie, normalise_domain

if TYPE_CHECKING:
    from chatcli.browser.decrypt import ChromiumKeys

#: Seconds between 1601-01-01 (Chrome's epoch) and 1970-01-01.
_CHROME_EPOCH_OFFSET: Final = 11_644_473_600


def _matches(host: str, targets: Iterable[str]) -> bool:
    host = normalise_domain(host)
    return any(host == t or host.endswith("." + t) for t in targets)


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


# -- Firefox -------------------------------------------------------------------------------------


def firefox_rows(db: sqlite3.Connection, targets: Sequence[str]) -> list[Cookie]:
    """The cookies of ``targets`` in ``moz_cookies``, outside containers (no origin attributes)."""
    columns = _columns(db, "moz_cookies")
    if not columns:
        raise sqlite3.OperationalError("no such table: moz_cookies")
    where = "WHERE originAttributes = ''" if "originAttributes" in columns else ""
    rows = db.execute(
        "SELECT host, name, value, path, expiry, isSecure, isHttpOnly FROM moz_cookies " + where
    ).fetchall()
    cookies = []
    for host, name, value, path, expiry, secure, http_only in rows:
        if not isinstance(host, str) or not name or not _matches(host, targets):
            continue
        expires: float | None = float(expiry) if expiry else None
        if expires is not None and expires > 1e11:  # newer Firefox writes milliseconds
            expires /= 1000
        cookies.append(
            Cookie(
                domain=normalise_domain(host),
                name=str(name),
                value=str(value or ""),
                path=str(path or "/"),
                expires=expires,
                secure=bool(secure),
                http_only=bool(http_only),
                include_subdomains=host.startswith("."),
            )
        )
    return cookies


# -- the Chrome family ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChromiumRow:
    """A row of the ``cookies`` table, its value still encrypted."""

    host: str
    name: str
    value: str
    encrypted: bytes
    path: str
    expires_utc: int
    secure: bool
    http_only: bool


def chromium_rows(db: sqlite3.Connection, targets: Sequence[str]) -> tuple[int, list[ChromiumRow]]:
    """The database's version (0 without a ``meta`` table) and the rows of ``targets``."""
    version = 0
    if _columns(db, "meta"):
        found = db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
        if found is not None:
            try:
                version = int(found[0])
            except (TypeError, ValueError):
                version = 0
    columns = _columns(db, "cookies")
    if not columns:
        raise sqlite3.OperationalError("no such table: cookies")
    secure = "is_secure" if "is_secure" in columns else "secure"
    http_only = "is_httponly" if "is_httponly" in columns else "httponly"
    # Partitioned cookies (CHIPS) belong to one embedding site, not to the site itself.
    where = "WHERE top_frame_site_key = ''" if "top_frame_site_key" in columns else ""
    query = (
        f"SELECT host_key, name, value, encrypted_value, path, expires_utc, {secure}, {http_only} "
        f"FROM cookies {where}"
    )
    rows = []
    for host, name, value, encrypted, path, expires, is_secure, is_http_only in db.execute(query):
        if not isinstance(host, str) or not name or not _matches(host, targets):
            continue
        rows.append(
            ChromiumRow(
                host=host,
                name=str(name),
                value=str(value or ""),
                encrypted=bytes(encrypted or b""),
                path=str(path or "/"),
                expires_utc=int(expires or 0),
                secure=bool(is_secure),
                http_only=bool(is_http_only),
            )
        )
    return version, rows


def decrypted(row: ChromiumRow, keys: ChromiumKeys) -> Cookie:
    """The row as a :class:`Cookie`: its value decrypted, its expiry in Unix seconds."""
    value = keys.decrypt(row.host, row.encrypted) if row.encrypted else row.value
    expires = row.expires_utc / 1_000_000 - _CHROME_EPOCH_OFFSET if row.expires_utc else None
    return Cookie(
        domain=normalise_domain(row.host),
        name=row.name,
        value=value,
        path=row.path,
        expires=expires,
        secure=row.secure,
        http_only=row.http_only,
        include_subdomains=row.host.startswith("."),
    )
