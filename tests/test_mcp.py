"""The MCP client (:mod:`chatcli.tools.mcp`) against a real MCP server written with the SDK
(``tests/fakes/mcp_server.py``), over stdio and over streamable HTTP on localhost.

Each test runs its own event loop (``asyncio.run``), as chatcli does; each HTTP server (one
answering with event streams, one with plain JSON bodies) is one process for the whole module
(it starts in about a second), the stdio one is started by each connection, as chatcli starts
it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

import pytest

from chatcli.errors import ChatcliError, ConfigError
from chatcli.tools import MAX_RESULT, NAME_PATTERN, Tool, ToolError, ToolResult
from chatcli.tools import mcp as chatcli_mcp
from chatcli.tools.mcp import (
    NO_SDK,
    McpServer,
    McpTool,
    ServerConfig,
    parameters_of,
    server_configs,
    tool_name,
)

SERVER = Path(__file__).parent / "fakes" / "mcp_server.py"
ROOT = Path(__file__).parent.parent
HOSTILE = "before \x1b]52;c;aGFja2Vk\x07 clear \x1b[2J red \x9b31m after"
TOOLS = [
    "echo", "add", "hostile", "big", "fail", "slow", "picture", "structured", "crash",
    "flood", "files.read",
]  # fmt: skip
MIB = 1024 * 1024

T = TypeVar("T")

#: Child processes a test may leave running: the module's HTTP server.
_SHARED: set[int] = set()


def _sdk() -> bool:
    try:
        import mcp  # noqa: F401
    except ImportError:
        return False
    return True


needs_sdk = pytest.mark.skipif(
    not _sdk(), reason="the MCP SDK is not installed (pip install 'chatcli-shell[mcp]')"
)


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """localhost must not go through a proxy the machine happens to have configured."""
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("NO_PROXY", "*")


@pytest.fixture(scope="module")
def http_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The fake over streamable HTTP, answering with event streams: its URL."""
    yield from _http_server(tmp_path_factory, "http")


@pytest.fixture(scope="module")
def http_json_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The fake over streamable HTTP, answering with plain JSON bodies: its URL."""
    yield from _http_server(tmp_path_factory, "http-json")


def _http_server(tmp_path_factory: pytest.TempPathFactory, mode: str) -> Iterator[str]:
    """Runs the fake over HTTP (it prints its port when it listens) and yields its URL."""
    if not _sdk():
        pytest.skip("the MCP SDK is not installed (pip install 'chatcli-shell[mcp]')")
    log = (tmp_path_factory.mktemp(f"mcp-{mode}") / "stderr.log").open("w")
    process = subprocess.Popen(
        [sys.executable, str(SERVER), mode], stdout=subprocess.PIPE, stderr=log, text=True
    )
    _SHARED.add(process.pid)
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 20)
        line = process.stdout.readline() if ready else ""
        assert line.startswith("READY "), f"the HTTP server did not start: {line!r}"
        yield f"http://127.0.0.1:{int(line.split()[1])}/mcp"
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
        log.close()


def stdio_config(**overrides: Any) -> ServerConfig:
    settings: dict[str, Any] = {
        "name": "fake",
        "command": sys.executable,
        "args": (str(SERVER), "stdio"),
        "timeout": 20.0,
    } | overrides
    return ServerConfig(**settings)


@pytest.fixture(params=["stdio", "http", "http-json"])
def config(request: pytest.FixtureRequest) -> Callable[..., ServerConfig]:
    """Makes the fake's config, over each transport in turn."""
    if request.param == "stdio":
        return stdio_config
    url = request.getfixturevalue("http_json_url" if request.param == "http-json" else "http_url")
    return lambda **overrides: ServerConfig(**({"name": "fake", "url": url} | overrides))


def connected(
    config: ServerConfig,
    body: Callable[[McpServer], Awaitable[T]],
    *,
    errlog: IO[str] | None = None,
    env: dict[str, str] | None = None,
) -> T:
    """``body``'s result, run with a connection to ``config``'s server, in a fresh loop; the
    connection is closed whatever happens."""

    async def go() -> T:
        server = McpServer(config, errlog=errlog, env=env)
        await server.start()
        try:
            return await body(server)
        finally:
            await server.close()

    return asyncio.run(go())


def tool(server: McpServer, remote_name: str) -> McpTool:
    return next(t for t in server.tools if t.remote_name == remote_name)


def child_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --- the tools and calls, over both transports


@needs_sdk
def test_tools_are_listed_with_mapped_names_and_schemas(
    config: Callable[..., ServerConfig],
) -> None:
    async def body(server: McpServer) -> list[McpTool]:
        return list(server.tools)

    tools = connected(config(read_only=frozenset({"echo", "files.read"})), body)
    assert [t.remote_name for t in tools] == TOOLS
    assert [t.name for t in tools] == [f"fake__{n.replace('.', '_')}" for n in TOOLS]
    for t in tools:
        assert NAME_PATTERN.match(t.name)
        assert t.source == "mcp:fake"
        assert t.parameters["type"] == "object"
        assert isinstance(t.parameters["properties"], dict)
        assert t.acts == (t.remote_name not in {"echo", "files.read"})
    by_name = {t.remote_name: t for t in tools}
    assert by_name["add"].description == "Add two whole numbers."
    assert by_name["add"].parameters["required"] == ["a", "b"]
    assert set(by_name["add"].parameters["properties"]) == {"a", "b"}
    assert by_name["hostile"].parameters["properties"] == {}
    # The description is the server's, as data for the model; only the name had to change.
    assert by_name["hostile"].description == "Looks harmless \x1b]0;pwned\x07 but is not."
    shaped: Tool = by_name["echo"]  # McpTool is a Tool (mypy checks this line)
    assert shaped.name == "fake__echo"


@needs_sdk
def test_read_only_true_makes_every_tool_read_only(http_url: str) -> None:
    async def body(server: McpServer) -> list[bool]:
        return [t.acts for t in server.tools]

    config = ServerConfig("fake", url=http_url, read_only=True)
    assert connected(config, body) == [False] * len(TOOLS)


@needs_sdk
def test_calls_round_trip(config: Callable[..., ServerConfig]) -> None:
    async def body(server: McpServer) -> dict[str, ToolResult]:
        calls: dict[str, dict[str, Any]] = {
            "echo": {"text": "héllo\nworld"},
            "add": {"a": 2, "b": 40},
            "fail": {},
            "hostile": {},
            "picture": {},
            "structured": {},
            "files.read": {"path": "notes.txt"},
        }
        return {name: await tool(server, name).run(args) for name, args in calls.items()}

    results = connected(config(), body)
    assert results["echo"] == ToolResult("héllo\nworld")
    assert results["add"] == ToolResult("42")
    assert results["fail"].is_error
    assert "this tool always fails" in results["fail"].text
    # Escapes reach the model as data, unchanged: the terminal's sanitizer deals with them.
    assert results["hostile"] == ToolResult(HOSTILE)
    assert results["picture"] == ToolResult("[image: image/png, 66 bytes]")
    assert results["structured"] == ToolResult('{"answer": 42}')
    assert results["files.read"] == ToolResult("read notes.txt")


@needs_sdk
def test_a_big_result_is_bounded(config: Callable[..., ServerConfig]) -> None:
    async def body(server: McpServer) -> ToolResult:
        return await tool(server, "big").run({})

    result = connected(config(), body)
    assert not result.is_error
    assert result.text.startswith("x" * MAX_RESULT + "\n[... cut: ")
    assert f"{2_000_000 - MAX_RESULT:,} more characters" in result.text
    assert len(result.text) < MAX_RESULT + 100


@needs_sdk
def test_a_slow_call_times_out_and_the_connection_still_works(
    config: Callable[..., ServerConfig],
) -> None:
    async def body(server: McpServer) -> tuple[str, float, ToolResult]:
        started = time.monotonic()
        with pytest.raises(ToolError) as caught:
            await tool(server, "slow").run({"seconds": 10})
        took = time.monotonic() - started
        return str(caught.value), took, await tool(server, "echo").run({"text": "still here"})

    # The connect timeout is the same number: the stdio server must start within it.
    message, took, after = connected(config(timeout=3.0), body)
    assert message == "MCP server fake: slow did not answer within 3 s"
    assert 2.9 < took < 6
    assert after == ToolResult("still here")


@needs_sdk
def test_calls_work_from_other_tasks_than_the_one_that_started(
    config: Callable[..., ServerConfig],
) -> None:
    """Each REPL question is its own task: start, calls and close all in different ones."""

    async def go() -> list[ToolResult]:
        server = McpServer(config())
        await asyncio.create_task(server.start())
        echo = tool(server, "echo")
        results = list(
            await asyncio.gather(
                asyncio.create_task(echo.run({"text": "one"})),
                asyncio.create_task(echo.run({"text": "two"})),
            )
        )
        results.append(await asyncio.create_task(tool(server, "add").run({"a": 1, "b": 1})))
        await asyncio.create_task(server.close())
        return results

    assert asyncio.run(go()) == [ToolResult("one"), ToolResult("two"), ToolResult("2")]


@needs_sdk
def test_a_call_after_close_is_a_tool_error(http_url: str) -> None:
    async def go() -> str:
        server = McpServer(ServerConfig("fake", url=http_url))
        await server.start()
        echo = tool(server, "echo")
        await server.close()
        await server.close()  # twice is fine
        with pytest.raises(ToolError) as caught:
            await echo.run({"text": "late"})
        return str(caught.value)

    assert asyncio.run(go()) == "MCP server fake: not connected"


# --- stdio: the process


@needs_sdk
def test_server_stderr_goes_to_errlog_and_close_ends_the_process(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    log_path = tmp_path / "mcp-fake.log"
    with log_path.open("w") as errlog:

        async def body(server: McpServer) -> None:
            await tool(server, "fail").run({})  # the server logs this failure too

        connected(stdio_config(), body, errlog=errlog)
    text = log_path.read_text()
    assert "mcp test server starting (stdio)" in text
    pid = int(text.split(" pid ")[1].split()[0])
    assert not child_alive(pid), "close() left the server running"
    captured = capfd.readouterr()
    assert "mcp test server" not in captured.err + captured.out


@needs_sdk
def test_without_errlog_server_stderr_goes_nowhere(capfd: pytest.CaptureFixture[str]) -> None:
    async def body(server: McpServer) -> ToolResult:
        return await tool(server, "echo").run({"text": "quiet"})

    assert connected(stdio_config(), body) == ToolResult("quiet")
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


@needs_sdk
def test_the_server_gets_only_safe_variables_and_its_own(tmp_path: Path) -> None:
    """The SDK passes a server HOME, PATH and a few more, never chatcli's API keys; ``env``
    is where those few come from, and the config adds its own."""
    script = tmp_path / "env_server.py"
    script.write_text(
        "import os, sys\n"
        "print(sorted((k, v) for k, v in os.environ.items()"
        " if k in ('HOME', 'SECRET_KEY', 'GREETING')), file=sys.stderr)\n"
        "sys.exit(0)\n"
    )
    log_path = tmp_path / "env.log"
    with log_path.open("w") as errlog:
        server = McpServer(
            stdio_config(command=sys.executable, args=(str(script),), env={"GREETING": "hi"}),
            errlog=errlog,
            env={"HOME": str(tmp_path), "SECRET_KEY": "sk-do-not-pass"},
        )
        with pytest.raises(ChatcliError):
            asyncio.run(server.start())
    assert log_path.read_text().strip() == str([("GREETING", "hi"), ("HOME", str(tmp_path))])


@needs_sdk
def test_a_server_that_dies_mid_call_is_a_tool_error() -> None:
    async def body(server: McpServer) -> list[str]:
        messages = []
        for name, args in (("crash", {}), ("echo", {"text": "anyone?"})):
            with pytest.raises(ToolError) as caught:
                await tool(server, name).run(args)
            messages.append(str(caught.value))
        return messages

    for message in connected(stdio_config(), body):
        assert message.startswith("MCP server fake: the connection is closed")
        assert "\n" not in message


# --- a message over the limit: one line naming the server, and memory stays bounded


@pytest.fixture
def small_limit(monkeypatch: pytest.MonkeyPatch) -> int:
    """MAX_MESSAGE made 1 MiB, so that going past it takes a few MiB, not tens."""
    monkeypatch.setattr(chatcli_mcp, "MAX_MESSAGE", MIB)
    return MIB


def peak_memory() -> int:
    """This process's peak resident memory so far, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux says KiB


@needs_sdk
def test_a_line_over_the_limit_ends_the_connection_in_bounded_memory(small_limit: int) -> None:
    """64 MiB with no newline: the SDK's own stdio transport would hold all of it (several
    times over, as it copies the line for each chunk); chatcli's stops at the limit."""

    async def body(server: McpServer) -> tuple[str, str, int, float]:
        before, started = peak_memory(), time.monotonic()
        with pytest.raises(ToolError) as caught:
            await tool(server, "flood").run({"megabytes": 64})
        took = time.monotonic() - started
        grown = peak_memory() - before
        with pytest.raises(ToolError) as again:
            await tool(server, "echo").run({"text": "anyone?"})
        return str(caught.value), str(again.value), grown, took

    first, second, grown, took = connected(stdio_config(), body)
    assert first == (
        "MCP server fake: the connection broke: "
        "the server sent a message over chatcli's limit of 1 MiB"
    )
    assert second == first
    assert grown < 16 * MIB, f"reading grew memory by {grown / MIB:.0f} MiB"
    assert took < 5  # the call fails when the line does, not when the process is gone


@needs_sdk
def test_a_line_under_the_limit_arrives_whole(small_limit: int) -> None:
    """A long line comes in many reads; under the limit it is put together and parsed."""
    # The answer holds it twice (a text block and the structured result): just under 1 MiB.
    text = "é" + "y" * 500_000

    async def body(server: McpServer) -> ToolResult:
        return await tool(server, "echo").run({"text": text})

    result = connected(stdio_config(), body)
    assert not result.is_error
    assert result.text.startswith("é" + "y" * (MAX_RESULT - 1) + "\n[... cut: ")


@needs_sdk
def test_a_program_flooding_its_output_fails_to_start() -> None:
    """Not an MCP server at all: 20 MB and no newline, more than the real limit (16 MiB)."""
    flood = ("-c", "import sys; sys.stdout.buffer.write(b'x' * 20_000_000)")
    message, took = start_error(stdio_config(args=flood))
    assert message == ("MCP server fake: the server sent a message over chatcli's limit of 16 MiB")
    assert took < 8


@needs_sdk
def test_a_json_answer_over_the_limit_fails_the_call_only(
    http_json_url: str, small_limit: int
) -> None:
    async def body(server: McpServer) -> tuple[str, ToolResult]:
        with pytest.raises(ToolError) as caught:
            await tool(server, "big").run({})  # 2 MB of JSON
        return str(caught.value), await tool(server, "echo").run({"text": "still here"})

    message, after = connected(ServerConfig("fake", url=http_json_url), body)
    assert (
        message == "MCP server fake: big: the server sent a message over chatcli's limit of 1 MiB"
    )
    assert after == ToolResult("still here")


@needs_sdk
def test_an_event_over_the_limit_fails_the_call_only(http_url: str, small_limit: int) -> None:
    async def body(server: McpServer) -> tuple[str, ToolResult]:
        with pytest.raises(ToolError) as caught:
            await tool(server, "big").run({})  # one 2 MB event
        return str(caught.value), await tool(server, "echo").run({"text": "still here"})

    message, after = connected(ServerConfig("fake", url=http_url), body)
    assert (
        message == "MCP server fake: big: the server sent a message over chatcli's limit of 1 MiB"
    )
    assert after == ToolResult("still here")


@needs_sdk
def test_a_tool_list_over_the_limit_fails_to_start(
    http_json_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chatcli_mcp, "MAX_MESSAGE", 2000)  # the answer to initialize fits
    message, _ = start_error(ServerConfig("fake", url=http_json_url))
    assert message == (
        "MCP server fake: the server sent a message over chatcli's limit of 2,000 bytes"
    )


async def _serve(handler: Callable[[Any], Awaitable[Any]]) -> tuple[Any, str]:
    """A one-route HTTP server in this loop (aiohttp, which chatcli depends on): its runner,
    to clean up, and its URL."""
    from aiohttp import web

    app = web.Application()
    app.router.add_route("*", "/mcp", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}/mcp"


async def _start_error_from(handler: Callable[[Any], Awaitable[Any]]) -> tuple[str, int]:
    runner, url = await _serve(handler)
    try:
        before = peak_memory()
        server = McpServer(ServerConfig("web", url=url, timeout=20))
        with pytest.raises(ChatcliError) as caught:
            await server.start()
        return str(caught.value), peak_memory() - before
    finally:
        await runner.cleanup()


@needs_sdk
def test_an_endless_json_answer_is_cut_off(small_limit: int) -> None:
    """No Content-Length: the body is counted as it streams in, and dropped at the limit."""
    from aiohttp import web

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            await response.write(b'{"jsonrpc": "2.0", "id": 0, "result": {"x": "')
            for _ in range(64):
                await response.write(b"x" * MIB)
        return response

    message, grown = asyncio.run(_start_error_from(endless))
    assert message == "MCP server web: the server sent a message over chatcli's limit of 1 MiB"
    assert grown < 16 * MIB, f"reading grew memory by {grown / MIB:.0f} MiB"


@needs_sdk
def test_a_compressed_json_answer_is_refused() -> None:
    """Gzip could inflate past any limit once decoded, so chatcli asks for none and refuses
    a body compressed anyway."""
    from aiohttp import web

    async def gzipped(request: web.Request) -> web.Response:
        assert request.headers["Accept-Encoding"] == "identity"
        answer = b'{"jsonrpc": "2.0", "id": 0, "result": {}}'
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        return web.Response(body=gzip.compress(answer), headers=headers)

    message, _ = asyncio.run(_start_error_from(gzipped))
    assert message == (
        "MCP server web: the server sent a compressed message (gzip), which chatcli does not accept"
    )


# --- failing to connect: one line naming the server


def start_error(config: ServerConfig) -> tuple[str, float]:
    started = time.monotonic()
    server = McpServer(config)
    with pytest.raises(ChatcliError) as caught:
        asyncio.run(server.start())
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    return message, time.monotonic() - started


@needs_sdk
def test_a_command_that_does_not_exist() -> None:
    message, _ = start_error(stdio_config(name="files", command="no-such-mcp-server-xyz"))
    assert message == "MCP server files: command not found: no-such-mcp-server-xyz"


@needs_sdk
def test_a_server_that_exits_at_once() -> None:
    message, _ = start_error(stdio_config(args=("-c", "raise SystemExit(3)")))
    assert message == (
        "MCP server fake: the server exited or closed its output before it was ready"
    )


@needs_sdk
def test_a_program_that_is_not_an_mcp_server() -> None:
    message, _ = start_error(stdio_config(args=("-c", "print('hello \\x1b[2J world')")))
    assert message.startswith("MCP server fake: the server exited or closed its output")
    # What it wrote is quoted as a repr: one line, its escapes spelled out.
    assert message.endswith("it does not speak MCP (it wrote: 'hello \\x1b[2J world')")


@needs_sdk
def test_a_server_that_never_answers_times_out() -> None:
    silent = ("-c", "import time; time.sleep(30)")
    message, took = start_error(stdio_config(args=silent, timeout=0.5))
    assert message == "MCP server fake: no answer within 0.5 s"
    # The SDK then gives the process 2 s to exit after its stdin closes, then kills it.
    assert took < 8


@needs_sdk
def test_an_http_url_where_nothing_listens() -> None:
    with socket.socket() as sock:  # bound, not listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
        message, took = start_error(ServerConfig("web", url=url, timeout=5))
    assert message.startswith(f"MCP server web: cannot connect to {url}: ")
    assert took < 5


@needs_sdk
def test_an_http_url_that_is_not_an_mcp_endpoint(http_url: str) -> None:
    message, _ = start_error(ServerConfig("web", url=http_url.replace("/mcp", "/nothing")))
    assert message == "MCP server web: the server answered: Not Found (error -32601)"


@needs_sdk
def test_start_is_cancellable_and_leaves_no_process(tmp_path: Path) -> None:
    script = tmp_path / "slow_server.py"
    script.write_text(
        "import os, sys, time\nprint(os.getpid(), file=sys.stderr, flush=True)\ntime.sleep(60)\n"
    )
    log_path = tmp_path / "slow.log"

    async def go(errlog: IO[str]) -> None:
        server = McpServer(stdio_config(args=(str(script),)), errlog=errlog)
        task = asyncio.create_task(server.start())
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with log_path.open("w") as errlog:
        asyncio.run(go(errlog))
    pid = int(log_path.read_text().split()[0])
    if child_alive(pid):  # the test must not leave it behind, even when it fails
        os.kill(pid, signal.SIGKILL)
        pytest.fail("cancelling start() left the server running")


def test_without_the_sdk_starting_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "mcp", None)  # import mcp now raises ImportError
    server = McpServer(stdio_config())
    with pytest.raises(ConfigError) as caught:
        asyncio.run(server.start())
    assert (
        str(caught.value)
        == NO_SDK
        == ("MCP servers need the MCP SDK: pip install 'chatcli-shell[mcp]'")
    )


def test_importing_the_module_does_not_import_the_sdk() -> None:
    code = (
        "import sys, chatcli.tools.mcp\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mcp', 'mcp_types')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# --- listing many tools (a stub session: the SDK's server does not page)


def test_tool_pages_are_followed_up_to_a_limit() -> None:
    from mcp_types import ListToolsResult, PaginatedRequestParams
    from mcp_types import Tool as RemoteTool

    class Paging:
        def __init__(self, pages: int, per_page: int, *, loop: bool = False) -> None:
            self.pages, self.per_page, self.loop = pages, per_page, loop
            self.asked: list[str | None] = []

        async def list_tools(self, *, params: PaginatedRequestParams | None = None) -> Any:
            cursor = params.cursor if params else None
            self.asked.append(cursor)
            page = int(cursor or 0)
            tools = [
                RemoteTool(name=f"t{page}.{i}", input_schema={"type": "object"})
                for i in range(self.per_page)
            ]
            after = None if page + 1 >= self.pages else str(0 if self.loop else page + 1)
            return ListToolsResult(tools=tools, next_cursor=after)

    async def listed(session: Paging) -> list[McpTool]:
        return await McpServer(stdio_config())._list_tools(session)  # type: ignore[arg-type]

    three = Paging(3, 2)
    tools = asyncio.run(listed(three))
    assert three.asked == [None, "1", "2"]
    assert [t.remote_name for t in tools] == ["t0.0", "t0.1", "t1.0", "t1.1", "t2.0", "t2.1"]
    assert tools[0].name == "fake__t0_0"
    assert tools[0].parameters == {"type": "object", "properties": {}}

    endless = Paging(10_000, 300)
    assert len(asyncio.run(listed(endless))) == 1000
    assert len(endless.asked) == 4

    looping = Paging(5, 1, loop=True)  # a cursor seen before ends the listing
    assert len(asyncio.run(listed(looping))) == 2


# --- names and schemas


def test_tool_names_are_made_safe_short_and_unique() -> None:
    taken: set[str] = set()
    assert tool_name("files", "read", taken) == "files__read"
    assert tool_name("files", "dir.list", taken) == "files__dir_list"
    assert tool_name("files", "dir list", taken) == "files__dir_list_2"
    assert tool_name("files", "dir?list", taken) == "files__dir_list_3"
    assert tool_name("files", "ünïcode/\x1b[2J", taken) == "files___n_code___2J"
    long = "a" * 100
    first, second = tool_name("s", long, taken), tool_name("s", long + "b", taken)
    assert first == ("s__" + long)[:64]
    assert second == ("s__" + long)[:62] + "_2"
    for name in taken:
        assert NAME_PATTERN.match(name), name


def test_parameters_are_always_an_object_with_properties() -> None:
    assert parameters_of({}) == {"type": "object", "properties": {}}
    assert parameters_of({"type": "object", "properties": None}) == {
        "type": "object",
        "properties": {},
    }
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    assert parameters_of(schema) == schema
    assert parameters_of(schema) is not schema


# --- config.toml's [mcp.servers.NAME]


def test_server_configs_reads_both_kinds() -> None:
    configs = server_configs(
        {
            "files": {
                "command": "mcp-files",
                "args": ["--root", "/tmp"],
                "env": {"LEVEL": "debug"},
                "read_only": ["read", "list"],
                "timeout": 5,
            },
            "search": {"url": "https://example.com/mcp", "read_only": True, "timeout": 2.5},
        },
        "config.toml",
    )
    assert configs == {
        "files": ServerConfig(
            name="files",
            command="mcp-files",
            args=("--root", "/tmp"),
            env={"LEVEL": "debug"},
            read_only=frozenset({"read", "list"}),
            timeout=5.0,
        ),
        "search": ServerConfig(
            name="search", url="https://example.com/mcp", read_only=True, timeout=2.5
        ),
    }
    assert configs["files"].timeout == 5.0 and isinstance(configs["files"].timeout, float)
    assert server_configs({"x": {"command": "x"}}, "c.toml")["x"].timeout == 60.0


@pytest.mark.parametrize(
    ("servers", "message"),
    [
        ({"bad.name": {"command": "x"}}, "mcp.servers.'bad.name': a server name is 1 to 32"),
        ({"a" * 33: {"command": "x"}}, "a server name is 1 to 32"),
        ({"": {"command": "x"}}, "mcp.servers.'': a server name"),
        ({"s": "mcp-files"}, "mcp.servers.s must be a table"),
        ({"s": {"command": "x", "cmd": "y"}}, "mcp.servers.s.cmd: unknown setting"),
        ({"s": {}}, "mcp.servers.s.command: missing; give a command"),
        ({"s": {"command": "x", "url": "http://h/"}}, "mcp.servers.s.url: give a command or"),
        ({"s": {"command": ["x"]}}, "mcp.servers.s.command must be a program to run"),
        ({"s": {"command": " "}}, "mcp.servers.s.command must be a program to run"),
        ({"s": {"url": 5}}, "mcp.servers.s.url must be a string"),
        ({"s": {"url": "ftp://h/mcp"}}, "mcp.servers.s.url: expected a http/https URL"),
        ({"s": {"url": "file:///x"}}, "mcp.servers.s.url: expected a http/https URL"),
        ({"s": {"url": "http://h:99999/"}}, "mcp.servers.s.url: invalid URL"),
        ({"s": {"url": "http://h/", "args": []}}, "mcp.servers.s.args: only a server run"),
        ({"s": {"url": "http://h/", "env": {}}}, "mcp.servers.s.env: only a server run"),
        ({"s": {"command": "x", "args": "a b"}}, "mcp.servers.s.args must be a list of strings"),
        ({"s": {"command": "x", "args": ["a", 1]}}, "mcp.servers.s.args must be a list"),
        ({"s": {"command": "x", "env": ["A=1"]}}, "mcp.servers.s.env must be a table"),
        ({"s": {"command": "x", "env": {"A": 1}}}, "mcp.servers.s.env must be a table"),
        ({"s": {"command": "x", "env": {"A=B": "1"}}}, "mcp.servers.s.env must be a table"),
        ({"s": {"command": "x", "read_only": "yes"}}, "mcp.servers.s.read_only must be true"),
        ({"s": {"command": "x", "read_only": [1]}}, "mcp.servers.s.read_only must be true"),
        ({"s": {"command": "x", "timeout": 0}}, "mcp.servers.s.timeout must be seconds"),
        ({"s": {"command": "x", "timeout": -1}}, "mcp.servers.s.timeout must be seconds"),
        ({"s": {"command": "x", "timeout": 86401}}, "mcp.servers.s.timeout must be seconds"),
        ({"s": {"command": "x", "timeout": True}}, "mcp.servers.s.timeout must be seconds"),
        ({"s": {"command": "x", "timeout": "5"}}, "mcp.servers.s.timeout must be seconds"),
        ({"s": {"command": "x", "timeout": float("nan")}}, "s.timeout must be seconds"),
    ],
)
def test_server_configs_refuses_mistakes(servers: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        server_configs(servers, "/home/u/.config/chatcli/config.toml")
    text = str(caught.value)
    assert text.startswith("/home/u/.config/chatcli/config.toml: mcp.servers.")
    assert message in text
    assert "\n" not in text


def test_server_configs_accepts_the_edges() -> None:
    configs = server_configs(
        {
            "a" * 32: {"command": "x", "timeout": 86400, "read_only": []},
            "A-b_9": {"url": "http://127.0.0.1:8931/mcp", "timeout": 0.001},
        },
        "c.toml",
    )
    assert configs["a" * 32].read_only == frozenset()
    assert configs["A-b_9"].timeout == 0.001


@pytest.fixture(autouse=True)
def no_stray_children() -> Iterator[None]:
    """No test leaves a server process behind (an HTTP server of the module is expected)."""
    before = set(_children())
    yield
    deadline = time.monotonic() + 3
    while (stray := set(_children()) - before - _SHARED) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in stray:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not stray, f"server processes left running: {sorted(stray)}"


def _children() -> list[int]:
    """This process's live children (Linux: /proc; elsewhere nothing is checked)."""
    me, found = str(os.getpid()), []
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                fields = stat.rsplit(")", 1)[1].split()
                if fields[1] == me and fields[0] != "Z":
                    found.append(int(entry))
    return found
