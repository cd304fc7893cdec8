"""Shell completion: the checked-in scripts match the CLI, and they complete live names.

Run this file directly (``python tests/test_completions.py``) to regenerate ``completions/``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Isolated, run
from tests.servers import AppServer, FakeOpenAI

ROOT = Path(__file__).resolve().parent.parent
CHATCLI = Path(sys.executable).with_name("chatcli")
SCRIPTS = {"bash": "chatcli.bash", "zsh": "_chatcli", "fish": "chatcli.fish"}


def source(shell: str) -> str:
    env = {**os.environ, "_CHATCLI_COMPLETE": f"source_{shell}"}
    result = subprocess.run([str(CHATCLI)], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_checked_in_scripts_are_current() -> None:
    for shell, name in SCRIPTS.items():
        current = (ROOT / "completions" / name).read_text()
        assert current == source(shell), f"completions/{name} is stale: run {__file__}"


def bash_complete(line: str, env: dict[str, str]) -> list[str]:
    """Complete ``line`` in a real bash with the checked-in script, as Tab would."""
    words = line.split(" ")
    script = (
        f"source {ROOT / 'completions' / 'chatcli.bash'}\n"
        f"COMP_WORDS=({' '.join(repr(w) for w in words)})\n"
        f"COMP_CWORD={len(words) - 1}\n"
        "_chatcli_completion chatcli\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    path_env = {**env, "PATH": f"{CHATCLI.parent}{os.pathsep}{env.get('PATH', '')}"}
    result = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", script],
        capture_output=True, text=True, env=path_env, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completes_commands_options_and_live_names(isolated: Isolated) -> None:
    env = isolated.env
    assert bash_complete("chatcli se", env) == ["serve", "sessions"]
    assert bash_complete("chatcli ses", env) == ["sessions"]
    assert "--no-stream" in bash_complete("chatcli ask --no", env)
    assert bash_complete("chatcli ask -p ol", env) == ["ollama"]
    assert bash_complete("chatcli ask -p chatgptt -m gpt-4o", env) == ["gpt-4o", "gpt-4o-mini"]
    isolated.write_config('[providers.mybox]\ntype = "openai"\nbase_url = "http://box/v1"\n')
    assert bash_complete("chatcli ask -p my", env) == ["mybox"]
    # Session names come from the database of this installation.
    fake = FakeOpenAI()
    server = AppServer(fake.app())
    server.start()
    try:
        base = f"{server.url}/v1"
        assert run(["ask", "-p", "ollama", "-m", "m", "--base-url", base, "-S", "rust-notes", "hi"],
                   isolated).returncode == 0  # fmt: skip
    finally:
        server.stop()
    assert bash_complete("chatcli sessions show ru", env) == ["rust-notes"]
    assert bash_complete("chatcli ask -S rust", env) == ["rust-notes"]


def test_zsh_and_fish_protocols_answer_too(isolated: Isolated) -> None:
    zsh = subprocess.run(
        [str(CHATCLI)], capture_output=True, text=True, timeout=60,
        env={**isolated.env, "_CHATCLI_COMPLETE": "complete_zsh",
             "_TYPER_COMPLETE_ARGS": "chatcli ask -p gpt"},
    )  # fmt: skip
    assert '"gptalk"' in zsh.stdout
    fish = subprocess.run(
        [str(CHATCLI)], capture_output=True, text=True, timeout=60,
        env={**isolated.env, "_CHATCLI_COMPLETE": "complete_fish",
             "_TYPER_COMPLETE_FISH_ACTION": "get-args", "_TYPER_COMPLETE_ARGS": "chatcli re"},
    )  # fmt: skip
    assert fish.stdout.split()[0] == "repl"


def test_completion_loads_nothing_heavy(isolated: Isolated) -> None:
    env = {
        **isolated.env,
        "_CHATCLI_COMPLETE": "complete_bash",
        "COMP_WORDS": "chatcli ask -p ol",
        "COMP_CWORD": "3",
        "PYTHONPROFILEIMPORTTIME": "1",
    }
    result = subprocess.run([str(CHATCLI)], capture_output=True, text=True, env=env, timeout=60)
    assert result.stdout.split() == ["ollama"]
    loaded = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if "|" in line}
    for heavy in ("aiohttp", "prompt_toolkit", "rich.markdown", "pydantic"):
        assert heavy not in loaded, heavy


if __name__ == "__main__":
    for shell, name in SCRIPTS.items():
        (ROOT / "completions" / name).write_text(source(shell))
    print("completions/ regenerated")
