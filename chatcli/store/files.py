"""Private files: directories 0700, files 0600 from their first byte, atomic replacement.

A file is never written in place: the new content goes to a temporary file in the same
directory (created 0600, so no moment exists where another user could read it), is flushed to
disk, then renamed over the old one. A reader sees the old file or the new one, never half.

A file that cannot be parsed is moved aside (``NAME.corrupt-TIMESTAMP``) with a warning and
chatcli carries on without it: nothing is deleted, and the user can look at what was there.

chatcli's own tree is each store's ``base`` (the data, cache and state directories that
``chatcli paths`` shows) and everything under it. In it nothing is ever a symbolic link: a
directory or file there that is a link is refused, never followed, written through or
chmodded, and a directory there must belong to the user. Above ``base`` the path is the
user's own (``/home -> /usr/home``, a ``CHATCLI_HOME`` that is itself a link): links there are
followed, and a directory chatcli creates there is made 0700. A file chatcli reads
credentials or state from must also be one no one else could have written
(:func:`chatcli.config.check_trusted`), and no file over :data:`MAX_FILE_BYTES` is parsed.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import secrets
import shlex
import stat
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from chatcli.config import check_trusted
from chatcli.errors import ConfigError, StorageError, UsageError

log = logging.getLogger("chatcli.store")

DIR_MODE: Final = 0o700
FILE_MODE: Final = 0o600
#: The largest file chatcli parses (a cookie export, its cookie file, a provider's state):
#: real ones are kilobytes; a bigger one is refused before it is read.
MAX_FILE_BYTES: Final = 8 * 1024 * 1024
#: What ``errno`` says when a write fails because the place is read-only (or full).
UNWRITABLE_ERRNOS: Final = frozenset(
    {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT}
)

_NO_LINK: Final = os.O_NOFOLLOW | os.O_CLOEXEC


class FileTooLargeError(StorageError):
    """A file is larger than chatcli will parse."""


def link_error(path: Path) -> ConfigError:
    """The one line that refuses a symbolic link inside chatcli's own tree."""
    return ConfigError(
        f"{path} is a symbolic link; chatcli never follows links inside its own directories: "
        f"remove it (rm {shlex.quote(str(path))})"
    )


def private_dir(path: Path, *, base: Path | None = None) -> Path:
    """``path`` as a directory only its owner can enter (created 0700 if missing).

    ``base`` is the top of chatcli's tree that ``path`` lies in (default: ``path`` itself).
    From ``base`` down each directory is opened without following a link, must belong to the
    user, and loses any group or other permission (through its descriptor, never a path).
    Missing directories above ``base`` are created 0700 whatever the umask.
    """
    base = path if base is None else base
    names = (base.name, *path.relative_to(base).parts)
    try:
        _make_parents(base.parent)
        fd = os.open(base.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            where = base.parent
            for name in names:
                where = where / name
                child = _own_dir(fd, name, where)
                os.close(fd)
                fd = child
        finally:
            os.close(fd)
    except OSError as exc:
        raise StorageError(f"cannot create {path}: {exc.strerror or exc}") from exc
    return path


def _make_parents(path: Path) -> None:
    """Create the missing directories of ``path`` (links above chatcli's tree are followed)."""
    missing: list[Path] = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:
            continue  # another chatcli made it a moment ago: it is theirs to set up
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | _NO_LINK)
        try:
            os.fchmod(fd, DIR_MODE)  # mkdir's mode is cut by the umask
        finally:
            os.close(fd)


def _own_dir(parent: int, name: str, where: Path) -> int:
    """The directory ``name`` in the open directory ``parent``, created if missing, opened
    without following a link, the user's own and 0700 at most; returns its descriptor."""
    created = True
    try:
        os.mkdir(name, DIR_MODE, dir_fd=parent)
    except FileExistsError:
        created = False
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | _NO_LINK, dir_fd=parent)
    except OSError as exc:
        if stat.S_ISLNK(os.lstat(name, dir_fd=parent).st_mode):
            raise link_error(where) from None
        if exc.errno == errno.ENOTDIR:
            raise ConfigError(f"{where} is not a directory; move it out of the way") from None
        raise
    try:
        st = os.fstat(fd)
        if st.st_uid != os.getuid():
            raise ConfigError(
                f"{where} belongs to another user (uid {st.st_uid}); chatcli keeps its files "
                "only in directories of your own: remove it, or set CHATCLI_HOME elsewhere"
            )
        mode = stat.S_IMODE(st.st_mode)
        if created and mode != DIR_MODE:
            os.fchmod(fd, DIR_MODE)  # mkdir's mode is cut by the umask
        elif mode & 0o077:
            os.fchmod(fd, mode & 0o700)  # too loose: keep only the owner's bits
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_tree(directory: Path, base: Path) -> bool:
    """Whether ``directory`` (in chatcli's tree under ``base``) exists, refusing on the way a
    link or a directory of another user; for reading, so nothing is created or changed."""
    names = directory.relative_to(base).parts
    for where in (base.joinpath(*names[:depth]) for depth in range(len(names) + 1)):
        try:
            st = os.lstat(where)
        except FileNotFoundError:
            return False
        if stat.S_ISLNK(st.st_mode):
            raise link_error(where)
        if not stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"{where} is not a directory; move it out of the way")
        if st.st_uid not in (os.getuid(), 0):
            check_trusted(where, st)
    return True


def check_own_file(path: Path) -> os.stat_result | None:
    """The status of ``path`` (one of chatcli's files), ``None`` when missing; refuses a link,
    something that is not a regular file, and a file someone else could have written."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    _check_file(path, st)
    return st


def _check_file(path: Path, st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise link_error(path)
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{path} is not a regular file; move it out of the way")
    check_trusted(path, st)


def read_private(path: Path, *, base: Path | None = None) -> bytes | None:
    """The bytes of ``path``, one of chatcli's own files under ``base`` (default: its
    directory); ``None`` when it does not exist.

    Opened without following a link, and refused (exit 2) when it is not a regular file or
    someone else could have written it. :class:`FileTooLargeError` over :data:`MAX_FILE_BYTES`.
    """
    if not check_tree(path.parent, path.parent if base is None else base):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | _NO_LINK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise link_error(path) from None
        raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        _check_file(path, os.fstat(fd))
        return read_limited(fd, path)
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)


def read_limited(fd: int, path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """Everything ``fd`` holds, or :class:`FileTooLargeError` as soon as it passes ``limit``
    (a pipe or a device has no size to check first, so the count is kept while reading)."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = os.read(fd, min(limit + 1 - size, 1024 * 1024))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
    raise FileTooLargeError(f"{path} is larger than {limit // (1024 * 1024)} MiB")


def private_file(path: Path, *, base: Path | None = None) -> Path:
    """``path``, a file only its owner can read, created empty (0600) if missing, for a library
    that opens it by name (prompt_toolkit appends to its history file so): its directory is
    made private (see :func:`private_dir`), and it is never a link nor another user's."""
    private_dir(path.parent, base=base)
    try:
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NONBLOCK | _NO_LINK, FILE_MODE
        )
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise link_error(path) from None
        raise StorageError(f"cannot create {path}: {exc.strerror or exc}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{path} is not a regular file; move it out of the way")
        if st.st_uid != os.getuid():
            raise ConfigError(f"{path} belongs to another user (uid {st.st_uid}); remove it")
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    return path


def write_private(
    path: Path,
    data: bytes | Sequence[bytes | memoryview],
    *,
    own_directory: bool = True,
    base: Path | None = None,
    durable: bool = True,
) -> None:
    """Replace ``path`` with ``data`` (bytes, or pieces written one after another)
    atomically; the file is 0600 from the start.

    ``own_directory``: the parent is chatcli's own (its tree starts at ``base``, by default
    the parent itself), created (and kept) 0700, and ``path`` must not be a link there. A
    user's choice of place (an export) must exist already, and its mode is left alone.
    ``durable=False`` skips the flush to disk (a cache, whose reader checks what it reads:
    a crash may lose the file, never leave half of it under its name).
    """
    if own_directory:
        private_dir(path.parent, base=base)
        check_own_file(path)
    elif not path.parent.is_dir():
        raise StorageError(f"cannot write {path}: {path.parent} is not a directory")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NO_LINK, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)  # O_CREAT's mode is cut by the umask, never widened
            for part in [data] if isinstance(data, bytes) else data:
                _write_all(fd, part)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from exc


def write_user_file(path: Path, data: bytes) -> None:
    """Write ``data`` where the user asked (an export): a regular file, or a new one, is
    replaced atomically (0600, see :func:`write_private`); anything else ``path`` is (a FIFO,
    a terminal, ``/dev/stdout``, a symbolic link) is written through as the shell's ``>``
    would, never replaced by a file of the same name."""
    try:
        st: os.stat_result | None = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:  # a name too long, a parent that is a file, no permission
        raise StorageError(f"cannot write {_shown(path)}: {exc.strerror or exc}") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{_shown(path)} is a directory; give a file name")
    if st is None or stat.S_ISREG(st.st_mode):
        write_private(path, data, own_directory=False)
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)  # no O_CREAT: what is there
        try:
            if os.isatty(fd):  # -o /dev/tty: a person reads it, as through the sanitizing stdout
                from chatcli.render.sanitize import sanitize

                data = sanitize(data.decode("utf-8", "replace")).encode()
            _write_all(fd, data)
        finally:
            os.close(fd)
    except OSError as exc:
        raise StorageError(f"cannot write {_shown(path)}: {exc.strerror or exc}") from exc


def _shown(path: Path, limit: int = 120) -> str:
    """``path`` fit for a one-line message: a very long one keeps its start and its end."""
    text = str(path)
    return text if len(text) <= limit else f"{text[: limit // 2]}…{text[-limit // 3 :]}"


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def write_json(path: Path, data: Any, *, base: Path | None = None) -> None:
    """``data`` as JSON in ``path`` (see :func:`write_private`): strict JSON (no NaN or
    Infinity), and never larger than chatcli would read back."""
    try:
        text = json.dumps(data, indent=1, ensure_ascii=False, allow_nan=False) + "\n"
    except ValueError as exc:
        raise StorageError(f"cannot write {path}: {exc}") from exc
    raw = text.encode()
    if len(raw) > MAX_FILE_BYTES:
        raise StorageError(
            f"cannot write {path}: it would be larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB"
        )
    write_private(path, raw, base=base)


def read_json(path: Path, *, what: str, base: Path | None = None) -> Any:
    """The JSON in ``path``; ``None`` if it does not exist or was corrupt (then moved aside).

    Too large, too deeply nested or not JSON: corrupt. A link, or a file someone else could
    have written, is refused (see :func:`read_private`).
    """
    try:
        raw = read_private(path, base=base)
    except FileTooLargeError as exc:
        return set_aside(path, what, str(exc))
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return set_aside(path, what, "unreadable")
    except RecursionError:
        return set_aside(path, what, "nested too deeply")


def set_aside(path: Path, what: str, why: str) -> None:
    """Quarantine a damaged file with a warning; in a read-only directory, leave it and say so."""
    try:
        aside = quarantine(path)
    except StorageError as exc:
        cause = exc.__cause__
        if isinstance(cause, OSError) and cause.errno in UNWRITABLE_ERRNOS:
            log.warning("%s %s is %s; left it in place (read-only) and carried on", what, path, why)
            return None
        raise
    log.warning("%s %s was %s; moved it to %s and carried on", what, path, why, aside)
    return None


@contextmanager
def locked(path: Path, *, base: Path | None = None) -> Iterator[None]:
    """Hold an exclusive lock tied to ``path`` (on ``path.lock``) for a read-change-write.

    Other chatcli processes wait at the same lock, so two of them changing one file at once
    cannot lose each other's changes.
    """
    private_dir(path.parent, base=base)
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | _NO_LINK, FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise link_error(lock_path) from None
        if exc.errno in UNWRITABLE_ERRNOS:
            raise StorageError(
                f"cannot change {path}: {path.parent} is read-only here ({exc.strerror})"
            ) from exc
        raise StorageError(f"cannot lock {path}: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def quarantine(path: Path) -> Path:
    """Move a damaged file out of the way, keeping it, and return where it went."""
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    try:
        os.replace(path, aside)
    except OSError as exc:
        raise StorageError(f"{path} is damaged and cannot be moved aside: {exc}") from exc
    return aside
