"""Cookies straight from the browser: a real headless Chromium, Firefox-format profiles, locked
databases, the one-line errors, the ``[cookies] from_browser`` opt-in, and the decryption of
the Chrome family's values on each platform.

The browser's profile is only ever read: every import checks its files' bytes and mtimes.
"""

from __future__ import annotations

import importlib
import json
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatcli.browser import BROWSER_NAMES, BROWSERS, ChromiumKeys, read_cookies
from chatcli.errors import UsageError
from chatcli.store import Cookie, Stores
from tests.browsers import (
    CookieSite,
    FirefoxCookie,
    add_firefox_cookies,
    chrome_encrypt_cbc,
    chrome_encrypt_gcm,
    find_chromium,
    keyring_session,
    make_chrome_db,
    make_firefox_db,
    make_firefox_root,
    need_gnome_keyring,
    snapshot,
    visit_with_chromium,
)
from tests.conftest import Isolated, assert_one_line_error, run, run_binary
from tests.fakes.aichat import FakeAichat
from tests.servers import AppServer


def importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


#: Chrome-family values are decrypted with cryptography, which the browser extra brings.
needs_cryptography = pytest.mark.skipif(
    not importable("cryptography"),
    reason="Chrome-family cookies need cryptography: pip install -e '.[test,browser]'",
)


def stored(isolated: Isolated) -> dict[tuple[str, str], str]:
    """(domain, name) -> value, read from chatcli's cookie file itself (nothing is printed)."""
    path = isolated.chatcli_home / "data" / "cookies.json"
    if not path.exists():
        return {}
    rows = json.loads(path.read_text())["cookies"]
    return {(row["domain"], row["name"]): row["value"] for row in rows}


def ask_aichat(fake: FakeAichat) -> list[str]:
    return ["ask", "-p", "aichat", "--base-url", fake.base_url, "hi"]


# -- a real Chromium ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium_profile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, CookieSite]]:
    """A fresh Chromium profile that visited chat-gpt.org (served here) and got its cookies."""
    binary = find_chromium()
    root = tmp_path_factory.mktemp("chromium")
    site = CookieSite(clearance=f"clear-{secrets.token_hex(8)}", session=secrets.token_hex(12))
    server = AppServer(site.app())
    server.start()
    try:
        visit_with_chromium(binary, root / "profile", server.port, root / "home")
    finally:
        server.stop()
    yield root / "profile", site


@needs_cryptography
def test_cookies_a_real_chromium_got_reach_the_store_and_aichat(
    chromium_profile: tuple[Path, CookieSite], isolated: Isolated
) -> None:
    profile, site = chromium_profile
    before = snapshot(profile)
    result = run(
        ["cookies", "import", "--browser", "chromium", "--profile", str(profile)], isolated
    )
    assert result.returncode == 0, result.stderr
    assert_one_line_error(result.stderr, "imported 2 cookie(s) for chat-gpt.org from chromium")
    for secret in (site.clearance, site.session):
        assert secret not in result.stderr + result.stdout
    # Without --domain: the domains of the providers that need cookies, and nothing else.
    assert stored(isolated) == {
        ("chat-gpt.org", "cf_clearance"): site.clearance,
        ("chat-gpt.org", "session"): site.session,
    }
    assert snapshot(profile) == before, "the browser's profile was changed"

    fake = FakeAichat()
    fake.required_cookies = {"cf_clearance": site.clearance, "session": site.session}
    with fake.serve():
        answer = run(ask_aichat(fake), isolated)
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout == fake.answer + "\n"
    assert fake.requests[-1].cookies == fake.required_cookies


@needs_cryptography
def test_a_real_chromium_profile_by_domain_and_by_database_path(
    chromium_profile: tuple[Path, CookieSite], isolated: Isolated
) -> None:
    profile, site = chromium_profile
    database = profile / "Default" / "Cookies"
    assert database.is_file()
    args = ["cookies", "import", "--browser", "chromium", "--profile", str(database)]
    result = run([*args, "--domain", "other.test"], isolated)
    assert result.returncode == 0, result.stderr
    assert_one_line_error(result.stderr, "imported 1 cookie(s) for other.test from chromium")
    assert stored(isolated) == {("other.test", "foreign"): site.foreign}


@needs_cryptography
def test_a_real_chromium_with_a_desktop_keyring_writes_v11_values_chatcli_reads(
    tmp_path: Path, isolated: Isolated
) -> None:
    pytest.importorskip(
        "secretstorage",
        reason="the Secret Service is read through secretstorage (the browser extra)",
    )
    binary = find_chromium()
    need_gnome_keyring()
    site = CookieSite(clearance=f"clear-{secrets.token_hex(8)}", session=secrets.token_hex(12))
    profile = tmp_path / "profile"
    args = ["cookies", "import", "--browser", "chromium", "--profile", str(profile)]
    server = AppServer(site.app())
    server.start()
    try:
        with keyring_session(tmp_path / "keyring") as bus:
            visit_with_chromium(
                binary,
                profile,
                server.port,
                tmp_path / "home",
                password_store="gnome-libsecret",
                extra_env=bus,
            )
            database = sqlite3.connect(
                (profile / "Default" / "Cookies").as_uri() + "?mode=ro", uri=True
            )
            prefixes = {
                bytes(row[0][:3]) for row in database.execute("SELECT encrypted_value FROM cookies")
            }
            database.close()
            assert prefixes == {b"v11"}, "Chromium did not use the keyring"
            before = snapshot(profile)
            # Without the session bus the keyring cannot be asked: one line says so.
            locked_out = run(args, isolated)
            result = run(
                args, isolated, env={"DBUS_SESSION_BUS_ADDRESS": bus["DBUS_SESSION_BUS_ADDRESS"]}
            )
    finally:
        server.stop()
    assert locked_out.returncode == 2
    assert_one_line_error(
        locked_out.stderr, "cannot decrypt chromium's cookies", "'Chromium Safe Storage'"
    )
    assert result.returncode == 0, result.stderr
    assert_one_line_error(result.stderr, "imported 2 cookie(s) for chat-gpt.org from chromium")
    assert stored(isolated) == {
        ("chat-gpt.org", "cf_clearance"): site.clearance,
        ("chat-gpt.org", "session"): site.session,
    }
    assert snapshot(profile) == before


# -- Firefox-format profiles ----------------------------------------------------------------------

FIREFOX_COOKIES = [
    FirefoxCookie(".chat-gpt.org", "cf_clearance", "ff-clear"),  # a domain cookie
    FirefoxCookie("chat-gpt.org", "session", "ff-session", http_only=True, milliseconds=True),
    FirefoxCookie("chat-gpt.org", "old", "gone", expiry=time.time() - 60),
    FirefoxCookie("chat-gpt.org", "boxed", "container", origin="^userContextId=2"),
    FirefoxCookie("example.com", "foreign", "not-for-aichat"),
]
FIREFOX_EXPECTED = {
    ("chat-gpt.org", "cf_clearance"): "ff-clear",
    ("chat-gpt.org", "session"): "ff-session",
}


def test_firefox_profile_given_with_profile(isolated: Isolated) -> None:
    profile = isolated.root / "ff-profile"
    make_firefox_db(profile / "cookies.sqlite", FIREFOX_COOKIES)
    before = snapshot(profile)
    result = run(["cookies", "import", "--browser", "firefox", "--profile", str(profile)], isolated)
    assert result.returncode == 0, result.stderr
    assert_one_line_error(
        result.stderr, "imported 2 cookie(s) for chat-gpt.org from firefox", "1 already expired"
    )
    assert stored(isolated) == FIREFOX_EXPECTED
    assert snapshot(profile) == before
    listing = run(["cookies", "list", "--json"], isolated)
    rows = {row["name"]: row for row in json.loads(listing.stdout)}
    assert rows["session"]["expires"] < time.time() + 7200  # milliseconds were understood
    assert "ff-clear" not in listing.stdout and "ff-session" not in listing.stdout


def test_firefox_profile_found_through_profiles_ini_in_home(isolated: Isolated) -> None:
    root = isolated.home / ".mozilla" / "firefox"
    make_firefox_root(
        root,
        {
            "old.default": [FirefoxCookie("chat-gpt.org", "cf_clearance", "from-the-old-one")],
            "abcd1234.default-release": FIREFOX_COOKIES,
        },
        default="abcd1234.default-release",
    )
    before = snapshot(root)
    result = run(["cookies", "import", "--browser", "Firefox"], isolated)
    assert result.returncode == 0, result.stderr
    line = assert_one_line_error(
        result.stderr, "imported 2 cookie(s) for chat-gpt.org from firefox"
    )
    assert "abcd1234.default-release" in line
    assert stored(isolated) == FIREFOX_EXPECTED
    assert snapshot(root) == before


def test_a_wal_database_with_a_live_writer_is_read_from_a_copy(isolated: Isolated) -> None:
    profile = isolated.root / "ff-live"
    database = make_firefox_db(profile / "cookies.sqlite", FIREFOX_COOKIES[:1])
    writer = sqlite3.connect(database)  # the "browser": its latest commit is only in the WAL
    try:
        add_firefox_cookies(writer, [FirefoxCookie("chat-gpt.org", "fresh", "just-set")])
        writer.commit()
        assert Path(f"{database}-wal").stat().st_size > 0
        before = snapshot(profile)
        args = ["cookies", "import", "--browser", "firefox", "--profile", str(profile)]
        result = run(args, isolated)
        assert result.returncode == 0, result.stderr
        assert snapshot(profile) == before
    finally:
        writer.close()
    assert stored(isolated) == {
        ("chat-gpt.org", "cf_clearance"): "ff-clear",
        ("chat-gpt.org", "fresh"): "just-set",
    }


def test_copies_are_private_removed_after_reading_and_swept_if_left(isolated: Isolated) -> None:
    import os

    from chatcli.browser import copies as copying

    profile = isolated.root / "ff-copy"
    database = make_firefox_db(profile / "cookies.sqlite", FIREFOX_COOKIES)
    copies = isolated.chatcli_home / "cache" / "browser-copies"
    (copies / "copy-killed").mkdir(parents=True)  # left by an import that was killed
    (copies / "copy-killed" / "cookies.db").write_bytes(b"secret")
    old = time.time() - 3600
    os.utime(copies / "copy-killed", (old, old))
    (copies / "copy-running").mkdir()  # another import reading right now: not touched

    seen: dict[str, int] = {}

    def reader(db: sqlite3.Connection) -> int:
        path = Path(db.execute("PRAGMA database_list").fetchone()[2])
        seen["in_cache"] = path.parent.parent == copies
        seen["file_mode"] = path.stat().st_mode & 0o777
        seen["dir_mode"] = copies.stat().st_mode & 0o777
        return int(db.execute("SELECT count(*) FROM moz_cookies").fetchone()[0])

    cache = isolated.chatcli_home / "cache"
    count = copying.read_copy(database, BROWSERS["firefox"], reader, cache_dir=cache)
    assert count == len(FIREFOX_COOKIES)
    assert seen == {"in_cache": True, "file_mode": 0o600, "dir_mode": 0o700}
    assert sorted(p.name for p in copies.iterdir()) == ["copy-running"]


def test_without_a_cache_dir_the_copy_is_private_in_the_temporary_dir(tmp_path: Path) -> None:
    from chatcli.browser import copies as copying

    database = make_firefox_db(tmp_path / "ff" / "cookies.sqlite", FIREFOX_COOKIES)
    seen: dict[str, object] = {}

    def reader(db: sqlite3.Connection) -> int:
        path = Path(db.execute("PRAGMA database_list").fetchone()[2])
        seen["directory"] = path.parent
        seen["modes"] = (path.parent.stat().st_mode & 0o777, path.stat().st_mode & 0o777)
        return int(db.execute("SELECT count(*) FROM moz_cookies").fetchone()[0])

    count = copying.read_copy(database, BROWSERS["firefox"], reader, cache_dir=None)
    assert count == len(FIREFOX_COOKIES)
    directory = seen["directory"]
    assert isinstance(directory, Path)
    assert directory.parent == Path(tempfile.gettempdir()).resolve()
    assert directory.name.startswith("chatcli-browser-copy-")
    assert seen["modes"] == (0o700, 0o600)
    assert not directory.exists()


@pytest.mark.parametrize("writing", [False, True], ids=["locked", "locked-mid-write"])
def test_a_database_another_process_holds_locked_is_read_from_a_copy(
    isolated: Isolated, writing: bool
) -> None:
    profile = isolated.root / "ff-locked"
    database = make_firefox_db(profile / "cookies.sqlite", FIREFOX_COOKIES, wal=False)
    # Taken before the lock: closing any descriptor of the file would drop this process's lock.
    before = snapshot(profile)
    holder = sqlite3.connect(database, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")  # as a running browser holds it
        if writing:
            add_firefox_cookies(holder, [FirefoxCookie("chat-gpt.org", "uncommitted", "never")])
            assert Path(f"{database}-journal").stat().st_size > 0
        args = ["cookies", "import", "--browser", "firefox", "--profile", str(profile)]
        result = run(args, isolated, env={"CHATCLI_DEBUG": "1"})
        assert result.returncode == 0, result.stderr
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert snapshot(profile) == before
    if not writing:  # the read-only open met the lock, then the copy was read
        assert "is locked by firefox; reading a copy" in result.stderr
    # The committed cookies, never the writer's unfinished change.
    assert stored(isolated) == FIREFOX_EXPECTED


def test_a_locked_database_that_cannot_be_copied_is_one_line(isolated: Isolated) -> None:
    # Where the browser's lock also keeps other programs from reading the file (Windows), the
    # copy fails too: one line that says to close the browser, exit 2.
    profile = isolated.root / "ff-locked-hard"
    database = make_firefox_db(profile / "cookies.sqlite", FIREFOX_COOKIES, wal=False)
    site = isolated.root / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import shutil\n\n"
        "def copyfile(src, dst, **kwargs):\n"
        "    raise PermissionError(13, 'The process cannot access the file', str(src))\n\n"
        "shutil.copyfile = copyfile\n"
    )
    holder = sqlite3.connect(database, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        args = ["cookies", "import", "--browser", "firefox", "--profile", str(profile)]
        result = run_binary(args, isolated, env={"PYTHONPATH": str(site)})
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "firefox holds it locked", "close firefox and try again")
    assert stored(isolated) == {}


def test_a_profile_chatcli_may_not_look_into_is_one_line(
    isolated: Isolated, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Path.is_file raises for EACCES (a directory without x permission); root, which runs the
    # tests, reads everything, so the refusal is simulated where Python would raise it.
    denied = isolated.home / ".mozilla" / "firefox"
    real_is_file = Path.is_file

    def is_file(self: Path) -> bool:
        if self.is_relative_to(denied):
            raise PermissionError(13, "Permission denied", str(self))
        return real_is_file(self)

    monkeypatch.setattr(Path, "is_file", is_file)
    with pytest.raises(UsageError) as caught:
        read_cookies("firefox", ["chat-gpt.org"], env={"HOME": str(isolated.home)}, cache_dir=None)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"cannot look into {denied / 'profiles.ini'} for the firefox profile")


# -- one-line errors, exit 2 -----------------------------------------------------------------------


def test_unknown_browser_lists_the_known_ones(isolated: Isolated) -> None:
    result = run(["cookies", "import", "--browser", "netscape"], isolated)
    assert result.returncode == 2
    assert_one_line_error(
        result.stderr, "unknown browser 'netscape'", "known: chrome, chromium", "firefox"
    )


def test_missing_profiles_say_where_chatcli_looked(isolated: Isolated) -> None:
    result = run(["cookies", "import", "--browser", "chrome"], isolated)
    assert result.returncode == 2
    assert_one_line_error(
        result.stderr, "no chrome profile", str(isolated.home / ".config/google-chrome")
    )
    result = run(["cookies", "import", "--browser", "firefox"], isolated)
    assert result.returncode == 2
    assert_one_line_error(
        result.stderr, str(isolated.home / ".mozilla/firefox/profiles.ini"), "--profile"
    )
    nowhere = isolated.root / "nowhere"
    args = ["cookies", "import", "--browser", "firefox", "--profile", str(nowhere)]
    result = run(args, isolated)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, f"no firefox profile at {nowhere}")
    empty = isolated.root / "empty"
    empty.mkdir()
    result = run(["cookies", "import", "--browser", "chromium", "--profile", str(empty)], isolated)
    assert result.returncode == 2
    assert_one_line_error(
        result.stderr, "no chromium cookie database in", str(empty / "Default" / "Cookies")
    )


def test_unreadable_databases_are_one_line(isolated: Isolated) -> None:
    garbage = isolated.root / "garbage" / "cookies.sqlite"
    garbage.parent.mkdir()
    garbage.write_bytes(b"this is no database\n" * 20)
    args = ["cookies", "import", "--browser", "firefox", "--profile", str(garbage)]
    result = run(args, isolated)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "is not a cookie database")
    other = isolated.root / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    result = run(["cookies", "import", "--browser", "firefox", "--profile", str(other)], isolated)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "is not a firefox cookie database", "moz_cookies")


def test_nothing_for_the_domain_is_one_line(isolated: Isolated) -> None:
    profile = isolated.root / "ff"
    make_firefox_db(profile / "cookies.sqlite", FIREFOX_COOKIES)
    args = ["cookies", "import", "--browser", "firefox", "--profile", str(profile)]
    result = run([*args, "--domain", "nothing.example"], isolated)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "firefox has no cookies for nothing.example", "sign in")
    assert stored(isolated) == {}


@needs_cryptography
def test_missing_cryptography_says_what_to_install(isolated: Isolated) -> None:
    database = make_chrome_db(
        isolated.root / "chrome" / "Default" / "Cookies",
        [("chat-gpt.org", "cf_clearance", chrome_encrypt_cbc("chat-gpt.org", "x"))],
    )
    shadow = isolated.root / "shadow" / "cryptography"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    args = ["cookies", "import", "--browser", "chrome", "--profile", str(database)]
    result = run_binary(args, isolated, env={"PYTHONPATH": str(shadow.parent)})
    assert result.returncode == 2
    assert_one_line_error(
        result.stderr, "needs the cryptography package", "pip install 'chatcli-shell[browser]'"
    )


def test_file_and_browser_are_exclusive(isolated: Isolated) -> None:
    export = isolated.root / "cookies.txt"
    export.write_text("# Netscape HTTP Cookie File\n")
    for args, fragment in (
        ([str(export), "--browser", "firefox"], "either FILE or --browser NAME"),
        (["--profile", str(isolated.root)], "--profile goes with --browser"),
        ([], "give a FILE to import"),
    ):
        result = run(["cookies", "import", *args], isolated)
        assert result.returncode == 2, args
        assert_one_line_error(result.stderr, fragment)


def test_help_lists_every_browser_chatcli_reads() -> None:
    from chatcli.cli import BROWSER_HELP

    assert BROWSER_HELP.split(", ") == list(BROWSER_NAMES)


def test_the_names_are_those_of_the_browser_table() -> None:
    assert tuple(BROWSERS) == BROWSER_NAMES


def test_config_checks_the_names_without_loading_the_importer(isolated: Isolated) -> None:
    # chatcli.browser.names alone: not the importer, nor (through it) chatcli.store, which
    # imports chatcli.config (the cycle there was).
    config = isolated.write_config('[cookies]\nfrom_browser = "firefox"\n')
    code = (
        "import sys; from pathlib import Path; from chatcli.config import read_config_file; "
        f"read_config_file(Path({str(config)!r})); "
        "ours = ('chatcli.browser', 'chatcli.store'); "
        "print(sorted(m for m in sys.modules if m.startswith(ours)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=isolated.env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['chatcli.browser', 'chatcli.browser.names']"


def test_the_importer_never_reads_the_process_environment() -> None:
    # The environment and the cache dir are passed in (env=, cache_dir=): see read_cookies.
    import chatcli.browser

    for source in Path(chatcli.browser.__file__).parent.glob("*.py"):
        text = source.read_text(encoding="utf-8")
        assert "os.environ" not in text and "getenv" not in text, source.name


# -- the config opt-in ----------------------------------------------------------------------------


def test_from_browser_opt_in_reads_saves_and_says_so(isolated: Isolated) -> None:
    profile = isolated.root / "ff"
    make_firefox_db(profile / "cookies.sqlite", FIREFOX_COOKIES)
    isolated.write_config(f'[cookies]\nfrom_browser = "firefox"\nprofile = "{profile}"\n')
    before = snapshot(profile)
    fake = FakeAichat()
    fake.required_cookies = {"cf_clearance": "ff-clear", "session": "ff-session"}
    with fake.serve():
        first = run(ask_aichat(fake), isolated)
        assert first.returncode == 0, first.stderr
        assert first.stderr == (
            "chatcli: read 2 cookie(s) for chat-gpt.org from firefox "
            "(cookies.from_browser in config.toml)\n"
        )
        assert stored(isolated) == FIREFOX_EXPECTED
        again = run(ask_aichat(fake), isolated)  # stored now: the browser is not read again
    assert again.returncode == 0 and again.stderr == ""
    assert [r.cookies for r in fake.requests] == [fake.required_cookies] * 2
    assert snapshot(profile) == before


def test_from_browser_opt_in_refreshes_expired_cookies(isolated: Isolated) -> None:
    profile = isolated.root / "ff"
    make_firefox_db(profile / "cookies.sqlite", FIREFOX_COOKIES)
    isolated.write_config(f'[cookies]\nfrom_browser = "firefox"\nprofile = "{profile}"\n')
    cookie_file = isolated.chatcli_home / "data" / "cookies.json"
    cookie_file.parent.mkdir(parents=True, exist_ok=True)
    old = {"domain": "chat-gpt.org", "path": "/", "secure": False, "http_only": False}
    cookie_file.write_text(
        json.dumps(
            {
                "version": 1,
                "cookies": [
                    {**old, "name": "session", "value": "still-valid", "expires": None},
                    {**old, "name": "cf_clearance", "value": "stale", "expires": time.time() - 5},
                ],
            }
        )
    )
    fake = FakeAichat()
    fake.required_cookies = {"cf_clearance": "ff-clear", "session": "ff-session"}
    with fake.serve():
        result = run(ask_aichat(fake), isolated)
    assert result.returncode == 0, result.stderr
    assert "read 2 cookie(s) for chat-gpt.org from firefox" in result.stderr
    assert [r.cookies for r in fake.requests] == [fake.required_cookies]
    assert stored(isolated) == FIREFOX_EXPECTED


def test_a_failed_refresh_warns_once_and_is_not_tried_again(isolated: Isolated) -> None:
    profile = isolated.root / "ff-empty"
    make_firefox_db(profile / "cookies.sqlite", [FirefoxCookie("example.com", "a", "b")])
    isolated.write_config(f'[cookies]\nfrom_browser = "firefox"\nprofile = "{profile}"\n')
    store = Stores(isolated.chatcli_home / "data").cookies
    store.save([Cookie("chat-gpt.org", "session", "valid"), Cookie("chat-gpt.org", "cf", "x")])
    cookie_file = isolated.chatcli_home / "data" / "cookies.json"
    data = json.loads(cookie_file.read_text())
    for row in data["cookies"]:
        if row["name"] == "cf":
            row["expires"] = time.time() - 5  # expired since it was stored
    cookie_file.write_text(json.dumps(data))
    fake = FakeAichat()
    fake.required_cookies = {"session": "valid"}
    with fake.serve():
        fake.faults.set("503", "/api/text")  # so that the request is retried
        first = run([*ask_aichat(fake)[:-1], "--retries", "2", "hi"], isolated)
        again = run([*ask_aichat(fake)[:-1], "--retries", "0", "hi"], isolated)
    assert first.returncode == 1
    assert first.stderr.count("could not refresh expired cookies from firefox") == 1
    assert "could not refresh" not in again.stderr  # the expired cookie is gone: no new read
    assert stored(isolated) == {("chat-gpt.org", "session"): "valid"}


def test_without_the_opt_in_aichat_names_both_ways_to_get_cookies(isolated: Isolated) -> None:
    make_firefox_db(
        isolated.home / ".mozilla" / "firefox" / "p" / "cookies.sqlite", FIREFOX_COOKIES
    )
    fake = FakeAichat()
    with fake.serve():
        result = run(ask_aichat(fake), isolated)
    assert result.returncode == 1
    assert_one_line_error(
        result.stderr,
        "aichat: needs cookies for chat-gpt.org",
        "`chatcli cookies import --browser chrome`",
        "`chatcli cookies import FILE`",
    )
    assert fake.requests == [] and stored(isolated) == {}


def test_opt_in_that_cannot_read_is_one_line_before_any_request(isolated: Isolated) -> None:
    missing = isolated.root / "no-such-profile"
    isolated.write_config(f'[cookies]\nfrom_browser = "firefox"\nprofile = "{missing}"\n')
    fake = FakeAichat()
    with fake.serve():
        result = run(ask_aichat(fake), isolated)
    assert result.returncode == 1
    assert_one_line_error(
        result.stderr, "aichat: needs cookies", "cookies.from_browser", str(missing)
    )
    assert fake.requests == []


@pytest.mark.parametrize(
    ("table", "fragment"),
    [
        ('from_browsr = "chrome"', "unknown setting cookies.from_browsr"),
        ("from_browser = 1", "cookies.from_browser must be a string"),
        ('from_browser = "netscape"', "unknown browser 'netscape'"),
        ('profile = "/x"', "cookies.profile needs cookies.from_browser"),
    ],
)
def test_cookies_config_is_validated(isolated: Isolated, table: str, fragment: str) -> None:
    config = isolated.write_config(f"[cookies]\n{table}\n")
    result = run(["ask", "-p", "aichat", "hi"], isolated)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, str(config), fragment)


# -- decryption of the Chrome family's values, per platform (in-process) ---------------------------


def chrome_db(tmp_path: Path, host: str, encrypted: bytes, *, version: int = 24) -> Path:
    return make_chrome_db(
        tmp_path / "Default" / "Cookies", [(host, "c", encrypted)], version=version
    )


@needs_cryptography
@pytest.mark.parametrize("version", [23, 24])
def test_linux_v10_with_and_without_the_host_hash(tmp_path: Path, version: int) -> None:
    blob = chrome_encrypt_cbc(".chat-gpt.org", "värde", version=version)
    database = chrome_db(tmp_path, ".chat-gpt.org", blob, version=version)
    found = read_cookies(
        "chrome", ["chat-gpt.org"], env={}, cache_dir=None, profile=database, platform="linux"
    )
    assert [(c.domain, c.value, c.include_subdomains) for c in found.cookies] == [
        ("chat-gpt.org", "värde", True)
    ]


@needs_cryptography
def test_linux_v11_uses_the_keyring_password_then_falls_back() -> None:
    chrome = BROWSERS["chrome"]
    blob = chrome_encrypt_cbc("chat-gpt.org", "from-keyring", password=b"k3yr1ng", prefix=b"v11")
    keys = ChromiumKeys(chrome, platform="linux", version=24, env={}, keyring=lambda b: b"k3yr1ng")
    assert keys.decrypt("chat-gpt.org", blob) == "from-keyring"
    # No keyring item: the v10 key, then the empty password, as the browser does.
    for password in (b"peanuts", b""):
        blob = chrome_encrypt_cbc("h.org", "fallback", password=password, prefix=b"v11")
        keys = ChromiumKeys(chrome, platform="linux", version=24, env={}, keyring=lambda b: None)
        assert keys.decrypt("h.org", blob) == "fallback"
    blob = chrome_encrypt_cbc("h.org", "locked-away", password=b"other", prefix=b"v11")
    keys = ChromiumKeys(chrome, platform="linux", version=24, env={}, keyring=lambda b: None)
    with pytest.raises(
        UsageError, match=r"cannot decrypt chrome's cookies for h\.org.*Chrome Safe"
    ):
        keys.decrypt("h.org", blob)
    keys = ChromiumKeys(chrome, platform="linux", version=24, env={}, keyring=lambda b: b"wrong")
    with pytest.raises(UsageError, match="did not open them"):
        keys.decrypt("h.org", blob)


@needs_cryptography
def test_the_session_bus_is_looked_for_in_the_environment_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("secretstorage", reason="the Secret Service needs secretstorage")
    if shutil.which("kwallet-query"):
        pytest.skip("kwallet-query is installed: the keyring error does not name the bus")
    blob = chrome_encrypt_cbc("h.org", "x", password=b"other", prefix=b"v11")
    bus = {"DBUS_SESSION_BUS_ADDRESS": "unix:path=/nonexistent/bus"}
    chromium = BROWSERS["chromium"]
    # The process's environment says the opposite each time: only ``env`` counts.
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", bus["DBUS_SESSION_BUS_ADDRESS"])
    keys = ChromiumKeys(chromium, platform="linux", version=24, env={}, keyring=lambda b: None)
    with pytest.raises(UsageError, match="DBUS_SESSION_BUS_ADDRESS is not set"):
        keys.decrypt("h.org", blob)
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS")
    keys = ChromiumKeys(chromium, platform="linux", version=24, env=bus, keyring=lambda b: None)
    with pytest.raises(UsageError, match="is the keyring unlocked"):
        keys.decrypt("h.org", blob)


@needs_cryptography
def test_macos_uses_the_keychain_password_with_1003_iterations(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from chatcli.browser import Browser, decrypt

    asked: list[str] = []

    def keychain(b: Browser) -> bytes:
        asked.append(f"{b.keyring_macos} Safe Storage")
        return b"mac-secret"

    monkeypatch.setattr(decrypt, "_macos_keychain_password", keychain)
    blob = chrome_encrypt_cbc("chat-gpt.org", "mac", password=b"mac-secret", iterations=1003)
    keys = ChromiumKeys(BROWSERS["chrome"], platform="darwin", version=24, env={})
    assert keys.decrypt("chat-gpt.org", blob) == "mac"
    assert keys.decrypt("chat-gpt.org", blob) == "mac"
    assert asked == ["Chrome Safe Storage"]  # asked once per run


@needs_cryptography
def test_windows_aes_gcm_and_app_bound_values(monkeypatch: pytest.MonkeyPatch) -> None:
    key = bytes(range(32))
    keys = ChromiumKeys(BROWSERS["edge"], platform="win32", version=24, env={})
    monkeypatch.setattr(keys, "windows_key", lambda: key)
    assert keys.decrypt("chat-gpt.org", chrome_encrypt_gcm("chat-gpt.org", "win", key)) == "win"
    with pytest.raises(UsageError, match="cannot decrypt"):
        keys.decrypt("chat-gpt.org", chrome_encrypt_gcm("chat-gpt.org", "x", bytes(32)))
    with pytest.raises(UsageError, match=r"app-bound encryption \(v20\).*cookies import FILE"):
        keys.decrypt("chat-gpt.org", b"v20" + bytes(40))


def test_windows_profiles_are_looked_for_under_local_app_data(tmp_path: Path) -> None:
    env = {"LOCALAPPDATA": str(tmp_path / "Local"), "APPDATA": str(tmp_path / "Roaming")}
    with pytest.raises(UsageError) as caught:
        read_cookies("chrome", ["chat-gpt.org"], platform="win32", env=env, cache_dir=None)
    message = str(caught.value)
    assert str(tmp_path / "Local" / "Google" / "Chrome" / "User Data") in message
    profile = tmp_path / "Local" / "Google" / "Chrome" / "User Data" / "Profile 2"
    make_chrome_db(profile / "Network" / "Cookies", [("chat-gpt.org", "c", b"v20" + bytes(40))])
    (profile.parent / "Local State").write_text('{"profile": {"last_used": "Profile 2"}}')
    with pytest.raises(UsageError, match="app-bound encryption"):  # found: the last one used
        read_cookies("chrome", ["chat-gpt.org"], platform="win32", env=env, cache_dir=None)
