"""The tool loop (issue 19): an answer that calls tools is a round; the calls are answered (run,
refused, or told what was wrong) and the model is asked again with the results, up to a cap.
Driven through the engine against the strict fake, which refuses any call left unanswered or
answered out of place."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from chatcli.core import ChatMessage, ToolCall, without_tools
from chatcli.errors import ProtocolError, UsageError
from chatcli.providers import Registry
from chatcli.render import NullRenderer
from chatcli.store import SessionStore
from chatcli.tools import (
    MAX_RESULT,
    Answer,
    Tool,
    Toolbox,
    ToolError,
    ToolResult,
    ToolRound,
    rounds_from_json,
    rounds_json,
)
from chatcli.turn import Turn, TurnRequest, run_turn
from tests.servers import FakeOpenAI


class Echo:
    """A read-only tool that returns what it was given, and counts its runs."""

    name = "echo"
    description = "Say it back."
    parameters: Mapping[str, Any] = {
        "type": "object",
        "properties": {"text": {"type": "string"}},
        "required": ["text"],
    }
    acts = False
    source = "test"

    def __init__(self) -> None:
        self.runs: list[Mapping[str, Any]] = []

    async def run(self, arguments: Mapping[str, Any]) -> ToolResult:
        self.runs.append(arguments)
        if "text" not in arguments:
            raise ToolError("text is required")
        return ToolResult(f"echo: {arguments['text']}")


class Deploy(Echo):
    """A tool that acts: it needs consent."""

    name = "deploy"
    acts = True

    async def run(self, arguments: Mapping[str, Any]) -> ToolResult:
        self.runs.append(arguments)
        return ToolResult("deployed")


class Scripted:
    """Consent that answers from a list, and remembers what it was shown."""

    def __init__(self, *answers: Answer | None) -> None:
        self.answers = list(answers)
        self.asked: list[str] = []
        self.shown: list[tuple[str, ToolResult]] = []

    async def ask(self, tool: Tool, call: ToolCall, arguments: Mapping[str, Any]) -> Answer | None:
        self.asked.append(tool.name)
        return self.answers.pop(0)

    def show(self, call: ToolCall, result: ToolResult) -> None:
        self.shown.append((call.name, result))


def call(index: int, name: str, arguments: str, call_id: str | None = None) -> dict[str, Any]:
    return {
        "index": index,
        "id": call_id or f"call_{name}_{index}",
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def calls_reply(*calls: dict[str, Any], text: list[str] | None = None) -> dict[str, Any]:
    """A scripted reply that calls tools (after ``text``, if any)."""
    return {"pieces": text or [], "tool_call_chunks": [list(calls)], "finish_reason": "tool_calls"}


def text_reply(*pieces: str) -> dict[str, Any]:
    return {"pieces": list(pieces), "tool_call_chunks": [], "finish_reason": "stop"}


def turn_with(
    fake: FakeOpenAI,
    toolbox: Toolbox,
    question: str = "go",
    *,
    stream: bool = True,
    options: dict[str, Any] | None = None,
) -> tuple[Turn, BaseException | None]:
    request = TurnRequest(
        options=options or {},
        provider="ollama",
        base_url=fake.base_url,
        model="m",
        messages=(ChatMessage.text("user", question),),
        tools=toolbox.specs(),
        stream=stream,
        retries=0,
    )
    turn = Turn(provider="ollama")
    notices: list[str] = []
    error: BaseException | None = None
    try:
        asyncio.run(
            run_turn(
                request,
                Registry.builtin(),
                NullRenderer(),
                turn=turn,
                toolbox=toolbox,
                notice=notices.append,
            )
        )
    except BaseException as exc:
        error = exc
    NOTICES[:] = notices
    return turn, error


#: The notices of the last turn_with.
NOTICES: list[str] = []


def chat_bodies(fake: FakeOpenAI) -> list[dict[str, Any]]:
    return [r.body for r in fake.requests if r.path.endswith("/chat/completions")]


@pytest.mark.parametrize("stream", [True, False])
def test_a_call_is_run_and_its_result_sent_back_for_the_answer(
    fake: FakeOpenAI, stream: bool
) -> None:
    echo = Echo()
    fake.replies = [
        calls_reply(call(0, "echo", '{"text": "hi"}'), text=["Let me ", "check."]),
        text_reply("It said ", "hi."),
    ]
    turn, error = turn_with(fake, Toolbox(tools=[echo]), stream=stream)
    assert error is None and turn.status == "complete"
    assert echo.runs == [{"text": "hi"}]
    assert turn.text == "Let me check.\n\nIt said hi."
    assert turn.text[turn.final_from :] == "It said hi."
    [done] = turn.rounds
    assert done.text == "Let me check." and done.results == (ToolResult("echo: hi"),)
    first, second = chat_bodies(fake)
    assert [t["function"]["name"] for t in first["tools"]] == ["echo"]
    assert second["messages"][1:] == [
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {
                    "id": "call_echo_0",
                    "type": "function",
                    "function": {"name": "echo", "arguments": '{"text": "hi"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_echo_0", "content": "echo: hi"},
    ]


def test_parallel_calls_are_answered_in_order_in_one_round(fake: FakeOpenAI) -> None:
    echo = Echo()
    fake.replies = [
        calls_reply(call(0, "echo", '{"text": "a"}'), call(1, "echo", '{"text": "b"}')),
        text_reply("done"),
    ]
    turn, error = turn_with(fake, Toolbox(tools=[echo]))
    assert error is None and len(turn.rounds) == 1
    assert [r.text for r in turn.rounds[0].results] == ["echo: a", "echo: b"]
    results = [m for m in chat_bodies(fake)[1]["messages"] if m["role"] == "tool"]
    assert [(m["tool_call_id"], m["content"]) for m in results] == [
        ("call_echo_0", "echo: a"),
        ("call_echo_1", "echo: b"),
    ]


def test_malformed_arguments_and_unknown_tools_are_told_to_the_model_not_run(
    fake: FakeOpenAI,
) -> None:
    echo = Echo()
    fake.replies = [
        calls_reply(
            call(0, "echo", '{"text": "unclosed'),
            call(1, "rm_rf", "{}"),
            call(2, "echo", "[1, 2]"),
            call(3, "echo", "{}"),
        ),
        text_reply("sorry"),
    ]
    turn, error = turn_with(fake, Toolbox(tools=[echo]))
    assert error is None and turn.status == "complete"
    results = turn.rounds[0].results
    assert all(r.is_error for r in results)
    assert "not valid JSON" in results[0].text
    assert "there is no tool 'rm_rf'" in results[1].text and "echo" in results[1].text
    assert "must be a JSON object" in results[2].text
    assert results[3].text == "text is required"  # the tool's own error
    assert echo.runs == [{}]  # only the well-formed call reached the tool


def test_a_runaway_loop_is_asked_to_answer_at_the_cap(fake: FakeOpenAI) -> None:
    echo = Echo()
    fake.replies = [calls_reply(call(0, "echo", '{"text": "again"}')) for _ in range(3)]
    fake.replies.append(text_reply("fine, ", "the answer"))
    turn, error = turn_with(fake, Toolbox(tools=[echo], max_rounds=3))
    assert error is None and turn.status == "complete" and turn.text == "fine, the answer"
    assert len(turn.rounds) == 3 and len(echo.runs) == 3
    bodies = chat_bodies(fake)
    assert [b.get("tool_choice") for b in bodies] == [None, None, None, "none"]
    assert any("asked to answer now" in n for n in NOTICES)


def test_the_last_round_asks_for_no_tools_over_a_tool_choice_option(fake: FakeOpenAI) -> None:
    fake.replies = [calls_reply(call(0, "echo", '{"text": "x"}')), text_reply("answer")]
    turn, error = turn_with(
        fake, Toolbox(tools=[Echo()], max_rounds=1), options={"tool_choice": "required"}
    )
    assert error is None and turn.text == "answer"
    assert [b["tool_choice"] for b in chat_bodies(fake)] == ["required", "none"]


def test_a_model_that_calls_tools_past_the_cap_fails_truthfully(fake: FakeOpenAI) -> None:
    echo = Echo()
    fake.replies = [calls_reply(call(0, "echo", '{"text": "again"}')) for _ in range(3)]
    turn, error = turn_with(fake, Toolbox(tools=[echo], max_rounds=2))
    assert isinstance(error, ProtocolError) and "kept calling tools" in str(error)
    assert turn.status == "interrupted"  # two rounds ran: not a clean failure either
    assert len(turn.rounds) == 2 and len(echo.runs) == 2


def test_a_tool_that_acts_asks_first_and_always_lasts(fake: FakeOpenAI) -> None:
    deploy = Deploy()
    consent = Scripted("no", "always")
    box = Toolbox(tools=[deploy], consent=consent)
    fake.replies = [
        calls_reply(call(0, "deploy", "{}")),
        calls_reply(call(0, "deploy", "{}", "second")),
        calls_reply(call(0, "deploy", "{}", "third")),
        text_reply("ok"),
    ]
    turn, error = turn_with(fake, box)
    assert error is None
    assert consent.asked == ["deploy", "deploy"]  # the third call was not asked: "always"
    outcomes = [r.results[0] for r in turn.rounds]
    assert outcomes[0].is_error and "declined" in outcomes[0].text
    assert outcomes[1:] == [ToolResult("deployed"), ToolResult("deployed")]
    assert len(deploy.runs) == 2 and "deploy" in box.allowed
    assert [name for name, _ in consent.shown] == ["deploy"] * 3


def test_off_a_terminal_a_tool_that_acts_is_refused_unless_allowed(fake: FakeOpenAI) -> None:
    deploy = Deploy()
    fake.replies = [calls_reply(call(0, "deploy", "{}")), text_reply("could not")]
    turn, _ = turn_with(fake, Toolbox(tools=[deploy]))  # NoConsent: nobody to ask
    refused = turn.rounds[0].results[0]
    assert refused.is_error and "--allow-tool deploy" in refused.text and not deploy.runs
    fake.replies = [calls_reply(call(0, "deploy", "{}")), text_reply("done")]
    turn, _ = turn_with(fake, Toolbox(tools=[deploy], allowed={"deploy"}))
    assert turn.rounds[0].results[0] == ToolResult("deployed")


def test_big_results_are_cut_for_the_model_with_a_note(fake: FakeOpenAI) -> None:
    class Big(Echo):
        async def run(self, arguments: Mapping[str, Any]) -> ToolResult:
            return ToolResult("x" * (MAX_RESULT * 3))

    fake.replies = [calls_reply(call(0, "echo", "{}")), text_reply("ok")]
    turn_with(fake, Toolbox(tools=[Big()]))
    sent = next(m for m in chat_bodies(fake)[1]["messages"] if m["role"] == "tool")["content"]
    assert len(sent) < MAX_RESULT + 200
    assert sent.endswith(f"{MAX_RESULT * 2:,} more characters not shown]")


def test_ctrl_c_while_a_tool_runs_keeps_the_rounds_and_says_interrupted(fake: FakeOpenAI) -> None:
    class Stuck(Echo):
        async def run(self, arguments: Mapping[str, Any]) -> ToolResult:
            asyncio.current_task().cancel()  # type: ignore[union-attr]
            await asyncio.sleep(10)
            return ToolResult("never")

    fake.replies = [calls_reply(call(0, "echo", "{}"), text=["Working."]), text_reply("x")]
    turn, error = turn_with(fake, Toolbox(tools=[Stuck()]))
    assert isinstance(error, asyncio.CancelledError)
    assert turn.status == "interrupted" and turn.text == "Working.\n\n"
    assert len(chat_bodies(fake)) == 1


def test_a_provider_that_cannot_call_tools_refuses_them_in_one_line(fake: FakeOpenAI) -> None:
    from chatcli.turn import preflight

    request = TurnRequest(
        provider="gptalk",
        messages=(ChatMessage.text("user", "hi"),),
        tools=Toolbox(tools=[Echo()]).specs(),
    )
    with pytest.raises(UsageError, match=r"^gptalk cannot call tools \(--tool, --mcp\)"):
        preflight(request, Registry.builtin())


def test_rounds_are_kept_in_the_session_and_sent_again_with_the_history(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    from chatcli.conversation import Conversation

    store = SessionStore(tmp_path / "sessions.db")
    echo = Echo()

    class Fixed:
        def __init__(self, box: Toolbox) -> None:
            self.box = box

        async def toolbox(self) -> Toolbox:
            return self.box

        async def aclose(self) -> None:
            pass

    defaults = TurnRequest(provider="ollama", base_url=fake.base_url, model="m", retries=0)
    conversation = Conversation(Registry.builtin(), defaults, store=store)
    conversation.toolset = Fixed(Toolbox(tools=[echo]))  # type: ignore[assignment]
    fake.replies = [
        calls_reply(call(0, "echo", '{"text": "1"}'), text=["Looking."]),
        text_reply("Found 1."),
    ]
    asyncio.run(conversation.send("count", NullRenderer()))
    assert conversation.session is not None
    [_, answer] = store.messages(conversation.session.id)
    assert answer.content == "Looking.\n\nFound 1."
    rounds, final_from = rounds_from_json(answer.tools)
    assert rounds[0].calls == (ToolCall("call_echo_0", "echo", '{"text": "1"}'),)
    assert answer.content[final_from:] == "Found 1."

    # -c: a new conversation on the session sends the rounds back as the protocol wants.
    session = store.get(conversation.session.id)
    again = Conversation(Registry.builtin(), defaults, store=store, session=session)
    again.toolset = Fixed(Toolbox(tools=[echo]))  # type: ignore[assignment]
    fake.replies = [text_reply("Yes.")]
    asyncio.run(again.send("sure?", NullRenderer()))
    messages = chat_bodies(fake)[-1]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant", "user"]
    assert messages[1]["tool_calls"][0]["id"] == "call_echo_0"
    assert messages[2] == {"role": "tool", "tool_call_id": "call_echo_0", "content": "echo: 1"}
    assert messages[3] == {"role": "assistant", "content": "Found 1."}

    # Without tools on, the rounds go as their text (services refuse calls without tools).
    plain = Conversation(Registry.builtin(), defaults, store=store, session=session)
    fake.replies = [text_reply("Yes.")]
    asyncio.run(plain.send("sure?", NullRenderer()))
    body = chat_bodies(fake)[-1]
    assert "tools" not in body
    assert body["messages"][:2] == [
        {"role": "user", "content": "count"},
        {"role": "assistant", "content": "Looking.\n\nFound 1."},
    ]


def test_a_provider_without_tools_gets_the_rounds_as_their_text() -> None:
    done = ToolRound("Looking.", (ToolCall("c1", "echo", "{}"),), (ToolResult("echo: 1"),))
    messages = (
        ChatMessage.text("user", "count"),
        *done.messages(),
        ChatMessage.text("assistant", "Found 1."),
        ChatMessage.text("user", "sure?"),
    )
    flat = without_tools(messages)
    assert [(m.role, m.content, m.tool_calls) for m in flat] == [
        ("user", "count", ()),
        ("assistant", "Looking.\n\nFound 1.", ()),
        ("user", "sure?", ()),
    ]


def test_stored_rounds_that_are_damaged_are_left_out_not_fatal() -> None:
    done = ToolRound("", (ToolCall("c1", "echo", "{}"),), (ToolResult("x", True),))
    text = rounds_json([done], 0)
    assert text is not None and rounds_from_json(text) == ((done,), 0)
    assert rounds_json([], 0) is None
    for bad in [
        "{",
        "[]",
        json.dumps({"rounds": [{"text": "", "calls": [], "results": []}]}),
        json.dumps({"final_from": -1, "rounds": []}),
        '{"rounds": 5, "final_from": 0}',
    ]:
        assert rounds_from_json(bad) == ((), 0)


def test_ctrl_c_between_two_calls_keeps_the_one_that_ran(fake: FakeOpenAI) -> None:
    echo = Echo()

    class StopsHere(Echo):
        name = "stop"

        async def run(self, arguments: Mapping[str, Any]) -> ToolResult:
            asyncio.current_task().cancel()  # type: ignore[union-attr]
            await asyncio.sleep(10)
            return ToolResult("never")

    fake.replies = [
        calls_reply(
            call(0, "echo", '{"text": "ran"}'), call(1, "stop", "{}"), call(2, "echo", "{}")
        )
    ]
    turn, error = turn_with(fake, Toolbox(tools=[echo, StopsHere()]))
    assert isinstance(error, asyncio.CancelledError) and turn.status == "interrupted"
    [done] = turn.rounds  # kept: the first call ran, and may have changed things
    assert done.results[0] == ToolResult("echo: ran")
    assert all(r.is_error and "not run" in r.text for r in done.results[1:])
    assert len(done.results) == len(done.calls) == 3


def test_run_shell_gets_no_keys_from_the_environment() -> None:
    from chatcli.tools.setup import without_secrets

    env = {
        "PATH": "/bin", "HOME": "/h", "OPENAI_API_KEY": "sk-1", "GITHUB_TOKEN": "t",
        "MY_SERVICE": "x", "DB_PASSWORD": "p", "SSH_AUTH_SOCK": "/s",
        "HTTPS_PROXY": "http://u:pw@proxy:3128", "HTTP_PROXY": "http://proxy:3128",
    }  # fmt: skip
    assert without_secrets(env, ["MY_SERVICE"]) == {
        "PATH": "/bin", "HOME": "/h", "HTTP_PROXY": "http://proxy:3128",
    }  # fmt: skip


def test_each_round_shows_its_own_thinking_and_text_once() -> None:
    import io

    from chatcli.render import MarkdownRenderer, make_console

    out = io.StringIO()
    renderer = MarkdownRenderer(make_console(out), live=False, reasoning="show")
    renderer.start()
    renderer.think("first thought")
    renderer.feed("Let me look.")
    renderer.feed("\n\n")  # as run_turn ends a round's text
    renderer.finish()
    renderer.start()  # the next round
    renderer.think("second thought")
    renderer.feed("Found it.")
    renderer.finish()
    text = out.getvalue()
    assert "first thought" in text and "second thought" in text
    assert text.count("Let me look.") == 1 and text.count("Found it.") == 1
