"""Where chatcli keeps things, and the settings it runs with.

Settings come from, lowest first: built-in defaults < ``config.toml`` < environment < flags. The
first three are merged here into :class:`Settings`; flags are applied by the command that takes
them. Nothing here runs at import time.

``config.toml`` (in the config dir; see ``chatcli paths``)::

    provider = "ollama"          # the default provider (CHATCLI_PROVIDER overrides)
    model = "llama3.2"           # the default model (CHATCLI_MODEL overrides)
    system = "Be brief."         # a default system prompt
    temperature = 0.7
    timeout = 60                 # seconds to connect and of silence while reading
    proxy = "socks5://127.0.0.1:1080"
    retries = 2                  # retries of a failure before any text (0-10)
    fallback = ["ollama"]        # providers to try next when the chosen one fails

    [providers.mybox]            # a new OpenAI-compatible provider
    type = "openai"
    base_url = "http://host:8000/v1"
    api_key_env = "MYBOX_KEY"    # the variable holding its key (keys never live in this file)
    model = "qwen2.5"

    [providers.ollama]           # settings for a built-in provider
    model = "llama3.2"

    [providers.local]            # the offline model
    state_cache_mib = 1024       # its state cache's size cap (0: off)
    reread = true                # read each answer again on a spare CPU as it comes

    [cookies]                    # opt-in: read missing cookies from this browser
    from_browser = "chrome"
    profile = "~/.config/google-chrome/Profile 1"   # optional: another profile
"""

from __future__ import annotations

import math
import os
import re
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from chatcli.errors import ConfigError, check_url
from chatcli.tools.setup import ToolSettings, tool_settings

APP_NAME: Final = "chatcli"

#: The largest config.toml read (a config file is a few hundred bytes; this is far beyond any).
MAX_CONFIG_BYTES: Final = 1024 * 1024
#: Longest ``timeout`` in config.toml, in seconds (a day of silence).
MAX_TIMEOUT: Final = 86_400.0
#: Shortest ``timeout``, as ``--timeout`` takes it.
MIN_TIMEOUT: Final = 0.001
#: The sampling temperatures chatcli sends, as ``--temperature`` takes them.
TEMPERATURE_RANGE: Final = (0.0, 2.0)

#: The proxy URL schemes chatcli speaks (``--proxy``, ``proxy`` in config.toml).
PROXY_SCHEMES: Final = ("http", "https", "socks5", "socks5h", "socks4", "socks4a")

_TYPE_WORDS: Final[dict[type, str]] = {
    str: "a string",
    int: "a number",
    dict: "a table",
    list: "a list",
    bool: "true or false",
}

#: Keys allowed at the top of config.toml, with the type each must have.
_TOP_KEYS: Final[dict[str, tuple[type, ...]]] = {
    "provider": (str,),
    "model": (str,),
    "system": (str,),
    "temperature": (int, float),
    "timeout": (int, float),
    "proxy": (str,),
    "retries": (int,),
    # How a reasoning model's thinking shows on a terminal: show, collapse or hide.
    "reasoning": (str,),
    # The limits of -f context, in KiB: per file, and all items together.
    "max_file_kib": (int,),
    "max_context_kib": (int,),
    "fallback": (list,),
    "providers": (dict,),
    "cookies": (dict,),
    # Tools the model may call, and MCP servers (see chatcli.tools.setup).
    "tools": (dict,),
    "mcp": (dict,),
}
#: Keys allowed in a ``[providers.NAME]`` table.
_PROVIDER_KEYS: Final[dict[str, tuple[type, ...]]] = {
    "type": (str,),
    "base_url": (str,),
    "api_key_env": (str,),
    "model": (str,),
    # What its models' contexts hold, in tokens, when the service does not say.
    "context_length": (int,),
    # Prices per million tokens, per model: "gpt-4o-mini" = { input = 0.15, output = 0.6 }.
    "prices": (dict,),
    # The offline model's state cache, its size cap in MiB (providers.local only; 0: off).
    "state_cache_mib": (int,),
    # The offline model reads each answer again on a spare CPU as it comes (providers.local).
    "reread": (bool,),
}
#: The largest ``state_cache_mib`` (1 TiB: a guard against a typo).
MAX_STATE_CACHE_MIB: Final = 1024 * 1024
#: How a reasoning model's thinking shows on a terminal (``--reasoning``, ``reasoning``).
REASONING_MODES: Final = ("show", "collapse", "hide")
#: The longest context a provider may be said to have, in tokens (a guard against typos).
MAX_CONTEXT_LENGTH: Final = 100_000_000
#: The highest price per million tokens accepted (a guard against a misplaced decimal point).
MAX_PRICE: Final = 100_000.0
#: Keys allowed in the ``[cookies]`` table (``Settings.cookies_browser``/``cookies_profile``).
_COOKIES_KEYS: Final[dict[str, tuple[type, ...]]] = {
    "from_browser": (str,),
    "profile": (str,),
}


@dataclass(frozen=True, slots=True)
class Paths:
    """chatcli's directories. ``CHATCLI_HOME`` puts all four under one directory."""

    config_dir: Path
    data_dir: Path
    cache_dir: Path
    state_dir: Path

    @property
    def config_file(self) -> Path:
        return self.config_dir / "config.toml"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Paths:
        """The directories ``env`` names: ``CHATCLI_HOME``, else the platform's (on Linux and
        the BSDs the XDG variables, read from ``env`` like everything else)."""
        home = env.get("CHATCLI_HOME")
        if home:
            root = Path(home).expanduser()
            return cls(root / "config", root / "data", root / "cache", root / "state")
        platform: str = sys.platform  # (a variable: checked on every platform, not just this)
        if platform not in ("darwin", "win32"):
            return cls(
                _xdg(env, "XDG_CONFIG_HOME", ".config"),
                _xdg(env, "XDG_DATA_HOME", ".local/share"),
                _xdg(env, "XDG_CACHE_HOME", ".cache"),
                _xdg(env, "XDG_STATE_HOME", ".local/state"),
            )
        import platformdirs

        return cls(
            Path(platformdirs.user_config_dir(APP_NAME, appauthor=False)),
            Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)),
            Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False)),
            Path(platformdirs.user_state_dir(APP_NAME, appauthor=False)),
        )

    def as_dict(self) -> dict[str, str]:
        return {
            "config": str(self.config_dir),
            "config_file": str(self.config_file),
            "data": str(self.data_dir),
            "cache": str(self.cache_dir),
            "state": str(self.state_dir),
        }


def _xdg(env: Mapping[str, str], variable: str, default: str) -> Path:
    """``$variable/chatcli`` when it is an absolute path (the XDG rule), else ``~/default``."""
    value = env.get(variable, "").strip()
    if value and Path(value).is_absolute():
        return Path(value) / APP_NAME
    home = env.get("HOME", "").strip()
    base = Path(home) if home else Path.home()
    return base / default / APP_NAME


@dataclass(frozen=True, slots=True)
class Settings:
    """Defaults, config file and environment merged. ``None`` means "not set"."""

    provider: str | None = None
    model: str | None = None
    system: str | None = None
    temperature: float | None = None
    timeout: float | None = None
    proxy: str | None = None
    retries: int | None = None
    #: ``show``, ``collapse`` or ``hide`` (``--reasoning`` wins).
    reasoning: str | None = None
    #: ``-f`` limits in bytes (``None``: the built-in ones).
    max_file: int | None = None
    max_context: int | None = None
    #: Providers to try after the chosen one fails before any text.
    fallback: tuple[str, ...] = ()
    #: ``[providers.NAME]`` tables, validated.
    providers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: Where the file settings came from (for messages), if a file was read.
    source: Path | None = None
    #: The environment snapshot this run was started with: whatever needs a variable (a key,
    #: ``*_PROXY``, ``OPENAI_BASE_URL``) reads it here, never from the process.
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: ``[cookies] from_browser`` and ``profile``: the opt-in to read missing cookies from a
    #: browser (see :func:`browser_opt_in`). Without ``from_browser`` no browser is ever read.
    cookies_browser: str | None = None
    cookies_profile: str | None = None
    #: ``[tools]`` and ``[mcp.servers.*]``, checked.
    tools: ToolSettings = field(default_factory=lambda: _no_tools())

    def model_for(self, provider: str) -> str | None:
        """The configured ``model`` when it is ``provider``'s: the top-level default model
        belongs to the default provider (or to any, when none is configured)."""
        default_provider = (self.provider or "").strip().lower()
        return self.model if default_provider in ("", provider) else None


def _no_tools() -> ToolSettings:
    return ToolSettings()


def read_config_file(path: Path) -> dict[str, Any]:
    """The parsed config file, ``{}`` when it does not exist. Errors name the file and line.

    config.toml says where requests (and keys) go, so it is read only when no one else could
    have written it (see :func:`check_trusted`): the file, its directory, and, when it is a
    symbolic link (a dotfiles checkout), the real file's directory. Links are followed: this
    directory is the user's to arrange, and chatcli never writes in it.
    """
    data = read_toml_file(path)
    if data is None:
        return {}
    _validate(data, path)
    return data


def read_toml_file(path: Path) -> dict[str, Any] | None:
    """A TOML file of the config directory (config.toml, a template), read as
    :func:`read_config_file` says, not validated; ``None`` when it does not exist."""
    import tomllib

    raw = read_trusted_file(path)
    if raw is None:
        return None
    try:
        text = raw.decode("utf-8")
        return tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    except tomllib.TOMLDecodeError as exc:
        hint = _toml_hint(text, str(exc))
        raise ConfigError(f"{path}: {exc}{'; ' + hint if hint else ''}") from exc
    except RecursionError:
        raise ConfigError(f"{path}: arrays or tables nested too deeply") from None


#: A value TOML takes without quotes: a number, a date, a boolean, a string, an array, a table.
_TOML_VALUE: Final = re.compile(r"""[-+0-9"'\[{]|(true|false|inf|nan)\b""")


def _toml_hint(text: str, error: str) -> str:
    """What probably went wrong on the line a TOML error names, said as the fix; or ``""``.

    The common mistakes: a string without quotes (``model = llama3``), ``key: value``, a
    Windows path's backslashes in double quotes, a string not closed on its line, a key or a
    table given twice.
    """
    import json

    where = re.search(r"at line (\d+)", error)
    lines = text.splitlines()
    if where is None or not 0 < int(where.group(1)) <= len(lines):
        return ""
    line = lines[int(where.group(1)) - 1].strip()
    key, equals, value = (part.strip() for part in line.partition("="))
    if error.startswith("Expected '=' after a key"):
        return "write key = value"
    if error.startswith(("Cannot overwrite a value", "Cannot declare")):
        return "each key and each [table] may be given only once"
    if "hex value" in error or "escape" in error or "Unescaped" in error:
        return "a backslash in double quotes starts an escape: put a path in single quotes"
    if error.startswith("Illegal character '\\n'") and '"' in value:
        return "a string ends on its own line, with the quote it began with"
    if not equals or not value:
        return ""
    if _TOML_VALUE.match(value) is None:
        bare = value.split("#")[0].strip()
        return f"strings need quotes: {key} = {json.dumps(bare, ensure_ascii=False)}"
    if value.startswith("[") and value.endswith("]"):
        items = [item.strip() for item in value[1:-1].split(",") if item.strip()]
        if any(_TOML_VALUE.match(item) is None for item in items):
            quoted = ", ".join(
                item if _TOML_VALUE.match(item) else json.dumps(item, ensure_ascii=False)
                for item in items
            )
            return f"strings need quotes: {key} = [{quoted}]"
    return ""


def read_trusted_file(path: Path) -> bytes | None:
    """The bytes of a file of the config directory, read as :func:`read_config_file` says;
    ``None`` when it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return _read_trusted(fd, path)
    finally:
        os.close(fd)


def _read_trusted(fd: int, path: Path) -> bytes:
    """The bytes of the open config file ``fd`` once it has passed :func:`check_trusted`."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{path} is not a regular file")
    real = Path(os.path.realpath(path))
    check_trusted(real, st)
    for directory in dict.fromkeys((path.parent, real.parent)):
        check_trusted(directory, directory.stat())
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_CONFIG_BYTES:
        chunk = os.read(fd, MAX_CONFIG_BYTES + 1 - size)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
    raise ConfigError(
        f"{path} is larger than {MAX_CONFIG_BYTES // 2**20} MiB; a config file is a few lines"
    )


def check_trusted(path: Path, st: os.stat_result) -> None:
    """Refuse ``path`` (its status ``st``) when another user could have written it, as ssh does.

    A file or directory chatcli takes settings or credentials from must belong to the current
    user or to root, and must not be writable by its group or by others. The error (exit 2)
    names the file and the command that fixes it.
    """
    import shlex

    uid = os.getuid()
    shown = shlex.quote(str(path))
    if st.st_uid not in (uid, 0):
        sudo = "" if uid == 0 else "sudo "
        raise ConfigError(
            f"{path} belongs to another user (uid {st.st_uid}); delete it, or if you trust it "
            f"run: {sudo}chown {uid} {shown}"
        )
    loose = stat.S_IMODE(st.st_mode) & 0o022
    if loose:
        who = {0o020: "its group", 0o002: "others"}.get(loose, "its group and others")
        raise ConfigError(f"{path} is writable by {who}; run: chmod go-w {shown}")


def _validate(data: Mapping[str, Any], path: Path) -> None:
    for key, value in data.items():
        if key not in _TOP_KEYS:
            known = ", ".join(sorted(_TOP_KEYS))
            raise ConfigError(f"{path}: unknown setting {key!r} (known: {known})")
        _check_type(value, _TOP_KEYS[key], f"{path}: {key}")
    for name, table in data.get("providers", {}).items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: providers.{name} must be a table")
        for key, value in table.items():
            if key not in _PROVIDER_KEYS:
                known = ", ".join(sorted(_PROVIDER_KEYS))
                raise ConfigError(
                    f"{path}: unknown setting providers.{name}.{key} (known: {known})"
                )
            _check_type(value, _PROVIDER_KEYS[key], f"{path}: providers.{name}.{key}")
        where = f"{path}: providers.{name}"
        length = table.get("context_length")
        if length is not None and not 1 <= length <= MAX_CONTEXT_LENGTH:
            raise ConfigError(f"{where}.context_length must be 1 to {MAX_CONTEXT_LENGTH:,} tokens")
        for key in ("state_cache_mib", "reread"):
            if key in table and name.strip().lower() != "local":
                raise ConfigError(f"{where}.{key}: only providers.local has one")
        if not 0 <= table.get("state_cache_mib", 0) <= MAX_STATE_CACHE_MIB:
            raise ConfigError(
                f"{where}.state_cache_mib must be 0 (off) to {MAX_STATE_CACHE_MIB:,} MiB"
            )
        for model, price in table.get("prices", {}).items():
            _check_price(price, f"{where}.prices.{model}")
    cookies = data.get("cookies", {})
    for key, value in cookies.items():
        if key not in _COOKIES_KEYS:
            known = ", ".join(sorted(_COOKIES_KEYS))
            raise ConfigError(f"{path}: unknown setting cookies.{key} (known: {known})")
        _check_type(value, _COOKIES_KEYS[key], f"{path}: cookies.{key}")
    if "from_browser" in cookies:
        # The names alone: the importer itself loads only when a browser is read.
        from chatcli.browser.names import BROWSER_NAMES

        if cookies["from_browser"].strip().lower() not in BROWSER_NAMES:
            raise ConfigError(
                f"{path}: cookies.from_browser: unknown browser {cookies['from_browser']!r} "
                f"(known: {', '.join(BROWSER_NAMES)})"
            )
    elif "profile" in cookies:
        raise ConfigError(f"{path}: cookies.profile needs cookies.from_browser too")


#: The largest -f limit config.toml may set, in KiB (1 GiB: context beyond that is a mistake).
MAX_CONTEXT_KIB: Final = 1024 * 1024


def _kib_limit(data: Mapping[str, Any], key: str, path: Path) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if not 1 <= value <= MAX_CONTEXT_KIB:
        raise ConfigError(f"{path}: {key} must be 1 to {MAX_CONTEXT_KIB:,} (KiB)")
    return int(value) * 1024


def _check_price(price: Any, where: str) -> None:
    """``{ input = X, output = Y }``: dollars (or any currency) per million tokens."""
    if not isinstance(price, dict) or set(price) - {"input", "output"} or not price:
        raise ConfigError(f"{where} must be a table like {{ input = 0.15, output = 0.6 }}")
    for side, value in price.items():
        number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
        if number is None or not math.isfinite(number) or not 0 <= number <= MAX_PRICE:
            raise ConfigError(
                f"{where}.{side} must be a price per million tokens, 0 to {MAX_PRICE:,.0f}"
            )


def _check_type(value: Any, types: tuple[type, ...], where: str) -> None:
    # bool is an int subclass; a boolean is never a valid number here.
    if isinstance(value, bool) != (bool in types) or not isinstance(value, types):
        wanted = _TYPE_WORDS[types[0]]
        raise ConfigError(f"{where} must be {wanted}, not {value!r}")


def load_settings(paths: Paths, env: Mapping[str, str]) -> Settings:
    """Defaults < ``config.toml`` < ``CHATCLI_PROVIDER``/``CHATCLI_MODEL``."""
    data = read_config_file(paths.config_file)
    temperature = _number(data, "temperature", *TEMPERATURE_RANGE, paths.config_file, "a number")
    timeout = _number(
        data, "timeout", MIN_TIMEOUT, MAX_TIMEOUT, paths.config_file, "a positive number of seconds"
    )
    retries = data.get("retries")
    if retries is not None and not 0 <= retries <= 10:
        raise ConfigError(f"{paths.config_file}: retries must be between 0 and 10")
    reasoning = data.get("reasoning")
    if reasoning is not None and reasoning not in REASONING_MODES:
        raise ConfigError(
            f"{paths.config_file}: reasoning must be one of {', '.join(REASONING_MODES)}, "
            f"not {reasoning!r}"
        )
    fallback = data.get("fallback", [])
    if not all(isinstance(name, str) and name for name in fallback):
        raise ConfigError(f"{paths.config_file}: fallback must be a list of provider names")
    if data.get("proxy"):
        check_url(
            data["proxy"],
            what=f"{paths.config_file}: proxy",
            schemes=PROXY_SCHEMES,
            error=ConfigError,
        )
    # A provider and its model are one choice: CHATCLI_PROVIDER naming another provider than
    # config.toml's does not inherit the model config.toml chose for that one.
    provider = env.get("CHATCLI_PROVIDER") or data.get("provider")
    model = env.get("CHATCLI_MODEL") or data.get("model")
    configured = str(data.get("provider") or "").strip().lower()
    if not env.get("CHATCLI_MODEL") and str(provider or "").strip().lower() != configured:
        model = None
    return Settings(
        provider=provider,
        model=model,
        system=data.get("system"),
        temperature=temperature,
        timeout=timeout,
        proxy=data.get("proxy"),
        retries=retries,
        reasoning=reasoning,
        max_file=_kib_limit(data, "max_file_kib", paths.config_file),
        max_context=_kib_limit(data, "max_context_kib", paths.config_file),
        fallback=tuple(fallback),
        providers=data.get("providers", {}),
        source=paths.config_file if data else None,
        env=dict(env),
        cookies_browser=data.get("cookies", {}).get("from_browser"),
        cookies_profile=data.get("cookies", {}).get("profile"),
        tools=tool_settings(data, paths.config_file),
    )


def _number(
    data: Mapping[str, Any], key: str, low: float, high: float, path: Path, what: str
) -> float | None:
    """``data[key]`` as a float, when it is a finite number from ``low`` to ``high``.

    TOML has ``nan`` and ``inf``: ``timeout = nan`` would make every connection time out at
    once, so a number out of range is an error naming the file, not a value sent on.
    """
    value = data.get(key)
    if value is None:
        return None
    number = float(value)
    if not (math.isfinite(number) and low <= number <= high):
        raise ConfigError(f"{path}: {key} must be {what} ({low:g} to {high:g}), not {value!r}")
    return number


def browser_opt_in(settings: Settings) -> tuple[str, str | None] | None:
    """``(from_browser, profile)`` of config.toml's ``[cookies]`` when the user opted in to
    reading missing cookies from a browser; ``None``: chatcli never reads one on its own."""
    if not settings.cookies_browser:
        return None
    return settings.cookies_browser, settings.cookies_profile


def environment() -> dict[str, str]:
    """A snapshot of the process environment (the context keeps it; tests pass their own)."""
    return dict(os.environ)
