"""The cookie store, provider state and private files; the ``chatcli cookies`` commands."""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatcli.errors import UsageError
from chatcli.store import Cookie, Stores
from chatcli.store.cookies import import_cookies, mask, parse_json_cookies, parse_netscape_cookies
from chatcli.store.files import write_private
from tests.conftest import Isolated, run

FUTURE = int(time.time()) + 86_400
PAST = int(time.time()) - 60

NETSCAPE = (
    "# Netscape HTTP Cookie File\n"
    "# This is a generated file! Do not edit.\n\n"
    f".chat-gpt.org\tTRUE\t/\tTRUE\t{FUTURE}\tcf_clearance\tCLEARANCE-VALUE-123\n"
    f"#HttpOnly_chat-gpt.org\tFALSE\t/\tFALSE\t{FUTURE}\tsession\tSESSION-VALUE-456\n"
    f"chat-gpt.org\tFALSE\t/\tFALSE\t{PAST}\tstale\tOLD-VALUE\n"
    "example.com\tFALSE\t/\tFALSE\t0\tother\tOTHER-VALUE\n"
)

JSON_EXPORT = json.dumps(
    [
        {
            "domain": ".chat-gpt.org",
            "name": "cf_clearance",
            "value": "CLEARANCE-VALUE-123",
            "path": "/",
            "expirationDate": FUTURE + 0.5,
            "hostOnly": False,
            "httpOnly": True,
            "secure": True,
            "session": False,
        },
        {
            "domain": "chat-gpt.org",
            "name": "session",
            "value": "SESSION-VALUE-456",
            "session": True,
        },
        {"domain": "example.com", "name": "other", "value": "OTHER-VALUE", "expires": FUTURE},
    ]
)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- parsing -------------------------------------------------------------------------------------


def test_netscape_format() -> None:
    cookies = {c.name: c for c in parse_netscape_cookies(NETSCAPE)}
    assert set(cookies) == {"cf_clearance", "session", "stale", "other"}
    clearance = cookies["cf_clearance"]
    assert (clearance.domain, clearance.value, clearance.expires) == (
        "chat-gpt.org",
        "CLEARANCE-VALUE-123",
        FUTURE,
    )
    assert clearance.secure and clearance.include_subdomains and not clearance.http_only
    assert cookies["session"].http_only and not cookies["session"].include_subdomains
    assert cookies["stale"].expired() and cookies["other"].expires is None  # 0: a session cookie


def test_json_format() -> None:
    cookies = {c.name: c for c in parse_json_cookies(JSON_EXPORT)}
    assert cookies["cf_clearance"].domain == "chat-gpt.org"
    assert cookies["cf_clearance"].expires == FUTURE + 0.5 and cookies["cf_clearance"].http_only
    assert cookies["session"].expires is None
    assert cookies["other"].expires == FUTURE
    wrapped = parse_json_cookies(json.dumps({"cookies": json.loads(JSON_EXPORT)}))
    assert len(wrapped) == 3


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("chat-gpt.org\tTRUE\t/\n", "line 1: expected 7 tab-separated fields"),
        ("# c\nchat-gpt.org\tTRUE\t/\tFALSE\tsoon\ta\tb\n", "line 2: expiry 'soon'"),
    ],
)
def test_bad_netscape_lines_are_named(text: str, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        parse_netscape_cookies(text)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[{", "not valid JSON"),
        ('{"a": 1}', "expected a list"),
        ('[{"domain": "x", "name": "n"}]', "item 0: missing or non-text value"),
        ('[{"domain": "x", "name": "n", "value": "v", "expires": "later"}]', "expiry 'later'"),
    ],
)
def test_bad_json_exports_are_named(text: str, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        parse_json_cookies(text)


# -- the store -----------------------------------------------------------------------------------


def test_import_filters_domain_skips_expired_and_matches_subdomains(tmp_path: Path) -> None:
    stores = Stores(tmp_path / "data")
    source = tmp_path / "cookies.txt"
    source.write_text(NETSCAPE)
    saved, expired = import_cookies(stores.cookies, source, domain="chat-gpt.org")
    assert ({c.name for c in saved}, expired) == ({"cf_clearance", "session"}, 1)
    assert stores.cookies.for_domain("chat-gpt.org") == {
        "cf_clearance": "CLEARANCE-VALUE-123",
        "session": "SESSION-VALUE-456",
    }
    # The dotted cookie reaches subdomains; the host-only one does not.
    assert stores.cookies.for_domain("www.chat-gpt.org") == {"cf_clearance": "CLEARANCE-VALUE-123"}
    assert stores.cookies.for_domain("example.com") == {}


def test_expired_cookies_are_never_handed_out(tmp_path: Path) -> None:
    stores = Stores(tmp_path)
    stores.cookies.save([Cookie("chat-gpt.org", "soon", "v", expires=time.time() + 3600)])
    assert stores.cookies.for_domain("chat-gpt.org") == {"soon": "v"}
    assert stores.cookies.for_domain("chat-gpt.org", now=time.time() + 7200) == {}


def test_save_replaces_by_name_and_clear_by_domain(tmp_path: Path) -> None:
    cookies = Stores(tmp_path).cookies
    cookies.save([Cookie("a.org", "n", "1"), Cookie("b.org", "n", "2")])
    cookies.save([Cookie("a.org", "n", "3")])
    assert cookies.for_domain("a.org") == {"n": "3"}
    assert cookies.clear("a.org") == 1
    assert [c.domain for c in cookies.all()] == ["b.org"]
    assert cookies.clear() == 1 and cookies.all() == []


def test_files_are_private_even_under_a_permissive_umask(
    tmp_path: Path, permissive_umask: None
) -> None:
    stores = Stores(tmp_path / "data")
    stores.cookies.save([Cookie("a.org", "n", "v")])
    stores.state("gptalk").save({"token": "t"})
    assert mode(stores.cookies.path) == 0o600
    assert mode(stores.state("gptalk").path) == 0o600
    assert mode(tmp_path / "data") == 0o700
    assert mode(tmp_path / "data" / "providers") == 0o700


def test_writes_are_atomic_and_leave_no_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "file.json"
    write_private(target, b"one")
    write_private(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["file.json"]


def test_a_corrupt_cookie_file_is_moved_aside_not_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stores = Stores(tmp_path)
    stores.cookies.path.write_text('{"version": 1, "cookies": [ broken')
    assert stores.cookies.for_domain("a.org") == {}
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("cookies.json.corrupt-")]
    assert len(aside) == 1 and aside[0].read_text().endswith("broken")
    assert "moved it to" in caplog.text
    stores.cookies.save([Cookie("a.org", "n", "v")])  # and chatcli carries on
    assert stores.cookies.for_domain("a.org") == {"n": "v"}


def test_a_corrupt_state_file_starts_afresh(tmp_path: Path) -> None:
    state = Stores(tmp_path).state("fakegpt")
    state.path.parent.mkdir(parents=True)
    state.path.write_text("not json")
    assert state.load() == {}
    assert any(p.name.startswith("fakegpt.json.corrupt-") for p in state.path.parent.iterdir())


def test_stores_are_given_what_they_need_and_read_nothing(tmp_path: Path) -> None:
    import io

    from chatcli.config import Paths, browser_opt_in, load_settings
    from chatcli.context import AppContext

    paths = Paths.from_env({"CHATCLI_HOME": str(tmp_path)})
    paths.config_dir.mkdir(parents=True)
    paths.config_file.write_text('[cookies]\nfrom_browser = "Firefox"\nprofile = "~/ff"\n')
    # The opt-in is read with the settings, once; Stores never reads config.toml itself.
    assert Stores.at(paths).browser_source() is None
    settings = load_settings(paths, {})
    assert (settings.cookies_browser, settings.cookies_profile) == ("Firefox", "~/ff")
    env = {"HOME": str(tmp_path / "home")}
    stores = Stores.at(paths, env=env, browser=browser_opt_in(settings))
    assert stores.browser_source() == ("Firefox", "~/ff")
    assert (stores.data_dir, stores.cache_dir, stores.env) == (paths.data_dir, paths.cache_dir, env)
    ctx = AppContext(
        stdin=None,
        stdout=io.StringIO(),
        stderr=io.StringIO(),
        stdin_isatty=False,
        stdout_isatty=False,
        stderr_isatty=False,
        env=env,
        paths=paths,
    )
    from_ctx = Stores.for_context(ctx)
    assert (from_ctx.env, from_ctx.browser_source()) == (env, ("Firefox", "~/ff"))
    paths.config_file.write_text("[cookies]\n")
    assert browser_opt_in(load_settings(paths, {})) is None


def test_mask_shows_only_the_length() -> None:
    assert mask("SECRET") == "<6 chars>" and mask("x") == "<1 char>" and mask("") == "<empty>"


# -- the commands --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text"), [("cookies.txt", NETSCAPE), ("cookies.json", JSON_EXPORT)]
)
def test_cookies_commands(isolated: Isolated, name: str, text: str) -> None:
    source = isolated.root / name
    source.write_text(text)
    imported = run(["cookies", "import", str(source), "--domain", "chat-gpt.org"], isolated)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout == ""
    assert "imported 2 cookie(s) for chat-gpt.org" in imported.stderr
    store = isolated.chatcli_home / "data" / "cookies.json"
    assert mode(store) == 0o600

    listed = run(["cookies", "list"], isolated)
    assert listed.returncode == 0
    lines = sorted(listed.stdout.splitlines())
    assert len(lines) == 2 and all(line.startswith("chat-gpt.org\t") for line in lines)
    assert "<19 chars>" in listed.stdout
    as_json = json.loads(run(["cookies", "list", "--json"], isolated).stdout)
    assert {row["name"] for row in as_json} == {"cf_clearance", "session"}
    everything = listed.stdout + listed.stderr + json.dumps(as_json) + imported.stderr
    for secret in ("CLEARANCE-VALUE-123", "SESSION-VALUE-456"):
        assert secret not in everything

    cleared = run(["cookies", "clear", "chat-gpt.org"], isolated)
    assert "removed 2 cookie(s) for chat-gpt.org" in cleared.stderr
    assert json.loads(run(["cookies", "list", "--json"], isolated).stdout) == []


def test_cookie_import_errors_are_one_line_exit_2(isolated: Isolated) -> None:
    missing = run(["cookies", "import", str(isolated.root / "nope.txt")], isolated)
    assert missing.returncode == 2 and missing.stderr.startswith("chatcli: no such file")
    bad = isolated.root / "bad.txt"
    bad.write_text("chat-gpt.org\tTRUE\n")
    broken = run(["cookies", "import", str(bad)], isolated)
    assert broken.returncode == 2 and "line 1" in broken.stderr
    assert len(broken.stderr.splitlines()) == 1


def test_a_malformed_row_costs_only_itself(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stores = Stores(tmp_path)
    good = {"domain": "a.org", "name": "ok", "value": "v", "expires": FUTURE}
    rows = [
        good,
        {"domain": "a.org", "name": "bad", "value": "v", "expires": "tomorrow"},
        {"domain": 5, "name": "n", "value": "v"},
        {"domain": "a.org", "name": "extra", "value": "v", "hostOnly": True},
        "not a row",
    ]
    stores.cookies.path.write_text(json.dumps({"version": 1, "cookies": rows}))
    assert stores.cookies.for_domain("a.org") == {"ok": "v", "extra": "v"}
    assert caplog.text.count("skipped malformed entry") == 3
    assert stores.cookies.path.exists()  # not moved aside for a few bad rows


def test_deleted_cookies_leave_the_store(tmp_path: Path) -> None:
    import aiohttp
    from yarl import URL

    from chatcli.providers.chatgptt import ChatGptt

    stores = Stores(tmp_path)
    stores.cookies.save([Cookie("chatgptt.me", "keep", "1"), Cookie("chatgptt.me", "gone", "2")])
    start = stores.cookies.for_domain("chatgptt.me")

    async def session() -> None:
        jar = aiohttp.CookieJar(unsafe=True)
        jar.update_cookies(start, response_url=URL("http://localhost:1"))
        # The site answered: Set-Cookie gone=; Max-Age=0 and a new one.
        jar.update_cookies({"gone": ""}, response_url=URL("http://localhost:1"))
        jar.clear(lambda morsel: morsel.key == "gone")
        jar.update_cookies({"fresh": "3"}, response_url=URL("http://localhost:1"))
        ChatGptt.save_cookies(stores, jar, unchanged=start)

    import asyncio

    asyncio.run(session())
    assert stores.cookies.for_domain("chatgptt.me") == {"keep": "1", "fresh": "3"}


WRITER = """
import sys
from pathlib import Path
from chatcli.store import Cookie, Stores

stores = Stores(Path(sys.argv[1]))
for i in range(100):
    stores.cookies.save([Cookie(f"{sys.argv[2]}.org", f"n{i}", "v")])
"""


def test_two_processes_saving_cookies_lose_nothing(tmp_path: Path) -> None:
    import subprocess
    import sys

    processes = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), tag], stderr=subprocess.PIPE)
        for tag in ("a", "b")
    ]
    for process in processes:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
    cookies = Stores(tmp_path).cookies.all()
    assert len(cookies) == 200


def test_two_quarantines_in_one_second_keep_both(tmp_path: Path) -> None:
    stores = Stores(tmp_path)
    for content in ("first-broken", "second-broken"):
        stores.cookies.path.write_text(content)
        assert stores.cookies.all() == []
    kept = sorted(p.read_text() for p in tmp_path.glob("cookies.json.corrupt-*"))
    assert kept == ["first-broken", "second-broken"]
