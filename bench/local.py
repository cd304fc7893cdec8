"""The offline model: load time, time to first token and tokens per second.

    python bench/local.py [--runs 3] [--threads N] [-m MODEL]

Needs the ``local`` extra. Loads the model the way ``chatcli -p local`` does (the same
threads default), asks one fixed question at temperature 0 for up to 128 tokens, and reports
medians: load time, time to the first token, tokens per second after it, and the wall time of
a whole ``chatcli ask`` command beside ``python -c pass``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import byte_compile, time_command

from chatcli.providers import local

QUESTION = [{"role": "user", "content": "Explain in a short paragraph why the sky is blue."}]


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
    for chunk in llm.create_chat_completion(
        messages=QUESTION, stream=True, temperature=0, max_tokens=128
    ):
        if chunk["choices"][0]["delta"].get("content"):
            tokens += 1
            if first is None:
                first = time.perf_counter()
    end = time.perf_counter()
    assert first is not None, "the model said nothing"
    rate = (tokens - 1) / (end - first) if tokens > 1 else 0.0
    return loaded - start, first - loaded, rate, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=local.default_threads())
    parser.add_argument("-m", "--model", default=local.BUNDLED_NAME)
    args = parser.parse_args()
    byte_compile()
    path = local.Local.model_path(args.model)
    print(f"model {path.name}, {args.threads} thread(s), {os.cpu_count()} CPU(s)")
    runs = [one_run(path, args.threads) for _ in range(args.runs)]
    load, first, rate = (statistics.median(r[i] for r in runs) for i in range(3))
    print(f"load {load * 1e3:.0f} ms   first token {first * 1e3:.0f} ms   {rate:.0f} tokens/s")

    chatcli = str(Path(sys.executable).with_name("chatcli"))
    with tempfile.TemporaryDirectory() as home:
        env = dict(os.environ, CHATCLI_HOME=home)
        ask = [chatcli, "ask", "--no-save", "-p", "local", "-m", args.model, "-o", "max_tokens"]
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "chatcli ask (1 token)": [*ask, "1", "hi"],
            "chatcli ask (128 tokens)": [*ask, "128", "--temperature", "0", QUESTION[0]["content"]],
        }
        for label, argv in commands.items():
            median = statistics.median(time_command(argv, args.runs, env))
            print(f"{label:<26} {median * 1e3:>6.0f} ms")


if __name__ == "__main__":
    main()
