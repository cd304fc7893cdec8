"""Which browsers chatcli reads, where each keeps its profiles, and which cookie database to read.

The table of browsers (:data:`BROWSERS`), and for one of them the cookie database of the profile
asked for (or of the default profile): the Chrome family's ``Local State`` names the profile used
last, Firefox's ``profiles.ini`` the one its installation opens. The environment (``HOME``,
``XDG_CONFIG_HOME``, ``LOCALAPPDATA``, ``APPDATA``) is passed in, never read here.
"""

from __future__ import annotations

import configparser
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from chatcli.browser.names import BROWSER_NAMES
from chatcli.errors import UsageError


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

#: Every browser of :data:`~chatcli.browser.names.BROWSER_NAMES`, in that order (a test checks).
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


def find_browser(name: str) -> Browser:
    """The browser called ``name`` (any case); a one-line error listing the known ones."""
    browser = BROWSERS.get(name.strip().lower())
    if browser is None:
        raise UsageError(f"unknown browser {name!r}; known: {', '.join(BROWSER_NAMES)}")
    return browser


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


def chromium_database(
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


def firefox_database(
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
