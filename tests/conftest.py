"""Shared fixtures: isolated directories, the fake service, and running ``chatcli``: in this
process through an injected context (:func:`run`), or as the real binary (:func:`run_binary`)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from tests.servers import AppServer, FakeOpenAI

CHATCLI = Path(sys.executable).with_name("chatcli")

#: Variables that would let the real environment leak into a test run.
_SCRUBBED = (
    "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy",
    "all_proxy", "no_proxy", "OPENAI_API_KEY", "OPENAI_BASE_URL", "CHATCLI_PROVIDER",
    "CHATCLI_MODEL", "CHATCLI_DEBUG", "CHATCLI_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME",
    "XDG_CACHE_HOME", "XDG_STATE_HOME", "NO_COLOR", "COLUMNS", "LINES", "ANTHROPIC_API_KEY",
    "ANTHROPIC_BASE_URL", "GEMINI_API_KEY", "XAI_API_KEY",
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


@pytest.fixture(autouse=True, scope="session")
def never_the_real_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A safety net under every test: chatcli's files go to a temporary folder, never the
    user's, even in a test that forgets :func:`isolated` (which gives each test its own)."""
    saved = os.environ.get("CHATCLI_HOME")
    os.environ["CHATCLI_HOME"] = str(tmp_path_factory.mktemp("session-chatcli-home"))
    yield
    if saved is None:
        os.environ.pop("CHATCLI_HOME", None)
    else:
        os.environ["CHATCLI_HOME"] = saved


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
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retry delays of milliseconds, for in-process tests that count retries, not seconds."""
    monkeypatch.setattr("chatcli.turn.BACKOFF_BASE", 0.01)


F = TypeVar("F", bound=FakeOpenAI)


def serve(service: F) -> Iterator[F]:
    """``service`` on localhost for one test (its ``base_url`` set), and afterwards the check
    that it saw no malformed request. For fixtures: ``yield from serve(...)``."""
    server = AppServer(service.app())
    server.start()
    service.base_url = f"{server.url}/v1"
    try:
        yield service
    finally:
        server.stop()
    assert not service.violations, f"the fake saw malformed requests: {service.violations}"


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    yield from serve(FakeOpenAI())


class _GuardedEnviron(MutableMapping[str, str]):
    """``os.environ`` that notes every access made from chatcli's own code.

    In-process commands get their environment from the context; a read of the process's own
    would make a test pass for the wrong reason (and break the one-frozen-settings promise).
    """

    _PASS_THROUGH = (os.__file__, contextlib.__file__, __file__, MutableMapping.__module__)

    def __init__(self, real: MutableMapping[str, str]) -> None:
        self.real = real
        self.reads: list[str] = []

    #: What the process itself is asked, rightly: the shell's completion request and the
    #: terminal's size for --help (click, in main), the interpreter's own switches (asyncio's
    #: debug mode), the terminal's Unicode version (Rich, once, as it loads its width table
    #: for the first wide or escaped character), and the settings native libraries read as
    #: they load (llama.cpp, numpy).
    _PROCESS_LEVEL = (
        "_CHATCLI_COMPLETE", "COLUMNS", "LINES", "PYTHONASYNCIODEBUG", "UNICODE_VERSION"
    )  # fmt: skip
    _NATIVE = ("LLAMA_", "GGML_", "OPENBLAS_", "NUMPY_", "NPY_", "OMP_", "PILLOW_")

    def _note(self, what: str) -> None:
        # chatcli's own read, or one a library makes for it (Path.home, expanduser, tempfile,
        # shutil.which...): any chatcli frame on the stack counts.
        if what in self._PROCESS_LEVEL or what.startswith(self._NATIVE):
            return
        frame = sys._getframe(2)
        while frame is not None:
            name = frame.f_code.co_filename
            if name.startswith(_CHATCLI_SOURCE):
                self.reads.append(f"{what} at {name}:{frame.f_lineno}")
                return
            frame = frame.f_back  # type: ignore[assignment]

    def __getitem__(self, key: str) -> str:
        self._note(key)
        return self.real[key]

    def __setitem__(self, key: str, value: str) -> None:
        self._note(key)
        self.real[key] = value

    def __delitem__(self, key: str) -> None:
        self._note(key)
        del self.real[key]

    def __contains__(self, key: object) -> bool:
        self._note(str(key))
        return key in self.real

    def __iter__(self) -> Iterator[str]:
        self._note("(all of it)")
        return iter(self.real)

    def __len__(self) -> int:
        return len(self.real)

    def copy(self) -> dict[str, str]:
        self._note("(a copy)")
        return dict(self.real)


_CHATCLI_SOURCE = str(Path(__file__).resolve().parent.parent / "chatcli") + os.sep


@contextlib.contextmanager
def _guarded_environ() -> Iterator[_GuardedEnviron]:
    real = os.environ
    guard = _GuardedEnviron(real)
    os.environ = guard  # type: ignore[assignment]  # noqa: B003 (a stand-in, not a clear)
    try:
        yield guard
    finally:
        os.environ = real  # noqa: B003


class _Output(io.StringIO):
    """A captured stream: text, as a pipe would carry it (never a terminal)."""

    def isatty(self) -> bool:
        return False


def run(
    args: list[str],
    isolated: Isolated,
    *,
    input: str | bytes | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``chatcli args`` in this process through an injected context.

    stdin is ``input`` (or empty), stdout and stderr are captured, none is a terminal, the
    environment is the isolated one plus ``env``, and the test fails if chatcli's code reads
    ``os.environ`` on the way (everything comes from the context).
    """
    from chatcli.cli import main
    from chatcli.config import Paths
    from chatcli.context import AppContext

    full_env = dict(isolated.env)
    full_env.update(env or {})
    data = input.encode() if isinstance(input, str) else (input or b"")
    out, err = _Output(), _Output()
    ctx = AppContext(
        stdin=io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"),
        stdout=out,
        stderr=err,
        stdin_isatty=False,
        stdout_isatty=False,
        stderr_isatty=False,
        env=full_env,
        paths=Paths.from_env(full_env),
    )
    logger = logging.getLogger("chatcli")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    code: int | str | None = 0
    try:
        with (
            _guarded_environ() as guard,
            contextlib.chdir(isolated.root),
            contextlib.redirect_stdout(out),  # what click prints itself: --help, usage errors
            contextlib.redirect_stderr(err),
        ):
            try:
                main(args, ctx)
            except SystemExit as exc:
                code = exc.code
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved
    assert not guard.reads, f"chatcli read the process environment in-process: {guard.reads}"
    returncode = code if isinstance(code, int) else (0 if code is None else 1)
    return subprocess.CompletedProcess(
        ["chatcli", *args], returncode, out.getvalue(), err.getvalue()
    )


def run_binary(
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


def run_with_terminal_stdin(
    args: list[str], isolated: Isolated
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``chatcli`` binary with a real pseudo-terminal on stdin (nothing piped:
    a command that reads stdin must not sit waiting on it); stdout and stderr captured."""
    import pty

    controller, terminal = pty.openpty()
    try:
        return subprocess.run(
            [str(CHATCLI), *args],
            stdin=terminal,
            capture_output=True,
            text=True,
            env=isolated.env,
            timeout=20,
        )
    finally:
        os.close(terminal)
        os.close(controller)


def assert_one_line_error(stderr: str, *fragments: str) -> str:
    """stderr is one ``chatcli: ...`` line (no traceback) holding each fragment; returns it."""
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {stderr!r}"
    assert lines[0].startswith("chatcli: ") and "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]
