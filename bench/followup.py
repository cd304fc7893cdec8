"""The offline model's follow-ups: the first token of ``ask -S`` on a long session, with the
state cache and without it, beside a fresh one-line question.

    python bench/followup.py [--runs 3] [--threads N] [--chars 11000]

Needs the ``local`` extra. In a temporary ``CHATCLI_HOME``, one ``chatcli ask -S bench -f
notes.md`` turn builds a session of about 3,000 tokens (the notes are this repository's own
documentation, cut to ``--chars`` characters), answered greedily (temperature 0) as the model
likes, as long as it likes. Then, each in a new process, as a user's shell runs them:

* a fresh one-line question (``--no-save``), the baseline;
* the follow-up question on that session, with the state the first turn left in the cache
  (each run starts from a copy of the same home, so each does the same work);
* the same follow-up with the cache off (``state_cache_mib = 0``), once: it reads the whole
  session again.

Each time is from starting the process to the first byte of the answer on stdout; the
figures are medians. The two follow-up answers (temperature 0) must be the same text.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import byte_compile

from chatcli.errors import EXIT_CUT
from chatcli.providers import local

ROOT = Path(__file__).resolve().parent.parent
FRESH_QUESTION = "What is a terminal? One sentence."
FOLLOW_UP = "Which of these notes are about timeouts?"


def notes(chars: int) -> str:
    """The repository's own documentation, cut to ``chars`` characters at a line's end."""
    text = "\n\n".join(
        path.read_text() for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    )
    return text[: text.rfind("\n", 0, chars)]


def first_byte(argv: list[str], env: dict[str, str]) -> tuple[float, str, str]:
    """(seconds to the first byte on stdout, the whole stdout, stderr) of one run."""
    with tempfile.TemporaryFile() as errors:  # a pipe could fill while stdout is awaited
        start = time.perf_counter()
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, env=env)
        assert process.stdout is not None
        head = os.read(process.stdout.fileno(), 1)
        took = time.perf_counter() - start
        rest, _ = process.communicate()
        errors.seek(0)
        err = errors.read().decode("utf-8", "replace")
    if process.returncode not in (0, EXIT_CUT) or not head:
        raise SystemExit(f"{argv[1:3]} failed ({process.returncode}): {err}")
    return took, (head + rest).decode(), err


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=local.default_threads())
    parser.add_argument("--chars", type=int, default=11000)
    args = parser.parse_args()
    byte_compile()
    chatcli = str(Path(sys.executable).with_name("chatcli"))
    common = ["-p", "local", "--temperature", "0", "-o", "seed", "1"]
    if args.threads != local.default_threads():  # else chatcli's own choice (local.py)
        common += ["-o", "threads", str(args.threads)]

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        template = root / "template"
        (root / "notes.md").write_text(notes(args.chars))
        env = dict(os.environ, CHATCLI_HOME=str(template))
        ask = [chatcli, "ask", *common]
        built, answer, err = first_byte(
            [*ask, "-v", "-S", "bench", "-f", str(root / "notes.md"), "Summarise these notes."],
            env,
        )
        prompt = next(line for line in err.splitlines() if " tokens in, " in line)
        print(f"model {local.BUNDLED_NAME}, {args.threads} thread(s), {os.cpu_count()} CPU(s)",
              flush=True)  # fmt: skip
        print(f"session built: {prompt.split(': ', 1)[-1]}")
        print(f"  its first answer: {len(answer)} characters, first token after {built:.1f} s")
        for line in err.splitlines():
            if "read again as they came" in line or "tokens cached" in line:
                print(f"  {line.split('local: ')[-1]}")

        fresh = [
            first_byte([*ask, "--no-save", FRESH_QUESTION], env)[0] for _ in range(args.runs + 1)
        ][1:]  # the first run warms the page cache

        cached: list[float] = []
        answers: set[str] = set()
        for run in range(args.runs):
            home = root / f"run{run}"
            shutil.copytree(template, home, symlinks=True)
            took, text, _ = first_byte(
                [*ask, "-S", "bench", FOLLOW_UP], dict(env, CHATCLI_HOME=str(home))
            )
            cached.append(took)
            answers.add(text)

        home = root / "explained"  # once more, untimed, with -v: what was reused
        shutil.copytree(template, home, symlinks=True)
        _, _, err = first_byte(
            [*ask, "-v", "-S", "bench", FOLLOW_UP], dict(env, CHATCLI_HOME=str(home))
        )
        reuse = [line for line in err.splitlines() if "prompt tokens reused" in line]
        print(f"  the follow-up: {reuse[0].split('local: ')[-1] if reuse else 'nothing reused'}")

        home = root / "plain"
        shutil.copytree(template, home, symlinks=True)
        shutil.rmtree(home / "cache", ignore_errors=True)
        (home / "config").mkdir(mode=0o700, exist_ok=True)
        (home / "config" / "config.toml").write_text("[providers.local]\nstate_cache_mib = 0\n")
        (home / "config" / "config.toml").chmod(0o600)
        plain, plain_text, _ = first_byte(
            [*ask, "-S", "bench", FOLLOW_UP], dict(env, CHATCLI_HOME=str(home))
        )

    base, follow = statistics.median(fresh), statistics.median(cached)
    print("time to the first token, from starting the process (medians):")
    print(f"  fresh one-line question           {base:6.2f} s")
    print(f"  follow-up, with the state cache   {follow:6.2f} s   ({follow / base:.1f}x fresh)")
    print(f"  follow-up, cache off (one run)    {plain:6.2f} s   ({plain / base:.1f}x fresh)")
    same = answers == {plain_text}
    print(f"follow-up answers identical with and without the cache: {'yes' if same else 'NO'}")
    print(f"(runs: fresh {', '.join(f'{t:.2f}' for t in fresh)}; "
          f"cached {', '.join(f'{t:.2f}' for t in cached)})")  # fmt: skip
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
