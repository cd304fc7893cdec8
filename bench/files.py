"""What `ask -f DIR` costs on a large tree: listing and reading 10,000 small files.

    python bench/files.py [--files 10000]

Builds a tree in a temporary directory (100 folders of 100 files, a .gitignore that leaves a
tenth out), then times `chatcli.files.gather` on it as a git work tree and as a plain folder:
wall time and this process's CPU (git's own CPU is counted apart, from its child times).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chatcli.files import gather


def build(root: Path, count: int) -> None:
    per = 100
    for folder in range(count // per):
        d = root / f"pkg{folder:03d}"
        d.mkdir(parents=True)
        for i in range(per):
            suffix = ".log" if i % 10 == 0 else ".py"
            (d / f"m{i:03d}{suffix}").write_text(f"# module {folder}.{i}\nvalue = {i}\n")
    (root / ".gitignore").write_text("*.log\n")


def measure(root: Path, env: dict[str, str]) -> tuple[float, float, float, int, int]:
    before = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    gathered = gather([str(root)], env=env, max_total=1 << 40)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    done = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    child = (done.ru_utime - children.ru_utime) + (done.ru_stime - children.ru_stime)
    return wall, cpu, child, len(gathered.items), len(gathered.skipped)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp) / "tree"
        build(root, args.files)
        plain = measure(root, {"PATH": ""})  # no git found: a plain walk, no ignores
        subprocess.run(["git", "init", "-q", str(root)], check=True)
        in_git = measure(root, dict(os.environ))
    print(f"{args.files:,} files (100 folders; a tenth ignored in the git work tree)")
    print("how       wall s  cpu s  git cpu s  items  skipped")
    for name, (wall, cpu, child, items, skipped) in (("plain", plain), ("git", in_git)):
        print(f"{name:<8} {wall:7.2f} {cpu:6.2f} {child:10.2f} {items:6,} {skipped:8,}")


if __name__ == "__main__":
    main()
