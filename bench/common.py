"""What the benchmarks share."""

from __future__ import annotations

import compileall
import subprocess
import time
from pathlib import Path


def byte_compile() -> None:
    """Compile chatcli's modules once, as pip does when it installs a package.

    From a checkout (an editable install), or with PYTHONDONTWRITEBYTECODE set, Python would
    otherwise compile every module from source on each run: about 50 ms of CPU that a user's
    installation never spends, and that would blur every comparison.
    """
    import chatcli

    compileall.compile_dir(Path(chatcli.__file__).parent, quiet=1)


def time_command(argv: list[str], runs: int, env: dict[str, str]) -> list[float]:
    """Wall times of ``runs`` runs of ``argv``, after one warm-up run (page cache)."""
    subprocess.run(argv, capture_output=True, env=env, check=True)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, capture_output=True, env=env, check=True)
        times.append(time.perf_counter() - start)
    return times
