"""The built-in tools (chatcli.tools.builtin): what each answers, the limits that keep every
answer bounded, the roots no path may leave, and a shell command stopped whole, with every
process it started, on a timeout or a cancel."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from chatcli.core import ToolCall
from chatcli.errors import UsageError
from chatcli.tools import MAX_RESULT, NAME_PATTERN, Tool, Toolbox, ToolError, ToolResult, builtin
from chatcli.tools.builtin import (
    BUILTIN,
    ListDir,
    ReadFile,
    RunShell,
    SearchText,
    builtin_tools,
)

T = TypeVar("T")


def call(tool: Tool, **arguments: Any) -> ToolResult:
    return asyncio.run(tool.run(arguments))


def refused(tool: Tool, **arguments: Any) -> str:
    """The ToolError message a call gets; it must be one line, for the model."""
    with pytest.raises(ToolError) as info:
        call(tool, **arguments)
    message = str(info.value)
    assert message and "\n" not in message
    return message


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """The working directory, with ``outside`` next to it (not inside)."""
    (tmp_path / "work").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("the secret\n")
    return tmp_path / "work"


# -- read_file ----------------------------------------------------------------------------------


def test_read_file_returns_the_raw_text(work: Path) -> None:
    text = "first\n  second\twith tab\nthird without newline"
    (work / "notes.txt").write_text(text)
    assert call(ReadFile(cwd=work), path="notes.txt") == ToolResult(text)


def test_read_file_replaces_invalid_utf8(work: Path) -> None:
    (work / "latin.txt").write_bytes(b"caf\xe9\n")
    assert call(ReadFile(cwd=work), path="latin.txt").text == "caf\ufffd\n"


def test_read_file_part_says_which_lines(work: Path) -> None:
    (work / "five.txt").write_text("a\nb\nc\nd\ne\n")
    tool = ReadFile(cwd=work)
    assert call(tool, path="five.txt", start_line=2, max_lines=2).text == "[lines 2-3 of 5]\nb\nc\n"
    assert call(tool, path="five.txt", start_line=4).text == "[lines 4-5 of 5]\nd\ne\n"
    assert call(tool, path="five.txt", max_lines=1).text == "[lines 1-1 of 5]\na\n"
    # An unterminated last line is a line.
    (work / "two.txt").write_text("a\nb")
    assert call(tool, path="two.txt", start_line=2).text == "[lines 2-2 of 2]\nb"
    assert "past the end" in refused(tool, path="two.txt", start_line=3)
    assert "2 lines" in refused(tool, path="two.txt", start_line=3)


def test_read_file_empty_file(work: Path) -> None:
    (work / "empty").write_bytes(b"")
    assert call(ReadFile(cwd=work), path="empty").text == "[the file is empty]"


def test_read_file_refuses_binary_files(work: Path) -> None:
    (work / "image.bin").write_bytes(b"\x89PNG\r\n" + b"\0" * 10 + b"data")
    assert "binary" in refused(ReadFile(cwd=work), path="image.bin")
    # Only the first 8 KiB are checked: a NUL further on does not make a text file binary.
    (work / "late.txt").write_bytes(b"x" * (8 * 1024) + b"\0\n")
    assert call(ReadFile(cwd=work), path="late.txt").text.startswith("xxx")


def test_read_file_long_text_stops_within_a_result_and_says_where(work: Path) -> None:
    lines = [f"line {n:05}\n" for n in range(1, 10_001)]  # 110 KB: read whole, shown in part
    (work / "long.txt").write_text("".join(lines))
    text = call(ReadFile(cwd=work), path="long.txt").text
    assert len(text) <= MAX_RESULT  # the Toolbox's cut would take the note
    body, note = text.rsplit("\n", 1)
    last = len(body.splitlines())
    assert body + "\n" == "".join(lines[:last])
    assert note == f"[stopped at line {last} of 10000; read on with start_line={last + 1}]"
    # Reading on continues exactly there.
    more = call(ReadFile(cwd=work), path="long.txt", start_line=last + 1, max_lines=1).text
    assert more == f"[lines {last + 1}-{last + 1} of 10000]\n{lines[last]}"


def test_read_file_reads_at_most_256_kib_of_a_huge_file(work: Path) -> None:
    line = "0123456789" * 9 + "abcdefghi\n"  # 100 bytes
    count = 40_000  # 4 MB
    with (work / "huge.txt").open("w") as file:
        for _ in range(count):
            file.write(line)
    tracemalloc.start()
    try:
        text = call(ReadFile(cwd=work), path="huge.txt").text
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024 * 1024, peak  # the whole file would be 4 MB
    # Past 256 KiB nothing was read, so the count of lines is not known.
    assert builtin.READ_LIMIT == 256 * 1024
    whole_lines = builtin.READ_LIMIT // len(line)
    last = len(text.splitlines()) - 1
    assert text.splitlines()[-1] == (
        f"[stopped at line {last} of more than {whole_lines}; read on with start_line={last + 1}]"
    )
    # A start line far past 256 KiB is reached, without the file held in memory; near the
    # end, the total is known again.
    tail = call(ReadFile(cwd=work), path="huge.txt", start_line=count - 1).text
    assert tail == f"[lines {count - 1}-{count} of {count}]\n{line}{line}"


def test_read_file_a_single_huge_line_is_cut(work: Path) -> None:
    (work / "min.js").write_text("x" * 100_000)
    text = call(ReadFile(cwd=work), path="min.js").text
    assert len(text) <= MAX_RESULT
    assert "[line 1 is too long to show whole" in text


def test_read_file_argument_mistakes(work: Path) -> None:
    (work / "a.txt").write_text("a\n")
    tool = ReadFile(cwd=work)
    assert "'path'" in refused(tool) and "missing" in refused(tool)
    assert "must be a string, not a number" in refused(tool, path=5)
    assert "not a boolean" in refused(tool, path="a.txt", start_line=True)
    assert "not a string" in refused(tool, path="a.txt", max_lines="3")
    assert "1 or more" in refused(tool, path="a.txt", start_line=0)
    assert "no argument 'line'" in refused(tool, path="a.txt", line=3)
    # null is "not given".
    assert call(tool, path="a.txt", start_line=None).text == "a\n"


def test_read_file_not_a_file(work: Path) -> None:
    (work / "sub").mkdir()
    tool = ReadFile(cwd=work)
    assert "directory" in refused(tool, path="sub")
    assert "does not exist" in refused(tool, path="nope.txt")
    os.mkfifo(work / "fifo")
    assert "not a regular file" in refused(tool, path="fifo")  # and it did not block


# -- the roots ----------------------------------------------------------------------------------


@pytest.mark.parametrize("tool_class", [ReadFile, ListDir, SearchText])
def test_paths_outside_the_roots_are_refused(
    work: Path, tool_class: type[ReadFile | ListDir | SearchText]
) -> None:
    tool = tool_class(cwd=work)
    (work / "escape").symlink_to(work.parent / "outside")
    (work / "secret-link.txt").symlink_to(work.parent / "outside" / "secret.txt")
    argument: dict[str, str] = {"text": "secret"} if tool_class is SearchText else {}
    for path in ("../outside/secret.txt", "../outside", str(work.parent / "outside"),
                 "escape", "escape/secret.txt", "secret-link.txt", "/"):  # fmt: skip
        message = refused(tool, path=path, **argument)
        assert message.startswith(f"{path} is outside the working directory"), message
        assert "[tools] paths in config.toml" in message


def test_symlinks_inside_the_roots_and_dotdot_back_inside_are_fine(work: Path) -> None:
    (work / "sub").mkdir()
    (work / "sub" / "a.txt").write_text("inside\n")
    (work / "link.txt").symlink_to(work / "sub" / "a.txt")
    tool = ReadFile(cwd=work)
    assert call(tool, path="link.txt").text == "inside\n"
    assert call(tool, path="sub/../sub/a.txt").text == "inside\n"
    assert call(tool, path=str(work / "sub" / "a.txt")).text == "inside\n"


def test_tilde_is_not_expanded(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(work.parent / "outside"))
    (work / "~").mkdir()
    (work / "~" / "secret.txt").write_text("the one inside\n")
    assert call(ReadFile(cwd=work), path="~/secret.txt").text == "the one inside\n"


def test_roots_widen_what_may_be_read(work: Path) -> None:
    outside = work.parent / "outside"
    for roots in ([outside], [Path("../outside")]):  # a relative root is the cwd's
        tool = ReadFile(cwd=work, roots=roots)
        assert call(tool, path="../outside/secret.txt").text == "the secret\n"
        assert call(tool, path=str(outside / "secret.txt")).text == "the secret\n"
        message = refused(tool, path="../../x")
        assert "outside the working directory and the allowed paths" in message
    listed = call(ListDir(cwd=work, roots=[outside]), path=str(outside)).text
    assert listed == "secret.txt (11 bytes)"
    found = call(SearchText(cwd=work, roots=[outside]), text="secret", path="../outside").text
    assert found == f"{outside}/secret.txt:1: the secret"


# -- list_dir -----------------------------------------------------------------------------------


def test_list_dir_format(work: Path) -> None:
    (work / "b.txt").write_text("12345")
    (work / ".hidden").write_text("")
    (work / "sub").mkdir()
    (work / "a-link").symlink_to(work / "sub")
    (work / "dangling").symlink_to(work / "nowhere")
    (work / "sub" / "inner").write_text("x")
    tool = ListDir(cwd=work)
    expected = ".hidden (0 bytes)\na-link@\nb.txt (5 bytes)\ndangling@\nsub/"
    assert call(tool).text == expected  # path defaults to "."
    assert call(tool, path=".").text == expected
    assert call(tool, path="sub").text == "inner (1 bytes)"
    assert call(tool, path="a-link").text == "inner (1 bytes)"


def test_list_dir_odd_names_stay_on_one_line(work: Path) -> None:
    (work / "two\nlines").write_text("")
    assert call(ListDir(cwd=work)).text == "'two\\nlines' (0 bytes)"


def test_list_dir_caps_at_1000_entries(work: Path) -> None:
    for n in range(1005):
        (work / f"f{n:04}").touch()
    lines = call(ListDir(cwd=work)).text.splitlines()
    assert len(lines) == 1001
    assert lines[0] == "f0000 (0 bytes)" and lines[999] == "f0999 (0 bytes)"
    assert lines[1000] == "[... 5 more entries not listed]"


def test_list_dir_mistakes(work: Path) -> None:
    (work / "a.txt").write_text("")
    (work / "empty").mkdir()
    tool = ListDir(cwd=work)
    assert "not a directory" in refused(tool, path="a.txt")
    assert "does not exist" in refused(tool, path="nope")
    assert call(tool, path="empty").text == "[the directory is empty]"


# -- search_text --------------------------------------------------------------------------------


def test_search_finds_literal_text_not_a_regex(work: Path) -> None:
    (work / "sub").mkdir()
    (work / "top.txt").write_text("nothing\nfind a.*b here\n")
    (work / "sub" / "code.py").write_text("aXXb is no match\nx = (a.*b)\n")
    tool = SearchText(cwd=work)
    assert call(tool, text="a.*b").text == "top.txt:2: find a.*b here\nsub/code.py:2: x = (a.*b)"
    assert call(tool, text="a.*b", path="sub").text == "sub/code.py:2: x = (a.*b)"
    assert call(tool, text="(", path="sub/code.py").text == "sub/code.py:2: x = (a.*b)"
    assert call(tool, text="absent").text == "no match in 2 files"


def test_search_ignore_case(work: Path) -> None:
    (work / "a.txt").write_text("Hello World\nhello world\nHELLO\n")
    tool = SearchText(cwd=work)
    assert call(tool, text="hello").text == "a.txt:2: hello world"
    assert call(tool, text="hello", ignore_case=False).text == "a.txt:2: hello world"
    found = call(tool, text="hELLo", ignore_case=True).text.splitlines()
    assert found == ["a.txt:1: Hello World", "a.txt:2: hello world", "a.txt:3: HELLO"]
    assert "true or false" in refused(tool, text="x", ignore_case="yes")


def test_search_skips_caches_big_and_binary_files(work: Path) -> None:
    for skipped in (".git", "node_modules", "__pycache__", ".venv"):
        (work / skipped).mkdir()
        (work / skipped / "f.txt").write_text("needle\n")
    (work / ".github").mkdir()  # only those names are skipped
    (work / ".github" / "f.txt").write_text("needle\n")
    (work / "big.txt").write_text("needle\n" + "x" * (1024 * 1024))
    (work / "blob.bin").write_bytes(b"needle\0")
    (work / "outside-link").symlink_to(work.parent / "outside")
    (work.parent / "outside" / "f.txt").write_text("needle\n")
    text = call(SearchText(cwd=work), text="needle").text
    assert text == ".github/f.txt:1: needle\n[files not searched: 1 over 1 MiB, 1 binary]"
    # Named outright, a skipped directory is searched.
    assert call(SearchText(cwd=work), text="needle", path=".git").text == ".git/f.txt:1: needle"


def test_search_follows_links_inside_once_and_survives_loops(work: Path) -> None:
    (work / "d").mkdir()
    (work / "d" / "f.txt").write_text("needle\n")
    (work / "d" / "loop").symlink_to(work)
    (work / "file-link.txt").symlink_to(work / "d" / "f.txt")
    text = call(SearchText(cwd=work), text="needle").text
    assert text == "file-link.txt:1: needle\nd/f.txt:1: needle"


def test_search_caps_matches(work: Path) -> None:
    (work / "many.txt").write_text("match\n" * 250)
    (work / "z.txt").write_text("match\n")
    lines = call(SearchText(cwd=work), text="match").text.splitlines()
    assert len(lines) == 201
    assert lines[199] == "many.txt:200: match"
    assert lines[200].startswith("[stopped at 200 matches")


def test_search_caps_files(work: Path) -> None:
    for n in range(5001):
        (work / f"f{n:04}.txt").write_text("x\n")
    (work / "zz.txt").write_text("needle\n")  # after the 5000th in name order
    text = call(SearchText(cwd=work), text="needle").text
    assert text.splitlines() == [
        "no match in 5000 files",
        "[stopped after 5000 files: the rest was not searched; narrow the search with path]",
    ]


def test_search_cuts_long_lines_around_the_match(work: Path) -> None:
    (work / "min.js").write_text("x" * 5000 + "needle" + "y" * 5000 + "\n")
    text = call(SearchText(cwd=work), text="needle").text
    shown = text.removeprefix("min.js:1: ")
    assert len(shown) == 300 and "needle" in shown
    assert shown.startswith("…x") and shown.endswith("y…")


def test_search_runs_in_a_thread(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (work / "a.txt").write_text("needle\n")
    seen: list[str] = []
    real = asyncio.to_thread

    async def spy(function: Callable[..., T], /, *args: Any) -> T:
        seen.append(getattr(function, "__name__", "?"))
        return await real(function, *args)

    monkeypatch.setattr(asyncio, "to_thread", spy)
    assert call(SearchText(cwd=work), text="needle").text == "a.txt:1: needle"
    assert seen == ["run"]


def test_search_mistakes(work: Path) -> None:
    tool = SearchText(cwd=work)
    assert "missing" in refused(tool)
    assert "empty" in refused(tool, text="")
    assert "one line" in refused(tool, text="a\nb")
    assert "does not exist" in refused(tool, text="a", path="nope")


# -- run_shell ----------------------------------------------------------------------------------


def shell(cwd: Path, command: str, timeout: float = 10.0, **env: str) -> ToolResult:
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
    return call(RunShell(cwd=cwd, env=environment, timeout=timeout), command=command)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs: a zombie does not (this container's init may never reap one)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rpartition(b")")[2].split()[0] not in (b"Z", b"X")


def group_members(pgid: int) -> list[int]:
    """The live processes of group ``pgid``."""
    if not Path("/proc/self/stat").exists():  # pragma: no cover - not Linux
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        return [pgid]
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_bytes().rpartition(b")")[2].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
                members.append(int(entry.name))
    return members


@pytest.fixture
def reap() -> Iterator[list[int]]:
    """Pids a test started that may outlive it: killed at its end, whatever happened."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_run_shell_output_and_exit_status(work: Path) -> None:
    result = shell(work, "echo out; echo err >&2; pwd")
    assert result == ToolResult(f"out\nerr\n{work}\n[exit status 0]")
    result = shell(work, "printf 'no newline'; exit 3")
    assert result == ToolResult("no newline\n[exit status 3]", True)
    assert shell(work, "true") == ToolResult("[exit status 0]")


def test_run_shell_environment_is_the_given_one(work: Path) -> None:
    assert shell(work, 'echo "$GREETING"', GREETING="hi there").text == "hi there\n[exit status 0]"


def test_run_shell_killed_by_signal(work: Path) -> None:
    assert shell(work, "kill -9 $$") == ToolResult("[killed by signal SIGKILL]", True)


def test_run_shell_stdin_is_dev_null(work: Path) -> None:
    # chatcli's own stdin a pipe nobody writes to or closes: a command reading it would hang.
    read_end, write_end = os.pipe()
    saved = os.dup(0)
    os.dup2(read_end, 0)
    try:
        started = time.monotonic()
        assert shell(work, "cat; wc -c", timeout=3) == ToolResult("0\n[exit status 0]")
        assert time.monotonic() - started < 2
    finally:
        os.dup2(saved, 0)
        for fd in (saved, read_end, write_end):
            os.close(fd)


def test_run_shell_huge_output_is_bounded(work: Path) -> None:
    tracemalloc.start()
    try:
        result = shell(work, "yes | head -c 5000000")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024 * 1024, peak  # 5 MB went through
    assert not result.is_error and len(result.text) <= MAX_RESULT
    kept, note, status = result.text.rsplit("\n", 2)
    assert set(kept) == {"y", "\n"}
    assert note == f"[... {5_000_000 - len(kept) - 1} more bytes not kept]"
    assert status == "[exit status 0]"


def test_run_shell_timeout_stops_the_whole_group(work: Path) -> None:
    started = time.monotonic()
    result = shell(work, "sleep 30 & echo $$ $!; sleep 30", timeout=0.5)
    assert time.monotonic() - started < 5
    assert result.is_error
    first, note = result.text.splitlines()
    assert note.startswith("[timed out after 0.5 s")
    shell_pid, child = map(int, first.split())
    assert not alive(shell_pid) and not alive(child)
    assert group_members(shell_pid) == []


def test_run_shell_timeout_kills_what_ignores_sigterm(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(builtin, "KILL_GRACE", 0.3)
    started = time.monotonic()
    result = shell(work, "trap '' TERM; sleep 30 & echo $$ $!; sleep 30", timeout=0.5)
    assert time.monotonic() - started < 5
    shell_pid, child = map(int, result.text.splitlines()[0].split())
    assert result.is_error and not alive(child)
    assert group_members(shell_pid) == []


def test_run_shell_cancel_stops_the_whole_group(work: Path) -> None:
    pid_file = work / "pid"

    async def cancel_it() -> None:
        tool = RunShell(cwd=work, timeout=30)
        task = asyncio.create_task(
            tool.run({"command": f"sleep 30 & echo $$ $! > {pid_file}; sleep 30"})
        )
        for _ in range(200):
            if pid_file.exists() and pid_file.read_text().endswith("\n"):
                break
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    started = time.monotonic()
    asyncio.run(cancel_it())
    assert time.monotonic() - started < 5
    shell_pid, child = map(int, pid_file.read_text().split())
    assert not alive(shell_pid) and not alive(child)
    assert group_members(shell_pid) == []


def test_run_shell_stops_leftovers_holding_the_output(
    work: Path, monkeypatch: pytest.MonkeyPatch, reap: list[int]
) -> None:
    monkeypatch.setattr(builtin, "LINGER", 0.2)
    result = shell(work, "sleep 30 & echo $!")
    child = int(result.text.splitlines()[0])
    reap.append(child)
    assert "were stopped" in result.text and result.text.endswith("[exit status 0]")
    assert not alive(child)
    # A background process whose output goes elsewhere is not waited for, nor stopped.
    started = time.monotonic()
    result = shell(work, "sleep 30 >/dev/null 2>&1 & echo $!")
    assert time.monotonic() - started < 1.5
    child = int(result.text.splitlines()[0])
    reap.append(child)
    assert result == ToolResult(f"{child}\n[exit status 0]")
    assert alive(child)


def test_run_shell_mistakes(work: Path) -> None:
    tool = RunShell(cwd=work)
    assert "missing" in refused(tool)
    assert "empty" in refused(tool, command="  ")
    assert "must be a string, not an array" in refused(tool, command=["ls"])
    with pytest.raises(ValueError):
        RunShell(cwd=work, timeout=0)


# -- the set ------------------------------------------------------------------------------------


def test_builtin_tools_by_name(work: Path) -> None:
    assert list(BUILTIN) == ["read_file", "list_dir", "search_text", "run_shell"]
    tools = builtin_tools([*BUILTIN, "read_file"], cwd=work, shell_timeout=7)
    assert [type(tool) for tool in tools] == [ReadFile, ListDir, SearchText, RunShell]
    for tool in tools:
        assert NAME_PATTERN.match(tool.name) and tool.description == BUILTIN[tool.name]
        assert "\n" not in tool.description
        assert tool.source == "built-in" and tool.acts == (tool.name == "run_shell")
        schema = tool.parameters
        assert schema["type"] == "object"
        assert set(schema["required"]) <= set(schema["properties"])
        json.dumps(schema)  # sent as JSON
    assert isinstance(tools[3], RunShell) and tools[3].timeout == 7
    assert builtin_tools(["run_shell", "list_dir"], cwd=work)[0].name == "run_shell"


def test_builtin_tools_unknown_name(work: Path) -> None:
    with pytest.raises(UsageError) as info:
        builtin_tools(["read_file", "write_file"], cwd=work)
    message = str(info.value)
    assert "'write_file'" in message and "read_file, list_dir, search_text, run_shell" in message


def test_limits_are_the_documented_ones() -> None:
    assert (builtin.READ_LIMIT, builtin.BINARY_PROBE) == (256 * 1024, 8 * 1024)
    assert (builtin.LIST_LIMIT, builtin.SEARCH_FILES, builtin.SEARCH_MATCHES) == (1000, 5000, 200)
    assert (builtin.SEARCH_FILE_SIZE, builtin.MATCH_WIDTH) == (1024 * 1024, 300)
    assert sorted(builtin.SKIPPED_DIRS) == [".git", ".venv", "__pycache__", "node_modules"]
    assert builtin.KILL_GRACE == 2.0


def test_through_the_toolbox(work: Path) -> None:
    """A refusal reaches the model as an error result; nothing raises past the Toolbox."""
    toolbox = Toolbox(tools=builtin_tools(["read_file"], cwd=work))
    call = ToolCall("1", "read_file", '{"path": "../outside/secret.txt"}')
    result = asyncio.run(toolbox.run_one(call))
    assert result.is_error and "outside the working directory" in result.text
