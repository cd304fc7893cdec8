"""Start-up time of chatcli's cheap commands beside a bare Python start.

    python bench/startup.py [-n RUNS]

Runs each command RUNS times (after one warm-up) and prints the median and minimum wall time.
Only the standard library is used; run it inside the environment where chatcli is installed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from common import byte_compile, time_command

CHATCLI = str(Path(sys.executable).with_name("chatcli"))

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "chatcli --version": [CHATCLI, "--version"],
    "chatcli --help": [CHATCLI, "--help"],
    "chatcli paths": [CHATCLI, "paths"],
    "completion (Tab)": [CHATCLI],  # with the variables of COMPLETION below
}

#: What bash sets when Tab is pressed after ``chatcli ask -p ol``.
COMPLETION = {"_CHATCLI_COMPLETE": "complete_bash", "COMP_WORDS": "chatcli ask -p ol",
              "COMP_CWORD": "3"}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=20)
    args = parser.parse_args()
    byte_compile()
    with tempfile.TemporaryDirectory() as home:
        env = dict(os.environ, CHATCLI_HOME=home)
        base = None
        print(f"{'command':<20} {'median':>9} {'min':>9} {'vs python':>10}")
        for label, argv in COMMANDS.items():
            extra = COMPLETION if label.startswith("completion") else {}
            times = time_command(argv, args.runs, {**env, **extra})
            median = statistics.median(times)
            base = base or median
            row = f"{median * 1e3:>7.0f}ms {min(times) * 1e3:>7.0f}ms {median / base:>9.1f}x"
            print(f"{label:<20} {row}")


if __name__ == "__main__":
    main()
