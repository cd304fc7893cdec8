"""Conversations in one SQLite database (``DATA/sessions.db``).

* WAL journal and a busy timeout, so several chatcli processes can write at once; every write
  is one short ``BEGIN IMMEDIATE`` transaction (never held across network I/O).
* The schema is versioned with ``PRAGMA user_version`` and migrated forward under an exclusive
  lock at open; a database from a newer chatcli is refused, never touched.
* The file is created 0600 (SQLite gives its ``-wal`` and ``-shm`` files the same mode), by
  chatcli, never through a symbolic link: a link at the database or its ``-wal``, ``-shm`` or
  ``-journal`` names is refused, and SQLite is never asked to create a file.
* A damaged or locked database is an error that names the file; it is never overwritten.
* Where the database cannot be written (a read-only directory or file: a snapshot, a mounted
  backup), it is opened read-only (``mode=ro``; ``immutable=1`` when the WAL index cannot be
  made) with no migration and no journal change: reading works, and a write is one error line.
  A database that does not exist there reads as empty.

Messages record role, text, provider, model, time, duration and status (``complete``,
``interrupted`` or ``error``). No secret is ever stored: keys and cookies are not part of a turn.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import sqlite3
import time
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import quote

from chatcli.errors import StorageError, UsageError
from chatcli.files import Item
from chatcli.store.files import (
    FILE_MODE,
    UNWRITABLE_ERRNOS,
    check_own_file,
    check_tree,
    link_error,
    private_dir,
)

log = logging.getLogger("chatcli.store")

#: How an answer ended: ``complete``; cut by a limit (``length``: the token limit, ``context``:
#: the model's context, ``content_filter``: the service withheld the rest, ``repetition``:
#: chatcli stopped a model repeating itself); ``interrupted`` (Ctrl-C, a signal, a dropped
#: stream); ``error`` (failed before any text). A question is ``complete``.
Status = Literal[
    "complete", "length", "context", "content_filter", "repetition", "interrupted", "error"
]

#: How long a writer waits for another process's transaction (milliseconds).
BUSY_TIMEOUT_MS: Final = 10_000
#: Longest automatic title, in characters.
TITLE_LENGTH: Final = 60
#: Shortest id prefix accepted when addressing a session.
MIN_PREFIX: Final = 4
#: The largest row count SQLite takes as a limit (a larger one, say ``-n 1e30``, means all).
MAX_LIMIT: Final = 2**63 - 1
#: Longest session name, in characters.
NAME_LENGTH: Final = 100
#: Unicode categories a session name may not hold: control characters (a tab would break
#: ``sessions list``'s columns) and line or paragraph separators.
_NAME_FORBIDDEN: Final = frozenset({"Cc", "Zl", "Zp"})
#: The files SQLite keeps next to the database.
_COMPANIONS: Final = ("-wal", "-shm", "-journal")
#: SQLite's words, while opening, for a database it cannot write or open here (a read-only
#: place; a full disk fails making the WAL index with "disk I/O error"): it is then read-only.
_READ_ONLY_WORDS: Final = ("readonly", "read-only", "unable to open", "disk is full", "disk I/O")

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
    # 2: an answer's status says why it ended (SQLite cannot widen a CHECK: the table is
    # rebuilt, rows and ids kept, and ids go on from where they were). Messages whose session
    # is gone (deleted with foreign keys off, say in the sqlite3 shell) cannot be reached:
    # they are not carried over, or the rebuild would fail on them.
    """
    CREATE TABLE messages_v2 (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id  TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        role        TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
        content     TEXT NOT NULL,
        provider    TEXT,
        model       TEXT,
        created_at  REAL NOT NULL,
        duration    REAL,
        status      TEXT NOT NULL DEFAULT 'complete'
                    CHECK (status IN ('complete', 'length', 'context', 'content_filter',
                                      'repetition', 'interrupted', 'error')),
        error       TEXT
    );
    INSERT INTO messages_v2 (id, session_id, role, content, provider, model, created_at,
                             duration, status, error)
        SELECT id, session_id, role, content, provider, model, created_at, duration, status,
               error FROM messages WHERE session_id IN (SELECT id FROM sessions);
    INSERT INTO sqlite_sequence (name, seq)
        SELECT 'messages_v2', 0 WHERE NOT EXISTS
            (SELECT 1 FROM sqlite_sequence WHERE name = 'messages_v2');
    UPDATE sqlite_sequence SET seq = MAX(seq, COALESCE(
        (SELECT seq FROM sqlite_sequence WHERE name = 'messages'), 0))
        WHERE name = 'messages_v2';
    DROP TABLE messages;
    ALTER TABLE messages_v2 RENAME TO messages;
    CREATE INDEX messages_by_session ON messages (session_id, id);
    """,
    # 3: an answer names the question it answers, so that answers to questions asked at the
    # same time from several processes each follow their own question.
    """
    ALTER TABLE messages ADD COLUMN reply_to INTEGER REFERENCES messages(id) ON DELETE CASCADE;
    """,
    # 4: what an answer cost and how it came: the model's reasoning (kept apart from the answer,
    # never sent back), its token counts (``usage_estimated``: counted by chatcli, not the
    # service) and the seconds to its first piece.
    """
    ALTER TABLE messages ADD COLUMN reasoning TEXT;
    ALTER TABLE messages ADD COLUMN input_tokens INTEGER;
    ALTER TABLE messages ADD COLUMN output_tokens INTEGER;
    ALTER TABLE messages ADD COLUMN usage_estimated INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE messages ADD COLUMN first_token REAL;
    """,
    # 5: context items (-f files, pages, piped text) are kept once, by their content's hash
    # (the same file given in ten sessions is one row), and each question names the items it
    # carried, in order.
    """
    CREATE TABLE context (
        hash        TEXT PRIMARY KEY,
        source      TEXT NOT NULL,
        language    TEXT NOT NULL DEFAULT '',
        content     TEXT NOT NULL
    );
    CREATE TABLE message_context (
        message_id  INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        position    INTEGER NOT NULL,
        hash        TEXT NOT NULL REFERENCES context(hash),
        PRIMARY KEY (message_id, position)
    );
    CREATE INDEX message_context_by_hash ON message_context (hash);
    """,
    # 6: the template (role) a session uses, as JSON: its name and its variables' values.
    """
    ALTER TABLE sessions ADD COLUMN template TEXT;
    """,
    # 7: branches. Each message names its parent (the message before it on its path; an
    # answer's is its question), and a session names its head, the last message of the active
    # branch. Existing sessions become one branch each, in the order they were shown.
    """
    ALTER TABLE messages ADD COLUMN parent INTEGER;
    ALTER TABLE sessions ADD COLUMN head INTEGER;
    CREATE TEMP TABLE chain AS SELECT id, session_id, LAG(id) OVER (
        PARTITION BY session_id ORDER BY COALESCE(reply_to, id), id) AS previous,
        ROW_NUMBER() OVER (PARTITION BY session_id ORDER BY COALESCE(reply_to, id) DESC,
        id DESC) AS from_end FROM messages;
    CREATE INDEX temp.chain_by_id ON chain (id);
    CREATE INDEX temp.chain_by_end ON chain (session_id, from_end);
    UPDATE messages SET parent = (SELECT previous FROM chain WHERE chain.id = messages.id);
    UPDATE sessions SET head = (SELECT id FROM chain
        WHERE chain.session_id = sessions.id AND from_end = 1);
    DROP TABLE temp.chain;
    CREATE INDEX messages_by_parent ON messages (parent);
    """,
    # 8: the tools an answer called on the way: its rounds of calls and their results, as
    # JSON (see chatcli.turn.rounds_json), sent back with the history as the protocols want.
    """
    ALTER TABLE messages ADD COLUMN tools TEXT;
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
    #: The template in use (``chatcli.templates.Applied.stored``), or ``None``.
    template: str | None = None
    #: The last message of the active branch (``None``: no messages, or an old database).
    head: int | None = None

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
    #: The question an answer answers (``None`` for a question, and for answers stored
    #: before chatcli linked them).
    reply_to: int | None = None
    #: What the model thought before answering (never sent back to it).
    reasoning: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    #: The counts are chatcli's estimate: the service gave none.
    usage_estimated: bool = False
    #: Seconds from the request to the answer's first piece.
    first_token: float | None = None
    #: For a question: the context items it carried (files, pages, piped text), in order.
    context: tuple[Item, ...] = ()
    #: The message before this one on its branch (``None``: the first, or an old database).
    parent: int | None = None
    #: For an answer that called tools: its rounds of calls and results, as JSON (see
    #: :func:`chatcli.turn.rounds_json`).
    tools: str | None = None


@dataclass(frozen=True, slots=True)
class UsageRow:
    """Answers of one provider and model: how many, and their tokens."""

    provider: str
    model: str
    turns: int
    input_tokens: int
    output_tokens: int
    #: Answers whose counts are chatcli's estimate, and answers with no counts at all.
    estimated: int
    uncounted: int


@dataclass(frozen=True, slots=True)
class SearchHit:
    session: Session
    message: StoredMessage
    line: str


def check_session_name(name: str) -> str:
    """``name`` without surrounding spaces, when it can name a session: not empty, at most
    :data:`NAME_LENGTH` characters, no control character. Else one :class:`UsageError` line."""
    name = name.strip()
    if not name:
        raise UsageError("a session name cannot be empty")
    if len(name) > NAME_LENGTH:
        raise UsageError(f"a session name is at most {NAME_LENGTH} characters, not {len(name)}")
    bad = next((c for c in name if unicodedata.category(c) in _NAME_FORBIDDEN), None)
    if bad is not None:
        raise UsageError(f"a session name cannot hold control characters (it has {bad!a})")
    return name


def make_title(text: str) -> str:
    """A title from a first message: its first non-empty line, one-spaced, cut to length.

    Only the message's start is read: a long message (a piped file) costs no more than a short.
    """
    text = text[: TITLE_LENGTH * 20]
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    line = " ".join(line.split())
    if len(line) > TITLE_LENGTH:
        line = line[: TITLE_LENGTH - 1].rstrip() + "…"
    return line


class SessionStore:
    """The session database. Opens (and migrates) on first use; one connection per store.

    ``base``: the top of chatcli's tree the database is in (the data directory; by default the
    database's own directory). ``read_only`` says why, once opened, the database could only be
    opened for reading (``None``: it is writable).
    """

    def __init__(
        self, path: Path, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS, base: Path | None = None
    ) -> None:
        self.path = path
        self.base = base if base is not None else path.parent
        self.busy_timeout_ms = busy_timeout_ms
        self.read_only: str | None = None
        #: Whether answers name their question (schema 3); an older database read where it
        #: cannot be upgraded lists its messages in the order they were written.
        self._linked = True
        #: Whether messages name their parent and sessions their head (schema 7).
        self._branched = True
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
        self._check_files()
        reason = self._not_writable()
        if reason is None:
            try:
                return self._open_writable()
            except _ReadOnlyError as exc:
                reason = str(exc)
        self.read_only = reason
        return self._open_read_only()

    def _check_files(self) -> None:
        """Refuse links (and files of others) at the database's names before SQLite opens one:
        SQLite follows links, and would create a database (or its journal) wherever one led."""
        if not check_tree(self.path.parent, self.base):
            return
        check_own_file(self.path)
        for suffix in _COMPANIONS:
            companion = self.path.with_name(self.path.name + suffix)
            if companion.is_symlink():
                raise link_error(companion)

    def _not_writable(self) -> str | None:
        """Why the database cannot be written here, or ``None``. The kernel's answer
        (``access``): a read-only mount or an immutable file is read-only even to root."""
        if self.path.exists():
            for place in (self.path, self.path.parent):  # WAL makes files next to it
                if not os.access(place, os.W_OK):
                    return f"{place} is not writable"
            return None
        place = self.path.parent
        while not place.exists() and place != place.parent:
            place = place.parent
        return None if os.access(place, os.W_OK) else f"{place} is not writable"

    def _open_writable(self) -> sqlite3.Connection:
        try:
            private_dir(self.path.parent, base=self.base)
            self._create()
        except StorageError as exc:
            if isinstance(exc.__cause__, OSError) and exc.__cause__.errno in UNWRITABLE_ERRNOS:
                raise _ReadOnlyError(str(exc)) from exc
            raise
        db = self._connect("rw")
        try:
            # Refuse a newer schema before anything (even the journal mode) changes the file.
            self._check_not_newer(db.execute("PRAGMA user_version").fetchone()[0])
            self._prepare(db)
        except sqlite3.Error as exc:
            db.close()
            if any(word in str(exc) for word in _READ_ONLY_WORDS):
                raise _ReadOnlyError(f"{self.path}: {exc}") from exc
            raise self._error("cannot use", exc) from exc
        except BaseException:
            db.close()
            raise
        return db

    def _create(self) -> None:
        """Create the file owner-only before SQLite opens it (the umask's say removed), never
        through a link; SQLite itself never creates it (``mode=rw``)."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
        except FileExistsError:
            return
        except OSError as exc:
            raise StorageError(f"cannot create {self.path}: {exc.strerror or exc}") from exc
        try:
            os.fchmod(fd, FILE_MODE)
        finally:
            os.close(fd)

    def _open_read_only(self) -> sqlite3.Connection:
        """The database for reading only: no file made, no migration, no journal change."""
        if not self.path.exists():
            return self._empty()
        try:
            return self._open_for_reading("ro")
        except sqlite3.OperationalError as exc:
            if "unable to open" not in str(exc) and "disk I/O" not in str(exc):
                raise self._error("cannot open", exc) from exc
        # With no WAL index (-shm) and no room or right to make one, SQLite cannot open a WAL
        # database read-only; as no one can write here, it is read as it is.
        self._warn_unread_wal()
        try:
            return self._open_for_reading("ro&immutable=1")
        except sqlite3.Error as exc:
            raise self._error("cannot open", exc) from exc

    def _open_for_reading(self, mode: str) -> sqlite3.Connection:
        db = self._connect(mode)
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            self._check_not_newer(version)
            if version == 0:  # made, never migrated: nothing was saved in it
                db.close()
                return self._empty()
            # An older schema is read as it is (a snapshot taken before an upgrade).
            columns = {row[1] for row in db.execute("PRAGMA table_info(messages)")}
            self._linked = "reply_to" in columns
            self._branched = "parent" in columns
            db.execute("SELECT COUNT(*) FROM sessions").fetchone()
        except BaseException:
            db.close()
            raise
        return db

    def _warn_unread_wal(self) -> None:
        wal = self.path.with_name(self.path.name + "-wal")
        if wal.exists() and wal.stat().st_size > 0:
            log.warning(
                "%s cannot be read here (read-only or full); the newest changes it holds are "
                "not shown",
                wal,
            )

    def _connect(self, mode: str) -> sqlite3.Connection:
        uri = f"file:{quote(str(self.path))}?mode={mode}"
        try:
            db = sqlite3.connect(
                uri, uri=True, timeout=self.busy_timeout_ms / 1000, isolation_level=None
            )
        except sqlite3.Error as exc:
            if mode == "rw" and any(word in str(exc) for word in _READ_ONLY_WORDS):
                raise _ReadOnlyError(f"{self.path}: {exc}") from exc
            raise self._error("cannot open", exc) from exc
        db.row_factory = sqlite3.Row
        db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        db.execute("PRAGMA foreign_keys = ON")
        return db

    def _empty(self) -> sqlite3.Connection:
        """An empty database in memory: what a read of a database that is not there sees."""
        db = sqlite3.connect(":memory:", isolation_level=None)
        db.row_factory = sqlite3.Row
        for script in MIGRATIONS:
            db.executescript(script)
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
        if self.read_only is not None:
            raise StorageError(
                f"cannot write to the session database {self.path}: it could only be opened for "
                f"reading here ({self.read_only})"
            )
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
        template: str | None = None,
        reuse_name: bool = False,
    ) -> Session:
        """A new session. With ``reuse_name``, a session already so named (say, created by
        another ``ask -S NAME`` a moment ago) is returned instead of an error."""
        now = time.time()
        if name is not None:
            name = check_session_name(name)
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
                "INSERT INTO sessions (id, name, title, system, provider, model, template,"
                " created_at, updated_at) VALUES (?, ?, '', ?, ?, ?, ?, ?, ?)",
                (session_id, name, system, provider, model, template, now, now),
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
        if rows and len(ref) < MIN_PREFIX:
            raise UsageError(
                f"no session named {ref!r}, and {ref!r} is too short for an id prefix: give at "
                f"least {MIN_PREFIX} characters of the id"
            )
        if len(rows) == 1:
            return _session(rows[0])
        if len(rows) > 1:
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
            params = (min(limit, MAX_LIMIT),)
        return [_session(row) for row in self._read(sql, params)]

    def exists(self, session_id: str) -> bool:
        return bool(self._read("SELECT 1 FROM sessions WHERE id = ?", (session_id,)))

    def _check_name(self, name: str) -> None:
        if self._read("SELECT 1 FROM sessions WHERE id = ?", (name.lower(),)):
            raise UsageError(f"{name!r} is another session's id; choose another name")

    def rename(self, session_id: str, name: str) -> Session:
        name = check_session_name(name)
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

    def set_template(self, session_id: str, system: str | None, template: str | None) -> None:
        """The template a session uses from now on, and its system prompt, together."""
        with self._write() as db:
            db.execute(
                "UPDATE sessions SET system = ?, template = ? WHERE id = ?",
                (system, template, session_id),
            )

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
        reply_to: int | None = None,
        reasoning: str | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        usage_estimated: bool = False,
        first_token: float | None = None,
        context: Sequence[Item] = (),
        after: int | Literal["head"] | None = "head",
        retried: bool = False,
        tools: str | None = None,
    ) -> int:
        """Append a message and touch its session, in one transaction. Returns the message id.

        An answer (``reply_to``: its question's id) sets the session's provider and model, as
        one pair: the session then continues with what last answered. A question changes
        neither, so a question that fails (a provider not running) rewrites nothing.

        Branches: a question follows the session's head (the end of the active branch), or
        ``after`` that message of the session (``None``: at the start) to begin a new branch;
        it becomes the head. An answer follows its question and becomes the head, unless its
        question had no answer yet and other questions were asked after it meanwhile (``ask``
        in two terminals at once): then it goes in before them, so that every answer follows
        its own question. An answer ``retried`` (``/retry``), or to a question that has one
        already, is the head: the old answer stays on its own branch.
        """
        now = time.time()
        answer = role == "assistant"
        with self._write() as db:
            head = db.execute("SELECT head FROM sessions WHERE id = ?", (session_id,)).fetchone()
            head = head[0] if head is not None else None
            if answer:
                parent = reply_to if reply_to is not None else head
            elif after == "head" or (
                after is not None
                and db.execute(
                    "SELECT 1 FROM messages WHERE id = ? AND session_id = ?", (after, session_id)
                ).fetchone()
                is None
            ):
                parent = head  # (a message not in this session, deleted meanwhile: the head)
            else:
                parent = after
            answered = retried or (
                answer
                and parent is not None
                and db.execute(
                    "SELECT 1 FROM messages WHERE parent = ? AND role = 'assistant'", (parent,)
                ).fetchone()
                is not None
            )
            cursor = db.execute(
                "INSERT INTO messages (session_id, role, content, provider, model, created_at,"
                " duration, status, error, reply_to, reasoning, input_tokens, output_tokens,"
                " usage_estimated, first_token, parent, tools)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (session_id, role, content, provider, model, now, duration, status, error,
                 reply_to if answer else None, reasoning or None, input_tokens, output_tokens,
                 int(usage_estimated), first_token, parent, tools if answer else None),
            )  # fmt: skip
            new_head = cursor.lastrowid
            if answer and not answered and parent is not None and head not in (None, parent):
                # Questions came after this one's question: the answer goes before them.
                db.execute(
                    "UPDATE messages SET parent = ? WHERE parent = ? AND role = 'user'"
                    " AND session_id = ? AND id > ?",
                    (new_head, parent, session_id, parent),
                )
                new_head = head
            for position, item in enumerate(context):
                digest = context_hash(item)
                db.execute(
                    "INSERT OR IGNORE INTO context (hash, source, language, content)"
                    " VALUES (?, ?, ?, ?)",
                    (digest, item.source, item.language, item.text),
                )
                db.execute(
                    "INSERT INTO message_context (message_id, position, hash) VALUES (?, ?, ?)",
                    (cursor.lastrowid, position, digest),
                )
            title = make_title(content) if role == "user" else ""
            db.execute(
                "UPDATE sessions SET updated_at = ?, head = ?,"
                " provider = CASE WHEN ? THEN ? ELSE provider END,"
                " model = CASE WHEN ? THEN ? ELSE model END,"
                " title = CASE WHEN title = '' AND ? = 'user' THEN ? ELSE title END"
                " WHERE id = ?",
                (now, new_head, answer, provider, answer, model, role, title, session_id),
            )
            if cursor.lastrowid is None:  # pragma: no cover - sqlite always sets it
                raise StorageError("the message was not stored")
            return cursor.lastrowid

    def messages(self, session_id: str, *, every_branch: bool = False) -> list[StoredMessage]:
        """The messages of the session's active branch, in order (``every_branch``: all its
        messages, oldest first; their ``parent`` says where each goes)."""
        rows = self._rows(session_id, every_branch)
        carried: dict[int, list[Item]] = {}
        if self._has_context():
            for row in self._read(
                "SELECT mc.message_id, c.source, c.language, c.content FROM message_context mc"
                " JOIN context c ON c.hash = mc.hash JOIN messages m ON m.id = mc.message_id"
                " WHERE m.session_id = ? ORDER BY mc.message_id, mc.position",
                (session_id,),
            ):
                carried.setdefault(row[0], []).append(Item(row[1], row[3], row[2]))
        messages = [_message(row, tuple(carried.get(row["id"], ()))) for row in rows]
        if not self._branched:  # one branch, its parents as it is listed
            previous = [None, *(m.id for m in messages[:-1])]
            messages = [replace(m, parent=p) for m, p in zip(messages, previous, strict=True)]
        return messages

    def _rows(self, session_id: str, every_branch: bool) -> list[sqlite3.Row]:
        if not self._branched:
            # An old snapshot read as it is: one branch, each answer right after its question.
            order = "COALESCE(reply_to, id), id" if self._linked else "id"
            return self._read(
                f"SELECT * FROM messages WHERE session_id = ? ORDER BY {order}", (session_id,)
            )
        if every_branch:
            return self._read(
                "SELECT * FROM messages WHERE session_id = ? ORDER BY id", (session_id,)
            )
        found = self._read("SELECT head FROM sessions WHERE id = ?", (session_id,))
        head = found[0][0] if found else None
        if head is None:
            return []  # nothing yet, or every message of the active branch undone
        # From the head up to the first message; a loop (a damaged file) ends where it closes.
        rows = self._read(
            "WITH RECURSIVE path(id, depth) AS (SELECT ?, 0 UNION ALL"
            " SELECT m.parent, path.depth + 1 FROM messages m JOIN path ON m.id = path.id"
            " WHERE m.parent IS NOT NULL AND path.depth <"
            " (SELECT COUNT(*) FROM messages WHERE session_id = ?))"
            " SELECT m.* FROM path JOIN messages m ON m.id = path.id"
            " WHERE m.session_id = ? ORDER BY path.depth DESC",
            (head, session_id, session_id),
        )
        seen: set[int] = set()
        path: list[sqlite3.Row] = []
        for row in reversed(rows):  # from the head back
            if row["id"] in seen:
                break
            seen.add(row["id"])
            path.append(row)
        return path[::-1]

    @property
    def branched(self) -> bool:
        """Whether the database keeps branches (an old one read as it is does not; known
        once it has been read)."""
        return self._branched

    def set_head(self, session_id: str, message_id: int) -> None:
        """Make the branch that ends at (or goes through) ``message_id`` the active one."""
        with self._write() as db:
            found = db.execute(
                "SELECT 1 FROM messages WHERE id = ? AND session_id = ?", (message_id, session_id)
            ).fetchone()
            if found is None:
                raise UsageError(f"message {message_id} is not in this session")
            db.execute("UPDATE sessions SET head = ? WHERE id = ?", (message_id, session_id))

    def _has_context(self) -> bool:
        """Whether the database keeps context items (an old snapshot read as it is may not)."""
        found = self._read("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'context'")
        return bool(found)

    def forget(self, session_id: str, message_ids: Sequence[int]) -> None:
        """Take the last messages of the active branch (``message_ids``, first to last) out of
        it: the head moves to what came before the first. Each is deleted unless another
        branch goes on from it (a ``-S NAME@N`` branch after an answer, the other answer of a
        retried question): that branch keeps it."""
        if not message_ids:
            return
        with self._write() as db:
            first = db.execute(
                "SELECT parent FROM messages WHERE id = ? AND session_id = ?",
                (message_ids[0], session_id),
            ).fetchone()
            if first is None:
                return  # deleted meanwhile
            for message_id in reversed(message_ids):
                kept = db.execute(
                    "SELECT 1 FROM messages WHERE parent = ? LIMIT 1", (message_id,)
                ).fetchone()
                if kept is None:
                    db.execute(
                        "DELETE FROM messages WHERE id = ? AND session_id = ?",
                        (message_id, session_id),
                    )
            db.execute(
                "UPDATE sessions SET head = ? WHERE id = ? AND head IN"
                f" ({', '.join('?' * len(message_ids))})",
                (first[0], session_id, *message_ids),
            )

    def usage(self, since: float | None = None) -> list[UsageRow]:
        """Answers and their tokens per provider and model (since ``since``, a Unix time),
        the most used first. Answers stored before chatcli counted tokens count as turns only."""
        if not self.path.exists():
            return []
        if "input_tokens" not in {row[1] for row in self._read("PRAGMA table_info(messages)")}:
            return []  # an old snapshot read as it is: no counts were kept then
        rows = self._read(
            "SELECT provider, model, COUNT(*) AS turns,"
            " COALESCE(SUM(input_tokens), 0) AS input_tokens,"
            " COALESCE(SUM(output_tokens), 0) AS output_tokens,"
            " SUM(usage_estimated) AS estimated,"
            " SUM(input_tokens IS NULL OR output_tokens IS NULL) AS uncounted"
            " FROM messages WHERE role = 'assistant' AND created_at >= ?"
            " GROUP BY provider, model ORDER BY turns DESC, provider, model",
            (since or 0.0,),
        )
        return [
            UsageRow(
                row["provider"] or "?",
                row["model"] or "",
                row["turns"],
                row["input_tokens"],
                row["output_tokens"],
                row["estimated"] or 0,
                row["uncounted"] or 0,
            )
            for row in rows
        ]

    def search(self, text: str, limit: int | None = None) -> list[SearchHit]:
        """Messages containing ``text`` (case-insensitive), newest first, with the matching line."""
        if not text.strip():
            raise UsageError("search for what? give some text")
        rows = self._read(
            "SELECT * FROM messages WHERE instr(lower(content), lower(?)) > 0"
            " ORDER BY created_at DESC, id DESC" + (" LIMIT ?" if limit else ""),
            (text, min(limit, MAX_LIMIT)) if limit else (text,),
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


class _ReadOnlyError(Exception):
    """The database cannot be opened for writing here; the message says why."""


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
        # A read-only database of an older version has no template column (Row's "in" looks
        # at values, not names).
        template=row["template"] if "template" in row.keys() else None,  # noqa: SIM118
        head=row["head"] if "head" in row.keys() else None,  # noqa: SIM118
    )


def context_hash(item: Item) -> str:
    """What a context item is kept under: its source, language and text, hashed together."""
    digest = hashlib.sha256()
    for part in (item.source, item.language, item.text):
        digest.update(part.encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()


def _message(row: sqlite3.Row, context: tuple[Item, ...] = ()) -> StoredMessage:
    present = row.keys()
    later: dict[str, Any] = {key: row[key] for key in _LATER_COLUMNS if key in present}
    if "usage_estimated" in later:
        later["usage_estimated"] = bool(later["usage_estimated"])
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
        context=context,
        **later,
    )


#: Message columns added after the first schema: read when present (an old snapshot read
#: where it cannot be upgraded has none of them).
_LATER_COLUMNS: Final = (
    "reply_to",
    "reasoning",
    "input_tokens",
    "output_tokens",
    "usage_estimated",
    "first_token",
    "parent",
    "tools",
)


def _like_prefix(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _statements(script: str) -> list[str]:
    return [part.strip() for part in script.split(";") if part.strip()]
