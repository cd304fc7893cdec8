"""Cookies read straight from a browser's profile: the Chrome family and Firefox.

``chatcli cookies import --browser NAME`` and the ``[cookies] from_browser`` opt-in read here.

**Read only.** The browser's files are never written. Its cookie database is opened with SQLite's
read-only URI (``file:...?mode=ro``). When that cannot work without touching the profile, the
database and its journal are copied into a private temporary directory and the copy is read:
when the browser holds a lock on it (a running Chrome does), when it is in WAL mode (Firefox's
is; reading WAL in place would write to its ``-shm`` file), or when a non-empty journal shows a
writer at work. The copy is deleted at once.

**Chrome and its relatives** (Chromium, Brave, Edge, Vivaldi, Opera) encrypt cookie values the
way each platform asks:

* Linux: ``v10`` values use AES-128-CBC under PBKDF2-SHA1(b"peanuts", b"saltysalt", 1 iteration,
  16 bytes), IV 16 spaces. ``v11`` values use a password from the desktop keyring (the Secret
  Service through the ``secretstorage`` package, or KWallet through ``kwallet-query``), and fall
  back to the ``v10`` key and to the empty password, as the browser itself does.
* macOS: ``v10`` under the Keychain item "Chrome Safe Storage" (PBKDF2 with 1003 iterations).
* Windows: ``v10`` with AES-256-GCM under the key in ``Local State``, itself sealed with DPAPI.
  ``v20`` values (Chrome's app-bound encryption, since version 127) cannot be read by another
  program; the error says so.

From database version 24 (the ``meta`` table) the plaintext starts with the SHA-256 of the
cookie's host; it is checked (a wrong key fails it) and removed. AES needs the ``cryptography``
package (``pip install 'chatcli[browser]'``); Firefox needs only the standard library.

Errors are :class:`~chatcli.errors.UsageError`: one line, exit 2. Cookie values are never logged.
"""

from __future__ import annotations

import base64
import configparser
import contextlib
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

from chatcli.errors import UsageError
from chatcli.store.cookies import Cookie, CookieStore, normalise_domain

log = logging.getLogger("chatcli.store")

_T = TypeVar("_T")

#: What to install for Chrome's encrypted values (said in the error when it is missing).
INSTALL_HINT: Final = "pip install 'chatcli[browser]' (or: pip install cryptography)"

#: Seconds between 1601-01-01 (Chrome's epoch) and 1970-01-01.
_CHROME_EPOCH_OFFSET: Final = 11_644_473_600
_SQLITE_MAGIC: Final = b"SQLite format 3\x00"


@dataclass(frozen=True, slots=True)
class Browser:
    """A browser chatcli can read, and where its profiles live on each platform."""

    name: str
    engine: Literal["chromium", "firefox"]
    #: User-data dirs (Chrome family) or profiles.ini dirs (Firefox), relative to ``~``.
    linux: tuple[str, ...] = ()
    #: Relative to ``~/Library/Application Support``.
    macos: tuple[str, ...] = ()
    #: Relative to ``%LOCALAPPDATA%`` (Chrome family) or ``%APPDATA%`` (Firefox, Opera).
    windows: tuple[str, ...] = ()
    #: "Chrome" -> the keyring item "Chrome Safe Storage" (Linux, macOS), folder "Chrome Keys".
    keyring_linux: str = ""
    keyring_macos: str = ""
    #: Opera keeps its profile under %APPDATA% rather than %LOCALAPPDATA%.
    windows_roaming: bool = False


_CONFIG = "$XDG_CONFIG_HOME"

BROWSERS: Final[dict[str, Browser]] = {
    b.name: b
    for b in (
        Browser(
            "chrome",
            "chromium",
            linux=(f"{_CONFIG}/google-chrome",),
            macos=("Google/Chrome",),
            windows=("Google/Chrome/User Data",),
            keyring_linux="Chrome",
            keyring_macos="Chrome",
        ),
        Browser(
            "chromium",
            "chromium",
            linux=(
                f"{_CONFIG}/chromium",
                "snap/chromium/common/chromium",
                ".var/app/org.chromium.Chromium/config/chromium",
            ),
            macos=("Chromium",),
            windows=("Chromium/User Data",),
            keyring_linux="Chromium",
            keyring_macos="Chromium",
        ),
        Browser(
            "brave",
            "chromium",
            linux=(f"{_CONFIG}/BraveSoftware/Brave-Browser",),
            macos=("BraveSoftware/Brave-Browser",),
            windows=("BraveSoftware/Brave-Browser/User Data",),
            keyring_linux="Brave",
            keyring_macos="Brave",
        ),
        Browser(
            "edge",
            "chromium",
            linux=(f"{_CONFIG}/microsoft-edge",),
            macos=("Microsoft Edge",),
            windows=("Microsoft/Edge/User Data",),
            keyring_linux="Chromium",
            keyring_macos="Microsoft Edge",
        ),
        Browser(
            "vivaldi",
            "chromium",
            linux=(f"{_CONFIG}/vivaldi",),
            macos=("Vivaldi",),
            windows=("Vivaldi/User Data",),
            keyring_linux="Chrome",
            keyring_macos="Vivaldi",
        ),
        Browser(
            "opera",
            "chromium",
            linux=(f"{_CONFIG}/opera",),
            macos=("com.operasoftware.Opera",),
            windows=("Opera Software/Opera Stable",),
            keyring_linux="Chromium",
            keyring_macos="Opera",
            windows_roaming=True,
        ),
        Browser(
            "firefox",
            "firefox",
            linux=(
                ".mozilla/firefox",
                f"{_CONFIG}/mozilla/firefox",
                "snap/firefox/common/.mozilla/firefox",
                ".var/app/org.mozilla.firefox/.mozilla/firefox",
            ),
            macos=("Firefox",),
            windows=("Mozilla/Firefox",),
        ),
        Browser(
            "librewolf",
            "firefox",
            linux=(".librewolf", ".var/app/io.gitlab.librewolf-community/.librewolf"),
            macos=("librewolf",),
            windows=("librewolf",),
        ),
    )
}

#: The names ``--browser`` and ``cookies.from_browser`` accept.
BROWSER_NAMES: Final = tuple(BROWSERS)


def find_browser(name: str) -> Browser:
    """The browser called ``name`` (any case); a one-line error listing the known ones."""
    browser = BROWSERS.get(name.strip().lower())
    if browser is None:
        raise UsageError(f"unknown browser {name!r}; known: {', '.join(BROWSER_NAMES)}")
    return browser


@dataclass(slots=True)
class BrowserCookies:
    """What was read: the unexpired cookies of the domains asked for, and from where."""

    browser: Browser
    database: Path
    cookies: list[Cookie] = field(default_factory=list)
    #: Cookies of those domains that had already expired (skipped).
    expired: int = 0


def read_cookies(
    name: str,
    domains: Sequence[str],
    *,
    profile: str | Path | None = None,
    platform: str | None = None,
    env: Mapping[str, str] | None = None,
) -> BrowserCookies:
    """The unexpired cookies of ``domains`` (and their subdomains) in the browser's profile.

    ``profile`` is a profile directory, a browser's user-data or profiles.ini directory, or the
    cookie database itself; without it the browser's default profile is used. Finding none for
    any of the domains is an error that says where chatcli looked.
    """
    browser = find_browser(name)
    platform = platform or sys.platform
    env = os.environ if env is None else env
    targets = [normalise_domain(d) for d in domains if normalise_domain(d)]
    if not targets:
        raise UsageError("no domain to read cookies for")
    try:
        if browser.engine == "firefox":
            database = _firefox_database(browser, profile, platform, env)
        else:
            database, user_data = _chromium_database(browser, profile, platform, env)
    except OSError as exc:  # a directory chatcli may not look into, say
        where = f" {exc.filename}" if exc.filename else ""
        raise UsageError(
            f"cannot look into{where} for the {browser.name} profile: {exc.strerror or exc}"
        ) from None
    if browser.engine == "firefox":
        found = _read_database(database, browser, lambda db: _firefox_rows(db, targets))
    else:
        version, rows = _read_database(database, browser, lambda db: _chromium_rows(db, targets))
        keys = ChromiumKeys(browser, platform=platform, version=version, user_data=user_data)
        found = [_decrypted(row, keys) for row in rows]
    now = time.time()
    fresh = [c for c in found if not c.expired(now)]
    result = BrowserCookies(browser, database, fresh, len(found) - len(fresh))
    if not fresh:
        skipped = f" ({result.expired} expired)" if result.expired else ""
        raise UsageError(
            f"{browser.name} has no cookies for {', '.join(targets)}{skipped} in {database}; "
            f"sign in to the site in {browser.name} first (and close it, so it saves them)"
        )
    return result


def import_from_browser(
    store: CookieStore,
    name: str,
    domains: Sequence[str],
    *,
    profile: str | Path | None = None,
) -> BrowserCookies:
    """:func:`read_cookies`, then save what was read in ``store``."""
    result = read_cookies(name, domains, profile=profile)
    store.save(result.cookies)
    log.debug(
        "read %d cookie(s) from %s (%s)", len(result.cookies), result.browser.name, result.database
    )
    return result


def _matches(host: str, targets: Iterable[str]) -> bool:
    host = normalise_domain(host)
    return any(host == t or host.endswith("." + t) for t in targets)


# -- finding the profile --------------------------------------------------------------------------


def _roots(browser: Browser, platform: str, env: Mapping[str, str]) -> list[Path]:
    """The browser's user-data (or profiles.ini) directories on this platform, most likely first."""
    home = Path(env["HOME"]) if env.get("HOME") and platform != "win32" else Path.home()
    if platform == "darwin":
        base = home / "Library" / "Application Support"
        return [base / part for part in browser.macos]
    if platform == "win32":
        local = Path(env.get("LOCALAPPDATA") or home / "AppData" / "Local")
        roaming = Path(env.get("APPDATA") or home / "AppData" / "Roaming")
        if browser.engine == "firefox" or browser.windows_roaming:
            return [roaming / part for part in browser.windows]
        return [local / part for part in browser.windows]
    config = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
    return [
        config / part.removeprefix(_CONFIG + "/") if part.startswith(_CONFIG) else home / part
        for part in browser.linux
    ]


def _chromium_database(
    browser: Browser, profile: str | Path | None, platform: str, env: Mapping[str, str]
) -> tuple[Path, Path | None]:
    """The Cookies database and the user-data dir (for ``Local State``), or a clear error."""
    if profile is not None:
        given = Path(profile).expanduser()
        if given.is_file():
            return given, _user_data_of(_profile_of(given))
        if not given.is_dir():
            raise UsageError(f"no {browser.name} profile at {given}: no such file or directory")
        looked = _chromium_candidates(given)
        for candidate in looked:
            if candidate.is_file():
                return candidate, _user_data_of(_profile_of(candidate))
        where = ", ".join(str(p) for p in looked)
        raise UsageError(f"no {browser.name} cookie database in {given} (looked for {where})")
    roots = _roots(browser, platform, env)
    for root in roots:
        for candidate in _chromium_candidates(root):
            if candidate.is_file():
                return candidate, root
    where = ", ".join(str(root) for root in roots) or "nowhere on this platform"
    raise UsageError(
        f"no {browser.name} profile with cookies found (looked in {where}); "
        f"pass --profile DIR if {browser.name} keeps it elsewhere"
    )


def _chromium_candidates(directory: Path) -> list[Path]:
    """Where a Cookies database may be, for a profile dir or a user-data dir."""
    names = [directory / "Network" / "Cookies", directory / "Cookies"]
    if (directory / "Local State").is_file() or not any(p.exists() for p in names):
        for profile in _chromium_profiles(directory):
            names += [directory / profile / "Network" / "Cookies", directory / profile / "Cookies"]
    return names


def _chromium_profiles(user_data: Path) -> list[str]:
    """The profile dirs of a user-data dir: the last one used first, then Default."""
    names = []
    try:
        state = json.loads((user_data / "Local State").read_text(encoding="utf-8"))
        last = state.get("profile", {}).get("last_used")
        if isinstance(last, str) and last and "/" not in last and "\\" not in last:
            names.append(last)
    except (OSError, ValueError, AttributeError):
        pass
    if "Default" not in names:
        names.append("Default")
    return names


def _profile_of(database: Path) -> Path:
    return database.parent.parent if database.parent.name == "Network" else database.parent


def _user_data_of(profile_dir: Path) -> Path | None:
    for directory in (profile_dir, profile_dir.parent):
        if (directory / "Local State").is_file():
            return directory
    return None


def _firefox_database(
    browser: Browser, profile: str | Path | None, platform: str, env: Mapping[str, str]
) -> Path:
    if profile is not None:
        given = Path(profile).expanduser()
        if given.is_file():
            return given
        if not given.is_dir():
            raise UsageError(f"no {browser.name} profile at {given}: no such file or directory")
        if (given / "cookies.sqlite").is_file():
            return given / "cookies.sqlite"
        if (given / "profiles.ini").is_file():
            return _firefox_from_ini(browser, given)
        raise UsageError(
            f"no {browser.name} cookie database in {given} "
            f"(looked for {given / 'cookies.sqlite'} and {given / 'profiles.ini'})"
        )
    roots = _roots(browser, platform, env)
    for root in roots:
        if (root / "profiles.ini").is_file():
            return _firefox_from_ini(browser, root)
    where = ", ".join(str(root / "profiles.ini") for root in roots) or "nowhere on this platform"
    raise UsageError(
        f"no {browser.name} profile found (looked for {where}); "
        f"pass --profile DIR if {browser.name} keeps it elsewhere"
    )


def _firefox_from_ini(browser: Browser, root: Path) -> Path:
    """The cookie database of the profile profiles.ini names as the default."""
    ini = root / "profiles.ini"
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read(ini, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {ini}: {str(exc).splitlines()[0]}") from None
    chosen: list[Path] = []
    # [Install...] Default= is the profile that installation opens; then Default=1; then any.
    for section in parser.sections():
        default = parser[section].get("Default", "")
        if section.startswith("Install") and default:
            chosen.append(root / default)
    profiles = [s for s in parser.sections() if s.startswith("Profile")]
    profiles.sort(key=lambda s: parser[s].get("Default", "0") != "1")
    for section in profiles:
        path = parser[section].get("Path", "")
        if not path:
            continue
        relative = parser[section].get("IsRelative", "1") == "1"
        chosen.append(root / path if relative else Path(path))
    for directory in chosen:
        if (directory / "cookies.sqlite").is_file():
            return directory / "cookies.sqlite"
    if not chosen:
        raise UsageError(f"{ini} names no {browser.name} profile; pass --profile DIR")
    raise UsageError(
        f"no cookies.sqlite in the {browser.name} profiles {ini} names "
        f"({', '.join(str(d) for d in chosen)}); pass --profile DIR"
    )


# -- reading the database without writing to the profile ------------------------------------------


class _Locked(Exception):
    """The database is locked by its browser: read a copy instead."""


def _read_database(
    database: Path, browser: Browser, reader: Callable[[sqlite3.Connection], _T]
) -> _T:
    """``reader`` run on the database opened read-only, or on a private copy of it."""
    try:
        with database.open("rb") as handle:
            header = handle.read(100)
    except OSError as exc:
        raise UsageError(f"cannot read {database}: {exc.strerror or exc}") from None
    if not header.startswith(_SQLITE_MAGIC):
        raise UsageError(f"{database} is not a cookie database (not SQLite)")
    wal = len(header) >= 20 and header[18] == 2  # the read/write versions say WAL mode
    try:
        writer_at_work = Path(f"{database}-journal").stat().st_size > 0
    except OSError:
        writer_at_work = False
    if not wal and not writer_at_work:
        try:
            return _read_direct(database, browser, reader)
        except _Locked:
            log.debug("%s is locked by %s; reading a copy", database, browser.name)
    return _read_copy(database, browser, reader)


def _read_direct(
    database: Path, browser: Browser, reader: Callable[[sqlite3.Connection], _T]
) -> _T:
    uri = database.resolve().as_uri() + "?mode=ro"
    try:
        connection = sqlite3.connect(uri, uri=True, timeout=0.2)
    except sqlite3.Error as exc:
        raise _database_error(database, browser, exc) from None
    try:
        return reader(connection)
    except sqlite3.OperationalError as exc:
        if _is_lock(exc):
            raise _Locked from None
        raise _database_error(database, browser, exc) from None
    except sqlite3.Error as exc:
        raise _database_error(database, browser, exc) from None
    finally:
        connection.close()


#: Copies older than this in the copies folder were left by a process that was killed.
_STALE_COPY_SECONDS: Final = 600


def _copies_dir() -> Path:
    """``CACHE/browser-copies`` (0700): where a locked database is copied to be read."""
    from chatcli.config import Paths
    from chatcli.store.files import private_dir

    folder = private_dir(Paths.from_env(os.environ).cache_dir / "browser-copies")
    now = time.time()
    for leftover in folder.iterdir():  # a killed import cannot clean up after itself
        with contextlib.suppress(OSError):
            if now - leftover.lstat().st_mtime > _STALE_COPY_SECONDS:
                if leftover.is_dir() and not leftover.is_symlink():
                    shutil.rmtree(leftover)
                else:
                    leftover.unlink()
    return folder


def _read_copy(database: Path, browser: Browser, reader: Callable[[sqlite3.Connection], _T]) -> _T:
    # The copy holds the same secrets as the profile: in chatcli's private cache (0700), each
    # file 0600, removed once read (and by a later import if this process is killed first).
    with tempfile.TemporaryDirectory(prefix="copy-", dir=_copies_dir()) as directory:
        copy = Path(directory) / "cookies.db"
        try:
            # The WAL first: a checkpoint between the two copies then loses nothing.
            for suffix in ("-wal", "-journal"):
                side = Path(f"{database}{suffix}")
                if side.is_file():
                    shutil.copyfile(side, f"{copy}{suffix}")
                    os.chmod(f"{copy}{suffix}", 0o600)
            shutil.copyfile(database, copy)
            os.chmod(copy, 0o600)
        except OSError as exc:
            raise UsageError(
                f"cannot read {database}: {browser.name} holds it locked "
                f"({exc.strerror or exc}); close {browser.name} and try again"
            ) from None
        try:
            connection = sqlite3.connect(copy, timeout=0.2)
        except sqlite3.Error as exc:
            raise _database_error(database, browser, exc) from None
        try:
            return reader(connection)
        except sqlite3.Error as exc:
            raise _database_error(database, browser, exc) from None
        finally:
            connection.close()


def _is_lock(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF in (5, 6):  # SQLITE_BUSY, SQLITE_LOCKED
        return True
    return "locked" in str(exc).lower() or "busy" in str(exc).lower()


def _database_error(database: Path, browser: Browser, exc: sqlite3.Error) -> UsageError:
    text = str(exc)
    if _is_lock(exc):
        return UsageError(
            f"cannot read {database}: {browser.name} holds it locked; close it and try again"
        )
    if text.startswith("no such table") or text.startswith("no such column"):
        return UsageError(f"{database} is not a {browser.name} cookie database ({text})")
    return UsageError(f"cannot read the {browser.name} cookie database {database}: {text}")


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


# -- Firefox -------------------------------------------------------------------------------------


def _firefox_rows(db: sqlite3.Connection, targets: Sequence[str]) -> list[Cookie]:
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
class _ChromiumRow:
    host: str
    name: str
    value: str
    encrypted: bytes
    path: str
    expires_utc: int
    secure: bool
    http_only: bool


def _chromium_rows(
    db: sqlite3.Connection, targets: Sequence[str]
) -> tuple[int, list[_ChromiumRow]]:
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
            _ChromiumRow(
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


def _decrypted(row: _ChromiumRow, keys: ChromiumKeys) -> Cookie:
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


def _pbkdf2(password: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha1", password, b"saltysalt", iterations, 16)


class ChromiumKeys:
    """Decrypts the Chrome family's cookie values, fetching each platform's key on first need."""

    def __init__(
        self,
        browser: Browser,
        *,
        platform: str,
        version: int,
        user_data: Path | None = None,
        keyring: Callable[[Browser], bytes | None] | None = None,
    ) -> None:
        self.browser = browser
        self.platform = platform
        self.version = version
        self.user_data = user_data
        self._keyring = keyring or _linux_keyring_password
        self._keys: dict[str, list[bytes]] = {}
        self._keyring_found: bool | None = None

    def decrypt(self, host: str, blob: bytes) -> str:
        prefix = blob[:3]
        if self.platform == "win32":
            return self._decrypt_windows(host, prefix, blob)
        if prefix == b"v11" and self.platform != "darwin":
            keys = self._linux_v11_keys()
        elif prefix == b"v10":
            keys = [_pbkdf2(self._macos_password(), 1003)] if self.platform == "darwin" else []
            keys = keys or [_pbkdf2(b"peanuts", 1)]
        else:
            raise UsageError(
                f"{self.browser.name} stores a cookie of {host} in a format chatcli does not "
                f"know ({prefix!r}); export the cookies with a browser extension instead"
            )
        for key in keys:
            plain = _unpadded(_cbc_decrypt(key, blob[3:]))
            text = self._plaintext(host, plain)
            if text is not None:
                return text
        raise UsageError(self._cannot_decrypt(host, prefix))

    def _plaintext(self, host: str, plain: bytes | None) -> str | None:
        if plain is None:
            return None
        if self.version >= 24:
            if plain[:32] != hashlib.sha256(host.encode()).digest():
                return None  # the wrong key: the host's hash did not come out
            plain = plain[32:]
        try:
            return plain.decode("utf-8")
        except UnicodeDecodeError:
            return None

    def _cannot_decrypt(self, host: str, prefix: bytes) -> str:
        name = self.browser.name
        if prefix == b"v11":
            label = f"{self.browser.keyring_linux} Safe Storage"
            if self._keyring_found:
                why = f"the password in the keyring item {label!r} did not open them"
            elif _module_missing("secretstorage") and not shutil.which("kwallet-query"):
                why = (
                    f"reading the keyring item {label!r} needs the secretstorage package: "
                    f"pip install 'chatcli[browser]' (or: pip install secretstorage)"
                )
            elif not os.environ.get("DBUS_SESSION_BUS_ADDRESS") and not shutil.which(
                "kwallet-query"
            ):
                why = (
                    f"the keyring item {label!r} holds the key, and there is no desktop session "
                    "bus to ask for it (DBUS_SESSION_BUS_ADDRESS is not set): run this in your "
                    "desktop session"
                )
            else:
                why = f"no keyring item {label!r} could be read (is the keyring unlocked?)"
            return f"cannot decrypt {name}'s cookies for {host}: {why}"
        return f"cannot decrypt {name}'s cookies for {host}: the key did not fit"

    def _linux_v11_keys(self) -> list[bytes]:
        if "v11" not in self._keys:
            password = self._keyring(self.browser)
            self._keyring_found = password is not None
            keys = [_pbkdf2(password, 1)] if password is not None else []
            self._keys["v11"] = [*keys, _pbkdf2(b"peanuts", 1), _pbkdf2(b"", 1)]
        return self._keys["v11"]

    def _macos_password(self) -> bytes:
        if "macos" not in self._keys:
            self._keys["macos"] = [_macos_keychain_password(self.browser)]
        return self._keys["macos"][0]

    def _decrypt_windows(self, host: str, prefix: bytes, blob: bytes) -> str:
        name = self.browser.name
        if prefix == b"v20":
            raise UsageError(
                f"{name} seals its cookies for {host} with app-bound encryption (v20), which "
                "other programs cannot open; export them with a browser extension and run "
                "`chatcli cookies import FILE`"
            )
        if prefix in (b"v10", b"v11"):
            key = self.windows_key()
            text = self._plaintext(host, _gcm_decrypt(key, blob[3:15], blob[15:]))
            if text is None:
                raise UsageError(self._cannot_decrypt(host, prefix))
            return text
        text = self._plaintext(host, _dpapi_decrypt(blob))  # before Chrome 80
        if text is None:
            raise UsageError(self._cannot_decrypt(host, prefix))
        return text

    def windows_key(self) -> bytes:
        if "win32" not in self._keys:
            if self.user_data is None:
                raise UsageError(
                    f"cannot decrypt {self.browser.name}'s cookies: no 'Local State' file found "
                    "next to the profile (pass --profile with the profile inside its User Data)"
                )
            state_file = self.user_data / "Local State"
            try:
                state = json.loads(state_file.read_text(encoding="utf-8"))
                sealed = base64.b64decode(state["os_crypt"]["encrypted_key"])
            except (OSError, ValueError, KeyError, TypeError):
                raise UsageError(f"cannot read the cookie key in {state_file}") from None
            if not sealed.startswith(b"DPAPI"):
                raise UsageError(f"the cookie key in {state_file} is not sealed with DPAPI")
            self._keys["win32"] = [_dpapi_decrypt(sealed[5:])]
        return self._keys["win32"][0]


def _module_missing(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is None


def _cipher_module() -> Any:
    import importlib

    try:
        return importlib.import_module("cryptography.hazmat.primitives.ciphers")
    except ImportError:
        raise UsageError(
            f"Chrome-family cookies are encrypted and decrypting them needs the cryptography "
            f"package: {INSTALL_HINT}"
        ) from None


def _cbc_decrypt(key: bytes, data: bytes) -> bytes | None:
    if not data or len(data) % 16:
        return None
    ciphers = _cipher_module()
    decryptor = ciphers.Cipher(
        ciphers.algorithms.AES(key), ciphers.modes.CBC(b" " * 16)
    ).decryptor()
    return bytes(decryptor.update(data) + decryptor.finalize())


def _unpadded(plain: bytes | None) -> bytes | None:
    """``plain`` without its PKCS#7 padding; ``None`` when the padding is wrong (a wrong key)."""
    if not plain:
        return None
    pad = plain[-1]
    if not 1 <= pad <= 16 or plain[-pad:] != bytes([pad]) * pad:
        return None
    return plain[:-pad]


def _gcm_decrypt(key: bytes, nonce: bytes, data: bytes) -> bytes | None:
    import importlib

    _cipher_module()  # the one clear error when cryptography is missing
    aead = importlib.import_module("cryptography.hazmat.primitives.ciphers.aead")
    exceptions = importlib.import_module("cryptography.exceptions")
    try:
        return bytes(aead.AESGCM(key).decrypt(nonce, data, None))
    except (exceptions.InvalidTag, ValueError):
        return None


# -- the platforms' key stores -------------------------------------------------------------------


def _linux_keyring_password(browser: Browser) -> bytes | None:
    """The "NAME Safe Storage" password from the Secret Service or KWallet, if either has it."""
    label = f"{browser.keyring_linux} Safe Storage"
    if os.environ.get("DBUS_SESSION_BUS_ADDRESS") and not _module_missing("secretstorage"):
        import importlib

        secretstorage: Any = importlib.import_module("secretstorage")
        try:
            connection = secretstorage.dbus_init()
            try:
                collection = secretstorage.get_default_collection(connection)
                for item in collection.get_all_items():
                    if item.get_label() == label and not item.is_locked():
                        return bytes(item.get_secret())
            finally:
                connection.close()
        except Exception as exc:  # a missing or locked keyring: try the next source
            log.debug("the Secret Service had no %r: %s", label, type(exc).__name__)
    if shutil.which("kwallet-query"):
        folder = f"{browser.keyring_linux} Keys"
        for wallet in ("kdewallet",):
            try:
                done = subprocess.run(
                    ["kwallet-query", "--read-password", label, "--folder", folder, wallet],
                    capture_output=True,
                    timeout=30,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired):
                continue
            out = done.stdout.strip()
            if done.returncode == 0 and out and not out.lower().startswith(b"failed to read"):
                return out
    return None


def _macos_keychain_password(browser: Browser) -> bytes:
    service = f"{browser.keyring_macos} Safe Storage"
    try:
        done = subprocess.run(
            ["security", "find-generic-password", "-w", "-s", service],
            capture_output=True,
            timeout=60,  # the Keychain may ask the user to allow it
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UsageError(f"cannot ask the Keychain for {service!r}: {exc}") from None
    if done.returncode != 0 or not done.stdout.strip():
        raise UsageError(
            f"the Keychain did not give the password {service!r} (denied, or no such item)"
        )
    return done.stdout.strip()


def _dpapi_decrypt(data: bytes) -> bytes:
    """Open ``data`` sealed with Windows DPAPI for the current user."""
    import ctypes

    class Blob(ctypes.Structure):
        _fields_ = [("size", ctypes.c_ulong), ("data", ctypes.POINTER(ctypes.c_char))]

    windll: Any = getattr(ctypes, "windll", None)
    if windll is None:
        raise UsageError("this cookie key is sealed with Windows DPAPI: read it on Windows")
    buffer = ctypes.create_string_buffer(data, len(data))
    sealed = Blob(len(data), ctypes.cast(buffer, ctypes.POINTER(ctypes.c_char)))
    opened = Blob()
    if not windll.crypt32.CryptUnprotectData(
        ctypes.byref(sealed), None, None, None, None, 0, ctypes.byref(opened)
    ):
        raise UsageError("Windows refused to open the browser's cookie key (DPAPI)")
    try:
        return ctypes.string_at(opened.data, opened.size)
    finally:
        windll.kernel32.LocalFree(opened.data)
