"""Cookies read straight from a browser's profile: the Chrome family and Firefox.

``chatcli cookies import --browser NAME`` and the ``[cookies] from_browser`` opt-in read here.

**Read only.** The browser's files are never written: the cookie database is opened read-only,
or a private copy of it is read when the browser holds it locked or in WAL mode
(:mod:`chatcli.browser.copies`).

**Chrome and its relatives** (Chromium, Brave, Edge, Vivaldi, Opera) encrypt cookie values the
way each platform asks (:mod:`chatcli.browser.decrypt`); Firefox's are plain text and need only
the standard library.

The modules, by what they do: :mod:`~chatcli.browser.names` (the names alone, for the config
check), :mod:`~chatcli.browser.profiles` (the browsers, their profiles and cookie databases),
:mod:`~chatcli.browser.copies` (reading a database without writing to the profile),
:mod:`~chatcli.browser.rows` (the cookie tables), :mod:`~chatcli.browser.decrypt` (the keys) and
:mod:`~chatcli.browser.importer` (all of them together).

Nothing here reads the process's environment: the caller passes it (``env``), with chatcli's
cache directory (``cache_dir``, where a locked database is copied).

Errors are :class:`~chatcli.errors.UsageError`: one line, exit 2. Cookie values are never logged.

The names below load on first use: ``chatcli.config`` imports :mod:`chatcli.browser.names` to
check ``[cookies] from_browser``, and that must load neither the importer nor, through it,
``chatcli.store`` (which imports ``chatcli.config``: a cycle).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from chatcli.browser.names import BROWSER_NAMES

if TYPE_CHECKING:
    from chatcli.browser.decrypt import INSTALL_HINT, ChromiumKeys
    from chatcli.browser.importer import BrowserCookies, import_from_browser, read_cookies
    from chatcli.browser.profiles import BROWSERS, Browser, find_browser

__all__ = [
    "BROWSERS",
    "BROWSER_NAMES",
    "INSTALL_HINT",
    "Browser",
    "BrowserCookies",
    "ChromiumKeys",
    "find_browser",
    "import_from_browser",
    "read_cookies",
]

#: Where each name is defined (the submodule is imported when the name is first used).
_DEFINED_IN = {
    "BROWSERS": "profiles",
    "Browser": "profiles",
    "find_browser": "profiles",
    "INSTALL_HINT": "decrypt",
    "ChromiumKeys": "decrypt",
    "BrowserCookies": "importer",
    "import_from_browser": "importer",
    "read_cookies": "importer",
}


def __getattr__(name: str) -> object:
    module = _DEFINED_IN.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
