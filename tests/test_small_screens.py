"""Tables on an 80- or 120-column terminal: titles and URLs stay whole, long models shrink.

``chatcli sessions list`` and ``chatcli providers`` run in this process with a context whose
stdout is a terminal of the given width (``COLUMNS``), so they draw their tables as a person
would see them.
"""

from __future__ import annotations

import io
import json
import subprocess

import pytest

from chatcli.cli import main
from chatcli.config import Paths
from chatcli.context import AppContext
from chatcli.sessions_cli import short_model
from chatcli.store import Stores
from tests.conftest import Isolated, run

GGUF = "/home/u/models/Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf"
TITLE = "How do I write a Rust macro that counts its arguments?"


def terminal_run(
    args: list[str], isolated: Isolated, *, columns: int = 80, answer: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``chatcli args`` with stdout on a terminal ``columns`` wide; with ``answer``, stdin is a
    terminal too, on which that line is typed."""
    env = {**isolated.env, "COLUMNS": str(columns), "LINES": "50", "TERM": "xterm"}
    out, err = io.StringIO(), io.StringIO()  # not ttys themselves: Rich adds no styles
    ctx = AppContext(
        stdin=io.StringIO(answer or ""),
        stdout=out,
        stderr=err,
        stdin_isatty=answer is not None,
        stdout_isatty=True,
        stderr_isatty=False,
        env=env,
        paths=Paths.from_env(env),
    )
    code: int | str | None = 0
    try:
        main(args, ctx)
    except SystemExit as exc:
        code = exc.code
    returncode = code if isinstance(code, int) else (0 if code is None else 1)
    return subprocess.CompletedProcess(args, returncode, out.getvalue(), err.getvalue())


def add_session(isolated: Isolated, title: str, provider: str, model: str) -> str:
    store = Stores(isolated.chatcli_home / "data").sessions
    session = store.create()
    question = store.add_message(session.id, "user", title)
    store.add_message(
        session.id, "assistant", "Use a recursive macro.", provider=provider, model=model,
        reply_to=question,
    )  # fmt: skip
    return session.id


# -- sessions list --------------------------------------------------------------------------------


def test_a_long_model_path_leaves_the_title_whole_at_80_columns(isolated: Isolated) -> None:
    session_id = add_session(isolated, TITLE, "llamacpp", GGUF)
    result = terminal_run(["sessions", "list"], isolated, columns=80)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), result.stdout
    assert lines[0].split() == ["ID", "NAME", "/", "TITLE", "PROVIDER", "MODEL", "MSGS", "UPDATED"]
    # The title wraps in its column, every word of it there, in order.
    words = " ".join(line[14:34] for line in lines[1:]).split()
    assert " ".join(words) == TITLE, result.stdout
    first = lines[1].split()
    assert first[0] == session_id and "llamacpp" in first
    # The model: the file's name without .gguf, its middle given up to fit.
    model = next(cell for cell in first if "…" in cell)
    assert model.startswith("Meta-") and model.endswith("Q4_K_M") and len(model) <= 14
    assert "/home/u/models" not in result.stdout and ".gguf" not in result.stdout


def test_the_title_outlasts_the_other_columns_on_a_narrow_terminal(isolated: Isolated) -> None:
    add_session(isolated, TITLE, "llamacpp", GGUF)
    result = terminal_run(["sessions", "list"], isolated, columns=50)
    assert result.returncode == 0, result.stderr
    assert "NAME / TITLE" in result.stdout and "UPDATED" not in result.stdout
    assert all(word in result.stdout for word in TITLE.split())


def test_a_wide_terminal_and_a_pipe_show_more_of_the_model(isolated: Isolated) -> None:
    add_session(isolated, TITLE, "llamacpp", GGUF)
    wide = terminal_run(["sessions", "list"], isolated, columns=200)
    assert TITLE in wide.stdout and "Meta-Llama-3.1-…-Instruct-Q4_K_M" in wide.stdout
    piped = run(["sessions", "list"], isolated)  # for scripts: the model as stored
    assert piped.stdout.split("\t")[3] == GGUF


@pytest.mark.parametrize(
    ("model", "width", "shown"),
    [
        (GGUF, 40, "Meta-Llama-3.1-8B-Instruct-Q4_K_M"),
        (GGUF, 12, "Meta-…Q4_K_M"),
        ("C:\\models\\qwen2.5-7b-instruct-q4_k_m.gguf", 40, "qwen2.5-7b-instruct-q4_k_m"),
        ("models/phi-3-mini.GGUF", 40, "phi-3-mini"),
        ("~/llm/tiny.bin", 40, "tiny.bin"),
        ("meta-llama/Llama-3.3-70B-Instruct-Turbo", 40, "meta-llama/Llama-3.3-70B-Instruct-Turbo"),
        ("meta-llama/Llama-3.3-70B-Instruct-Turbo", 20, "meta-llam…ruct-Turbo"),
        ("gpt-4o-mini", 12, "gpt-4o-mini"),
    ],
)
def test_short_model(model: str, width: int, shown: str) -> None:
    assert short_model(model, width) == shown
    assert len(short_model(model, width)) <= max(width, len(shown))


# -- providers ------------------------------------------------------------------------------------


def table_rows(stdout: str) -> dict[str, str]:
    """Each provider's first line of the table, by name."""
    rows: dict[str, str] = {}
    for line in stdout.splitlines()[1:]:
        if line[:1].strip():
            rows[line.split()[0]] = line
    return rows


def test_providers_at_120_columns_keep_every_url_whole(isolated: Isolated) -> None:
    result = terminal_run(["providers"], isolated, columns=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(len(line) <= 120 for line in lines), result.stdout
    listed = json.loads(run(["providers", "--json"], isolated).stdout)
    rows = table_rows(result.stdout)
    for provider in listed:
        assert provider["url"] in rows[provider["name"]], (provider["url"], result.stdout)
    header = lines[0].split()
    assert "URL" in header and "GPT-3.5" not in header


def test_a_narrow_terminal_leaves_out_columns_not_url_characters(isolated: Isolated) -> None:
    long_url = "http://gpu-box.lab.example.internal:8000/v1"
    isolated.write_config(f'[providers.lab]\ntype = "openai"\nbase_url = "{long_url}"\n')
    result = terminal_run(["providers"], isolated, columns=80)
    assert result.returncode == 0, result.stderr
    assert all(len(line) <= 80 for line in result.stdout.splitlines()), result.stdout
    assert long_url in table_rows(result.stdout)["lab"]
    assert "HISTORY" not in result.stdout.splitlines()[0]
    said = " ".join(result.stdout.split())  # (the note wraps at the terminal's width)
    assert "(left out to fit: history" in said and "--json has them" in said


def test_the_offline_web_services_say_so(isolated: Isolated) -> None:
    result = terminal_run(["providers"], isolated, columns=120)
    rows = table_rows(result.stdout)
    for name in ("gptalk", "chatgptt", "opchatgpts", "fakegpt", "aichat"):
        assert rows[name].rstrip().endswith("site offline"), rows[name]
    assert rows["ollama"].rstrip().endswith("yes")
    assert "site offline: the service's own site is gone; kept for compatibility" in " ".join(
        result.stdout.split()
    )
    # --json keeps every field it had, and adds the fact.
    listed = {row["name"]: row for row in json.loads(run(["providers", "--json"], isolated).stdout)}
    assert listed["gptalk"]["site_offline"] is True and listed["gptalk"]["working"] is True
    assert listed["aichat"]["working"] is False and listed["aichat"]["site_offline"] is True
    assert listed["ollama"]["site_offline"] is False
    assert "supports_gpt_35_turbo" in listed["openai"]


def test_url_stays_whole_in_a_pipe_too(isolated: Isolated) -> None:
    table = run(["providers"], isolated).stdout
    assert "https://api.groq.com/openai/v1" in table and "site offline" in table
