"""Shared fixtures: isolated directories, the fake service, and running the real ``chatcli``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import AppServer, FakeOpenAI

CHATCLI = Path(sys.executable).with_name("chatcli")

#: Variables that would let the real environment leak into a test run.
_SCRUBBED = (
    "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy",
    "all_proxy", "no_proxy", "OPENAI_API_KEY", "OPENAI_BASE_URL", "CHATCLI_PROVIDER",
    "CHATCLI_MODEL", "CHATCLI_DEBUG", "CHATCLI_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME",
    "XDG_CACHE_HOME", "XDG_STATE_HOME", "NO_COLOR", "COLUMNS", "LINES",
)  # fmt: skip


@dataclass
class Isolated:
    """A temporary CHATCLI_HOME and HOME, and the environment that points at them."""

    root: Path
    home: Path
    chatcli_home: Path
    env: dict[str, str]

    def write_config(self, text: str) -> Path:
        path = self.chatcli_home / "config" / "config.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Isolated:
    home = tmp_path / "home"
    chatcli_home = tmp_path / "chatcli-home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    env.update(HOME=str(home), CHATCLI_HOME=str(chatcli_home), PYTHONUNBUFFERED="1")
    # In-process tests see the same isolation.
    for key in _SCRUBBED:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("CHATCLI_HOME", str(chatcli_home))
    return Isolated(tmp_path, home, chatcli_home, env)


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    service = FakeOpenAI()
    server = AppServer(service.app())
    server.start()
    service.base_url = f"{server.url}/v1"
    try:
        yield service
    finally:
        server.stop()
    assert not service.violations, f"the fake saw malformed requests: {service.violations}"


def run(
    args: list[str],
    isolated: Isolated,
    *,
    input: str | bytes | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 30,
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``chatcli`` binary; stdin is ``input`` (or empty, never a terminal)."""
    assert CHATCLI.exists(), f"chatcli is not installed next to {sys.executable}"
    full_env = dict(isolated.env)
    full_env.update(env or {})
    data = input.encode() if isinstance(input, str) else input
    result = subprocess.run(
        [str(CHATCLI), *args],
        input=data if data is not None else b"",
        capture_output=True,
        env=full_env,
        timeout=timeout,
        cwd=isolated.root,
    )
    return subprocess.CompletedProcess(
        result.args,
        result.returncode,
        result.stdout.decode("utf-8", errors="replace"),
        result.stderr.decode("utf-8", errors="replace"),
    )


def assert_one_line_error(stderr: str, *fragments: str) -> str:
    """stderr is one ``chatcli: ...`` line (no traceback) holding each fragment; returns it."""
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {stderr!r}"
    assert lines[0].startswith("chatcli: ") and "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]
