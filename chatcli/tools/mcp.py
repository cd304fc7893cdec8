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

What a server sends is read within :data:`MAX_MESSAGE` bytes a message, whatever the server
does. The SDK's stdio transport buffers a line however long it gets, so chatcli runs a command
with its own (:func:`_stdio`, the SDK's spawning and shutdown with a bounded reader); over
HTTP the SDK reads a JSON answer whole, so chatcli gives it a client whose answers are cut off
past the limit (:func:`_http_client`), and an event stream is bounded an event at a time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Final, TextIO, cast

from chatcli.errors import ChatcliError, ConfigError, check_url, one_line
from chatcli.tools import NAME_PATTERN, ToolError, ToolResult, bounded

if TYPE_CHECKING:
    import datetime

    import anyio
    import httpx2
    from anyio.abc import ByteReceiveStream, Process
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
    from mcp import ClientSession
    from mcp.shared.message import SessionMessage
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
#: stdio shutdown (the SDK's sequence) gives the server about 6.5 s at most: stdin closed, then
#: SIGTERM after :data:`EXIT_GRACE`, then SIGKILL after as long again.
CLOSE_TIMEOUT: Final = 10.0
#: The largest message read from a server, in bytes: a line of a command's output, the body of
#: an HTTP answer, one server-sent event. More fails the call (or the connection, over stdio)
#: with a message naming the limit, instead of taking memory without end. Results are cut to
#: ``MAX_RESULT`` characters for the model anyway; this is room for results that are merely
#: big (the SDK's own 1 MiB for an event would fail them), not a size anyone should send.
MAX_MESSAGE: Final = 16 * 1024 * 1024
#: Seconds a command's server has to exit once its stdin is closed, then again after SIGTERM
#: (the SDK's stdio transport waits as long).
EXIT_GRACE: Final = 2.0
#: Seconds the writer has to send what it accepted before stdin is closed (as the SDK).
FLUSH_TIMEOUT: Final = 0.5
#: What chatcli's refusals of a message say (:func:`_too_large`, :func:`_http_client`), to
#: find them again inside the SDK's error answer that carries them.
_REFUSAL: Final = re.compile(
    r"the server sent a (?:message over chatcli's limit of [\d,]+ (?:MiB|bytes)"
    r"|compressed message \([^()]*\), which chatcli does not accept)"
)
#: httpx2's refusal of an event over ``max_sse_event_size`` (:data:`MAX_MESSAGE`).
_EVENT_REFUSAL: Final = re.compile(r"Server-sent event exceeded the (\d+) byte limit")

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

    A server run by a command writes its stderr to ``errlog`` (a real file: it is handed to
    the process), or to nowhere: never to the terminal, where it would mix with the answer
    (and could carry escape sequences). It gets only the variables the SDK passes on (``HOME``,
    ``LOGNAME``, ``PATH``, ``SHELL``, ``TERM``, ``USER``) plus ``env`` and then its config's
    ``env``: not chatcli's whole environment, which holds API keys.

    A message over :data:`MAX_MESSAGE` bytes fails: over HTTP the call it answers (a
    :class:`ToolError`; the connection goes on), over stdio the whole connection, as there is
    no telling which call an unread line answers and the server is likely to go on writing.
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
            if too_large := _refusal(exc.message):
                raise ToolError(self._error(f"{remote_name}: {too_large}")) from None
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
            if scope.cancelled_caught and not self._ready.is_set() and self._failure is None:
                why = f"no answer within {self.config.timeout:g} s"
                if self._garbage:
                    why += f"; it does not speak MCP (it wrote: {self._garbage})"
                self._failure = why
        except Exception as exc:
            log.debug("MCP server %s failed", self.name, exc_info=exc)
            if self._failure is None:  # else the transport said why already (_broke)
                self._broke(self._why(_first_leaf(exc)))
        finally:
            self._session = None
            self._ready.set()

    def _broke(self, why: str) -> None:
        """Records why the connection failed. The stdio transport calls this before it ends
        the connection, so that a call waiting on it says why, not only that it closed."""
        if self._failure is None:
            self._failure = f"the connection broke: {why}" if self._ready.is_set() else why

    async def _connect(self, stack: AsyncExitStack) -> ClientSession:
        from mcp import ClientSession

        config = self.config
        if config.url is not None:
            from mcp.client.streamable_http import streamable_http_client

            client = await stack.enter_async_context(_http_client(MAX_MESSAGE))
            read, write = await stack.enter_async_context(
                streamable_http_client(
                    config.url, http_client=client, max_sse_event_size=MAX_MESSAGE
                )
            )
            return await stack.enter_async_context(
                ClientSession(read, write, message_handler=self._on_message)
            )
        from mcp.client.stdio import DEFAULT_INHERITED_ENV_VARS, get_default_environment

        assert config.command is not None
        # The few variables the SDK would pass on, but from the environment chatcli was given
        # (``env``), then the config's own; over what the SDK's stdio_client would start from.
        inherited = {
            key: value
            for key, value in self._env.items()
            if key in DEFAULT_INHERITED_ENV_VARS and not value.startswith("()")
        }
        env = get_default_environment() | inherited | dict(config.env)
        errlog: TextIO
        if self._errlog is None:
            errlog = stack.enter_context(open(os.devnull, "w"))  # noqa: SIM115
        else:
            errlog = cast(TextIO, self._errlog)
        stdio = _stdio(config.command, config.args, env, errlog, MAX_MESSAGE, self._broke)
        read_stream, write_stream = await stack.enter_async_context(stdio)
        return await stack.enter_async_context(
            ClientSession(read_stream, write_stream, message_handler=self._on_message)
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
            if too_large := _refusal(exc.message):
                return too_large
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


class MessageTooLarge(Exception):
    """A server sent a message over the limit (:data:`MAX_MESSAGE`) on its stdout."""


def _refusal(message: str) -> str | None:
    """chatcli's refusal of a message, said as :func:`_too_large` says it, when the SDK's
    error ``message`` carries one (it wraps them as a parse error, or a broken event stream)."""
    if found := _REFUSAL.search(message):
        return found.group()
    if found := _EVENT_REFUSAL.search(message):
        return _too_large(int(found.group(1)))
    return None


def _too_large(limit: int) -> str:
    mib = 1024 * 1024
    size = f"{limit // mib} MiB" if limit % mib == 0 else f"{limit:,} bytes"
    return f"the server sent a message over chatcli's limit of {size}"


@asynccontextmanager
async def _stdio(
    command: str,
    args: Sequence[str],
    env: Mapping[str, str],
    errlog: TextIO,
    limit: int,
    broke: Callable[[str], None],
) -> AsyncGenerator[
    tuple[
        MemoryObjectReceiveStream[SessionMessage | Exception],
        MemoryObjectSendStream[SessionMessage],
    ]
]:
    """Runs ``command`` and talks MCP over its stdin and stdout, a JSON-RPC message a line: the
    SDK's ``stdio_client`` (the same process group, the same shutdown), but reading at most
    ``limit`` bytes a line. The SDK's grows a string until a newline comes, however long (and
    copies it for every chunk): a server printing a gigabyte without one took a gigabyte.

    A longer line fails the connection: ``broke`` is told why, the connection is cancelled and
    :class:`MessageTooLarge` raised from it; the rest of the server's output is read and
    dropped until it is stopped. A line that is not MCP is passed on as the error parsing it,
    as the SDK does (:meth:`McpServer._on_message` notes it)."""
    import anyio
    import anyio.lowlevel
    from mcp.shared.message import SessionMessage
    from mcp_types import jsonrpc_message_adapter

    def parse(line: bytearray) -> SessionMessage | Exception:
        try:
            # Strict UTF-8, as the SDK's default; undecodable output is a line that is not MCP.
            message = jsonrpc_message_adapter.validate_json(line.decode(), by_name=False)
        except ValueError as exc:  # pydantic's ValidationError, UnicodeDecodeError
            log.debug("a line from %s is not a JSON-RPC message", command, exc_info=exc)
            return exc
        return SessionMessage(message)

    process = await _spawn(command, args, env, errlog)
    # The process runs: no awaits until the task group is entered, or a cancellation in
    # between would leave it running.
    read_writer, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_stream, write_reader = anyio.create_memory_object_stream[SessionMessage](0)
    writer_done = anyio.Event()
    shutting_down = False
    stdin, stdout = process.stdin, process.stdout
    assert stdin is not None and stdout is not None

    async def deliver() -> None:
        """Reads lines and passes them on; returns at the end of the output or when the
        session is gone. Linear in what is read: each byte is searched once."""
        buffer = bytearray()
        while True:
            try:
                chunk = await stdout.receive()
            except anyio.EndOfStream:
                return
            searched = len(buffer)  # no newline before this
            buffer += chunk
            start, too_long = 0, False
            while (end := buffer.find(b"\n", searched)) != -1:
                if end - start > limit:
                    too_long = True
                    break
                try:
                    # One line at a time: nothing more is read while a delivery waits.
                    await read_writer.send(parse(buffer[start:end]))
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    return  # the session is gone
                start = searched = end + 1
            del buffer[:start]
            if not too_long and len(buffer) <= limit:
                continue
            why = _too_large(limit)
            broke(why)
            task_group.cancel_scope.cancel()
            raise MessageTooLarge(why)

    async def read() -> None:
        try:
            async with read_writer:
                try:
                    await deliver()
                finally:
                    # A server blocked writing to a full pipe cannot see its stdin close.
                    await _drain(stdout)
        except anyio.ClosedResourceError:
            pass  # the shutdown closed stdout under the read
        except (anyio.BrokenResourceError, ConnectionError):
            if not shutting_down:
                log.debug("reading the output of %s failed", command, exc_info=True)

    async def write() -> None:
        try:
            async with write_reader:
                async for session_message in write_reader:
                    text = session_message.message.model_dump_json(
                        by_alias=True, exclude_unset=True
                    )
                    await stdin.send((text + "\n").encode())
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            # The server may still run: end the session's input, or a request would wait
            # for an answer that cannot come.
            await read_writer.aclose()
        finally:
            writer_done.set()

    async def shutdown() -> None:
        read_stream.close()  # a delivery waiting on the session ends: the reader drains
        write_stream.close()
        with anyio.move_on_after(FLUSH_TIMEOUT):
            await writer_done.wait()
        await _stop(process)
        for stream in (read_stream, write_stream, read_writer, write_reader):
            await stream.aclose()
        await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as task_group:
        task_group.start_soon(read)
        task_group.start_soon(write)
        try:
            yield read_stream, write_stream
        finally:
            shutting_down = True
            # Every wait in it is bounded, and it must run even when the caller is cancelled,
            # or the process would be left running.
            with anyio.CancelScope(shield=True):
                await shutdown()
            task_group.cancel_scope.cancel()


async def _spawn(
    command: str, args: Sequence[str], env: Mapping[str, str], errlog: TextIO
) -> Process:
    """Starts the server in a process group of its own (a Job Object on Windows, by the SDK's
    helper), so that stopping it stops what it started too."""
    import anyio

    if sys.platform == "win32":  # pragma: no cover
        from mcp.os.win32.utilities import create_windows_process, get_windows_executable_command

        executable = get_windows_executable_command(command)
        return await create_windows_process(executable, list(args), dict(env), errlog)  # type: ignore[return-value]
    return await anyio.open_process(
        [command, *args], env=dict(env), stderr=errlog, start_new_session=True
    )


async def _drain(stdout: ByteReceiveStream) -> None:
    """Reads and drops what the server still writes, until its output ends or is closed."""
    import anyio

    with (
        anyio.CancelScope(shield=True),
        suppress(anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError),
    ):
        while True:
            await stdout.receive()


async def _stop(process: Process) -> None:
    """The SDK's shutdown of a stdio server (the one MCP's spec describes): close its stdin,
    give it :data:`EXIT_GRACE` seconds to exit, then SIGTERM its process group and SIGKILL it
    after as long again."""
    import anyio

    closing = (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError)
    assert process.stdin is not None and process.stdout is not None
    with suppress(*closing):
        await process.stdin.aclose()
    if not await _exited(process, EXIT_GRACE):
        if sys.platform == "win32":  # pragma: no cover
            from mcp.os.win32.utilities import terminate_windows_process_tree

            await terminate_windows_process_tree(process)
        else:
            from mcp.os.posix.utilities import terminate_posix_process_tree

            await terminate_posix_process_tree(process, EXIT_GRACE)
        if not await _exited(process, EXIT_GRACE):
            log.warning("MCP server process %d survived SIGKILL; leaving it", process.pid)
    if sys.platform == "win32":  # pragma: no cover
        from mcp.os.win32.utilities import close_process_job

        close_process_job(process)
    # A child that outlived the server may hold its stdout open: the reader must end anyway.
    with suppress(*closing):
        await process.stdout.aclose()
    # asyncio's transport for the process stays open (and warns when collected) while such a
    # child holds a pipe; nothing public reaches it (the SDK closes it the same way).
    transport = getattr(getattr(process, "_process", None), "_transport", None)
    close = getattr(transport, "close", None)
    if callable(close):
        with suppress(PermissionError):
            close()


async def _exited(process: Process, timeout: float) -> bool:
    """Whether the process exits within ``timeout`` seconds. It polls: ``process.wait()``
    would wait for the pipes too, which a child the server started may hold open."""
    import anyio

    with anyio.move_on_after(timeout):
        while process.returncode is None:
            await anyio.sleep(0.01)
        return True
    return False


def _http_client(limit: int) -> httpx2.AsyncClient:
    """The SDK's HTTP client for MCP (its timeouts; proxies from the environment), but the body
    of an answer is cut off past ``limit`` bytes: the SDK reads a JSON answer whole, however
    big. An event stream (a GET or POST answered ``text/event-stream``) is exempt: it may last
    and carry any number of events, and the SDK bounds each event (``max_sse_event_size``).

    Bytes are counted as the body streams in, so a compressed body could still inflate
    without bound when the SDK reads it whole: the client asks for none
    (``Accept-Encoding: identity``), and a body compressed anyway is refused.

    Going past the limit raises :class:`httpx2.StreamError`, which the SDK turns into an error
    answer to that one request (it does so for a body it cannot read), so the connection goes
    on. The cut-off is a response hook, not a wrapping transport: passing a transport would
    turn off the proxies the environment names."""
    import httpx2
    from mcp.shared._httpx_utils import create_mcp_http_client

    class BoundedBody(httpx2.AsyncByteStream):
        def __init__(self, stream: httpx2.AsyncByteStream, refusal: str | None) -> None:
            self._stream = stream
            self._refusal = refusal

        @property
        def elapsed(self) -> datetime.timedelta | None:
            """The stream's own (a response reads its ``elapsed`` from its stream)."""
            return cast("datetime.timedelta | None", getattr(self._stream, "elapsed", None))

        async def __aiter__(self) -> AsyncIterator[bytes]:
            if self._refusal is not None:
                raise httpx2.StreamError(self._refusal)
            chunks = self._stream.__aiter__()
            received = 0
            try:
                async for chunk in chunks:
                    received += len(chunk)
                    if received > limit:
                        raise httpx2.StreamError(_too_large(limit))
                    yield chunk
            finally:
                if isinstance(chunks, AsyncGenerator):
                    await chunks.aclose()

        async def aclose(self) -> None:
            await self._stream.aclose()

    async def bound(response: httpx2.Response) -> None:
        headers = response.headers
        kind = headers.get("content-type", "").partition(";")[0].strip().lower()
        if (
            kind == "text/event-stream"
            and response.request.method in ("GET", "POST")
            and response.is_success
        ):
            return
        refusal = None
        codings = {c.strip() for c in headers.get("content-encoding", "").lower().split(",")}
        if codings - {"", "identity"}:
            coding = ", ".join(sorted(codings - {"", "identity"}))
            refusal = (
                f"the server sent a compressed message ({coding}), which chatcli does not accept"
            )
        length = headers.get("content-length", "").strip()
        if length.isdigit() and int(length) > limit:
            refusal = _too_large(limit)
        assert isinstance(response.stream, httpx2.AsyncByteStream)
        response.stream = BoundedBody(response.stream, refusal)

    client = create_mcp_http_client(headers={"Accept-Encoding": "identity"})
    hooks = client.event_hooks
    hooks["response"] = [*hooks.get("response", []), bound]
    client.event_hooks = hooks
    return client


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
