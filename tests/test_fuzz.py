"""Stream and reply parsers fed arbitrary bytes, split anywhere: only chatcli's own errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from chatcli.core import Event, Finish, ReasoningDelta, TextDelta
from chatcli.errors import ChatcliError
from chatcli.providers import Registry
from chatcli.providers.chatgptt import ChatGptt
from chatcli.providers.fakegpt import FakeGpt
from chatcli.providers.opchatgpts import Opchatgpts

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
