"""Streaming cost: chatcli --raw and --markdown beside a minimal reader, at two answer sizes.

    python bench/stream.py [--sizes 4000 20000] [--runs 3]

A local fake OpenAI-compatible server streams N small chunks of realistic Markdown (headings,
paragraphs, lists, code blocks, tables). Each command reads the whole stream into a pipe:

* floor:      a minimal aiohttp reader that only prints the deltas (the least any client does)
* raw:        chatcli ask --raw
* markdown:   chatcli ask --markdown (Rich rendering, block by block)

For each, the median CPU time (user + system) of the process and its peak memory are printed,
with the ratios the targets are about: raw / floor, markdown / floor, and markdown's growth
from the smallest to the largest size (linear growth is about the size ratio, 5x).
Only the standard library and the project's own dependencies are used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from aiohttp import web
from common import byte_compile

CHATCLI = str(Path(sys.executable).with_name("chatcli"))

SECTION = """## Section {n}

This paragraph explains step {n} with **bold words**, `inline code` and a [link](https://example.com/{n}).
It goes on for a second sentence so that it wraps across the terminal width like real answers do.

- first point about {n}
- second point, a little longer than the first one
- third point

```python
def step_{n}(values):
    total = 0
    for value in values:
        total += value * {n}
    return total
```

| name | value | note |
|------|-------|------|
| alpha | {n} | first |
| beta | {n}{n} | second |

"""

FLOOR = r"""
import asyncio, json, sys
import aiohttp

async def main(url):
    async with aiohttp.ClientSession() as session:
        body = {"model": "m", "messages": [{"role": "user", "content": "go"}], "stream": True}
        async with session.post(url, json=body) as response:
            buffer = b""
            async for chunk in response.content.iter_any():
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.startswith(b"data: ") and line != b"data: [DONE]":
                        delta = json.loads(line[6:])["choices"][0]["delta"].get("content")
                        if delta:
                            sys.stdout.write(delta)
    sys.stdout.flush()

asyncio.run(main(sys.argv[1]))
"""


def make_chunks(count: int) -> list[str]:
    """``count`` small pieces (about 5 characters, like tokens) of a realistic answer."""
    text = ""
    n = 0
    while len(text) < count * 5:
        n += 1
        text += SECTION.format(n=n)
    size = len(text) // count
    chunks = [text[i * size : (i + 1) * size] for i in range(count - 1)]
    chunks.append(text[(count - 1) * size :])
    return chunks


class Server:
    """Streams the current chunks as SSE, as fast as the reader takes them."""

    def __init__(self) -> None:
        self.events: bytes = b""
        self.loop = asyncio.new_event_loop()
        self.port = 0

    def set_chunks(self, chunks: list[str]) -> None:
        parts = []
        for chunk in chunks:
            choice = {"index": 0, "delta": {"content": chunk}, "finish_reason": None}
            payload = {"choices": [choice]}
            parts.append(f"data: {json.dumps(payload)}\n\n")
        done = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        parts.append(f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n")
        self.events = "".join(parts).encode()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        view = memoryview(self.events)
        # Small writes, one SSE event or so at a time, as a real server flushes tokens.
        for start in range(0, len(view), 512):
            await response.write(bytes(view[start : start + 512]))
        await response.write_eof()
        return response

    def start(self) -> None:
        async def boot() -> None:
            app = web.Application()
            app.router.add_post("/v1/chat/completions", self.handle)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(boot(), self.loop).result(10)


def measure(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(cpu seconds, peak MiB, output bytes) of one run, from the kernel's accounting."""
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.PIPE, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{argv[:3]} failed: {process.stderr.read().decode()}")  # type: ignore[union-attr]
        size = out.tell()
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4000, 20000])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    byte_compile()

    server = Server()
    server.start()
    url = f"http://127.0.0.1:{server.port}/v1"
    home = tempfile.mkdtemp(prefix="chatcli-bench-")
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_PROXY", "_proxy"))}
    env.update(CHATCLI_HOME=home, COLUMNS="100")
    ask = [CHATCLI, "ask", "--no-save", "-p", "vllm", "-m", "m", "--base-url", url]
    commands = {
        "floor": [sys.executable, "-c", FLOOR, f"{url}/chat/completions"],
        "raw": [*ask, "--raw", "go"],
        "markdown": [*ask, "--markdown", "go"],
    }
    results: dict[tuple[str, int], tuple[float, float]] = {}
    print(f"{'size':>6} {'command':<9} {'cpu s':>7} {'peak MiB':>9} {'output':>9}")
    for size in args.sizes:
        server.set_chunks(make_chunks(size))
        for argv in commands.values():
            measure(argv, env)  # warm-up (page cache)
        # Interleaved, so that a busy moment on the machine falls on all three alike.
        rounds = [
            {name: measure(argv, env) for name, argv in commands.items()} for _ in range(args.runs)
        ]
        for name in commands:
            runs = [round_[name] for round_ in rounds]
            cpu = statistics.median(r[0] for r in runs)
            peak = max(r[1] for r in runs)
            results[name, size] = (cpu, peak)
            print(f"{size:>6} {name:<9} {cpu:>7.3f} {peak:>9.1f} {runs[0][2]:>9}")
    small, large = min(args.sizes), max(args.sizes)
    print()
    for size in args.sizes:
        floor = results["floor", size][0]
        raw = results["raw", size][0] / floor
        markdown = results["markdown", size][0] / floor
        print(f"N={size}: raw/floor {raw:.2f}x   markdown/floor {markdown:.2f}x")
    growth = results["markdown", large][0] / results["markdown", small][0]
    print(f"markdown cpu at N={large} / N={small}: {growth:.2f}x (size ratio {large / small:.0f}x)")


if __name__ == "__main__":
    main()
