"""Strict fakes of the five seed services (see ../shared/PROVIDERS.md).

Each fake is an aiohttp application that records every request, checks every header, field and
value the protocol names (a difference is a *violation*, which fails the test), answers the way
the real service did, and can play the service's failure modes (``fake.mode``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from tests.servers import AppServer

#: The failure a fake's ``mode`` names, as the CLI should report it (a fragment of the line).
CHROME_MARK = "Chrome/"


@dataclass
class Seen:
    """One request as the fake received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    cookies: dict[str, str]
    body: bytes
    json: Any = None
    form: dict[str, str] | None = None


class FakeService:
    """The shared part of every fake: recording, strict checks, serving.

    Subclasses add routes in :meth:`routes` and read ``self.mode`` to misbehave.
    """

    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self.violations: list[str] = []
        self.mode = "ok"
        self.base_url = ""  # http://localhost:PORT once served

    # -- strictness ----------------------------------------------------------------------------

    def expect(self, condition: bool, message: str) -> None:
        if not condition:
            self.violations.append(message)

    def expect_equal(self, what: str, actual: Any, expected: Any) -> None:
        self.expect(actual == expected, f"{what}: expected {expected!r}, got {actual!r}")

    def expect_header(self, seen: Seen, name: str, expected: str) -> None:
        self.expect_equal(f"{seen.path} header {name}", seen.headers.get(name), expected)

    def expect_chrome(self, seen: Seen) -> None:
        agent = seen.headers.get("User-Agent", "")
        self.expect(CHROME_MARK in agent, f"{seen.path}: user-agent is not Chrome's: {agent!r}")

    # -- recording -----------------------------------------------------------------------------

    async def record(self, request: web.Request) -> Seen:
        body = await request.read()
        seen = Seen(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers=dict(request.headers),
            cookies=dict(request.cookies),
            body=body,
        )
        content_type = request.headers.get("Content-Type", "")
        if body and content_type.startswith("application/json"):
            try:
                seen.json = json.loads(body)
            except ValueError:
                self.violations.append(f"{request.path}: body is not JSON: {body[:100]!r}")
        elif body and content_type.startswith("application/x-www-form-urlencoded"):
            seen.form = dict(parse_qsl(body.decode(), keep_blank_values=True))
        self.requests.append(seen)
        return seen

    def paths(self) -> list[str]:
        return [f"{s.method} {s.path}" for s in self.requests]

    # -- serving -------------------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def app(self) -> web.Application:
        from tests.faults import Faults

        #: Faults to inject in front of the fake (tests/faults.py).
        self.faults = Faults()
        # Bodies as big as the real services take (images): aiohttp's default is 1 MiB.
        app = web.Application(middlewares=[self.faults.middleware], client_max_size=64 << 20)
        self.routes(app)
        return app

    @contextmanager
    def serve(self) -> Iterator[FakeService]:
        """Serve on localhost; on leaving, fail if any request broke the protocol."""
        server = AppServer(self.app())
        server.start()
        self.base_url = server.url
        try:
            yield self
        finally:
            server.stop()
        assert not self.violations, (
            f"{type(self).__name__} saw protocol violations: {self.violations}"
        )


@dataclass
class SSEWriter:
    """Writes ``data: ...`` events on a prepared stream response."""

    response: web.StreamResponse
    sent: list[bytes] = field(default_factory=list)

    async def data(self, payload: Any) -> None:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        chunk = f"data: {text}\n\n".encode()
        self.sent.append(chunk)
        await self.response.write(chunk)

    async def raw(self, chunk: bytes) -> None:
        self.sent.append(chunk)
        await self.response.write(chunk)
