"""A strict fake of Anthropic's Messages API: ``POST /v1/messages`` and ``GET /v1/models``.

It checks what the real API checks (and what a client of it must do): the ``x-api-key`` and
``anthropic-version`` headers, a JSON body with ``model``, ``max_tokens`` and ``messages`` that
alternate between user and assistant (starting with the user), the system prompt only at the
top level, typed sampling fields and a ``thinking`` object that fits inside ``max_tokens``. A
difference is a *violation* (answered with the API's 400, and failing the test when served
with :meth:`FakeService.serve`). A wrong key gets the API's 401; a request the real API would
refuse for what the user asked (a thinking budget under 1024) gets its 400, not a violation.

It streams events in the API's order (``message_start``, per block ``content_block_start``,
deltas and ``content_block_stop``, ``message_delta``, ``message_stop``, with a ``ping``) and
checks that order on everything it sends, scripted streams included. ``mode`` plays faults:
"status" (an HTTP error: ``status``, ``body``, ``headers``), "error_event" (an ``error`` event
after ``error_after`` pieces), "cut" (every event but ``message_stop``, then a clean end),
"drop" (the connection reset after ``error_after`` pieces), "bad_json" (a broken payload
after ``error_after`` pieces; 0: right after ``message_start``) and "stall" (silence after
the first piece). With
``fail_times`` set, only that many requests fail and later ones are answered normally.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fakes import FakeService, Seen
from tests.fakes.seed import Headers, is_number

API_VERSION = "2023-06-01"
API_KEY = "sk-ant-fake-0123456789abcdef"

#: The top-level fields of a ``POST /v1/messages`` body the API knows.
BODY_FIELDS = frozenset(
    {
        "model", "messages", "max_tokens", "system", "stream", "temperature", "top_p", "top_k",
        "stop_sequences", "thinking", "metadata", "tools", "tool_choice", "service_tier",
    }
)  # fmt: skip

#: The events of a stream, and which may follow which (``ping`` and ``error`` may come anywhere
#: after ``message_start``; an ``error`` may also come first).
FOLLOWS: dict[str, set[str]] = {
    "": {"message_start"},
    "message_start": {"content_block_start", "message_delta"},
    "content_block_start": {"content_block_delta", "content_block_stop"},
    "content_block_delta": {"content_block_delta", "content_block_stop"},
    "content_block_stop": {"content_block_start", "message_delta"},
    "message_delta": {"message_stop"},
    "message_stop": set(),
}


#: What a tool's name (and a tool_use block's name) must look like, and a tool_use id.
TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
TOOL_USE_ID = re.compile(r"[a-zA-Z0-9_-]+")
#: The ``tool_choice`` types the API knows.
TOOL_CHOICES = frozenset({"auto", "any", "tool", "none"})


@dataclass
class ToolUse:
    """A tool call the fake's model makes: its input JSON arrives in ``pieces`` (their
    concatenation; in a whole reply, parsed: then it must be a JSON object, or nothing for
    ``{}``)."""

    id: str
    name: str
    pieces: list[str]


def error_body(kind: str, message: str) -> str:
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}})


class FakeAnthropic(FakeService):
    """Anthropic's Messages API on localhost (see the module's docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.key = API_KEY
        self.pieces: list[str] = ["Hello", ", ", "world", "!"]
        #: Pieces of thinking, sent as a thinking block before the answer's text block.
        self.thinking: list[str] = []
        #: Tool calls the model makes, as tool_use blocks after the text (no text block when
        #: ``pieces`` is empty); set ``stop_reason`` to "tool_use" with them, as the API does.
        self.tool_uses: list[ToolUse] = []
        self.stop_reason = "end_turn"
        self.input_tokens = 21
        self.output_tokens = 9
        #: Input tokens read from the prompt cache (reported apart, as the API does).
        self.cache_read_tokens = 0
        self.models: list[str] = ["claude-haiku-4-5", "claude-opus-4-1", "claude-sonnet-4-5"]
        #: Models per page of ``GET /v1/models`` when the client names no limit (the API's),
        #: and the most a page holds whatever the client asks (the API's is 1000).
        self.default_page = 20
        self.max_page = 1000
        #: Raw payloads to stream instead of the generated answer, their order checked
        #: unless ``check_order`` is off (a test of a client facing a broken stream).
        self.script: list[dict[str, Any]] | None = None
        self.check_order = True
        self.status = 500
        self.body = error_body("api_error", "Internal server error")
        self.headers: dict[str, str] = {}
        self.error_type = "overloaded_error"
        self.error_after = 2
        #: Requests that fail by ``mode`` before the fake answers normally (0: all of them).
        self.fail_times = 0
        self.stall_seconds = 30.0
        #: Seconds between streamed pieces.
        self.delay = 0.0
        #: The event types of every stream sent, in order (one list per stream).
        self.streams: list[list[str]] = []
        #: Requests refused with a 400 for what was asked, not how (not violations).
        self.rejections: list[str] = []
        self._failed = 0

    # -- serving -------------------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_get("/v1/models", self._models)
        app.router.add_route("*", "/{tail:.*}", self._unknown)

    async def _unknown(self, request: web.Request) -> web.StreamResponse:
        seen = await self.record(request)
        self.violations.append(f"unexpected request: {seen.method} {request.path_qs}")
        return web.Response(
            status=404,
            text=error_body("not_found_error", "Not found"),
            content_type="application/json",
        )

    @property
    def messages_requests(self) -> list[Seen]:
        return [s for s in self.requests if s.path == "/v1/messages"]

    def _failing(self) -> bool:
        """Whether this request plays the fault of ``mode``."""
        if self.mode == "ok":
            return False
        if self.fail_times and self._failed >= self.fail_times:
            return False
        self._failed += 1
        return True

    # -- checks ----------------------------------------------------------------------------------

    def _authorised(self, seen: Seen) -> web.Response | None:
        """The API's own answer to missing or wrong credentials; checks the other headers."""
        headers = Headers(seen.headers.items())
        self.expect_equal(
            f"{seen.path} anthropic-version", headers.get("anthropic-version"), API_VERSION
        )
        self.expect("authorization" not in headers, f"{seen.path}: the key went in Authorization")
        key = headers.get("x-api-key")
        self.expect(key is not None, f"{seen.path}: no x-api-key header")
        if key != self.key:
            return web.Response(
                status=401,
                text=error_body("authentication_error", "invalid x-api-key"),
                content_type="application/json",
            )
        return None

    def problems(self, seen: Seen) -> list[str]:
        """What is wrong with a ``POST /v1/messages`` request, as the API judges it."""
        headers = Headers(seen.headers.items())
        problems: list[str] = []
        if not headers.get("content-type", "").startswith("application/json"):
            problems.append(f"content-type {headers.get('content-type')!r}")
        body = seen.json
        if not isinstance(body, dict):
            return [*problems, f"body is not a JSON object: {seen.body[:100]!r}"]
        problems += [f"unknown field {key!r}" for key in body if key not in BODY_FIELDS]
        if not isinstance(body.get("model"), str) or not body["model"]:
            problems.append(f"model missing or empty: {body.get('model')!r}")
        limit = body.get("max_tokens")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            problems.append(f"max_tokens missing or not a positive integer: {limit!r}")
        problems += tool_problems(body)
        messages, turn_problems = self._tool_turns(body.get("messages"), "tools" in body)
        problems += turn_problems + self._message_problems(messages)
        system = body.get("system")
        if "system" in body and not (isinstance(system, str) and system.strip()):
            problems.append(f"system is not a non-empty text: {system!r}")
        if "stream" in body and not isinstance(body["stream"], bool):
            problems.append(f"stream is not a boolean: {body['stream']!r}")
        for key in ("temperature", "top_p"):
            value = body.get(key)
            if key in body and not (is_number(value) and 0 <= float(value or 0) <= 1):
                problems.append(f"{key} is not a number from 0 to 1: {value!r}")
        top_k = body.get("top_k")
        if "top_k" in body and not (isinstance(top_k, int) and not isinstance(top_k, bool)):
            problems.append(f"top_k is not an integer: {top_k!r}")
        stops = body.get("stop_sequences")
        if "stop_sequences" in body and not (
            isinstance(stops, list) and all(isinstance(s, str) and s for s in stops)
        ):
            problems.append(f"stop_sequences is not a list of texts: {stops!r}")
        if "thinking" in body:
            thinking = body["thinking"]
            budget = thinking.get("budget_tokens") if isinstance(thinking, dict) else None
            if (
                not isinstance(thinking, dict)
                or set(thinking) != {"type", "budget_tokens"}
                or thinking["type"] != "enabled"
                or not isinstance(budget, int)
                or isinstance(budget, bool)
            ):
                problems.append(f"malformed thinking: {thinking!r}")
            elif isinstance(limit, int) and budget >= limit:
                problems.append(f"thinking.budget_tokens {budget} is not below max_tokens {limit}")
        return problems

    @staticmethod
    def _message_problems(messages: Any) -> list[str]:
        if not isinstance(messages, list) or not messages:
            return [f"messages missing or empty: {messages!r}"]
        problems = []
        expected = "user"
        for message in messages:
            if not isinstance(message, dict) or set(message) != {"role", "content"}:
                problems.append(f"malformed message {message!r}")
                continue
            role, content = message["role"], message["content"]
            if role == "system":
                problems.append("a system message in messages: the API takes it as `system`")
            elif role not in ("user", "assistant"):
                problems.append(f"unknown role {role!r}")
            elif role != expected:
                problems.append(f"roles do not alternate: {role} where {expected} was due")
            if not isinstance(content, str) or not content.strip():
                problems.append(f"content is not a non-empty text: {message!r}")
            expected = "assistant" if role == "user" else "user"
        return problems

    #: Whether image blocks may come in a user turn (:class:`FakeVisionAnthropic`).
    takes_images = False

    def _tool_turns(self, messages: Any, tools_given: bool) -> tuple[Any, list[str]]:
        """Check the turns holding ``tool_use`` or ``tool_result`` blocks as the API does;
        the messages with each such turn's content replaced by a placeholder text (for the
        checks every turn gets), and the problems.

        The rules: tool blocks only in a request with ``tools``; ``tool_use`` blocks in
        assistant turns, ``tool_result`` blocks in user turns; every tool_use of an
        assistant turn answered by a tool_result in the very next turn (a user turn), and
        nothing else answered there; the results first in their turn, before any text."""
        if not isinstance(messages, list):
            return messages, []
        problems: list[str] = []
        plain: list[Any] = []
        pending: list[str] = []  # the tool_use ids the next turn must answer
        used: set[str] = set()
        for number, message in enumerate(messages):
            content = message.get("content") if isinstance(message, dict) else None
            blocks = content if isinstance(content, list) else []
            kinds = [b.get("type") if isinstance(b, dict) else None for b in blocks]
            if "tool_use" not in kinds and "tool_result" not in kinds:
                if pending:
                    problems.append(
                        f"tool_use ids {pending} without tool_result blocks "
                        f"immediately after (message {number})"
                    )
                    pending = []
                plain.append(message)
                continue
            if not tools_given:
                problems.append(f"tool_use or tool_result blocks without tools (message {number})")
            role = message.get("role")
            answered: list[str] = []
            results_over = False
            for block in blocks:
                kind = block.get("type") if isinstance(block, dict) else None
                if kind == "tool_use":
                    if role != "assistant":
                        problems.append(f"a tool_use block in a {role!r} turn: {block!r}")
                    problems += tool_use_problems(block)
                    ident = block.get("id")
                    if ident in used:
                        problems.append(f"tool_use id {ident!r} is not unique")
                    used.add(str(ident))
                elif kind == "tool_result":
                    if role != "user":
                        problems.append(f"a tool_result block in a {role!r} turn: {block!r}")
                    if results_over:
                        problems.append(
                            f"a tool_result block after other content (message {number}): "
                            "tool_result blocks must come first"
                        )
                    problems += tool_result_problems(block, self.takes_images)
                    answered.append(str(block.get("tool_use_id")))
                else:
                    results_over = True
                    problems += self._other_block_problems(block, role)
            missing = [ident for ident in pending if ident not in answered]
            if missing:
                problems.append(
                    f"tool_use ids {missing} without tool_result blocks "
                    f"immediately after (message {number})"
                )
            unasked = [ident for ident in answered if ident not in pending]
            if unasked:
                problems.append(
                    f"tool_result blocks for ids {unasked} with no tool_use in "
                    f"the previous message (message {number})"
                )
            if len(set(answered)) != len(answered):
                problems.append(f"a tool_use id answered twice: {answered}")
            pending = [
                str(b.get("id"))
                for b, k in zip(blocks, kinds, strict=True)
                if k == "tool_use" and isinstance(b, dict)
            ]
            plain.append({**message, "content": "(tool blocks)"})
        if pending:
            problems.append(f"tool_use ids {pending} without tool_result blocks after them")
        return plain, problems

    def _other_block_problems(self, block: Any, role: Any) -> list[str]:
        """What is wrong with a block beside the tool blocks of a turn: text (or, for a fake
        that takes them, an image in a user turn)."""
        image = isinstance(block, dict) and block.get("type") == "image"
        if image and (not self.takes_images or role != "user"):
            return [f"an image block in a {role!r} turn"]
        return block_problems(block)

    def _rejection(self, body: dict[str, Any]) -> str | None:
        """Why the API refuses what was asked (the user's choice, not the client's mistake)."""
        thinking = body.get("thinking")
        if isinstance(thinking, dict):
            if thinking.get("budget_tokens", 0) < 1024:
                return "thinking.budget_tokens: Input should be greater than or equal to 1024"
            if body.get("temperature", 1) != 1:
                return "temperature may only be set to 1 when thinking is enabled"
        return None

    # -- models ----------------------------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.StreamResponse:
        seen = await self.record(request)
        refused = self._authorised(seen)
        if refused is not None:
            return refused
        if self.mode == "status" and self._failing():
            return self._status_reply()
        unknown = set(seen.query) - {"limit", "after_id", "before_id"}
        self.expect(not unknown, f"/v1/models: unknown query parameters {sorted(unknown)}")
        try:
            limit = int(seen.query.get("limit", self.default_page))
        except ValueError:
            limit = 0
        self.expect(1 <= limit <= 1000, f"/v1/models: limit out of range: {seen.query}")
        limit = max(1, min(limit, self.max_page))
        start = 0
        if "after_id" in seen.query:
            after = seen.query["after_id"]
            self.expect(after in self.models, f"/v1/models: after_id of no model: {after!r}")
            start = self.models.index(after) + 1 if after in self.models else len(self.models)
        page = self.models[start : start + limit]
        return web.json_response(
            {
                "data": [
                    {
                        "type": "model",
                        "id": m,
                        "display_name": m.title(),
                        "created_at": "2025-01-01T00:00:00Z",
                    }
                    for m in page
                ],
                "has_more": start + limit < len(self.models),
                "first_id": page[0] if page else None,
                "last_id": page[-1] if page else None,
            }
        )

    # -- messages --------------------------------------------------------------------------------

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        seen = await self.record(request)
        refused = self._authorised(seen)
        if refused is not None:
            return refused
        problems = self.problems(seen)
        if problems:
            self.violations.extend(problems)
            return web.Response(
                status=400,
                text=error_body("invalid_request_error", "; ".join(problems)),
                content_type="application/json",
            )
        body: dict[str, Any] = seen.json
        rejection = self._rejection(body)
        if rejection is not None:
            self.rejections.append(rejection)
            return web.Response(
                status=400,
                text=error_body("invalid_request_error", rejection),
                content_type="application/json",
            )
        fault = self.mode if self._failing() else "ok"
        if fault == "status":
            return self._status_reply()
        self._check_scripted_calls(body)
        if not body.get("stream"):
            return web.json_response(self._whole(body["model"]))
        return await self._stream(request, body["model"], fault)

    def _check_scripted_calls(self, body: dict[str, Any]) -> None:
        """The model calls only tools it was offered, and none when told not to."""
        if not self.tool_uses:
            return
        offered = {t.get("name") for t in body.get("tools", []) if isinstance(t, dict)}
        choice = body.get("tool_choice")
        self.expect(
            not (isinstance(choice, dict) and choice.get("type") == "none"),
            "the fake is scripted to call tools, but the request said tool_choice none",
        )
        for use in self.tool_uses:
            self.expect(use.name in offered, f"the fake calls {use.name!r}, which was not offered")

    def _status_reply(self) -> web.Response:
        return web.Response(
            status=self.status,
            body=self.body.encode(),
            headers={"Content-Type": "application/json", **self.headers},
        )

    def _usage(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": self.cache_read_tokens,
            "output_tokens": self.output_tokens,
        }

    def _whole(self, model: str) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if self.thinking:
            content.append(
                {"type": "thinking", "thinking": "".join(self.thinking), "signature": "c2ln"}
            )
        if self.pieces or not self.tool_uses:
            content.append({"type": "text", "text": "".join(self.pieces)})
        for use in self.tool_uses:
            try:
                tool_input = json.loads("".join(use.pieces) or "{}")
            except ValueError:
                tool_input = None
            self.expect(
                isinstance(tool_input, dict),
                f"the fake's whole reply needs a JSON object as input: {use.pieces!r}",
            )
            content.append(
                {"type": "tool_use", "id": use.id, "name": use.name, "input": tool_input or {}}
            )
        return {
            "id": "msg_fake01",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": self.stop_reason,
            "stop_sequence": None,
            "usage": self._usage(),
        }

    def events(self, model: str) -> list[dict[str, Any]]:
        """The payloads of a whole, well-formed streamed answer."""
        usage = self._usage() | {"output_tokens": 1}
        events: list[dict[str, Any]] = [
            {
                "type": "message_start",
                "message": {
                    "id": "msg_fake01", "type": "message", "role": "assistant", "model": model,
                    "content": [], "stop_reason": None, "stop_sequence": None, "usage": usage,
                },
            },
        ]  # fmt: skip
        index = 0
        if self.thinking:
            events.append(
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "thinking", "thinking": "", "signature": ""},
                }
            )
            events += [
                {"type": "content_block_delta", "index": index,
                 "delta": {"type": "thinking_delta", "thinking": thought}}
                for thought in self.thinking
            ]  # fmt: skip
            events.append(
                {"type": "content_block_delta", "index": index,
                 "delta": {"type": "signature_delta", "signature": "c2lnbmF0dXJl"}}
            )  # fmt: skip
            events.append({"type": "content_block_stop", "index": index})
            index += 1
        if self.pieces or not self.tool_uses:
            events.append(
                {"type": "content_block_start", "index": index,
                 "content_block": {"type": "text", "text": ""}}
            )  # fmt: skip
            events.append({"type": "ping"})
            events += [
                {"type": "content_block_delta", "index": index,
                 "delta": {"type": "text_delta", "text": piece}}
                for piece in self.pieces
            ]  # fmt: skip
            events.append({"type": "content_block_stop", "index": index})
            index += 1
        for use in self.tool_uses:
            # As the API streams one: the block with an empty input, then the input's JSON in
            # pieces (the first of them empty).
            events.append(
                {"type": "content_block_start", "index": index,
                 "content_block": {"type": "tool_use", "id": use.id, "name": use.name,
                                   "input": {}}}
            )  # fmt: skip
            events += [
                {"type": "content_block_delta", "index": index,
                 "delta": {"type": "input_json_delta", "partial_json": piece}}
                for piece in ["", *use.pieces]
            ]  # fmt: skip
            events.append({"type": "content_block_stop", "index": index})
            index += 1
        events.append(
            {
                "type": "message_delta",
                "delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": self.output_tokens},
            }
        )
        events.append({"type": "message_stop"})
        return events

    async def _stream(self, request: web.Request, model: str, fault: str) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
            }
        )
        await response.prepare(request)
        sent: list[str] = []
        self.streams.append(sent)
        pieces = 0
        for payload in self.script if self.script is not None else self.events(model):
            kind = str(payload.get("type"))
            if fault == "cut" and kind == "message_stop":
                return response  # a clean end, one event short of the answer's end
            self._check_order(sent, kind)
            sent.append(kind)
            await response.write(f"event: {kind}\ndata: {json.dumps(payload)}\n\n".encode())
            delta = payload.get("delta")
            if isinstance(delta, dict) and delta.get("type") == "text_delta":
                pieces += 1
                if self.delay:
                    await asyncio.sleep(self.delay)
                if fault == "stall" and pieces == 1:
                    await asyncio.sleep(self.stall_seconds)
            elif kind != "message_start":
                continue
            if pieces == self.error_after and await self._break(request, response, fault, sent):
                return response
        return response

    async def _break(
        self, request: web.Request, response: web.StreamResponse, fault: str, sent: list[str]
    ) -> bool:
        """Play a mid-stream fault now; whether the stream ends here."""
        if fault == "error_event":
            sent.append("error")
            message = {"overloaded_error": "Overloaded"}.get(self.error_type, "Trouble")
            await response.write(
                f"event: error\ndata: {error_body(self.error_type, message)}\n\n".encode()
            )
            return True
        if fault == "bad_json":
            await response.write(b'event: content_block_delta\ndata: {"type": "content_\n\n')
            return True
        if fault == "drop":
            assert request.transport is not None
            request.transport.abort()
            return True
        return False

    def _check_order(self, sent: list[str], kind: str) -> None:
        """Record a violation if the fake itself is about to send an event out of order."""
        if not self.check_order:
            return
        if kind in ("ping", "error") and (sent or kind == "error"):
            return
        last = next((k for k in reversed(sent) if k in FOLLOWS), "")  # ping, error, new kinds
        allowed = FOLLOWS.get(last, set())
        self.expect(
            kind in allowed or kind not in FOLLOWS,
            f"the fake's stream is out of order: {kind} after {last or 'nothing'}",
        )


# -- tools -------------------------------------------------------------------------------------


def tool_problems(body: dict[str, Any]) -> list[str]:
    """What is wrong with a body's ``tools`` and ``tool_choice``."""
    problems: list[str] = []
    tools = body.get("tools")
    names: list[Any] = []
    if "tools" in body:
        if not isinstance(tools, list):
            return [f"tools is not a list: {tools!r}"]
        for tool in tools:
            if not isinstance(tool, dict):
                problems.append(f"a tool is not an object: {tool!r}")
                continue
            unknown = set(tool) - {"name", "description", "input_schema", "cache_control"}
            if unknown:
                problems.append(f"tool {tool.get('name')!r}: unknown fields {sorted(unknown)}")
            name = tool.get("name")
            if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
                problems.append(f"tools: name {name!r} does not match ^[a-zA-Z0-9_-]{{1,64}}$")
            if name in names:
                problems.append(f"tools: the name {name!r} is not unique")
            names.append(name)
            if not isinstance(tool.get("description"), str):
                problems.append(f"tool {name!r}: description is not text")
            schema = tool.get("input_schema")
            if not isinstance(schema, dict) or schema.get("type") != "object":
                problems.append(f"tool {name!r}: input_schema is not a schema of type object")
    if "tool_choice" in body:
        choice = body["tool_choice"]
        kind = choice.get("type") if isinstance(choice, dict) else None
        if "tools" not in body:
            problems.append("tool_choice without tools")
        if not isinstance(choice, dict) or kind not in TOOL_CHOICES:
            problems.append(f"malformed tool_choice: {choice!r}")
        else:
            allowed = {"type"} | ({"name"} if kind == "tool" else set())
            allowed |= set() if kind == "none" else {"disable_parallel_tool_use"}
            if set(choice) - allowed:
                problems.append(
                    f"tool_choice {kind}: unknown fields {sorted(set(choice) - allowed)}"
                )
            if kind == "tool" and choice.get("name") not in names:
                problems.append(f"tool_choice names no offered tool: {choice!r}")
            parallel = choice.get("disable_parallel_tool_use", False)
            if not isinstance(parallel, bool):
                problems.append("tool_choice: disable_parallel_tool_use is not a boolean")
    return problems


def tool_use_problems(block: dict[str, Any]) -> list[str]:
    """What is wrong with a ``tool_use`` block of an assistant turn."""
    problems: list[str] = []
    if not {"type", "id", "name", "input"} <= set(block) <= {
        "type", "id", "name", "input", "cache_control"
    }:  # fmt: skip
        problems.append(f"malformed tool_use block: {block!r}")
    ident, name = block.get("id"), block.get("name")
    if not isinstance(ident, str) or not TOOL_USE_ID.fullmatch(ident):
        problems.append(f"tool_use id {ident!r} does not match ^[a-zA-Z0-9_-]+$")
    if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
        problems.append(f"tool_use name {name!r} does not match ^[a-zA-Z0-9_-]{{1,64}}$")
    if not isinstance(block.get("input"), dict):
        problems.append(f"tool_use input is not an object: {block.get('input')!r}")
    return problems


def tool_result_problems(block: dict[str, Any], takes_images: bool) -> list[str]:
    """What is wrong with a ``tool_result`` block of a user turn (its content: text, or a
    list of text blocks and, where taken, images; it may be left out)."""
    problems: list[str] = []
    allowed = {"type", "tool_use_id", "content", "is_error", "cache_control"}
    if not {"type", "tool_use_id"} <= set(block) <= allowed:
        problems.append(f"malformed tool_result block: {block!r}")
    if not isinstance(block.get("tool_use_id"), str):
        problems.append(f"tool_result tool_use_id is not text: {block!r}")
    if "is_error" in block and not isinstance(block["is_error"], bool):
        problems.append(f"tool_result is_error is not a boolean: {block!r}")
    content = block.get("content", "")
    if isinstance(content, list):
        for inner in content:
            image = isinstance(inner, dict) and inner.get("type") == "image"
            if image and not takes_images:
                problems.append("an image in a tool_result (this fake takes none)")
            problems += block_problems(inner)
    elif not isinstance(content, str):
        problems.append(f"tool_result content is neither text nor blocks: {block!r}")
    return problems


# -- images ------------------------------------------------------------------------------------

#: The media types an ``image`` block may carry, and the most base64 the API takes for one.
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif")
MAX_IMAGE_BASE64 = 5 * 1024 * 1024


def block_problems(block: Any) -> list[str]:
    """What is wrong with one content block of a user turn (text or a base64 image)."""
    import base64
    import binascii

    if not isinstance(block, dict):
        return [f"a content block is not an object: {block!r}"]
    if block.get("type") == "text":
        text = block.get("text")
        ok = set(block) == {"type", "text"} and isinstance(text, str) and text.strip()
        return [] if ok else [f"malformed text block: {block!r}"]
    if block.get("type") != "image" or set(block) != {"type", "source"}:
        return [f"unknown content block: {str(block)[:200]}"]
    source = block["source"]
    if isinstance(source, dict) and source.get("type") == "url":
        url = source.get("url")
        web_address = isinstance(url, str) and url.startswith(("http://", "https://"))
        return [] if set(source) == {"type", "url"} and web_address else [f"bad url: {source!r}"]
    if not isinstance(source, dict) or set(source) != {"type", "media_type", "data"}:
        return [f"malformed image source: {str(source)[:200]}"]
    if source["type"] != "base64":
        return [f"image source type {source['type']!r} is not base64"]
    if source["media_type"] not in IMAGE_TYPES:
        return [f"unsupported media_type {source['media_type']!r}"]
    data = source["data"]
    if not isinstance(data, str) or len(data) > MAX_IMAGE_BASE64:
        return ["image data is not text, or over 5 MB"]
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return [f"image data is not base64: {data[:40]!r}"]
    return []


class FakeVisionAnthropic(FakeAnthropic):
    """:class:`FakeAnthropic` that also takes user turns whose content is a list of blocks
    (text and base64 images), each block checked as the API checks it."""

    takes_images = True

    @staticmethod
    def _message_problems(messages: Any) -> list[str]:
        if not isinstance(messages, list):
            return FakeAnthropic._message_problems(messages)
        problems: list[str] = []
        plain = []
        for message in messages:
            if isinstance(message, dict) and isinstance(message.get("content"), list):
                blocks = message["content"]
                if not blocks:
                    problems.append(f"empty content blocks: {message!r}")
                for block in blocks:
                    problems += block_problems(block)
                if message.get("role") != "user":
                    problems.append(f"image blocks in a {message.get('role')!r} turn")
                message = {**message, "content": "(blocks)"}
            plain.append(message)
        return problems + FakeAnthropic._message_problems(plain)
