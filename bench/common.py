"""What the benchmarks share."""

from __future__ import annotations

import compileall
from pathlib import Path


def byte_compile() -> None:
    """Compile chatcli's modules once, as pip does when it installs a package.

    From a checkout (an editable install), or with PYTHONDONTWRITEBYTECODE set, Python would
    otherwise compile every module from source on each run: about 50 ms of CPU that a user's
    installation never spends, and that would blur every comparison.
    """
    import chatcli

    compileall.compile_dir(Path(chatcli.__file__).parent, quiet=1)
