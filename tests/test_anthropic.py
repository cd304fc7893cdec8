"""Anthropic's Messages API (``-p anthropic``) against the strict fake: the provider's events,
the request it sends, its errors, and the command line around it."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest

from chatcli.core import (
    ChatMessage,
    ChatRequest,
    Event,
    Finish,
    Message,
    ReasoningDelta,
    TextDelta,
    Usage,
)
from chatcli.errors import (
    AuthenticationError,
    MissingAuthError,
    ProtocolError,
    RateLimitError,
    ResponseStatusError,
    StreamInterruptedError,
    UsageError,
)
from chatcli.providers import Registry
from chatcli.providers.anthropic import Anthropic
from tests.conftest import Isolated, assert_one_line_error, run, run_binary
from tests.fakes.anthropic import API_KEY, FakeAnthropic, error_body

KEY_ENV = {"ANTHROPIC_API_KEY": API_KEY}


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    service = FakeAnthropic()
    with service.serve():
        yield service


def provider(fake: FakeAnthropic, env: dict[str, str] | None = None, **kwargs: Any) -> Anthropic:
    registry = Registry(Registry.builtin()._entries, env=KEY_ENV if env is None else env)
    created = registry.create("anthropic", base_url=kwargs.pop("base_url", fake.base_url))
    assert isinstance(created, Anthropic)
    return created


def request(*messages: tuple[str, str], **kwargs: Any) -> ChatRequest:
    turns = messages or (("user", "Hi"),)
    return ChatRequest(
        messages=tuple(ChatMessage.text(role, text) for role, text in turns),  # type: ignore[arg-type]
        model=kwargs.pop("model", "claude-test"),
        **kwargs,
    )


def events(chosen: Anthropic, asked: ChatRequest) -> list[Event]:
    async def go() -> list[Event]:
        return [event async for event in chosen.stream(asked)]

    return asyncio.run(go())


def events_until_error(chosen: Anthropic, asked: ChatRequest) -> tuple[list[Event], Exception]:
    seen: list[Event] = []

    async def go() -> None:
        async for event in chosen.stream(asked):
            seen.append(event)

    with pytest.raises(Exception) as info:
        asyncio.run(go())
    assert isinstance(info.value, Exception)
    return seen, info.value


def stored(isolated: Isolated) -> list[dict[str, Any]]:
    db = sqlite3.connect(isolated.chatcli_home / "data" / "sessions.db")
    db.row_factory = sqlite3.Row
    rows = [dict(r) for r in db.execute("SELECT * FROM messages ORDER BY id")]
    db.close()
    return rows


def ask(fake: FakeAnthropic, *args: str) -> list[str]:
    return ["ask", "-p", "anthropic", "--base-url", fake.base_url, *args]


# -- the events ------------------------------------------------------------------------------------


def test_streams_thinking_and_text_apart_then_usage_then_finish(fake: FakeAnthropic) -> None:
    fake.thinking = ["Two plus", " two..."]
    fake.cache_read_tokens = 100
    got = events(provider(fake), request())
    assert got == [
        ReasoningDelta("Two plus"),
        ReasoningDelta(" two..."),
        TextDelta("Hello"),
        TextDelta(", "),
        TextDelta("world"),
        TextDelta("!"),
        Usage(input_tokens=121, output_tokens=9),  # cached input counts as input
        Finish("stop", "end_turn"),
    ]
    # The fake sent the whole protocol: signature deltas and a ping were read past.
    assert fake.streams[0][:3] == ["message_start", "content_block_start", "content_block_delta"]
    assert "ping" in fake.streams[0] and fake.streams[0][-1] == "message_stop"


@pytest.mark.parametrize(
    ("stop_reason", "reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "context"),
        ("refusal", "content_filter"),
        ("tool_use", "tool_calls"),
        ("a_reason_from_the_future", "stop"),
    ],
)
def test_stop_reasons_become_finish_reasons(
    fake: FakeAnthropic, stop_reason: str, reason: str
) -> None:
    fake.stop_reason = stop_reason
    for stream in (True, False):
        got = events(provider(fake), request(stream=stream))
        assert got[-1] == Finish(reason, stop_reason)  # type: ignore[arg-type]


def test_no_stream_reads_the_whole_reply(fake: FakeAnthropic) -> None:
    fake.thinking = ["Hm."]
    got = events(provider(fake), request(stream=False))
    assert got == [
        ReasoningDelta("Hm."),
        TextDelta("Hello, world!"),
        Usage(input_tokens=21, output_tokens=9),
        Finish("stop", "end_turn"),
    ]
    assert fake.requests[0].json["stream"] is False
    assert fake.streams == []


def test_unknown_event_and_block_types_are_skipped(fake: FakeAnthropic) -> None:
    fake.script = [
        *fake.events("m")[:2],
        {"type": "content_block_delta", "index": 0, "delta": {"type": "citations_delta"}},
        {"type": "a_new_event", "payload": [1, 2]},
        *fake.events("m")[2:],
    ]
    got = events(provider(fake), request())
    assert "".join(e.text for e in got if isinstance(e, TextDelta)) == "Hello, world!"
    assert isinstance(got[-1], Finish)


def test_only_reasoning_before_the_token_limit_says_so(fake: FakeAnthropic) -> None:
    fake.thinking, fake.pieces, fake.stop_reason = ["Long thought"], [], "max_tokens"
    seen, error = events_until_error(provider(fake), request())
    assert isinstance(error, ProtocolError)
    assert "only the model's reasoning" in str(error) and "-o max_tokens N" in str(error)
    assert seen == [ReasoningDelta("Long thought")]


# -- the request -----------------------------------------------------------------------------------


def test_the_request_carries_headers_system_and_merged_history(fake: FakeAnthropic) -> None:
    asked = request(
        ("system", "Be brief."),
        ("user", "Hi"),
        ("assistant", "Hello"),
        ("user", "first part"),
        ("user", "second part"),
        ("system", "Answer in English."),
        temperature=0.2,
    )
    events(provider(fake), asked)
    (seen,) = fake.requests
    assert (seen.method, seen.path) == ("POST", "/v1/messages")
    headers = {k.lower(): v for k, v in seen.headers.items()}
    assert headers["x-api-key"] == API_KEY
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["content-type"].startswith("application/json")
    assert "authorization" not in headers
    assert seen.json == {
        "model": "claude-test",
        "max_tokens": 4096,
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "first part\n\nsecond part"},
        ],
        "system": "Be brief.\n\nAnswer in English.",
        "stream": True,
        "temperature": 0.2,
    }


def test_options_map_to_the_api_fields(fake: FakeAnthropic) -> None:
    options = Anthropic.check_options(
        {"thinking_budget": 2048, "top_k": 5, "stop_sequences": "END"}
    )
    events(provider(fake), request(options=options))
    body = fake.requests[-1].json
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert body["max_tokens"] == 2048 + 4096  # the default answer fits beside the budget
    assert body["top_k"] == 5 and body["stop_sequences"] == ["END"]
    assert "thinking_budget" not in body
    options = Anthropic.check_options({"max_tokens": 300, "top_p": 0.9, "stop_sequences": ["a"]})
    events(provider(fake), request(options=options))
    body = fake.requests[-1].json
    assert (body["max_tokens"], body["top_p"], body["stop_sequences"]) == (300, 0.9, ["a"])
    assert "thinking" not in body


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"seed": 1}, "unknown option -o seed (known: max_tokens, top_p, top_k"),
        ({"max_tokens": "many"}, "-o max_tokens 'many': expected a whole number"),
        ({"max_tokens": 0}, "expected at least 1"),
        ({"thinking_budget": 4096, "max_tokens": 4096}, "must be less than -o max_tokens"),
        ({"stop_sequences": ["ok", 3]}, "expected a list of non-empty texts"),
        ({"temperature": 1}, "not a provider option"),
    ],
)
def test_options_it_cannot_send_are_refused(options: dict[str, Any], fragment: str) -> None:
    with pytest.raises(UsageError) as info:
        Anthropic.check_options(options)
    assert fragment in str(info.value)


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
def test_base_url_with_or_without_v1(fake: FakeAnthropic, suffix: str) -> None:
    chosen = provider(fake, base_url=fake.base_url + suffix)
    assert chosen.root == fake.base_url
    events(chosen, request())
    assert fake.requests[-1].path == "/v1/messages"


def test_the_key_and_root_come_from_the_snapshot_not_the_process(
    fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-from-the-process")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://localhost:9")
    chosen = Registry(Registry.builtin()._entries, env={}).create("anthropic")
    assert chosen.config.api_key is None and chosen.root == "https://api.anthropic.com"
    with pytest.raises(MissingAuthError, match="ANTHROPIC_API_KEY"):
        chosen.preflight()
    snapshot = {"ANTHROPIC_API_KEY": API_KEY, "ANTHROPIC_BASE_URL": fake.base_url + "/v1"}
    configured = Registry(Registry.builtin()._entries, env=snapshot).create("anthropic")
    assert isinstance(configured, Anthropic) and configured.root == fake.base_url
    assert "".join(e.text for e in events(configured, request()) if isinstance(e, TextDelta))


def test_the_seed_api_streams_text(fake: FakeAnthropic) -> None:
    async def go() -> list[str]:
        messages: list[Message] = [{"role": "user", "content": "Hi"}]
        stream = Anthropic.create_async_generator(
            "", messages, base_url=fake.base_url, api_key=API_KEY, max_tokens=50
        )
        return [piece async for piece in stream]

    assert asyncio.run(go()) == ["Hello", ", ", "world", "!"]
    body = fake.requests[0].json
    assert body["model"] == "claude-sonnet-4-5" and body["max_tokens"] == 50


# -- models ----------------------------------------------------------------------------------------


def test_models_are_listed_across_pages(fake: FakeAnthropic) -> None:
    fake.models = [f"claude-{n:02d}" for n in range(7)]
    fake.max_page = 3
    assert asyncio.run(provider(fake).list_models()) == fake.models
    assert [s.query.get("after_id") for s in fake.requests] == [None, "claude-02", "claude-05"]
    assert all(s.headers.get("x-api-key") == API_KEY for s in fake.requests)


def test_models_need_the_key_too(fake: FakeAnthropic) -> None:
    with pytest.raises(MissingAuthError):
        asyncio.run(provider(fake, env={}).list_models())
    assert fake.requests == []


# -- failures --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind", "message", "error", "retryable"),
    [
        (401, "authentication_error", "invalid x-api-key", AuthenticationError, False),
        (429, "rate_limit_error", "Number of requests exceeded", RateLimitError, True),
        (500, "api_error", "Internal server error", ResponseStatusError, True),
        (529, "overloaded_error", "Overloaded", ResponseStatusError, True),
        (400, "invalid_request_error", "prompt is too long: 300000 tokens", ResponseStatusError,
         False),
    ],
)  # fmt: skip
def test_http_errors_become_one_clear_error(
    fake: FakeAnthropic,
    status: int,
    kind: str,
    message: str,
    error: type[Exception],
    retryable: bool,
) -> None:
    fake.mode, fake.status, fake.body = "status", status, error_body(kind, message)
    fake.headers = {"retry-after": "3"} if status == 429 else {}
    seen, raised = events_until_error(provider(fake), request())
    assert seen == [] and type(raised) is error
    assert isinstance(raised, ResponseStatusError)
    text = str(raised)
    assert text.startswith("anthropic: ") and message in text and "\n" not in text
    assert raised.status == status and raised.retryable is retryable
    if status == 429:
        assert isinstance(raised, RateLimitError) and raised.retry_after == 3.0
    if status == 401:
        assert "check ANTHROPIC_API_KEY" in text
    if status == 400:
        assert "longer than the model's context" in text


def test_a_wrong_key_is_refused_and_never_echoed(fake: FakeAnthropic) -> None:
    fake.key = "sk-ant-the-right-one"
    fake.mode, fake.status = "status", 401
    fake.body = error_body("authentication_error", f"invalid x-api-key {API_KEY}")
    _, raised = events_until_error(provider(fake), request())
    assert isinstance(raised, AuthenticationError)
    assert API_KEY not in str(raised) and "invalid x-api-key" in str(raised)


def test_an_overloaded_error_event_before_text_is_retryable(fake: FakeAnthropic) -> None:
    fake.mode, fake.error_after = "error_event", 0
    seen, raised = events_until_error(provider(fake), request())
    assert seen == []
    assert isinstance(raised, ResponseStatusError) and raised.status == 529 and raised.retryable
    assert (
        str(raised)
        == "anthropic: the service is overloaded (overloaded_error): Overloaded; try again later"
    )


def test_an_error_event_mid_stream_ends_without_finish(fake: FakeAnthropic) -> None:
    fake.mode, fake.error_type = "error_event", "invalid_request_error"
    seen, raised = events_until_error(provider(fake), request())
    assert seen == [TextDelta("Hello"), TextDelta(", ")]
    assert isinstance(raised, ResponseStatusError) and not raised.retryable
    assert "(invalid_request_error): Trouble" in str(raised)


def test_a_stream_cut_before_message_stop_is_interrupted(fake: FakeAnthropic) -> None:
    fake.mode = "cut"
    seen, raised = events_until_error(provider(fake), request())
    assert isinstance(raised, StreamInterruptedError) and "incomplete" in str(raised)
    # Every event but the end marker came, message_delta's stop reason included: no Finish.
    assert fake.streams[0][-1] == "message_delta"
    assert "".join(e.text for e in seen if isinstance(e, TextDelta)) == "Hello, world!"
    assert not any(isinstance(e, Finish | Usage) for e in seen)


def test_a_dropped_connection_is_interrupted(fake: FakeAnthropic) -> None:
    fake.mode = "drop"
    seen, raised = events_until_error(provider(fake), request())
    assert isinstance(raised, StreamInterruptedError)
    assert not any(isinstance(e, Finish) for e in seen)


def test_malformed_json_in_the_stream(fake: FakeAnthropic) -> None:
    fake.mode = "bad_json"
    _, raised = events_until_error(provider(fake), request())
    assert isinstance(raised, ProtocolError) and "malformed JSON in the stream" in str(raised)


@pytest.mark.parametrize(
    ("script", "fragment"),
    [
        ([{"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}],
         "'content_block_start' before message_start"),
        ([{"type": "message_start", "message": {}}, {"type": "message_start", "message": {}}],
         "a second message_start"),
        ([{"type": "message_start", "message": "x"}], "message_start without a message"),
        ([{"type": "message_start", "message": {}},
          {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}},
          {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": 7}}],
         "text that is not text"),
        ([{"type": "message_start", "message": {}},
          {"type": "message_delta", "delta": {"stop_reason": 5}}], "malformed message_delta"),
        ([{"type": "message_start", "message": {}}, {"type": "message_delta", "delta": {}},
          {"type": "message_stop"}], "no text arrived: the stream held no answer text"),
    ],
)  # fmt: skip
def test_malformed_events_are_protocol_errors(
    fake: FakeAnthropic, script: list[dict[str, Any]], fragment: str
) -> None:
    fake.script, fake.check_order = script, False  # some break the order on purpose
    _, raised = events_until_error(provider(fake), request())
    assert isinstance(raised, ProtocolError), raised
    assert fragment in str(raised)


def test_an_empty_stream_is_not_an_answer(fake: FakeAnthropic) -> None:
    fake.script = []
    _, raised = events_until_error(provider(fake), request())
    assert isinstance(raised, ProtocolError) and "holding nothing at all" in str(raised)


# -- the command line ------------------------------------------------------------------------------


def test_ask_through_the_cli_keeps_answer_reasoning_and_usage(
    fake: FakeAnthropic, isolated: Isolated
) -> None:
    fake.thinking = ["Greeting back."]
    result = run(ask(fake, "--system", "Be brief.", "-S", "a", "Hi"), isolated, env=KEY_ENV)
    assert (result.returncode, result.stdout, result.stderr) == (0, "Hello, world!\n", "")
    body = fake.requests[0].json
    assert body["system"] == "Be brief." and body["model"] == "claude-sonnet-4-5"
    assert body["messages"] == [{"role": "user", "content": "Hi"}]
    rows = stored(isolated)
    answer = rows[-1]
    assert (answer["role"], answer["content"], answer["status"]) == (
        "assistant", "Hello, world!", "complete",
    )  # fmt: skip
    assert answer["reasoning"] == "Greeting back."
    assert (answer["input_tokens"], answer["output_tokens"]) == (21, 9)
    # The next question carries the history, roles alternating, the system prompt on top.
    fake.pieces = ["Sure."]
    result = run(ask(fake, "-S", "a", "-m", "claude-opus-4-1", "Again?"), isolated, env=KEY_ENV)
    assert result.returncode == 0, result.stderr
    body = fake.requests[1].json
    assert body["model"] == "claude-opus-4-1" and body["system"] == "Be brief."
    assert body["messages"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello, world!"},
        {"role": "user", "content": "Again?"},
    ]


def test_no_stream_and_options_through_the_cli(fake: FakeAnthropic, isolated: Isolated) -> None:
    args = ask(fake, "--no-stream", "-o", "thinking_budget", "2048", "-o", "max_tokens", "8000",
               "--json", "Hi")  # fmt: skip
    result = run(args, isolated, env=KEY_ENV)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert (out["text"], out["provider"], out["finish_reason"]) == (
        "Hello, world!",
        "anthropic",
        "stop",
    )
    body = fake.requests[0].json
    assert body["stream"] is False and body["max_tokens"] == 8000
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}


def test_config_toml_sets_its_default_model(fake: FakeAnthropic, isolated: Isolated) -> None:
    isolated.write_config('[providers.anthropic]\nmodel = "claude-haiku-4-5"\n')
    result = run(ask(fake, "Hi"), isolated, env=KEY_ENV)
    assert result.returncode == 0, result.stderr
    assert fake.requests[0].json["model"] == "claude-haiku-4-5"


def test_an_unknown_option_is_a_usage_error(fake: FakeAnthropic, isolated: Isolated) -> None:
    result = run(ask(fake, "-o", "seed", "1", "Hi"), isolated, env=KEY_ENV)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "anthropic", "unknown option -o seed")
    assert fake.requests == []


def test_a_request_the_api_refuses_is_one_line(fake: FakeAnthropic, isolated: Isolated) -> None:
    args = ask(
        fake, "--retries", "0", "--temperature", "0.5", "-o", "thinking_budget", "2000", "Hi"
    )
    result = run(args, isolated, env=KEY_ENV)
    assert result.returncode == 1
    assert_one_line_error(
        result.stderr, "anthropic: the server rejected the request", "temperature may only be set"
    )
    assert fake.rejections and not fake.violations


def test_a_cut_at_max_tokens_exits_3(fake: FakeAnthropic, isolated: Isolated) -> None:
    fake.stop_reason = "max_tokens"
    result = run(ask(fake, "-o", "max_tokens", "4", "Hi"), isolated, env=KEY_ENV)
    assert result.returncode == 3 and result.stdout == "Hello, world!\n"
    assert "cut at the token limit" in result.stderr


def test_missing_key_stores_nothing(fake: FakeAnthropic, isolated: Isolated) -> None:
    isolated.env.pop("ANTHROPIC_API_KEY", None)
    result = run(ask(fake, "-S", "nokey", "Hi"), isolated)
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "anthropic: no API key: set ANTHROPIC_API_KEY")
    assert fake.requests == []
    listed = run(["sessions", "list", "--json"], isolated)
    assert listed.returncode == 0 and json.loads(listed.stdout) == []


def test_overloaded_before_text_is_retried(
    fake: FakeAnthropic, isolated: Isolated, fast_retries: None
) -> None:
    fake.mode, fake.error_after, fake.fail_times = "error_event", 0, 1
    result = run(ask(fake, "--retries", "1", "Hi"), isolated, env=KEY_ENV)
    assert (result.returncode, result.stdout) == (0, "Hello, world!\n"), result.stderr
    assert len(fake.messages_requests) == 2
    assert "overloaded" in result.stderr and "retrying" in result.stderr


def test_http_529_is_retried(fake: FakeAnthropic, isolated: Isolated, fast_retries: None) -> None:
    fake.mode, fake.status, fake.fail_times = "status", 529, 1
    fake.body = error_body("overloaded_error", "Overloaded")
    result = run(ask(fake, "--retries", "1", "Hi"), isolated, env=KEY_ENV)
    assert (result.returncode, result.stdout) == (0, "Hello, world!\n"), result.stderr
    assert len(fake.messages_requests) == 2 and "HTTP 529" in result.stderr


def test_overloaded_after_text_keeps_the_part(fake: FakeAnthropic, isolated: Isolated) -> None:
    fake.mode = "error_event"
    result = run(ask(fake, "--retries", "2", "-S", "o", "Hi"), isolated, env=KEY_ENV)
    assert result.returncode == 1 and result.stdout == "Hello, \n"
    assert_one_line_error(result.stderr, "anthropic: the service is overloaded")
    assert len(fake.messages_requests) == 1  # text was shown: never retried
    rows = stored(isolated)
    assert (rows[-1]["content"], rows[-1]["status"]) == ("Hello, ", "interrupted")


def test_providers_lists_it_with_its_key_variable(isolated: Isolated) -> None:
    unset = {"ANTHROPIC_API_KEY": "", "ANTHROPIC_BASE_URL": ""}
    table = run(["providers"], isolated, env=unset).stdout
    row = next(line for line in table.splitlines() if line.startswith("anthropic"))
    assert "https://api.anthropic.com" in row
    assert "ANTHROPIC_API_KEY (not set)" in " ".join(table.split())
    listed = run(["providers", "--json"], isolated, env=KEY_ENV)
    facts = {r["name"]: r for r in json.loads(listed.stdout)}["anthropic"]
    assert facts["key_env"] == "ANTHROPIC_API_KEY" and facts["key_set"] is True
    assert facts["kind"] == "anthropic" and facts["default_model"] == "claude-sonnet-4-5"
    assert facts["lists_models"] and facts["supports_system_message"]
    assert facts["options"] == ["max_tokens", "top_p", "top_k", "stop_sequences", "thinking_budget"]
    assert API_KEY not in listed.stdout


def test_models_through_the_cli(fake: FakeAnthropic, isolated: Isolated) -> None:
    result = run(["models", "-p", "anthropic", "--base-url", fake.base_url], isolated, env=KEY_ENV)
    assert (result.returncode, result.stdout) == (0, "".join(f"{m}\n" for m in fake.models))


def test_the_real_binary_answers_and_lists(fake: FakeAnthropic, isolated: Isolated) -> None:
    fake.thinking = ["(thinking never reaches stdout)"]
    result = run_binary(ask(fake, "Hi"), isolated, env=KEY_ENV)
    assert (result.returncode, result.stdout, result.stderr) == (0, "Hello, world!\n", "")
    listed = run_binary(["models", "-p", "anthropic", "--base-url", fake.base_url + "/v1"],
                        isolated, env=KEY_ENV)  # fmt: skip
    assert listed.returncode == 0 and listed.stdout.split() == fake.models
    missing = run_binary(ask(fake, "Hi"), isolated, env={"ANTHROPIC_API_KEY": ""})
    assert missing.returncode == 1
    assert_one_line_error(missing.stderr, "anthropic", "ANTHROPIC_API_KEY")
