"""Stream and reply parsers fed arbitrary bytes, split anywhere: only chatcli's own errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from chatcli.core import Event, Finish, ReasoningDelta, TextDelta, ToolCallDelta, Usage
from chatcli.errors import ChatcliError
from chatcli.providers import Registry
from chatcli.providers.chatgptt import ChatGptt
from chatcli.providers.fakegpt import FakeGpt
from chatcli.providers.opchatgpts import Opchatgpts
from tests.fakes.anthropic import FakeAnthropic

JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
#: Stream lines that look like the real thing often enough to reach the deep branches.
SSE_LINES = st.one_of(
    st.binary(max_size=60),
    JSONISH.map(lambda v: b"data: " + json.dumps(v).encode() + b"\n\n"),
    st.sampled_from([
        b"data: [DONE]\n\n",
        b'data: {"choices": [{"delta": {"content": "hi"}, "finish_reason": null}]}\n\n',
        b'data: {"choices": [{"delta": {"content": 5}}]}\n\n',
        b'data: {"choices": [{"delta": "x", "finish_reason": "stop"}]}\n\n',
        b'data: {"error": {"message": "boom"}}\n\n',
        b'data: {"choices": null}\n\n',
        b": keep-alive\n\n",
    ]),
)  # fmt: skip


class _Content:
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    async def iter_any(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk


class _Response:
    def __init__(self, chunks: list[bytes]) -> None:
        self.content = _Content(chunks)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in points:
        pieces.append(data[last:point])
        last = point
    return [*pieces, data[last:]]


@settings(max_examples=300, deadline=None)
@given(st.lists(SSE_LINES, max_size=8), st.lists(st.integers(min_value=0), max_size=6))
def test_openai_stream_parser_raises_only_chatcli_errors(
    lines: list[bytes], cuts: list[int]
) -> None:
    provider: Any = Registry.builtin().create("openai")

    async def read() -> list[Event]:
        return [e async for e in provider._read_stream(_Response(split(b"".join(lines), cuts)))]

    try:
        events = asyncio.run(read())
    except ChatcliError:
        return
    # A stream that ended is told by exactly one Finish, last; text pieces are never empty.
    assert events and isinstance(events[-1], Finish)
    assert not any(isinstance(e, Finish) for e in events[:-1])
    assert all(e.text for e in events if isinstance(e, TextDelta | ReasoningDelta))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=80), JSONISH.map(json.dumps)))
def test_opchatgpts_events_raise_only_chatcli_errors(line: str) -> None:
    try:
        kind, data = Opchatgpts._event(line)
    except ChatcliError:
        return
    assert isinstance(kind, str) and isinstance(data, str)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=80), JSONISH.map(json.dumps)))
def test_fakegpt_events_raise_only_chatcli_errors(line: str) -> None:
    try:
        text = FakeGpt._assistant_text(line)
    except ChatcliError:
        return
    assert text is None or isinstance(text, str)


@settings(max_examples=300, deadline=None)
@given(JSONISH)
def test_chatgptt_replies_raise_only_chatcli_errors(reply: Any) -> None:
    try:
        text = ChatGptt._reply(reply)
    except ChatcliError:
        return
    assert isinstance(text, str)


@settings(max_examples=200, deadline=None)
@given(JSONISH)
def test_openai_whole_replies_raise_only_chatcli_errors(reply: Any) -> None:
    provider: Any = Registry.builtin().create("openai")
    try:
        events = provider._whole_reply(reply)
    except ChatcliError:
        return
    assert events and isinstance(events[-1], Finish)
    assert all(isinstance(e.text, str) for e in events if isinstance(e, TextDelta))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=80), JSONISH.map(json.dumps)))
def test_gptalk_events_raise_only_chatcli_errors(line: str) -> None:
    from chatcli.providers.gptalk import GPTalk

    try:
        text = GPTalk._content(line)
    except ChatcliError:
        return
    assert isinstance(text, str)


def anthropic_line(payload: Any) -> bytes:
    kind = payload.get("type", "message") if isinstance(payload, dict) else "message"
    return f"event: {kind}\ndata: {json.dumps(payload)}\n\n".encode()


#: Anthropic stream events: real ones in any order, broken ones, anything at all.
ANTHROPIC_LINES = st.one_of(
    st.binary(max_size=60),
    JSONISH.map(anthropic_line),
    st.sampled_from([
        anthropic_line(p) for p in [
            {"type": "message_start", "message": {"usage": {"input_tokens": 3}}},
            {"type": "message_start", "message": {"usage": {"input_tokens": "3"}}},
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}},
            {"type": "content_block_start", "index": 0,
             "content_block": {"type": "tool_use", "id": "t", "name": "f"}},
            {"type": "content_block_delta", "index": 0,
             "delta": {"type": "text_delta", "text": "hi"}},
            {"type": "content_block_delta", "index": 0,
             "delta": {"type": "thinking_delta", "thinking": "hm"}},
            {"type": "content_block_delta", "index": 0,
             "delta": {"type": "input_json_delta", "partial_json": "{"}},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta"}},
            {"type": "content_block_delta", "index": 0, "delta": "x"},
            {"type": "content_block_stop", "index": 0},
            {"type": "message_delta", "delta": {"stop_reason": "max_tokens"},
             "usage": {"output_tokens": 5}},
            {"type": "message_delta", "delta": None},
            {"type": "message_stop"},
            {"type": "ping"},
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
            {"type": "error", "error": "nope"},
        ]
    ] + [b"data: {\"type\": \"message_stop\"}\n\n", b"event: ping\ndata: {}\n\n"]),
)  # fmt: skip


def read_anthropic(data: bytes, cuts: list[int]) -> list[Event]:
    provider: Any = Registry(Registry.builtin()._entries, env={}).create("anthropic")

    async def read() -> list[Event]:
        return [e async for e in provider._read_stream(_Response(split(data, cuts)))]

    return asyncio.run(read())


#: The opening, an answer's text and the end of a stream, for streams that may succeed.
ANTHROPIC_START = anthropic_line({"type": "message_start", "message": {"usage": {}}})
ANTHROPIC_TEXT = anthropic_line(
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "ok"}}
)
ANTHROPIC_STOP = anthropic_line({"type": "message_stop"})


@st.composite
def anthropic_streams(draw: st.DrawFn) -> list[bytes]:
    """Any lines; half the time framed as an answer (start, text, ..., stop) with the lines
    in between, so that the parser's success path is fuzzed too."""
    lines = draw(st.lists(ANTHROPIC_LINES, max_size=8))
    if draw(st.booleans()):
        return [ANTHROPIC_START, ANTHROPIC_TEXT, *lines, ANTHROPIC_STOP]
    return lines


@settings(max_examples=300, deadline=None)
@given(anthropic_streams(), st.lists(st.integers(min_value=0), max_size=6))
def test_anthropic_stream_parser_raises_only_chatcli_errors(
    lines: list[bytes], cuts: list[int]
) -> None:
    try:
        events = read_anthropic(b"".join(lines), cuts)
    except ChatcliError:
        return
    # An answer that ended says so once, last, with its counts just before; it holds text,
    # or calls a tool.
    assert len(events) >= 3 and isinstance(events[-1], Finish) and isinstance(events[-2], Usage)
    assert not any(isinstance(e, Finish | Usage) for e in events[:-2])
    assert any(isinstance(e, TextDelta | ToolCallDelta) for e in events)
    assert all(e.text for e in events if isinstance(e, TextDelta | ReasoningDelta))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0), max_size=12))
def test_anthropic_stream_split_anywhere_reads_the_same(cuts: list[int]) -> None:
    fake = FakeAnthropic()
    fake.thinking = ["Hm, ", "let me see."]
    fake.pieces = ["Hé", "llo ", "wörld 🌍", "!"]
    data = b"".join(anthropic_line(p) for p in fake.events("m"))
    events = read_anthropic(data, cuts)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Héllo wörld 🌍!"
    assert "".join(e.text for e in events if isinstance(e, ReasoningDelta)) == "Hm, let me see."
    assert events[-2:] == [Usage(21, 9), Finish("stop", "end_turn")]


#: Content blocks of a whole reply: mostly well-formed, some broken, some anything.
ANTHROPIC_BLOCKS = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=5)}),
    st.fixed_dictionaries({"type": st.just("thinking"), "thinking": st.text(max_size=5)}),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "thinking", "tool_use", 3]), "text": JSONISH,
         "thinking": JSONISH}
    ),
    JSONISH,
)  # fmt: skip
ANTHROPIC_REPLIES = st.one_of(
    JSONISH,
    st.fixed_dictionaries(
        {"content": st.lists(ANTHROPIC_BLOCKS, max_size=3)},
        optional={
            "stop_reason": st.one_of(st.sampled_from(["end_turn", "max_tokens"]), JSONISH),
            "usage": st.one_of(st.just({"input_tokens": 1, "output_tokens": 2}), JSONISH),
            "type": st.sampled_from(["message", "error"]),
            "error": JSONISH,
        },
    ),
)


@settings(max_examples=200, deadline=None)
@given(ANTHROPIC_REPLIES)
def test_anthropic_whole_replies_raise_only_chatcli_errors(reply: Any) -> None:
    provider: Any = Registry(Registry.builtin()._entries, env={}).create("anthropic")
    try:
        events = provider._whole_reply(reply)
    except ChatcliError:
        return
    assert isinstance(events[-1], Finish) and isinstance(events[-2], Usage)
    assert next(e for e in events if isinstance(e, TextDelta)).text
