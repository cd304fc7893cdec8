"""``ask -f``: files, directories (a real git repository's ignores), globs and stdin as context,
and ``--dry-run`` showing what would be sent."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from chatcli.files import Item, gather, walk
from tests.conftest import Isolated, run, run_binary
from tests.servers import FakeOpenAI

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs git (apt install git)")


def ask(fake: FakeOpenAI, *args: str) -> list[str]:
    return ["ask", "-p", "ollama", "-m", "m", "--base-url", fake.base_url, *args]


def sent(fake: FakeOpenAI) -> str:
    content: str = fake.requests[-1].body["messages"][-1]["content"]
    return content


def make_repo(root: Path) -> Path:
    """A git work tree: code, docs in a folder, ignored and excluded files, a binary, a big
    file, and a symlink loop."""
    repo = root / "repo"
    (repo / "sub" / "deeper").mkdir(parents=True)
    (repo / "a.py").write_text("print('a')\n")
    (repo / "sub" / "b.md").write_text("# B\n")
    (repo / "sub" / "deeper" / "c.rs").write_text("fn main() {}\n")
    (repo / "debug.log").write_text("noise\n")
    (repo / "secret.txt").write_text("do not send\n")
    (repo / "image.bin").write_bytes(b"\x89PNG\r\n\x00\x00binary")
    (repo / "big.txt").write_text("x" * 300_000)
    (repo / "sub" / "loop").symlink_to("..")  # a directory link back up: a loop
    (repo / ".gitignore").write_text("*.log\n")
    git = ["git", "-c", "user.email=t@e", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q", str(repo)], check=True)
    (repo / ".git" / "info" / "exclude").write_text("secret.txt\n")
    subprocess.run([*git, "-C", str(repo), "add", "a.py"], check=True)
    return repo


@needs_git
def test_a_directory_in_a_git_repository_is_sent_as_git_sees_it(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    repo = make_repo(isolated.root)
    result = run([*ask(fake, "-f", str(repo), "review this")], isolated)
    assert result.returncode == 0, result.stderr
    message = sent(fake)
    # Tracked and untracked files alike, each fenced under its path, then the question.
    assert f"{repo}/a.py\n```python\nprint('a')\n```" in message
    assert f"{repo}/sub/b.md\n```markdown\n# B\n```" in message
    assert f"{repo}/sub/deeper/c.rs\n```rust\nfn main() {{}}\n```" in message
    assert message.endswith("\n\nreview this")
    # Ignored (.gitignore) and excluded (.git/info/exclude) files never leave.
    assert "noise" not in message and "do not send" not in message
    # What was left out, and why, is one line.
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("chatcli: left out: ")
    assert "image.bin (binary)" in lines[0]
    assert "big.txt (293 KiB, over the per-file 256 KiB)" in lines[0]
    assert "loop (not a regular file)" in lines[0]


def test_outside_a_repository_a_walk_follows_no_link_and_skips_hidden_entries(
    tmp_path: Path,
) -> None:
    (tmp_path / "d" / ".hidden").mkdir(parents=True)
    (tmp_path / "d" / ".hidden" / "x.txt").write_text("x")
    (tmp_path / "d" / ".env").write_text("KEY=1")
    (tmp_path / "d" / "keep.txt").write_text("k")
    (tmp_path / "d" / "up").symlink_to("..")
    found = walk(str(tmp_path / "d"), {"PATH": ""})  # no git on this PATH: a plain walk
    assert found == [str(tmp_path / "d" / "keep.txt")]  # the link back up is not followed
    gathered = gather([str(tmp_path / "d")], env={"PATH": ""})
    assert [item.source for item in gathered.items] == [str(tmp_path / "d" / "keep.txt")]
    assert gathered.skipped == []


def test_globs_stdin_order_and_the_total_limit(tmp_path: Path) -> None:
    for name in ("one.py", "two.py", "three.txt"):
        (tmp_path / name).write_text(name * 10)
    gathered = gather([str(tmp_path / "*.py"), "-"], stdin="piped text\n", env={})
    assert [i.source for i in gathered.items] == [
        str(tmp_path / "one.py"), str(tmp_path / "two.py"), "(stdin)",
    ]  # fmt: skip
    # A file named twice is sent once; past the total, files are left out and said so.
    capped = gather([str(tmp_path / "one.py"), str(tmp_path)], env={}, max_total=70)
    assert [i.source for i in capped.items] == [str(tmp_path / "one.py")]
    assert all(why == "over the total of 0 KiB" for _, why in capped.skipped)
    with pytest.raises(Exception, match="no file matches"):
        gather([str(tmp_path / "*.none")], env={})
    with pytest.raises(Exception, match="no such file or directory"):
        gather([str(tmp_path / "missing")], env={})


def test_a_fence_is_longer_than_any_backticks_inside() -> None:
    item = Item("notes.md", "text\n```python\ncode\n```\n````\n", "markdown")
    block = item.block()
    assert block.startswith("notes.md\n`````markdown\n") and block.endswith("\n`````")


def test_dry_run_shows_what_would_be_sent_and_sends_and_stores_nothing(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    (isolated.root / "a.py").write_text("print(1)\n")
    plan = run([*ask(fake, "--dry-run", "--json", "-f", "a.py", "explain")], isolated)
    assert plan.returncode == 0, plan.stderr
    data = json.loads(plan.stdout)
    assert (data["provider"], data["model"]) == ("ollama", "m")
    assert data["context"] == [{"source": "a.py", "bytes": 9, "tokens": 3}]
    assert data["messages"][-1]["content"] == "a.py\n```python\nprint(1)\n```\n\nexplain"
    assert data["tokens_estimated"] is True and data["tokens"] == -(-data["bytes"] // 4)
    text = run([*ask(fake, "--dry-run", "-f", "a.py", "explain")], isolated).stdout
    assert "context: a.py  9 bytes  ~3 tokens" in text and "--- user ---" in text
    assert not fake.requests  # nothing sent...
    assert json.loads(run(["sessions", "list", "--json"], isolated).stdout) == []  # ...or kept


@needs_git
def test_the_real_binary_takes_a_directory_and_stdin(fake: FakeOpenAI, isolated: Isolated) -> None:
    repo = make_repo(isolated.root)
    os.remove(repo / "image.bin")
    os.remove(repo / "big.txt")
    os.remove(repo / "sub" / "loop")
    result = run_binary(
        ask(fake, "-f", str(repo / "sub"), "-f", "-", "compare"), isolated, input="from a pipe\n"
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    message = sent(fake)
    assert message.index("b.md") < message.index("c.rs") < message.index("(stdin)")
    assert "(stdin)\n```\nfrom a pipe\n```\n\ncompare" in message


def test_urls_mix_with_files_in_order_and_dry_run_fetches_but_sends_nothing(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    from aiohttp import web

    from tests.servers import AppServer

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="from the web\n", content_type="text/plain")

    app = web.Application()
    app.router.add_get("/notes", page)
    path = isolated.root / "a.py"
    path.write_text("print(1)\n")
    with AppServer(app) as server:
        url = f"{server.url}/notes"
        gathered = gather([url, str(path), url], env=isolated.env)
        # The URL is fetched once (named twice), its item in its place.
        assert [(i.source, i.language) for i in gathered.items] == [
            (url, ""),
            (str(path), "python"),
        ]
        plan = run([*ask(fake, "--dry-run", "--json", "-f", url, "explain")], isolated)
    assert plan.returncode == 0, plan.stderr
    data = json.loads(plan.stdout)
    assert data["context"] == [{"source": url, "bytes": 13, "tokens": 4}]
    assert data["messages"][-1]["content"] == f"{url}\n```\nfrom the web\n```\n\nexplain"
    assert not fake.requests


def test_context_is_kept_once_carried_on_listed_and_exported_whole(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    import sqlite3

    (isolated.root / "notes.md").write_text("# Notes\nremember this\n")
    for session in ("one", "two"):  # the same file given in two sessions
        assert (
            run([*ask(fake, "-S", session, "-f", "notes.md", "summarise")], isolated).returncode
            == 0
        )
    db = sqlite3.connect(isolated.chatcli_home / "data" / "sessions.db")
    assert db.execute("SELECT COUNT(*) FROM context").fetchone()[0] == 1  # stored once
    assert db.execute("SELECT COUNT(*) FROM message_context").fetchone()[0] == 2
    stored = db.execute("SELECT content FROM messages WHERE role = 'user'").fetchall()
    db.close()
    assert stored == [("summarise",), ("summarise",)]  # the question's own text only
    # -S carries it on: the next question's history holds the file, fenced, as first sent.
    assert run([*ask(fake, "-S", "one", "and then?")], isolated).returncode == 0
    history = [m["content"] for m in fake.requests[-1].body["messages"]]
    assert history[0] == "notes.md\n```markdown\n# Notes\nremember this\n```\n\nsummarise"
    assert history[-1] == "and then?"
    # sessions show lists it; an export holds it whole (Markdown fenced, JSON in full).
    shown = run(["sessions", "show", "one"], isolated).stdout
    assert "_context: notes.md (22 bytes)_" in shown and "remember this" not in shown
    exported = run(["sessions", "export", "one", "-o", "-"], isolated).stdout
    assert "notes.md\n```markdown\n# Notes\nremember this\n```" in exported
    data = json.loads(run(["sessions", "show", "one", "--json"], isolated).stdout)
    assert data["messages"][0]["context"] == [
        {"source": "notes.md", "language": "markdown", "content": "# Notes\nremember this\n"}
    ]


def test_config_raises_the_limits(fake: FakeOpenAI, isolated: Isolated) -> None:
    (isolated.root / "big.txt").write_text("y" * 300_000)
    left = run([*ask(fake, "-f", "big.txt", "hi")], isolated)
    assert "big.txt (293 KiB, over the per-file 256 KiB)" in left.stderr
    isolated.write_config("max_file_kib = 512\nmax_context_kib = 1024\n")
    taken = run([*ask(fake, "-f", "big.txt", "hi")], isolated)
    assert taken.returncode == 0 and taken.stderr == ""
    assert "y" * 1000 in sent(fake)
    isolated.write_config("max_file_kib = 0\n")
    bad = run([*ask(fake, "-f", "big.txt", "hi")], isolated)
    assert bad.returncode == 2 and "max_file_kib must be 1 to" in bad.stderr
