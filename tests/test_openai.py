"""The OpenAI-compatible protocol through the Python API, against the recording fake."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chatcli.core import Message
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
)
from chatcli.providers import AsyncGeneratorProvider, Registry, get_provider
from tests.conftest import Isolated
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
