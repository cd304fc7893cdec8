"""The server: its routes, the guard in front of them (token, Host, Origin), the model
list, and each chat request answered by :func:`chatcli.turn.run_turn` (see the package's
docstring)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hmac
import ipaddress
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any, Final, Literal

from aiohttp import web

from chatcli import __version__
from chatcli.core import (
    Event,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
)
from chatcli.errors import (
    ChatcliError,
    ProviderError,
    UsageError,
    one_line,
)
from chatcli.providers import Registry, site_offline
from chatcli.render import NullRenderer
from chatcli.render.sanitize import sanitize
from chatcli.server.errors import ApiError, api_error_from
from chatcli.server.record import Recorder
from chatcli.server.request import parse_messages, parse_tools
from chatcli.server.wire import (
    FINISH,
    Channel,
    Chunks,
    call_json,
    completion_id,
    data_event,
    usage_json,
)
from chatcli.turn import Turn, TurnRequest, preflight, run_turn

if TYPE_CHECKING:
    from chatcli.config import Settings
    from chatcli.store import Stores

log = logging.getLogger("chatcli.server")

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8808
#: The largest request body read (images come inline, base64-encoded).
MAX_BODY: Final = 32 * 1024 * 1024
#: The longest answer kept for one request, in characters; past it the answer is cut and says so.
MAX_ANSWER: Final = 8 * 1024 * 1024
#: Seconds the model list is kept before providers are asked again.
MODELS_TTL: Final = 30.0
#: Seconds a provider has to list its models for ``/v1/models``.
MODELS_TIMEOUT: Final = 5.0
#: Seconds open requests get to finish when the server stops, before they are cut.
SHUTDOWN_GRACE: Final = 5.0
#: Request fields passed to the provider as options (``-o``) when it takes them, else left
#: out (named in the ``X-Chatcli-Ignored`` header of the answer).
OPTION_FIELDS: Final = (
    "max_tokens",
    "max_completion_tokens",
    "top_p",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "response_format",
    "logit_bias",
    "reasoning_effort",
    "parallel_tool_calls",
    "user",
)
#: Request fields that change nothing here (accepted, not passed on).
NO_EFFECT: Final = frozenset({"stream_options", "logprobs", "top_logprobs", "store", "metadata"})
#: Every field a request may carry that is not named in ``X-Chatcli-Ignored``.
_TAKEN_FIELDS: Final = frozenset(
    {"model", "messages", "n", "temperature", "stream", "tools", "tool_choice"}
    | set(OPTION_FIELDS)
    | NO_EFFECT
)
PAGE_FILES: Final[Mapping[str, str]] = {
    "/": "index.html",
    "/chat.js": "chat.js",
    "/chat.css": "chat.css",
}
_CONTENT_TYPES: Final = {
    "html": "text/html; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
}
#: The page runs only its own script and style, and talks only to this server.
PAGE_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADER_NAME: Final = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}")
_LOOPBACK_NAMES: Final = frozenset({"localhost", "localhost.", "ip6-localhost"})


@dataclass(frozen=True, kw_only=True)
class ServeOptions:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    #: Required on every API request when set (``Authorization: Bearer TOKEN``).
    token: str | None = None
    #: Web origins (``https://app.example``) whose pages may call the API.
    cors_origins: tuple[str, ...] = ()
    #: Record each exchange as a session.
    save: bool = False
    #: Seconds an upstream request may take (``None``: the configured timeout).
    timeout: float | None = None


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine."""
    name = host.strip("[]").lower()
    if name in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(slots=True)
class _Exchange:
    """One chat request as it is answered: what the log line and ``--save`` need."""

    model: str = "-"
    status: int = 0
    first: float | None = None
    turn: Turn | None = None


@dataclass(frozen=True, slots=True)
class _Parsed:
    """A chat request, checked and turned into chatcli's terms."""

    turn: TurnRequest
    stream: bool
    include_usage: bool
    #: Fields that are no option of any provider (the options are judged by each provider).
    ignored: tuple[str, ...]
    #: The client's tools: calls go back to it (they are not run here).
    client_tools: bool
    label: str


#: The request being answered (the middleware sets it; the handler fills it in for the log).
_EXCHANGE: Final[contextvars.ContextVar[_Exchange]] = contextvars.ContextVar("exchange")


class Server:
    """The application and what it shares between requests (the registry, the model list,
    the streams open, the sessions recorded)."""

    def __init__(
        self,
        settings: Settings,
        stores: Stores,
        options: ServeOptions,
        *,
        say: Callable[[str], None],
        default_provider: str | None,
    ) -> None:
        self.settings = settings
        self.stores = stores
        self.options = options
        self.registry = Registry.from_settings(settings, stores)
        self.default_provider = default_provider
        self._say = say
        self._models: tuple[float, list[dict[str, Any]]] | None = None
        self._models_lock = asyncio.Lock()
        #: Set when the server stops: open streams end with an error event, new requests 503.
        self.stopping = asyncio.Event()
        self._open: set[Channel] = set()
        #: ``--save`` keeps the exchanges.
        self.recorder = Recorder(stores)
        self._page: dict[str, bytes] = {}
        self.active = 0

    # -- the application -------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._guard])
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/v1/models/{model:.+}", self.model)
        app.router.add_get("/health", self.health)
        for path in PAGE_FILES:
            app.router.add_get(path, self.page)
        return app

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        started = time.monotonic()
        exchange = _Exchange()
        _EXCHANGE.set(exchange)
        origin = request.headers.get("Origin")
        allowed_origin = origin is not None and origin in self.options.cors_origins
        response: web.StreamResponse
        self.active += 1
        try:
            response = await self._checked(request, handler, origin, allowed_origin)
        except ApiError as exc:
            response = exc.response()
        except web.HTTPException as exc:
            response = ApiError(
                exc.status, exc.reason, code="not_found" if exc.status == 404 else None
            ).response()
        except asyncio.CancelledError:
            exchange.status = 499  # the client went away (or the server stops)
            self._log(request, exchange, started)
            raise
        except Exception as exc:
            log.error("%s %s failed: %r (a bug; -v shows where)", request.method, request.path, exc)
            log.debug("the failure", exc_info=exc)
            response = api_error_from(exc).response()
        finally:
            self.active -= 1
        if allowed_origin and origin is not None and not response.prepared:
            response.headers.update(_cors(origin))
        exchange.status = exchange.status or response.status
        self._log(request, exchange, started)
        return response

    async def _checked(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Any],
        origin: str | None,
        allowed_origin: bool,
    ) -> web.StreamResponse:
        if request.method == "OPTIONS":
            return self._preflight(request, allowed_origin)
        token = self.options.token
        if token is None and not self._loopback_host(request.host):
            # A name that is not this machine's: a page using DNS rebinding, or a proxy.
            raise ApiError(403, "the Host header must name this machine", kind="forbidden")
        if origin is not None and not allowed_origin and origin != self._own_origin(request):
            raise ApiError(
                403,
                "requests from other web pages are refused (chatcli serve --cors-origin "
                "ORIGIN allows one)",
                kind="forbidden",
            )
        if token is not None and request.path.startswith("/v1/"):
            given = request.headers.get("Authorization", "")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                value.strip().encode(), token.encode()
            ):
                raise ApiError(
                    401,
                    "a valid token is needed: Authorization: Bearer TOKEN "
                    "(chatcli serve printed it when it started)",
                    kind="invalid_request_error",
                    code="invalid_api_key",
                )
        if self.stopping.is_set():
            raise ApiError(503, "the server is shutting down", kind="server_error")
        response: web.StreamResponse = await handler(request)
        return response

    def _preflight(self, request: web.Request, allowed: bool) -> web.StreamResponse:
        if not allowed:
            raise ApiError(403, "this origin is not allowed (--cors-origin)", kind="forbidden")
        # The headers the page asks to send (the official clients send several of their own):
        # any, for an origin the user allows, as long as they are header names.
        asked = request.headers.get("Access-Control-Request-Headers", "")
        names = [n.strip() for n in asked.split(",") if _HEADER_NAME.fullmatch(n.strip())]
        return web.Response(
            status=204,
            headers={
                **_cors(request.headers.get("Origin", "")),
                "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                "Access-Control-Allow-Headers": ", ".join(
                    dict.fromkeys(["Authorization", "Content-Type", *names[:50]])
                ),
                "Access-Control-Max-Age": "600",
            },
        )

    def _loopback_host(self, host: str) -> bool:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        if name.startswith("["):
            name = name[1 : name.find("]")] if "]" in name else name
        return is_loopback(name)

    @staticmethod
    def _own_origin(request: web.Request) -> str:
        return f"{request.scheme}://{request.host}"

    def _log(self, request: web.Request, exchange: _Exchange, started: float) -> None:
        """One line a request: method, path, model, status, time to first token, total, and
        how the answer ended when it is not whole (``length``, ``interrupted: why``)."""
        total = time.monotonic() - started
        first = f"{exchange.first - started:.2f}s" if exchange.first is not None else "-"
        turn = exchange.turn
        model = (
            f"{turn.provider}/{turn.model}" if turn is not None and turn.model else exchange.model
        )
        model = model[:120]
        line = (
            f"{request.method} {request.path[:200]} {model} {exchange.status} {first} {total:.2f}s"
        )
        if turn is not None and turn.status not in ("pending", "complete"):
            line += f" {turn.status}"  # cut (length, ...), interrupted, error
            if turn.error:
                line += f": {turn.error[:300]}"
        self._say(sanitize(one_line(line)))

    # -- routes ----------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "version": __version__})

    async def page(self, request: web.Request) -> web.Response:
        name = PAGE_FILES[request.path]
        body = self._page.get(name)
        if body is None:
            body = self._page[name] = (
                resources.files("chatcli.server").joinpath("page", name).read_bytes()
            )
        return web.Response(
            body=body,
            headers={
                "Content-Type": _CONTENT_TYPES[name.rsplit(".", 1)[1]],
                "Content-Security-Policy": PAGE_POLICY,
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
                "Cache-Control": "no-cache",
            },
        )

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": await self.model_list()})

    async def model(self, request: web.Request) -> web.Response:
        wanted = request.match_info["model"]
        for entry in await self.model_list():
            if entry["id"] == wanted:
                return web.json_response(entry)
        raise ApiError(404, f"no model {wanted!r} here", param="model", code="model_not_found")

    async def model_list(self) -> list[dict[str, Any]]:
        """Every model of the providers that can answer now (a key set, a runtime there),
        ``PROVIDER/MODEL``, the default first; kept for :data:`MODELS_TTL` seconds."""
        async with self._models_lock:
            now = time.monotonic()
            if self._models is not None and now - self._models[0] < MODELS_TTL:
                return self._models[1]
            names = self.registry.names()
            found = await asyncio.gather(*(self._provider_models(name) for name in names))
            entries: list[dict[str, Any]] = []
            for name, models in zip(names, found, strict=True):
                for model in models:
                    entries.append(
                        {"id": f"{name}/{model}", "object": "model", "created": 0, "owned_by": name}
                    )
            default = self._default_model_id()
            entries.sort(key=lambda e: e["id"] != default)  # stable: the default first
            self._models = (now, entries)
            return entries

    def _default_model_id(self) -> str | None:
        if self.default_provider is None:
            return None
        try:
            cls = self.registry.get(self.default_provider)
        except ChatcliError:
            return None
        model = self.settings.model_for(cls.name) or cls.default_model
        return f"{cls.name}/{model}" if model else None

    async def _provider_models(self, name: str) -> list[str]:
        try:
            provider = self.registry.create(name)
            provider.preflight()  # no key, no runtime: it cannot answer, so it lists nothing
            if site_offline(provider.root):
                return []  # a seed service whose site is gone (a mirror's URL lists it)
            async with asyncio.timeout(MODELS_TIMEOUT):
                models = await provider.list_models()
        except (ChatcliError, TimeoutError, OSError) as exc:
            log.debug("%s lists no models: %s", name, exc)
            return []
        return [m for m in dict.fromkeys(models) if isinstance(m, str) and m][:1000]

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        exchange = _EXCHANGE.get()
        kind = request.headers.get("Content-Type", "").partition(";")[0].strip().lower()
        if kind != "application/json":
            raise ApiError(415, "send the request as JSON (Content-Type: application/json)")
        try:
            body = await request.json(loads=json.loads)
        except web.HTTPRequestEntityTooLarge:
            raise ApiError(413, f"the request is over {MAX_BODY // (1024 * 1024)} MiB") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the body is not JSON: {one_line(str(exc))[:200]}") from None
        if isinstance(body, dict) and isinstance(body.get("model"), str):
            exchange.model = body["model"][:120]  # (for the log, even when it is refused)
        parsed = self.parse(body)
        exchange.model = parsed.label
        try:
            await asyncio.to_thread(preflight, parsed.turn, self.registry)
        except ChatcliError as exc:
            raise api_error_from(exc) from None
        turn = Turn(provider=parsed.turn.provider)
        exchange.turn = turn
        if parsed.stream:
            return await self._stream(request, parsed, turn, exchange)
        return await self._whole(request, parsed, turn, exchange)

    # -- the request -----------------------------------------------------------------------

    def parse(self, body: Any) -> _Parsed:
        """The request as chatcli's :class:`TurnRequest`; a clear :class:`ApiError` (400,
        404) for what is wrong with it."""
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object")
        chain = self._chain(body.get("model"))
        provider, model = chain[0]
        messages = parse_messages(body.get("messages"))
        n = body.get("n", 1)
        if n is not None and (isinstance(n, bool) or n != 1):
            raise ApiError(400, "n must be 1 (one answer a request)", param="n")
        temperature = body.get("temperature")
        if temperature is not None and (
            isinstance(temperature, bool)
            or not isinstance(temperature, int | float)
            or not 0 <= temperature <= 2  # (as --temperature, and as OpenAI's own API)
        ):
            raise ApiError(400, "temperature must be a number from 0 to 2", param="temperature")
        stream = body.get("stream") or False
        if not isinstance(stream, bool):
            raise ApiError(400, "stream must be true or false", param="stream")
        stream_options = body.get("stream_options") or {}
        include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage")
        tools = parse_tools(body.get("tools"))
        choice = body.get("tool_choice")
        tool_choice: Literal["auto", "none"] = "none" if choice == "none" else "auto"
        cls = self.registry.get(provider)
        if tools and not cls.supports_tools:
            raise ApiError(
                400,
                f"{cls.name} cannot call tools; an OpenAI-compatible provider or anthropic can",
                param="tools",
            )
        options: dict[str, Any] = {}
        fields = list(OPTION_FIELDS)
        if choice not in (None, "auto", "none"):
            fields.append("tool_choice")  # required, or a function: the provider's to honour
        for key in fields:
            if body.get(key) is None:
                continue
            value = body[key]
            if key == "max_completion_tokens" and cls.name != "openai":
                key = "max_tokens"  # (most servers know only the older name)
            if key == "tool_choice":
                try:
                    cls.check_options({key: value})
                except UsageError:
                    raise ApiError(
                        400, f"{cls.name} takes only tool_choice auto or none", param="tool_choice"
                    ) from None
            # Each provider of the chain takes what it can (loose_options); the answer's
            # X-Chatcli-Ignored names what the one that answered did not get.
            options[key] = value
        ignored = [key for key in body if key not in _TAKEN_FIELDS]
        request = TurnRequest(
            provider=cls.name,
            messages=messages,
            model=model,
            temperature=float(temperature) if temperature is not None else None,
            options=options,
            stream=True,
            timeout=self.options.timeout
            if self.options.timeout is not None
            else self.settings.timeout,
            retries=self.settings.retries if self.settings.retries is not None else 2,
            fallback=tuple(name for name, _ in chain[1:]),
            fallback_models={name: m for name, m in chain[1:] if m},
            loose_options=True,
            tools=tools,
            tool_choice=tool_choice,
        )
        label = ",".join(f"{name}/{m}" if m else name for name, m in chain)
        return _Parsed(
            turn=request,
            stream=stream,
            include_usage=bool(include_usage),
            ignored=tuple(sorted(set(ignored))),
            client_tools=bool(tools),
            label=label,
        )

    def _chain(self, given: Any) -> list[tuple[str, str | None]]:
        """``model`` as (provider, model) pairs: ``PROVIDER/MODEL`` or ``PROVIDER`` (its
        default model), a bare model of the default provider, several joined by commas (the
        later ones fall back). Without any, the configured fallback follows the first."""
        if given is None or given == "":
            given = self.default_provider or ""
        if not isinstance(given, str) or not given.strip():
            raise ApiError(400, "model is required (PROVIDER/MODEL)", param="model")
        chain: list[tuple[str, str | None]] = []
        for item in given.split(","):
            item = item.strip()
            if not item:
                continue
            head, _, rest = item.partition("/")
            if head.lower() in self.registry:
                name = self.registry.get(head.lower()).name
                chain.append((name, rest or None))
            elif self.default_provider is not None and not chain and "/" not in item:
                # A bare model; with a slash it would be a provider's name mistyped, which
                # must not send the question to the default provider unasked.
                chain.append((self.registry.get(self.default_provider).name, item))
            else:
                raise ApiError(
                    404,
                    f"no provider {head[:80]!r} here: give PROVIDER/MODEL (GET /v1/models "
                    "lists them; a model whose name has a slash goes after its provider's, "
                    "openrouter/meta-llama/...)",
                    param="model",
                    code="model_not_found",
                )
        if not chain:
            raise ApiError(400, "model is required (PROVIDER/MODEL)", param="model")
        if len(chain) == 1:
            first = chain[0][0]
            for name in self.settings.fallback:
                if name in self.registry and self.registry.get(name).name != first:
                    chain.append((self.registry.get(name).name, None))
        names = [name for name, _ in chain]
        if len(set(names)) != len(names):
            raise ApiError(400, "a provider appears twice in the chain", param="model")
        return chain

    # -- answering -------------------------------------------------------------------------

    def _start(self, parsed: _Parsed, turn: Turn, channel: Channel) -> asyncio.Task[Turn]:
        """The turn, as a task whose events go into ``channel`` (waiting while it is full)."""
        size = 0

        async def on_event(event: Event) -> None:
            nonlocal size
            if isinstance(event, TextDelta | ReasoningDelta):
                size += len(event.text)
            elif isinstance(event, ToolCallDelta):
                if not parsed.client_tools:
                    return
                size += len(event.arguments) + len(event.name or "")
            else:
                return  # (usage and the end are read off the turn)
            if size > MAX_ANSWER:
                raise _TooLong(f"the answer passed the server's limit of {MAX_ANSWER:,} characters")
            await channel.put(event)

        async def answer() -> Turn:
            try:
                return await run_turn(
                    parsed.turn,
                    self.registry,
                    NullRenderer(),
                    turn=turn,
                    notice=lambda line: log.info("%s", line),
                    on_event=on_event,
                    keep_calls=parsed.client_tools,
                )
            finally:
                if self.options.save:
                    await self.recorder.save(parsed.turn.messages, turn)

        task = asyncio.ensure_future(answer())
        task.add_done_callback(lambda _: channel.close())
        self._open.add(channel)
        if self.stopping.is_set():  # (it stopped while this request was read)
            channel.close(stopping=True)
        return task

    async def _whole(
        self, request: web.Request, parsed: _Parsed, turn: Turn, exchange: _Exchange
    ) -> web.StreamResponse:
        channel = Channel()
        task = self._start(parsed, turn, channel)
        try:
            while await channel.take():
                if exchange.first is None:
                    exchange.first = time.monotonic()
            if channel.cut():
                raise ApiError(503, "the server is shutting down", kind="server_error")
            try:
                task.result()
            except Exception as exc:
                raise api_error_from(exc) from None
        finally:
            self._open.discard(channel)
            await _cancel(task)
        message: dict[str, Any] = {"role": "assistant", "content": turn.text, "refusal": None}
        if turn.reasoning:
            message["reasoning_content"] = turn.reasoning
        if turn.calls:
            message["tool_calls"] = [call_json(call) for call in turn.calls]
            message["content"] = turn.text or None
        body = {
            "id": completion_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": f"{turn.provider}/{turn.model}",
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": FINISH.get(turn.finish_reason or "stop", "stop"),
                }
            ],
            "usage": usage_json(parsed.turn, turn),
        }
        return web.json_response(body, headers=self._headers(request, parsed, turn))

    async def _stream(
        self, request: web.Request, parsed: _Parsed, turn: Turn, exchange: _Exchange
    ) -> web.StreamResponse:
        channel = Channel()
        task = self._start(parsed, turn, channel)
        try:
            # The first piece decides: a failure before any is an HTTP error status (nothing
            # is retried after a piece, so what is streamed is the answer's).
            events = await channel.take()
            if channel.cut():
                raise ApiError(503, "the server is shutting down", kind="server_error")
            if not events:
                try:
                    task.result()
                except Exception as exc:
                    raise api_error_from(exc) from None
            response = web.StreamResponse(
                headers={
                    "Content-Type": "text/event-stream; charset=utf-8",
                    "Cache-Control": "no-cache",
                    "X-Accel-Buffering": "no",
                    **self._headers(request, parsed, turn),
                }
            )
            await response.prepare(request)
            exchange.status = 200
            chunks = Chunks(completion_id(), int(time.time()), f"{turn.provider}/{turn.model}")
            out = [chunks.role()]
            while events:
                if exchange.first is None:
                    exchange.first = time.monotonic()
                # What came meanwhile goes in one write; the write waits for the client.
                out.extend(chunks.event(event) for event in events)
                await response.write("".join(out).encode())
                out.clear()
                events = await channel.take()
            if channel.cut():
                await _cancel(task)
                error = ApiError(503, "the server stopped; the answer is cut", kind="server_error")
                await response.write(data_event(error.body()))
                exchange.status = 503
                return response
            try:
                task.result()
            except Exception as exc:
                # Cut after some text: the stream says so, in the shape clients look for.
                error = api_error_from(exc)
                await response.write(data_event(error.body()))
                exchange.status = error.status
                return response
            tail = [*out, chunks.finish(turn)]
            if parsed.include_usage:
                tail.append(chunks.usage(usage_json(parsed.turn, turn)))
            tail.append("data: [DONE]\n\n")
            await response.write("".join(tail).encode())
            await response.write_eof()
            return response
        except ConnectionError:
            exchange.status = 499  # the client went away: the upstream request is cancelled
            raise asyncio.CancelledError from None
        finally:
            self._open.discard(channel)
            await _cancel(task)

    def _headers(self, request: web.Request, parsed: _Parsed, turn: Turn) -> dict[str, str]:
        """The answer's headers: the fields the provider that answers did not get (a
        fallback leaves out the options it does not take), and CORS's."""
        ignored = set(parsed.ignored)
        if turn.provider in self.registry:
            taker = self.registry.get(turn.provider)
            for key, value in parsed.turn.options.items():
                try:
                    taker.check_options({key: value})
                except UsageError:
                    ignored.add(key)
        headers = {"X-Chatcli-Ignored": ", ".join(sorted(ignored))} if ignored else {}
        origin = request.headers.get("Origin")
        if origin is not None and origin in self.options.cors_origins:
            headers.update(_cors(origin))
        return headers

    # -- sessions --------------------------------------------------------------------------

    # -- stopping --------------------------------------------------------------------------

    def close(self) -> None:
        """Once stopped: the sessions being saved are written."""
        self.recorder.close()

    def stop(self) -> None:
        """Open requests end: a stream with an error event, a whole answer with 503."""
        self.stopping.set()
        for channel in list(self._open):
            channel.close(stopping=True)


class _TooLong(ProviderError):
    """The answer passed :data:`MAX_ANSWER`."""


def _cors(origin: str) -> dict[str, str]:
    """The headers that let a page of ``origin`` (one ``--cors-origin`` allows) read an answer."""
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Expose-Headers": "X-Chatcli-Ignored",
        "Vary": "Origin",
    }


async def _cancel(task: asyncio.Task[Any]) -> None:
    if not task.done():
        task.cancel()
    # Its outcome was read already, or does not matter now.
    with contextlib.suppress(BaseException):
        await task


# -- running ---------------------------------------------------------------------------------------


@dataclass
class Running:
    """A server started by :func:`start`: where it listens, and how to stop it."""

    server: Server
    runner: web.AppRunner
    urls: list[str] = field(default_factory=list)
    #: Set to end the wait for open requests at once (a second Ctrl-C).
    hurry: bool = False

    async def stop(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Stop taking requests, end the open ones (streams with an error event), close."""
        self.server.stop()
        deadline = time.monotonic() + grace
        while self.server.active and time.monotonic() < deadline and not self.hurry:
            await asyncio.sleep(0.05)
        await self.runner.cleanup()
        self.server.close()


async def start(server: Server) -> Running:
    """Listen on the server's host and port (``0``: a free one)."""
    runner = web.AppRunner(
        server.app(), handler_cancellation=True, access_log=None, shutdown_timeout=1.0
    )
    await runner.setup()
    site = web.TCPSite(runner, server.options.host, server.options.port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise UsageError(
            f"cannot listen on {server.options.host}:{server.options.port}: {exc.strerror or exc}"
        ) from None
    running = Running(server, runner)
    for sock in getattr(site._server, "sockets", None) or []:  # (the bound port)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        running.urls.append(f"http://{shown}:{port}/")
    return running
