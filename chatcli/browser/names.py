"""The names of the browsers chatcli reads cookies from, and nothing else.

A module with no chatcli import: :mod:`chatcli.config` checks ``[cookies] from_browser`` against
these names without loading the importer (nor making a cycle), and the CLI's ``--help`` text is
kept the same by a test. :data:`chatcli.browser.BROWSERS` has one entry per name, in this order
(a test keeps the two the same).
"""

from __future__ import annotations

from typing import Final

#: The names ``--browser`` and ``cookies.from_browser`` accept.
BROWSER_NAMES: Final = (
    "chrome",
    "chromium",
    "brave",
    "edge",
    "vivaldi",
    "opera",
    "firefox",
    "librewolf",
)
