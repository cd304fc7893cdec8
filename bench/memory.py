"""Peak memory of `chatcli ask` against a hostile server that sends far too much.

    python bench/memory.py [--size-mib 1024] [--forms gzip_bomb endless_line ...]

A local hostile server (tests/hostile.py) sends SIZE MiB (decompressed) in each form:

* gzip_bomb:     an SSE answer, then one line that never ends, gzip-compressed (tiny on the wire)
* endless_line:  an SSE answer, then one line that never ends
* huge_json:     a non-streamed JSON answer (`--no-stream`)
* huge_page:     the HTML page a web provider (chatgptt) reads its nonce from
* gzip_comments: an SSE answer, then gzip-compressed comment lines, which are read and dropped
                 (only the limit on a whole reply, counted after inflating, stops them)
* many_events:   valid SSE answer events and no end: the answer text itself, which chatcli
                 keeps, shows and saves

The last two are not in the default set (`--forms` names them).

Each form runs the installed `chatcli` binary once, as a subprocess; its peak resident memory
(ru_maxrss) comes from the kernel through os.wait4, the CPU time too. Only the standard library,
aiohttp and the test suite's hostile server are used.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.hostile

from common import byte_compile

from tests.hostile import Hostile, MiB

CHATCLI = str(Path(sys.executable).with_name("chatcli"))
FORMS = ("gzip_bomb", "endless_line", "huge_json", "huge_page")


def command(form: str, url: str) -> list[str]:
    if form == "huge_page":
        return [CHATCLI, "ask", "-p", "chatgptt", "--retries", "0", "--base-url", url, "go"]
    extra = ["--no-stream"] if form == "huge_json" else []
    return [CHATCLI, "ask", "-p", "ollama", "-m", "m", "--retries", "0", "--base-url",
            f"{url}/v1", *extra, "go"]  # fmt: skip


def measure(argv: list[str], env: dict[str, str]) -> tuple[int, float, float, float, int, str]:
    """(exit code, peak MiB, cpu s, wall s, stdout bytes, last stderr line) of one run."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        process = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        size = out.tell()
        err.seek(0)
        lines = err.read().decode(errors="replace").splitlines()
    cpu = usage.ru_utime + usage.ru_stime
    return process.returncode, usage.ru_maxrss / 1024, cpu, wall, size, lines[-1] if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--forms", nargs="+", default=list(FORMS))
    args = parser.parse_args()
    byte_compile()

    hostile = Hostile(size=args.size_mib * MiB)
    home = tempfile.mkdtemp(prefix="chatcli-bench-")
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(CHATCLI_HOME=home)
    print(f"each form sends {args.size_mib} MiB (decompressed)")
    print(f"{'form':<13} {'exit':>4} {'peak MiB':>9} {'cpu s':>6} {'wall s':>7} {'stdout':>7} "
          f"{'server sent':>12}  stderr")  # fmt: skip
    with hostile.serve() as server:
        for form in args.forms:
            hostile.mode = form
            code, peak, cpu, wall, size, line = measure(command(form, server.url), env)
            sent = f"{hostile.sent / MiB:.1f} MiB"
            print(f"{form:<13} {code:>4} {peak:>9.1f} {cpu:>6.2f} {wall:>7.2f} {size:>7} "
                  f"{sent:>12}  {line[:110]}")  # fmt: skip


if __name__ == "__main__":
    main()
