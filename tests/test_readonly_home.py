"""Issue 13: a read-only home can still be read; only writes fail, with one line.

How a read-only home is made here, honestly, although the tests run as root (whom permission
bits do not stop): the kernel itself must refuse the writes, to root too, and report the home
as not writable, exactly as chatcli will meet it.

* :func:`freeze` marks the home immutable (``chattr +i``, which root cannot write through
  either) when running as root, or takes its write bits away (``chmod a-w``) otherwise; it is
  undone after the test. Skipped where ``chattr`` does not work (tmpfs, overlayfs).
* :func:`test_a_read_only_mount_can_still_be_read` runs the real binary in a private mount
  namespace where the home is a read-only bind mount (``unshare --mount``): the "mounted
  backup" case itself, EROFS and all; :func:`test_a_full_disk_can_still_be_read` puts a copy
  of the home on a small tmpfs there and fills it. Skipped where mounts are not allowed.

Nothing is injected into chatcli: it decides by asking the kernel (``access``) and by what its
writes answer.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chatcli.errors import StorageError
from chatcli.store import Cookie, CookieStore, SessionStore
from tests.conftest import CHATCLI, Isolated, assert_one_line_error, run, run_binary
from tests.servers import FakeOpenAI


def _set_immutable(path: Path, on: bool) -> subprocess.CompletedProcess[str]:
    flag = "+i" if on else "-i"
    return subprocess.run(
        ["chattr", "-R", flag, str(path)], capture_output=True, text=True, check=False
    )


def _set_writable(path: Path, on: bool) -> None:
    for place in [path, *path.rglob("*")]:
        if place.is_symlink():
            continue
        mode = place.stat().st_mode
        place.chmod(mode | 0o200 if on else mode & ~0o222)


@pytest.fixture
def freeze() -> Iterator[Callable[[Path], None]]:
    """A function that makes a directory tree read-only for this test, even to root."""
    frozen: list[Path] = []

    def do(path: Path) -> None:
        if os.getuid() == 0:
            if shutil.which("chattr") is None:
                pytest.skip("chattr is not installed (e2fsprogs): no way to stop root writing")
            done = _set_immutable(path, True)
            if done.returncode != 0:
                _set_immutable(path, False)
                pytest.skip(f"chattr +i does not work here: {done.stderr.strip()}")
        else:
            _set_writable(path, False)
        frozen.append(path)

    yield do
    for path in frozen:
        if os.getuid() == 0:
            _set_immutable(path, False)
        else:
            _set_writable(path, True)


def data_dir(isolated: Isolated) -> Path:
    return isolated.chatcli_home / "data"


def fill_home(isolated: Isolated) -> str:
    """A home as chatcli leaves it: a session, a cookie and a config; returns the session id."""
    isolated.write_config('provider = "ollama"\n')
    store = SessionStore(data_dir(isolated) / "sessions.db")
    try:
        session = store.create(name="notes")
        store.add_message(session.id, "user", "What is a monad?\nIn one line.")
        store.add_message(session.id, "assistant", "A monoid in the category of endofunctors.")
    finally:
        store.close()
    CookieStore(data_dir(isolated) / "cookies.json").save([Cookie("chat-gpt.org", "clear", "v")])
    return session.id


def listing(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def test_a_read_only_home_can_still_be_read(
    isolated: Isolated, tmp_path: Path, freeze: Callable[[Path], None]
) -> None:
    session_id = fill_home(isolated)
    before = listing(isolated.chatcli_home)
    freeze(isolated.chatcli_home)
    out = tmp_path / "out.md"
    reads = {
        ("sessions", "list"): "notes",
        ("sessions", "show", "notes"): "A monoid in the category",
        ("sessions", "search", "monad"): "What is a monad?",
        ("sessions", "export", "notes", "-o", "-"): "In one line.",
        ("sessions", "export", "notes", "-o", str(out)): "",
        ("cookies", "list"): "chat-gpt.org\tclear",
        ("providers",): "ollama *",
    }
    for args, shown in reads.items():
        result = run_binary(list(args), isolated)
        assert result.returncode == 0, (args, result.stderr)
        assert shown in result.stdout, (args, result.stdout)
        assert "Traceback" not in result.stderr
    assert out.read_text().startswith("# notes")
    assert session_id in run(["sessions", "list"], isolated).stdout  # in-process too
    assert listing(isolated.chatcli_home) == before  # no -wal, no -shm, nothing changed


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["sessions", "rename", "notes", "other"], "could only be opened for reading"),
        (["sessions", "rm", "-y", "notes"], "could only be opened for reading"),
        (["cookies", "clear"], "is read-only here"),
        (["cookies", "import", "EXPORT"], "is read-only here"),
    ],
)
def test_in_a_read_only_home_only_writes_fail_with_one_line(
    isolated: Isolated,
    tmp_path: Path,
    freeze: Callable[[Path], None],
    args: list[str],
    fragment: str,
) -> None:
    fill_home(isolated)
    export = tmp_path / "cookies.txt"
    export.write_text("a.org\tFALSE\t/\tFALSE\t0\tname\tvalue\n")
    before = listing(isolated.chatcli_home)
    freeze(isolated.chatcli_home)
    result = run_binary([str(export) if a == "EXPORT" else a for a in args], isolated)
    assert result.returncode == 1
    assert_one_line_error(result.stderr, fragment)
    assert listing(isolated.chatcli_home) == before
    assert "notes" in run_binary(["sessions", "list"], isolated).stdout


def test_in_a_read_only_home_ask_answers_and_says_it_kept_nothing(
    fake: FakeOpenAI, isolated: Isolated, freeze: Callable[[Path], None]
) -> None:
    fill_home(isolated)
    before = listing(isolated.chatcli_home)
    freeze(isolated.chatcli_home)
    result = run_binary(
        ["ask", "-p", "ollama", "-m", "m", "--base-url", fake.base_url, "-S", "notes", "hi"],
        isolated,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "".join(fake.pieces)
    # One warning, although saving was tried twice (the question, then the answer).
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    line = lines[0]
    assert line.startswith("chatcli: warning: could not save this conversation"), line
    assert "could only be opened for reading here (" in line
    assert "sessions.db is not writable" in line
    assert line.endswith("; nothing of it was kept")  # a one-shot ask: no later message saves it
    assert listing(isolated.chatcli_home) == before


def test_a_read_only_home_without_a_database_lists_nothing(
    isolated: Isolated, freeze: Callable[[Path], None]
) -> None:
    data_dir(isolated).mkdir(parents=True)
    freeze(isolated.chatcli_home)
    result = run_binary(["sessions", "list"], isolated)
    assert result.returncode == 0, result.stderr
    assert_one_line_error(result.stderr, "no saved sessions yet")
    assert list(data_dir(isolated).iterdir()) == []
    found = run_binary(["sessions", "show", "nothing"], isolated)
    assert found.returncode == 2
    assert_one_line_error(found.stderr, "no session named 'nothing'")


def test_the_store_opens_read_only_without_migrating_or_journaling(
    tmp_path: Path, freeze: Callable[[Path], None]
) -> None:
    path = tmp_path / "data" / "sessions.db"
    store = SessionStore(path)
    session = store.create(name="notes")
    store.add_message(session.id, "user", "hello")
    store.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        version = db.execute("PRAGMA user_version").fetchone()[0]
    freeze(path.parent)
    reader = SessionStore(path)
    assert [s.name for s in reader.recent()] == ["notes"]
    assert reader.read_only == f"{path} is not writable"
    with pytest.raises(StorageError, match="could only be opened for reading"):
        reader.add_message(session.id, "user", "lost?")
    reader.close()
    assert sorted(p.name for p in path.parent.iterdir()) == ["sessions.db"]
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == version


def test_a_corrupt_cookie_file_in_a_read_only_home_is_left_in_place(
    isolated: Isolated, freeze: Callable[[Path], None]
) -> None:
    data_dir(isolated).mkdir(parents=True)
    stored = data_dir(isolated) / "cookies.json"
    stored.write_text("{ broken")
    stored.chmod(0o600)
    freeze(isolated.chatcli_home)
    result = run_binary(["cookies", "list"], isolated)
    assert result.returncode == 0
    assert "left it in place (read-only)" in result.stderr
    assert stored.read_text() == "{ broken"


def _private_mounts_work() -> bool:
    if os.getuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "sh", "-c", "mount --bind / /mnt && mount -o remount,bind,ro /mnt"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


needs_private_mounts = pytest.mark.skipif(
    not _private_mounts_work(), reason="needs root and unshare --mount (a private mount)"
)


def in_private_mounts(
    isolated: Isolated, script: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``sh -c script`` in a mount namespace of its own: the mounts it makes vanish with it.
    ``$CHATCLI`` is the real binary, ``$HOME_DIR`` the test's home."""
    full_env = {
        **isolated.env,
        "CHATCLI": str(CHATCLI),
        "HOME_DIR": str(isolated.chatcli_home),
        **(env or {}),
    }
    return subprocess.run(
        ["unshare", "--mount", "sh", "-c", script],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=isolated.root,
        timeout=60,
        check=False,
    )


@needs_private_mounts
def test_a_read_only_mount_can_still_be_read(isolated: Isolated) -> None:
    fill_home(isolated)
    result = in_private_mounts(
        isolated,
        'mount --bind "$HOME_DIR" "$HOME_DIR" && mount -o remount,bind,ro "$HOME_DIR" && '
        '"$CHATCLI" sessions list && "$CHATCLI" cookies list && '
        '"$CHATCLI" sessions rename notes other',
    )
    lines = result.stdout.splitlines()
    assert "\tnotes\t" in lines[0] and lines[1].startswith("chat-gpt.org\tclear")
    assert result.returncode == 1  # the rename, and only it
    assert_one_line_error(result.stderr, "could only be opened for reading", "is not writable")
    assert "notes" in run_binary(["sessions", "list"], isolated).stdout


@needs_private_mounts
def test_a_full_disk_can_still_be_read(isolated: Isolated, tmp_path: Path) -> None:
    fill_home(isolated)
    disk = tmp_path / "disk"
    disk.mkdir()
    result = in_private_mounts(
        isolated,
        'mount -t tmpfs -o size=512k tmpfs "$DISK" && cp -a "$HOME_DIR" "$DISK/home" && '
        '{ dd if=/dev/zero of="$DISK/filler" bs=4k 2>/dev/null; true; } && '
        '"$CHATCLI" sessions list && "$CHATCLI" sessions show notes && '
        '"$CHATCLI" sessions rename notes other',
        env={"DISK": str(disk), "CHATCLI_HOME": str(disk / "home")},
    )
    assert "\tnotes\t" in result.stdout and "A monoid in the category" in result.stdout
    assert result.returncode == 1  # the rename, and only it
    assert_one_line_error(result.stderr, "could only be opened for reading", "disk I/O error")


def test_a_read_only_snapshot_of_an_older_schema_is_read_as_it_is(
    isolated: Isolated, freeze: Callable[[Path], None]
) -> None:
    from chatcli.store.sessions import MIGRATIONS

    path = data_dir(isolated) / "sessions.db"
    path.parent.mkdir(parents=True, mode=0o700)
    path.touch(mode=0o600)
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0])  # the first release's schema, taken before an upgrade
    db.execute("INSERT INTO sessions VALUES ('abcdef123456', 'old', 'T', NULL, 'p', 'm', 1, 2)")
    db.executemany(
        "INSERT INTO messages (session_id, role, content, created_at) VALUES (?, ?, ?, 1)",
        [("abcdef123456", "user", "an old question"), ("abcdef123456", "assistant", "old answer")],
    )
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    before = listing(isolated.chatcli_home)
    freeze(isolated.chatcli_home)
    shown = run_binary(["sessions", "show", "old"], isolated)
    assert shown.returncode == 0, shown.stderr
    assert "an old question" in shown.stdout and "old answer" in shown.stdout
    assert listing(isolated.chatcli_home) == before  # not migrated: left as it was
