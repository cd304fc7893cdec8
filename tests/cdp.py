"""A headless Chromium driven over the DevTools protocol, for tests of the chat page.

:class:`Chromium` launches Debian's ``chromium`` (the test skips when it is missing, as
:func:`tests.browsers.find_chromium` decides), talks to its page over a websocket (aiohttp's
client, on a private event loop in a background thread) and offers a small synchronous API:
:meth:`~Chromium.navigate`, :meth:`~Chromium.evaluate`, :meth:`~Chromium.wait_for`,
:meth:`~Chromium.screenshot`. On the way it collects what would mean the page misbehaved:
console errors, uncaught exceptions and Content-Security-Policy violations
(:attr:`~Chromium.problems`). The browser reaches nothing but 127.0.0.1, and is killed (its
whole process group) when the block ends, whatever happened.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import aiohttp

from tests.browsers import find_chromium

T = TypeVar("T")

#: Every host name fails to resolve; only the loopback address is reached.
HOST_RULES = "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"

#: Installed in every document before its own scripts: CSP violations are reported back
#: through the ``__cdpReport`` binding (see :meth:`Chromium._connect`).
_WATCH_CSP = """
document.addEventListener("securitypolicyviolation", (event) => {
  globalThis.__cdpReport(JSON.stringify({
    directive: event.violatedDirective, blocked: event.blockedURI,
    source: event.sourceFile, line: event.lineNumber, sample: event.sample,
  }));
}, true);
"""


class CDPError(Exception):
    """A DevTools command failed, or the page's JavaScript threw."""


class Chromium:
    """One headless Chromium with one page. Use as a context manager::

    with Chromium() as browser:
        browser.navigate("http://127.0.0.1:8000/")
        assert browser.evaluate("document.title") == "chatcli"
    """

    def __init__(self, *, width: int = 1000, height: int = 800) -> None:
        self.binary = find_chromium()
        self.width, self.height = width, height
        self._tmp = tempfile.TemporaryDirectory(prefix="chatcli-cdp-")
        self.dir = Path(self._tmp.name)
        self.process: subprocess.Popen[bytes] | None = None
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._loaded: asyncio.Event | None = None
        #: Console messages, as ``"level: text"``.
        self.console: list[str] = []
        #: Uncaught exceptions, as DevTools describes them.
        self.exceptions: list[str] = []
        #: Content-Security-Policy violations the page reported.
        self.csp_violations: list[dict[str, Any]] = []
        #: Browser log entries (network failures, security messages), as ``"level: text"``.
        self.log: list[str] = []

    # -- life cycle ------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self) -> None:
        """Launch the browser and connect to its page."""
        profile = self.dir / "profile"
        home = self.dir / "home"
        home.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env["HOME"] = str(home)
        command = [
            self.binary,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            f"--host-resolver-rules={HOST_RULES}",
            f"--window-size={self.width},{self.height}",
            "about:blank",
        ]
        with (self.dir / "chromium.log").open("wb") as log:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,  # its own process group, killed whole in close()
            )
        port = self._wait_for_port(profile / "DevToolsActivePort", timeout=60)
        self._thread.start()
        self._run(self._connect(port), timeout=30)

    def _wait_for_port(self, path: Path, timeout: float) -> int:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
                return int(path.read_text().splitlines()[0])
            if self.process.poll() is not None:
                raise CDPError(f"chromium exited ({self.process.returncode}): {self.browser_log()}")
            if time.monotonic() > deadline:
                raise CDPError(f"chromium did not open its DevTools port: {self.browser_log()}")
            time.sleep(0.05)

    def browser_log(self) -> str:
        """The end of what Chromium printed (for failure messages)."""
        with contextlib.suppress(OSError):
            return (self.dir / "chromium.log").read_text(errors="replace")[-3000:]
        return ""

    def close(self) -> None:
        """Disconnect and kill the browser's process group; safe to call more than once."""
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self._run(self._disconnect(), timeout=10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
        if not self.loop.is_running() and not self.loop.is_closed():
            self.loop.close()
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
            # Its helpers (renderer, GPU, zygote) die with the group; wait until they have.
            deadline = time.monotonic() + 10
            with contextlib.suppress(ProcessLookupError, PermissionError):
                while time.monotonic() < deadline:
                    os.killpg(self.process.pid, 0)
                    time.sleep(0.05)
            self.process = None
        with contextlib.suppress(OSError):
            self._tmp.cleanup()

    # -- the connection --------------------------------------------------------------------------

    def _run(self, coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def _connect(self, port: int) -> None:
        self._session = aiohttp.ClientSession()
        url = f"http://127.0.0.1:{port}/json/list"
        deadline = time.monotonic() + 20
        while True:
            async with self._session.get(url) as response:
                targets = await response.json()
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                break
            if time.monotonic() > deadline:
                raise CDPError(f"no page target in {targets}")
            await asyncio.sleep(0.1)
        self._ws = await self._session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
        self._loaded = asyncio.Event()
        self._reader = asyncio.create_task(self._read())
        for method in ("Page.enable", "Runtime.enable", "Log.enable"):
            await self._send(method)
        await self._send("Runtime.addBinding", {"name": "__cdpReport"})
        await self._send("Page.addScriptToEvaluateOnNewDocument", {"source": _WATCH_CSP})

    async def _disconnect(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._session is not None:
            await self._session.close()

    async def _read(self) -> None:
        assert self._ws is not None
        async for message in self._ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(message.data)
            if "id" in data:
                future = self._pending.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
            else:
                self._on_event(data["method"], data.get("params", {}))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(CDPError("the DevTools connection closed"))

    def _on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.consoleAPICalled":
            text = " ".join(
                str(arg.get("value", arg.get("description", arg.get("type"))))
                for arg in params.get("args", [])
            )
            self.console.append(f"{params.get('type')}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            described = details.get("exception", {}).get("description") or details.get("text")
            self.exceptions.append(str(described))
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            self.log.append(f"{entry.get('level')}: {entry.get('text')} {entry.get('url', '')}")
        elif method == "Runtime.bindingCalled" and params.get("name") == "__cdpReport":
            self.csp_violations.append(json.loads(params["payload"]))
        elif method == "Page.loadEventFired" and self._loaded is not None:
            self._loaded.set()

    async def _send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        assert self._ws is not None
        key = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        self._pending[key] = future
        await self._ws.send_str(json.dumps({"id": key, "method": method, "params": params or {}}))
        answer = await future
        if "error" in answer:
            raise CDPError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    def send(
        self, method: str, params: dict[str, Any] | None = None, timeout: float = 30
    ) -> dict[str, Any]:
        """Send a DevTools command; its result."""
        return self._run(self._send(method, params), timeout)

    # -- what tests use --------------------------------------------------------------------------

    def navigate(self, url: str, timeout: float = 30) -> None:
        """Open ``url`` and wait for its load event."""

        async def go() -> None:
            assert self._loaded is not None
            self._loaded.clear()
            result = await self._send("Page.navigate", {"url": url})
            if result.get("errorText"):
                raise CDPError(f"navigating to {url}: {result['errorText']}")
            await self._loaded.wait()

        self._run(go(), timeout)

    def evaluate(self, expression: str, timeout: float = 30) -> Any:
        """The value of a JavaScript expression in the page (awaited when a promise); raises
        :class:`CDPError` when it throws."""
        result = self.send(
            "Runtime.evaluate",
            {
                "expression": expression,
                "returnByValue": True,
                "awaitPromise": True,
                "userGesture": True,
            },
            timeout,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            described = details.get("exception", {}).get("description") or details.get("text")
            raise CDPError(f"{expression!r} threw: {described}")
        return result["result"].get("value")

    def wait_for(self, condition: str, timeout: float = 15) -> Any:
        """Wait until the JavaScript expression ``condition`` is truthy; returns its value.
        On a timeout, the error says what the page had complained of."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(condition)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"waited {timeout} s for {condition!r}; the page's problems: {self.problems}"
                )
            time.sleep(0.05)

    def screenshot(self, path: Path) -> Path:
        """Save the page, as it shows, to ``path`` (PNG)."""
        result = self.send("Page.captureScreenshot", {"format": "png"})
        path.write_bytes(base64.b64decode(result["data"]))
        return path

    @property
    def problems(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions, CSP violations and error log
        entries: what a well-behaved page has none of."""
        return (
            [m for m in self.console if m.startswith(("error:", "warning:", "assert:"))]
            + [f"exception: {e}" for e in self.exceptions]
            + [f"CSP violation: {v}" for v in self.csp_violations]
            + [f"log {m}" for m in self.log if m.startswith("error:")]
        )
