"""MCP servers' tools, offered to the model like the built-in ones.

``config.toml`` names the servers (``[mcp.servers.NAME]``, read by :func:`server_configs`): a
command chatcli runs (messages over its stdin and stdout), or the URL of a server that speaks
MCP's streamable HTTP. :class:`McpServer` connects to one, lists its tools and wraps each in an
:class:`McpTool`, which satisfies :class:`chatcli.tools.Tool`.

The MCP SDK is an optional extra (``pip install 'chatcli-shell[mcp]'``) and takes most of a
second to import, so this module never imports it at import time: only :meth:`McpServer.start`
does, and only when a server is configured.

The SDK's context managers run anyio task groups, which must be entered and left by the same
task, while chatcli calls tools from whatever task is answering the question. So each
connection belongs to one background task (:meth:`McpServer._own`) that opens it, reports
that it is ready, waits to be told to close, and closes it; calls from other tasks only send
requests over it, which the SDK allows from any task.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Final, TextIO, cast

from chatcli.errors import ChatcliError, ConfigError, check_url, one_line
from chatcli.tools import NAME_PATTERN, ToolError, ToolResult, bounded

if TYPE_CHECKING:
    import anyio
    from mcp import ClientSession
    from mcp_types import CallToolResult
    from mcp_types import Tool as RemoteTool

log = logging.getLogger("chatcli.tools.mcp")

#: What a server config may say.
KEYS: Final = ("command", "args", "env", "url", "read_only", "timeout")
SERVER_NAME: Final = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
DEFAULT_TIMEOUT: Final = 60.0
#: A day: longer is surely a typo, and a call that long would look like a hang anyway.
MAX_TIMEOUT: Final = 86_400.0
#: The most tools one server may offer; more are ignored (a model could not choose among so
#: many, and a server that pages forever must not hang chatcli).
MAX_TOOLS: Final = 1000
#: The longest tool description passed on; the rest is cut (it costs tokens every turn).
MAX_DESCRIPTION: Final = 1024
#: How long :meth:`McpServer.close` waits for the connection to end before cancelling it. The
#: SDK's own stdio shutdown gives the server about 6.5 s at most (stdin closed, SIGTERM, SIGKILL).
CLOSE_TIMEOUT: Final = 10.0
#: The largest server-sent event read over HTTP. The SDK's default (1 MiB) fails a call whose
#: result is merely big instead of letting :func:`bounded` cut it; this still bounds memory.
MAX_SSE_EVENT: Final = 16 * 1024 * 1024

NO_SDK: Final = "MCP servers need the MCP SDK: pip install 'chatcli-shell[mcp]'"


@dataclass(frozen=True)
class ServerConfig:
    """One ``[mcp.servers.NAME]`` table: a command to run, or a URL to connect to."""

    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    #: Variables set for the command, over the few the SDK passes on (see :class:`McpServer`).
    env: Mapping[str, str] = field(default_factory=dict)
    url: str | None = None
    #: ``True``: every tool of the server only reads; a set: these tools (the server's names).
    #: The rest *act*, so chatcli asks before each call.
    read_only: bool | frozenset[str] = False
    #: Seconds for connecting, and for each call.
    timeout: float = DEFAULT_TIMEOUT

    def is_read_only(self, remote_name: str) -> bool:
        if isinstance(self.read_only, bool):
            return self.read_only
        return remote_name in self.read_only


def server_configs(table: Mapping[str, Any], where: str) -> dict[str, ServerConfig]:
    """The servers of ``config.toml``'s ``[mcp.servers]`` (``table``), checked.

    ``where`` (the config file) starts each message; a mistake raises :class:`ConfigError`
    naming the setting, such as ``config.toml: mcp.servers.files.timeout must be ...``.
    """
    configs = {}
    for name, value in table.items():
        if not isinstance(name, str) or not SERVER_NAME.match(name):
            raise ConfigError(
                f"{where}: mcp.servers.{name!r}: a server name is 1 to 32 letters, digits, "
                "'_' or '-'"
            )
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: mcp.servers.{name} must be a table")
        configs[name] = _server_config(name, value, f"{where}: mcp.servers.{name}")
    return configs


def _server_config(name: str, table: Mapping[str, Any], at: str) -> ServerConfig:
    for key in table:
        if key not in KEYS:
            raise ConfigError(f"{at}.{key}: unknown setting (known: {', '.join(KEYS)})")
    command, url = table.get("command"), table.get("url")
    if command is None and url is None:
        raise ConfigError(f"{at}.command: missing; give a command (a program to run) or a url")
    if command is not None and url is not None:
        raise ConfigError(f"{at}.url: give a command or a url, not both")
    if command is not None and (not isinstance(command, str) or not command.strip()):
        raise ConfigError(f"{at}.command must be a program to run (a string), not {command!r}")
    if url is not None:
        if not isinstance(url, str):
            raise ConfigError(f"{at}.url must be a string, not {url!r}")
        check_url(url, what=f"{at}.url", error=ConfigError)
        for key in ("args", "env"):
            if key in table:
                raise ConfigError(f"{at}.{key}: only a server run by a command takes {key}")
    args = table.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ConfigError(f"{at}.args must be a list of strings, not {args!r}")
    env = table.get("env", {})
    if not isinstance(env, Mapping) or not all(
        isinstance(k, str) and k and "=" not in k and isinstance(v, str) for k, v in env.items()
    ):
        raise ConfigError(f'{at}.env must be a table of strings like {{ KEY = "value" }}')
    read_only = table.get("read_only", False)
    if isinstance(read_only, list) and all(isinstance(t, str) for t in read_only):
        read_only = frozenset(read_only)
    elif not isinstance(read_only, bool):
        raise ConfigError(
            f"{at}.read_only must be true, false or a list of the server's tool names, "
            f"not {read_only!r}"
        )
    timeout = table.get("timeout", DEFAULT_TIMEOUT)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout <= MAX_TIMEOUT
    ):
        raise ConfigError(
            f"{at}.timeout must be seconds, above 0 and at most 86400, not {timeout!r}"
        )
    return ServerConfig(
        name=name,
        command=command,
        args=tuple(args),
        env=dict(env),
        url=url,
        read_only=read_only,
        timeout=float(timeout),
    )


def tool_name(server: str, remote_name: str, taken: set[str]) -> str:
    """The name the model calls ``server``'s tool ``remote_name`` by: ``SERVER__TOOL`` with
    what model APIs refuse (dots, spaces...) made ``_``, cut to 64 characters, and given a
    number when that name is in ``taken`` already. Adds it to ``taken``."""
    base = re.sub(r"[^A-Za-z0-9_-]", "_", f"{server}__{remote_name}")[:64]
    name, number = base, 1
    while name in taken:
        number += 1
        suffix = f"_{number}"
        name = base[: 64 - len(suffix)] + suffix
    assert NAME_PATTERN.match(name)
    taken.add(name)
    return name


def parameters_of(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A tool's input schema as model APIs take it: an object with ``properties`` (some
    servers leave them out when a tool takes no arguments, and some APIs then refuse it)."""
    parameters = dict(schema)
    parameters["type"] = "object"
    if not isinstance(parameters.get("properties"), Mapping):
        parameters["properties"] = {}
    return parameters


@dataclass(eq=False)
class McpTool:
    """One tool of an MCP server (a :class:`chatcli.tools.Tool`)."""

    name: str
    description: str
    parameters: Mapping[str, Any]
    acts: bool
    source: str
    #: The server's own name for the tool, which calls use.
    remote_name: str
    server: McpServer = field(repr=False)

    async def run(self, arguments: Mapping[str, Any]) -> ToolResult:
        return await self.server.call(self.remote_name, arguments)


class McpServer:
    """A connection to one MCP server, and its tools once :meth:`start` has connected.

    A server run by a command writes its stderr to ``errlog`` (a real file: the SDK hands it to
    the process), or to nowhere: never to the terminal, where it would mix with the answer
    (and could carry escape sequences). It gets only the variables the SDK passes on (``HOME``,
    ``LOGNAME``, ``PATH``, ``SHELL``, ``TERM``, ``USER``) plus ``env`` and then its config's
    ``env``: not chatcli's whole environment, which holds API keys.
    """

    def __init__(
        self,
        config: ServerConfig,
        *,
        errlog: IO[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.tools: list[McpTool] = []
        self._errlog = errlog
        self._env = dict(env or {})
        self._session: ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._scope: anyio.CancelScope | None = None
        self._ready = asyncio.Event()
        self._closing = asyncio.Event()
        #: Why connecting failed, or why the connection ended after it was ready.
        self._failure: str | None = None
        #: The first message the server sent that was not MCP (its text, or a parse error).
        self._garbage: str | None = None

    @property
    def name(self) -> str:
        return self.config.name

    def _error(self, why: str) -> str:
        return one_line(f"MCP server {self.name}: {why}")

    async def start(self) -> None:
        """Connect, initialize and list the tools, within the config's timeout.

        Raises :class:`ConfigError` when the SDK is not installed, and :class:`ChatcliError`
        (one line naming the server) when the server cannot be run, reached or understood.
        """
        if self._task is not None:
            raise RuntimeError(f"MCP server {self.name} was started already")
        _import_sdk()
        self._task = asyncio.create_task(self._own(), name=f"mcp-server-{self.name}")
        try:
            await self._ready.wait()
        except BaseException:
            await self.close()
            raise
        if self._session is None:
            await self.close()
            raise ChatcliError(self._error(self._failure or "the connection failed"))

    async def close(self) -> None:
        """End the connection (and the server's process); wait at most :data:`CLOSE_TIMEOUT`
        seconds for that, then cancel it. Safe to call twice, or after a failed start."""
        task = self._task
        if task is None:
            return
        self._closing.set()
        self._session = None
        if not self._ready.is_set() and self._scope is not None:
            self._scope.cancel()  # still connecting (start was cancelled): stop now
        try:
            await asyncio.wait_for(asyncio.shield(task), CLOSE_TIMEOUT)
        except TimeoutError:
            log.warning("MCP server %s did not close in time; cancelling", self.name)
            if self._scope is not None:
                self._scope.cancel()
            try:
                await asyncio.wait_for(asyncio.shield(task), 2)
            except TimeoutError:
                task.cancel()

    async def call(self, remote_name: str, arguments: Mapping[str, Any]) -> ToolResult:
        """Call the server's tool ``remote_name``: its result, bounded, or :class:`ToolError`
        (one line naming the server) when it timed out or the connection is gone."""
        from mcp.shared.exceptions import MCPError
        from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT

        session = self._session
        if session is None:
            raise ToolError(self._error(self._failure or "not connected"))
        timeout = self.config.timeout
        try:
            result = await session.call_tool(
                remote_name, dict(arguments), read_timeout_seconds=timeout
            )
        except MCPError as exc:
            if exc.code == REQUEST_TIMEOUT:
                raise ToolError(
                    self._error(f"{remote_name} did not answer within {timeout:g} s")
                ) from None
            if exc.code == CONNECTION_CLOSED and exc.message == "Connection closed":
                raise ToolError(self._error(self._failure or self._closed())) from None
            raise ToolError(
                self._error(f"{remote_name}: {exc.message} (error {exc.code})")
            ) from None
        except Exception as exc:  # closed streams, a malformed result, an output schema broken
            if self._session is None or self._failure:
                raise ToolError(self._error(self._failure or self._closed())) from None
            raise ToolError(self._error(f"{remote_name}: {_describe(exc)}")) from None
        return ToolResult(bounded(result_text(result)), result.is_error)

    def _closed(self) -> str:
        if self.config.command is not None:
            return "the connection is closed (did the server exit? its log may say why)"
        return "the connection is closed"

    async def _own(self) -> None:
        """The task the connection belongs to: opens it, lists the tools, sets ``_ready``,
        waits for ``_closing``, and closes it. Never raises: failures go to ``_failure``."""
        import anyio

        try:
            with anyio.CancelScope(deadline=anyio.current_time() + self.config.timeout) as scope:
                self._scope = scope
                if self._closing.is_set():  # closed before this task even ran
                    scope.cancel()
                async with AsyncExitStack() as stack:
                    session = await self._connect(stack)
                    await session.initialize()
                    self.tools = await self._list_tools(session)
                    scope.deadline = math.inf  # connected: the timeout is per call from now on
                    self._session = session
                    self._ready.set()
                    await self._closing.wait()
            if scope.cancelled_caught and not self._ready.is_set():
                why = f"no answer within {self.config.timeout:g} s"
                if self._garbage:
                    why += f"; it does not speak MCP (it wrote: {self._garbage})"
                self._failure = why
        except Exception as exc:
            log.debug("MCP server %s failed", self.name, exc_info=exc)
            why = self._why(_first_leaf(exc))
            self._failure = f"the connection broke: {why}" if self._ready.is_set() else why
        finally:
            self._session = None
            self._ready.set()

    async def _connect(self, stack: AsyncExitStack) -> ClientSession:
        from mcp import ClientSession

        config = self.config
        if config.url is not None:
            from mcp.client.streamable_http import streamable_http_client

            read, write = await stack.enter_async_context(
                streamable_http_client(config.url, max_sse_event_size=MAX_SSE_EVENT)
            )
        else:
            from mcp.client.stdio import (
                DEFAULT_INHERITED_ENV_VARS,
                StdioServerParameters,
                stdio_client,
            )

            assert config.command is not None
            # The few variables the SDK would pass on, but from the environment chatcli was
            # given (``env``), then the config's own.
            inherited = {
                key: value
                for key, value in self._env.items()
                if key in DEFAULT_INHERITED_ENV_VARS and not value.startswith("()")
            }
            params = StdioServerParameters(
                command=config.command, args=list(config.args), env={**inherited, **config.env}
            )
            errlog: TextIO
            if self._errlog is None:
                errlog = stack.enter_context(open(os.devnull, "w"))  # noqa: SIM115
            else:
                errlog = cast(TextIO, self._errlog)
            read, write = await stack.enter_async_context(stdio_client(params, errlog=errlog))
        return await stack.enter_async_context(
            ClientSession(read, write, message_handler=self._on_message)
        )

    async def _on_message(self, message: Any) -> None:
        """Notices the first thing the server sent that is not MCP (a server that prints a
        banner to stdout, or is no MCP server at all), to say so if connecting fails."""
        if isinstance(message, Exception) and self._garbage is None:
            self._garbage = _not_mcp(message)

    async def _list_tools(self, session: ClientSession) -> list[McpTool]:
        from mcp_types import PaginatedRequestParams

        remote: list[RemoteTool] = []
        cursor: str | None = None
        seen: set[str] = set()
        while True:
            params = PaginatedRequestParams(cursor=cursor) if cursor is not None else None
            page = await session.list_tools(params=params)
            remote.extend(page.tools)
            cursor = page.next_cursor
            if cursor is None or cursor in seen:
                break
            if len(remote) >= MAX_TOOLS:
                log.warning("MCP server %s has over %d tools; using those", self.name, MAX_TOOLS)
                break
            seen.add(cursor)
        taken: set[str] = set()
        return [self._tool(tool, taken) for tool in remote[:MAX_TOOLS]]

    def _tool(self, remote: RemoteTool, taken: set[str]) -> McpTool:
        return McpTool(
            name=tool_name(self.name, remote.name, taken),
            description=(remote.description or "")[:MAX_DESCRIPTION],
            parameters=parameters_of(remote.input_schema),
            acts=not self.config.is_read_only(remote.name),
            source=f"mcp:{self.name}",
            remote_name=remote.name,
            server=self,
        )

    def _why(self, exc: BaseException) -> str:
        """A failure to connect, said in a few words for a person."""
        from mcp.shared.exceptions import MCPError
        from mcp_types import CONNECTION_CLOSED

        config = self.config
        if isinstance(exc, FileNotFoundError) and config.command is not None:
            return f"command not found: {config.command}"
        if isinstance(exc, PermissionError) and config.command is not None:
            return f"cannot run {config.command}: permission denied"
        if isinstance(exc, OSError) and config.command is not None:
            return f"cannot run {config.command}: {exc.strerror or exc}"
        if isinstance(exc, MCPError):
            if exc.code == CONNECTION_CLOSED:
                why = "the connection closed before the server was ready"
                if config.command is not None:
                    why = "the server exited or closed its output before it was ready"
                if self._garbage:
                    why += f"; it does not speak MCP (it wrote: {self._garbage})"
                return why
            return f"the server answered: {exc.message} (error {exc.code})"
        if config.url is not None and _is_http_error(exc):
            return f"cannot connect to {config.url}: {_describe(exc)}"
        return _describe(exc)


def result_text(result: CallToolResult) -> str:
    """A call's result as text for the model: text blocks as they are, a note for each image,
    audio or binary resource (the model is not sent the bytes), and the structured content as
    JSON when there are no blocks at all."""
    from mcp_types import (
        AudioContent,
        BlobResourceContents,
        EmbeddedResource,
        ImageContent,
        ResourceLink,
        TextContent,
    )

    parts = []
    for block in result.content:
        if isinstance(block, TextContent):
            parts.append(block.text)
        elif isinstance(block, ImageContent | AudioContent):
            parts.append(f"[{block.type}: {block.mime_type}, {_decoded_size(block.data):,} bytes]")
        elif isinstance(block, EmbeddedResource):
            resource = block.resource
            if isinstance(resource, BlobResourceContents):
                kind = resource.mime_type or "binary"
                size = _decoded_size(resource.blob)
                parts.append(f"[resource {resource.uri}: {kind}, {size:,} bytes]")
            else:
                parts.append(resource.text)
        elif isinstance(block, ResourceLink):
            parts.append(f"[resource link: {block.name} {block.uri}]")
        else:  # a kind of block newer than this code
            parts.append(f"[{getattr(block, 'type', 'unknown')} content]")  # type: ignore[unreachable]
    if not parts and result.structured_content is not None:
        return json.dumps(result.structured_content, ensure_ascii=False, default=str)
    return "\n".join(parts)


def _decoded_size(data: str) -> int:
    """The bytes that base64 ``data`` holds, without decoding it."""
    length = len(data.strip().rstrip("="))
    return length * 3 // 4


def _import_sdk() -> None:
    try:
        import mcp  # noqa: F401
    except ImportError:
        raise ConfigError(NO_SDK) from None
    # The SDK logs a server's garbage with a traceback, and with no handler configured Python
    # prints that on stderr, in the middle of the answer. Libraries' records reach chatcli's
    # own handlers (--debug) still; only the last-resort printing stops. ("client" is the
    # SDK's session logger's name.)
    for name in ("mcp", "client", "httpx2"):
        logger = logging.getLogger(name)
        if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
            logger.addHandler(logging.NullHandler())


def _first_leaf(exc: BaseException) -> BaseException:
    """The first error inside nested exception groups (anyio's task groups wrap what failed
    in them), preferring a real error over the cancellations it caused."""
    while isinstance(exc, BaseExceptionGroup):
        inner = [e for e in exc.exceptions if not isinstance(e, asyncio.CancelledError)]
        exc = (inner or list(exc.exceptions))[0]
    return exc


def _is_http_error(exc: BaseException) -> bool:
    module = type(exc).__module__
    return module.startswith(("httpx", "httpcore")) or isinstance(exc, ConnectionError)


def _not_mcp(exc: Exception) -> str:
    """What the server sent that is not MCP: the line itself when the SDK's parse error
    holds it (quoted, so it stays one line), else the error's first words."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            sent = errors()[0].get("input")
        except Exception:  # not pydantic's errors() after all
            sent = None
        if isinstance(sent, str):
            return repr(sent[:100])
    return _describe(exc)[:200]


def _describe(exc: BaseException) -> str:
    return one_line(str(exc)) or type(exc).__name__
