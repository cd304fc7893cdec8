"""The offline model's evaluated state: reused only where it is exact, and kept on disk.

A follow-up question (``chatcli ask -c``, a REPL turn) sends the whole conversation again.
Reading it all takes most of the time before the first token: tens of seconds for a few
thousand tokens on a small CPU. Two things let a follow-up skip that without changing what the
model answers.

**Only exact state is reused** (:class:`StateReuse`). llama.cpp computes a token's keys and
values slightly differently when it evaluates that token alone (as it does for each token it
generates) than in a batch of two or more (as it reads a prompt); batches of any size from two
up agree bit for bit, however a prompt is cut into them. So the positions evaluated alone are
tracked, and never kept for a later turn: the answer is read again, in batches, as a fresh
process would read it (below). :func:`reusable_prefix` also keeps the last batch of the new
part the same kind (one token or more) as a fresh evaluation's last batch. The answer at
temperature 0 is then the same with or without reuse, which the tests check with the real
model.

**The state is kept between processes** (:class:`StateCache`). After an answer that ended
normally, its exact state (the prompt, and the answer once read again; at least
:data:`MIN_TOKENS` tokens) is written to ``CACHE/local-state/``, in a folder for the model (its
file's path, size and modification time, the context length, the batch size, and the llama.cpp
build); the next turn loads the entry sharing the longest token prefix with its prompt when
that saves at least :data:`MIN_GAIN` tokens over what the process already holds. A changed
model file, system prompt or history gives other tokens or another folder: a shorter match or
none, never a stale state. Each entry carries a SHA-256 of its tokens and state, and a damaged
entry is a miss (removed, with a ``-v`` line), never a crash or a wrong answer. The whole cache
is kept under a size cap (``[providers.local] state_cache_mib``, default
:data:`DEFAULT_CAP_MIB`; 0 turns it off), the least recently used entries dropped first, and an
entry whose tokens a newer one extends is dropped at once (the newer one serves every prompt it
served).

**Answers are read again while they are written** (:class:`Rereader`). Where a CPU is left
over while the model generates (it generates on all but one), a second llama.cpp context of the
same model takes a copy of the prompt's state at the first token and reads the answer's tokens
in batches as they come, a few at a time. When the answer ends, its state (prompt and answer,
all exact) replaces the model's, so the next turn, in this process or through the cache in the
next one, reads only the new question. Where no CPU is spare (or ``[providers.local] reread =
false``), the answer is read again after it ends, while the process idles
(:meth:`StateReuse.refresh`), or by the next turn.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import io
import json
import logging
import math
import os
import stat
import struct
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from chatcli.errors import ConfigError, StorageError
from chatcli.store.files import check_tree, private_dir, write_private

log = logging.getLogger("chatcli.local")

#: Entries are written only for prompts of at least this many exact tokens: a shorter one is
#: read again faster than its state is loaded.
MIN_TOKENS: Final = 64
#: An entry is loaded only when it covers this many more tokens than the process holds.
MIN_GAIN: Final = 64
#: The cache's size cap unless config.toml says otherwise, in MiB.
DEFAULT_CAP_MIB: Final = 1024
#: The cache's folder in chatcli's cache directory.
FOLDER: Final = "local-state"

MAGIC: Final = b"CHATCLI-STATE\n"
FORMAT: Final = 1
#: The largest header read from an entry (a real one is a few hundred bytes).
MAX_HEADER: Final = 64 * 1024
#: Temporary files older than this (seconds) are left-overs of a stopped write.
STALE_TEMPORARY: Final = 3600.0

#: "No position": every evaluated position is exact.
NEVER: Final = sys.maxsize

#: The :class:`Rereader` reads the answer once this many of its tokens wait (measured on two
#: cores: 4 to 16 slow generation alike, 32 and 64 more; the end of an answer waits for them).
REREAD_CHUNK: Final = 8
#: When an answer ends, the :class:`Rereader` finishes reading it if at most this many tokens
#: wait (a fraction of a second); more (it fell behind) are left to the next turn.
REREAD_FINISH: Final = 64
#: The :class:`Rereader` leaves an answer's last tokens this many until the text after them
#: comes (the tokenizer may cut them otherwise then).
REREAD_MARGIN: Final = 4
#: How many of the prompt's last tokens the :class:`Rereader` cuts the answer's text after.
REREAD_WINDOW: Final = 16
#: How long, in seconds, the end of an answer waits for the :class:`Rereader` before it stops
#: it where it is (a large model on a slow CPU reads a batch for seconds).
REREAD_WAIT: Final = 1.0
#: The :class:`Rereader`'s largest batch (its compute buffers are sized for it).
REREAD_BATCH: Final = 64
#: The :class:`Rereader`'s context grows in steps of this many positions.
REREAD_ROOM: Final = 1024

_HEAD: Final = struct.Struct("<I")  # the header's length, after MAGIC


def common_prefix(first: Sequence[int], second: Sequence[int]) -> int:
    """How many tokens the two sequences share from the start."""
    import numpy as np

    count = min(len(first), len(second))
    if not count:
        return 0
    a = np.asarray(first[:count], dtype=np.int64)
    b = np.asarray(second[:count], dtype=np.int64)
    differ = np.flatnonzero(a != b)
    return int(differ[0]) if differ.size else count


def reusable_prefix(match: int, prompt: int, batch: int, inexact_from: int = NEVER) -> int:
    """How many of a prompt's first tokens may be kept from an evaluated state, so that the
    next tokens are computed exactly as a fresh evaluation of the whole prompt computes them.

    ``match``: the tokens the state shares with the prompt; ``prompt``: the prompt's length;
    ``batch``: the batch size llama.cpp reads a prompt in; ``inexact_from``: the first
    position the state evaluated alone (see the module's doc).

    At least one token is always evaluated again (its logits give the first answer token). A
    fresh evaluation reads the prompt in batches from its start, its last one ``prompt %
    batch`` tokens long; when that last batch is a single token, the kept prefix leaves the
    rest a multiple of ``batch`` plus one, so that the last token is again read alone, and
    otherwise never leaves a single token at the end.
    """
    limit = min(match, inexact_from, prompt - 1)
    if limit <= 0:
        return 0
    if prompt % batch == 1:
        batches = math.ceil((prompt - 1 - limit) / batch)
        keep = prompt - 1 - batches * batch
    elif (prompt - limit) % batch == 1:
        keep = limit - 1
    else:
        keep = limit
    return max(0, keep)


class StateReuse:
    """What one loaded model may reuse of what it evaluated: it watches the model's ``eval``
    for tokens evaluated alone (``inexact_from``), and before each prompt keeps only the exact
    prefix (loading a longer one from the cache when there is one)."""

    def __init__(
        self, llm: Any, rereader: Rereader | None = None, retokenize: bool = False
    ) -> None:
        self.inexact_from = NEVER
        #: Read an answer again as the tokenizer cuts its text (:class:`AnswerTokens`).
        self.retokenize = retokenize
        #: The last prompt and its answer, for :meth:`refresh`.
        self.pending: list[int] | None = None
        #: How many of the last prompt's tokens were reused.
        self.reused = 0
        #: Reads each answer again while it is generated, where a CPU is spare.
        self.rereader = rereader
        evaluate = llm.eval

        def watched(tokens: Sequence[int]) -> Any:
            start = llm.n_tokens
            if self.inexact_from >= start:
                self.inexact_from = NEVER  # llama.cpp drops everything from ``start`` first
            count = len(tokens)
            if count % llm.n_batch == 1:  # its last batch is a single token
                self.inexact_from = min(self.inexact_from, start + count - 1)
            return evaluate(tokens)

        llm.eval = watched

    @classmethod
    def for_model(cls, llm: Any, spare_cpus: int = 0) -> StateReuse | None:
        """For a model just loaded, reading answers again on ``spare_cpus`` CPUs while it
        generates them (none: after they end); ``None`` for a model whose memory cannot be cut
        at a position (a recurrent or hybrid model, which llama-cpp-python makes read each
        prompt whole)."""
        import llama_cpp

        model = llm.model
        if llama_cpp.llama_model_is_recurrent(model) or llama_cpp.llama_model_is_hybrid(model):
            return None
        return cls(llm, Rereader(llm, spare_cpus) if spare_cpus > 0 else None, retokenize=True)

    def prepare(self, llm: Any, tokens: Sequence[int], cache: StateCache | None) -> None:
        """Before ``tokens`` are evaluated: keep the exact part of what the model holds, or
        load a longer exact prefix from ``cache``."""
        prompt = len(tokens)
        batch = llm.n_batch
        held = common_prefix(llm.input_ids[: llm.n_tokens], tokens)
        keep = reusable_prefix(held, prompt, batch, self.inexact_from)
        source = "still in memory"
        if cache is not None:
            found = cache.lookup(tokens)
            if found is not None:
                entry, shared = found
                better = reusable_prefix(shared, prompt, batch)
                if better >= keep + MIN_GAIN and cache.restore(llm, entry):
                    self.inexact_from = NEVER
                    keep, source = better, "from the state cache"
        llm.n_tokens = min(llm.n_tokens, keep)
        self.reused = keep
        if keep:
            log.info(
                "local: %s of %s prompt tokens reused (%s)", f"{keep:,}", f"{prompt:,}", source
            )

    def keep(
        self, llm: Any, prompt: Sequence[int], answer: Sequence[int], cache: StateCache | None
    ) -> None:
        """After an answer that ended normally: keep only the exact part of its state (with
        the :class:`Rereader`, the prompt and the answer; without, the prompt: the answer's
        tokens, evaluated one at a time, are dropped), write it to ``cache``, and remember the
        answer for :meth:`refresh`."""
        self.pending = None
        if self.rereader is not None and self.rereader.finish(llm) is not None:
            self.inexact_from = NEVER  # the model's state is now the rereader's, all exact
        exact = min(self.inexact_from, llm.n_tokens)
        import llama_cpp

        memory = llama_cpp.llama_get_memory(llm.ctx)
        if memory is None or not llama_cpp.llama_memory_seq_rm(memory, -1, exact, -1):
            return  # a model whose memory cannot be cut at a position (a recurrent one)
        llm.n_tokens = exact
        self.inexact_from = NEVER
        if self.retokenize:
            answer = AnswerTokens(llm, prompt).of(answer, final=True)
        self.pending = [*prompt, *answer]
        if cache is not None and exact >= MIN_TOKENS:
            cache.save(llm)

    def generated(self, llm: Any, index: int, token: int) -> None:
        """The answer's token number ``index`` was sampled (the model is between evaluations:
        before the first, it has read the whole prompt)."""
        if self.rereader is None:
            return
        if index == 0:
            self.rereader.start(llm, min(llm.n_tokens, self.inexact_from), token)
        else:
            self.rereader.feed(token)

    def abandon(self) -> None:
        """The answer did not end normally (stopped, failed): nothing of it is read again."""
        if self.rereader is not None:
            self.rereader.stop()

    def close(self) -> None:
        """Before the model is freed."""
        if self.rereader is not None:
            self.rereader.close()

    def refresh(self, llm: Any, cache: StateCache | None, stop: threading.Event) -> None:
        """After :meth:`keep`, with time to spare: read the answer again in a batch, so that
        the next turn (or, through ``cache``, the next process) starts with it evaluated;
        ``stop`` (set when the model is needed) ends it early, leaving what is done."""
        tokens, self.pending = self.pending, None
        start = llm.n_tokens
        if not tokens or stop.is_set() or start >= len(tokens):
            return
        if common_prefix(llm.input_ids[:start], tokens) != start:
            return
        end = len(tokens)
        if (end - start) % llm.n_batch == 1:
            end -= 1  # never a batch of one token: its state would not be exact
        if end - start < 2:
            return
        started = time.perf_counter()
        try:
            llm.eval(tokens[start:end])
        except RuntimeError:
            return  # stopped: the batches done are kept
        log.info(
            "local: the answer's %s tokens read again in %.2f s",
            f"{end - start:,}",
            time.perf_counter() - started,
        )
        if cache is not None and not stop.is_set() and llm.n_tokens >= MIN_TOKENS:
            cache.save(llm)


class AbortFlag:
    """Stops one llama.cpp context's work from another thread, within a step of its compute
    graph, even mid-batch.

    llama.cpp calls a context's abort callback at every step of its graph, where a Python
    function would take the GIL hundreds of times per token, and it reads which callback to
    call only when a graph starts (a batch of up to 512 prompt tokens: seconds on a small CPU).
    So the callback is a C function set once, reading a flag with no Python involved: the C
    library's ``strlen`` of a two-byte buffer, 0 (go on) until its first byte is set, then 1
    (stop).
    """

    def __init__(self, ctx: Any) -> None:
        import llama_cpp

        # Kept on the object, so that ctypes does not free them while llama.cpp holds them.
        self._flag = ctypes.create_string_buffer(2)
        strlen = _c_strlen()
        if strlen is not None:
            self._callback = ctypes.cast(strlen, llama_cpp.ggml_abort_callback)
        else:  # no C library found: a Python callback, slower but as prompt
            flag = self._flag
            self._callback = llama_cpp.ggml_abort_callback(lambda _data: flag.raw[0] != 0)
        data = ctypes.cast(self._flag, ctypes.c_void_p)
        llama_cpp.llama_set_abort_callback(ctx, self._callback, data)

    def set(self, on: bool) -> None:
        self._flag[0] = b"\x01" if on else b"\x00"


def _c_strlen() -> Any:
    """The C library's ``strlen``, or ``None`` where none is found."""
    import ctypes.util

    for name in (None, ctypes.util.find_library("c"), "msvcrt"):
        try:
            return ctypes.CDLL(name).strlen
        except (OSError, AttributeError, TypeError):
            continue
    return None


class Rereader:
    """A second llama.cpp context of the same model that reads each answer again, in batches,
    on ``threads`` spare CPUs while the model generates it (see the module's doc).

    It reads the answer's tokens as a tokenizer makes them from its text, which is what the
    next turn's prompt holds: a model may generate a word in other tokens than the tokenizer
    cuts it into (``" under" "score"`` for ``" underscore"``), and the next prompt matches
    only up to there. The last :data:`REREAD_MARGIN` tokens wait for the text after them.

    The model's thread calls :meth:`start` at the answer's first token, :meth:`feed` with each
    next one, then :meth:`finish` when the answer ended or :meth:`stop` when it did not. The
    reading happens in a thread of its own, one per answer, never after :meth:`finish` or
    :meth:`stop` return. Its context is made in that thread, while the model generates, as
    large as the conversation needs in steps of :data:`REREAD_ROOM` positions (made again,
    larger, when an answer outgrows it), and kept until :meth:`close`: its memory follows the
    conversation's length, not the model's whole context. A context that cannot be made
    (memory) turns it off.
    """

    def __init__(self, llm: Any, threads: int) -> None:
        self.llm = llm
        self.threads = threads
        self.ctx: Any = None
        self.size = 0  # the positions its context holds at most
        self.broken = False
        self._abort: AbortFlag | None = None
        self._batch: Any = None
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._prompt: list[int] = []  # the prompt's tokens
        self._generated: list[int] = []  # the answer's, as generated
        self._answer: AnswerTokens | None = None  # the answer's tokens as a prompt has them
        #: The tokens its context is to hold: the prompt's, then the answer's as read again.
        self._tokens: list[int] = []
        self._state: Any = None  # the prompt's state, for the thread to load
        self._exact = 0  # how much of that state is exact
        self._done = 0  # the positions its context holds
        self._planned = 0  # how many generated tokens ``_tokens`` was made from
        self._final = False  # the answer ended: read the rest
        self._cut = False  # read nothing more
        self._failed = False

    def start(self, llm: Any, exact: int, first: int) -> None:
        """At the answer's first token ``first``: copy the state of the prompt (its first
        ``exact`` positions exact) and start reading. A failure here only leaves the answer
        to be read again the slow way (after it ends), never fails the answer."""
        self.stop()
        if self.broken:
            return
        try:
            self._start(llm, exact, first)
        except Exception as exc:
            log.debug("local: reading the answer again could not start: %s", exc)

    def _start(self, llm: Any, exact: int, first: int) -> None:
        state = seq_state(llm.ctx)
        if state is None:
            return
        with self._cond:
            self._prompt = llm.input_ids[: llm.n_tokens].tolist()
            self._tokens = list(self._prompt)
            self._generated = [int(first)]
            self._answer = AnswerTokens(llm, self._prompt)
            self._state, self._exact = state, exact
            self._done = self._planned = 0
            self._final = self._cut = self._failed = False
        thread = threading.Thread(target=self._run, name="chatcli-reread", daemon=True)
        thread.start()
        self._thread = thread

    def feed(self, token: int) -> None:
        """The answer's next token."""
        if self._thread is None:
            return
        with self._cond:
            self._generated.append(int(token))
            self._cond.notify()

    def finish(self, llm: Any) -> int | None:
        """The answer ended: read what waits (unless it fell behind by more than
        :data:`REREAD_FINISH` tokens), then put the state read in place of ``llm``'s; how many
        positions ``llm`` now holds, all exact (``None``: nothing was changed)."""
        import llama_cpp

        thread = self._thread
        if thread is None:
            return None
        with self._cond:
            left = len(self._tokens) - self._done + len(self._generated) - self._planned
            if left > REREAD_FINISH:
                self._cut = True  # it fell behind: the next turn reads the rest
            self._final = True
            self._cond.notify()
        started = time.perf_counter()
        thread.join(REREAD_WAIT)
        self._halt(thread)  # a slow model: what is read so far is kept
        count = min(self._done, len(self._tokens))
        if self._failed or count < 2:
            return None
        memory = llama_cpp.llama_get_memory(llm.ctx)
        try:
            state = seq_state(self.ctx)
            if state is None:
                return None
            llama_cpp.llama_memory_seq_rm(memory, -1, 0, -1)
            if not set_seq_state(llm.ctx, state):
                raise RuntimeError("llama.cpp refused the state")
            llm.input_ids[:count] = self._tokens[:count]
        except Exception as exc:  # what the model holds is unknown: nothing is kept
            log.debug("local: the answer read again could not be put in place: %s", exc)
            llama_cpp.llama_memory_seq_rm(memory, -1, 0, -1)
            llm.n_tokens = 0
            return 0
        llm.n_tokens = count
        log.info(
            "local: %s tokens of the answer read again as they came (%s generated; %.2f s at "
            "its end)",
            f"{max(0, count - len(self._prompt)):,}",
            f"{len(self._generated):,}",
            time.perf_counter() - started,
        )
        return count

    def stop(self) -> None:
        """The answer did not end normally: stop reading at once (within a step)."""
        if self._thread is not None:
            self._halt(self._thread)

    def _halt(self, thread: threading.Thread) -> None:
        """Stop its thread within a step (llama.cpp aborts a batch in flight), and wait."""
        with self._cond:
            self._final = self._cut = True
            self._cond.notify()
            if self._abort is not None and thread.is_alive():
                self._abort.set(True)
        thread.join()
        self._thread = None
        if self._abort is not None:
            self._abort.set(False)

    def close(self) -> None:
        """Before the model is freed: free its context."""
        self.stop()
        self._free()

    # -- its thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        import llama_cpp

        try:
            state, self._state = self._state, None
            if not self._room(min(len(self._prompt) + REREAD_ROOM // 4, self.llm.n_ctx()), None):
                self._failed = True
                return
            memory = llama_cpp.llama_get_memory(self.ctx)
            llama_cpp.llama_memory_seq_rm(memory, -1, 0, -1)
            if not set_seq_state(self.ctx, state):
                self._failed = True
                return
            del state  # the prompt's copy: as large as its keys and values
            llama_cpp.llama_memory_seq_rm(memory, 0, self._exact, -1)
            self._done = self._exact
            while True:
                with self._cond:
                    self._cond.wait_for(
                        lambda: self._final or len(self._generated) - self._planned >= REREAD_CHUNK
                    )
                    if self._cut:
                        return
                    final, generated = self._final, list(self._generated)
                assert self._answer is not None  # made by start() before this thread
                plan = [*self._prompt, *self._answer.of(generated, final)]
                with self._cond:
                    held = self._tokens[: self._done]
                    self._tokens, self._planned = plan, len(generated)
                if not self._read(held, plan, final) or final:
                    return
        except Exception as exc:  # anything: the answer is read again the slow way instead
            log.debug("local: reading the answer again failed: %s", exc)
            self._failed = True

    def _read(self, held: list[int], plan: list[int], final: bool) -> bool:
        """Bring its context from holding ``held`` to holding ``plan`` (from where they differ,
        read again); whether it still can (not stopped, nothing failed)."""
        import llama_cpp

        start = common_prefix(held, plan)
        while True:
            end = len(plan)
            if end - start == 1 and final and start >= 1:
                start -= 1  # never a batch of one token: its state would not be exact
            end = min(end, start + REREAD_BATCH)
            if end - start == 1:
                end = start  # a single last one waits (or is left to the next turn)
            if start < self._done:  # the tokenizer cut the answer otherwise, or a step back
                memory = llama_cpp.llama_get_memory(self.ctx)
                llama_cpp.llama_memory_seq_rm(memory, 0, start, -1)
                with self._cond:
                    self._done = start
            if end <= start:
                return True
            if not self._room(end, start):
                self._failed = True
                return False
            memory = llama_cpp.llama_get_memory(self.ctx)
            if not self._decode(start, plan[start:end]):
                # Stopped (or failed) mid-batch: only the batches before it are kept.
                llama_cpp.llama_memory_seq_rm(memory, 0, start, -1)
                with self._cond:
                    self._failed = not self._cut
                return False
            with self._cond:
                self._done = start = end
                if self._cut:
                    return False

    def _room(self, positions: int, keep: int | None) -> bool:
        """A context that holds ``positions``: this one, or a larger one made in its place
        (with the first ``keep`` positions of what it holds); whether there is one."""
        import llama_cpp

        if self.ctx is not None and positions <= self.size:
            return True
        most = self.llm.n_ctx()
        if positions > most:
            return False
        held = None
        if self.ctx is not None and keep:
            held = seq_state(self.ctx)
            if held is None:
                return False
        self._free()  # before making the next: never both in memory
        params = llama_cpp.llama_context_params()
        ctypes.memmove(
            ctypes.byref(params), ctypes.byref(self.llm.context_params), ctypes.sizeof(params)
        )
        params.n_threads = params.n_threads_batch = self.threads
        params.n_batch = params.n_ubatch = REREAD_BATCH  # the size of its compute buffers
        params.n_ctx = min(most, math.ceil(positions / REREAD_ROOM) * REREAD_ROOM)
        ctx = llama_cpp.llama_init_from_model(self.llm.model, params)
        if ctx is None:
            self.broken = True
            log.info("local: no second context for reading answers again (memory?)")
            return False
        with self._cond:
            self.ctx, self.size = ctx, int(llama_cpp.llama_n_ctx(ctx))
            self._abort = AbortFlag(ctx)
            if self._cut:
                self._abort.set(True)  # stopped while it was being made
        self._batch = llama_cpp.llama_batch_init(REREAD_BATCH, 0, 1)
        if held is not None:
            memory = llama_cpp.llama_get_memory(ctx)
            if not set_seq_state(ctx, held):
                return False
            llama_cpp.llama_memory_seq_rm(memory, 0, keep, -1)
        return True

    def _free(self) -> None:
        import llama_cpp

        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if self.ctx is not None:
            llama_cpp.llama_free(self.ctx)
            self.ctx, self.size = None, 0

    def _decode(self, start: int, tokens: list[int]) -> bool:
        import llama_cpp

        batch = self._batch
        count = len(tokens)
        batch.n_tokens = count
        for i, token in enumerate(tokens):
            batch.token[i] = token
            batch.pos[i] = start + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = i == count - 1
        return int(llama_cpp.llama_decode(self.ctx, batch)) == 0


class AnswerTokens:
    """An answer's tokens as the tokenizer cuts its text after ``prompt``, which is what the
    next turn's prompt holds: a model may generate a word in other tokens than the tokenizer
    makes of it (``" under" "score"`` for ``" underscore"``), and the next prompt would match
    a state of the generated tokens only up to there.

    The prompt's last :data:`REREAD_WINDOW` tokens go in front of the answer's text, so that
    its first tokens are cut as they are after them (they must come back the same, else the
    generated tokens are kept). Each token's text is made once: an answer growing token by
    token costs one C call (the tokenizer, without Python's lock) per :meth:`of`, not Python
    work that would take the interpreter from the generating thread.
    """

    def __init__(self, llm: Any, prompt: Sequence[int]) -> None:
        import llama_cpp

        self.llm = llm
        self.vocab = llama_cpp.llama_model_get_vocab(llm.model)
        self.window = [int(token) for token in prompt[-REREAD_WINDOW:]]
        #: The window's text, then each generated token's.
        self.pieces = [b"".join(_piece(self.vocab, token) for token in self.window)]

    def of(self, generated: Sequence[int], final: bool) -> list[int]:
        """The answer's tokens: the tokenizer's, then its end-of-turn token once it has ended
        (``final``), and before that without the last :data:`REREAD_MARGIN` (the text after
        them may join them)."""
        import llama_cpp

        body, end = list(generated), []
        if final and body and llama_cpp.llama_vocab_is_eog(self.vocab, body[-1]):
            body, end = body[:-1], body[-1:]
        for token in body[len(self.pieces) - 1 :]:
            self.pieces.append(_piece(self.vocab, token))
        again = self.llm.tokenize(b"".join(self.pieces[: len(body) + 1]), False, True)
        window = len(self.window)
        answer = again[window:] if again[:window] == self.window else body
        if not final:
            answer = answer[: max(0, len(answer) - REREAD_MARGIN)]
        return [*answer, *end]


def _piece(vocab: Any, token: int) -> bytes:
    """A token's text, special tokens too (as the chat template writes them)."""
    import llama_cpp

    buffer = ctypes.create_string_buffer(64)
    size = llama_cpp.llama_token_to_piece(vocab, token, buffer, len(buffer), 0, True)
    if size < 0:
        buffer = ctypes.create_string_buffer(-size)
        size = llama_cpp.llama_token_to_piece(vocab, token, buffer, len(buffer), 0, True)
    return buffer.raw[: max(0, size)]


def seq_state(ctx: Any) -> Any:
    """A copy of what a context holds (its sequence 0), or ``None``."""
    import llama_cpp
    import numpy as np

    size = llama_cpp.llama_state_seq_get_size(ctx, 0)
    state = np.empty(size, dtype=np.uint8)
    pointer = state.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
    written = llama_cpp.llama_state_seq_get_data(ctx, pointer, size, 0)
    return state[:written] if 0 < written <= size else None


def set_seq_state(ctx: Any, state: Any) -> bool:
    """Load :func:`seq_state`'s copy into a context (its sequence 0); whether it took it."""
    import llama_cpp

    pointer = state.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
    return bool(llama_cpp.llama_state_seq_set_data(ctx, pointer, len(state), 0) == len(state))


@dataclass(frozen=True, slots=True)
class EntryHead:
    """What an entry's header says, and its tokens."""

    path: Path
    tokens: Any  # a numpy array of int32
    state_size: int
    digest: str
    offset: int  # where its tokens start


class DamagedEntry(ValueError):
    """An entry that cannot be what it claims to be."""


class StateCache:
    """Saved states of one model file (at one context length, with one llama.cpp build)."""

    def __init__(self, cache_dir: Path, key: dict[str, Any], cap_bytes: int) -> None:
        self.base = cache_dir
        self.root = cache_dir / FOLDER
        self.key = key
        name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        self.folder = self.root / name
        self.cap = cap_bytes
        self._heads: dict[Path, EntryHead] = {}

    @classmethod
    def for_model(
        cls, cache_dir: Path | None, cap_mib: int, path: Path, llm: Any, n_ctx: int
    ) -> StateCache | None:
        """The cache for a loaded model; ``None`` when it is off or cannot apply."""
        if cache_dir is None or cap_mib <= 0:
            return None
        import llama_cpp

        try:
            st = path.stat()
            build = llama_cpp.llama_print_system_info().decode("utf-8", "replace")
        except (OSError, AttributeError, TypeError):
            return None
        key = {
            "format": FORMAT,
            "model": str(path),
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "n_ctx": n_ctx,
            "n_batch": llm.n_batch,
            "runtime": getattr(llama_cpp, "__version__", "?"),
            "build": build,
        }
        return cls(cache_dir, key, cap_mib * 1024 * 1024)

    # -- finding -----------------------------------------------------------------------------

    def lookup(self, tokens: Sequence[int]) -> tuple[EntryHead, int] | None:
        """The entry sharing the longest prefix with ``tokens``, and how long that prefix is."""
        best: tuple[EntryHead, int] | None = None
        for head in self._entries():
            shared = common_prefix(head.tokens, tokens)
            if shared and (best is None or shared > best[1]):
                best = (head, shared)
        return best

    def _entries(self) -> list[EntryHead]:
        heads: list[EntryHead] = []
        try:
            if not check_tree(self.folder, self.base):
                return heads
        except ConfigError as exc:  # a link or another user's folder: never read through
            log.warning("chatcli: the offline model's state cache is not used: %s", exc)
            return heads
        try:
            names = sorted(os.listdir(self.folder))
        except FileNotFoundError:
            return heads
        except OSError as exc:
            log.info("local: state cache not read (%s)", exc.strerror or exc)
            return heads
        for name in names:
            if not name.endswith(".state"):
                continue
            path = self.folder / name
            try:
                heads.append(self._head(path))
            except DamagedEntry as exc:
                self._drop_damaged(path, str(exc))
        return heads

    def _head(self, path: Path) -> EntryHead:
        cached = self._heads.get(path)
        if cached is not None:
            return cached
        try:
            with _open_entry(path) as file:
                head = _read_head(file, path, self.key)
        except OSError as exc:
            raise DamagedEntry(exc.strerror or str(exc)) from None
        self._heads[path] = head
        return head

    # -- loading -----------------------------------------------------------------------------

    def restore(self, llm: Any, head: EntryHead) -> bool:
        """Load an entry into the model; ``False`` (and the entry removed) when it is damaged."""
        import llama_cpp
        import numpy as np

        count = len(head.tokens)
        started = time.perf_counter()
        try:
            if count > llm.n_ctx():
                raise DamagedEntry(f"{count} tokens, more than the context holds")
            with _open_entry(head.path) as file:
                size = os.fstat(file.fileno()).st_size
                expected = head.offset + 4 * count + head.state_size
                if size != expected:
                    raise DamagedEntry(f"{size} bytes where its header says {expected}")
                if size > self.cap:
                    raise DamagedEntry("larger than the cache's cap")
                data = bytearray(size - head.offset)
                file.seek(head.offset)
                if file.readinto(data) != len(data):
                    raise DamagedEntry("it ends early")
        except OSError as exc:
            self._drop_damaged(head.path, exc.strerror or str(exc))
            return False
        except DamagedEntry as exc:
            self._drop_damaged(head.path, str(exc))
            return False
        if hashlib.sha256(data).hexdigest() != head.digest:
            self._drop_damaged(head.path, "its checksum does not match")
            return False
        tokens = np.frombuffer(data, dtype="<i4", count=count)
        if not np.array_equal(tokens, head.tokens):
            self._drop_damaged(head.path, "it changed while it was read")
            return False
        state = (ctypes.c_uint8 * head.state_size).from_buffer(data, 4 * count)
        if llama_cpp.llama_state_set_data(llm.ctx, state, head.state_size) != head.state_size:
            llm.reset()  # whatever it half-set is evaluated again from the start
            self._drop_damaged(head.path, "llama.cpp refused its state")
            return False
        llm.input_ids[:count] = tokens
        llm.n_tokens = count
        _touch(head.path)
        log.info(
            "local: state of %s tokens loaded from the cache in %.2f s",
            f"{count:,}",
            time.perf_counter() - started,
        )
        return True

    def _drop_damaged(self, path: Path, why: str) -> None:
        log.info("local: state cache entry %s is damaged (%s): not used, removed", path.name, why)
        self._heads.pop(path, None)
        _remove(path)

    # -- saving ------------------------------------------------------------------------------

    def save(self, llm: Any) -> None:
        """Write the model's state (its first ``llm.n_tokens`` tokens) as an entry, then
        drop the entries it supersedes and the oldest ones over the cap."""
        import llama_cpp
        import numpy as np

        count = llm.n_tokens
        tokens = np.ascontiguousarray(llm.input_ids[:count], dtype="<i4")
        name = hashlib.sha256(tokens.tobytes()).hexdigest()[:32] + ".state"
        path = self.folder / name
        try:
            private_dir(self.folder, base=self.base)
            if path.exists():  # the same tokens are saved already
                _touch(path)
                return
            started = time.perf_counter()
            size = llama_cpp.llama_state_get_size(llm.ctx)
            if size > self.cap:
                log.info("local: state not cached: %s MiB is more than the cap", size >> 20)
                return
            buffer = (ctypes.c_uint8 * size)()
            written = llama_cpp.llama_state_get_data(llm.ctx, buffer, size)
            if not 0 < written <= size:
                return
            state = memoryview(buffer).cast("B")[:written]
            digest = hashlib.sha256(tokens.tobytes())
            digest.update(state)
            fields = {"key": self.key, "tokens": count, "state_size": written}
            fields["sha256"] = digest.hexdigest()
            header = json.dumps(fields, sort_keys=True).encode()
            parts: list[bytes | memoryview] = [MAGIC, _HEAD.pack(len(header)), header]
            parts += [tokens.tobytes(), state]
            write_private(path, parts, base=self.base, durable=False)
            log.info(
                "local: state of %s tokens cached (%s MiB) in %.2f s",
                f"{count:,}",
                f"{written / 2**20:.0f}",
                time.perf_counter() - started,
            )
        except (StorageError, ConfigError, OSError) as exc:
            log.warning("chatcli: the offline model's state was not cached: %s", exc)
            return
        offset = len(MAGIC) + _HEAD.size + len(header)
        self._heads[path] = EntryHead(path, tokens, written, digest.hexdigest(), offset)
        self._drop_superseded(path, tokens)
        self.trim()

    def _drop_superseded(self, path: Path, tokens: Any) -> None:
        for head in self._entries():
            shorter = head.path != path and len(head.tokens) < len(tokens)
            if shorter and common_prefix(head.tokens, tokens) == len(head.tokens):
                self._heads.pop(head.path, None)
                _remove(head.path)

    def trim(self) -> None:
        """Drop the least recently used entries (of every model) until the cache fits its cap;
        remove temporary files a stopped write left behind."""
        found: list[tuple[float, int, Path]] = []
        now = time.time()
        try:
            folders = [self.root / name for name in os.listdir(self.root)]
        except OSError:
            return
        for folder in folders:
            try:
                names = os.listdir(folder)
            except OSError:
                continue  # not a folder, or gone
            for name in names:
                path = folder / name
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if name.endswith(".tmp") and now - st.st_mtime > STALE_TEMPORARY:
                    _remove(path)
                elif name.endswith(".state"):
                    found.append((st.st_mtime, st.st_size, path))
        total = sum(size for _, size, _ in found)
        for _, size, path in sorted(found):
            if total <= self.cap:
                break
            self._heads.pop(path, None)
            _remove(path)
            total -= size


@contextlib.contextmanager
def _open_entry(path: Path) -> Iterator[io.FileIO]:
    """An entry opened for reading: never through a link, a regular file of this user."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not (stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid()):
            raise OSError(0, "not a regular file of this user")
        file = io.FileIO(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with file:
        yield file


def _read_head(file: io.FileIO, path: Path, key: dict[str, Any]) -> EntryHead:
    import numpy as np

    start = file.read(len(MAGIC) + _HEAD.size)
    if len(start) != len(MAGIC) + _HEAD.size or not start.startswith(MAGIC):
        raise DamagedEntry("not a state file")
    (length,) = _HEAD.unpack(start[len(MAGIC) :])
    if length > MAX_HEADER:
        raise DamagedEntry("its header is too long")
    raw = file.read(length)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise DamagedEntry("its header is not JSON") from None
    if not isinstance(header, dict) or header.get("key") != key:
        raise DamagedEntry("its header is for another model")
    count, size, digest = header.get("tokens"), header.get("state_size"), header.get("sha256")
    if not (
        isinstance(count, int) and 0 < count <= key["n_ctx"]
        and isinstance(size, int) and size > 0
        and isinstance(digest, str) and len(digest) == 64
    ):  # fmt: skip
        raise DamagedEntry("its header is incomplete")
    data = file.read(4 * count)
    if len(data) != 4 * count:
        raise DamagedEntry("it ends early")
    tokens = np.frombuffer(data, dtype="<i4")
    return EntryHead(path, tokens, size, digest, len(start) + length)


def _touch(path: Path) -> None:
    """Mark an entry as just used (the cap drops the least recently used first)."""
    with contextlib.suppress(OSError):
        os.utime(path, follow_symlinks=False)


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
