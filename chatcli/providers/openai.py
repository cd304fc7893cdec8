"""The OpenAI chat-completions protocol, written once, and the table of services that speak it.

Each service is a row of :data:`PRESETS` (name, API root, key variable); :func:`make_provider`
turns a row into a small provider class. ``config.toml`` adds rows of its own
(``[providers.NAME] type = "openai"``).

Protocol notes:

* ``POST {base}/chat/completions`` with ``model``, ``messages``, ``stream`` and any extra options
  (``-o max_tokens 100`` becomes ``"max_tokens": 100``). ``Authorization: Bearer KEY`` when a key
  is known.
* A streamed reply is SSE: ``choices[0].delta.content`` pieces (``reasoning_content`` or
  ``reasoning`` beside them are the model's thinking), a ``finish_reason`` on the last choice,
  maybe a ``usage`` object, then ``data: [DONE]``. A stream that ends with neither is
  *interrupted*, not complete (proxies and crashing servers end streams early and cleanly).
  A payload with an ``error`` key is an in-band error.
* Some servers ignore ``stream: true`` and answer with one JSON object; that is accepted.
* Models served raw write their thinking into the answer as a ``<think>…</think>`` block at its
  start (:mod:`chatcli.providers.think`): it becomes reasoning, never answer text.
* Token counts: a stream asks for them (``stream_options: {"include_usage": true}``) where the
  table says the service takes the field; a service that refuses it (HTTP 400 or 422 naming it)
  is asked again without it, and not asked with it again in this process. A turn the service
  gave no counts for gets estimated ones (four bytes a token), marked as estimated.
* ``GET {base}/models`` lists models as ``{"data": [{"id": ...}, ...]}``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final

from chatcli.core import (
    ChatRequest,
    Event,
    Finish,
    ImagePart,
    OptionSpec,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    Usage,
    finish_from,
)
from chatcli.errors import (
    ConfigError,
    MissingAuthError,
    ProtocolError,
    ProviderError,
    ResponseStatusError,
    StreamInterruptedError,
    UsageError,
    check_url,
    quote,
)
from chatcli.providers.base import AsyncGeneratorProvider, ProviderConfig, check_messages
from chatcli.providers.think import ThinkSplitter, as_events, split_think

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger("chatcli.openai")


@dataclass(frozen=True, slots=True)
class Preset:
    """One OpenAI-compatible service."""

    name: str
    base_url: str
    #: The environment variable holding the API key, if the service takes one.
    key_env: str | None
    #: Without a key the service refuses every request, so chatcli says so before sending.
    key_required: bool
    default_model: str = ""
    #: A variable that moves the API root (``OPENAI_BASE_URL``), if the service has one.
    base_url_env: str | None = None
    description: str = ""
    #: Streams ask for token counts (``stream_options.include_usage``): the service takes the
    #: field. Off where it refuses it; a refusal is also caught, and remembered, at run time.
    include_usage: bool = True


PRESETS: Final[tuple[Preset, ...]] = (
    Preset(
        "openai",
        "https://api.openai.com/v1",
        "OPENAI_API_KEY",
        True,
        "gpt-4o-mini",
        base_url_env="OPENAI_BASE_URL",
        description="OpenAI API",
    ),
    Preset("ollama", "http://localhost:11434/v1", "OLLAMA_API_KEY", False, description="Ollama"),
    Preset(
        "lmstudio", "http://localhost:1234/v1", "LMSTUDIO_API_KEY", False, description="LM Studio"
    ),
    Preset(
        "llamacpp", "http://localhost:8080/v1", "LLAMACPP_API_KEY", False,
        description="llama.cpp server",
    ),
    Preset("vllm", "http://localhost:8000/v1", "VLLM_API_KEY", False, description="vLLM"),
    Preset(
        "openrouter", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY", True,
        "openai/gpt-4o-mini", description="OpenRouter",
    ),
    Preset(
        "groq", "https://api.groq.com/openai/v1", "GROQ_API_KEY", True, "llama-3.1-8b-instant",
        description="Groq",
    ),
    Preset(
        "deepseek", "https://api.deepseek.com/v1", "DEEPSEEK_API_KEY", True, "deepseek-chat",
        description="DeepSeek",
    ),
    # Mistral refuses stream_options (HTTP 422, "extra_forbidden") and sends the counts in its
    # last chunk unasked.
    Preset(
        "mistral", "https://api.mistral.ai/v1", "MISTRAL_API_KEY", True, "mistral-small-latest",
        description="Mistral AI", include_usage=False,
    ),
    Preset(
        "together", "https://api.together.xyz/v1", "TOGETHER_API_KEY", True,
        "meta-llama/Llama-3.3-70B-Instruct-Turbo", description="Together AI",
    ),
    Preset(
        "gemini", "https://generativelanguage.googleapis.com/v1beta/openai", "GEMINI_API_KEY",
        True, "gemini-2.5-flash", description="Google Gemini",
    ),
    Preset(
        "xai", "https://api.x.ai/v1", "XAI_API_KEY", True, "grok-3-mini", description="xAI",
    ),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ChoiceSpec(OptionSpec):
    """An option whose value is one of a few words."""

    choices: tuple[str, ...] = ()

    def check(self, value: Any, provider: str) -> Any:
        OptionSpec.check(self, value, provider)
        if value not in self.choices:
            words = f"{', '.join(self.choices[:-1])} or {self.choices[-1]}"
            raise UsageError(f"{provider}: -o {self.name} {value!r}: expected {words}")
        return value


class OpenAICompatible(AsyncGeneratorProvider):
    """A service speaking the OpenAI chat-completions protocol. Subclasses are table rows."""

    kind = "openai-compatible"
    supports_stream = True
    supports_system_message = True
    supports_message_history = True
    # The protocol carries images; whether the model reads them is the service's to say.
    supports_images = True
    supports_tools = True
    #: OpenAI takes images up to 20 MB each (as sent, in a data URL).
    max_image_bytes = 20 * 1024 * 1024
    lists_models = True
    # Any other option goes to the service as a body field: each service has its own.
    open_options = True
    option_specs = (
        OptionSpec("max_tokens", (int,), "the longest answer, in tokens"),
        OptionSpec("top_p", (float,), "nucleus sampling"),
        OptionSpec("seed", (int,), "a seed for repeatable sampling"),
        OptionSpec("stop", (str, list), "text (or a list of texts) that ends the answer"),
        OptionSpec("presence_penalty", (float,)),
        OptionSpec("frequency_penalty", (float,)),
        ChoiceSpec(
            "reasoning_effort", (str,), "how long a reasoning model thinks",
            ("low", "medium", "high"),
        ),
    )  # fmt: skip
    key_env: ClassVar[str | None] = None
    key_required: ClassVar[bool] = False
    base_url_env: ClassVar[str | None] = None
    #: Context lengths the services' model lists gave this process: (provider, root, model).
    listed_contexts: ClassVar[dict[tuple[str, str, str], int]] = {}
    description: ClassVar[str] = ""
    include_usage: ClassVar[bool] = True
    #: The services (name, API root) that refused ``stream_options`` in this process.
    refused_stream_options: ClassVar[set[tuple[str, str]]] = set()

    # -- configuration ----------------------------------------------------------------------

    @classmethod
    def configure(
        cls,
        env: Mapping[str, str],
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        **rest: Any,
    ) -> ProviderConfig:
        """Also settles the key (``api_key``, else the service's variable) and the API root
        (``base_url``, else the service's variable such as ``OPENAI_BASE_URL``)."""
        if not base_url and cls.base_url_env:
            base_url = env.get(cls.base_url_env) or None
        if not api_key and cls.key_env:
            api_key = env.get(cls.key_env) or None
        return super().configure(env, base_url=base_url, api_key=api_key, **rest)

    def _headers(self) -> dict[str, str]:
        from chatcli import __version__

        headers = {
            "Accept": "application/json, text/event-stream",
            "User-Agent": f"chatcli/{__version__}",
        }
        key = self.config.api_key
        if key:
            headers["Authorization"] = f"Bearer {key}"
        else:
            self.preflight()
        return headers

    def preflight(self) -> None:
        if self.key_required and not self.config.api_key:
            raise MissingAuthError(
                f"no API key: set {self.key_env} (or api_key_env in config.toml)",
                provider=self.name,
            )

    @contextlib.asynccontextmanager
    async def _call(
        self, method: str, path: str, *, body: Any = None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One request to the API, its HTTP errors raised; failures while reading it mapped."""
        from chatcli.providers import http

        async with http.api_call(
            self.name,
            method,
            f"{self.root}/{path}",
            headers=self._headers(),
            body=body,
            proxy=self.config.proxy,
            timeout=self.config.timeout,
            auth_hint=self._auth_hint(),
            secrets=[self.config.api_key],
        ) as response:
            yield response

    def _auth_hint(self) -> str:
        return f"check {self.key_env}" if self.key_env else ""

    def describe(self) -> dict[str, Any]:
        facts = super().describe()
        facts["url"] = self.root
        facts["key_env"] = self.key_env
        facts["key_set"] = bool(self.config.api_key)
        facts["description"] = self.description
        facts["options"] = None  # any: they go to the service as they are
        return facts

    # -- models -----------------------------------------------------------------------------

    async def list_models(self) -> list[str]:
        """The model ids the service offers (``GET /models``)."""
        from chatcli.providers import http

        async with self._call("GET", "models") as response:
            data = await http.read_json(response, self.name)
        items = data.get("data") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise ProtocolError(
                f"unexpected model list: {quote(json.dumps(data))}", provider=self.name
            )
        ids = [item["id"] for item in items if isinstance(item, dict) and "id" in item]
        for item in items:
            length = _context_length_of(item)
            if length is not None:
                self.listed_contexts[(self.name, self.root, str(item["id"]))] = length
        return sorted(str(i) for i in ids)

    def context_tokens(self, options: Mapping[str, Any], model: str | None = None) -> int | None:
        """config.toml's ``context_length``, else what the service's model list said."""
        if self.context_length is not None:
            return self.context_length
        return self.listed_contexts.get((self.name, self.root, model or self.default_model))

    async def pick_model(self, model: str | None) -> str:
        """``model``, else the configured default, else the first model the server lists."""
        if model or self.default_model:
            return model or self.default_model
        models = await self.list_models()
        if not models:
            raise ConfigError(
                f"{self.name}: no model given and the server lists none; pass -m MODEL"
            )
        log.debug("%s: no model given, using the first listed: %s", self.name, models[0])
        return models[0]

    # -- chat -------------------------------------------------------------------------------

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        """Yield the answer as the service sends it."""
        from chatcli.providers import http

        check_messages(request.messages, self.name)
        body: dict[str, Any] = {
            "model": request.model,
            "messages": wire_messages(request),
            "stream": request.stream,
        }
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": tool.name,
                        "description": tool.description,
                        "parameters": dict(tool.parameters),
                    },
                }
                for tool in request.tools
            ]
        service = (self.name, self.root)
        ask_usage = (
            request.stream
            and self.include_usage
            and "stream_options" not in request.options  # -o stream_options: sent as given
            and service not in self.refused_stream_options
        )
        if ask_usage:
            body["stream_options"] = {"include_usage": True}
        body.update(request.options)
        if request.tools and request.tool_choice == "none":
            body["tool_choice"] = "none"  # the last round: over a -o tool_choice too
        async with contextlib.AsyncExitStack() as stack:
            try:
                response = await stack.enter_async_context(
                    self._call("POST", "chat/completions", body=body)
                )
            except ResponseStatusError as exc:
                if not (ask_usage and _refuses_stream_options(exc)):
                    raise
                log.info("%s: %s refuses stream_options; asking without it", self.name, self.root)
                self.refused_stream_options.add(service)
                del body["stream_options"]
                response = await stack.enter_async_context(
                    self._call("POST", "chat/completions", body=body)
                )
            # Servers do not always honour ``stream``: read what was sent, not what was asked.
            if "text/event-stream" in response.headers.get("Content-Type", ""):
                replies = self._read_stream(response)
            else:
                replies = _each(self._whole_reply(await http.read_json(response, self.name)))
            output, counted = 0, False
            async for event in replies:
                if isinstance(event, TextDelta | ReasoningDelta):
                    output += len(event.text.encode("utf-8", "surrogatepass"))
                elif isinstance(event, Usage):
                    counted = True
                elif isinstance(event, Finish) and not counted:
                    yield estimated_usage(request, output)
                yield event

    async def _read_stream(self, response: aiohttp.ClientResponse) -> AsyncIterator[Event]:
        from chatcli.providers import http

        done = False
        finish_reason: str | None = None
        events = 0  # payloads other than [DONE]
        answered = reasoned = called = False
        thinking = ThinkSplitter()
        async for event in http.iter_sse(response, self.name):
            data = event.data.strip()
            if not data:
                continue
            if data == "[DONE]":
                done = True
                break
            events += 1
            try:
                chunk = json.loads(data)
            except (ValueError, RecursionError):  # nested too deep: not JSON we read
                raise ProtocolError(
                    f"malformed JSON in the stream: {quote(data)}", provider=self.name
                ) from None
            if not isinstance(chunk, dict):
                raise ProtocolError(f"unexpected stream event: {quote(data)}", provider=self.name)
            if chunk.get("error"):
                message = http.error_message_from_body(data) or "error event in the stream"
                raise ProviderError(f"the service reported: {quote(message)}", provider=self.name)
            usage = _usage(chunk.get("usage"))
            if usage is not None:
                yield usage
            choices = chunk.get("choices")
            if not isinstance(choices, list):
                if usage is not None:
                    continue  # the usage-only chunk some servers send last
                raise ProtocolError(
                    f"stream event without choices: {quote(data)}", provider=self.name
                )
            for choice in choices[:1]:  # n=1: one answer
                if not isinstance(choice, dict):
                    raise ProtocolError(f"malformed choice: {quote(data)}", provider=self.name)
                delta = choice.get("delta") or {}
                if isinstance(delta, dict):
                    pieces: list[TextDelta | ReasoningDelta] = []
                    thought = _thought(delta)
                    if thought:
                        pieces.append(ReasoningDelta(thought))
                    content = delta.get("content")
                    if isinstance(content, str) and content:
                        pieces.extend(as_events(thinking.feed(content)))
                    for piece in pieces:
                        answered = answered or isinstance(piece, TextDelta)
                        reasoned = reasoned or isinstance(piece, ReasoningDelta)
                        yield piece
                    for call in _tool_call_deltas(delta.get("tool_calls"), data, self.name):
                        called = True
                        yield call
                if choice.get("finish_reason"):
                    finish_reason = str(choice["finish_reason"])
        for piece in as_events(thinking.close()):  # what it held back: a stream end tells
            answered = answered or isinstance(piece, TextDelta)
            reasoned = reasoned or isinstance(piece, ReasoningDelta)
            yield piece
        if not answered and not called:
            why = _no_text(events, done, reasoned, finish_reason)
            raise ProtocolError(why, provider=self.name)
        if not done and finish_reason is None:
            raise StreamInterruptedError(
                "the stream ended before its end marker; the answer is incomplete",
                provider=self.name,
            )
        yield finish_from(finish_reason)

    def _whole_reply(self, data: Any) -> list[Event]:
        try:
            choice = data["choices"][0]
            message = choice["message"]
            content = message.get("content")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise ProtocolError(
                f"unexpected reply: {quote(json.dumps(data))}",
                provider=self.name,
            ) from None
        if content is not None and not isinstance(content, str):
            raise ProtocolError(
                f"reply content is not text: {quote(json.dumps(data))}", provider=self.name
            )
        events: list[Event] = []
        thought = _thought(message)
        if thought:
            events.append(ReasoningDelta(thought))
        events.extend(as_events(split_think(content or "")))
        events.extend(_tool_call_deltas(message.get("tool_calls"), json.dumps(message), self.name))
        usage = _usage(data.get("usage"))
        if usage is not None:
            events.append(usage)
        reason = choice.get("finish_reason") if isinstance(choice, dict) else None
        events.append(finish_from(str(reason) if reason else None))
        return events


def _tool_call_deltas(raw: Any, data: str, provider: str) -> list[ToolCallDelta]:
    """The pieces of tool calls in a delta's (or a whole message's) ``tool_calls``: each with
    its ``index``, and an ``id``, ``function.name`` and ``function.arguments`` piece as sent."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ProtocolError(f"malformed tool_calls: {quote(data)}", provider=provider)
    pieces = []
    for position, call in enumerate(raw):
        function = call.get("function") if isinstance(call, dict) else None
        # (a server that leaves the index out sends one call at a time, in list order)
        index = call.get("index", position) if isinstance(call, dict) else None
        if not isinstance(function, dict | None) or not isinstance(index, int):
            raise ProtocolError(f"malformed tool call: {quote(data)}", provider=provider)
        function = function or {}
        call_id, name, arguments = call.get("id"), function.get("name"), function.get("arguments")
        if not all(isinstance(v, str | None) for v in (call_id, name)) or not isinstance(
            arguments, str | dict | None
        ):
            raise ProtocolError(f"malformed tool call: {quote(data)}", provider=provider)
        if isinstance(arguments, dict):  # a few servers send the object itself
            arguments = json.dumps(arguments)
        pieces.append(ToolCallDelta(index, call_id or None, name or None, arguments or ""))
    return pieces


def wire_messages(request: ChatRequest) -> list[dict[str, Any]]:
    """The conversation as the protocol takes it: a message of text alone has its text as
    ``content`` (as it always had); one with images has a list of content parts, each image an
    ``image_url`` part holding a ``data:`` URL, in the message's order, then its text part. An
    answer that called tools carries them (``tool_calls``), and each result is a ``tool``
    message naming the call it answers."""
    wire: list[dict[str, Any]] = []
    for message in request.messages:
        if message.role == "tool":
            wire.append(
                {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
            )
            continue
        if message.tool_calls:
            wire.append(
                {
                    "role": message.role,
                    # Text even when there was none before the calls: the protocol allows
                    # null, but llama.cpp's Python server refuses null and a missing field.
                    "content": message.content,
                    "tool_calls": [
                        {
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": call.arguments},
                        }
                        for call in message.tool_calls
                    ],
                }
            )
            continue
        if not message.images:
            wire.append({"role": message.role, "content": message.content})
            continue
        parts: list[dict[str, Any]] = []
        for part in message.parts:
            if isinstance(part, ImagePart):
                parts.append({"type": "image_url", "image_url": {"url": part.data_url()}})
            elif part.text:
                parts.append({"type": "text", "text": part.text})
        wire.append({"role": message.role, "content": parts})
    return wire


async def _each(events: list[Event]) -> AsyncIterator[Event]:
    for event in events:
        yield event


def estimated_usage(request: ChatRequest, output_bytes: int) -> Usage:
    """Token counts for a service that gave none, at four bytes a token (rounded up), marked
    as estimated: the conversation's text in, ``output_bytes`` of answer and reasoning out."""
    prompt_bytes = sum(len(m.content.encode("utf-8", "surrogatepass")) for m in request.messages)
    return Usage(-(-prompt_bytes // 4), -(-output_bytes // 4), estimated=True)


def _refuses_stream_options(exc: ResponseStatusError) -> bool:
    """Whether the service refused the request for its ``stream_options`` (Groq said "property
    'stream_options' is unsupported" with 400, Mistral "extra_forbidden" with 422)."""
    return exc.status in (400, 422) and any(
        word in exc.message for word in ("stream_options", "include_usage")
    )


def _no_text(events: int, done: bool, reasoned: bool, finish_reason: str | None) -> str:
    """Why a stream the server sent without an error status brought no answer text."""
    if reasoned:
        held = "only the model's reasoning"
    elif events:
        held = "no answer text"
    else:
        held = "only its end marker" if done else "nothing at all"
    line = f"no text arrived: the server answered with a stream holding {held}"
    if finish_reason:
        line += f"; it ended with finish reason {quote(finish_reason, 40)!r}"
    if finish_reason == "length":
        line += " (-o max_tokens N allows a longer answer)"
    return line


def _thought(message: dict[str, Any]) -> str | None:
    """The model's thinking in a delta or a message, never answer text: DeepSeek, llama.cpp
    and vLLM say ``reasoning_content``; OpenRouter and Ollama say ``reasoning``."""
    for key in ("reasoning_content", "reasoning"):
        thought = message.get(key)
        if isinstance(thought, str) and thought:
            return thought
    return None


def _usage(raw: Any) -> Usage | None:
    """Token counts from an OpenAI ``usage`` object, when it holds any."""
    if not isinstance(raw, dict):
        return None

    def count(key: str) -> int | None:
        value = raw.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    prompt, completion = count("prompt_tokens"), count("completion_tokens")
    if prompt is None and completion is None:
        return None
    return Usage(input_tokens=prompt, output_tokens=completion)


def make_provider(preset: Preset) -> type[OpenAICompatible]:
    """A provider class for one row of the table."""
    attrs: dict[str, Any] = {
        "name": preset.name,
        "url": preset.base_url,
        "key_env": preset.key_env,
        "key_required": preset.key_required,
        "needs_auth": preset.key_required,
        "default_model": preset.default_model,
        "base_url_env": preset.base_url_env,
        "description": preset.description,
        "include_usage": preset.include_usage,
        "supports_gpt_35_turbo": preset.name == "openai",
        "__doc__": f"{preset.description or preset.name} (OpenAI-compatible).",
    }
    class_name = "".join(part.capitalize() for part in preset.name.replace("-", "_").split("_"))
    return type(class_name or "Custom", (OpenAICompatible,), attrs)


def preset_from_config(name: str, table: Mapping[str, Any], base: Preset | None = None) -> Preset:
    """A table row from ``[providers.NAME]`` in config.toml, over a built-in row if one exists."""
    base_url = table.get("base_url") or (base.base_url if base else None)
    if not base_url:
        raise ConfigError(f"providers.{name}: an OpenAI-compatible provider needs base_url")
    check_url(base_url, what=f"providers.{name}.base_url", error=ConfigError)
    key_env = table.get("api_key_env") or (base.key_env if base else None)
    return Preset(
        name=name,
        base_url=str(base_url),
        key_env=key_env,
        key_required=bool(table.get("api_key_env")) or (base.key_required if base else False),
        default_model=table.get("model") or (base.default_model if base else ""),
        base_url_env=None if table.get("base_url") else (base.base_url_env if base else None),
        description=base.description if base else f"{name} (config.toml)",
        include_usage=base.include_usage if base else True,
    )


#: Where services' model lists give a model's context length, in tokens.
_CONTEXT_FIELDS: Final = ("context_length", "max_model_len", "max_context_length", "context_window")


def _context_length_of(item: Any) -> int | None:
    """A model list entry's context length (OpenRouter, vLLM, LM Studio...), when it gives one."""
    if not isinstance(item, dict) or "id" not in item:
        return None
    for field_name in _CONTEXT_FIELDS:
        value = item.get(field_name)
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 10**9:
            return value
    return None
