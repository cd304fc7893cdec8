"""Reading a browser's cookie database without writing to its profile.

The database is opened with SQLite's read-only URI (``file:...?mode=ro``). When that cannot
work without touching the profile, the database and its journal are copied into a private
directory and the copy is read: when the browser holds a lock on it (a running Chrome does),
when it is in WAL mode (Firefox's is; reading WAL in place would write to its ``-shm`` file), or
when a non-empty journal shows a writer at work. The copy is deleted at once, and one that a
killed process left behind is swept by a later import.

The copies go to ``CACHE/browser-copies``; the cache directory is passed in, never looked up
here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final, TypeVar

from chatcli.browser.profiles import Browser
from chatcli.errors import UsageError
from chatcli.store.files import private_dir

# The name the importer always logged under (debug lines show it).
log = logging.getLogger("chatcli.store")

_T = TypeVar("_T")

_SQLITE_MAGIC: Final = b"SQLite format 3\x00"


class _Locked(Exception):
    """The database is locked by its browser: read a copy instead."""


def read_database(
    database: Path,
    browser: Browser,
    reader: Callable[[sqlite3.Connection], _T],
    *,
    cache_dir: Path | None,
) -> _T:
    """``reader`` run on the database opened read-only, or on a private copy of it (made under
    ``cache_dir``: see :func:`read_copy`)."""
    try:
        with database.open("rb") as handle:
            header = handle.read(100)
    except OSError as exc:
        raise UsageError(f"cannot read {database}: {exc.strerror or exc}") from None
    if not header.startswith(_SQLITE_MAGIC):
        raise UsageError(f"{database} is not a cookie database (not SQLite)")
    wal = len(header) >= 20 and header[18] == 2  # the read/write versions say WAL mode
    try:
        writer_at_work = Path(f"{database}-journal").stat().st_size > 0
    except OSError:
        writer_at_work = False
    if not wal and not writer_at_work:
        try:
            return _read_direct(database, browser, reader)
        except _Locked:
            log.debug("%s is locked by %s; reading a copy", database, browser.name)
    return read_copy(database, browser, reader, cache_dir=cache_dir)


def _read_direct(
    database: Path, browser: Browser, reader: Callable[[sqlite3.Connection], _T]
) -> _T:
    uri = database.resolve().as_uri() + "?mode=ro"
    try:
        connection = sqlite3.connect(uri, uri=True, timeout=0.2)
    except sqlite3.Error as exc:
        raise _database_error(database, browser, exc) from None
    try:
        return reader(connection)
    except sqlite3.OperationalError as exc:
        if _is_lock(exc):
            raise _Locked from None
        raise _database_error(database, browser, exc) from None
    except sqlite3.Error as exc:
        raise _database_error(database, browser, exc) from None
    finally:
        connection.close()


#: Copies older than this in the copies folder were left by a process that was killed.
_STALE_COPY_SECONDS: Final = 600


def _copies_dir(cache_dir: Path) -> Path:
    """``CACHE/browser-copies`` (0700): where a locked database is copied to be read."""
    folder = private_dir(cache_dir / "browser-copies", base=cache_dir)
    now = time.time()
    for leftover in folder.iterdir():  # a killed import cannot clean up after itself
        with contextlib.suppress(OSError):
            if now - leftover.lstat().st_mtime > _STALE_COPY_SECONDS:
                if leftover.is_dir() and not leftover.is_symlink():
                    shutil.rmtree(leftover)
                else:
                    leftover.unlink()
    return folder


def read_copy(
    database: Path,
    browser: Browser,
    reader: Callable[[sqlite3.Connection], _T],
    *,
    cache_dir: Path | None,
) -> _T:
    """``reader`` run on a private copy of the database, removed once read.

    Without a cache dir (a :class:`~chatcli.store.Stores` built by hand with none), the copy
    goes to a directory of its own in the system's temporary directory: :func:`tempfile.mkdtemp`
    makes it 0700 all the same, but a copy left there by a killed process is not swept.
    """
    # The copy holds the same secrets as the profile: in chatcli's private cache (0700), each
    # file 0600, removed once read (and by a later import if this process is killed first).
    if cache_dir is None:
        copies = tempfile.TemporaryDirectory(prefix="chatcli-browser-copy-")
    else:
        copies = tempfile.TemporaryDirectory(prefix="copy-", dir=_copies_dir(cache_dir))
    with copies as directory:
        copy = Path(directory) / "cookies.db"
        try:
            # The WAL first: a checkpoint between the two copies then loses nothing.
            for suffix in ("-wal", "-journal"):
                side = Path(f"{database}{suffix}")
                if side.is_file():
                    shutil.copyfile(side, f"{copy}{suffix}")
                    os.chmod(f"{copy}{suffix}", 0o600)
            shutil.copyfile(database, copy)
            os.chmod(copy, 0o600)
        except OSError as exc:
            raise UsageError(
                f"cannot read {database}: {browser.name} holds it locked "
                f"({exc.strerror or exc}); close {browser.name} and try again"
            ) from None
        try:
            connection = sqlite3.connect(copy, timeout=0.2)
        except sqlite3.Error as exc:
            raise _database_error(database, browser, exc) from None
        try:
            return reader(connection)
        except sqlite3.Error as exc:
            raise _database_error(database, browser, exc) from None
        finally:
            connection.close()


def _is_lock(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF in (5, 6):  # SQLITE_BUSY, SQLITE_LOCKED
        return True
    return "locked" in str(exc).lower() or "busy" in str(exc).lower()


def _database_error(database: Path, browser: Browser, exc: sqlite3.Error) -> UsageError:
    text = str(exc)
    if _is_lock(exc):
        return UsageError(
            f"cannot read {database}: {browser.name} holds it locked; close it and try again"
        )
    if text.startswith("no such table") or text.startswith("no such column"):
        return UsageError(f"{database} is not a {browser.name} cookie database ({text})")
    return UsageError(f"cannot read the {browser.name} cookie database {database}: {text}")
