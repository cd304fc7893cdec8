"""``chatcli sessions``: list, show, search, rename, export and delete saved conversations.

A session is addressed by its name, its id, or a unique prefix of its id (4 characters or more).
Output meant for people is rendered on a terminal and plain in a pipe; ``--json`` is for scripts.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final

import typer

from chatcli.clikit import JsonOpt, boundary, complete_session, say, setup_logging
from chatcli.context import AppContext
from chatcli.errors import EXIT_ERROR, UsageError

if TYPE_CHECKING:
    from chatcli.branches import Branch
    from chatcli.store import Session, SessionStore, StoredMessage

sessions_app = typer.Typer(
    help="List, show, search, rename, export and delete saved conversations.",
    no_args_is_help=True,
)

RefArg = Annotated[
    str,
    typer.Argument(
        metavar="SESSION",
        help="A session name, id, or unique id prefix.",
        autocompletion=complete_session,
    ),
]


def _start() -> tuple[AppContext, SessionStore]:
    from chatcli.store import Stores

    ctx = AppContext.current()
    setup_logging(ctx, False)
    return ctx, Stores.at(ctx.paths).sessions


def _write(ctx: AppContext, text: str) -> None:
    ctx.stdout.write(text)
    ctx.stdout.flush()


@sessions_app.command("list")
def list_sessions(
    limit: Annotated[
        int, typer.Option("-n", "--limit", min=0, help="Show at most N sessions (0: all).")
    ] = 20,
    json_out: JsonOpt = False,
) -> None:
    """List sessions, most recently updated first."""
    from chatcli.transcript import session_dict

    ctx, store = _start()
    with boundary(ctx):
        sessions = store.recent(limit or None)
        if json_out:
            _write(ctx, json.dumps([session_dict(s) for s in sessions], indent=2) + "\n")
            return
        if not sessions:
            say(ctx, "no saved sessions yet")
            return
        rows = [_row(s) for s in sessions]
        if not ctx.stdout_isatty:
            _write(ctx, "".join("\t".join(row) + "\n" for row in rows))
            return
        from rich.table import Table

        from chatcli.render import make_console

        console = make_console(ctx.stdout, env=ctx.env)
        shown, model_width = _layout(rows, console.width)
        table = Table(box=None, pad_edge=False, show_edge=False)
        for index in shown:
            title = _COLUMNS[index]
            table.add_column(title, overflow="ellipsis", no_wrap=index != _TITLE)
        for row in rows:
            cells = [*row[:_MODEL], short_model(row[_MODEL], model_width), *row[_MODEL + 1 :]]
            table.add_row(*(cells[index] for index in shown))
        console.print(table)


_COLUMNS: Final = ("ID", "NAME / TITLE", "PROVIDER", "MODEL", "MSGS", "UPDATED")
_TITLE, _PROVIDER, _MODEL, _COUNT, _UPDATED = 1, 2, 3, 4, 5


def _row(session: Session) -> tuple[str, ...]:
    from chatcli.render import sanitize
    from chatcli.transcript import when

    return (
        session.id,
        sanitize(session.label),
        session.provider or "-",
        session.model or "-",
        str(session.message_count),
        when(session.updated_at),
    )


#: The model column's width on a terminal: never narrower (a name cut shorter tells nothing),
#: never wider (the title comes first).
MODEL_WIDTH: Final = (12, 32)
#: The title's width before the model gets more than its least, and the least it gets.
TITLE_WIDTH: Final = (16, 40)


def _layout(rows: list[tuple[str, ...]], width: int) -> tuple[list[int], int]:
    """The columns shown at ``width`` and the model's width: the title comes first, then the
    model, then the other columns; the update time, the count and the provider give way first
    on a very narrow terminal."""
    title = max(len(row[_TITLE]) for row in rows)
    low, high = MODEL_WIDTH
    least, most = TITLE_WIDTH
    shown = list(range(len(_COLUMNS)))

    def fixed() -> int:  # the columns other than the title and the model, and the gaps
        others = [i for i in shown if i not in (_TITLE, _MODEL)]
        widest = [max(len(_COLUMNS[i]), *(len(row[i]) for row in rows)) for i in others]
        return sum(widest) + 2 * (len(shown) - 1)

    for index in (_UPDATED, _COUNT, _PROVIDER):
        if fixed() + low + min(title, least) <= width:
            break
        shown.remove(index)
    return shown, max(low, min(high, width - fixed() - min(title, most)))


def short_model(model: str, width: int) -> str:
    """``model`` in at most ``width`` characters, still recognisable.

    A file path (llama.cpp's server names its model by the .gguf file it loaded) becomes the
    file's name without ``.gguf``; a name still too long keeps its start and its end (family
    and size; quantisation), with "…" for the middle.
    """
    name = model
    if _PATH.match(name) or name.lower().endswith(".gguf"):
        name = re.split(r"[\\/]", name.rstrip("\\/"))[-1] or name
        if name.lower().endswith(".gguf"):
            name = name[: -len(".gguf")] or name
    if len(name) <= width:
        return name
    if width <= 1:
        return "…"[:width]
    head = (width - 1) // 2
    tail = width - 1 - head
    return name[:head] + "…" + name[len(name) - tail :]


#: What a file path looks like: absolute, home-relative, ./ or ../, or a Windows drive.
_PATH: Final = re.compile(r"^(?:/|~|\.{1,2}[\\/]|[A-Za-z]:[\\/]|\\\\)")


AllBranchesOpt = Annotated[
    bool,
    typer.Option(
        "--all-branches", help="Every branch (/retry, /edit N, -S NAME@N), not just the active."
    ),
]


def _branches(
    store: SessionStore, session: Session, every: bool
) -> tuple[list[StoredMessage], list[Branch]]:
    """The active branch's messages; with ``every``, all of the session's and its branches."""
    if not every:
        return store.messages(session.id), []
    from chatcli.branches import branches

    messages = store.messages(session.id, every_branch=True)
    head = session.head
    if head is None and messages and not store.branched:
        head = messages[-1].id  # an old database read as it is: one branch, active
    return messages, branches(messages, head)


def _json(session: Session, messages: list[StoredMessage], found: list[Branch]) -> str:
    from chatcli.transcript import to_json

    data = to_json(session, messages)
    if found:
        data["branches"] = [
            {"number": b.number, "active": b.active, "messages": [m.id for m in b.path]}
            for b in found
        ]
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


@sessions_app.command("show")
def show(
    ref: RefArg,
    json_out: JsonOpt = False,
    reasoning: Annotated[
        bool, typer.Option("--reasoning", help="Show what the model thought, in full.")
    ] = False,
    all_branches: AllBranchesOpt = False,
) -> None:
    """Show a conversation's active branch (rendered on a terminal, Markdown in a pipe)."""
    from chatcli.transcript import to_markdown

    ctx, store = _start()
    with boundary(ctx):
        session = store.find(ref)
        messages, found = _branches(store, session, all_branches)
        if json_out:
            _write(ctx, _json(session, messages, found))
            return
        text = to_markdown(session, messages, reasoning=reasoning, branches=found)
        if not ctx.stdout_isatty:
            _write(ctx, text)
            return
        from chatcli.render import fast_markdown, make_console, sanitize

        make_console(ctx.stdout, env=ctx.env).print(fast_markdown(sanitize(text)))


@sessions_app.command("rm")
def remove(
    refs: Annotated[
        list[str],
        typer.Argument(
            metavar="SESSION...", help="Sessions to delete.", autocompletion=complete_session
        ),
    ],
    yes: Annotated[bool, typer.Option("-y", "--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete sessions (asks first on a terminal)."""
    from chatcli.render import sanitize

    ctx, store = _start()
    with boundary(ctx):
        # Resolve every reference before deleting anything: one typo deletes nothing.
        found = {s.id: s for s in (store.find(ref) for ref in refs)}
        if not yes and ctx.stdin_isatty and ctx.stdin is not None:
            names = ", ".join(sanitize(f"{s.id} ({s.label})") for s in found.values())
            ctx.stderr.write(f"Delete {len(found)} session(s): {names}? [y/N] ")
            ctx.stderr.flush()
            answer = ctx.stdin.readline().strip().lower()
            if answer not in ("y", "yes"):
                say(ctx, "nothing deleted")
                raise typer.Exit(EXIT_ERROR)
        removed = store.delete(found)
        say(ctx, f"deleted {removed} session(s)")


@sessions_app.command("rename")
def rename(
    ref: RefArg,
    name: Annotated[str, typer.Argument(metavar="NEW_NAME", help="The new name.")],
) -> None:
    """Give a session a name (used with -S NAME and in lists)."""
    ctx, store = _start()
    with boundary(ctx):
        session = store.rename(store.find(ref).id, name)
        say(ctx, f"session {session.id} is now named {session.name!r}")


@sessions_app.command("export")
def export(
    ref: RefArg,
    format_: Annotated[
        str | None,
        typer.Option(
            "--format",
            metavar="md|json",
            help="Markdown or JSON (default: from FILE's name, .json or .md; else md).",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "-o", "--output", metavar="FILE", help="Write to FILE instead of stdout (- is stdout)."
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("-f", "--force", help="Replace an existing FILE without asking.")
    ] = False,
    all_branches: AllBranchesOpt = False,
) -> None:
    """Export a conversation (its active branch) as Markdown or JSON.

    A regular FILE is replaced atomically (0600), after asking on a terminal; a FIFO, a
    terminal or /dev/stdout is written to as it is.
    """
    from chatcli.store.files import write_user_file
    from chatcli.transcript import to_markdown

    ctx, store = _start()
    with boundary(ctx):
        if format_ not in (None, "md", "json"):
            raise UsageError(f"--format must be md or json, not {format_!r}")
        path = None if output is None or output == "-" else Path(output).expanduser()
        named = _format_of(path) if path is not None else None
        chosen = format_ or named or "md"
        session = store.find(ref)
        messages, found = _branches(store, session, all_branches)
        if chosen == "md":  # an export holds the context items whole
            text = to_markdown(session, messages, context=True, branches=found)
        else:
            text = _json(session, messages, found)
        if path is None:
            _write(ctx, text)
            return
        if not force and _would_replace(ctx, path):
            _confirm_replace(ctx, path)
        if named is not None and named != chosen:
            what = _FORMAT_NAMES[chosen]
            say(ctx, f"warning: writing {what} to {path}, as --format {chosen} says")
        write_user_file(path, text.encode())  # a new or regular file is 0600: it may be private
        say(ctx, f"wrote {len(messages)} message(s) to {path}")


_FORMAT_NAMES: Final = {"md": "Markdown", "json": "JSON"}
#: File name endings and the format each stands for.
_SUFFIXES: Final = {".json": "json", ".md": "md", ".markdown": "md"}


def _format_of(path: Path) -> str | None:
    """The format a file name asks for (``notes.json``: JSON), if it asks for one."""
    return _SUFFIXES.get(path.suffix.lower())


def _would_replace(ctx: AppContext, path: Path) -> bool:
    """``path`` is a file with contents to lose: a regular file (reached directly or through a
    link), other than chatcli's own stdout (``-o /dev/stdout > file``)."""
    try:
        st = path.stat()
    except (OSError, ValueError):
        return False  # nothing there (or nothing reachable): the write says what is wrong
    if not stat.S_ISREG(st.st_mode):
        return False  # a FIFO or a terminal is written through, as the shell's > would
    try:
        out = os.fstat(ctx.stdout.fileno())
    except (AttributeError, OSError, ValueError):
        return True
    return (out.st_dev, out.st_ino) != (st.st_dev, st.st_ino)


def _confirm_replace(ctx: AppContext, path: Path) -> None:
    """Ask before replacing ``path`` on a terminal; elsewhere refuse, saying how to insist."""
    if not ctx.stdin_isatty or ctx.stdin is None:
        raise UsageError(f"{path} already exists; add -f (--force) to replace it")
    ctx.stderr.write(f"Replace {path}? [y/N] ")
    ctx.stderr.flush()
    if ctx.stdin.readline().strip().lower() not in ("y", "yes"):
        say(ctx, "nothing written")
        raise typer.Exit(EXIT_ERROR)


@sessions_app.command("search")
def search(
    text: Annotated[str, typer.Argument(metavar="TEXT", help="Text to find (any case).")],
    limit: Annotated[int, typer.Option("-n", "--limit", min=1, help="At most N matches.")] = 50,
    json_out: JsonOpt = False,
) -> None:
    """Find messages containing TEXT in every session, with the matching line."""
    from chatcli.render import sanitize
    from chatcli.transcript import message_dict, session_dict

    ctx, store = _start()
    with boundary(ctx):
        hits = store.search(text, limit)
        if json_out:
            data: list[dict[str, Any]] = [
                {"session": session_dict(h.session), "message": message_dict(h.message),
                 "line": h.line}
                for h in hits
            ]  # fmt: skip
            _write(ctx, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
            return
        if not hits:
            say(ctx, f"no message contains {text!r}")
            raise typer.Exit(EXIT_ERROR)
        for hit in hits:
            label = sanitize(hit.session.label)
            line = sanitize(hit.line)
            _write(ctx, f"{hit.session.id}\t{label}\t{hit.message.role}: {line}\n")
