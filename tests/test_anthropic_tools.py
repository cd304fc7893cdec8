"""Tool calling in Anthropic's Messages API (``-p anthropic``) against the strict fake: tools
offered in the request (``tools``, ``tool_choice``), ``tool_use`` blocks read from a stream in
pieces (one, several at once, after text) or from a whole reply and put together as the engine
puts them (:class:`ToolCalls`), and the calls and their results sent back as the API takes
them: ``tool_use`` blocks in the assistant turn, ``tool_result`` blocks first in the next user
turn. The fake refuses any request that breaks the API's rules (a violation fails the test)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from chatcli.core import (
    ChatMessage,
    ChatRequest,
    Event,
    Finish,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCalls,
    ToolSpec,
    Usage,
)
from chatcli.errors import ProtocolError, ResponseStatusError
from chatcli.providers import Registry
from chatcli.providers.anthropic import Anthropic, conversation
from tests.fakes.anthropic import API_KEY, FakeAnthropic, ToolUse, tool_problems

WEATHER = ToolSpec(
    "get_weather",
    "The weather in a city now.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
CLOCK = ToolSpec("get_time", "The time now.")


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    service = FakeAnthropic()
    with service.serve():
        yield service


def provider(fake: FakeAnthropic) -> Anthropic:
    registry = Registry(Registry.builtin()._entries, env={"ANTHROPIC_API_KEY": API_KEY})
    created = registry.create("anthropic", base_url=fake.base_url)
    assert isinstance(created, Anthropic)
    return created


def events_of(fake: FakeAnthropic, request: ChatRequest) -> list[Event]:
    chosen = provider(fake)

    async def collect() -> list[Event]:
        return [event async for event in chosen.stream(request)]

    return asyncio.run(collect())


def calls_of(events: list[Event]) -> list[ToolCall]:
    """The calls as the engine puts them together."""
    assembled = ToolCalls()
    for event in events:
        if isinstance(event, ToolCallDelta):
            assembled.feed(event)
    return assembled.calls()


def text_of(events: list[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def ask(*messages: ChatMessage, **changes: Any) -> ChatRequest:
    history = messages or (ChatMessage.text("user", "Weather in Paris?"),)
    changes.setdefault("tools", (WEATHER, CLOCK))
    return ChatRequest(messages=history, model="claude-test", **changes)


def calling(fake: FakeAnthropic, *uses: ToolUse, text: tuple[str, ...] = ()) -> None:
    """Script the fake's model to answer ``text`` (if any), then make the calls ``uses``."""
    fake.pieces, fake.tool_uses, fake.stop_reason = list(text), list(uses), "tool_use"


def sent(fake: FakeAnthropic) -> dict[str, Any]:
    body = fake.messages_requests[-1].json
    assert isinstance(body, dict)
    return body


# -- calls in the answer -----------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
def test_one_call_assembled_from_pieces(fake: FakeAnthropic, stream: bool) -> None:
    calling(fake, ToolUse("toolu_01", "get_weather", ['{"ci', 'ty": "Pa', 'ris"}']))
    events = events_of(fake, ask(stream=stream))
    assert calls_of(events) == [ToolCall("toolu_01", "get_weather", '{"city": "Paris"}')]
    assert not [e for e in events if isinstance(e, TextDelta)]  # a call alone is an answer
    assert events[-2:] == [Usage(21, 9), Finish("tool_calls", "tool_use")]
    body = sent(fake)
    assert body["stream"] is stream
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "The weather in a city now.",
            "input_schema": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
        {
            "name": "get_time",
            "description": "The time now.",
            "input_schema": {"type": "object", "properties": {}},
        },
    ]
    assert "tool_choice" not in body
    if stream:
        # The whole protocol came: the block, its empty first piece, the pieces, its end.
        assert fake.streams[0] == [
            "message_start", "content_block_start", *["content_block_delta"] * 4,
            "content_block_stop", "message_delta", "message_stop",
        ]  # fmt: skip
    else:
        assert fake.streams == []


def test_parallel_calls(fake: FakeAnthropic) -> None:
    calling(
        fake,
        ToolUse("toolu_01", "get_weather", ['{"city": ', '"Paris"}']),
        ToolUse("toolu_02", "get_weather", ['{"city"', ': "Oslo"}']),
        ToolUse("toolu_03", "get_time", []),  # a tool that takes nothing: input {}
    )
    events = events_of(fake, ask(ChatMessage.text("user", "Weather in Paris and Oslo, and time?")))
    assert calls_of(events) == [
        ToolCall("toolu_01", "get_weather", '{"city": "Paris"}'),
        ToolCall("toolu_02", "get_weather", '{"city": "Oslo"}'),
        ToolCall("toolu_03", "get_time", "{}"),
    ]
    assert events[-1] == Finish("tool_calls", "tool_use")
    # Each call is a block of its own, one after the other (the indexes of the stream).
    indexes = [e.index for e in events if isinstance(e, ToolCallDelta) and e.id]
    assert indexes == [0, 1, 2]


@pytest.mark.parametrize("stream", [True, False])
def test_text_then_a_call(fake: FakeAnthropic, stream: bool) -> None:
    fake.thinking = ["Needs the weather."]
    calling(
        fake, ToolUse("toolu_01", "get_weather", ['{"city": "Paris"}']), text=("Let me ", "look.")
    )
    events = events_of(fake, ask(stream=stream))
    assert text_of(events) == "Let me look."
    assert calls_of(events) == [ToolCall("toolu_01", "get_weather", '{"city": "Paris"}')]
    kinds = [type(e) for e in events]
    # Thinking, then the text, then the call (its block after the text's), then the end.
    assert kinds.index(ReasoningDelta) < kinds.index(TextDelta) < kinds.index(ToolCallDelta)
    first_call = next(e for e in events if isinstance(e, ToolCallDelta))
    assert first_call.index == 2  # blocks 0 and 1 are the thinking and the text
    assert events[-1] == Finish("tool_calls", "tool_use")


def test_non_streamed_tool_use_becomes_deltas_with_its_input_as_json(fake: FakeAnthropic) -> None:
    calling(
        fake,
        ToolUse("toolu_01", "get_weather", ['{"city": "Paris", "days": [1, 2]}']),
        ToolUse("toolu_02", "get_time", []),
    )
    events = events_of(fake, ask(stream=False))
    assert [e for e in events if isinstance(e, ToolCallDelta)] == [
        ToolCallDelta(0, "toolu_01", "get_weather", '{"city": "Paris", "days": [1, 2]}'),
        ToolCallDelta(1, "toolu_02", "get_time", "{}"),
    ]
    assert events[-1] == Finish("tool_calls", "tool_use")
    assert fake.streams == [] and sent(fake)["stream"] is False


# -- calls and results sent back ---------------------------------------------------------------


def test_the_second_request_carries_tool_use_and_merged_tool_result_blocks(
    fake: FakeAnthropic,
) -> None:
    # The first round: the model says a word and calls two tools at once.
    calling(
        fake,
        ToolUse("toolu_01", "get_weather", ['{"city": "Paris"}']),
        ToolUse("toolu_02", "get_weather", ['{"city": ', '"Oslo"}']),
        text=("Let me look.",),
    )
    question = ChatMessage.text("user", "Weather in Paris and Oslo?")
    first = events_of(fake, ask(question, ChatMessage.text("system", "Be brief.")))
    calls = calls_of(first)
    # The second, as the engine sends it: the answer with its calls, then one result each.
    answer = ChatMessage.text("assistant", text_of(first))
    history = (
        ChatMessage.text("system", "Be brief."),
        question,
        ChatMessage(answer.role, answer.parts, tool_calls=tuple(calls)),
        ChatMessage.tool_result("toolu_01", "18 °C, light rain"),
        ChatMessage.tool_result("toolu_02", "-3 °C, snow"),
    )
    calling(fake, text=("Paris is mild; Oslo is cold.",))
    fake.stop_reason = "end_turn"
    second = events_of(fake, ask(*history))
    assert text_of(second) == "Paris is mild; Oslo is cold."
    assert second[-1] == Finish("stop", "end_turn")
    body = sent(fake)
    assert body["system"] == "Be brief."
    assert body["messages"] == [
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {
                    "type": "tool_use",
                    "id": "toolu_01",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "toolu_02",
                    "name": "get_weather",
                    "input": {"city": "Oslo"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01", "content": "18 °C, light rain"},
                {"type": "tool_result", "tool_use_id": "toolu_02", "content": "-3 °C, snow"},
            ],
        },
    ]
    assert len(fake.messages_requests) == 2 and not fake.violations


def test_a_call_without_text_and_a_question_after_the_results(fake: FakeAnthropic) -> None:
    call = ToolCall("toolu_01", "get_time", "")  # no arguments at all: input {}
    history = (
        ChatMessage.text("user", "What time is it?"),
        ChatMessage("assistant", (), tool_calls=(call,)),
        ChatMessage.tool_result("toolu_01", "12:00"),
        ChatMessage.text("user", "And in words?"),
    )
    events_of(fake, ask(*history))
    assert sent(fake)["messages"][1:] == [
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_01", "name": "get_time", "input": {}}],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01", "content": "12:00"},
                {"type": "text", "text": "And in words?"},
            ],
        },
    ]


@pytest.mark.parametrize(
    ("pieces", "arguments"),
    [
        (['{"city": "Par'], '{"city": "Par'),  # cut short
        (["[1, ", "2]"], "[1, 2]"),  # JSON, but not an object
        (["not json"], "not json"),
    ],
)
def test_malformed_arguments_become_an_empty_input_in_the_next_request(
    fake: FakeAnthropic, pieces: list[str], arguments: str
) -> None:
    calling(fake, ToolUse("toolu_01", "get_weather", pieces))
    (call,) = calls_of(events_of(fake, ask()))
    assert call == ToolCall("toolu_01", "get_weather", arguments)  # passed on as sent
    history = (
        ChatMessage.text("user", "Weather in Paris?"),
        ChatMessage("assistant", (), tool_calls=(call,)),
        ChatMessage.tool_result("toolu_01", "error: the arguments are not a JSON object"),
    )
    calling(fake, text=("Sorry.",))
    events_of(fake, ask(*history))
    messages = sent(fake)["messages"]
    assert messages[1]["content"] == [
        {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {}}
    ]
    assert messages[2]["content"][0]["content"] == "error: the arguments are not a JSON object"


def test_tool_choice_none_is_sent(fake: FakeAnthropic) -> None:
    events = events_of(fake, ask(tool_choice="none"))
    assert text_of(events) == "Hello, world!"
    body = sent(fake)
    assert body["tool_choice"] == {"type": "none"}
    assert [tool["name"] for tool in body["tools"]] == ["get_weather", "get_time"]
    # Without tools there is no tools field, nor a tool_choice.
    events_of(fake, ask(tools=(), tool_choice="none"))
    assert "tools" not in sent(fake) and "tool_choice" not in sent(fake)


def test_conversation_keeps_results_first_and_merges_same_role_turns() -> None:
    call_a = ToolCall("toolu_a", "get_weather", '{"city": "Paris"}')
    call_b = ToolCall("toolu_b", "get_time", "{}")
    _, turns = conversation(
        [
            ChatMessage.text("user", "Hi"),
            ChatMessage.text("assistant", "Looking."),
            ChatMessage("assistant", (), tool_calls=(call_a,)),
            ChatMessage("assistant", (), tool_calls=(call_b,)),
            ChatMessage.text("user", "(an aside, out of place)"),
            ChatMessage.tool_result("toolu_a", "18 °C"),
            ChatMessage.tool_result("toolu_b", " "),  # blank: no content, which is optional
        ]
    )
    assert turns == [
        {"role": "user", "content": "Hi"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Looking."},
                {
                    "type": "tool_use",
                    "id": "toolu_a",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {"type": "tool_use", "id": "toolu_b", "name": "get_time", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_a", "content": "18 °C"},
                {"type": "tool_result", "tool_use_id": "toolu_b"},
                {"type": "text", "text": "(an aside, out of place)"},
            ],
        },
    ]


def test_the_provider_says_it_takes_tools() -> None:
    assert Anthropic.supports_tools is True
    assert Anthropic.capabilities().tools


# -- a broken stream ---------------------------------------------------------------------------


START = {"type": "message_start", "message": {"usage": {"input_tokens": 3}}}


@pytest.mark.parametrize(
    ("blocks", "fragment"),
    [
        ([{"type": "content_block_start", "index": 0,
           "content_block": {"type": "tool_use", "name": "get_time", "input": {}}}],
         "malformed tool_use block"),
        ([{"type": "content_block_start", "index": 0,
           "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": []}}],
         "malformed tool_use block"),
        ([{"type": "content_block_start", "index": 0, "content_block": {"type": "text"}},
          {"type": "content_block_delta", "index": 0,
           "delta": {"type": "input_json_delta", "partial_json": "{}"}}],
         "input_json_delta outside a tool_use block"),
    ],
)  # fmt: skip
def test_a_malformed_tool_use_in_the_stream_is_a_protocol_error(
    fake: FakeAnthropic, blocks: list[dict[str, Any]], fragment: str
) -> None:
    fake.script, fake.check_order = [START, *blocks], False
    with pytest.raises(ProtocolError, match=fragment):
        events_of(fake, ask())


# -- the fake is strict --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "fragment"),
    [
        (ToolSpec("get weather!", "Spaces."), "name 'get weather!' does not match"),
        (ToolSpec("x" * 65, "Too long."), "does not match ^[a-zA-Z0-9_-]{1,64}$"),
        (ToolSpec("listy", "An array.", {"type": "array"}), "input_schema is not a schema"),
    ],
)
def test_a_bad_tool_is_a_violation(fake: FakeAnthropic, tool: ToolSpec, fragment: str) -> None:
    with pytest.raises(ResponseStatusError) as info:
        events_of(fake, ask(tools=(tool,)))
    assert info.value.status == 400
    assert any(fragment in v for v in fake.violations), fake.violations
    fake.violations.clear()  # seen, and meant


@pytest.mark.parametrize(
    ("history", "tools", "fragment"),
    [
        # A call never answered.
        ((ChatMessage.text("user", "Hi"),
          ChatMessage("assistant", (), tool_calls=(ToolCall("toolu_1", "get_time", "{}"),)),
          ChatMessage.text("user", "Well?")),
         (CLOCK,), "without tool_result blocks immediately after"),
        # A result for a call that was not made.
        ((ChatMessage.text("user", "Hi"), ChatMessage.text("assistant", "Hm."),
          ChatMessage.tool_result("toolu_9", "12:00")),
         (CLOCK,), "with no tool_use in the previous message"),
        # Tool blocks in a request that offers no tools.
        ((ChatMessage.text("user", "Hi"),
          ChatMessage("assistant", (), tool_calls=(ToolCall("toolu_1", "get_time", "{}"),)),
          ChatMessage.tool_result("toolu_1", "12:00")),
         (), "tool_use or tool_result blocks without tools"),
    ],
)  # fmt: skip
def test_tool_blocks_that_break_the_api_rules_are_violations(
    fake: FakeAnthropic,
    history: tuple[ChatMessage, ...],
    tools: tuple[ToolSpec, ...],
    fragment: str,
) -> None:
    with pytest.raises(ResponseStatusError):
        events_of(fake, ask(*history, tools=tools))
    assert any(fragment in v for v in fake.violations), fake.violations
    fake.violations.clear()


def test_ids_and_names_from_elsewhere_go_back_as_the_api_takes_them(fake: FakeAnthropic) -> None:
    # A call another service made (its id), or a model's name for a tool that is none.
    history = (
        ChatMessage.text("user", "Hi"),
        ChatMessage("assistant", (), tool_calls=(ToolCall("call 1", "functions.get_time", "{}"),)),
        ChatMessage.tool_result("call 1", "no such tool"),
    )
    events_of(fake, ask(*history, tools=(CLOCK,)))
    sent = fake.messages_requests[-1].json["messages"]
    assert sent[1]["content"][0] | {"input": None} == {
        "type": "tool_use", "id": "call_1", "name": "functions_get_time", "input": None,
    }  # fmt: skip
    assert sent[2]["content"][0]["tool_use_id"] == "call_1"


def test_the_fake_wants_results_first_and_tool_blocks_in_their_own_roles() -> None:
    fake = FakeAnthropic()
    use = {"type": "tool_use", "id": "toolu_1", "name": "get_time", "input": {}}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "12:00"}
    text = {"type": "text", "text": "Thanks."}
    good = [
        {"role": "user", "content": "Time?"},
        {"role": "assistant", "content": [use]},
        {"role": "user", "content": [result, text]},
    ]
    assert fake._tool_turns(good, True)[1] == []
    late = [*good[:2], {"role": "user", "content": [text, result]}]
    assert any("must come first" in p for p in fake._tool_turns(late, True)[1])
    swapped = [
        good[0],
        {"role": "assistant", "content": [result]},
        {"role": "user", "content": [use]},
    ]
    problems = fake._tool_turns(swapped, True)[1]
    assert any("a tool_result block in a 'assistant' turn" in p for p in problems)
    assert any("a tool_use block in a 'user' turn" in p for p in problems)
    # tool_choice: known types only, and only beside tools; tool names once each.
    assert tool_problems({"tool_choice": {"type": "none"}}) == ["tool_choice without tools"]
    tools = [{"name": "get_time", "description": "", "input_schema": {"type": "object"}}]
    assert tool_problems({"tools": tools, "tool_choice": {"type": "none"}}) == []
    assert tool_problems({"tools": tools, "tool_choice": "none"}) == [
        "malformed tool_choice: 'none'"
    ]
    assert tool_problems({"tools": [*tools, *tools]}) == [
        "tools: the name 'get_time' is not unique"
    ]
