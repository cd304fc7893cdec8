"""The session database: migrations, concurrency, interrupted answers, refusal, modes."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from chatcli.errors import StorageError, UsageError
from chatcli.store.sessions import MIGRATIONS, SCHEMA_VERSION, SessionStore, make_title


@pytest.fixture
def store(tmp_path: Path) -> SessionStore:
    return SessionStore(tmp_path / "data" / "sessions.db")


def test_migrates_an_empty_file_and_a_missing_one(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    for path in (empty, tmp_path / "new" / "sessions.db"):
        store = SessionStore(path)
        session = store.create()
        assert store.get(session.id).id == session.id
        store.close()
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        db.close()


def test_a_first_release_database_is_migrated_keeping_every_row(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    path.touch(mode=0o600)
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0])  # the first release's schema, with its data
    db.execute("INSERT INTO sessions VALUES ('abcdef123456', 'old', 'T', NULL, 'p', 'm', 1, 2)")
    db.executemany(
        "INSERT INTO messages (id, session_id, role, content, created_at, status)"
        " VALUES (?, 'abcdef123456', ?, ?, 1, ?)",
        [(7, "user", "q", "complete"), (9, "assistant", "part", "interrupted"),
         (12, "user", "deleted later", "complete")],
    )  # fmt: skip
    db.execute("DELETE FROM messages WHERE id = 12")  # ids go on from 12, not from 9
    # A message whose session was deleted with foreign keys off (the sqlite3 shell's default).
    db.execute(
        "INSERT INTO messages (session_id, role, content, created_at)"
        " VALUES ('gone', 'user', 'x', 1)"
    )
    db.execute("PRAGMA user_version = 1")
    db.commit()
    with pytest.raises(sqlite3.IntegrityError):  # the old schema cannot say "cut"
        db.execute("UPDATE messages SET status = 'length' WHERE id = 9")
    db.close()
    store = SessionStore(path)
    assert [(m.role, m.content, m.status) for m in store.messages("abcdef123456")] == [
        ("user", "q", "complete"),
        ("assistant", "part", "interrupted"),
    ]
    new = store.add_message("abcdef123456", "assistant", "cut", status="length")
    assert new == 14  # ids carry on where they were (13 went to the orphan, not carried over)
    assert store.messages("abcdef123456")[-1].status == "length"
    with pytest.raises(StorageError):
        store.add_message("abcdef123456", "assistant", "x", status="sideways")  # type: ignore[arg-type]
    store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 2
    assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    db.close()


def test_a_newer_schema_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE future (x)")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(StorageError) as info:
        SessionStore(path).recent()
    assert "newer chatcli" in str(info.value) and str(path) in str(info.value)
    assert path.read_bytes() == before


def test_a_damaged_database_is_a_clear_error_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    path.write_bytes(b"this is not a database at all" * 100)
    before = path.read_bytes()
    with pytest.raises(StorageError) as info:
        SessionStore(path).recent()
    assert "damaged" in str(info.value) and "left untouched" in str(info.value)
    assert path.read_bytes() == before


def test_file_modes_under_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        store = SessionStore(tmp_path / "data" / "sessions.db")
        session = store.create()
        store.add_message(session.id, "user", "hello")
    finally:
        os.umask(old)
    for path in tmp_path.joinpath("data").iterdir():  # sessions.db, -wal, -shm
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(tmp_path.joinpath("data").stat().st_mode) == 0o700


def test_messages_keep_everything_and_interrupted_answers_are_marked(store: SessionStore) -> None:
    session = store.create(system="Be brief", provider="ollama", model="m")
    store.add_message(session.id, "user", "What is a monad?\nExplain.")
    store.add_message(
        session.id, "assistant", "A monad is", provider="ollama", model="m", status="interrupted",
        duration=1.5, error="interrupted",
    )  # fmt: skip
    user, answer = store.messages(session.id)
    assert (user.role, user.content, user.status) == (
        "user",
        "What is a monad?\nExplain.",
        "complete",
    )
    assert (answer.status, answer.duration, answer.provider, answer.model) == (
        "interrupted", 1.5, "ollama", "m",
    )  # fmt: skip
    assert answer.created_at >= user.created_at > 0
    refreshed = store.get(session.id)
    assert refreshed.title == "What is a monad?" and refreshed.message_count == 2
    assert refreshed.system == "Be brief"


def test_find_by_name_id_and_unique_prefix(store: SessionStore) -> None:
    named = store.create(name="work")
    other = store.create()
    assert store.find("work").id == named.id
    assert store.find(other.id).id == other.id
    assert store.find(other.id[:6]).id == other.id
    with pytest.raises(UsageError, match="no session"):
        store.find("nothing-like-it")
    with pytest.raises(UsageError, match="no session"):
        store.find(other.id[:2])  # too short to be a prefix
    with pytest.raises(UsageError, match="already named"):
        store.create(name="work")
    store.rename(other.id, "play")
    assert store.find("play").id == other.id
    with pytest.raises(UsageError, match="already named"):
        store.rename(other.id, "work")


def test_ambiguous_prefix_is_an_error(store: SessionStore) -> None:
    sessions = [store.create() for _ in range(40)]
    first = sessions[0].id[:4]
    matches = [s for s in sessions if s.id.startswith(first)]
    if len(matches) == 1:
        assert store.find(first).id == sessions[0].id
    db = store.db
    db.execute("UPDATE sessions SET id = 'abcd1111aaaa' WHERE id = ?", (sessions[1].id,))
    db.execute("UPDATE sessions SET id = 'abcd2222bbbb' WHERE id = ?", (sessions[2].id,))
    with pytest.raises(UsageError, match="matches several sessions"):
        store.find("abcd")
    assert store.find("abcd1").id == "abcd1111aaaa"


def test_recent_latest_delete_and_search(store: SessionStore) -> None:
    first = store.create()
    store.add_message(first.id, "user", "tell me about SQLite WAL mode")
    second = store.create()
    store.add_message(second.id, "user", "and python?")
    store.add_message(second.id, "assistant", "Python is a language.\nIt has sqlite3 built in.")
    assert [s.id for s in store.recent()] == [second.id, first.id]
    assert store.latest().id == second.id  # type: ignore[union-attr]
    hits = store.search("SQLITE")
    assert [(h.session.id, h.line) for h in hits] == [
        (second.id, "It has sqlite3 built in."),
        (first.id, "tell me about SQLite WAL mode"),
    ]
    assert store.delete([first.id]) == 1
    assert [s.id for s in store.recent()] == [second.id]
    assert store.search("WAL") == []  # messages went with their session


def test_titles() -> None:
    assert make_title("\n\n  Hello   there\nsecond line") == "Hello there"
    long = make_title("word " * 40)
    assert len(long) == 60 and long.endswith("…")


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from chatcli.store.sessions import SessionStore

    path, session_id, tag, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    store = SessionStore(Path(path))
    for i in range(count):
        store.add_message(session_id, "user", f"{tag} question {i}")
        store.add_message(session_id, "assistant", f"{tag} answer {i}", provider="p", model="m")
    print("done", flush=True)
    """
)


def test_two_processes_writing_one_session_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    session = SessionStore(path).create()
    turns = 150
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), session.id, tag, str(turns)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in ("A", "B")
    ]
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0 and out.strip() == "done", err
    messages = SessionStore(path).messages(session.id)
    assert len(messages) == 2 * 2 * turns
    for tag in ("A", "B"):
        mine = [m.content for m in messages if m.content.startswith(tag)]
        expected = [f"{tag} {kind} {i}" for i in range(turns) for kind in ("question", "answer")]
        assert mine == expected  # every turn, in order


def test_an_exact_id_wins_over_a_name_and_ids_cannot_be_names(store: SessionStore) -> None:
    keep = store.create()
    other = store.create()
    with pytest.raises(UsageError, match="another session's id"):
        store.rename(keep.id, other.id)
    with pytest.raises(UsageError, match="another session's id"):
        store.create(name=other.id)
    assert store.find(other.id).id == other.id


def test_a_write_into_a_deleted_session_is_a_clear_error(store: SessionStore) -> None:
    session = store.create()
    store.delete([session.id])
    with pytest.raises(StorageError):
        store.add_message(session.id, "user", "orphan")


def test_reuse_name_returns_the_session_another_process_just_made(store: SessionStore) -> None:
    first = store.create(name="fresh")
    assert store.create(name="fresh", reuse_name=True).id == first.id


OPENER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from chatcli.store.sessions import SessionStore

    store = SessionStore(Path(sys.argv[1]))
    session = store.create(name="fresh", reuse_name=True)
    store.add_message(session.id, "user", sys.argv[2])
    """
)


def test_processes_opening_a_new_database_at_once_all_succeed(tmp_path: Path) -> None:
    # SQLite answers "busy" without waiting to some of them while another switches the new
    # file to WAL or migrates it; they must try again, not fail.
    for round_ in range(5):
        path = tmp_path / f"round{round_}" / "sessions.db"
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", OPENER, str(path), f"writer {i}"],
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(6)
        ]
        for process in processes:
            _, err = process.communicate(timeout=60)
            assert process.returncode == 0, err
        store = SessionStore(path)
        (session,) = store.recent()
        assert sorted(m.content for m in store.messages(session.id)) == [
            f"writer {i}" for i in range(6)
        ]
