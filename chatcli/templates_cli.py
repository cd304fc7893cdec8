"""``chatcli templates``: list, show, edit and remove templates (see :mod:`chatcli.templates`).

Template files live in the config directory's ``templates/``; the built-in ones are not files,
and a file of the same name replaces one. ``edit`` works on a copy and writes the file only
when what the editor saved is a valid template, so a typo never leaves a broken one behind.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from chatcli.clikit import JsonOpt, boundary, complete_template, say, setup_logging
from chatcli.context import AppContext
from chatcli.errors import EXIT_ERROR, ConfigError, UsageError

if TYPE_CHECKING:
    from chatcli.templates import Templates

templates_app = typer.Typer(
    help="List, show, edit and remove templates (roles) for ask -t and /role.",
    no_args_is_help=True,
)

NameArg = Annotated[
    str,
    typer.Argument(metavar="NAME", help="A template name.", autocompletion=complete_template),
]

#: What ``edit`` starts a new template from.
SKELETON = '''\
description = ""
# The system prompt; {word} is a variable (--var word=VALUE), {{ and }} are braces.
system = """You are a helpful assistant."""
# The message sent: {input} is the piped text and the question (no prompt: they are sent as
# they are; a prompt without {input}: they follow it).
prompt = "{input}"
# provider = "openai"
# model = "gpt-4o-mini"
# temperature = 0.2

[vars]
# word = "its default"

[options]
# max_tokens = 800
'''


def _start() -> tuple[AppContext, Templates]:
    from chatcli.templates import Templates

    ctx = AppContext.current()
    setup_logging(ctx, False)
    return ctx, Templates(ctx.paths.config_dir / "templates")


@templates_app.command("list")
def list_templates(json_out: JsonOpt = False) -> None:
    """List templates: built-in ones and your files (a file replaces a built-in one)."""
    from chatcli.render import sanitize
    from chatcli.templates import BUILTIN

    ctx, templates = _start()
    with boundary(ctx):
        rows: list[dict[str, Any]] = []
        for name in templates.names():
            try:
                template = templates.get(name)
            except ConfigError as exc:  # one broken file does not hide the others
                path = str(templates.path(name))
                error = str(exc).removeprefix(path + ": ")
                rows.append(
                    {"name": name, "origin": "file (broken)", "path": path,
                     "description": f"error: {error}", "variables": [], "error": error}
                )  # fmt: skip
                continue
            origin = "built-in" if template.path is None else "file"
            if template.path is not None and name in BUILTIN:
                origin = "file (replaces built-in)"
            rows.append(
                {
                    "name": name,
                    "origin": origin,
                    "path": str(template.path) if template.path else None,
                    "description": template.description,
                    "variables": template.variables,
                }
            )
        if json_out:
            ctx.stdout.write(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
            return
        width = max(len(row["name"]) for row in rows)
        for row in rows:
            variables = " ".join(f"{{{v}}}" for v in row["variables"])
            line = f"{row['name']:<{width}}  {row['origin']:<8}  {row['description']}"
            ctx.stdout.write(sanitize(line + (f"  {variables}" if variables else "")) + "\n")


@templates_app.command("show")
def show(name: NameArg) -> None:
    """Print a template as TOML (a built-in one as a file would hold it)."""
    from chatcli.render import sanitize

    ctx, templates = _start()
    with boundary(ctx):
        text = templates.source_text(name)
        if text is None:
            templates.get(name)  # the usual "no template named" error
            return
        ctx.stdout.write(sanitize(text) if ctx.stdout_isatty else text)
        if not text.endswith("\n"):
            ctx.stdout.write("\n")


@templates_app.command("edit")
def edit(name: NameArg) -> None:
    """Edit a template in $VISUAL/$EDITOR (a new one starts from a skeleton, a built-in one
    from its text); it is saved only when valid."""
    from chatcli.store.files import write_private
    from chatcli.templates import BUILTIN, check_name

    ctx, templates = _start()
    with boundary(ctx):
        check_name(name)
        path = templates.path(name)
        for link in (templates.directory, path):
            if link.is_symlink():  # found before the editor runs, not after the edit
                real = path.resolve()
                raise UsageError(
                    f"{link} is a symbolic link, and chatcli does not write through links: "
                    f"edit {real} where it is"
                )
        text = templates.source_text(name) or SKELETON  # a broken file opens as it is
        editor = ctx.env.get("VISUAL") or ctx.env.get("EDITOR") or "vi"
        while True:
            text = _run_editor(editor, name, text)
            problem = _problem(name, text, path)
            if problem is None:
                break
            say(ctx, f"error: {problem}")
            if not ctx.stdin_isatty or ctx.stdin is None:
                say(ctx, f"{path} was not changed")
                raise typer.Exit(EXIT_ERROR)
            ctx.stderr.write("Edit it again? [Y/n] ")
            ctx.stderr.flush()
            if ctx.stdin.readline().strip().lower() in ("n", "no"):
                say(ctx, f"{path} was not changed")
                raise typer.Exit(EXIT_ERROR)
        # Never through a link: a linked templates/ or file (dotfiles) is edited where it is.
        write_private(path, text.encode("utf-8"))
        replaces = " (it replaces the built-in one)" if name in BUILTIN else ""
        say(ctx, f"saved {path}{replaces}")


def _run_editor(editor: str, name: str, text: str) -> str:
    with tempfile.TemporaryDirectory(prefix="chatcli-") as folder:
        draft = Path(folder) / f"{name}.toml"
        draft.write_text(text, encoding="utf-8")
        try:
            code = subprocess.call([*shlex.split(editor), str(draft)])
        except OSError as exc:
            raise UsageError(f"cannot run the editor {editor!r}: {exc.strerror or exc}") from None
        if code != 0:
            raise UsageError(f"the editor {editor!r} exited with status {code}; nothing saved")
        return draft.read_text(encoding="utf-8", errors="replace")


def _problem(name: str, text: str, path: Path) -> str | None:
    """Why ``text`` is not a valid template, or ``None``."""
    import tomllib

    from chatcli.errors import ChatcliError
    from chatcli.templates import parse

    try:
        parse(name, tomllib.loads(text), path)
    except tomllib.TOMLDecodeError as exc:
        return f"{path.name}: {exc}"
    except ChatcliError as exc:
        return str(exc)
    return None


@templates_app.command("rm")
def rm(name: NameArg) -> None:
    """Remove a template file (a built-in one of the same name is used again)."""
    from chatcli.templates import BUILTIN

    ctx, templates = _start()
    with boundary(ctx):
        path = templates.path(name)
        try:
            path.unlink()
        except FileNotFoundError:
            if name in BUILTIN:
                raise UsageError(
                    f"{name!r} is built in: there is no file to remove "
                    "(chatcli templates edit makes one that replaces it)"
                ) from None
            raise UsageError(f"no template named {name!r}") from None
        except OSError as exc:
            raise UsageError(f"cannot remove {path}: {exc.strerror or exc}") from None
        again = f"; the built-in {name} is used again" if name in BUILTIN else ""
        say(ctx, f"removed {path}{again}")


__all__ = ["templates_app"]
