"""What ``chatcli serve`` adds per streamed token: a client reading an upstream directly,
beside the same client reading it through ``chatcli serve``.

    python bench/serve.py [--tokens 20000] [--runs 5]

A local fake OpenAI-compatible upstream (in this process) streams N small chunks in the
shape OpenAI sends them (id, object, created, model, choices). Two clients each read the
whole answer, once straight from the upstream ("direct") and once through a ``chatcli serve``
process in front of it ("served"):

* sdk:    the official ``openai`` package, streaming (what editors and scripts use)
* floor:  a minimal aiohttp reader that only parses the deltas (the least any client does)

The CPU time (user + system) of the client process comes from the kernel (``wait4``); the
server's is read from ``/proc`` before and after each served run, so its start-up is not
counted. Printed per token, in microseconds, with the ratio the target is about:
(client served + server) / client direct. The upstream's own CPU is in neither.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import byte_compile
from stream import FLOOR, Server, make_chunks

CHATCLI = str(Path(sys.executable).with_name("chatcli"))

SDK = r"""
import sys
import openai

client = openai.OpenAI(base_url=sys.argv[1], api_key="bench", max_retries=0)
stream = client.chat.completions.create(
    model=sys.argv[2], messages=[{"role": "user", "content": "go"}], stream=True
)
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        sys.stdout.write(chunk.choices[0].delta.content)
sys.stdout.flush()
"""


class OpenAIShaped(Server):
    """The stream's events as OpenAI writes them, not only their ``choices``."""

    def set_chunks(self, chunks: list[str]) -> None:
        head = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1}
        head["model"] = "m"
        parts = []
        for chunk in chunks:
            choice = {"index": 0, "delta": {"content": chunk}, "logprobs": None}
            choice["finish_reason"] = None
            parts.append(f"data: {json.dumps({**head, 'choices': [choice]})}\n\n")
        done = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
        parts.append(f"data: {json.dumps({**head, 'choices': [done]})}\n\ndata: [DONE]\n\n")
        self.events = "".join(parts).encode()


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a running process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def client_cpu(argv: list[str], env: dict[str, str]) -> tuple[float, int]:
    """(CPU seconds, output bytes) of one client run."""
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.PIPE, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            assert process.stderr is not None
            raise SystemExit(f"{argv[:3]} failed: {process.stderr.read().decode()[-2000:]}")
        return usage.ru_utime + usage.ru_stime, out.tell()


def start_server(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    process = subprocess.Popen(
        [CHATCLI, "serve", "--port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert process.stderr is not None
    line = process.stderr.readline().decode()
    found = re.search(r"serving on http://[^:]+:(\d+)/", line)
    if found is None:
        raise SystemExit(f"chatcli serve did not start: {line}")
    # Its log (a line a request) must not fill the pipe: drop it as it comes.
    import threading

    threading.Thread(target=lambda: [None for _ in process.stderr], daemon=True).start()  # type: ignore[union-attr]
    return process, int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    byte_compile()

    upstream = OpenAIShaped()
    upstream.start()
    upstream.set_chunks(make_chunks(args.tokens))
    direct = f"http://127.0.0.1:{upstream.port}/v1"
    home = tempfile.mkdtemp(prefix="chatcli-bench-")
    Path(home, "config").mkdir()
    Path(home, "config", "config.toml").write_text(
        f'provider = "vllm"\nretries = 0\n[providers.vllm]\nbase_url = "{direct}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(CHATCLI_HOME=home)
    server, port = start_server(env)
    served = f"http://127.0.0.1:{port}/v1"
    clients = {
        "sdk": lambda url, model: [sys.executable, "-c", SDK, url, model],
        "floor": lambda url, model: [sys.executable, "-c", FLOOR, f"{url}/chat/completions"],
    }
    try:
        results: dict[str, dict[str, list[float]]] = {
            name: {"direct": [], "served": [], "server": []} for name in clients
        }
        sizes: dict[tuple[str, str], int] = {}
        for argv in clients.values():  # warm-up: page cache, the server's first imports
            client_cpu(argv(direct, "m"), env)
            client_cpu(argv(served, "vllm/m"), env)
        for _ in range(args.runs):  # interleaved: a busy moment falls on all alike
            for name, argv in clients.items():
                cpu, sizes[name, "direct"] = client_cpu(argv(direct, "m"), env)
                results[name]["direct"].append(cpu)
                before = process_cpu(server.pid)
                cpu, sizes[name, "served"] = client_cpu(argv(served, "vllm/m"), env)
                time.sleep(0.05)  # the server's last log line
                results[name]["served"].append(cpu)
                results[name]["server"].append(process_cpu(server.pid) - before)
    finally:
        server.terminate()
        server.wait(20)
    per_token = 1e6 / args.tokens
    print(f"{args.tokens} tokens, median of {args.runs} runs; CPU µs per token")
    print(f"{'client':<7} {'direct':>8} {'served':>8} {'server':>8} {'ratio':>7}")
    for name in clients:
        direct_cpu = statistics.median(results[name]["direct"])
        served_cpu = statistics.median(results[name]["served"])
        server_cpu = statistics.median(results[name]["server"])
        ratio = (served_cpu + server_cpu) / direct_cpu
        print(
            f"{name:<7} {direct_cpu * per_token:>8.1f} {served_cpu * per_token:>8.1f} "
            f"{server_cpu * per_token:>8.1f} {ratio:>6.2f}x"
        )
        if sizes[name, "direct"] != sizes[name, "served"]:
            print(f"  ({name}: the served answer differs in size from the direct one!)")
    print("ratio = (client served + server) / client direct")


if __name__ == "__main__":
    main()
