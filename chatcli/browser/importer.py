"""Reading a browser's profile: find the cookie database, read it, decrypt its values.

:func:`read_cookies` and :func:`import_from_browser`, re-exported by :mod:`chatcli.browser`.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from chatcli.browser.copies import read_database
from chatcli.browser.decrypt import ChromiumKeys
from chatcli.browser.profiles import Browser, chromium_database, find_browser, firefox_database
from chatcli.browser.rows import chromium_rows, decrypted, firefox_rows
from chatcli.errors import UsageError
from chatcli.store.cookies import Cookie, CookieStore, normalise_domain

# The name the importer always logged under (debug lines show it).
log = logging.getLogger("chatcli.store")


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
    env: Mapping[str, str],
    cache_dir: Path | None,
    profile: str | Path | None = None,
    platform: str | None = None,
) -> BrowserCookies:
    """The unexpired cookies of ``domains`` (and their subdomains) in the browser's profile.

    ``profile`` is a profile directory, a browser's user-data or profiles.ini directory, or the
    cookie database itself; without it the browser's default profile is used. Finding none for
    any of the domains is an error that says where chatcli looked.

    ``env`` is the environment to run in: where the profiles are (``HOME``, ``XDG_CONFIG_HOME``,
    ``LOCALAPPDATA``, ``APPDATA``) and whether a desktop session bus can be asked for the
    keyring. ``cache_dir`` is chatcli's cache, where a locked database is copied to be read
    (``None``: the system's temporary directory).
    """
    browser = find_browser(name)
    platform = platform or sys.platform
    targets = [normalise_domain(d) for d in domains if normalise_domain(d)]
    if not targets:
        raise UsageError("no domain to read cookies for")
    try:
        if browser.engine == "firefox":
            database = firefox_database(browser, profile, platform, env)
        else:
            database, user_data = chromium_database(browser, profile, platform, env)
    except OSError as exc:  # a directory chatcli may not look into, say
        where = f" {exc.filename}" if exc.filename else ""
        raise UsageError(
            f"cannot look into{where} for the {browser.name} profile: {exc.strerror or exc}"
        ) from None
    if browser.engine == "firefox":
        found = read_database(
            database, browser, lambda db: firefox_rows(db, targets), cache_dir=cache_dir
        )
    else:
        version, rows = read_database(
            database, browser, lambda db: chromium_rows(db, targets), cache_dir=cache_dir
        )
        keys = ChromiumKeys(
            browser, platform=platform, version=version, env=env, user_data=user_data
        )
        found = [decrypted(row, keys) for row in rows]
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
    env: Mapping[str, str],
    cache_dir: Path | None,
    profile: str | Path | None = None,
) -> BrowserCookies:
    """:func:`read_cookies`, then save what was read in ``store``."""
    result = read_cookies(name, domains, env=env, cache_dir=cache_dir, profile=profile)
    store.save(result.cookies)
    log.debug(
        "read %d cookie(s) from %s (%s)", len(result.cookies), result.browser.name, result.database
    )
    return result
