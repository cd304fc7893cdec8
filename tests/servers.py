"""Local servers for tests: a fake OpenAI-compatible service and forward proxies.

Each runs on its own event loop in a background thread, bound to the loopback address, so the
same fake serves in-process async tests and real ``chatcli`` subprocesses alike.
"""

from __future__ import annotations

import asyncio
import json
import re
import struct
import threading
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web


class ServerThread:
    """Run an asyncio server factory on a private loop in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0

    def start(self) -> None:
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> int:
        raise NotImplementedError

    async def _stop(self) -> None:
        pass

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    @property
    def url(self) -> str:
        return f"http://localhost:{self.port}"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class AppServer(ServerThread):
    """An aiohttp application on 127.0.0.1 (reached as ``localhost``)."""

    def __init__(self, app: web.Application) -> None:
        super().__init__()
        self.app = app
        self._runner: web.AppRunner | None = None

    async def _start(self) -> int:
        self._runner = web.AppRunner(self.app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        return int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


# -- the fake OpenAI-compatible service -----------------------------------------------------------


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


def sse(payload: Any) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {data}\n\n".encode()


def delta_chunk(
    text: str | None = None, finish: str | None = None, model: str = "m"
) -> dict[str, Any]:
    delta: dict[str, Any] = {} if text is None else {"content": text}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


@dataclass
class FakeOpenAI:
    """A strict stand-in for an OpenAI-compatible API.

    It records every request and answers by the settings below (change them between requests):
    a streamed answer made of ``pieces``, or a whole one; or a scripted failure.
    """

    pieces: list[str] = field(default_factory=lambda: ["Hello", ", ", "world", "!"])
    models: list[str] = field(default_factory=lambda: ["fake-large", "fake-small"])
    #: Context lengths the model list gives, by model id (none: the list says nothing).
    contexts: dict[str, int] = field(default_factory=dict)
    #: "ok" or a failure: "status" (status/body/content_type), "cut" (no [DONE], clean end),
    #: "drop" (connection reset mid-stream), "stall" (stop sending after the first piece),
    #: "error_event", "bad_json", "ignore_stream" (whole JSON even when streaming was asked)
    mode: str = "ok"
    status: int = 500
    body: str = ""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    #: Seconds between streamed pieces.
    delay: float = 0.0
    #: The finish_reason of the last chunk ("stop"; "length" when cut at max_tokens).
    finish_reason: str = "stop"
    #: Pieces of thinking sent before the answer as ``delta.reasoning_content`` (DeepSeek,
    #: llama.cpp and vLLM's field), or as ``message.reasoning_content`` in a whole reply.
    reasoning: list[str] = field(default_factory=list)
    #: A ``usage`` object sent in a last chunk with no choices (and in a whole reply).
    usage: dict[str, int] | None = None
    requests: list[Recorded] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    stall_seconds: float = 30.0
    #: The API root once served (``http://localhost:PORT/v1``).
    base_url: str = ""
    #: Where ``reasoning`` goes: "reasoning_content" (DeepSeek, llama.cpp, vLLM), "reasoning"
    #: (OpenRouter, Ollama), or "think" (a model served raw: a ``<think>…</think>`` block at
    #: the start of the content).
    reasoning_field: str = "reasoning_content"
    #: Refuse a chat request that carries ``stream_options`` with ``status`` and ``body``, as
    #: services that do not know the field do.
    rejects_stream_options: bool = False
    #: Stream ``usage`` only when asked (``stream_options.include_usage``), as OpenAI does.
    usage_when_asked: bool = False
    #: Tool calls after the text: each item is one chunk's ``delta.tool_calls`` list (pieces
    #: of calls by index, as OpenAI streams them); a whole reply gets them put together.
    tool_call_chunks: list[list[dict[str, Any]]] = field(default_factory=list)
    #: Scripted replies, one per chat request in turn: each is the settings above to use for
    #: it (``{"pieces": [], "tool_call_chunks": [...], "finish_reason": "tool_calls"}``);
    #: once they are used up, the settings as they stand answer.
    replies: list[dict[str, Any]] = field(default_factory=list)

    @staticmethod
    def _check(request: web.Request, body: Any) -> list[str]:
        """What is wrong with a chat request, as the real API would judge it."""
        problems = []
        if not request.headers.get("Content-Type", "").startswith("application/json"):
            problems.append(f"content-type {request.headers.get('Content-Type')!r}")
        if not isinstance(body, dict):
            return [*problems, f"body is not an object: {body!r}"]
        if not isinstance(body.get("model"), str) or not body["model"]:
            problems.append(f"model missing or empty: {body.get('model')!r}")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            problems.append(f"messages missing or empty: {messages!r}")
        else:
            called: set[str] = set()
            waiting: list[str] = []  # calls of the last answer not answered yet
            for message in messages:
                if waiting and not (isinstance(message, dict) and message.get("role") == "tool"):
                    problems.append(f"tool calls {waiting} not answered right after they were made")
                    waiting = []
                if isinstance(message, dict) and message.get("role") == "tool":
                    if message.get("tool_call_id") in waiting:
                        waiting.remove(message["tool_call_id"])
                    if set(message) != {"role", "tool_call_id", "content"} or not isinstance(
                        message["content"], str
                    ):
                        problems.append(f"malformed tool message {message!r}")
                    elif message["tool_call_id"] not in called:
                        problems.append(f"a result for a call never made: {message!r}")
                elif isinstance(message, dict) and "tool_calls" in message:
                    before = set(called)
                    problems.extend(FakeOpenAI._check_calls(message, called))
                    waiting = sorted(called - before)
                elif not isinstance(message, dict) or set(message) != {"role", "content"}:
                    problems.append(f"malformed message {message!r}")
                elif message["role"] not in ("system", "user", "assistant"):
                    problems.append(f"unknown role {message['role']!r}")
                elif not isinstance(message["content"], str):
                    problems.append(f"content is not text: {message!r}")
            if waiting:
                problems.append(f"tool calls {waiting} never answered")
        if "tool_choice" in body and (
            "tools" not in body or body["tool_choice"] not in ("none", "auto", "required")
        ):
            problems.append(f"tool_choice {body['tool_choice']!r} (with tools: {'tools' in body})")
        for tool in body.get("tools", []):
            function = tool.get("function", {}) if isinstance(tool, dict) else {}
            name = function.get("name")
            if not isinstance(tool, dict) or (
                tool.get("type") != "function"
                or not isinstance(name, str)
                or not re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", name)
                or not isinstance(function.get("description"), str)
                or (function.get("parameters") or {}).get("type") != "object"
            ):
                problems.append(f"malformed tool {tool!r}")
        if not isinstance(body.get("stream"), bool):
            problems.append(f"stream is not a boolean: {body.get('stream')!r}")
        temperature = body.get("temperature")
        if temperature is not None and not isinstance(temperature, int | float):
            problems.append(f"temperature is not a number: {temperature!r}")
        return problems

    @staticmethod
    def _check_calls(message: dict[str, Any], called: set[str]) -> list[str]:
        """An assistant message that called tools, as the API takes it back."""
        if set(message) - {"content"} != {"role", "tool_calls"} or message["role"] != "assistant":
            return [f"malformed message with tool calls {message!r}"]
        if not isinstance(message.get("content"), str | None):
            return [f"content is not text or null: {message!r}"]
        problems = []
        for call in message["tool_calls"]:
            function = call.get("function") if isinstance(call, dict) else None
            if (
                not isinstance(function, dict)
                or set(call) != {"id", "type", "function"}
                or call["type"] != "function"
                or not isinstance(function.get("name"), str)
                or not isinstance(function.get("arguments"), str)
            ):
                problems.append(f"malformed tool call {call!r}")
            else:
                called.add(call["id"])
        return problems

    def whole_tool_calls(self) -> list[dict[str, Any]]:
        """The streamed pieces put together, as a whole reply carries them."""
        calls: dict[int, dict[str, Any]] = {}
        for chunk in self.tool_call_chunks:
            for piece in chunk:
                call = calls.setdefault(
                    piece["index"],
                    {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
                )
                call["id"] += piece.get("id", "")
                function = piece.get("function", {})
                call["function"]["name"] += function.get("name", "")
                call["function"]["arguments"] += function.get("arguments", "")
        return [calls[index] for index in sorted(calls)]

    def app(self) -> web.Application:
        from tests.faults import Faults

        self.faults = Faults()
        app = web.Application(
            client_max_size=64 * 1024 * 1024, middlewares=[self.faults.middleware]
        )
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        return app

    def serve(self) -> AppServer:
        return AppServer(self.app())

    async def _record(self, request: web.Request) -> Any:
        raw = await request.read()
        body: Any = None
        if raw:
            body = json.loads(raw)
        self.requests.append(Recorded(request.method, request.path_qs, dict(request.headers), body))
        return body

    def _failure(self) -> web.Response | None:
        if self.mode == "status":
            return web.Response(
                status=self.status,
                body=self.body.encode(),
                content_type=self.content_type.split(";")[0],
                headers=self.headers,
            )
        return None

    async def _models(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        failure = self._failure()
        if failure is not None:
            return failure
        entries: list[dict[str, Any]] = [{"id": m, "object": "model"} for m in self.models]
        for entry in entries:  # as OpenRouter lists them
            if entry["id"] in self.contexts:
                entry["context_length"] = self.contexts[entry["id"]]
        return web.json_response({"object": "list", "data": entries})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        problems = self._check(request, body)
        if problems:
            # Strictness: a malformed request fails the test (see conftest) and gets a 400.
            self.violations.extend(problems)
            return web.json_response({"error": {"message": "; ".join(problems)}}, status=400)
        failure = self._failure()
        if failure is not None:
            return failure
        if self.replies:
            for key, value in self.replies.pop(0).items():
                setattr(self, key, value)
        if self.rejects_stream_options and "stream_options" in body:
            return web.Response(
                status=self.status, body=self.body.encode(), content_type="application/json"
            )
        model = body["model"]
        think = self.reasoning_field == "think" and bool(self.reasoning)
        if not body["stream"] or self.mode == "ignore_stream":
            thought = "".join(self.reasoning)
            content = "".join(self.pieces)
            return web.json_response(
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {
                                "role": "assistant",
                                "content": f"<think>\n{thought}</think>\n\n{content}"
                                if think
                                else content,
                                **(
                                    {self.reasoning_field: thought}
                                    if self.reasoning and not think
                                    else {}
                                ),
                                **(
                                    {"tool_calls": self.whole_tool_calls()}
                                    if self.tool_call_chunks
                                    else {}
                                ),
                            },
                            "finish_reason": self.finish_reason,
                        }
                    ],
                    **({"usage": self.usage} if self.usage else {}),
                }
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(
            sse(
                delta_chunk(model=model)
                | {"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}
            )
        )
        if think:
            for piece in ["<think>\n", *self.reasoning, "</think>\n\n"]:
                await response.write(sse(delta_chunk(piece, model=model)))
        else:
            for thought in self.reasoning:
                chunk = delta_chunk(model=model)
                chunk["choices"][0]["delta"] = {self.reasoning_field: thought}
                await response.write(sse(chunk))
        for index, piece in enumerate(self.pieces):
            if self.delay:
                await asyncio.sleep(self.delay)
            await response.write(sse(delta_chunk(piece, model=model)))
            if index == 0 and self.mode == "stall":
                await asyncio.sleep(self.stall_seconds)
            if index == 1 and self.mode == "drop":
                assert request.transport is not None
                request.transport.abort()
                return response
            if index == 1 and self.mode == "error_event":
                await response.write(sse({"error": {"message": "model overloaded"}}))
                return response
            if index == 1 and self.mode == "bad_json":
                await response.write(b'data: {"choices": [ nope\n\n')
                return response
        for calls in self.tool_call_chunks:
            chunk = delta_chunk(model=model)
            chunk["choices"][0]["delta"] = {"tool_calls": calls}
            await response.write(sse(chunk))
        if self.mode == "cut":
            return response  # ends cleanly, without finish_reason or [DONE]
        await response.write(sse(delta_chunk(finish=self.finish_reason, model=model)))
        asked = (body.get("stream_options") or {}).get("include_usage") is True
        if self.usage and (asked or not self.usage_when_asked):
            await response.write(
                sse(delta_chunk(model=model) | {"choices": [], "usage": self.usage})
            )
        await response.write(sse("[DONE]"))
        return response


# -- proxies ------------------------------------------------------------------------------------


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


class ForwardProxy(ServerThread):
    """An HTTP forward proxy: absolute-form requests and CONNECT. Records what it was asked."""

    def __init__(self, *, require_auth: str | None = None) -> None:
        super().__init__()
        self.seen: list[str] = []
        self.auth_headers: list[str | None] = []
        self.require_auth = require_auth
        self._server: asyncio.Server | None = None

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        headers = [line for line in lines[1:] if line]
        auth = next(
            (
                h.split(":", 1)[1].strip()
                for h in headers
                if h.lower().startswith("proxy-authorization:")
            ),
            None,
        )
        self.seen.append(f"{method} {target}")
        self.auth_headers.append(auth)
        if self.require_auth is not None and auth != self.require_auth:
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        if method == "CONNECT":
            host, port = target.rsplit(":", 1)
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
        else:
            from urllib.parse import urlsplit

            parts = urlsplit(target)
            up_reader, up_writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            # One request per connection ("Connection: close"), so each request of a client
            # that keeps connections alive comes back here to be seen.
            hop = ("proxy-", "connection:", "keep-alive:")
            kept = [h for h in headers if not h.lower().startswith(hop)] + ["Connection: close"]
            up_writer.write(
                (f"{method} {path} {version}\r\n" + "\r\n".join(kept) + "\r\n\r\n").encode(
                    "latin-1"
                )
            )
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


class Socks5Proxy(ServerThread):
    """A minimal SOCKS5 proxy (no authentication, CONNECT only). Records the targets."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []
        self._server: asyncio.Server | None = None

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        version, count = await reader.readexactly(2)
        assert version == 5
        await reader.readexactly(count)
        writer.write(b"\x05\x00")  # no authentication
        _, command, _, kind = await reader.readexactly(4)
        assert command == 1  # CONNECT
        if kind == 1:
            host = ".".join(str(b) for b in await reader.readexactly(4))
        elif kind == 3:
            (length,) = await reader.readexactly(1)
            host = (await reader.readexactly(length)).decode()
        else:
            raise AssertionError("IPv6 not supported by this test proxy")
        (port,) = struct.unpack("!H", await reader.readexactly(2))
        self.seen.append(f"{host}:{port}")
        target = "127.0.0.1" if host == "localhost" else host
        up_reader, up_writer = await asyncio.open_connection(target, port)
        writer.write(b"\x05\x00\x00\x01" + bytes(4) + b"\x00\x00")
        await writer.drain()
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


# -- the fake OpenAI-compatible service, taking images --------------------------------------------

#: The media types a ``data:`` URL of an ``image_url`` part may carry.
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif")


def image_part_problems(part: Any) -> list[str]:
    """What is wrong with one content part of an OpenAI chat message (text or image_url)."""
    import base64
    import binascii

    if not isinstance(part, dict):
        return [f"a content part is not an object: {part!r}"]
    if part.get("type") == "text":
        ok = set(part) == {"type", "text"} and isinstance(part["text"], str) and part["text"]
        return [] if ok else [f"malformed text part: {part!r}"]
    if part.get("type") != "image_url" or set(part) != {"type", "image_url"}:
        return [f"unknown content part: {str(part)[:200]}"]
    inner = part["image_url"]
    url = inner.get("url") if isinstance(inner, dict) else None
    if (
        not isinstance(url, str)
        or not isinstance(inner, dict)
        or not set(inner) <= {"url", "detail"}
    ):
        return [f"malformed image_url: {str(part)[:200]}"]
    if url.startswith(("http://", "https://")):
        return []
    head, _, data = url.partition(",")
    if not head.startswith("data:") or not head.endswith(";base64"):
        return [f"image url is neither http(s) nor a base64 data URL: {url[:80]!r}"]
    if head[5:-7] not in IMAGE_TYPES:
        return [f"unsupported image type {head[5:-7]!r}"]
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return [f"image data is not base64: {data[:40]!r}"]
    return []


@dataclass
class FakeVisionOpenAI(FakeOpenAI):
    """:class:`FakeOpenAI` that also takes messages whose content is a list of parts (text and
    ``image_url``), as vision models do; each part is checked, the body recorded as sent."""

    def _check(self, request: web.Request, body: Any) -> list[str]:  # type: ignore[override]
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return FakeOpenAI._check(request, body)
        problems: list[str] = []
        plain = []
        for message in body["messages"]:
            if isinstance(message, dict) and isinstance(message.get("content"), list):
                parts = message["content"]
                if not parts:
                    problems.append(f"empty content parts: {message!r}")
                for part in parts:
                    problems += image_part_problems(part)
                if message.get("role") != "user":
                    problems.append(f"image parts in a {message.get('role')!r} message")
                message = {**message, "content": "(parts)"}
            plain.append(message)
        return problems + FakeOpenAI._check(request, {**body, "messages": plain})
