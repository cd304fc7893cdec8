"""The OpenAI shapes written out: ``chat.completion.chunk`` text, ``usage``, tool calls, and the
bounded channel a turn's events take to the response."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Mapping
from typing import Any, Final

from chatcli.core import (
    Event,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from chatcli.turn import Turn, TurnRequest

#: How answers end, as the OpenAI protocol says it.
FINISH: Final[Mapping[str, str]] = {
    "stop": "stop",
    "length": "length",
    "context": "length",
    "content_filter": "content_filter",
    "repetition": "stop",
    "tool_calls": "tool_calls",
}
#: Events of an answer that may wait for a slow client before the upstream read waits too.
BACKLOG: Final = 256


class Channel:
    """A turn's events on their way to the response: at most :data:`BACKLOG` wait, and the
    turn waits while that many do (so a slow client slows the upstream read instead of
    filling memory). The reader takes all that wait at once, to write them together."""

    def __init__(self) -> None:
        self._items: list[Event] = []
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self.closed = False
        #: Closed because the server stops (not because the turn ended).
        self.stopping = False

    async def put(self, event: Event) -> None:
        while len(self._items) >= BACKLOG and not self.closed:
            self._writable.clear()
            await self._writable.wait()
        if not self.closed:
            self._items.append(event)
            self._readable.set()

    def close(self, *, stopping: bool = False) -> None:
        if not self.closed:
            self.closed, self.stopping = True, stopping
        self._readable.set()
        self._writable.set()

    def cut(self) -> bool:
        """Whether it was closed because the server stops."""
        return self.stopping

    async def take(self) -> list[Event]:
        """What waits (at least one event), or ``[]`` once closed and empty."""
        while not self._items and not self.closed:
            self._readable.clear()
            await self._readable.wait()
        if self.stopping:
            return []
        items, self._items = self._items, []
        self._writable.set()
        return items


class Chunks:
    """``chat.completion.chunk`` events, written as text: the part around the delta is made
    once, so a piece of text costs one ``json.dumps`` of itself."""

    def __init__(self, ident: str, created: int, model: str) -> None:
        head = json.dumps(
            {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model},
            separators=(",", ":"),
        )
        self._head = head[:-1] + ',"system_fingerprint":null,"choices":[{"index":0,"delta":'
        self._tail = ',"logprobs":null,"finish_reason":null}]}\n\n'
        self._base = head[:-1]
        self._calls: dict[int, str] = {}

    def _chunk(self, delta: str) -> str:
        return "data: " + self._head + delta + self._tail

    def role(self) -> str:
        return self._chunk('{"role":"assistant","content":""}')

    def event(self, event: Event) -> str:
        if isinstance(event, TextDelta):
            return self._chunk('{"content":' + dumps(event.text) + "}") if event.text else ""
        if isinstance(event, ReasoningDelta):
            if not event.text:
                return ""
            return self._chunk('{"reasoning_content":' + dumps(event.text) + "}")
        if isinstance(event, ToolCallDelta):
            call: dict[str, Any] = {"index": event.index}
            if event.index not in self._calls:
                self._calls[event.index] = event.id or f"call_{secrets.token_hex(8)}"
                call["id"] = self._calls[event.index]
                call["type"] = "function"
                call["function"] = {"name": event.name or "", "arguments": event.arguments}
            else:
                function: dict[str, str] = {"arguments": event.arguments}
                if event.name:
                    function["name"] = event.name
                call["function"] = function
            return self._chunk(dumps({"tool_calls": [call]}))
        return ""

    def finish(self, turn: Turn) -> str:
        reason = FINISH.get(turn.finish_reason or "stop", "stop")
        return (
            "data: "
            + self._head
            + '{},"logprobs":null,"finish_reason":'
            + dumps(reason)
            + "}]}\n\n"
        )

    def usage(self, usage: dict[str, Any]) -> str:
        return "data: " + self._base + ',"choices":[],"usage":' + dumps(usage) + "}\n\n"


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def data_event(body: Any) -> bytes:
    return ("data: " + dumps(body) + "\n\n").encode()


def completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


def call_json(call: ToolCall) -> dict[str, Any]:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


def usage_json(request: TurnRequest, turn: Turn) -> dict[str, Any]:
    """The turn's token counts, as the service gave them; else estimated (four bytes a
    token) and marked ``estimated``."""
    usage = turn.usage
    if usage is None or usage.input_tokens is None or usage.output_tokens is None:
        sent = sum(len(m.content.encode("utf-8", "surrogatepass")) for m in request.messages)
        got = len(turn.text.encode("utf-8", "surrogatepass"))
        usage = Usage(
            usage.input_tokens if usage and usage.input_tokens is not None else -(-sent // 4),
            usage.output_tokens if usage and usage.output_tokens is not None else -(-got // 4),
            estimated=True,
        )
    assert usage.input_tokens is not None and usage.output_tokens is not None
    body: dict[str, Any] = {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }
    if usage.estimated:
        body["estimated"] = True
    return body
