"""``chatcli sessions``: list, show, search, rename, export and delete saved conversations.

A session is addressed by its name, its id, or a unique prefix of its id (4 characters or more).
Output meant for people is rendered on a terminal and plain in a pipe; ``--json`` is for scripts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from chatcli.clikit import JsonOpt, boundary, complete_session, say, setup_logging
from chatcli.context import AppContext
from chatcli.errors import EXIT_ERROR, UsageError

if TYPE_CHECKING:
    from chatcli.store import SessionStore

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
    from chatcli.render import sanitize
    from chatcli.transcript import session_dict, when

    ctx, store = _start()
    with boundary(ctx):
        sessions = store.recent(limit or None)
        if json_out:
            _write(ctx, json.dumps([session_dict(s) for s in sessions], indent=2) + "\n")
            return
        if not sessions:
            say(ctx, "no saved sessions yet")
            return
        rows = [
            (
                s.id,
                sanitize(s.label),
                s.provider or "-",
                s.model or "-",
                str(s.message_count),
                when(s.updated_at),
            )
            for s in sessions
        ]
        if not ctx.stdout_isatty:
            _write(ctx, "".join("\t".join(row) + "\n" for row in rows))
            return
        from rich.table import Table

        from chatcli.render import make_console

        table = Table(box=None, pad_edge=False, show_edge=False)
        for title in ("ID", "NAME / TITLE", "PROVIDER", "MODEL", "MSGS", "UPDATED"):
            table.add_column(title, overflow="ellipsis", no_wrap=title != "NAME / TITLE")
        for row in rows:
            table.add_row(*row)
        make_console(ctx.stdout, env=ctx.env).print(table)


@sessions_app.command("show")
def show(ref: RefArg, json_out: JsonOpt = False) -> None:
    """Show a conversation (rendered on a terminal, Markdown text in a pipe)."""
    from chatcli.transcript import to_json, to_markdown

    ctx, store = _start()
    with boundary(ctx):
        session = store.find(ref)
        messages = store.messages(session.id)
        if json_out:
            _write(ctx, json.dumps(to_json(session, messages), indent=2, ensure_ascii=False) + "\n")
            return
        text = to_markdown(session, messages)
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
        str, typer.Option("--format", metavar="md|json", help="Markdown or JSON.")
    ] = "md",
    output: Annotated[
        str | None,
        typer.Option(
            "-o", "--output", metavar="FILE", help="Write to FILE instead of stdout (- is stdout)."
        ),
    ] = None,
) -> None:
    """Export a conversation as Markdown or JSON.

    A regular FILE is replaced atomically (0600); a FIFO, a terminal or /dev/stdout is written
    to as it is.
    """
    from chatcli.store.files import write_user_file
    from chatcli.transcript import to_json, to_markdown

    ctx, store = _start()
    with boundary(ctx):
        if format_ not in ("md", "json"):
            raise UsageError(f"--format must be md or json, not {format_!r}")
        session = store.find(ref)
        messages = store.messages(session.id)
        if format_ == "md":
            text = to_markdown(session, messages)
        else:
            text = json.dumps(to_json(session, messages), indent=2, ensure_ascii=False) + "\n"
        if output is None or output == "-":
            _write(ctx, text)
            return
        path = Path(output).expanduser()
        write_user_file(path, text.encode())  # a new or regular file is 0600: it may be private
        say(ctx, f"wrote {len(messages)} message(s) to {path}")


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
