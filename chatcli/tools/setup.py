"""The tools chosen for a conversation (:class:`ToolSet`): the built-in ones by name and the
MCP servers, started on first use and stopped at the end, and the ``[tools]`` settings.

``config.toml``::

    [tools]
    enabled = ["read_file", "list_dir"]   # on for every question (built-ins or MCP servers)
    allow = ["run_shell"]                 # tools that act yet run without asking
    max_rounds = 10                       # rounds of tool calls one question may take
    paths = ["~/notes"]                   # the file tools may read here too
    shell_timeout = 60                    # seconds a run_shell command may take

    [mcp.servers.files]                   # an MCP server over stdio...
    command = "mcp-server-files"
    args = ["--root", "/srv/docs"]
    env = { LOG_LEVEL = "warning" }
    read_only = true                      # its tools only read: they run without asking

    [mcp.servers.search]                  # ...or over streamable HTTP
    url = "http://127.0.0.1:8931/mcp"
    read_only = ["lookup"]                # these of its tools only read
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

from chatcli.errors import ChatcliError, ConfigError, UsageError
from chatcli.tools import DEFAULT_MAX_ROUNDS, Consent, NoConsent, Tool, Toolbox

if TYPE_CHECKING:
    from chatcli.tools.mcp import McpServer, ServerConfig

log = logging.getLogger("chatcli.tools")

#: The most rounds ``[tools] max_rounds`` may allow (a guard against a typo).
MAX_ROUNDS_LIMIT: Final = 100
#: Keys of the ``[tools]`` table, with their types.
TOOLS_KEYS: Final[dict[str, tuple[type, ...]]] = {
    "enabled": (list,),
    "allow": (list,),
    "max_rounds": (int,),
    "paths": (list,),
    "shell_timeout": (int, float),
}


@dataclass(frozen=True, kw_only=True)
class ToolSettings:
    """``[tools]`` and ``[mcp.servers.*]`` of config.toml, checked."""

    enabled: tuple[str, ...] = ()
    allow: tuple[str, ...] = ()
    max_rounds: int = DEFAULT_MAX_ROUNDS
    paths: tuple[Path, ...] = ()
    shell_timeout: float = 60.0
    servers: Mapping[str, ServerConfig] = field(default_factory=dict)


def tool_settings(data: Mapping[str, Any], where: Path | str) -> ToolSettings:
    """The checked ``[tools]`` and ``[mcp]`` tables of a config file's ``data``."""
    table: Mapping[str, Any] = data.get("tools", {})
    for key, value in table.items():
        if key not in TOOLS_KEYS:
            known = ", ".join(TOOLS_KEYS)
            raise ConfigError(f"{where}: unknown setting tools.{key} (known: {known})")
        types = TOOLS_KEYS[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise ConfigError(f"{where}: tools.{key} has the wrong type ({value!r})")
        if isinstance(value, list) and not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{where}: tools.{key} must be a list of names")
    rounds = table.get("max_rounds", DEFAULT_MAX_ROUNDS)
    if not 1 <= rounds <= MAX_ROUNDS_LIMIT:
        raise ConfigError(f"{where}: tools.max_rounds must be 1 to {MAX_ROUNDS_LIMIT}")
    timeout = table.get("shell_timeout", 60.0)
    if not 0 < timeout <= 86_400:
        raise ConfigError(f"{where}: tools.shell_timeout must be 0 to 86400 seconds")
    mcp = data.get("mcp", {})
    unknown = set(mcp) - {"servers"}
    if unknown:
        raise ConfigError(f"{where}: unknown setting mcp.{sorted(unknown)[0]} (known: servers)")
    servers: dict[str, ServerConfig] = {}
    if "servers" in mcp:
        if not isinstance(mcp["servers"], dict):
            raise ConfigError(f"{where}: mcp.servers must be a table of servers")
        from chatcli.tools.builtin import BUILTIN
        from chatcli.tools.mcp import server_configs

        servers = server_configs(mcp["servers"], str(where))
        for name in servers:
            if name in BUILTIN:
                raise ConfigError(f"{where}: mcp.servers.{name}: {name} is a built-in tool's name")
    return ToolSettings(
        enabled=tuple(table.get("enabled", ())),
        allow=tuple(table.get("allow", ())),
        max_rounds=rounds,
        paths=tuple(Path(p).expanduser() for p in table.get("paths", ())),
        shell_timeout=float(timeout),
        servers=servers,
    )


class ToolSet:
    """The tools a conversation offers: built-in tools by name and MCP servers' tools.

    A server starts when a question first needs it, and runs until :meth:`aclose` (a REPL
    session keeps it for every question). What the user allowed with "always" lasts as long.
    """

    def __init__(
        self,
        settings: ToolSettings,
        *,
        cwd: Path,
        env: Mapping[str, str],
        consent: Consent | None = None,
        log_dir: Path | None = None,
        hidden: Iterable[str] = (),
    ) -> None:
        self.settings = settings
        self.cwd = cwd
        self.env = env
        #: What run_shell's commands get: the environment without the keys in it.
        self.shell_env = without_secrets(env, hidden)
        self.log_dir = log_dir
        #: The built-in tools and MCP servers on, in the order they were asked for.
        self.builtins: list[str] = []
        self.servers: list[str] = []
        self._running: dict[str, McpServer] = {}
        self._logs: list[IO[str]] = []
        self._box = Toolbox(
            consent=consent or NoConsent(),
            allowed=set(settings.allow),
            max_rounds=settings.max_rounds,
        )

    def __bool__(self) -> bool:
        return bool(self.builtins or self.servers)

    @property
    def allowed(self) -> set[str]:
        return self._box.allowed

    def enable(self, name: str) -> str:
        """Turn on the built-in tool or MCP server ``name``; returns ``tool`` or ``server``."""
        from chatcli.tools.builtin import BUILTIN

        if name in BUILTIN:
            if name not in self.builtins:
                self.builtins.append(name)
            return "tool"
        if name in self.settings.servers:
            if name not in self.servers:
                self.servers.append(name)
            return "server"
        known = [*BUILTIN, *self.settings.servers]
        raise UsageError(
            f"no tool or MCP server {name!r} (known: {', '.join(known)}; "
            "MCP servers are [mcp.servers.NAME] in config.toml)"
        )

    def disable(self, name: str) -> None:
        if name in self.builtins:
            self.builtins.remove(name)
        elif name in self.servers:
            self.servers.remove(name)
        else:
            raise UsageError(f"{name!r} is not on")

    async def toolbox(self) -> Toolbox:
        """The toolbox for the next question: servers not running yet are started."""
        from chatcli.tools.builtin import builtin_tools

        tools: list[Tool] = list(
            builtin_tools(
                self.builtins,
                cwd=self.cwd,
                roots=self.settings.paths,
                env=self.shell_env,
                shell_timeout=self.settings.shell_timeout,
            )
        )
        for name in self.servers:
            server = self._running.get(name)
            if server is None:
                server = await self._start(name)
            tools.extend(server.tools)
        seen: dict[str, str] = {}
        for tool in tools:  # (a model could not tell them apart, nor the allow list)
            if tool.name in seen:
                raise ConfigError(
                    f"two tools are called {tool.name} ({seen[tool.name]} and {tool.source}); "
                    "rename one of the MCP servers"
                )
            seen[tool.name] = tool.source
        self._box.tools = tools
        return self._box

    def check_allowed(self, names: Iterable[str]) -> None:
        """Refuse allow-list names that can be no tool's (a typo would allow nothing)."""
        from chatcli.tools.builtin import BUILTIN

        for name in names:
            server = name.partition("__")[0] if "__" in name else None
            if name not in BUILTIN and server not in self.settings.servers:
                raise UsageError(
                    f"--allow-tool {name}: no such tool (built-in: {', '.join(BUILTIN)}; an MCP "
                    "server's are SERVER__TOOL, as chatcli tools list shows)"
                )

    async def _start(self, name: str) -> McpServer:
        from chatcli.tools.mcp import McpServer

        server = McpServer(self.settings.servers[name], errlog=self._errlog(name), env=self.env)
        await server.start()
        self._running[name] = server
        return server

    def _errlog(self, name: str) -> IO[str]:
        """Where a stdio server's stderr goes: a private log file (never the terminal: the
        text is the server's), or nowhere when there is no place to keep one."""
        if self.log_dir is not None:
            from chatcli.store.files import private_dir

            try:
                private_dir(self.log_dir)
                path = self.log_dir / f"mcp-{name}.log"
                fd = os.open(
                    path,
                    os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0),
                    0o600,
                )
                stream = os.fdopen(fd, "w", encoding="utf-8", errors="replace")
                self._logs.append(stream)
                return stream
            except (OSError, ChatcliError) as exc:  # no place for it: no log, go on
                log.debug("no log for MCP server %s: %s", name, exc)
        stream = open(os.devnull, "w")  # noqa: SIM115 - closed in aclose
        self._logs.append(stream)
        return stream

    async def aclose(self) -> None:
        running, self._running = list(self._running.values()), {}
        for server in running:
            with contextlib.suppress(Exception):
                await server.close()
        for stream in self._logs:
            with contextlib.suppress(OSError):
                stream.close()
        self._logs = []

    def describe(self) -> list[str]:
        """One line per tool or server on, for ``/tools``."""
        from chatcli.tools.builtin import BUILTIN

        lines = []
        for name in self.builtins:
            mark = " (allowed)" if name in self.allowed else ""
            lines.append(f"{name}: {BUILTIN[name]}{mark}")
        for name in self.servers:
            server = self._running.get(name)
            count = f"{len(server.tools)} tools" if server is not None else "starts when asked"
            lines.append(f"{name}: MCP server ({count})")
        return lines


def toolset_for(
    settings: ToolSettings,
    *,
    tools: Iterable[str] = (),
    servers: Iterable[str] = (),
    allow: Iterable[str] = (),
    cwd: Path,
    env: Mapping[str, str],
    consent: Consent | None = None,
    log_dir: Path | None = None,
    use_config: bool = True,
    hidden: Iterable[str] = (),
) -> ToolSet:
    """The tool set of ``--tool``, ``--mcp`` and ``--allow-tool`` on top of ``[tools]``."""
    toolset = ToolSet(settings, cwd=cwd, env=env, consent=consent, log_dir=log_dir, hidden=hidden)
    names: Sequence[str] = [*(settings.enabled if use_config else ()), *tools]
    for name in names:
        toolset.enable(name)
    for name in servers:
        if name not in settings.servers:
            known = ", ".join(settings.servers) or "none is configured"
            raise UsageError(
                f"--mcp {name}: no such MCP server ([mcp.servers.NAME] in config.toml; {known})"
            )
        toolset.enable(name)
    toolset.check_allowed([*settings.allow, *allow])
    toolset.allowed.update(allow)
    return toolset


#: Variables whose names say they hold a secret (keys, tokens, passwords).
_SECRET_WORDS: Final = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "AUTH")


def without_secrets(env: Mapping[str, str], hidden: Iterable[str] = ()) -> dict[str, str]:
    """``env`` for a command the model wrote: without the variables that hold keys (every
    provider's ``*_API_KEY``, anything named like a token, password or agent socket, and
    ``hidden``: config.toml's ``api_key_env`` names) and proxies with a password in them.
    Their values would go to the model, and be kept in the session, with the output."""
    drop = set(hidden)
    kept = {}
    for name, value in env.items():
        upper = name.upper()
        if name in drop or any(word in upper for word in _SECRET_WORDS):
            continue
        if upper.endswith("_PROXY") and "@" in value:
            continue
        kept[name] = value
    return kept
