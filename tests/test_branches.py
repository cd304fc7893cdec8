"""Branches: ``/retry`` and ``/edit N`` keep the old path, ``/branches`` and ``/switch``,
``-S NAME@N`` on the command line, exports of one branch or all, and the migration of a
database the previous release made (``tests/fakes/sessions-v5.db``, with the listing that
release gave of it)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from chatcli.branches import branches, tree_lines
from chatcli.store import SessionStore, StoredMessage
from chatcli.store.sessions import SCHEMA_VERSION
from tests.conftest import Isolated, run
from tests.servers import FakeOpenAI
from tests.test_repl import ENTER, Harness

OLD_DATABASE = Path(__file__).parent / "fakes" / "sessions-v5.db"
#: How the release that made it listed each session (``store.messages``), by name.
OLD_LISTING = {
    "plain": [
        ("user", "What is Rust?", "complete"),
        ("assistant", "A systems language.", "complete"),
        ("user", "And Go?", "complete"),
        ("assistant", "Also one.", "interrupted"),
    ],
    "together": [
        ("user", "first at once", "complete"),
        ("assistant", "answer to first", "complete"),
        ("user", "second at once", "complete"),
        ("assistant", "answer to second", "complete"),
        ("user", "unanswered", "complete"),
    ],
    "empty": [],
}
CTRL_U = "\x15"  # clears the line before the cursor


def contents(messages: list[StoredMessage]) -> list[str]:
    return [m.content for m in messages]


def sent(fake: FakeOpenAI, index: int = -1) -> list[str]:
    return [m["content"] for m in fake.requests[index].body["messages"]]


# -- the migration ------------------------------------------------------------------------


def test_a_database_of_the_previous_release_keeps_every_session_as_one_branch(
    tmp_path: Path,
) -> None:
    path = tmp_path / "sessions.db"
    shutil.copy(OLD_DATABASE, path)
    os.chmod(path, 0o600)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 5
    store = SessionStore(path)
    for session in store.recent():
        listed = [(m.role, m.content, m.status) for m in store.messages(session.id)]
        assert listed == OLD_LISTING[session.name or ""], session.name
        everything = store.messages(session.id, every_branch=True)
        assert len(branches(everything, store.get(session.id).head)) == (1 if everything else 0)
    plain = store.find("plain")
    messages = store.messages(plain.id)
    assert [m.parent for m in messages] == [None, *(m.id for m in messages[:-1])]
    assert plain.head == messages[-1].id and plain.system == "Be brief."
    assert messages[2].context[0].source == "notes.txt"  # context items came along
    assert store.find("empty").head is None
    # It goes on as before: a new question follows the end of the branch.
    question = store.add_message(plain.id, "user", "And Zig?")
    assert store.messages(plain.id)[-1].parent == messages[-1].id
    assert store.get(plain.id).head == question
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 8


# -- the store -----------------------------------------------------------------------------


def test_retried_answers_and_questions_asked_after_an_earlier_one_make_branches(
    tmp_path: Path,
) -> None:
    store = SessionStore(tmp_path / "s.db")
    session = store.create()
    q1 = store.add_message(session.id, "user", "q1")
    a1 = store.add_message(session.id, "assistant", "a1", reply_to=q1)
    a1b = store.add_message(session.id, "assistant", "a1 again", reply_to=q1)  # /retry
    assert contents(store.messages(session.id)) == ["q1", "a1 again"]
    q2 = store.add_message(session.id, "user", "q2 instead", after=a1)  # -S s@2
    assert contents(store.messages(session.id)) == ["q1", "a1", "q2 instead"]
    everything = store.messages(session.id, every_branch=True)
    found = branches(everything, q2)
    assert [contents(list(b.path)) for b in found] == [
        ["q1", "a1", "q2 instead"],
        ["q1", "a1 again"],
    ]
    assert [b.active for b in found] == [True, False]
    store.set_head(session.id, a1b)
    assert contents(store.messages(session.id)) == ["q1", "a1 again"]
    # Forgetting the end of a branch (/undo) moves the head back; a message another branch
    # goes on from stays (for that branch), the rest is deleted.
    store.set_head(session.id, q2)
    store.forget(session.id, [q2])
    assert contents(store.messages(session.id)) == ["q1", "a1"]
    everything = store.messages(session.id, every_branch=True)
    assert contents(everything) == ["q1", "a1", "a1 again"]
    store.forget(session.id, [q1, a1])  # q1 stays: "a1 again" goes on from it
    assert store.messages(session.id) == [] and store.get(session.id).head is None
    assert contents(store.messages(session.id, every_branch=True)) == ["q1", "a1 again"]
    with pytest.raises(Exception, match="not in this session"):
        store.set_head(session.id, a1)
    # With the active branch empty, a question starts afresh, alone.
    fresh = store.add_message(session.id, "user", "afresh")
    assert contents(store.messages(session.id)) == ["afresh"]
    # A parent from elsewhere (a deleted session's) is not taken: the head is.
    other = store.create()
    stray = store.add_message(other.id, "user", "elsewhere")
    store.add_message(session.id, "user", "next", after=stray)
    assert store.messages(session.id)[-1].parent == fresh


def test_a_loop_in_a_damaged_file_ends_the_branch(tmp_path: Path) -> None:
    store = SessionStore(tmp_path / "s.db")
    session = store.create()
    q = store.add_message(session.id, "user", "q")
    a = store.add_message(session.id, "assistant", "a", reply_to=q)
    with sqlite3.connect(tmp_path / "s.db") as db:
        db.execute("UPDATE messages SET parent = ? WHERE id = ?", (a, q))
    assert contents(store.messages(session.id)) == ["q", "a"]
    everything = store.messages(session.id, every_branch=True)
    assert len(branches(everything, a)) <= 1  # no endless walk, no crash
    assert tree_lines(everything, a) is not None


def message(id: int, parent: int | None, role: str, content: str) -> StoredMessage:
    return StoredMessage(
        id, "s", role, content, None, None, 0.0, None, "complete", None, parent=parent
    )


def test_the_tree_of_a_session() -> None:
    messages = [
        message(1, None, "user", "What is Rust?"),
        message(2, 1, "assistant", "A language."),
        message(3, 2, "user", "Lifetimes?"),
        message(4, 3, "assistant", "Scopes."),
        message(5, 2, "user", "Traits?"),
        message(6, 5, "assistant", "Interfaces."),
        message(7, 5, "assistant", "Like type classes."),
    ]
    assert tree_lines(messages, 6) == [
        "messages 1–2: you: What is Rust?",
        "├─ messages 3–4: you: Lifetimes?  [branch 1]",
        "└─ messages 3: you: Traits?",
        "   ├─ messages 4: answer: Interfaces.  [branch 2 *]",
        "   └─ messages 4: answer: Like type classes.  [branch 3]",
    ]


# -- the REPL --------------------------------------------------------------------------------


def test_retry_keeps_the_old_answer_and_switch_goes_back_to_it(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    harness = Harness(fake, isolated.root)
    fake.pieces = ["first answer"]
    harness.run(f"tell me{ENTER}")
    fake.pieces = ["second answer"]
    out = harness.run(f"/retry{ENTER}/branches{ENTER}/switch 1{ENTER}/history{ENTER}")
    assert "2 branches (* active; /switch N continues on one):" in out
    assert "messages 1: you: tell me" in out
    assert "├─ messages 2: answer: first answer  [branch 1]" in out
    assert "└─ messages 2: answer: second answer  [branch 2 *]" in out
    assert "branch 1: 2 messages; last, answer: first answer" in out
    assert out.rstrip().endswith("2 assistant> first answer")
    fake.pieces = ["third"]
    harness.run(f"and then?{ENTER}")
    assert sent(fake) == ["tell me", "first answer", "and then?"]  # on branch 1 now
    session = harness.conversation.session
    assert session is not None
    stored = harness.stores.sessions.messages(session.id)
    assert contents(stored) == ["tell me", "first answer", "and then?", "third"]


def test_edit_n_asks_a_changed_question_on_a_new_branch(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    harness = Harness(fake, isolated.root)
    harness.run(f"one{ENTER}two{ENTER}three{ENTER}")
    out = harness.run(f"/edit 3{ENTER}{CTRL_U}TWO instead{ENTER}")
    assert "editing question 3" in out
    assert sent(fake) == ["one", "Hello, world!", "TWO instead"]
    session = harness.conversation.session
    assert session is not None
    store = harness.stores.sessions
    assert contents(store.messages(session.id)) == [
        "one",
        "Hello, world!",
        "TWO instead",
        "Hello, world!",
    ]
    found = branches(store.messages(session.id, every_branch=True), store.get(session.id).head)
    assert len(found) == 2 and found[1].active
    assert contents(list(found[0].path))[-2:] == ["three", "Hello, world!"]  # the old one stays
    # The line holds the question to change; Enter on it as it is asks it again.
    harness.run(f"/edit 1{ENTER}{ENTER}")
    assert sent(fake) == ["one"]
    # An answer's number, a number out of range, and a command in between leave things be.
    out = harness.run(f"/edit 2{ENTER}/edit 99{ENTER}/edit 1{ENTER}{CTRL_U}/history{ENTER}")
    assert "message 2 is an answer; /edit 1 changes its question" in out
    assert "/edit N: N is a message number of /history (1 to 2)" in out
    assert "(question 1 left as it was)" in out
    requests = len(fake.requests)
    assert requests == 5


def test_branches_of_an_unsaved_conversation(fake: FakeOpenAI, isolated: Isolated) -> None:
    harness = Harness(fake, isolated.root, save=False)
    out = harness.run(f"hi{ENTER}/branches{ENTER}/switch 1{ENTER}")
    assert "no saved messages yet" in out
    assert "branches are kept in saved sessions" in out


# -- the command line ------------------------------------------------------------------------


def test_session_at_n_continues_from_message_n_and_exports_show_branches(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    base = ["-p", "ollama", "-m", "m", "--base-url", fake.base_url]
    for question in ("q1", "q2"):
        assert run(["ask", *base, "-S", "tree", question], isolated).returncode == 0
    fake.pieces = ["other"]
    result = run(["ask", *base, "-S", "tree@2", "q2b"], isolated)
    assert result.returncode == 0, result.stderr
    assert sent(fake) == ["q1", "Hello, world!", "q2b"]
    shown = run(["sessions", "show", "tree"], isolated).stdout
    assert "## 3 · You\n\nq2b" in shown and "q2\n" not in shown
    everything = run(["sessions", "show", "tree", "--all-branches"], isolated).stdout
    assert "_Branch 1:_" in everything and "## 3 · You\n\nq2\n" in everything
    assert "_Branch 2 (active): messages 1–2 as in branch 1, then:_" in everything
    data = json.loads(
        run(["sessions", "export", "tree", "--format", "json", "--all-branches"], isolated).stdout
    )
    assert len(data["messages"]) == 6
    by_id = {m["id"]: m for m in data["messages"]}
    assert [b["active"] for b in data["branches"]] == [False, True]
    active = data["branches"][1]["messages"]
    assert [by_id[i]["content"] for i in active] == ["q1", "Hello, world!", "q2b", "other"]
    assert data["session"]["head"] == active[-1]
    # Continuing goes on from the active branch; a name with @ in it is still a name.
    fake.pieces = ["Hello, world!"]
    assert run(["ask", *base, "-S", "tree", "q3"], isolated).returncode == 0
    assert sent(fake)[-2:] == ["other", "q3"]
    assert run(["ask", *base, "-S", "me@home", "hi"], isolated).returncode == 0
    assert run(["sessions", "show", "me@home"], isolated).returncode == 0
    # Errors: no such session, a message number past the end, and --no-save.
    missing = run(["ask", *base, "-S", "nope@1", "x"], isolated)
    assert missing.returncode == 2 and "no session 'nope'" in missing.stderr
    past = run(["ask", *base, "-S", "tree@99", "x"], isolated)
    assert past.returncode == 2 and "there is no message 99" in past.stderr
    unsaved = run(["ask", *base, "--no-save", "-S", "tree@1", "x"], isolated)
    assert unsaved.returncode == 2 and "not with --no-save" in unsaved.stderr


def test_edit_n_on_a_real_terminal(fake: FakeOpenAI, isolated: Isolated) -> None:
    from tests.test_repl_terminal import Terminal

    env = {**isolated.env, "TERM": "xterm-256color"}
    args = ["repl", "-p", "ollama", "-m", "m", "--base-url", fake.base_url, "-S", "t"]
    terminal = Terminal(args, env)
    try:
        terminal.wait_prompt()
        terminal.type("cats or dogs?\r")
        terminal.wait_for("Hello, world!")
        terminal.wait_prompt()
        terminal.type("/edit 1\r")
        terminal.wait_for("> cats or dogs?")  # the question is on the line, to change
        terminal.type("\x7f" * 5 + "birds?\r")  # five backspaces take "dogs?" away
        terminal.wait_for("> cats or birds?\nHello, world!")
        terminal.wait_prompt()
        terminal.type("/branches\r")
        terminal.wait_for("[branch 2 *]")
        terminal.type("\x04")
        assert terminal.wait_exit() == 0
    finally:
        terminal.close()
    assert sent(fake) == ["cats or birds?"]


# -- branch edges a review found ---------------------------------------------------------------


def three_exchanges(harness: Harness) -> str:
    """q1..q3 answered A1..A3 in a saved session; returns its id."""
    for index in (1, 2, 3):
        harness.fake.pieces = [f"A{index}"]
        harness.run(f"q{index}{ENTER}")
    session = harness.conversation.session
    assert session is not None
    return session.id


def reopened_at(harness: Harness, session_id: str, count: int) -> None:
    """As ``repl -S NAME@count``: the session loaded, a branch to start after message count."""
    store = harness.stores.sessions
    harness.conversation.load(store.get(session_id))
    harness.conversation.branch_at(count)


def active(harness: Harness, session_id: str) -> list[str]:
    return contents(harness.stores.sessions.messages(session_id))


def every_path(harness: Harness, session_id: str) -> list[list[str]]:
    store = harness.stores.sessions
    found = branches(store.messages(session_id, every_branch=True), store.get(session_id).head)
    return [contents(list(b.path)) for b in found]


ORIGINAL = ["q1", "A1", "q2", "A2", "q3", "A3"]


def test_undo_of_the_only_exchange_of_a_branch_starts_afresh(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    harness = Harness(fake, isolated.root)
    fake.pieces = ["A1"]
    harness.run(f"q1{ENTER}")
    fake.pieces = ["A1b"]
    harness.run(f"/retry{ENTER}")
    fake.pieces = ["E"]
    harness.run(f"/edit 1{ENTER}{CTRL_U}edited{ENTER}")
    fake.pieces = ["F"]
    out = harness.run(f"/undo{ENTER}follow{ENTER}")
    assert sent(fake) == ["follow"]  # no answers of other branches in a row
    assert "added to this session elsewhere" not in out
    session = harness.conversation.session
    assert session is not None
    assert active(harness, session.id) == ["follow", "F"]
    assert ["q1", "A1"] in every_path(harness, session.id)


def test_retry_on_a_branch_started_at_n_ends_that_branch(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    harness = Harness(fake, isolated.root)
    session_id = three_exchanges(harness)
    reopened_at(harness, session_id, 4)
    fake.pieces = ["A2 new"]
    harness.run(f"/retry{ENTER}")
    fake.pieces = ["N"]
    harness.run(f"next{ENTER}")
    assert sent(fake) == ["q1", "A1", "q2", "A2 new", "next"]
    assert active(harness, session_id) == ["q1", "A1", "q2", "A2 new", "next", "N"]
    assert ORIGINAL in every_path(harness, session_id)  # untouched


def test_retry_never_moves_another_branch_under_its_answer(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    harness = Harness(fake, isolated.root)
    session_id = three_exchanges(harness)
    reopened_at(harness, session_id, 1)  # after q1 alone: a question asked again
    fake.pieces = ["x answer"]
    harness.run(f"x{ENTER}")  # a branch: q1, x
    reopened_at(harness, session_id, 1)
    fake.pieces = ["A1 again"]
    harness.run(f"/retry{ENTER}")
    paths = every_path(harness, session_id)
    assert ORIGINAL in paths and ["q1", "x", "x answer"] in paths
    assert ["q1", "A1 again"] in paths
    assert active(harness, session_id) == ["q1", "A1 again"]


def test_undo_on_a_branch_started_at_n_keeps_the_old_branch(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    harness = Harness(fake, isolated.root)
    session_id = three_exchanges(harness)
    reopened_at(harness, session_id, 4)
    fake.pieces = ["N"]
    harness.run(f"/undo{ENTER}next{ENTER}")
    assert sent(fake) == ["q1", "A1", "next"]
    assert active(harness, session_id) == ["q1", "A1", "next", "N"]
    assert ORIGINAL in every_path(harness, session_id)  # q2 and A2 stay for it


def test_an_edit_after_the_session_was_deleted_elsewhere_saves_one_branch(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    harness = Harness(fake, isolated.root)
    session_id = three_exchanges(harness)
    harness.stores.sessions.delete([session_id])  # another process
    fake.pieces = ["changed answer"]
    harness.run(f"/edit 3{ENTER}{CTRL_U}q2 changed{ENTER}")
    assert sent(fake) == ["q1", "A1", "q2 changed"]
    session = harness.conversation.session
    assert session is not None and session.id != session_id
    assert active(harness, session.id) == ["q1", "A1", "q2 changed", "changed answer"]


def test_all_branches_of_an_old_database_read_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "sessions.db"
    shutil.copy(OLD_DATABASE, path)
    os.chmod(path, 0o600)
    monkeypatch.setattr(SessionStore, "_not_writable", lambda self: "read-only here")
    store = SessionStore(path)
    together = store.find("together")
    everything = store.messages(together.id, every_branch=True)
    assert not store.branched and store.read_only
    found = branches(everything, everything[-1].id)
    assert len(found) == 1 and found[0].active
    assert [(m.role, m.content, m.status) for m in found[0].path] == OLD_LISTING["together"]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 5  # left as it was
