"""Conversations in one SQLite database (``DATA/sessions.db``).

* WAL journal and a busy timeout, so several chatcli processes can write at once; every write
  is one short ``BEGIN IMMEDIATE`` transaction (never held across network I/O).
* The schema is versioned with ``PRAGMA user_version`` and migrated forward under an exclusive
  lock at open; a database from a newer chatcli is refused, never touched.
* The file is created 0600 (SQLite gives its ``-wal`` and ``-shm`` files the same mode).
* A damaged or locked database is an error that names the file; it is never overwritten.

Messages record role, text, provider, model, time, duration and status (``complete``,
``interrupted`` or ``error``). No secret is ever stored: keys and cookies are not part of a turn.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from chatcli.errors import StorageError, UsageError
from chatcli.store.files import FILE_MODE, private_dir

Status = Literal["complete", "interrupted", "error"]

#: How long a writer waits for another process's transaction (milliseconds).
BUSY_TIMEOUT_MS: Final = 10_000
#: Longest automatic title, in characters.
TITLE_LENGTH: Final = 60
#: Shortest id prefix accepted when addressing a session.
MIN_PREFIX: Final = 4

#: Forward migrations: the script at index N takes the schema from version N to N + 1.
MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE sessions (
        id          TEXT PRIMARY KEY,
        name        TEXT UNIQUE,
        title       TEXT NOT NULL DEFAULT '',
        system      TEXT,
        provider    TEXT,
        model       TEXT,
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL
    );
    CREATE TABLE messages (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id  TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        role        TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
        content     TEXT NOT NULL,
        provider    TEXT,
        model       TEXT,
        created_at  REAL NOT NULL,
        duration    REAL,
        status      TEXT NOT NULL DEFAULT 'complete'
                    CHECK (status IN ('complete', 'interrupted', 'error')),
        error       TEXT
    );
    CREATE INDEX messages_by_session ON messages (session_id, id);
    CREATE INDEX sessions_by_update ON sessions (updated_at);
    """,
)
SCHEMA_VERSION: Final = len(MIGRATIONS)


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    name: str | None
    title: str
    system: str | None
    provider: str | None
    model: str | None
    created_at: float
    updated_at: float
    message_count: int = 0

    @property
    def label(self) -> str:
        """The name if it has one, else the title."""
        return self.name or self.title or "(untitled)"


@dataclass(frozen=True, slots=True)
class StoredMessage:
    id: int
    session_id: str
    role: str
    content: str
    provider: str | None
    model: str | None
    created_at: float
    duration: float | None
    status: str
    error: str | None


@dataclass(frozen=True, slots=True)
class SearchHit:
    session: Session
    message: StoredMessage
    line: str


def make_title(text: str) -> str:
    """A title from a first message: its first non-empty line, one-spaced, cut to length."""
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    line = " ".join(line.split())
    if len(line) > TITLE_LENGTH:
        line = line[: TITLE_LENGTH - 1].rstrip() + "…"
    return line


class SessionStore:
    """The session database. Opens (and migrates) on first use; one connection per store."""

    def __init__(self, path: Path, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self._db: sqlite3.Connection | None = None

    # -- opening and migrating -------------------------------------------------------------

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = self._open()
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _open(self) -> sqlite3.Connection:
        private_dir(self.path.parent)
        if not self.path.exists():
            # Create it owner-only before SQLite does, with the umask's say removed.
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, FILE_MODE)
                os.fchmod(fd, FILE_MODE)
                os.close(fd)
            except OSError as exc:
                raise StorageError(f"cannot create {self.path}: {exc.strerror or exc}") from exc
        try:
            db = sqlite3.connect(
                self.path, timeout=self.busy_timeout_ms / 1000, isolation_level=None
            )
        except sqlite3.Error as exc:
            raise self._error("cannot open", exc) from exc
        try:
            db.row_factory = sqlite3.Row
            db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            db.execute("PRAGMA foreign_keys = ON")
            # Refuse a newer schema before anything (even the journal mode) changes the file.
            self._check_not_newer(db.execute("PRAGMA user_version").fetchone()[0])
            self._prepare(db)
        except sqlite3.Error as exc:
            db.close()
            raise self._error("cannot use", exc) from exc
        except BaseException:
            db.close()
            raise
        return db

    def _prepare(self, db: sqlite3.Connection) -> None:
        """WAL journaling and the current schema.

        When several processes open a new database at once, SQLite answers "busy" at once
        (without waiting) to some of them while another switches the journal mode or migrates,
        to avoid a deadlock; those try again until the busy timeout has passed.
        """
        deadline = time.monotonic() + self.busy_timeout_ms / 1000
        while True:
            try:
                mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StorageError(f"{self.path}: cannot switch to WAL journaling ({mode})")
                db.execute("PRAGMA synchronous = NORMAL")
                self._migrate(db)
                return
            except sqlite3.OperationalError as exc:
                text = str(exc)
                if ("locked" not in text and "busy" not in text) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05 + 0.05 * secrets.randbelow(4))

    def _migrate(self, db: sqlite3.Connection) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        self._check_not_newer(version)
        db.execute("BEGIN EXCLUSIVE")
        try:
            # Another process may have migrated while we waited for the lock.
            version = db.execute("PRAGMA user_version").fetchone()[0]
            self._check_not_newer(version)
            for target in range(version, SCHEMA_VERSION):
                for statement in _statements(MIGRATIONS[target]):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {target + 1}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _check_not_newer(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"{self.path} was written by a newer chatcli (schema {version}; this one knows "
                f"up to {SCHEMA_VERSION}); upgrade chatcli to use it. The file was not changed."
            )

    def _error(self, action: str, exc: sqlite3.Error) -> StorageError:
        text = str(exc)
        if "locked" in text or "busy" in text:
            return StorageError(
                f"the session database {self.path} is locked by another program; try again"
            )
        if isinstance(exc, sqlite3.DatabaseError) and (
            "malformed" in text or "not a database" in text or "corrupt" in text
        ):
            return StorageError(
                f"the session database {self.path} is damaged ({text}); it was left untouched: "
                "move it aside to start afresh, or repair it with the sqlite3 tool"
            )
        return StorageError(f"{action} the session database {self.path}: {text}")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction, taken at once (no read-then-upgrade deadlock)."""
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._error("cannot write to", exc) from exc
        try:
            yield db
        except sqlite3.Error as exc:
            db.execute("ROLLBACK")
            raise self._error("cannot write to", exc) from exc
        except BaseException:
            db.execute("ROLLBACK")
            raise
        try:
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            db.execute("ROLLBACK")
            raise self._error("cannot write to", exc) from exc

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[sqlite3.Row]:
        try:
            return self.db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self._error("cannot read", exc) from exc

    # -- sessions --------------------------------------------------------------------------

    def create(
        self,
        *,
        name: str | None = None,
        system: str | None = None,
        provider: str | None = None,
        model: str | None = None,
        reuse_name: bool = False,
    ) -> Session:
        """A new session. With ``reuse_name``, a session already so named (say, created by
        another ``ask -S NAME`` a moment ago) is returned instead of an error."""
        now = time.time()
        with self._write() as db:
            if name is not None:
                self._check_name(name)
                existing = self._by_name(name)
                if existing is not None:
                    if reuse_name:
                        return existing
                    raise UsageError(f"a session is already named {name!r}")
            session_id = secrets.token_hex(6)
            db.execute(
                "INSERT INTO sessions (id, name, title, system, provider, model, created_at,"
                " updated_at) VALUES (?, ?, '', ?, ?, ?, ?, ?)",
                (session_id, name, system, provider, model, now, now),
            )
        return self.get(session_id)

    def get(self, session_id: str) -> Session:
        rows = self._read(_SESSION_QUERY + " WHERE s.id = ? GROUP BY s.id", (session_id,))
        if not rows:
            raise UsageError(f"no session {session_id!r}")
        return _session(rows[0])

    def _by_name(self, name: str) -> Session | None:
        rows = self._read(_SESSION_QUERY + " WHERE s.name = ? GROUP BY s.id", (name,))
        return _session(rows[0]) if rows else None

    def find(self, ref: str) -> Session:
        """A session by id, by name, or by a unique id prefix (at least 4 characters).

        An exact id wins over a name, so no name can hide another session.
        """
        ref = ref.strip()
        rows = self._read(
            _SESSION_QUERY + " WHERE s.id LIKE ? ESCAPE '\\' GROUP BY s.id",
            (_like_prefix(ref.lower()),),
        )
        exact = [r for r in rows if r["id"] == ref.lower()]
        if exact:
            return _session(exact[0])
        named = self._by_name(ref)
        if named is not None:
            return named
        if len(rows) == 1 and len(ref) >= MIN_PREFIX:
            return _session(rows[0])
        if len(rows) > 1 and len(ref) >= MIN_PREFIX:
            ids = ", ".join(r["id"] for r in rows[:5])
            raise UsageError(f"{ref!r} matches several sessions ({ids}); give more of the id")
        raise UsageError(f"no session named {ref!r} or with an id starting {ref!r}")

    def find_or_none(self, ref: str) -> Session | None:
        try:
            return self.find(ref)
        except UsageError:
            return None

    def latest(self) -> Session | None:
        rows = self._read(
            _SESSION_QUERY + " GROUP BY s.id ORDER BY s.updated_at DESC, s.rowid DESC LIMIT 1"
        )
        return _session(rows[0]) if rows else None

    def recent(self, limit: int | None = None) -> list[Session]:
        sql = _SESSION_QUERY + " GROUP BY s.id ORDER BY s.updated_at DESC, s.rowid DESC"
        params: tuple[object, ...] = ()
        if limit is not None:
            sql += " LIMIT ?"
            params = (limit,)
        return [_session(row) for row in self._read(sql, params)]

    def exists(self, session_id: str) -> bool:
        return bool(self._read("SELECT 1 FROM sessions WHERE id = ?", (session_id,)))

    def _check_name(self, name: str) -> None:
        if not name.strip():
            raise UsageError("a session name cannot be empty")
        if self._read("SELECT 1 FROM sessions WHERE id = ?", (name.lower(),)):
            raise UsageError(f"{name!r} is another session's id; choose another name")

    def rename(self, session_id: str, name: str) -> Session:
        name = name.strip()
        with self._write() as db:
            self._check_name(name)
            other = self._by_name(name)
            if other is not None and other.id != session_id:
                raise UsageError(f"a session is already named {name!r}")
            db.execute(
                "UPDATE sessions SET name = ?, updated_at = ? WHERE id = ?",
                (name, time.time(), session_id),
            )
        return self.get(session_id)

    def set_system(self, session_id: str, system: str | None) -> None:
        with self._write() as db:
            db.execute("UPDATE sessions SET system = ? WHERE id = ?", (system, session_id))

    def delete(self, session_ids: Iterable[str]) -> int:
        ids = list(session_ids)
        with self._write() as db:
            count = 0
            for session_id in ids:
                count += db.execute("DELETE FROM sessions WHERE id = ?", (session_id,)).rowcount
        return count

    # -- messages --------------------------------------------------------------------------

    def add_message(
        self,
        session_id: str,
        role: Literal["user", "assistant"],
        content: str,
        *,
        provider: str | None = None,
        model: str | None = None,
        status: Status = "complete",
        duration: float | None = None,
        error: str | None = None,
    ) -> int:
        """Append a message and touch its session, in one transaction. Returns the message id."""
        now = time.time()
        with self._write() as db:
            cursor = db.execute(
                "INSERT INTO messages (session_id, role, content, provider, model, created_at,"
                " duration, status, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (session_id, role, content, provider, model, now, duration, status, error),
            )
            db.execute(
                "UPDATE sessions SET updated_at = ?, provider = COALESCE(?, provider),"
                " model = COALESCE(?, model),"
                " title = CASE WHEN title = '' AND ? = 'user' THEN ? ELSE title END"
                " WHERE id = ?",
                (now, provider, model, role, make_title(content), session_id),
            )
            if cursor.lastrowid is None:  # pragma: no cover - sqlite always sets it
                raise StorageError("the message was not stored")
            return cursor.lastrowid

    def messages(self, session_id: str) -> list[StoredMessage]:
        rows = self._read("SELECT * FROM messages WHERE session_id = ? ORDER BY id", (session_id,))
        return [_message(row) for row in rows]

    def delete_messages(self, message_ids: Iterable[int]) -> None:
        with self._write() as db:
            for message_id in message_ids:
                db.execute("DELETE FROM messages WHERE id = ?", (message_id,))

    def search(self, text: str, limit: int | None = None) -> list[SearchHit]:
        """Messages containing ``text`` (case-insensitive), newest first, with the matching line."""
        if not text.strip():
            raise UsageError("search for what? give some text")
        rows = self._read(
            "SELECT * FROM messages WHERE instr(lower(content), lower(?)) > 0"
            " ORDER BY created_at DESC, id DESC" + (" LIMIT ?" if limit else ""),
            (text, limit) if limit else (text,),
        )
        hits: list[SearchHit] = []
        sessions: dict[str, Session] = {}
        needle = text.lower()
        for row in rows:
            message = _message(row)
            if message.session_id not in sessions:
                sessions[message.session_id] = self.get(message.session_id)
            line = next(
                (ln for ln in message.content.splitlines() if needle in ln.lower()),
                message.content.splitlines()[0] if message.content else "",
            )
            hits.append(SearchHit(sessions[message.session_id], message, line.strip()))
        return hits


_SESSION_QUERY: Final = (
    "SELECT s.*, COUNT(m.id) AS message_count FROM sessions s"
    " LEFT JOIN messages m ON m.session_id = s.id"
)


def _session(row: sqlite3.Row) -> Session:
    return Session(
        id=row["id"],
        name=row["name"],
        title=row["title"],
        system=row["system"],
        provider=row["provider"],
        model=row["model"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        message_count=row["message_count"],
    )


def _message(row: sqlite3.Row) -> StoredMessage:
    return StoredMessage(
        id=row["id"],
        session_id=row["session_id"],
        role=row["role"],
        content=row["content"],
        provider=row["provider"],
        model=row["model"],
        created_at=row["created_at"],
        duration=row["duration"],
        status=row["status"],
        error=row["error"],
    )


def _like_prefix(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _statements(script: str) -> list[str]:
    return [part.strip() for part in script.split(";") if part.strip()]
