"""The built-in tools a model may call: read a file, list a directory, search text, run a command.

The three that read (:class:`ReadFile`, :class:`ListDir`, :class:`SearchText`) see only what
lies inside the allowed roots: the working directory, plus any directory the user allowed in
``[tools] paths``. A path from the model is taken relative to the working directory, and
checked after its symlinks are resolved, so neither ``../`` nor a link can lead out; ``~`` is
a file name like any other (the model's text is not the user's shell). Every answer is bounded
whatever the file or tree: a read stops at :data:`READ_LIMIT` bytes, a listing at
:data:`LIST_LIMIT` entries, a search at :data:`SEARCH_FILES` files and :data:`SEARCH_MATCHES`
matches, and each says where it stopped, so the model can ask for the rest. Their disk work
runs in a thread, so a slow disk or a large tree does not stall the event loop.

:class:`RunShell` acts, so it runs only with the user's consent; asking is the
:class:`~chatcli.tools.Toolbox`'s business, not this module's. It runs the command in a session
of its own, so that on a timeout, on Ctrl-C, or when the command leaves processes behind that
keep its output open, the whole process group can be stopped, not just the shell.

A mistake of the model's (a missing or mistyped argument, a path outside the roots, a binary
file...) raises :class:`~chatcli.tools.ToolError`: its one-sentence message is the result the
model gets, saying what to do instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from chatcli.errors import UsageError
from chatcli.tools import MAX_RESULT, Tool, ToolError, ToolResult

#: The most bytes :class:`ReadFile` reads from where it starts: its answer is far smaller
#: (:data:`MAX_RESULT`), the rest only tells how many lines the file has.
READ_LIMIT: Final = 256 * 1024
#: How much of a file's start is checked for NUL bytes: a text file has none.
BINARY_PROBE: Final = 8 * 1024
#: The most entries :class:`ListDir` lists.
LIST_LIMIT: Final = 1000
#: The most files (and, apart, directories) :class:`SearchText` looks at, and matches it keeps.
SEARCH_FILES: Final = 5000
SEARCH_MATCHES: Final = 200
#: Larger files are not searched (a log or a data dump would drown the matches).
SEARCH_FILE_SIZE: Final = 1024 * 1024
#: A matching line is shown cut to this many characters (minified code is one long line).
MATCH_WIDTH: Final = 300
#: Directories a search never enters: version control, dependencies and caches, where a match
#: is noise and the files are many.
SKIPPED_DIRS: Final = frozenset({".git", "node_modules", "__pycache__", ".venv"})
#: Seconds a stopped command's processes get to end after SIGTERM, before SIGKILL.
KILL_GRACE: Final = 2.0
#: Seconds the output is still read after the shell exits, for what its last background
#: processes write; then those still holding the output open are stopped.
LINGER: Final = 1.0

#: Room kept in a result for the notes after the text (where it stopped, the exit status), so
#: that the Toolbox's own cut at MAX_RESULT never takes them.
_NOTE_ROOM: Final = 1024
_TEXT_BUDGET: Final = MAX_RESULT - _NOTE_ROOM
#: Bytes read at a time: skipping lines, and reading a command's output.
_CHUNK: Final = 64 * 1024
#: Seconds between looks at a command's processes (has the shell exited? are they gone?).
_POLL: Final = 0.05

#: Each built-in tool's name and one-line description, in the order they are offered.
BUILTIN: Final[dict[str, str]] = {
    "read_file": "Read a UTF-8 text file in the working directory; a long file comes in parts "
    "(start_line and max_lines choose the lines).",
    "list_dir": "List a directory: one entry a line, sorted; directories end in /, symlinks "
    "in @, files show their size in bytes.",
    "search_text": "Find literal text (not a regular expression) in the files under a "
    "directory; each match as path:LINE: text.",
    "run_shell": "Run a command with /bin/sh -c in the working directory and return its "
    "output (stdout and stderr) and exit status; the user is asked first.",
}


# -- arguments ----------------------------------------------------------------------------------


def _schema(properties: dict[str, dict[str, Any]], required: Sequence[str] = ()) -> dict[str, Any]:
    """A JSON Schema object for a tool's arguments. Unknown arguments are refused (a typo
    such as ``line`` for ``start_line`` should be told, not silently ignored)."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


def _check_names(tool: Tool, arguments: Mapping[str, Any]) -> None:
    known = tool.parameters["properties"]
    for name in arguments:
        if name not in known:
            takes = ", ".join(known) or "none"
            raise ToolError(f"{tool.name} has no argument {name!r} (its arguments: {takes})")


def _argument(arguments: Mapping[str, Any], name: str, kind: type, what: str) -> Any:
    """The argument ``name`` if given (``null`` counts as not given), checked to be ``kind``."""
    value = arguments.get(name)
    # bool is an int in Python, but true is no line number in JSON.
    if value is not None and (
        not isinstance(value, kind) or (kind is int and isinstance(value, bool))
    ):
        raise ToolError(f"{name!r} must be {what}, not {_json_type(value)}")
    return value


def _json_type(value: object) -> str:
    """What a value is called in JSON, for the model: it sent JSON, not Python."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "null"


def _string(arguments: Mapping[str, Any], name: str, *, default: str | None = None) -> str:
    value: str | None = _argument(arguments, name, str, "a string")
    if value is None:
        if default is None:
            raise ToolError(f"the argument {name!r} (a string) is missing")
        return default
    return value


def _positive(arguments: Mapping[str, Any], name: str) -> int | None:
    value: int | None = _argument(arguments, name, int, "an integer")
    if value is not None and value < 1:
        raise ToolError(f"{name!r} must be 1 or more, not {value}")
    return value


def _shown(text: str) -> str:
    """``text`` (a file name, a path) fit for a one-line answer: as it is, or quoted with its
    escapes when it holds a newline, a control character or bytes that are not UTF-8."""
    return text if text.isprintable() else repr(text)


# -- paths --------------------------------------------------------------------------------------


class _Reader:
    """What the tools that read share: the working directory, the roots, and how a path from
    the model becomes one inside them (or a refusal)."""

    acts = False
    source = "built-in"
    name = ""
    parameters: Mapping[str, Any] = _schema({})

    def __init__(self, *, cwd: Path, roots: Sequence[Path] = ()) -> None:
        # Resolved once: a root given through a symlink still holds the paths under its target.
        self.cwd = Path(os.path.realpath(cwd))
        self.roots = (self.cwd, *(Path(os.path.realpath(self.cwd / root)) for root in roots))

    def inside(self, real: str | Path) -> bool:
        real = Path(real)
        return any(real == root or real.is_relative_to(root) for root in self.roots)

    def resolve(self, raw: str) -> Path:
        """``raw`` (the model's path) resolved against the working directory, symlinks and
        ``..`` included; ToolError unless the result lies inside one of the roots."""
        if "\0" in raw:
            raise ToolError("the path holds a NUL character; send a plain path")
        real = Path(os.path.realpath(self.cwd / raw))
        if not self.inside(real):
            where = "the working directory" + (" and the allowed paths" * (len(self.roots) > 1))
            raise ToolError(
                f"{_shown(raw)} is outside {where}; only the user can allow more, with "
                "[tools] paths in config.toml"
            )
        return real

    def display(self, real: Path) -> str:
        """How an answer names ``real``: relative to the working directory when inside it (as
        the model passes it back), else whole."""
        if real.is_relative_to(self.cwd):
            return real.relative_to(self.cwd).as_posix()  # "." for the directory itself
        return str(real)


def _open_regular(real: str | Path, shown: str) -> IO[bytes]:
    """``real`` opened for reading, if it is a regular file: never a FIFO (opening one would
    block) or a device, and never a symlink swapped in since the path was checked."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(real, flags)
    except FileNotFoundError:
        raise ToolError(f"{shown} does not exist") from None
    except IsADirectoryError:
        raise ToolError(f"{shown} is a directory, not a file; list_dir lists it") from None
    except OSError as exc:
        raise ToolError(f"{shown} cannot be opened ({exc.strerror})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        what = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise ToolError(f"{shown} is {what}, not a file one can read")
    return os.fdopen(fd, "rb")


# -- read_file ----------------------------------------------------------------------------------


class ReadFile(_Reader):
    """``read_file``: a text file's lines, or a part of them, as raw text (no line numbers:
    the model quotes them back into edits)."""

    name = "read_file"
    description = BUILTIN["read_file"]
    parameters: Mapping[str, Any] = _schema(
        {
            "path": {
                "type": "string",
                "description": "The file, relative to the working directory.",
            },
            "start_line": {
                "type": "integer",
                "minimum": 1,
                "description": "The first line to read (1-based); default 1.",
            },
            "max_lines": {
                "type": "integer",
                "minimum": 1,
                "description": "The most lines to read; default as many as fit.",
            },
        },
        ["path"],
    )

    async def run(self, arguments: Mapping[str, Any]) -> ToolResult:
        _check_names(self, arguments)
        raw = _string(arguments, "path")
        start = _positive(arguments, "start_line")
        count = _positive(arguments, "max_lines")
        real = self.resolve(raw)
        text = await asyncio.to_thread(_read_lines, real, _shown(raw), start, count)
        return ToolResult(text)


def _skip_lines(file: IO[bytes], count: int) -> int:
    """Read past ``count`` lines, a chunk at a time (a line may be gigabytes long); returns how
    many there were, fewer at the end of the file."""
    done = 0
    partial = False
    while done < count:
        piece = file.readline(_CHUNK)
        if not piece:
            return done + partial  # an unterminated last line is a line too
        partial = not piece.endswith(b"\n")
        done += not partial
    return done


def _read_lines(real: Path, shown: str, start: int | None, count: int | None) -> str:
    """The answer of :class:`ReadFile`: the lines from ``start`` (1-based), at most ``count``,
    at most :data:`READ_LIMIT` bytes of them read and what fits in a result kept; a header
    saying which lines when a part was asked for, a note where it stopped early."""
    first = start or 1
    with _open_regular(real, shown) as file:
        if b"\0" in file.read(BINARY_PROBE):
            raise ToolError(f"{shown} is a binary file (it holds NUL bytes); read_file reads text")
        file.seek(0)
        skipped = _skip_lines(file, first - 1)
        data = file.read(READ_LIMIT)
        more = len(data) == READ_LIMIT and file.read(1) != b""
    if not data:
        if first == 1:
            return "[the file is empty]"
        raise ToolError(f"start_line {first} is past the end of {shown} (it has {skipped} lines)")
    text = data.decode("utf-8", errors="replace")
    if more and (end := text.rfind("\n")) >= 0:
        text = text[: end + 1]  # whole lines only: the next read starts at the cut one
    pieces = text.split("\n")
    lines = [piece + "\n" for piece in pieces[:-1]]
    if pieces[-1]:
        lines.append(pieces[-1])
    total = None if more else skipped + len(lines)

    kept: list[str] = []
    used = 0
    cut_line = False
    for line in lines[:count]:
        if used + len(line) > _TEXT_BUDGET:
            if not kept:  # one line longer than a whole result: its start is better than nothing
                kept.append(line[:_TEXT_BUDGET])
                cut_line = True
            break
        kept.append(line)
        used += len(line)
    last = first + len(kept) - 1
    body = "".join(kept)

    of = f"of {total}" if total is not None else f"of more than {skipped + len(lines)}"
    header = f"[lines {first}-{last} {of}]\n" if start is not None or count is not None else ""
    notes: list[str] = []
    if cut_line:
        notes.append(
            f"[line {last} is too long to show whole: its first {_TEXT_BUDGET} characters]"
        )
    goes_on = more or len(kept) < len(lines)
    if goes_on and not (count is not None and len(kept) == count and not cut_line):
        notes.append(f"[stopped at line {last} {of}; read on with start_line={last + 1}]")
    if not notes:
        return header + body
    return header + body + ("" if body.endswith("\n") else "\n") + "\n".join(notes)


# -- list_dir -----------------------------------------------------------------------------------


class ListDir(_Reader):
    """``list_dir``: a directory's entries, hidden ones included, sorted by name."""

    name = "list_dir"
    description = BUILTIN["list_dir"]
    parameters: Mapping[str, Any] = _schema(
        {
            "path": {
                "type": "string",
                "description": "The directory, relative to the working directory; default '.'.",
            }
        }
    )

    async def run(self, arguments: Mapping[str, Any]) -> ToolResult:
        _check_names(self, arguments)
        raw = _string(arguments, "path", default=".")
        real = self.resolve(raw)
        return ToolResult(await asyncio.to_thread(_list, real, _shown(raw)))


def _list(real: Path, shown: str) -> str:
    try:
        with os.scandir(real) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
    except FileNotFoundError:
        raise ToolError(f"{shown} does not exist") from None
    except NotADirectoryError:
        raise ToolError(f"{shown} is not a directory; read_file reads a file") from None
    except OSError as exc:
        raise ToolError(f"{shown} cannot be listed ({exc.strerror})") from None
    if not entries:
        return "[the directory is empty]"
    lines = [_entry_line(entry) for entry in entries[:LIST_LIMIT]]
    if len(entries) > LIST_LIMIT:
        lines.append(f"[... {len(entries) - LIST_LIMIT} more entries not listed]")
    return "\n".join(lines)


def _entry_line(entry: os.DirEntry[str]) -> str:
    name = _shown(entry.name)
    try:
        if entry.is_symlink():
            return f"{name}@"
        if entry.is_dir(follow_symlinks=False):
            return f"{name}/"
        if entry.is_file(follow_symlinks=False):
            return f"{name} ({entry.stat(follow_symlinks=False).st_size} bytes)"
    except OSError:  # gone since the directory was read
        pass
    return name


# -- search_text --------------------------------------------------------------------------------


class SearchText(_Reader):
    """``search_text``: the lines holding a literal text, in the files under a directory.

    Literal, not a regular expression: a model's pattern can take no time to backtrack, and a
    ``.`` or ``(`` in code is found as written.
    """

    name = "search_text"
    description = BUILTIN["search_text"]
    parameters: Mapping[str, Any] = _schema(
        {
            "text": {
                "type": "string",
                "description": "The text to find, literally (one line; not a regex).",
            },
            "path": {
                "type": "string",
                "description": "The directory (or file) to search, relative to the working "
                "directory; default '.'.",
            },
            "ignore_case": {
                "type": "boolean",
                "description": "Match regardless of case; default false.",
            },
        },
        ["text"],
    )

    async def run(self, arguments: Mapping[str, Any]) -> ToolResult:
        _check_names(self, arguments)
        text = _string(arguments, "text")
        raw = _string(arguments, "path", default=".")
        ignore_case: bool = _argument(arguments, "ignore_case", bool, "true or false") or False
        if not text:
            raise ToolError("'text' is empty; send the text to find")
        if "\n" in text or "\r" in text:
            raise ToolError("'text' must be one line: a match is found within a line")
        real = self.resolve(raw)
        if not real.exists():
            raise ToolError(f"{_shown(raw)} does not exist")
        search = _Search(self, text.casefold() if ignore_case else text, ignore_case)
        try:
            return ToolResult(await asyncio.to_thread(search.run, real))
        except asyncio.CancelledError:
            search.stop.set()  # the thread cannot be cancelled, but it can be told to stop
            raise


@dataclass
class _Search:
    """One search's walk and what it found (runs in a thread)."""

    reader: _Reader
    needle: str
    fold: bool
    matches: list[str] = field(default_factory=list)
    files: int = 0
    dirs: int = 0
    large: int = 0
    binary: int = 0
    cut: str = ""
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, top: Path) -> str:
        for real, shown in self.walk(top):
            if self.stop.is_set():
                break
            if self.files >= SEARCH_FILES:
                self.cut = (
                    f"[stopped after {SEARCH_FILES} files: the rest was not searched; "
                    "narrow the search with path]"
                )
                break
            self.files += 1
            self.scan(real, shown)
            if len(self.matches) >= SEARCH_MATCHES:
                self.cut = (
                    f"[stopped at {SEARCH_MATCHES} matches: there may be more; narrow the "
                    "search with path or a longer text]"
                )
                break
        return self.answer()

    def answer(self) -> str:
        lines = list(self.matches)
        if not lines:
            noun = "file" if self.files == 1 else "files"
            lines.append(f"no match in {self.files} {noun}")
        if self.cut:
            lines.append(self.cut)
        skipped = []
        if self.large:
            skipped.append(f"{self.large} over {SEARCH_FILE_SIZE // (1024 * 1024)} MiB")
        if self.binary:
            skipped.append(f"{self.binary} binary")
        if skipped:
            lines.append(f"[files not searched: {', '.join(skipped)}]")
        return "\n".join(lines)

    def walk(self, top: Path) -> Iterator[tuple[str, str]]:
        """Each regular file under ``top`` (or ``top`` itself, a file): its real path and the
        path shown. Files of a directory come before its subdirectories, each in name order.
        A symlink is followed only to inside the roots, and a directory is entered once,
        however many links lead to it (a link to its parent would loop)."""
        base = self.reader.display(top)
        if not top.is_dir():
            yield str(top), base
            return
        seen = {str(top)}
        stack = [(str(top), base)]
        while stack and not self.stop.is_set():
            if self.dirs >= SEARCH_FILES:
                self.cut = (
                    f"[stopped after {SEARCH_FILES} directories: the rest was not searched; "
                    "narrow the search with path]"
                )
                return
            self.dirs += 1
            folder, shown_folder = stack.pop()
            try:
                with os.scandir(folder) as scan:
                    entries = sorted(scan, key=lambda entry: entry.name)
            except OSError:
                continue  # unreadable, or gone since it was listed
            subdirs: list[tuple[str, str]] = []
            for entry in entries:
                shown = entry.name if shown_folder == "." else f"{shown_folder}/{entry.name}"
                real = entry.path
                try:
                    if entry.is_symlink():
                        real = os.path.realpath(entry.path)
                        if not self.reader.inside(real):
                            continue
                        is_dir, is_file = os.path.isdir(real), os.path.isfile(real)
                    else:
                        is_dir = entry.is_dir(follow_symlinks=False)
                        is_file = entry.is_file(follow_symlinks=False)
                except OSError:
                    continue
                if is_dir and entry.name not in SKIPPED_DIRS and real not in seen:
                    seen.add(real)
                    subdirs.append((real, shown))
                elif is_file:
                    yield real, shown
            stack.extend(reversed(subdirs))

    def scan(self, real: str, shown: str) -> None:
        try:
            with _open_regular(real, shown) as file:
                if os.fstat(file.fileno()).st_size > SEARCH_FILE_SIZE:
                    self.large += 1
                    return
                data = file.read(SEARCH_FILE_SIZE + 1)
        except ToolError:
            return  # gone, unreadable, or not a regular file after all
        if len(data) > SEARCH_FILE_SIZE:  # grew since it was measured
            self.large += 1
            return
        if b"\0" in data[:BINARY_PROBE]:
            self.binary += 1
            return
        text = data.decode("utf-8", errors="replace")
        if self.needle not in (text.casefold() if self.fold else text):
            return  # most files: no need to look at their lines
        for number, line in enumerate(text.split("\n"), 1):
            line = line.rstrip("\r")
            at = (line.casefold() if self.fold else line).find(self.needle)
            if at < 0:
                continue
            self.matches.append(f"{_shown(shown)}:{number}: {_clip(line, at)}")
            if len(self.matches) >= SEARCH_MATCHES:
                return


def _clip(line: str, at: int) -> str:
    """``line`` cut to :data:`MATCH_WIDTH` characters around ``at`` (where the match is, as
    near as case folding lets one know), with ``…`` where text was cut."""
    if len(line) <= MATCH_WIDTH:
        return line
    begin = max(0, min(at - MATCH_WIDTH // 3, len(line) - MATCH_WIDTH))
    piece = line[begin : begin + MATCH_WIDTH]
    if begin > 0:
        piece = "…" + piece[1:]
    if begin + MATCH_WIDTH < len(line):
        piece = piece[:-1] + "…"
    return piece


# -- run_shell ----------------------------------------------------------------------------------


class RunShell:
    """``run_shell``: a shell command's output and exit status, bounded and time-limited."""

    name = "run_shell"
    description = BUILTIN["run_shell"]
    parameters: Mapping[str, Any] = _schema(
        {"command": {"type": "string", "description": "The command, as /bin/sh reads it."}},
        ["command"],
    )
    acts = True
    source = "built-in"

    def __init__(
        self, *, cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 60.0
    ) -> None:
        if timeout <= 0:
            raise ValueError("the shell timeout must be positive")
        self.cwd = cwd
        # Given, not read here: the command sees the environment chatcli was started with.
        self.env = dict(env) if env is not None else None
        self.timeout = timeout

    async def run(self, arguments: Mapping[str, Any]) -> ToolResult:
        _check_names(self, arguments)
        command = _string(arguments, "command")
        if not command.strip():
            raise ToolError("'command' is empty; send the command to run")
        process = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            command,
            stdin=asyncio.subprocess.DEVNULL,  # a command waiting for input would hang
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=self.cwd,
            env=self.env,
            start_new_session=True,  # its own process group, to stop it whole
        )
        assert process.stdout is not None
        output = _Output()
        reader = asyncio.create_task(_drain(process.stdout, output))
        try:
            async with asyncio.timeout(self.timeout):
                left_running = await _finish(process, reader)
        except TimeoutError:
            await _stop(process, reader)
            return ToolResult(
                f"{output.text()}[timed out after {self.timeout:g} s: the command and the "
                "processes it started were stopped]",
                True,
            )
        except asyncio.CancelledError:
            await _stop(process, reader)
            raise
        notes = []
        if left_running:
            # The shell is done but something it started still holds the output open: a
            # result cannot wait for it, and nothing would be left to read what it writes.
            await _stop(process, reader)
            notes.append(
                "[processes the command left running with its output open were stopped; "
                "redirect a background process's output to keep it running]"
            )
        status = process.returncode
        if status is None:  # not reaped within _stop's wait: unheard of, but not a crash
            notes.append("[exit status unknown]")
            return ToolResult(output.text() + "\n".join(notes), True)
        if status < 0:
            notes.append(f"[killed by signal {_signal_name(-status)}]")
        else:
            notes.append(f"[exit status {status}]")
        return ToolResult(output.text() + "\n".join(notes), status != 0)


class _Output:
    """A command's output as it comes: the first part kept, the rest only counted, so memory
    stays bounded however much the command prints."""

    def __init__(self, keep: int = _TEXT_BUDGET) -> None:
        self.keep = keep
        self.kept = bytearray()
        self.dropped = 0

    def feed(self, chunk: bytes) -> None:
        room = self.keep - len(self.kept)
        self.kept += chunk[:room]
        self.dropped += max(0, len(chunk) - room)

    def text(self) -> str:
        """What was kept, ending in a newline if anything was, then the note of the rest."""
        text = self.kept.decode("utf-8", errors="replace")
        if text and not text.endswith("\n"):
            text += "\n"
        if self.dropped:
            text += f"[... {self.dropped} more bytes not kept]\n"
        return text


async def _drain(stream: asyncio.StreamReader, output: _Output) -> None:
    while chunk := await stream.read(_CHUNK):
        output.feed(chunk)


async def _finish(process: asyncio.subprocess.Process, reader: asyncio.Task[None]) -> bool:
    """Wait for the end of the output and the shell's exit. True when the shell exited but
    the output stayed open :data:`LINGER` seconds more: processes it left behind hold it.

    The shell's exit is watched through ``returncode``, not ``wait()``: before Python 3.12,
    ``wait()`` also waits for the output to close, which those processes may never do.
    """
    while not reader.done():
        if process.returncode is not None:
            await asyncio.wait({reader}, timeout=LINGER)
            if not reader.done():
                return True
            break
        await asyncio.wait({reader}, timeout=_POLL)
    await process.wait()
    return False


async def _settle(
    process: asyncio.subprocess.Process, reader: asyncio.Task[None], seconds: float
) -> None:
    """Wait up to ``seconds`` for the shell to be reaped and the output to end (see
    :func:`_finish` for why not ``wait()``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (process.returncode is None or not reader.done()) and loop.time() < deadline:
        await asyncio.sleep(_POLL)


def _signal_group(group: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signum)


def _group_alive(group: int) -> bool:
    """Whether a process of ``group`` still runs. A zombie does not count: a background
    child orphaned by the shell waits as one until init reaps it, and in some containers
    init never does. Where there is no ``/proc`` a zombie counts (the wait is longer)."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return True
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as file:
                # "pid (name) state ppid pgrp ...": the name may hold spaces and parentheses.
                fields = file.read().rpartition(b")")[2].split()
        except OSError:
            continue  # ended meanwhile
        if len(fields) > 2 and int(fields[2]) == group and fields[0] not in (b"Z", b"X"):
            return True
    return False


async def _stop(process: asyncio.subprocess.Process, reader: asyncio.Task[None]) -> None:
    """Stop the command's whole process group: SIGTERM, then SIGKILL to whatever still runs
    after :data:`KILL_GRACE` seconds (or at once if this is cancelled too: a second Ctrl-C).
    Then the shell is reaped and the rest of the output read, or given up on."""
    group = process.pid  # a session leader's group id is its pid
    try:
        _signal_group(group, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + KILL_GRACE
        while _group_alive(group) and loop.time() < deadline:
            await asyncio.sleep(_POLL)
        _signal_group(group, signal.SIGKILL)
        # A process that left the group (setsid) may still hold the output: not waited for.
        await _settle(process, reader, 1.0)
    except asyncio.CancelledError:
        _signal_group(group, signal.SIGKILL)
        raise
    finally:
        reader.cancel()


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


# -- the factory --------------------------------------------------------------------------------


def builtin_tools(
    names: Iterable[str],
    *,
    cwd: Path,
    roots: Sequence[Path] = (),
    env: Mapping[str, str] | None = None,
    shell_timeout: float = 60.0,
) -> list[Tool]:
    """The built-in tools named (each once, in the order named), for a session in ``cwd``.

    ``roots``: directories beyond ``cwd`` the tools that read may see (``[tools] paths``);
    ``env``: the environment :class:`RunShell`'s commands get (``None``: this process's);
    ``shell_timeout``: seconds a command may run. An unknown name is a UsageError naming the
    known ones.
    """
    tools: list[Tool] = []
    for name in dict.fromkeys(names):
        if name == "read_file":
            tools.append(ReadFile(cwd=cwd, roots=roots))
        elif name == "list_dir":
            tools.append(ListDir(cwd=cwd, roots=roots))
        elif name == "search_text":
            tools.append(SearchText(cwd=cwd, roots=roots))
        elif name == "run_shell":
            tools.append(RunShell(cwd=cwd, env=env, timeout=shell_timeout))
        else:
            raise UsageError(
                f"there is no built-in tool {name!r}; the built-in tools are: {', '.join(BUILTIN)}"
            )
    return tools


__all__ = [
    "BINARY_PROBE",
    "BUILTIN",
    "KILL_GRACE",
    "LINGER",
    "LIST_LIMIT",
    "MATCH_WIDTH",
    "READ_LIMIT",
    "SEARCH_FILES",
    "SEARCH_FILE_SIZE",
    "SEARCH_MATCHES",
    "SKIPPED_DIRS",
    "ListDir",
    "ReadFile",
    "RunShell",
    "SearchText",
    "builtin_tools",
]
