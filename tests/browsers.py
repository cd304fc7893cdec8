"""Browser profiles for the cookie-import tests: a real headless Chromium, and cookie databases
built here in the formats Firefox and the Chrome family write.

The tests never install anything: a test whose program is missing skips, and its reason names
the Debian package to install (``.ci/run`` installs them when it runs as root).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

#: Seconds between 1601-01-01 (Chrome's epoch) and 1970-01-01.
CHROME_EPOCH_OFFSET = 11_644_473_600


def snapshot(directory: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under ``directory``: size, mtime (ns) and SHA-256, to prove nothing changed."""
    found = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and not path.is_symlink():
            stat = path.stat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found[str(path.relative_to(directory))] = (stat.st_size, stat.st_mtime_ns, digest)
    return found


# -- a real Chromium -----------------------------------------------------------------------------


def skip_unless_installed(programs: Mapping[str, str]) -> None:
    """Skip the test unless every program (name -> the Debian package that has it) is on PATH."""
    missing = [program for program in programs if not shutil.which(program)]
    if missing:
        packages = " ".join(sorted({programs[program] for program in missing}))
        pytest.skip(
            f"{', '.join(missing)} not installed: apt-get install {packages} "
            "(.ci/run installs it when run as root)"
        )


def find_chromium() -> str:
    """The Chromium binary; the test skips when there is none."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        skip_unless_installed({"chromium": "chromium"})
        raise AssertionError("skip_unless_installed did not skip")
    return found


@dataclass
class CookieSite:
    """What the site sets: chat-gpt.org's two cookies, then a redirect to another site's."""

    clearance: str
    session: str
    foreign: str = "not-for-aichat"

    def app(self) -> web.Application:
        async def home(request: web.Request) -> web.StreamResponse:
            if request.host.split(":")[0] == "chat-gpt.org":
                redirect = web.HTTPFound("http://other.test/")
                # A domain cookie (host key ".chat-gpt.org") and a host-only, HttpOnly one.
                redirect.set_cookie(
                    "cf_clearance", self.clearance, max_age=3600, domain="chat-gpt.org"
                )
                redirect.set_cookie("session", self.session, max_age=3600, httponly=True)
                raise redirect
            response: web.StreamResponse = web.Response(
                text="<html><body>other</body></html>", content_type="text/html"
            )
            response.set_cookie("foreign", self.foreign, max_age=3600)
            return response

        app = web.Application()
        app.router.add_get("/", home)
        return app


def visit_with_chromium(
    binary: str,
    user_data: Path,
    port: int,
    home: Path,
    *,
    password_store: str = "basic",
    extra_env: Mapping[str, str] | None = None,
) -> None:
    """Open http://chat-gpt.org/ (served on 127.0.0.1:``port``) in a fresh profile, then quit.

    Every other host name fails to resolve: the browser reaches nothing but the local server.
    """
    rules = f"MAP chat-gpt.org 127.0.0.1:{port}, MAP other.test 127.0.0.1:{port}, MAP * ~NOTFOUND"
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.lower().endswith("_proxy") and not key.startswith("XDG_")
    }
    env.update(HOME=str(home))
    env.update(extra_env or {})
    command = [
        binary,
        "--headless=new",
        f"--user-data-dir={user_data}",
        f"--password-store={password_store}",
        "--no-first-run",
        "--no-default-browser-check",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        f"--host-resolver-rules={rules}",
        "--dump-dom",
        "http://chat-gpt.org/",
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "other" in done.stdout, f"the page did not load: {done.stdout!r}"


# -- databases in the browsers' formats ----------------------------------------------------------

FIREFOX_SCHEMA = """
CREATE TABLE moz_cookies (
    id INTEGER PRIMARY KEY, originAttributes TEXT NOT NULL DEFAULT '', name TEXT, value TEXT,
    host TEXT, path TEXT, expiry INTEGER, lastAccessed INTEGER, creationTime INTEGER,
    isSecure INTEGER, isHttpOnly INTEGER, inBrowserElement INTEGER DEFAULT 0,
    sameSite INTEGER DEFAULT 0, rawSameSite INTEGER DEFAULT 0, schemeMap INTEGER DEFAULT 0,
    isPartitionedAttributeSet INTEGER DEFAULT 0,
    CONSTRAINT moz_uniqueid UNIQUE (name, host, path, originAttributes)
)
"""


@dataclass
class FirefoxCookie:
    host: str
    name: str
    value: str
    expiry: float | None = None  # Unix seconds; default: an hour from now
    origin: str = ""
    http_only: bool = False
    milliseconds: bool = False  # newer Firefox versions write the expiry in milliseconds


def add_firefox_cookies(db: sqlite3.Connection, cookies: Iterable[FirefoxCookie]) -> None:
    now = int(time.time() * 1_000_000)
    for c in cookies:
        expiry = c.expiry if c.expiry is not None else time.time() + 3600
        stored = int(expiry * 1000) if c.milliseconds else int(expiry)
        db.execute(
            "INSERT INTO moz_cookies (originAttributes, name, value, host, path, expiry, "
            "lastAccessed, creationTime, isSecure, isHttpOnly) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (c.origin, c.name, c.value, c.host, "/", stored, now, now, 0, int(c.http_only)),
        )


def make_firefox_db(path: Path, cookies: Iterable[FirefoxCookie], *, wal: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA journal_mode={'WAL' if wal else 'DELETE'}")
    db.execute(FIREFOX_SCHEMA)
    add_firefox_cookies(db, cookies)
    db.commit()
    db.close()
    return path


def make_firefox_root(
    root: Path, profiles: Mapping[str, Iterable[FirefoxCookie]], default: str
) -> None:
    """A profiles.ini directory: one profile per name, the install's default being ``default``.

    The first profile is marked ``Default=1`` (an older Firefox's choice); the ``[Install...]``
    section, which a current Firefox follows, names ``default``.
    """
    lines = [f"[Install4F96D1932A9F858E]\nDefault=Profiles/{default}\nLocked=1\n"]
    for index, (name, cookies) in enumerate(profiles.items()):
        make_firefox_db(root / "Profiles" / name / "cookies.sqlite", cookies)
        lines.append(
            f"[Profile{index}]\nName={name}\nIsRelative=1\nPath=Profiles/{name}\n"
            + ("Default=1\n" if index == 0 else "")
        )
    lines.append("[General]\nStartWithLastProfile=1\nVersion=2\n")
    (root / "profiles.ini").write_text("\n".join(lines))


CHROME_SCHEMA = """
CREATE TABLE meta (key LONGVARCHAR NOT NULL UNIQUE PRIMARY KEY, value LONGVARCHAR);
CREATE TABLE cookies (
    creation_utc INTEGER NOT NULL, host_key TEXT NOT NULL, top_frame_site_key TEXT NOT NULL,
    name TEXT NOT NULL, value TEXT NOT NULL, encrypted_value BLOB NOT NULL, path TEXT NOT NULL,
    expires_utc INTEGER NOT NULL, is_secure INTEGER NOT NULL, is_httponly INTEGER NOT NULL,
    last_access_utc INTEGER NOT NULL, has_expires INTEGER NOT NULL DEFAULT 1,
    is_persistent INTEGER NOT NULL DEFAULT 1, priority INTEGER NOT NULL DEFAULT 1,
    samesite INTEGER NOT NULL DEFAULT -1, source_scheme INTEGER NOT NULL DEFAULT 0,
    source_port INTEGER NOT NULL DEFAULT -1, last_update_utc INTEGER NOT NULL DEFAULT 0,
    source_type INTEGER NOT NULL DEFAULT 0, has_cross_site_ancestor INTEGER NOT NULL DEFAULT 0
);
"""


def chrome_time(unix: float) -> int:
    return int((unix + CHROME_EPOCH_OFFSET) * 1_000_000)


def chrome_encrypt_cbc(
    host: str,
    value: str,
    *,
    password: bytes = b"peanuts",
    iterations: int = 1,
    prefix: bytes = b"v10",
    version: int = 24,
) -> bytes:
    """A value encrypted as Chrome does on Linux (1 iteration) and macOS (1003)."""
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key = hashlib.pbkdf2_hmac("sha1", password, b"saltysalt", iterations, 16)
    plain = (hashlib.sha256(host.encode()).digest() if version >= 24 else b"") + value.encode()
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plain) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(b" " * 16)).encryptor()
    return prefix + encryptor.update(padded) + encryptor.finalize()


def chrome_encrypt_gcm(host: str, value: str, key: bytes, *, prefix: bytes = b"v10") -> bytes:
    """A value encrypted as Chrome does on Windows (AES-256-GCM, 12-byte nonce)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(12)
    plain = hashlib.sha256(host.encode()).digest() + value.encode()
    return prefix + nonce + AESGCM(key).encrypt(nonce, plain, None)


def make_chrome_db(
    path: Path, rows: Iterable[tuple[str, str, bytes]], *, version: int = 24
) -> Path:
    """A Chrome-format Cookies database with ``(host_key, name, encrypted_value)`` rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.executescript(CHROME_SCHEMA)
    db.execute("INSERT INTO meta VALUES ('version', ?)", (str(version),))
    now = time.time()
    for host, name, encrypted in rows:
        db.execute(
            "INSERT INTO cookies (creation_utc, host_key, top_frame_site_key, name, value, "
            "encrypted_value, path, expires_utc, is_secure, is_httponly, last_access_utc) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (chrome_time(now), host, "", name, "", encrypted, "/", chrome_time(now + 3600), 0, 0,
             chrome_time(now)),
        )  # fmt: skip
    db.commit()
    db.close()
    return path


# -- a desktop keyring (the Secret Service), for Chromium's v11 values ------------------------


def need_gnome_keyring() -> None:
    """gnome-keyring-daemon and dbus-run-session (:func:`keyring_session`); else the test skips."""
    skip_unless_installed(
        {"gnome-keyring-daemon": "gnome-keyring", "dbus-run-session": "dbus-daemon"}
    )


@contextmanager
def keyring_session(directory: Path) -> Iterator[dict[str, str]]:
    """A private D-Bus session bus with an unlocked GNOME keyring; yields the variables that
    point at it (with HOME, where the keyring keeps its files). Everything started here is
    stopped by its process group when the block ends."""
    home = directory / "home"
    home.mkdir(parents=True, exist_ok=True)
    address_file = directory / "bus-address"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DBUS_", "XDG_", "GNOME_"))}
    env.update(HOME=str(home))
    script = (
        f'printf %s "$DBUS_SESSION_BUS_ADDRESS" > "{address_file}"; '
        "exec gnome-keyring-daemon --foreground --unlock --components=secrets"
    )
    process = subprocess.Popen(
        ["dbus-run-session", "--", "sh", "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    try:
        assert process.stdin is not None
        process.stdin.write(b"test-keyring-password")  # the login keyring's, on first start
        process.stdin.close()
        deadline = time.monotonic() + 20
        while not (address_file.exists() and address_file.read_text()):
            assert process.poll() is None, "dbus-run-session or gnome-keyring-daemon failed"
            assert time.monotonic() < deadline, "the session bus did not start"
            time.sleep(0.05)
        yield {"HOME": str(home), "DBUS_SESSION_BUS_ADDRESS": address_file.read_text()}
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
