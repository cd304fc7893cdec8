"""``chatcli serve``: the OpenAI-compatible endpoint, driven by the official ``openai`` package
(a client no one here wrote) in front of the fake model servers and a seed provider's strict
fake; a load of concurrent streams; the guards (token, Host, Origin); sessions (``--save``).

The server runs in-process, on a loop of its own in a thread, as ``chatcli serve`` builds it;
tests/test_serve_cli.py runs the real binary (signals, the printed token, the log lines).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from chatcli.config import Paths, load_settings
from chatcli.server import MAX_BODY, ServeOptions, Server, start
from chatcli.store import Stores
from tests.conftest import Isolated
from tests.fakes.gptalk import FakeGPTalk
from tests.servers import AppServer, FakeOpenAI, ServerThread


class ServeThread(ServerThread):
    """``chatcli serve`` in-process: the server :func:`chatcli.server.start` starts, with the
    settings of the isolated home."""

    def __init__(self, isolated: Isolated, options: ServeOptions) -> None:
        super().__init__()
        self.isolated = isolated
        self.options = options
        self.lines: list[str] = []
        self.server: Server | None = None
        self.running: Any = None

    async def _start(self) -> int:
        env = {**self.isolated.env}
        paths = Paths.from_env(env)
        settings = load_settings(paths, env)
        self.server = Server(
            settings,
            Stores.for_settings(paths, settings),
            self.options,
            say=self.lines.append,
            default_provider=settings.provider,
        )
        self.running = await start(self.server)
        port: int = int(self.running.urls[0].rsplit(":", 1)[1].rstrip("/"))
        return port

    async def _stop(self) -> None:
        await self.running.stop(grace=1.0)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


def configure(isolated: Isolated, fake: FakeOpenAI, extra: str = "") -> None:
    isolated.write_config(
        'provider = "ollama"\nmodel = "m"\nretries = 0\n'
        f'[providers.ollama]\nbase_url = "{fake.base_url}"\n{extra}'
    )


@pytest.fixture
def gptalk() -> Iterator[FakeGPTalk]:
    fake = FakeGPTalk()
    with fake.serve():
        yield fake
    assert not fake.violations, fake.violations


def served(isolated: Isolated, **options: Any) -> ServeThread:
    thread = ServeThread(isolated, ServeOptions(host="127.0.0.1", port=0, **options))
    thread.start()
    return thread


@pytest.fixture
def server(fake: FakeOpenAI, isolated: Isolated) -> Iterator[ServeThread]:
    configure(isolated, fake)
    thread = served(isolated)
    yield thread
    thread.stop()


def client(thread: ServeThread, **kwargs: Any) -> openai.OpenAI:
    kwargs.setdefault("api_key", "unused")
    return openai.OpenAI(base_url=thread.api, max_retries=0, timeout=30, **kwargs)


# -- the official client ------------------------------------------------------------------------


def test_a_whole_completion_in_openai_shape(fake: FakeOpenAI, server: ServeThread) -> None:
    fake.usage = {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}
    done = client(server).chat.completions.create(
        model="ollama/m",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        temperature=0.5,
        max_tokens=50,
    )
    assert done.object == "chat.completion" and done.id.startswith("chatcmpl-")
    assert done.model == "ollama/m"
    (choice,) = done.choices
    assert choice.message.role == "assistant" and choice.message.content == "Hello, world!"
    assert choice.finish_reason == "stop"
    assert done.usage is not None
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (7, 4)
    assert done.usage.total_tokens == 11
    sent = fake.requests[-1].body
    assert sent["model"] == "m" and sent["temperature"] == 0.5 and sent["max_tokens"] == 50
    assert [m["content"] for m in sent["messages"]] == ["Be brief.", "Hi"]
    assert server.lines[-1].startswith("POST /v1/chat/completions ollama/m 200 ")


def test_a_streamed_completion_with_usage(fake: FakeOpenAI, server: ServeThread) -> None:
    fake.usage = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    fake.reasoning = ["Let me ", "think."]
    chunks = list(
        client(server).chat.completions.create(
            model="ollama/m",
            messages=[{"role": "user", "content": "Hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello, world!"
    thought = "".join(
        getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices
    )
    assert thought == "Let me think."
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 7
    assert len({c.id for c in chunks}) == 1 and {c.model for c in chunks} == {"ollama/m"}


def test_without_usage_from_the_service_it_is_estimated_and_says_so(
    fake: FakeOpenAI, server: ServeThread
) -> None:
    done = client(server).chat.completions.create(
        model="ollama/m", messages=[{"role": "user", "content": "Hi there, model"}]
    )
    assert done.usage is not None
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (4, 4)  # bytes / 4
    assert done.usage.model_extra == {"estimated": True}


def test_a_cut_answer_says_length(fake: FakeOpenAI, server: ServeThread) -> None:
    fake.finish_reason = "length"
    done = client(server).chat.completions.create(
        model="ollama/m", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert done.choices[0].finish_reason == "length"


@pytest.fixture
def with_gptalk(fake: FakeOpenAI, gptalk: FakeGPTalk, isolated: Isolated) -> Iterator[ServeThread]:
    """The server with ollama at the fake and gptalk at its strict fake."""
    configure(isolated, fake, f'[providers.gptalk]\nbase_url = "{gptalk.base_url}"\n')
    thread = served(isolated)
    yield thread
    thread.stop()


def test_models_lists_every_usable_provider_prefixed(with_gptalk: ServeThread) -> None:
    thread = with_gptalk
    listed = client(thread).models.list()
    ids = [m.id for m in listed.data]
    assert {"ollama/fake-large", "ollama/fake-small", "gptalk/gpt-3.5-turbo"} <= set(ids)
    # The seed sites that are gone are not offered; a key-less API service neither.
    assert not any(i.startswith(("chatgptt/", "openai/", "anthropic/")) for i in ids)
    assert all(m.owned_by == m.id.split("/")[0] for m in listed.data)
    one = client(thread).models.retrieve("ollama/fake-small")
    assert one.id == "ollama/fake-small"
    with pytest.raises(openai.NotFoundError):
        client(thread).models.retrieve("ollama/none")


def test_a_seed_provider_through_the_official_client(
    gptalk: FakeGPTalk, with_gptalk: ServeThread
) -> None:
    thread = with_gptalk
    ask = client(thread).chat.completions
    whole = ask.create(model="gptalk/gpt-3.5-turbo", messages=[{"role": "user", "content": "hi"}])
    assert whole.choices[0].message.content == "Hello from GPTalk!"
    assert whole.model == "gptalk/gpt-3.5-turbo"
    streamed = ask.create(model="gptalk", messages=[{"role": "user", "content": "hi"}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == "Hello from GPTalk!"
    assert gptalk.logins == 1  # its login state is kept between requests, as in ask


def test_a_fallback_chain_answers_from_the_next_provider(
    fake: FakeOpenAI, gptalk: FakeGPTalk, with_gptalk: ServeThread
) -> None:
    fake.mode, fake.status, fake.body = "status", 500, '{"error": {"message": "down"}}'
    thread = with_gptalk
    raw_answer = client(thread).chat.completions.with_raw_response.create(
        model="ollama/m,gptalk/gpt-3.5-turbo",
        messages=[{"role": "user", "content": "hi"}],
        top_p=0.5,
    )
    # ollama would have taken top_p; gptalk, which answered, did not get it: it says so.
    assert raw_answer.headers["X-Chatcli-Ignored"] == "top_p"
    done = raw_answer.parse()
    assert done.choices[0].message.content == "Hello from GPTalk!"
    assert len(fake.requests) == 1  # (ollama failed once, and was not asked again)
    # The other way round: what the first would not take still reaches the fallback.
    fake.mode, gptalk.mode = "ok", "cloudflare"
    raw_answer = client(thread).chat.completions.with_raw_response.create(
        model="gptalk,ollama/m", messages=[{"role": "user", "content": "hi"}], top_p=0.5
    )
    assert raw_answer.parse().choices[0].message.content == "Hello, world!"
    assert "X-Chatcli-Ignored" not in raw_answer.headers
    assert fake.requests[-1].body["top_p"] == 0.5
    assert done.model == "gptalk/gpt-3.5-turbo"


def test_a_bare_model_goes_to_the_default_provider(fake: FakeOpenAI, server: ServeThread) -> None:
    client(server).chat.completions.create(
        model="fake-small", messages=[{"role": "user", "content": "hi"}]
    )
    assert fake.requests[-1].body["model"] == "fake-small"


# -- errors in the OpenAI shape -----------------------------------------------------------------


def test_errors_are_openai_error_objects(fake: FakeOpenAI, server: ServeThread) -> None:
    ask = client(server).chat.completions
    with pytest.raises(openai.NotFoundError) as missing:
        # (not the default provider's: a mistyped name must not go there unasked)
        ask.create(model="nosuch/x", messages=[{"role": "user", "content": "hi"}])
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        ask.create(model="ollama/m,nosuch", messages=[{"role": "user", "content": "hi"}])
    assert "nosuch" in missing.value.message
    with pytest.raises(openai.BadRequestError) as empty:
        ask.create(model="ollama/m", messages=[])
    assert empty.value.param == "messages"
    for absurd in (1e308, -1):
        with pytest.raises(openai.BadRequestError, match="from 0 to 2"):
            ask.create(
                model="ollama/m", messages=[{"role": "user", "content": "hi"}], temperature=absurd
            )
    with pytest.raises(openai.BadRequestError, match="n must be 1"):
        ask.create(model="ollama/m", messages=[{"role": "user", "content": "hi"}], n=2)
    with pytest.raises(openai.BadRequestError, match="cannot call tools"):
        ask.create(
            model="gptalk",
            messages=[{"role": "user", "content": "hi"}],
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        )
    assert fake.requests == []  # nothing reached the service


def test_an_upstream_failure_is_a_502_naming_it(fake: FakeOpenAI, server: ServeThread) -> None:
    fake.mode, fake.status = "status", 500
    fake.body = json.dumps({"error": {"message": "the model fell over"}})
    with pytest.raises(openai.APIStatusError) as failed:
        client(server).chat.completions.create(
            model="ollama/m", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    assert failed.value.status_code == 502
    assert "the model fell over" in failed.value.message and "500" in failed.value.message
    assert failed.value.body is not None and failed.value.type == "upstream_error"


def test_an_upstream_rate_limit_is_a_429(fake: FakeOpenAI, server: ServeThread) -> None:
    fake.mode, fake.status, fake.body = "status", 429, '{"error": {"message": "slow down"}}'
    fake.headers = {"Retry-After": "120"}
    with pytest.raises(openai.RateLimitError):
        client(server).chat.completions.create(
            model="ollama/m", messages=[{"role": "user", "content": "hi"}]
        )


def test_a_stream_cut_midway_ends_with_an_error_event(
    fake: FakeOpenAI, server: ServeThread
) -> None:
    fake.mode = "drop"
    got: list[str] = []
    with pytest.raises(openai.APIError) as cut:
        for chunk in client(server).chat.completions.create(
            model="ollama/m", messages=[{"role": "user", "content": "hi"}], stream=True
        ):
            got.append(chunk.choices[0].delta.content or "")
    assert "".join(got).startswith("Hello")  # what came before the cut was delivered
    assert "interrupted" in str(cut.value) or "connection" in str(cut.value).lower()


def test_tool_calls_go_back_to_the_client(fake: FakeOpenAI, server: ServeThread) -> None:
    fake.pieces = []
    fake.finish_reason = "tool_calls"
    fake.tool_call_chunks = [
        [{"index": 0, "id": "call_1", "type": "function",
          "function": {"name": "weather", "arguments": '{"ci'}}],
        [{"index": 0, "function": {"arguments": 'ty": "Oslo"}'}}],
    ]  # fmt: skip
    tools: Any = [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "The weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    messages: Any = [{"role": "user", "content": "Weather in Oslo?"}]
    done = client(server).chat.completions.create(model="ollama/m", messages=messages, tools=tools)
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    assert (call.id, call.function.name) == ("call_1", "weather")  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Oslo"}  # type: ignore[union-attr]
    assert fake.requests[-1].body["tools"][0]["function"]["name"] == "weather"
    streamed = list(
        client(server).chat.completions.create(
            model="ollama/m", messages=messages, tools=tools, stream=True
        )
    )
    pieces = [c.choices[0].delta.tool_calls for c in streamed if c.choices]
    arguments = "".join(p[0].function.arguments or "" for p in pieces if p and p[0].function)
    assert json.loads(arguments) == {"city": "Oslo"}
    assert streamed[-1].choices[0].finish_reason == "tool_calls"
    # The client answers the call; the result goes to the service as a tool message.
    fake.tool_call_chunks, fake.pieces, fake.finish_reason = [], ["Sunny."], "stop"
    answered = client(server).chat.completions.create(
        model="ollama/m",
        messages=[
            *messages,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
        ],
        tools=tools,
    )
    assert answered.choices[0].message.content == "Sunny."
    sent = fake.requests[-1].body["messages"]
    assert sent[-1] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"}


# -- guards ---------------------------------------------------------------------------------------


def raw(
    thread: ServeThread, method: str, path: str, **kwargs: Any
) -> tuple[int, Any, dict[str, str]]:
    """One request with aiohttp (headers the official client would not send)."""

    async def go() -> tuple[int, Any, dict[str, str]]:
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, f"http://127.0.0.1:{thread.port}{path}", **kwargs) as response,
        ):
            text = await response.text()
            try:
                body: Any = json.loads(text)
            except ValueError:
                body = text
            return response.status, body, dict(response.headers)

    return asyncio.run(go())


def test_a_token_is_checked_on_every_api_request(fake: FakeOpenAI, isolated: Isolated) -> None:
    configure(isolated, fake)
    thread = served(isolated, token="right-token-123")
    try:
        with pytest.raises(openai.AuthenticationError):
            client(thread).models.list()
        with pytest.raises(openai.AuthenticationError) as wrong:
            client(thread, api_key="wrong-token-123").chat.completions.create(
                model="ollama/m", messages=[{"role": "user", "content": "hi"}]
            )
        assert wrong.value.code == "invalid_api_key"
        assert fake.requests == []
        done = client(thread, api_key="right-token-123").chat.completions.create(
            model="ollama/m", messages=[{"role": "user", "content": "hi"}]
        )
        assert done.choices[0].message.content == "Hello, world!"
        status, _, _ = raw(thread, "GET", "/health")
        assert status == 200  # (health tells nothing)
    finally:
        thread.stop()


def test_another_host_name_is_refused_without_a_token(server: ServeThread) -> None:
    # A page that rebinds its own name to 127.0.0.1 sends its name as Host.
    status, body, _ = raw(server, "GET", "/v1/models", headers={"Host": "evil.example:8808"})
    assert status == 403 and "Host" in body["error"]["message"]
    assert raw(server, "GET", "/v1/models", headers={"Host": "localhost:8808"})[0] == 200


def test_pages_of_other_origins_are_refused_unless_allowed(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    configure(isolated, fake)
    thread = served(isolated, cors_origins=("https://app.example",))
    try:
        question = {"model": "ollama/m", "messages": [{"role": "user", "content": "hi"}]}
        status, body, _ = raw(
            thread, "POST", "/v1/chat/completions", json=question,
            headers={"Origin": "https://evil.example"},
        )  # fmt: skip
        assert status == 403 and "other web pages" in body["error"]["message"]
        status, _, headers = raw(
            thread, "OPTIONS", "/v1/chat/completions",
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
        )  # fmt: skip
        assert status == 204 and headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert "Authorization" in headers["Access-Control-Allow-Headers"]
        # The official browser client sends headers of its own: they are allowed too.
        status, _, headers = raw(
            thread, "OPTIONS", "/v1/chat/completions",
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "authorization,x-stainless-os,bad header"},
        )  # fmt: skip
        allowed = headers["Access-Control-Allow-Headers"]
        assert "x-stainless-os" in allowed and "bad header" not in allowed
        status, _, _ = raw(
            thread, "OPTIONS", "/v1/chat/completions", headers={"Origin": "https://evil.example"}
        )
        assert status == 403
        status, body, headers = raw(
            thread, "POST", "/v1/chat/completions", json=question,
            headers={"Origin": "https://app.example"},
        )  # fmt: skip
        assert status == 200 and body["choices"][0]["message"]["content"] == "Hello, world!"
        assert headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert "X-Chatcli-Ignored" in headers["Access-Control-Expose-Headers"]
        # A form post (no JSON content type, so no CORS preflight) is refused.
        status, _, _ = raw(thread, "POST", "/v1/chat/completions", data=json.dumps(question))
        assert status == 415
        assert len(fake.requests) == 1
    finally:
        thread.stop()


def test_a_temperature_that_is_no_number_is_refused(server: ServeThread) -> None:
    question = {"model": "ollama/m", "messages": [{"role": "user", "content": "hi"}]}
    for absurd in ("NaN", "Infinity", "true", '"hot"'):
        body = json.dumps(question)[:-1] + f', "temperature": {absurd}}}'
        status, answer, _ = raw(
            server, "POST", "/v1/chat/completions", data=body,
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        assert status == 400 and answer["error"]["param"] == "temperature", absurd


def test_requests_are_bounded(server: ServeThread) -> None:
    big = {"model": "ollama/m", "messages": [{"role": "user", "content": "x" * (MAX_BODY + 1)}]}
    status, body, _ = raw(server, "POST", "/v1/chat/completions", json=big)
    assert status == 413 and "MiB" in body["error"]["message"]
    status, body, _ = raw(
        server, "POST", "/v1/chat/completions", data=b"{not json",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    assert status == 400 and "not JSON" in body["error"]["message"]


def test_the_page_is_served_with_a_strict_policy(server: ServeThread) -> None:
    status, body, headers = raw(server, "GET", "/")
    assert status == 200 and "<html" in body.lower()
    policy = headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    assert "unsafe-inline" not in policy
    assert raw(server, "GET", "/chat.js")[0] == 200
    assert raw(server, "GET", "/nothing")[0] == 404


def test_hostile_model_names_reach_the_log_sanitized(server: ServeThread) -> None:
    status, _, _ = raw(
        server, "POST", "/v1/chat/completions",
        json={"model": "\x1b]52;c;aGk=\x07evil\x1b[2J/x",
              "messages": [{"role": "user", "content": "hi"}]},
    )  # fmt: skip
    assert status == 404
    line = server.lines[-1]
    assert "\x1b" not in line and "\x07" not in line and "evil" in line


# -- concurrency ---------------------------------------------------------------------------------


@dataclass
class Echo:
    """An OpenAI-compatible upstream that streams the question back word by word, slowly: each
    answer is its own, so crossed streams would show. It counts streams cut by their client."""

    delay: float = 0.01
    cut: int = 0
    served: int = 0
    active: int = 0
    most: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        return app

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        words = body["messages"][-1]["content"].split()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)
        try:
            for index, word in enumerate(words):
                delta = {"content": word if index == 0 else " " + word}
                chunk = {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
                await asyncio.sleep(self.delay)
            end = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            await response.write(f"data: {json.dumps(end)}\n\ndata: [DONE]\n\n".encode())
            self.served += 1
        except (ConnectionResetError, asyncio.CancelledError):
            self.cut += 1
            raise
        finally:
            with self.lock:
                self.active -= 1
        return response


@pytest.fixture
def echo(isolated: Isolated) -> Iterator[tuple[Echo, ServeThread]]:
    upstream = Echo()
    with AppServer(upstream.app()) as app:
        isolated.write_config(
            'provider = "ollama"\nmodel = "m"\nretries = 0\n'
            f'[providers.ollama]\nbase_url = "{app.url}/v1"\n'
        )
        thread = served(isolated)
        try:
            yield upstream, thread
        finally:
            thread.stop()


def test_fifty_concurrent_streams_each_get_their_own_whole_answer(
    echo: tuple[Echo, ServeThread],
) -> None:
    upstream, thread = echo
    questions = [" ".join(f"w{n}-{i}" for i in range(40)) for n in range(50)]

    async def one(ask: openai.AsyncOpenAI, question: str) -> tuple[str, str | None]:
        stream = await ask.chat.completions.create(
            model="ollama/m", messages=[{"role": "user", "content": question}], stream=True
        )
        text, finish = [], None
        async for chunk in stream:
            text.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        return "".join(text), finish

    async def all_of_them() -> list[tuple[str, str | None]]:
        ask = openai.AsyncOpenAI(base_url=thread.api, api_key="x", max_retries=0, timeout=60)
        try:
            return await asyncio.gather(*(one(ask, q) for q in questions))
        finally:
            await ask.close()

    started = time.monotonic()
    answers = asyncio.run(all_of_them())
    elapsed = time.monotonic() - started
    assert answers == [(q, "stop") for q in questions]
    assert upstream.served == 50 and upstream.cut == 0
    assert upstream.most > 10  # they ran at once, not one after another
    # 40 words at 10 ms each take 0.4 s a stream; fifty in a row would take 20 s.
    assert elapsed < 15, elapsed
    assert sum(" 200 " in line for line in thread.lines) == 50


def test_a_client_that_leaves_cancels_the_upstream_request(
    echo: tuple[Echo, ServeThread],
) -> None:
    upstream, thread = echo
    upstream.delay = 0.2

    async def leave_early() -> None:
        async with aiohttp.ClientSession() as session:
            question = {
                "model": "ollama/m",
                "stream": True,
                "messages": [{"role": "user", "content": " ".join(["word"] * 200)}],
            }
            async with session.post(f"{thread.api}/chat/completions", json=question) as response:
                await response.content.readline()  # the first event, then away

    asyncio.run(leave_early())
    deadline = time.monotonic() + 10
    while upstream.cut == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upstream.cut == 1 and upstream.served == 0


def test_a_stalled_upstream_does_not_hold_up_the_others(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    upstream = Echo()
    with AppServer(upstream.app()) as app:
        isolated.write_config(
            f'retries = 0\n[providers.ollama]\nbase_url = "{fake.base_url}"\n'
            f'[providers.vllm]\nbase_url = "{app.url}/v1"\n'
        )
        fake.mode, fake.stall_seconds = "stall", 3
        thread = served(isolated)
        try:
            results: dict[str, Any] = {}
            started = time.monotonic()

            def stalled() -> None:
                pieces = client(thread).chat.completions.create(
                    model="ollama/m", messages=[{"role": "user", "content": "hi"}], stream=True
                )
                results["text"] = "".join(c.choices[0].delta.content or "" for c in pieces)
                results["stalled"] = time.monotonic() - started

            slow = threading.Thread(target=stalled)
            slow.start()
            time.sleep(0.3)
            done = client(thread).chat.completions.create(
                model="vllm/m", messages=[{"role": "user", "content": "quick answer"}]
            )
            results["quick"] = time.monotonic() - started
            slow.join(30)
            assert done.choices[0].message.content == "quick answer"
            assert results["text"] == "Hello, world!"  # (it goes on after 3 s)
            assert results["quick"] < 2 < results["stalled"]
        finally:
            thread.stop()


# -- sessions -------------------------------------------------------------------------------------


def test_save_keeps_each_conversation_as_one_session(fake: FakeOpenAI, isolated: Isolated) -> None:
    from chatcli.api import list_sessions, load_session

    configure(isolated, fake)
    thread = served(isolated, save=True)
    try:
        ask = client(thread).chat.completions
        history: Any = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
        ]
        first = ask.create(model="ollama/m", messages=history)
        history += [
            {"role": "assistant", "content": first.choices[0].message.content},
            {"role": "user", "content": "And then?"},
        ]
        fake.pieces = ["Then ", "this."]
        list(ask.create(model="ollama/m", messages=history, stream=True))
        ask.create(model="ollama/m", messages=[{"role": "user", "content": "Another topic"}])
    finally:
        thread.stop()
    sessions = list_sessions(home=isolated.chatcli_home, env={})
    assert len(sessions) == 2
    session, messages = load_session(sessions[-1].id, home=isolated.chatcli_home, env={})
    assert session.system == "Be brief."
    assert [(m.role, m.content) for m in messages] == [
        ("user", "Hi"),
        ("assistant", "Hello, world!"),
        ("user", "And then?"),
        ("assistant", "Then this."),
    ]
    assert messages[-1].provider == "ollama" and messages[-1].status == "complete"


def test_without_save_nothing_is_kept(server: ServeThread, isolated: Isolated) -> None:
    from chatcli.api import list_sessions

    client(server).chat.completions.create(
        model="ollama/m", messages=[{"role": "user", "content": "Hi"}]
    )
    assert list_sessions(home=isolated.chatcli_home, env={}) == []


def test_an_answer_over_the_limit_is_cut_and_says_so(
    fake: FakeOpenAI, server: ServeThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    import chatcli.server.app

    monkeypatch.setattr(chatcli.server.app, "MAX_ANSWER", 100)
    fake.pieces = ["0123456789"] * 50
    got: list[str] = []
    with pytest.raises(openai.APIError, match="passed the server's limit of 100 characters"):
        for chunk in client(server).chat.completions.create(
            model="ollama/m", messages=[{"role": "user", "content": "hi"}], stream=True
        ):
            got.append(chunk.choices[0].delta.content or "")
    assert 0 < len("".join(got)) <= 100
    with pytest.raises(openai.APIStatusError, match="server's limit") as whole:
        client(server).chat.completions.create(
            model="ollama/m", messages=[{"role": "user", "content": "hi"}]
        )
    assert whole.value.status_code == 502


def test_save_makes_a_branch_when_asked_again_and_keeps_tool_conversations(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    from chatcli.api import list_sessions
    from chatcli.store import Stores as Kept

    configure(isolated, fake)
    thread = served(isolated, save=True)
    try:
        ask = client(thread).chat.completions
        start: Any = [{"role": "user", "content": "Hi"}]
        ask.create(model="ollama/m", messages=start)
        follow: Any = [*start, {"role": "assistant", "content": "Hello, world!"},
                       {"role": "user", "content": "More?"}]  # fmt: skip
        fake.pieces = ["One."]
        ask.create(model="ollama/m", messages=follow)
        fake.pieces = ["Two."]  # the same question again (a retry): a branch
        ask.create(model="ollama/m", messages=follow)
        # A tool conversation: the calls are the client's; the answer after them is kept.
        fake.pieces, fake.finish_reason = [], "tool_calls"
        fake.tool_call_chunks = [[{"index": 0, "id": "c1", "type": "function",
                                   "function": {"name": "f", "arguments": "{}"}}]]  # fmt: skip
        tools: Any = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
        asked: Any = [{"role": "user", "content": "Use f"}]
        ask.create(model="ollama/m", messages=asked, tools=tools)
        fake.pieces, fake.finish_reason, fake.tool_call_chunks = ["f says 1."], "stop", []
        asked += [
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "1"},
        ]  # fmt: skip
        ask.create(model="ollama/m", messages=asked, tools=tools)
        fake.pieces = ["Sure."]
        asked += [{"role": "assistant", "content": "f says 1."}, {"role": "user", "content": "Ok"}]
        ask.create(model="ollama/m", messages=asked, tools=tools)
    finally:
        thread.stop()
    first, second = sorted(
        list_sessions(home=isolated.chatcli_home, env={}), key=lambda s: s.created_at
    )
    store = Kept.for_settings(
        Paths.from_env(isolated.env), load_settings(Paths.from_env(isolated.env), isolated.env)
    ).sessions
    every = store.messages(first.id, every_branch=True)
    assert [m.content for m in every] == ["Hi", "Hello, world!", "More?", "One.", "More?", "Two."]
    active = store.messages(first.id)
    assert [m.content for m in active] == ["Hi", "Hello, world!", "More?", "Two."]
    assert [m.content for m in store.messages(second.id)] == ["Use f", "f says 1.", "Ok", "Sure."]


def test_nothing_is_retried_once_thinking_was_streamed(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    async def think_then_drop(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        delta = {"reasoning_content": "Thinking once. "}
        chunk = {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await asyncio.sleep(0.1)
        assert request.transport is not None
        request.transport.abort()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", think_then_drop)
    with AppServer(app) as upstream:
        isolated.write_config(
            f'retries = 2\n[providers.vllm]\nbase_url = "{upstream.url}/v1"\n'
            f'[providers.ollama]\nbase_url = "{fake.base_url}"\n'
        )
        thread = served(isolated)
        try:
            thought: list[str] = []
            with pytest.raises(openai.APIError):
                for chunk in client(thread).chat.completions.create(
                    model="vllm/m,ollama/m", messages=[{"role": "user", "content": "hi"}],
                    stream=True,
                ):  # fmt: skip
                    thought.append(getattr(chunk.choices[0].delta, "reasoning_content", "") or "")
        finally:
            thread.stop()
    assert "".join(thought) == "Thinking once. "  # not twice, nor followed by another's answer
    assert fake.requests == []


def test_a_client_that_stops_reading_holds_the_upstream_back(
    echo: tuple[Echo, ServeThread],
) -> None:
    from chatcli.server import BACKLOG

    upstream, thread = echo
    upstream.delay = 0
    question = " ".join(f"w{i}" for i in range(300_000))

    async def read_then_pause() -> list[int]:
        async with aiohttp.ClientSession() as session:
            body = {"model": "ollama/m", "stream": True,
                    "messages": [{"role": "user", "content": question}]}  # fmt: skip
            async with session.post(f"{thread.api}/chat/completions", json=body) as response:
                await response.content.readline()
                backlogs = []
                for _ in range(10):  # not reading: the server must wait, not pile up
                    await asyncio.sleep(0.2)
                    assert thread.server is not None
                    backlogs.append(max((len(c._items) for c in thread.server._open), default=0))
                return backlogs

    backlogs = asyncio.run(read_then_pause())
    assert max(backlogs) <= BACKLOG
    assert upstream.served == 0  # it was held back, and then cut when the client left
