"""``chatcli tools list``: the tools a model may be given, built-in and from MCP servers.

Each MCP server of config.toml is started to be asked for its tools, and stopped again; one
that cannot start is listed with why, and the others are still listed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from chatcli.clikit import JsonOpt, VerboseOpt, boundary, complete_mcp, run_async, setup_logging
from chatcli.context import AppContext
from chatcli.errors import EXIT_ERROR, ChatcliError

tools_app = typer.Typer(
    help="List the tools a model may call: built-in ones and MCP servers' (see --tool, --mcp).",
    no_args_is_help=True,
)


@tools_app.command("list")
def list_tools(
    servers: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[SERVER]...",
            help="Only these MCP servers (default: the built-in tools and every server).",
            autocompletion=complete_mcp,
            show_default=False,
        ),
    ] = None,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """List the tools: name, what it does, and whether it asks before it runs."""
    from chatcli.tools.builtin import BUILTIN, builtin_tools
    from chatcli.tools.setup import ToolSet

    ctx = AppContext.current()
    setup_logging(ctx, verbose)
    with boundary(ctx, verbose=verbose):
        settings = ctx.settings.tools
        for name in servers or []:
            if name not in settings.servers:
                from chatcli.errors import UsageError

                known = ", ".join(settings.servers) or "none is configured"
                raise UsageError(f"no MCP server {name!r} ([mcp.servers.NAME]; {known})")
        rows: list[dict[str, Any]] = []
        if not servers:
            for tool in builtin_tools(BUILTIN, cwd=Path.cwd()):
                rows.append(_row(tool, "built-in"))
        failed = False
        chosen = servers or list(settings.servers)

        async def ask_servers() -> None:
            nonlocal failed
            for name in chosen:
                toolset = ToolSet(
                    settings, cwd=Path.cwd(), env=ctx.env, log_dir=ctx.paths.state_dir
                )
                toolset.enable(name)
                try:
                    box = await toolset.toolbox()
                    rows.extend(_row(tool, f"mcp:{name}") for tool in box.tools)
                except ChatcliError as exc:
                    failed = True
                    rows.append({"name": name, "source": f"mcp:{name}", "error": str(exc)})
                finally:
                    await toolset.aclose()

        if chosen:
            run_async(ask_servers())
        if json_out:
            ctx.stdout.write(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
        else:
            _print(ctx, rows, set(settings.allow))
        if failed:
            raise typer.Exit(EXIT_ERROR)


def _row(tool: Any, source: str) -> dict[str, Any]:
    return {
        "name": tool.name,
        "source": source,
        "asks": bool(tool.acts),
        "description": tool.description,
        "parameters": dict(tool.parameters),
    }


def _print(ctx: AppContext, rows: list[dict[str, Any]], allowed: set[str]) -> None:
    from chatcli.render import sanitize

    width = max((len(row["name"]) for row in rows), default=4)
    for row in rows:
        if "error" in row:
            line = f"{row['name']:<{width}}  {row['source']}: cannot start: {row['error']}"
        else:
            first = (row["description"].strip().splitlines() or [""])[0]
            if len(first) > 100:
                first = first[:99] + "…"
            asks = "reads only"
            if row["asks"]:
                asks = "allowed" if row["name"] in allowed else "asks first"
            line = f"{row['name']:<{width}}  {row['source']} · {asks} · {first}"
        ctx.stdout.write(sanitize(line) + "\n")
    ctx.stdout.flush()
