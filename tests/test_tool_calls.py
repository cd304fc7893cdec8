"""Function calling in the OpenAI-compatible protocol (issue 19, its first layer): tools offered
in the request, tool calls read from a stream in pieces (one, several at once, their pieces
interleaved) or from a whole reply, put together and bounded, and the calls and their results
sent back as the protocol takes them. The strict fake refuses any malformed request."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from chatcli.core import (
    ChatMessage,
    ChatRequest,
    Event,
    Finish,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCalls,
    ToolSpec,
)
from chatcli.errors import ProtocolError
from chatcli.providers import Registry
from tests.servers import FakeOpenAI

WEATHER = ToolSpec(
    "get_weather",
    "The weather in a city now.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def piece(
    index: int, arguments: str, call_id: str | None = None, name: str | None = None
) -> dict[str, Any]:
    function: dict[str, Any] = {"arguments": arguments}
    if name is not None:
        function["name"] = name
    raw: dict[str, Any] = {"index": index, "function": function}
    if call_id is not None:
        raw.update(id=call_id, type="function")
    return raw


def events_of(fake: FakeOpenAI, request: ChatRequest) -> list[Event]:
    provider = Registry.builtin().create("ollama", base_url=fake.base_url)

    async def collect() -> list[Event]:
        return [event async for event in provider.stream(request)]

    return asyncio.run(collect())


def calls_of(events: list[Event]) -> list[ToolCall]:
    assembled = ToolCalls()
    for event in events:
        if isinstance(event, ToolCallDelta):
            assembled.feed(event)
    return assembled.calls()


def ask(text: str = "weather in Paris and Oslo?", **changes: Any) -> ChatRequest:
    return ChatRequest(
        messages=(ChatMessage.text("user", text),), model="m", tools=(WEATHER,), **changes
    )


@pytest.mark.parametrize("stream", [True, False])
def test_one_call_in_pieces(fake: FakeOpenAI, stream: bool) -> None:
    fake.pieces = []
    fake.finish_reason = "tool_calls"
    fake.tool_call_chunks = [
        [piece(0, "", "call_a", "get_weather")],
        [piece(0, '{"ci')],
        [piece(0, 'ty": "Pa')],
        [piece(0, 'ris"}')],
    ]
    events = events_of(fake, ask(stream=stream))
    assert calls_of(events) == [ToolCall("call_a", "get_weather", '{"city": "Paris"}')]
    assert [e for e in events if isinstance(e, Finish)] == [Finish("tool_calls", "tool_calls")]
    assert not [e for e in events if isinstance(e, TextDelta)]  # a call alone is an answer
    body = fake.requests[-1].body
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city now.",
                "parameters": dict(WEATHER.parameters),
            },
        }
    ]


def test_parallel_calls_with_interleaved_pieces_and_text_first(fake: FakeOpenAI) -> None:
    fake.pieces = ["Let me look."]
    fake.finish_reason = "tool_calls"
    fake.tool_call_chunks = [
        [piece(0, "", "call_a", "get_weather"), piece(1, "", "call_b", "get_weather")],
        [piece(1, '{"city": "Oslo"}')],
        [piece(0, '{"city": '), piece(0, '"Paris"}')],
    ]
    events = events_of(fake, ask())
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Let me look."
    assert calls_of(events) == [
        ToolCall("call_a", "get_weather", '{"city": "Paris"}'),
        ToolCall("call_b", "get_weather", '{"city": "Oslo"}'),
    ]


def test_malformed_arguments_and_unknown_tools_are_passed_on_as_sent(fake: FakeOpenAI) -> None:
    # Checking them is for whoever runs tools: the model is then told what was wrong.
    fake.pieces = []
    fake.finish_reason = "tool_calls"
    fake.tool_call_chunks = [
        [piece(0, '{"city": "Par', "c1", "get_weather")],
        [piece(1, "{}", "c2", "launch_rockets")],
    ]
    calls = calls_of(events_of(fake, ask()))
    assert calls[0].arguments == '{"city": "Par' and calls[1].name == "launch_rockets"
    with pytest.raises(json.JSONDecodeError):
        json.loads(calls[0].arguments)


@pytest.mark.parametrize(
    "raw",
    [
        "not a list",
        [42],
        [{"index": "zero", "function": {"name": "x"}}],
        [{"index": 0, "function": "get_weather"}],
        [{"index": 0, "id": 7, "function": {"name": "x"}}],
    ],
)
def test_a_malformed_tool_call_is_a_protocol_error(fake: FakeOpenAI, raw: Any) -> None:
    fake.pieces = []
    fake.tool_call_chunks = [raw]
    with pytest.raises(ProtocolError, match="malformed tool"):
        events_of(fake, ask())


def test_calls_and_results_go_back_as_the_protocol_takes_them(fake: FakeOpenAI) -> None:
    call = ToolCall("call_a", "get_weather", '{"city": "Paris"}')
    history = (
        ChatMessage.text("user", "weather in Paris?"),
        ChatMessage("assistant", (), tool_calls=(call,)),
        ChatMessage.tool_result("call_a", "18 °C, light rain"),
    )
    events = events_of(fake, ChatRequest(messages=history, model="m", tools=(WEATHER,)))
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Hello, world!"
    sent = fake.requests[-1].body["messages"]
    assert sent[1] == {
        "role": "assistant",
        "content": "",  # (a string: llama.cpp's server refuses null)
        "tool_calls": [
            {
                "id": "call_a",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    }
    assert sent[2] == {"role": "tool", "tool_call_id": "call_a", "content": "18 °C, light rain"}
    assert not fake.violations


def test_tool_calls_are_bounded_and_need_a_name() -> None:
    calls = ToolCalls()
    for index in range(ToolCalls.MAX_CALLS):
        calls.feed(ToolCallDelta(index, f"c{index}", "f"))
    with pytest.raises(ValueError, match="more than 64 tool calls"):
        calls.feed(ToolCallDelta(ToolCalls.MAX_CALLS, "c", "f"))
    big = ToolCalls()
    big.feed(ToolCallDelta(0, "c", "f", "x" * ToolCalls.MAX_ARGUMENTS))
    with pytest.raises(ValueError, match="arguments passed"):
        big.feed(ToolCallDelta(0, arguments="x"))
    nameless = ToolCalls()
    nameless.feed(ToolCallDelta(0, "c", None, "{}"))
    with pytest.raises(ValueError, match="has no name"):
        nameless.calls()
    # A name sent again with every piece is kept once; an id missing gets one.
    repeated = ToolCalls()
    repeated.feed(ToolCallDelta(0, None, "get_weather", "{"))
    repeated.feed(ToolCallDelta(0, None, "get_weather", "}"))
    [call] = repeated.calls()
    assert (call.name, call.arguments) == ("get_weather", "{}")
    assert re.fullmatch(r"call_[0-9a-f]{16}", call.id)
    # Made up per answer, never call_0 again: a conversation's calls stay told apart.
    other = ToolCalls()
    other.feed(ToolCallDelta(0, None, "get_weather", "{}"))
    assert other.calls()[0].id != call.id
    # A name that never ends is a protocol fault, not memory without end.
    endless = ToolCalls()
    with pytest.raises(ValueError, match="name passed 256"):
        for piece in range(300):
            endless.feed(ToolCallDelta(0, name=f"n{piece}"))
