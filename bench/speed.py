"""The offline model's speed against its limits: prompt reading and generation, in tokens per
second, for chatcli's ``local`` provider, llama-cpp-python's own loop, and (when given the
path of llama.cpp's ``llama-bench``) llama.cpp itself, on the same model and threads, in one
run.

    python bench/speed.py [--threads N] [--runs 3] [--llama-bench PATH] [-m MODEL]

* **prompt**: a 512-token prompt read from an empty context. llama-bench's ``pp512``;
  llama-cpp-python's ``Llama.eval``; chatcli: the time to the first token of an answer to a
  512-token question (one token's sampling more than the others). With the default threads,
  chatcli reads a prompt with every CPU (``local.batch_threads``); the others use
  ``--threads`` for both.
* **generation**: 128 tokens, greedy. llama-bench's ``tg128``; llama-cpp-python's
  ``Llama.generate`` loop; chatcli: ``Local.stream`` with chatcli's own sampling settings (its
  repeat penalty included), from the first token to the last, through its worker thread,
  event queue and loop detector, as ``chatcli ask`` gets them; once with the answer read
  again on a spare CPU as it comes (the default) and once without (``reread = false``).

Medians of ``--runs`` runs; each model is loaded once, as chatcli loads it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from chatcli.core import ChatMessage, ChatRequest, TextDelta, Usage
from chatcli.providers import local

PROMPT_TOKENS = 512
GENERATED = 128


def prompt_text(llm: Any, tokens: int) -> str:
    """Plain English prose of about ``tokens`` tokens: this repository's README."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    ids = llm.tokenize(readme.encode(), add_bos=False)[: tokens - 40]  # room for the template
    return str(llm.detokenize(ids).decode("utf-8", "replace"))


def llama_cpp_python(path: Path, threads: int, runs: int) -> tuple[float, float]:
    """(prompt tokens/s, generation tokens/s) of llama-cpp-python's own calls."""
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(path),
        n_ctx=local.DEFAULT_CONTEXT,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    prompt = llm.tokenize(prompt_text(llm, PROMPT_TOKENS * 2).encode())[:PROMPT_TOKENS]
    reads, gens = [], []
    for _ in range(runs):
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt)
        reads.append(PROMPT_TOKENS / (time.perf_counter() - start))
        llm.reset()
        count, first = 0, 0.0
        for _token in llm.generate(prompt[:8], temp=0.0, repeat_penalty=1.0):
            count += 1
            if count == 1:
                first = time.perf_counter()
            if count == GENERATED:
                break
        gens.append((count - 1) / (time.perf_counter() - first))
    llm.close()
    return statistics.median(reads), statistics.median(gens)


def chatcli_local(
    path: Path, threads: int, runs: int, reread: bool = True
) -> tuple[float, float, int]:
    """(prompt tokens/s, generation tokens/s, prompt tokens) through ``Local.stream``; with
    ``reread``, a spare CPU reads each answer again as it comes (chatcli's default)."""
    # The default threads as chatcli picks them (a prompt read by every CPU); others as given.
    options = {} if threads == local.default_threads() else {"threads": threads}
    local.unload_models()
    loaded = local.acquire_model(
        path,
        threads=threads,
        n_ctx=local.DEFAULT_CONTEXT,
        batch=local.batch_threads(options),
        reread=reread,
    )
    question = prompt_text(loaded.llm, PROMPT_TOKENS)
    loaded.lock.release()
    provider = local.Local()
    provider.reread = reread  # type: ignore[misc]
    reads, gens, prompt = [], [], 0

    async def one(text: str, tokens: int) -> tuple[float, float, int, int]:
        request = ChatRequest(
            messages=(ChatMessage.text("user", text),),
            model=str(path),
            temperature=0,
            options=options | {"max_tokens": tokens, "seed": 1},
        )
        start = time.perf_counter()
        first, count, used = 0.0, 0, 0
        async for event in provider.stream(request):
            if isinstance(event, TextDelta):
                count += 1
                if count == 1:
                    first = time.perf_counter()
            elif isinstance(event, Usage):
                used = event.input_tokens or 0
        end = time.perf_counter()
        return first - start, end - first, count, used

    for run in range(runs):
        model = next(iter(local._MODELS.values()))
        model.llm.reset()  # nothing kept from the last run: the prompt is read whole
        wait, _, _, prompt = asyncio.run(one(question + f" ({run})", 1))
        reads.append(prompt / wait)
        model.llm.reset()
        _, took, count, _ = asyncio.run(one("Write a long story about a dragon.", GENERATED))
        gens.append((count - 1) / took)
    return statistics.median(reads), statistics.median(gens), prompt


def llama_bench(binary: str, path: Path, threads: int, runs: int) -> tuple[float, float]:
    """(pp512 tokens/s, tg128 tokens/s) as llama.cpp's own llama-bench reports them."""
    sizes = ["-p", str(PROMPT_TOKENS), "-n", str(GENERATED), "-r", str(runs)]
    done = subprocess.run(
        [binary, "-m", str(path), "-t", str(threads), *sizes, "-o", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = json.loads(done.stdout)
    rate = {("pp" if row["n_prompt"] else "tg"): row["avg_ts"] for row in rows}
    return rate["pp"], rate["tg"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=local.default_threads())
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--llama-bench", help="the path of llama.cpp's llama-bench")
    parser.add_argument("-m", "--model", default=local.BUNDLED_NAME)
    args = parser.parse_args()
    path = local.Local().model_path(args.model)
    print(f"model {path.name}, {args.threads} thread(s), medians of {args.runs} runs")
    rows: list[tuple[str, float, float]] = []
    if args.llama_bench:
        measured = llama_bench(args.llama_bench, path, args.threads, args.runs)
        rows.append(("llama.cpp (llama-bench)", *measured))
    rows.append(("llama-cpp-python", *llama_cpp_python(path, args.threads, args.runs)))
    read, gen, prompt = chatcli_local(path, args.threads, args.runs)
    rows.append(("chatcli local", read, gen))
    _, alone, _ = chatcli_local(path, args.threads, args.runs, reread=False)
    rows.append(("chatcli local, reread off", math.nan, alone))
    print(f"{'':<26}{'prompt tok/s':>14}{'generation tok/s':>18}")
    for label, pp, tg in rows:
        print(f"{label:<26}{pp:>14.1f}{tg:>18.1f}")
    base = rows[-3]
    print(
        f"chatcli / llama-cpp-python: prompt {read / base[1]:.2f}, generation {gen / base[2]:.2f}"
        f" (reread off: {alone / base[2]:.2f}; chatcli's prompt: {prompt} tokens through the"
        " chat template)"
    )


if __name__ == "__main__":
    main()
