"""Anthropic's Messages API, spoken natively (``-p anthropic``).

Protocol notes:

* ``POST {root}/v1/messages`` with headers ``x-api-key``, ``anthropic-version`` and
  ``content-type: application/json``. The body holds ``model``, ``max_tokens`` (always: the
  API requires it), ``messages`` (user and assistant turns that alternate: chatcli merges
  consecutive turns of one role), the system prompt as the top-level ``system`` field,
  ``stream``, and ``temperature``, ``top_p``, ``top_k``, ``stop_sequences`` and ``thinking``
  when asked for (``-o thinking_budget N`` becomes ``{"type": "enabled", "budget_tokens": N}``).
* A streamed reply is SSE whose every payload names its ``type``: ``message_start`` (the
  input token count), then per content block ``content_block_start``, ``content_block_delta``
  (``text_delta`` is answer text, ``thinking_delta`` the model's thinking, ``signature_delta``
  a seal over it, ``input_json_delta`` a tool call's arguments) and ``content_block_stop``;
  then ``message_delta`` (the ``stop_reason`` and the output token count) and
  ``message_stop``, the end marker. ``ping`` may come anywhere; an ``error`` event reports a
  failure mid-stream (``overloaded_error`` is worth retrying, like HTTP 529). A stream that
  ends before ``message_stop`` is *interrupted*, whatever it held. Event types this module
  does not know are skipped, as the API asks of clients.
* Without ``stream`` the reply is one ``message`` object: ``content`` blocks, ``stop_reason``
  and ``usage``.
* Tools: the request offers them as ``tools`` (``name``, ``description``, ``input_schema``),
  with ``tool_choice: {"type": "none"}`` when the model must answer without calling any. The
  model calls them in ``tool_use`` blocks (``id``, ``name``, ``input``; streamed, the input
  comes as JSON text in ``input_json_delta`` pieces) and stops with ``tool_use``. The calls go
  back as the assistant turn's ``tool_use`` blocks, after its text; their results as
  ``tool_result`` blocks (``tool_use_id``, ``content``) of the very next user turn, every
  result of the calls in it and before any other content of that turn.
* ``GET {root}/v1/models`` lists models as ``{"data": [{"id": ...}], "has_more": ...}``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeGuard
from urllib.parse import urlencode

from chatcli.core import (
    ChatMessage,
    ChatRequest,
    Event,
    Finish,
    FinishReason,
    ImagePart,
    OptionSpec,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from chatcli.errors import (
    AuthenticationError,
    MissingAuthError,
    ProtocolError,
    ProviderError,
    RateLimitError,
    ResponseStatusError,
    StreamInterruptedError,
    UsageError,
    quote,
)
from chatcli.providers.base import AsyncGeneratorProvider, ProviderConfig, check_messages

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger("chatcli.anthropic")

#: The API version every request names (the one this module is written to).
API_VERSION: Final = "2023-06-01"
#: ``max_tokens`` when ``-o max_tokens`` is not given (a thinking budget is added to it).
DEFAULT_MAX_TOKENS: Final = 4096
#: Models asked for per page of ``GET /v1/models``, and the most pages read.
MODELS_PAGE: Final = 1000
MODELS_PAGES: Final = 10

#: ``stop_reason`` values as chatcli's reasons; any other word counts as a normal stop.
STOP_REASONS: Final[Mapping[str, FinishReason]] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "context",
    "refusal": "content_filter",
    "tool_use": "tool_calls",
}

#: The HTTP status each error ``type`` stands for (the API answers with these before a stream
#: starts); an ``error`` event mid-stream is raised as if it had come with that status, so it
#: is retried exactly when the status would be (``overloaded_error``: 529, like a 503).
ERROR_STATUSES: Final[Mapping[str, int]] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def finish(raw: str | None) -> Finish:
    """A :class:`Finish` from a ``stop_reason`` (``None``: a normal stop)."""
    return Finish(STOP_REASONS.get(raw or "end_turn", "stop"), raw)


class Anthropic(AsyncGeneratorProvider):
    """Claude models through Anthropic's Messages API."""

    name = "anthropic"
    url = "https://api.anthropic.com"
    kind = "anthropic"
    supports_stream = True
    supports_system_message = True
    supports_message_history = True
    supports_images = True
    supports_tools = True
    #: The API refuses an image over 5 MB (as sent, base64-encoded).
    max_image_bytes = 5 * 1024 * 1024
    lists_models = True
    needs_auth = True
    default_model = "claude-sonnet-4-5"
    option_specs = (
        OptionSpec("max_tokens", (int,), f"the longest answer (default {DEFAULT_MAX_TOKENS})"),
        OptionSpec("top_p", (float,), "nucleus sampling"),
        OptionSpec("top_k", (int,), "sample from the k likeliest tokens only"),
        OptionSpec("stop_sequences", (str, list), "text (or a list of texts) that ends the answer"),
        OptionSpec("thinking_budget", (int,), "tokens the model may think for before answering"),
    )  # fmt: skip
    key_env: ClassVar[str] = "ANTHROPIC_API_KEY"
    #: Moves the API root, as Anthropic's own SDKs let it.
    base_url_env: ClassVar[str] = "ANTHROPIC_BASE_URL"
    description: ClassVar[str] = "Anthropic Messages API"

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
        """Also settles the key (``api_key``, else ``ANTHROPIC_API_KEY``) and the root
        (``base_url``, else ``ANTHROPIC_BASE_URL``), both from the snapshot ``env``."""
        base_url = base_url or env.get(cls.base_url_env) or None
        api_key = api_key or env.get(cls.key_env) or None
        return super().configure(env, base_url=base_url, api_key=api_key, **rest)

    @classmethod
    def root_url(cls, base_url: str | None = None) -> str:
        """The API root without its version: ``--base-url`` may name it with or without
        ``/v1``."""
        root = (base_url or cls.url).rstrip("/")
        return root.removesuffix("/v1").rstrip("/")

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """The typed options, and what must hold between them: token counts are positive,
        ``stop_sequences`` are texts, and a thinking budget fits inside ``max_tokens``."""
        checked = super().check_options(options)
        for key in ("max_tokens", "thinking_budget", "top_k"):
            if key in checked and checked[key] < 1:
                raise UsageError(f"{cls.name}: -o {key} {checked[key]}: expected at least 1")
        stops = checked.get("stop_sequences")
        if isinstance(stops, list) and not all(isinstance(s, str) and s for s in stops):
            raise UsageError(
                f"{cls.name}: -o stop_sequences {stops!r}: expected a list of non-empty texts"
            )
        budget, limit = checked.get("thinking_budget"), checked.get("max_tokens")
        if budget is not None and limit is not None and budget >= limit:
            raise UsageError(
                f"{cls.name}: -o thinking_budget {budget} must be less than -o max_tokens "
                f"{limit} (the thinking counts towards max_tokens)"
            )
        return checked

    def preflight(self) -> None:
        if not self.config.api_key:
            raise MissingAuthError(f"no API key: set {self.key_env}", provider=self.name)

    def _headers(self) -> dict[str, str]:
        from chatcli import __version__

        self.preflight()
        assert self.config.api_key is not None
        return {
            "x-api-key": self.config.api_key,
            "anthropic-version": API_VERSION,
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
            "user-agent": f"chatcli/{__version__}",
        }

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
            auth_hint=f"check {self.key_env}",
            secrets=[self.config.api_key],
        ) as response:
            yield response

    def describe(self) -> dict[str, Any]:
        facts = super().describe()
        facts["url"] = self.root
        facts["key_env"] = self.key_env
        facts["key_set"] = bool(self.config.api_key)
        facts["description"] = self.description
        return facts

    # -- models -----------------------------------------------------------------------------

    async def list_models(self) -> list[str]:
        """The model ids the service offers (``GET /v1/models``, every page)."""
        from chatcli.providers import http

        ids: list[str] = []
        after: str | None = None
        for _ in range(MODELS_PAGES):
            query = urlencode({"limit": MODELS_PAGE} | ({"after_id": after} if after else {}))
            async with self._call("GET", f"v1/models?{query}") as response:
                data = await http.read_json(response, self.name)
            items = data.get("data") if isinstance(data, dict) else None
            if not isinstance(items, list):
                raise ProtocolError(
                    f"unexpected model list: {quote(json.dumps(data))}", provider=self.name
                )
            page = [str(item["id"]) for item in items if isinstance(item, dict) and "id" in item]
            ids += page
            last = data.get("last_id") or (page[-1] if page else None)
            if data.get("has_more") is not True or not isinstance(last, str) or last == after:
                break
            after = last
        return sorted(dict.fromkeys(ids))

    # -- chat -------------------------------------------------------------------------------

    def _body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body of ``POST /v1/messages`` for ``request``."""
        check_messages(request.messages, self.name)
        system, turns = conversation(request.messages)
        if not turns:
            raise UsageError(f"{self.name}: no user or assistant message to send")
        options = dict(request.options)
        budget = options.pop("thinking_budget", None)
        limit = options.pop("max_tokens", None)
        if limit is None:
            limit = DEFAULT_MAX_TOKENS + (budget or 0)
        body: dict[str, Any] = {"model": request.model, "max_tokens": limit, "messages": turns}
        if system:
            body["system"] = system
        body["stream"] = request.stream
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if budget is not None:
            body["thinking"] = {"type": "enabled", "budget_tokens": budget}
        stops = options.pop("stop_sequences", None)
        if stops is not None:
            body["stop_sequences"] = [stops] if isinstance(stops, str) else list(stops)
        body.update(options)  # top_p, top_k: named as the API names them
        if request.tools:
            body["tools"] = [
                {
                    "name": tool.name,
                    "description": tool.description,
                    "input_schema": dict(tool.parameters),
                }
                for tool in request.tools
            ]
            if request.tool_choice == "none":
                body["tool_choice"] = {"type": "none"}
        return body

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        """Yield the answer as the service sends it."""
        from chatcli.providers import http

        body = self._body(request)
        async with self._call("POST", "v1/messages", body=body) as response:
            # Read what was sent, not what was asked: an error page or a proxy may differ.
            if "text/event-stream" in response.headers.get("Content-Type", ""):
                async for event in self._read_stream(response):
                    yield event
            else:
                data = await http.read_json(response, self.name)
                for event in self._whole_reply(data):
                    yield event

    async def _read_stream(self, response: aiohttp.ClientResponse) -> AsyncIterator[Event]:
        from chatcli.providers import http

        reader = _StreamReader(self.name, self.config.api_key)
        async for sse in http.iter_sse(response, self.name):
            for event in reader.feed(sse.data, sse.event):
                yield event
            if reader.stopped:
                return  # message_stop: whatever follows is not part of this answer
        raise reader.unfinished()

    def _whole_reply(self, data: Any) -> list[Event]:
        """The events of a reply that came as one ``message`` object."""
        if isinstance(data, dict) and data.get("type") == "error":
            raise error_event(data, self.name, self.config.api_key)
        content = data.get("content") if isinstance(data, dict) else None
        if not isinstance(content, list):
            raise ProtocolError(f"unexpected reply: {quote(json.dumps(data))}", provider=self.name)
        texts: list[str] = []
        thoughts: list[str] = []
        calls: list[Event] = []
        for index, block in enumerate(content):
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                texts.append(_text(block, "text", self.name))
            elif kind == "thinking":
                thoughts.append(_text(block, "thinking", self.name))
            elif kind == "tool_use":
                tool_input = block.get("input", {})
                if not isinstance(tool_input, dict):
                    raise ProtocolError(
                        f"malformed tool_use block in the reply: {quote(json.dumps(block))}",
                        provider=self.name,
                    )
                ident, name = _tool_use(block, json.dumps(block), self.name)
                calls.append(ToolCallDelta(index, ident, name, json.dumps(tool_input)))
            elif not isinstance(kind, str):
                raise ProtocolError(
                    f"malformed content block in the reply: {quote(json.dumps(block))}",
                    provider=self.name,
                )
        stop_reason = data.get("stop_reason")
        if stop_reason is not None and not isinstance(stop_reason, str):
            raise ProtocolError(
                f"malformed stop_reason in the reply: {quote(json.dumps(stop_reason))}",
                provider=self.name,
            )
        events: list[Event] = []
        thought, text = "".join(thoughts), "".join(texts)
        if thought:
            events.append(ReasoningDelta(thought))
        if not text and not calls:
            raise ProtocolError(_no_text(bool(thought), stop_reason, "reply"), provider=self.name)
        if text:
            events.append(TextDelta(text))
        events += calls
        counts = _Counts()
        counts.update(data.get("usage"))
        events.append(counts.usage())
        events.append(finish(stop_reason))
        return events


def conversation(messages: Sequence[ChatMessage]) -> tuple[str, list[dict[str, Any]]]:
    """The system prompt (every system message, joined) and the turns, as the API takes them:
    user and assistant alternating, consecutive messages of one role merged into one turn.
    Messages with no text and no image are left out (the API refuses empty turns). A turn of
    text alone has its text as ``content`` (a string); a turn with images has a list of
    blocks: each image a base64 ``image`` block, in the message's order, and its text.

    Tool calling: an answer that called tools is an assistant turn of blocks, its text (if
    any) then a ``tool_use`` block per call; each ``tool`` message is a ``tool_result`` block
    of a user turn, consecutive results (and whatever user text follows them) merged into one
    turn with every result first, as the API requires."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        text = message.content
        if message.role == "tool":
            content: str | list[dict[str, Any]] = [_tool_result(message)]
            role = "user"
        elif message.tool_calls:
            content, role = _blocks(message), message.role
        elif not text.strip() and not message.images:
            continue
        elif message.role == "system":
            system.append(text)
            continue
        else:
            content = _blocks(message) if message.images else text
            role = message.role
        if turns and turns[-1]["role"] == role:
            previous = turns[-1]["content"]
            if isinstance(previous, str) and isinstance(content, str):
                turns[-1]["content"] = previous + "\n\n" + content
            else:
                turns[-1]["content"] = _results_first(_as_blocks(previous) + _as_blocks(content))
        else:
            turns.append({"role": role, "content": content})
    return "\n\n".join(system), turns


def _blocks(message: ChatMessage) -> list[dict[str, Any]]:
    """A message's parts as content blocks (empty text left out: the API refuses it), then
    a ``tool_use`` block for each tool call it made."""
    blocks: list[dict[str, Any]] = []
    for part in message.parts:
        if isinstance(part, ImagePart):
            if part.url:
                source = {"type": "url", "url": part.url}
            else:
                source = {"type": "base64", "media_type": part.media_type, "data": part.base64()}
            blocks.append({"type": "image", "source": source})
        elif part.text.strip():
            blocks.append({"type": "text", "text": part.text})
    for call in message.tool_calls:
        blocks.append(
            {"type": "tool_use", "id": _word(call.id), "name": _word(call.name, 64),
             "input": _input(call)}
        )  # fmt: skip
    return blocks


def _input(call: ToolCall) -> dict[str, Any]:
    """A call's arguments as the JSON object ``tool_use`` takes. Arguments that are not one
    (the model sent malformed JSON) become ``{}``: the call's result tells the model so."""
    try:
        parsed = json.loads(call.arguments)
    except (ValueError, RecursionError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _word(text: str, limit: int = 256) -> str:
    """An id or name as the API takes them (``^[a-zA-Z0-9_-]+$``): a call another service
    made, or a model's name for a tool that is none (``functions.read_file``), is sent back
    with each other character as ``_``, the same way for the call and its result."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)[:limit] or "_"


def _tool_result(message: ChatMessage) -> dict[str, Any]:
    """A ``tool`` message as the ``tool_result`` block answering its call (a blank result
    goes without ``content``, which is optional: the API refuses blank text)."""
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": _word(message.tool_call_id)}
    if message.content.strip():
        block["content"] = message.content
    return block


def _results_first(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``blocks`` with every ``tool_result`` first (the API's rule for a user turn), each
    kind kept in its order."""
    results = [block for block in blocks if block.get("type") == "tool_result"]
    if not results:
        return blocks
    return results + [block for block in blocks if block.get("type") != "tool_result"]


def _as_blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def error_event(data: Any, provider: str, key: str | None) -> ProviderError:
    """The error an ``{"type": "error", "error": {...}}`` payload reports, as the error its
    HTTP status would have raised (so that it is retried when that status would be)."""
    from chatcli.providers import http

    error = data.get("error") if isinstance(data, dict) else None
    kind = error.get("type") if isinstance(error, dict) else None
    kind = kind if isinstance(kind, str) else None
    message = http.error_message_from_body(json.dumps(data)) or "no message"
    said = quote(http.redact_secrets(message, [key]))
    named = f" ({quote(kind, 40)})" if kind else ""
    status = ERROR_STATUSES.get(kind or "")
    if status is None:
        return ProviderError(f"the service reported an error{named}: {said}", provider=provider)
    if kind == "overloaded_error":
        line = f"the service is overloaded{named}: {said}; try again later"
    else:
        line = f"the service reported an error{named}: {said}"
    if status == 429:
        return RateLimitError(line, provider=provider)
    if status in (401, 403):
        return AuthenticationError(
            f"{line}; check {Anthropic.key_env}", status=status, provider=provider
        )
    return ResponseStatusError(line, status=status, provider=provider)


class _Counts:
    """Token counts as they arrive: ``message_start`` has the input, ``message_delta`` the
    output so far (cumulative). Cached input (read or written) counts as input."""

    def __init__(self) -> None:
        self.input: int | None = None
        self.output: int | None = None

    def update(self, raw: Any) -> None:
        if not isinstance(raw, dict):
            return
        parts = [
            raw.get(key)
            for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
        ]
        counted = [n for n in parts if isinstance(n, int) and not isinstance(n, bool)]
        if counted:
            self.input = sum(counted)
        output = raw.get("output_tokens")
        if isinstance(output, int) and not isinstance(output, bool):
            self.output = output

    def usage(self) -> Usage:
        return Usage(input_tokens=self.input, output_tokens=self.output)


class _StreamReader:
    """The events of one streamed answer, one SSE payload at a time, checked as they come."""

    def __init__(self, provider: str, key: str | None) -> None:
        self.provider = provider
        self.key = key
        self.payloads = 0
        self.started = False
        self.stopped = False
        self.answered = False
        self.reasoned = False
        self.stop_reason: str | None = None
        self.counts = _Counts()
        #: The tool_use blocks begun and not yet ended, by index: their arguments should
        #: none arrive in pieces (the input the block began with: ``{}`` for a tool that
        #: takes nothing), ``None`` once a piece has come.
        self.tool_blocks: dict[int, str | None] = {}
        #: The index of every tool_use block begun (an index is one block's only).
        self.tool_indexes: set[int] = set()

    def _malformed(self, what: str, data: str) -> ProtocolError:
        return ProtocolError(f"{what} in the stream: {quote(data)}", provider=self.provider)

    def feed(self, data: str, name: str) -> list[Event]:
        """The events one SSE payload carries (``name`` is its ``event:`` field)."""
        if not data.strip():
            return []
        self.payloads += 1
        try:
            payload = json.loads(data)
        except (ValueError, RecursionError):  # nested too deep: not JSON we read
            raise self._malformed("malformed JSON", data) from None
        if not isinstance(payload, dict):
            raise self._malformed("unexpected event", data)
        kind = payload.get("type", None if name == "message" else name)
        if not isinstance(kind, str):
            raise self._malformed("an event without a type", data)
        if kind == "error":
            raise error_event(payload, self.provider, self.key)
        if kind == "ping":
            return []
        if not self.started and kind != "message_start":
            raise self._malformed(f"{quote(kind, 40)!r} before message_start", data)
        if kind == "message_start":
            if self.started:
                raise self._malformed("a second message_start", data)
            self.started = True
            message = payload.get("message")
            if not isinstance(message, dict):
                raise self._malformed("message_start without a message", data)
            self.counts.update(message.get("usage"))
            return []
        if kind == "content_block_start":
            return self._block_start(payload, data)
        if kind == "content_block_delta":
            return self._delta(payload, data)
        if kind == "message_delta":
            delta = payload.get("delta", {})
            reason = delta.get("stop_reason") if isinstance(delta, dict) else None
            if not isinstance(delta, dict) or not isinstance(reason, str | None):
                raise self._malformed("malformed message_delta", data)
            if reason is not None:
                self.stop_reason = reason
            self.counts.update(payload.get("usage"))
            return []
        if kind == "message_stop":
            self.stopped = True
            if not self.answered:
                why = _no_text(self.reasoned, self.stop_reason, "stream")
                raise ProtocolError(why, provider=self.provider)
            unended = [e for index in list(self.tool_blocks) for e in self._tool_end(index)]
            return [*unended, self.counts.usage(), finish(self.stop_reason)]
        if kind == "content_block_stop":
            index = payload.get("index")
            return self._tool_end(index) if _is_index(index) else []
        return []  # event types added to the API after this was written

    def _block_start(self, payload: dict[str, Any], data: str) -> list[Event]:
        block = payload.get("content_block")
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise self._malformed("malformed content_block_start", data)
        kind = block["type"]
        if kind == "text":
            return self._text(_text(block, "text", self.provider))
        if kind == "thinking":
            return self._thought(_text(block, "thinking", self.provider))
        if kind == "tool_use":
            index = payload.get("index")
            tool_input = block.get("input", {})
            if not _is_index(index) or index in self.tool_indexes:
                raise self._malformed("malformed tool_use block", data)
            if not isinstance(tool_input, dict):
                raise self._malformed("malformed tool_use block", data)
            ident, name = _tool_use(block, data, self.provider)
            self.answered = True  # a call alone is an answer
            self.tool_indexes.add(index)
            self.tool_blocks[index] = json.dumps(tool_input)
            return [ToolCallDelta(index=index, id=ident, name=name)]
        return []  # redacted_thinking and other blocks hold nothing to show

    def _delta(self, payload: dict[str, Any], data: str) -> list[Event]:
        delta = payload.get("delta")
        if not isinstance(delta, dict) or not isinstance(delta.get("type"), str):
            raise self._malformed("malformed content_block_delta", data)
        kind = delta["type"]
        if kind == "text_delta":
            return self._text(_text(delta, "text", self.provider))
        if kind == "thinking_delta":
            return self._thought(_text(delta, "thinking", self.provider))
        if kind == "input_json_delta":
            index = payload.get("index")
            if not _is_index(index) or index not in self.tool_blocks:
                raise self._malformed("input_json_delta outside a tool_use block", data)
            piece = _text(delta, "partial_json", self.provider)
            if not piece:
                return []
            self.tool_blocks[index] = None  # the arguments come in pieces
            return [ToolCallDelta(index=index, arguments=piece)]
        return []  # signature_delta (a seal over the thinking), citations_delta, newer kinds

    def _tool_end(self, index: int) -> list[Event]:
        """The end of block ``index``: for a tool_use block that got no piece of its
        arguments, the input it began with. (Pieces for it after this are malformed.)"""
        whole = self.tool_blocks.pop(index, None)
        return [ToolCallDelta(index=index, arguments=whole)] if whole else []

    def _text(self, text: str) -> list[Event]:
        if not text:
            return []
        self.answered = True
        return [TextDelta(text)]

    def _thought(self, text: str) -> list[Event]:
        if not text:
            return []
        self.reasoned = True
        return [ReasoningDelta(text)]

    def unfinished(self) -> ProviderError:
        """The error for a stream that ended without ``message_stop``."""
        if not self.payloads:
            return ProtocolError(
                "no text arrived: the server answered with a stream holding nothing at all",
                provider=self.provider,
            )
        return StreamInterruptedError(
            "the stream ended before its end marker (message_stop); the answer is incomplete",
            provider=self.provider,
        )


def _text(holder: dict[str, Any], key: str, provider: str) -> str:
    """``holder[key]`` when it is text (absent: empty); else a :class:`ProtocolError`."""
    value = holder.get(key, "")
    if not isinstance(value, str):
        raise ProtocolError(
            f"{key} that is not text in the reply: {quote(json.dumps(holder))}", provider=provider
        )
    return value


def _is_index(value: Any) -> TypeGuard[int]:
    """Whether ``value`` is a block's index (a whole number, not negative)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _tool_use(block: dict[str, Any], data: str, provider: str) -> tuple[str, str]:
    """A ``tool_use`` block's id and name (both non-empty text, else a ProtocolError)."""
    ident, name = block.get("id"), block.get("name")
    if not (isinstance(ident, str) and ident and isinstance(name, str) and name):
        raise ProtocolError(f"malformed tool_use block: {quote(data)}", provider=provider)
    return ident, name


def _no_text(reasoned: bool, stop_reason: str | None, where: str) -> str:
    """Why an answer that ended brought no answer text."""
    held = "only the model's reasoning" if reasoned else "no answer text"
    line = f"no text arrived: the {where} held {held}"
    if stop_reason:
        line += f"; it ended with stop reason {quote(stop_reason, 40)!r}"
    if stop_reason == "max_tokens":
        line += " (-o max_tokens N allows a longer answer)"
    elif stop_reason == "refusal":
        line += " (the model declined to answer)"
    return line
