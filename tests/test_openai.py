"""The OpenAI-compatible protocol through the Python API, against the recording fake."""

from __future__ import annotations

import asyncio
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
    ProviderConnectionError,
    ProviderError,
    ProviderTimeoutError,
    RateLimitError,
    ResponseStatusError,
    StreamInterruptedError,
    UsageError,
)
from chatcli.providers import AsyncGeneratorProvider, Registry, get_provider
from chatcli.providers.openai import OpenAICompatible
from tests.conftest import Isolated, run
from tests.servers import FakeOpenAI

MESSAGES: list[Message] = [
    {"role": "system", "content": "Be brief"},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello"},
    {"role": "user", "content": "2+2?"},
]


def collect(name: str, model: str = "", **kwargs: Any) -> list[str]:
    provider = get_provider(name)
    assert issubclass(provider, AsyncGeneratorProvider)

    async def go() -> list[str]:
        return [p async for p in provider.create_async_generator(model, MESSAGES, **kwargs)]

    return asyncio.run(go())


def test_streams_pieces_and_sends_the_whole_request(fake: FakeOpenAI, isolated: Isolated) -> None:
    pieces = collect(
        "openai",
        "gpt-test",
        base_url=fake.base_url,
        api_key="sk-test-123",
        temperature=0.3,
        max_tokens=50,
        stop=["\n"],
    )
    assert pieces == ["Hello", ", ", "world", "!"]
    (request,) = fake.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["Authorization"] == "Bearer sk-test-123"
    assert request.body == {
        "model": "gpt-test",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.3,
        "max_tokens": 50,
        "stop": ["\n"],
    }


def test_key_comes_from_the_preset_variable(
    fake: FakeOpenAI, isolated: Isolated, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GROQ_API_KEY", "gsk-from-env")
    collect("groq", base_url=fake.base_url)
    assert fake.requests[0].headers["Authorization"] == "Bearer gsk-from-env"
    assert fake.requests[0].body["model"] == "llama-3.1-8b-instant"


def test_local_server_without_key_sends_no_authorization(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    collect("ollama", "llama3.2", base_url=fake.base_url)
    assert "Authorization" not in fake.requests[0].headers


def test_without_model_the_first_listed_model_is_used(fake: FakeOpenAI, isolated: Isolated) -> None:
    assert collect("vllm", base_url=fake.base_url) == ["Hello", ", ", "world", "!"]
    assert [r.path for r in fake.requests] == ["/v1/models", "/v1/chat/completions"]
    assert fake.requests[1].body["model"] == "fake-large"


def test_missing_key_fails_before_any_request(fake: FakeOpenAI, isolated: Isolated) -> None:
    with pytest.raises(MissingAuthError) as info:
        collect("openai", base_url=fake.base_url)
    assert "OPENAI_API_KEY" in str(info.value)
    assert fake.requests == []


def test_whole_reply_when_not_streaming(fake: FakeOpenAI, isolated: Isolated) -> None:
    assert collect("ollama", "m", base_url=fake.base_url, stream=False) == ["Hello, world!"]
    assert fake.requests[0].body["stream"] is False


def test_server_that_ignores_stream_true_still_answers(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    fake.mode = "ignore_stream"
    assert collect("ollama", "m", base_url=fake.base_url) == ["Hello, world!"]


def test_list_models(fake: FakeOpenAI, isolated: Isolated) -> None:
    provider = Registry.builtin().create("lmstudio", base_url=fake.base_url)
    assert asyncio.run(provider.list_models()) == ["fake-large", "fake-small"]


@pytest.mark.parametrize(
    ("status", "body", "content_type", "error", "fragment"),
    [
        (401, '{"error": {"message": "Incorrect API key provided", "type": "invalid"}}',
         "application/json", AuthenticationError, "Incorrect API key provided"),
        (429, '{"error": {"message": "Rate limit reached"}}', "application/json", RateLimitError,
         "Rate limit reached"),
        (500, '{"error": "model crashed"}', "application/json", ResponseStatusError,
         "HTTP 500 Internal Server Error from http://localhost:"),
        (502, "<html><title>502 Bad Gateway</title></html>", "text/html", ResponseStatusError,
         "HTML page titled '502 Bad Gateway'"),
        (404, '{"error": {"message": "model \'x\' not found"}}', "application/json",
         ResponseStatusError, "model 'x' not found"),
    ],
)  # fmt: skip
def test_http_errors_become_one_clear_error(
    fake: FakeOpenAI,
    isolated: Isolated,
    status: int,
    body: str,
    content_type: str,
    error: type[Exception],
    fragment: str,
) -> None:
    fake.mode, fake.status, fake.body, fake.content_type = "status", status, body, content_type
    fake.headers = {"Retry-After": "3"} if status == 429 else {}
    with pytest.raises(error) as info:
        collect("ollama", "m", base_url=fake.base_url)
    message = str(info.value)
    assert message.startswith("ollama: ") and fragment in message and "\n" not in message
    # The service's own explanation is always quoted.
    explanation = {500: "model crashed", 502: "502 Bad Gateway", 404: "not found"}.get(status)
    assert explanation is None or explanation in message
    if status == 429:
        assert isinstance(info.value, RateLimitError) and info.value.retry_after == 3.0


def test_cut_stream_is_interrupted_not_complete(fake: FakeOpenAI, isolated: Isolated) -> None:
    fake.mode = "cut"
    with pytest.raises(StreamInterruptedError, match="ended before its end marker"):
        collect("ollama", "m", base_url=fake.base_url)


def test_dropped_connection_is_interrupted(fake: FakeOpenAI, isolated: Isolated) -> None:
    fake.mode = "drop"
    with pytest.raises(StreamInterruptedError):
        collect("ollama", "m", base_url=fake.base_url)


def test_error_event_in_the_stream(fake: FakeOpenAI, isolated: Isolated) -> None:
    fake.mode = "error_event"
    with pytest.raises(ProviderError, match="model overloaded"):
        collect("ollama", "m", base_url=fake.base_url)


def test_malformed_json_in_the_stream(fake: FakeOpenAI, isolated: Isolated) -> None:
    fake.mode = "bad_json"
    with pytest.raises(ProtocolError, match="malformed JSON in the stream"):
        collect("ollama", "m", base_url=fake.base_url)


def test_idle_timeout_while_streaming(fake: FakeOpenAI, isolated: Isolated) -> None:
    fake.mode, fake.stall_seconds = "stall", 3.0
    with pytest.raises(ProviderTimeoutError, match="went silent"):
        collect("ollama", "m", base_url=fake.base_url, timeout=0.5)


def test_slow_but_steady_stream_is_not_cut_by_the_timeout(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    # Each gap is under the idle limit, the whole answer takes well over it: no total cap.
    fake.pieces, fake.delay = ["a"] * 8, 0.15
    assert collect("ollama", "m", base_url=fake.base_url, timeout=0.6) == ["a"] * 8


def test_connection_refused_names_the_url(isolated: Isolated) -> None:
    with pytest.raises(ProviderConnectionError) as info:
        collect("ollama", "m", base_url="http://localhost:9/v1")
    assert "http://localhost:9/v1/chat/completions" in str(info.value)
    assert "connection refused" in str(info.value)


# -- reasoning, token counts and the newer presets ----------------------------------------------

KEYS = {"OPENAI_API_KEY": "sk-o", "GROQ_API_KEY": "gsk", "MISTRAL_API_KEY": "mk",
        "GEMINI_API_KEY": "gk", "XAI_API_KEY": "xk"}  # fmt: skip
#: What the fake reports when it gives counts.
COUNTS = {"prompt_tokens": 31, "completion_tokens": 9, "total_tokens": 40}
#: MESSAGES hold 19 bytes: five tokens at four bytes a token (rounded up).
ESTIMATED_IN = 5


def ask(name: str, fake: FakeOpenAI, *, stream: bool = True, **options: Any) -> list[Event]:
    """Every event of one answer from provider ``name`` pointed at the fake."""
    registry = Registry.builtin()
    registry.env = KEYS
    provider = registry.create(name, base_url=fake.base_url)
    request = ChatRequest(
        messages=tuple(ChatMessage.from_dict(m) for m in MESSAGES),
        model="m",
        options=provider.check_options(options),
        stream=stream,
    )

    async def go() -> list[Event]:
        return [event async for event in provider.stream(request)]

    return asyncio.run(go())


def texts(events: list[Event], kind: type[TextDelta | ReasoningDelta]) -> str:
    return "".join(e.text for e in events if isinstance(e, kind))


def usages(events: list[Event]) -> list[Usage]:
    return [e for e in events if isinstance(e, Usage)]


@pytest.fixture(autouse=True)
def fresh_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """No service is remembered as refusing stream_options from an earlier test."""
    monkeypatch.setattr(OpenAICompatible, "refused_stream_options", set())


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("shape", ["reasoning_content", "reasoning", "think"])
def test_reasoning_in_each_shape_is_kept_apart_and_the_counts_are_the_services(
    fake: FakeOpenAI, isolated: Isolated, shape: str, stream: bool
) -> None:
    fake.reasoning_field, fake.reasoning = shape, ["Let me ", "think."]
    fake.usage, fake.usage_when_asked = COUNTS, True
    got = ask("openai", fake, stream=stream)
    assert texts(got, ReasoningDelta) == "Let me think."
    assert texts(got, TextDelta) == "Hello, world!"
    kinds = [type(e) for e in got if isinstance(e, TextDelta | ReasoningDelta)]
    assert kinds == sorted(kinds, key=lambda kind: kind is TextDelta)  # thinking came first
    assert usages(got) == [Usage(31, 9)]
    assert got[-1] == Finish("stop", "stop")
    # Streams ask for the counts (the fake sends them only then); whole replies carry them.
    body = fake.requests[-1].body
    assert body.get("stream_options") == ({"include_usage": True} if stream else None)


@pytest.mark.parametrize("stream", [True, False])
def test_a_think_block_split_anywhere_is_reasoning_never_answer(
    fake: FakeOpenAI, isolated: Isolated, stream: bool
) -> None:
    fake.pieces = ["\n<th", "ink>\nPlan: ", "greet.</th", "ink>\n\nHel", "lo; <think> is a tag"]
    got = ask("llamacpp", fake, stream=stream)
    assert texts(got, ReasoningDelta) == "Plan: greet."
    assert texts(got, TextDelta) == "Hello; <think> is a tag"
    assert got[-1] == Finish("stop", "stop")


def test_text_held_back_as_a_possible_tag_comes_at_the_end(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    fake.pieces = ["<"]  # "which is less?": the start of <think>, until the stream ends
    got = ask("llamacpp", fake)
    assert texts(got, TextDelta) == "<" and got[-1] == Finish("stop", "stop")


def test_a_think_block_cut_before_its_end_is_only_reasoning(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    fake.pieces, fake.finish_reason = ["<think>", "Hmm, so"], "length"
    with pytest.raises(ProtocolError, match=r"only the model.s reasoning.*-o max_tokens"):
        ask("llamacpp", fake)


@pytest.mark.parametrize("stream", [True, False])
def test_without_counts_from_the_service_they_are_estimated(
    fake: FakeOpenAI, isolated: Isolated, stream: bool
) -> None:
    fake.reasoning = ["hmm"]
    got = ask("ollama", fake, stream=stream)
    # 3 bytes of reasoning and 13 of answer: four tokens.
    assert got[-2:] == [Usage(ESTIMATED_IN, 4, estimated=True), Finish("stop", "stop")]
    assert len(usages(got)) == 1


@pytest.mark.parametrize(
    ("name", "asked"),
    [("openai", True), ("groq", True), ("ollama", True), ("gemini", True), ("xai", True),
     ("mistral", False)],
)  # fmt: skip
def test_the_table_says_which_services_are_asked_for_counts(
    fake: FakeOpenAI, isolated: Isolated, name: str, asked: bool
) -> None:
    fake.usage, fake.usage_when_asked = COUNTS, True
    got = ask(name, fake)
    assert ("stream_options" in fake.requests[0].body) is asked
    assert usages(got) == [Usage(31, 9) if asked else Usage(ESTIMATED_IN, 4, estimated=True)]


def test_stream_options_given_with_o_are_sent_as_given(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    ask("openai", fake, stream_options={"include_usage": False})
    assert fake.requests[0].body["stream_options"] == {"include_usage": False}


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, '{"error": {"message": "property \'stream_options\' is unsupported, did you mean '
              '\'stream\'?", "type": "invalid_request_error"}}'),
        (422, '{"object": "error", "message": {"detail": [{"type": "extra_forbidden", "loc": '
              '["body", "stream_options", "include_usage"], "msg": "Extra inputs are not '
              'permitted"}]}}'),
    ],
)  # fmt: skip
def test_a_service_refusing_stream_options_is_asked_again_without_it_and_remembered(
    fake: FakeOpenAI, isolated: Isolated, status: int, body: str
) -> None:
    fake.rejects_stream_options, fake.status, fake.body = True, status, body
    fake.usage = COUNTS  # sent unasked, as Mistral does

    def asked() -> list[bool]:
        return ["stream_options" in r.body for r in fake.requests]

    first = ask("groq", fake)
    assert texts(first, TextDelta) == "Hello, world!" and usages(first) == [Usage(31, 9)]
    assert asked() == [True, False]  # refused, then asked again without it
    ask("groq", fake)  # a new instance, the same service: not asked with it again
    assert asked() == [True, False, False]
    ask("openai", fake)  # another service at that root is found out on its own
    assert asked() == [True, False, False, True, False]


def test_other_refusals_are_not_retried(fake: FakeOpenAI, isolated: Isolated) -> None:
    fake.mode, fake.status = "status", 400
    fake.body = '{"error": {"message": "The model m does not exist"}}'
    with pytest.raises(ResponseStatusError, match="does not exist"):
        ask("openai", fake)
    assert len(fake.requests) == 1


def test_reasoning_effort_is_a_checked_option_forwarded_to_the_service(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    for effort in ("low", "medium", "high"):
        collect("ollama", "m", base_url=fake.base_url, reasoning_effort=effort)
    assert [r.body["reasoning_effort"] for r in fake.requests] == ["low", "medium", "high"]
    with pytest.raises(UsageError, match="-o reasoning_effort 'max': expected low, medium or hi"):
        collect("ollama", "m", base_url=fake.base_url, reasoning_effort="max")
    assert len(fake.requests) == 3  # refused before sending
    # From the command line too: the value is checked before anything is stored or sent.
    base = ["ask", "--no-save", "-p", "ollama", "-m", "m", "--base-url", fake.base_url]
    result = run([*base, "-o", "reasoning_effort", "high", "hi"], isolated)
    assert result.returncode == 0, result.stderr
    assert fake.requests[-1].body["reasoning_effort"] == "high"
    result = run([*base, "-o", "reasoning_effort", "extreme", "hi"], isolated)
    assert result.returncode == 2 and "expected low, medium or high" in result.stderr
    assert len(fake.requests) == 4


@pytest.mark.parametrize(
    ("name", "url", "key_env", "model"),
    [
        ("gemini", "https://generativelanguage.googleapis.com/v1beta/openai", "GEMINI_API_KEY",
         "gemini-2.5-flash"),
        ("xai", "https://api.x.ai/v1", "XAI_API_KEY", "grok-3-mini"),
    ],
)  # fmt: skip
def test_gemini_and_xai_presets(
    fake: FakeOpenAI,
    isolated: Isolated,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    url: str,
    key_env: str,
    model: str,
) -> None:
    provider: Any = get_provider(name)
    assert (provider.url, provider.key_env, provider.needs_auth) == (url, key_env, True)
    with pytest.raises(MissingAuthError, match=key_env):
        collect(name, base_url=fake.base_url)
    assert fake.requests == []
    monkeypatch.setenv(key_env, "key-from-env")
    assert collect(name, base_url=fake.base_url) == ["Hello", ", ", "world", "!"]
    (request,) = fake.requests
    assert request.headers["Authorization"] == "Bearer key-from-env"
    assert request.body["model"] == model
