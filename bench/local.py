"""The offline model: load time, time to first token and tokens per second.

    python bench/local.py [--runs 3] [--threads N] [-m MODEL]

Needs the ``local`` extra. Loads the model the way ``chatcli -p local`` does (the same
threads default), asks one fixed question (:data:`QUESTION`) with chatcli's own sampling
settings (``local.DEFAULT_SAMPLING``, repeat penalty included) but greedy (temperature 0, so
every run generates the same tokens), for up to 128 tokens, and reports medians over the runs:
load time, time to the first token, and the generation speed, in tokens per second from the
first token to the last (the question's own reading is in the time to the first token). Then
the wall time of a whole ``chatcli ask`` command beside ``python -c pass``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import byte_compile, time_command

from chatcli.errors import EXIT_CUT
from chatcli.providers import local

QUESTION = [{"role": "user", "content": "Explain in a short paragraph why the sky is blue."}]
TOKENS = 128
#: What chatcli would ask for, but greedy: the same answer, so the same work, in every run.
SAMPLING = {**local.DEFAULT_SAMPLING, "temperature": 0, "max_tokens": TOKENS}


def one_run(path: Path, threads: int) -> tuple[float, float, float, int]:
    """(load s, first token s, tokens/s after the first, tokens) for a fresh model."""
    local.unload_models()
    start = time.perf_counter()
    model = local.acquire_model(path, threads=threads, n_ctx=local.DEFAULT_CONTEXT)
    model.lock.release()
    llm = model.llm
    loaded = time.perf_counter()
    first = None
    tokens = 0
    for chunk in llm.create_chat_completion(messages=QUESTION, stream=True, **SAMPLING):
        if chunk["choices"][0]["delta"].get("content"):  # a piece per token, in English
            tokens += 1
            if first is None:
                first = time.perf_counter()
    end = time.perf_counter()
    assert first is not None, "the model said nothing"
    rate = (tokens - 1) / (end - first) if tokens > 1 else 0.0
    return loaded - start, first - loaded, rate, tokens


def time_ask(argv: list[str], runs: int, env: dict[str, str]) -> list[float]:
    """:func:`common.time_command` for ``chatcli ask``, whose answer cut at ``-o max_tokens``
    exits with :data:`EXIT_CUT` (what these commands ask for), not 0."""
    times = []
    for run in range(runs + 1):  # the first is a warm-up (page cache)
        start = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, env=env)
        if done.returncode not in (0, EXIT_CUT):
            raise SystemExit(f"{argv[:3]} failed ({done.returncode}): {done.stderr.decode()}")
        if run:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=local.default_threads())
    parser.add_argument("-m", "--model", default=local.BUNDLED_NAME)
    args = parser.parse_args()
    byte_compile()
    path = local.Local().model_path(args.model)
    print(f"model {path.name}, {args.threads} thread(s), {os.cpu_count()} CPU(s)")
    runs = [one_run(path, args.threads) for _ in range(args.runs)]
    load, first, rate = (statistics.median(r[i] for r in runs) for i in range(3))
    tokens = statistics.median(r[3] for r in runs)
    print(f"load {load * 1e3:.0f} ms   first token {first * 1e3:.0f} ms   {rate:.0f} tokens/s")
    print(
        f"(medians of {args.runs} runs; {tokens:.0f} tokens generated of {TOKENS} at most; "
        f"tokens/s from the first token to the last; rates: "
        f"{', '.join(f'{r[2]:.0f}' for r in runs)})"
    )

    chatcli = str(Path(sys.executable).with_name("chatcli"))
    with tempfile.TemporaryDirectory() as home:
        env = dict(os.environ, CHATCLI_HOME=home)
        ask = [chatcli, "ask", "--no-save", "-p", "local", "-m", args.model, "-o", "max_tokens"]
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "chatcli ask (1 token)": [*ask, "1", "hi"],
            f"chatcli ask (up to {TOKENS} tokens)": [
                *ask,
                str(TOKENS),
                "--temperature",
                "0",
                QUESTION[0]["content"],
            ],
        }
        for label, argv in commands.items():
            timer = time_ask if argv[0] == chatcli else time_command
            median = statistics.median(timer(argv, args.runs, env))
            print(f"{label:<31} {median * 1e3:>6.0f} ms")


if __name__ == "__main__":
    main()
