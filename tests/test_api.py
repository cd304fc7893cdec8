"""The Python API (``chatcli.Chat``) and docs/python-api.md's examples of it, against the fake."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import chatcli
from chatcli.core import Finish, ReasoningDelta, TextDelta, Usage
from chatcli.errors import ProviderError, UsageError
from tests.conftest import Isolated
from tests.servers import FakeOpenAI

PYTHON_API = Path(__file__).resolve().parent.parent / "docs" / "python-api.md"


def point_ollama_at(isolated: Isolated, fake: FakeOpenAI) -> None:
    isolated.write_config(f'[providers.ollama]\nbase_url = "{fake.base_url}"\n')


def chat(isolated: Isolated, **kwargs: Any) -> chatcli.Chat:
    kwargs.setdefault("provider", "ollama")
    kwargs.setdefault("model", "m")
    return chatcli.Chat(home=isolated.chatcli_home, env={}, **kwargs)


def test_ask_returns_an_answer_and_saves_the_session(fake: FakeOpenAI, isolated: Isolated) -> None:
    point_ollama_at(isolated, fake)
    fake.usage = {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}
    first = chat(isolated, session="work", system="Be brief.")
    answer = first.ask("Hi")
    assert answer.text == str(answer) == "Hello, world!"
    assert (answer.status, answer.finish_reason) == ("complete", "stop")
    assert (answer.provider, answer.model) == ("ollama", "m")
    assert answer.usage == Usage(input_tokens=7, output_tokens=4)
    assert first.session is not None and answer.session == first.session.id
    assert first.history == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello, world!"},
    ]
    # Another Chat on the same session carries the history (and the system prompt) along.
    chat(isolated, session="work").ask("And?")
    sent = fake.requests[-1].body["messages"]
    assert [m["content"] for m in sent] == ["Be brief.", "Hi", "Hello, world!", "And?"]
    (listed,) = chatcli.list_sessions(home=isolated.chatcli_home, env={})
    assert listed.name == "work"
    session, messages = chatcli.load_session("work", home=isolated.chatcli_home, env={})
    assert session.id == listed.id
    assert [m.role for m in messages] == ["user", "assistant", "user", "assistant"]


def test_reasoning_is_kept_apart_from_the_answer(fake: FakeOpenAI, isolated: Isolated) -> None:
    point_ollama_at(isolated, fake)
    fake.reasoning = ["Let me ", "think."]
    answer = chat(isolated, save=False).ask("Hi")
    assert answer.text == "Hello, world!" and answer.reasoning == "Let me think."
    whole = chat(isolated, save=False, stream=False).ask("Hi")
    assert whole.text == "Hello, world!" and whole.reasoning == "Let me think."


def test_a_cut_answer_says_why(fake: FakeOpenAI, isolated: Isolated) -> None:
    point_ollama_at(isolated, fake)
    fake.finish_reason = "length"
    answer = chat(isolated, save=False).ask("Hi")
    assert (answer.finish_reason, answer.status) == ("length", "length")


def test_stream_yields_events_in_order(fake: FakeOpenAI, isolated: Isolated) -> None:
    point_ollama_at(isolated, fake)
    fake.reasoning = ["hmm"]
    fake.usage = {"prompt_tokens": 1, "completion_tokens": 2}
    conversation = chat(isolated, save=False)

    async def collect() -> list[Any]:
        return [event async for event in conversation.stream("Hi")]

    events = asyncio.run(collect())
    assert events[0] == ReasoningDelta("hmm")
    assert [e.text for e in events if isinstance(e, TextDelta)] == fake.pieces
    assert Usage(input_tokens=1, output_tokens=2) in events
    assert events[-1] == Finish("stop", "stop")
    assert conversation.last_answer is not None
    assert conversation.last_answer.text == "Hello, world!"


def test_stopping_a_stream_early_keeps_the_partial_answer_as_interrupted(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    point_ollama_at(isolated, fake)
    fake.delay = 0.05
    conversation = chat(isolated, session="cut")

    async def first_piece() -> str:
        async for event in conversation.stream("Hi"):
            if isinstance(event, TextDelta):
                return event.text
        return ""

    assert asyncio.run(first_piece()) == "Hello"
    assert conversation.last_answer is not None
    assert conversation.last_answer.status == "interrupted"
    _, messages = chatcli.load_session("cut", home=isolated.chatcli_home, env={})
    assert [(m.role, m.content, m.status) for m in messages] == [
        ("user", "Hi", "complete"),
        ("assistant", "Hello", "interrupted"),
    ]


def test_errors_raise_and_keep_what_arrived(fake: FakeOpenAI, isolated: Isolated) -> None:
    point_ollama_at(isolated, fake)
    fake.mode = "cut"
    conversation = chat(isolated, save=False, retries=0)
    with pytest.raises(ProviderError, match="incomplete") as caught:
        conversation.ask("Hi")
    assert isinstance(caught.value, RuntimeError)
    assert conversation.last_answer is not None
    assert conversation.last_answer.text == "Hello, world!"
    assert conversation.last_answer.status == "interrupted"


def test_an_option_the_provider_does_not_take_is_refused_at_once(isolated: Isolated) -> None:
    with pytest.raises(UsageError, match=r"gptalk: unknown option -o max_tokens"):
        chat(isolated, provider="gptalk", model=None, options={"max_tokens": 5})


def test_the_environment_given_is_the_one_used(fake: FakeOpenAI, isolated: Isolated) -> None:
    # No config file: the provider and model come from the env mapping, not from os.environ.
    env = {"CHATCLI_PROVIDER": "ollama", "CHATCLI_MODEL": "from-env"}
    point_ollama_at(isolated, fake)
    answer = chatcli.Chat(home=isolated.chatcli_home, env=env, save=False).ask("Hi")
    assert (answer.provider, answer.model) == ("ollama", "from-env")


def _python_blocks() -> list[str]:
    """Every Python example of docs/python-api.md, in order."""
    return re.findall(r"```python\n(.*?)```", PYTHON_API.read_text(), re.S)


def test_the_readme_python_api_examples_run(fake: FakeOpenAI, isolated: Isolated) -> None:
    # Each example runs as a user would run it (a fresh interpreter), with ollama pointed at the
    # fake by config.toml and the model named "llama3.2" in the examples answered by it.
    point_ollama_at(isolated, fake)
    blocks = _python_blocks()
    assert len(blocks) == 3
    env = dict(isolated.env)
    outputs = []
    for block in blocks:
        # The core example builds its registry without config.toml: give it the fake's URL.
        code = block.replace(
            'Registry.builtin().create("ollama")',
            (f'Registry.builtin().create("ollama", base_url={fake.base_url!r})'),
        )
        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env=env,
            cwd=isolated.root,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    # The fake gives no counts: chatcli's estimate, marked as such.
    assert outputs[0].startswith(
        "Hello, world!\ncomplete stop ollama llama3.2 "
        "Usage(input_tokens=8, output_tokens=4, estimated=True)\n"
    )
    assert "work" in outputs[0] and "['user', 'assistant']" in outputs[0]
    assert outputs[1] == "Hello, world!\n[stop]\n"
    assert "TextDelta(text='Hello')" in outputs[2] and "Finish(reason='stop'" in outputs[2]
    assert all(r.body["model"] == "llama3.2" for r in fake.requests if r.body)


def test_a_model_picked_from_the_list_is_not_asked_again_on_retry(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    # No model chosen: the service's first listed model is used, found once per turn.
    point_ollama_at(isolated, fake)
    fake.faults.set("503", "/chat/completions")
    with pytest.raises(ProviderError, match="503"):
        chat(isolated, model=None, save=False, retries=1).ask("Hi")
    paths = [r.path for r in fake.requests]
    assert paths.count("/v1/models") == 1
    assert fake.faults.hits == 2  # the first try and one retry
