"""The command line: parse, build the context, call the engine, map errors to exit codes.

Kept thin and cheap to import: aiohttp, Rich's Markdown and the engine load inside the commands
that need them, so ``chatcli --version`` and ``--help`` start fast.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, Final, NoReturn

import typer

from chatcli import __version__
from chatcli.clikit import (
    JsonOpt,
    MarkdownOpt,
    ProviderOpt,
    ProxyOpt,
    RawOpt,
    ReasoningOpt,
    Terminated,
    TimeoutOpt,
    VerboseOpt,
    boundary,
    run_async,
    say,
    setup_logging,
    with_chat_options,
)
from chatcli.context import AppContext
from chatcli.core import ChatOptions
from chatcli.errors import (
    EXIT_CUT,
    EXIT_ERROR,
    EXIT_OK,
    ProviderError,
    UsageError,
    check_url,
    redact_credentials,
)
from chatcli.serve_cli import serve
from chatcli.sessions_cli import sessions_app
from chatcli.templates_cli import templates_app
from chatcli.tools_cli import tools_app

app = typer.Typer(
    name="chatcli",
    help="Chat with language models from the shell: one-shot questions, pipes and more.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        print(f"chatcli {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Show the version."
        ),
    ] = False,
) -> None:
    """Chat with language models from the shell: one-shot questions, pipes and more."""


# -- ask ----------------------------------------------------------------------------------------


def compose_message(prompt: str, piped: str | None, *, allow_empty: bool = False) -> str:
    """The user's text: piped text, then the prompt, a blank line apart (either may be
    absent; both only when ``-f`` items carry the question: ``allow_empty``)."""
    parts = [part for part in (piped,) if part and part.strip()]
    if prompt.strip():
        parts.append(prompt)
    if not parts:
        if allow_empty:
            return ""
        raise UsageError("no prompt: give one as an argument or pipe text in (chatcli ask --help)")
    # Each part but the last ends where the blank line starts; the last is kept as it came.
    return "\n\n".join([*(part.rstrip("\r\n") for part in parts[:-1]), parts[-1]])


def _framed(conversation: Any, text: str, has_items: bool) -> str:
    """The message for ``text`` under the conversation's template; asking with nothing at all
    is a usage error, unless the template's prompt is the question."""
    applied = conversation.template
    if not text and not has_items:
        if applied is None:
            compose_message("", None)  # the usual "no prompt" error
        elif applied.template.needs_input():
            raise UsageError(
                f"template {applied.name!r} works on your input: give a question or pipe text in"
            )
    return str(conversation.compose(text))


def read_piped_stdin(ctx: AppContext) -> str | None:
    """stdin's whole text when it is a pipe or file; ``None`` for a terminal or no stdin."""
    if ctx.stdin is None or ctx.stdin_isatty:
        return None
    buffer = getattr(ctx.stdin, "buffer", None)
    try:
        if buffer is None:
            return ctx.stdin.read()
        data: bytes = buffer.read()
    except (OSError, ValueError):
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        say(ctx, "warning: stdin is not valid UTF-8; undecodable bytes were replaced with U+FFFD")
        return text


@app.command()
@with_chat_options
def ask(
    prompt: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="PROMPT", help="The question. Piped stdin is read too and goes before it."
        ),
    ] = None,
    *,
    chat: ChatOptions,
    raw: RawOpt = False,
    markdown: MarkdownOpt = False,
    reasoning: ReasoningOpt = None,
    json_out: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print one JSON object at the end: text, reasoning, status, usage, provider.",
        ),
    ] = False,
    usage: Annotated[
        bool,
        typer.Option("--usage", help="Say after the answer what it took: tokens, speed, cost."),
    ] = False,
    files: Annotated[
        list[str] | None,
        typer.Option(
            "-f",
            "--file",
            metavar="PATH",
            help="Context: a file, a directory (git's ignores apply), a glob, a URL, or -.",
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Show what would be sent, and send nothing."),
    ] = False,
    attach: Annotated[
        list[str] | None,
        typer.Option(
            "-a",
            "--attach",
            metavar="IMAGE",
            help="An image to send with the question (PNG, JPEG, WebP or GIF); repeatable.",
        ),
    ] = None,
    extract: Annotated[
        str | None,
        typer.Option(
            "-x",
            "--extract",
            metavar="[SEL]",
            help="Print only the answer's code: the last block, or -x N, -x LANG, -x all. "
            "The answer shows on stderr when it is a terminal.",
        ),
    ] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Ask one question and stream the answer to stdout."""

    ctx = AppContext.current()
    log_handler = setup_logging(ctx, verbose)
    with boundary(ctx, verbose=verbose):
        if extract is not None:
            from chatcli.extract import check_selector

            if json_out:
                raise UsageError("-x and --json: choose one (--json has the whole answer)")
            extract = check_selector(extract)  # a bare -x is "last" (see main)
        piped = read_piped_stdin(ctx)
        context = None
        if files:
            from chatcli.files import gather

            context = gather(
                files,
                stdin=piped,
                env=ctx.env,
                proxy=chat.proxy,  # pages come through the proxy the model's request would use
                configured_proxy=ctx.settings.proxy,
                timeout=chat.timeout if chat.timeout is not None else ctx.settings.timeout,
                max_file=_limits(ctx)[0],
                max_total=_limits(ctx)[1],
            )
            if "-" in files:
                piped = None  # stdin is one of the items
            if context.skipped:
                left = ", ".join(f"{path} ({why})" for path, why in context.skipped)
                say(ctx, f"left out: {left}")
        items = context.items if context else []
        # Without a template (-t, or the continued session's) there must be something to ask.
        maybe_template = chat.template is not None or chat.continue_last or chat.session
        text = compose_message(
            " ".join(prompt or []), piped, allow_empty=bool(items or maybe_template)
        )
        from chatcli.chat import open_conversation
        from chatcli.render import choose
        from chatcli.turn import CUT

        conversation = open_conversation(ctx, chat, notice=lambda text: say(ctx, text))
        message = _framed(conversation, text, bool(items))
        conversation.saves_later = False  # one question: what is not saved now never will be
        images = _attached(conversation, attach or [])
        if dry_run:
            _show_dry_run(ctx, conversation, message, context, json_out, images)
            return
        # With -x stdout gets the code alone; a person watching sees the answer on stderr.
        on_stderr = extract is not None
        renderer = choose(
            ctx.stderr if on_stderr else ctx.stdout,
            is_terminal=ctx.stderr_isatty if on_stderr else ctx.stdout_isatty,
            raw=raw,
            markdown=markdown and not on_stderr,
            json=json_out or (on_stderr and not ctx.stderr_isatty),
            env=ctx.env,
            reasoning=reasoning or ctx.settings.reasoning or "collapse",
        )
        try:
            with log_handler.held(renderer.live):
                run_async(conversation.send_once(message, renderer, images=images, context=items))
        except (ProviderError, KeyboardInterrupt, Terminated):
            turn = conversation.last_turn
            if json_out and turn is not None and turn.began:
                _print_json(ctx, turn, conversation)  # scripts get the partial answer too
            raise
        turn = conversation.last_turn
        if json_out and turn is not None:
            _print_json(ctx, turn, conversation)
        if extract is not None and turn is not None:
            from chatcli.extract import select

            ctx.stdout.write(select(turn.text, extract))  # a cut answer: the code it has
            ctx.stdout.flush()
        if (usage or verbose) and turn is not None:
            say(ctx, _usage_line(turn, ctx.settings.providers))
        if turn is not None and turn.status in CUT:
            raise typer.Exit(EXIT_CUT)  # the line saying why was logged when the turn ended


@app.command()
@with_chat_options
def repl(
    *,
    chat: ChatOptions,
    raw: RawOpt = False,
    markdown: MarkdownOpt = False,
    reasoning: ReasoningOpt = None,
    files: Annotated[
        list[str] | None,
        typer.Option(
            "-f",
            "--file",
            metavar="PATH",
            help="Context for your first message: a file, a directory, a glob, a URL.",
        ),
    ] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Chat interactively: Enter sends, Ctrl-C stops an answer, /help lists commands.

    Piped stdin (git diff | chatcli repl) becomes context for the first message, and the keys
    are read from the terminal itself.
    """

    ctx = AppContext.current()
    log_handler = setup_logging(ctx, verbose)
    with boundary(ctx, verbose=verbose):
        if not ctx.stdout_isatty:
            raise UsageError("chatcli repl needs a terminal; in pipes and scripts use chatcli ask")
        keys = None
        piped = None
        if not ctx.stdin_isatty:
            piped = read_piped_stdin(ctx)
            keys = _terminal_input()
        from chatcli.chat import open_conversation
        from chatcli.files import Gathered, Item, gather
        from chatcli.render import choose
        from chatcli.repl import Repl, history_file

        gathered = gather(
            files or [],
            env=ctx.env,
            proxy=chat.proxy,
            configured_proxy=ctx.settings.proxy,
            timeout=chat.timeout if chat.timeout is not None else ctx.settings.timeout,
            max_file=_limits(ctx)[0],
            max_total=_limits(ctx)[1],
        )
        if piped and piped.strip():
            gathered.items.insert(0, Item("(stdin)", piped))
        conversation = open_conversation(ctx, chat, tools=True)
        loop = Repl(
            conversation,
            stdout=ctx.stdout,
            make_renderer=lambda: choose(
                ctx.stdout,
                is_terminal=True,
                raw=raw,
                markdown=markdown,
                json=False,
                env=ctx.env,
                reasoning=loop.reasoning,
            ),
            history_path=history_file(ctx.paths.state_dir),
            hold_logs=log_handler.held,
            editor=ctx.env.get("VISUAL") or ctx.env.get("EDITOR") or None,
            input=keys,
        )
        loop.reasoning = reasoning or ctx.settings.reasoning or "collapse"
        loop.prices = ctx.settings.providers
        loop.env = ctx.env
        loop.max_file, loop.max_total = _limits(ctx)
        if gathered.items or gathered.skipped:
            loop.add_context(Gathered(gathered.items, gathered.skipped))
        run_async(loop.run())


def _limits(ctx: AppContext) -> tuple[int, int]:
    """The -f limits (per file, in all), in bytes: config.toml's, else the built-in ones."""
    from chatcli.files import MAX_FILE, MAX_TOTAL

    return ctx.settings.max_file or MAX_FILE, ctx.settings.max_context or MAX_TOTAL


def _terminal_input() -> Any:
    """The keys of the terminal chatcli runs on, when stdin is a pipe (git diff | chatcli repl)."""
    from prompt_toolkit.input import create_input

    try:
        tty = open("/dev/tty")  # noqa: SIM115 (prompt_toolkit reads it for the whole REPL)
    except OSError:
        raise UsageError(
            "chatcli repl needs a terminal to read keys from; in pipes and scripts use chatcli ask"
        ) from None
    return create_input(tty)


def _attached(conversation: Any, paths: list[str]) -> list[Any]:
    """The images of ``-a``, read, recognised and made fit for the providers that may answer
    (refused, one line, where one takes no images or they are too big)."""
    if not paths:
        return []
    from chatcli.errors import ChatcliError
    from chatcli.images import fit, load_image

    images = [load_image(path) for path in paths]
    classes = []
    for name in [conversation.provider, *conversation.defaults.fallback]:
        try:
            classes.append(conversation.registry.get(name))
        except ChatcliError:
            continue  # an unknown name is said when the turn starts
    return fit(images, classes)


def _show_dry_run(
    ctx: AppContext,
    conversation: Any,
    message: str,
    context: Any,
    json_out: bool,
    images: list[Any] | None = None,
) -> None:
    """What ``ask`` would send, with sizes and token estimates; nothing is sent or stored."""
    images = images or []
    if images:
        from chatcli.images import describe, with_notes

        message = with_notes(message, images)
    carried = context.items if context else []
    messages = [m.as_dict() for m in conversation.messages(message, context=carried)]
    # The model's own tokenizer where the provider has one (local); else an estimate.
    provider = conversation.registry.create(conversation.provider)
    options, model = conversation.defaults.options, conversation.model

    def count(text: str) -> tuple[int, bool]:
        exact = provider.count_tokens(text, options, model)
        return (exact, False) if exact is not None else (-(-len(text.encode()) // 4), True)

    items = []
    for item in carried:
        tokens, _ = count(item.text)
        items.append({"source": item.source, "bytes": item.size, "tokens": tokens})
    attached = [
        {"url": image.url}
        if image.url
        else {"name": image.name, "media_type": image.media_type, "bytes": image.size}
        for image in images
    ]
    size = sum(len(m["content"].encode("utf-8", "surrogatepass")) for m in messages)
    total, estimated = count("\n\n".join(m["content"] for m in messages))
    plan = {
        "provider": conversation.provider,
        "model": conversation.model,
        "messages": messages,
        "context": items,
        **({"images": attached} if attached else {}),
        "bytes": size,
        "tokens": total,
        "tokens_estimated": estimated,
    }
    if json_out:
        ctx.stdout.write(json.dumps(plan, ensure_ascii=False, indent=2) + "\n")
        return
    out = ctx.stdout
    out.write(f"provider: {plan['provider']} · model: {plan['model'] or '(its default)'}\n")
    for item in items:
        source, size_of, tokens = item["source"], item["bytes"], item["tokens"]
        about = "~" if estimated else ""
        out.write(f"context: {source}  {size_of:,} bytes  {about}{tokens:,} tokens\n")
    for image in images:
        out.write(f"image: {describe(image)}\n")
    about = "~" if estimated else ""
    out.write(
        f"in all: {len(messages)} message(s), {size:,} bytes, {about}{total:,} tokens"
        + (" (estimated)" if estimated else " (the model's own count)")
        + "\n"
    )
    for entry in messages:
        out.write(f"\n--- {entry['role']} ---\n{entry['content'].rstrip()}\n")


def _usage_of(turn: Any, providers: Any) -> dict[str, Any]:
    """A turn's tokens, speed and cost, as ``--json`` gives them."""
    from chatcli.usage import cost, speed

    counts = turn.usage
    first = turn.first_piece_at - turn.started if turn.first_piece_at is not None else None
    output = counts.output_tokens if counts else None
    return {
        "input_tokens": counts.input_tokens if counts else None,
        "output_tokens": output,
        "estimated": counts.estimated if counts else None,
        "first_token_seconds": round(first, 3) if first is not None else None,
        "seconds": round(turn.duration, 3),
        "tokens_per_second": _rounded(speed(output, first, turn.duration)),
        "cost": cost(
            providers,
            turn.provider,
            turn.model,
            counts.input_tokens if counts else None,
            output,
        ),
    }


def _rounded(value: float | None) -> float | None:
    return round(value, 1) if value is not None else None


def _usage_line(turn: Any, providers: Any) -> str:
    """``1,234 tokens in, 56 out · 41 tokens/s · first token 0.8 s · 3.2 s · cost 0.0012``."""
    used = _usage_of(turn, providers)
    parts = []
    if used["input_tokens"] is not None or used["output_tokens"] is not None:
        about = "about " if used["estimated"] else ""
        parts.append(
            f"{about}{used['input_tokens'] or 0:,} tokens in, {used['output_tokens'] or 0:,} out"
        )
    if used["tokens_per_second"] is not None:
        parts.append(f"{used['tokens_per_second']:.0f} tokens/s")
    if used["first_token_seconds"] is not None:
        parts.append(f"first token {used['first_token_seconds']:.1f} s")
    parts.append(f"{used['seconds']:.1f} s")
    if used["cost"] is not None:
        parts.append(f"cost {used['cost']:.4f}")
    return f"{turn.provider} · {turn.model or '-'}: " + " · ".join(parts)


def _print_json(ctx: AppContext, turn: Any, conversation: Any) -> None:
    session = conversation.session if conversation.save else None
    result = {
        "text": turn.text,
        "reasoning": turn.reasoning or None,
        "provider": turn.provider,
        "model": turn.model,
        "status": turn.status,
        "finish_reason": turn.finish_reason,
        "usage": _usage_of(turn, ctx.settings.providers),
        "session": session.id if session is not None else None,
    }
    if turn.rounds:
        from chatcli.tools import rounds_as_dicts

        result["tool_rounds"] = rounds_as_dicts(turn.rounds)
    if turn.error:
        result["error"] = redact_credentials(turn.error)
    ctx.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
    ctx.stdout.flush()


# -- providers, models, paths -------------------------------------------------------------------


def _check_providers(
    ctx: AppContext, registry: Any, chosen: str | None, timeout: float | None, json_out: bool
) -> None:

    from chatcli.health import check, configured

    if chosen:
        names = [registry.get(n.strip()).name for n in chosen.split(",") if n.strip()]
    else:
        names = configured(ctx.settings, registry)
    if not names:
        raise UsageError(
            "no provider is configured to check: name some with -p a,b (see chatcli providers)"
        )
    wait = timeout if timeout is not None else (ctx.settings.timeout or 30.0)
    results = run_async(check(names, registry, timeout=wait))
    if json_out:
        ctx.stdout.write(json.dumps([r.as_dict() for r in results], indent=2) + "\n")
    else:
        from rich.table import Table

        from chatcli.render import make_console, sanitize

        table = Table(box=None, pad_edge=False, show_edge=False)
        for title in ("NAME", "STATUS", "MODEL", "FIRST TOKEN", "TOTAL", "ERROR"):
            table.add_column(title, overflow="fold")
        for r in results:
            first = f"{r.first_token:.2f} s" if r.first_token is not None else "-"
            table.add_row(
                r.provider,
                "ok" if r.ok else "failed",
                sanitize(r.model or "-"),
                first,
                f"{r.total:.2f} s",
                sanitize(redact_credentials(r.error or "")),
            )
        console = make_console(ctx.stdout, env=ctx.env)
        if not ctx.stdout_isatty:
            console.width = 200
        console.print(table)
    if not all(r.ok for r in results):
        raise typer.Exit(EXIT_ERROR)


def _auth_label(facts: dict[str, Any]) -> str:
    key_env = facts.get("key_env")
    if key_env:
        state = "set" if facts.get("key_set") else "not set"
        need = "" if facts.get("needs_auth") else ", optional"
        return f"{key_env} ({state}{need})"
    if "cookies_stored" in facts:
        count = facts["cookies_stored"]
        return f"cookies ({count or 'none'} stored)"
    return "needed" if facts.get("needs_auth") else "-"


@app.command()
def providers(
    json_out: JsonOpt = False,
    check_them: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Ask the configured providers (or those of -p) a tiny question, in parallel.",
        ),
    ] = False,
    provider: ProviderOpt = None,
    timeout: TimeoutOpt = None,
) -> None:
    """List providers and what each can do; --check tries them."""
    ctx = AppContext.current()
    setup_logging(ctx, False)
    with boundary(ctx):
        from chatcli.providers import Registry
        from chatcli.store import Stores

        settings = ctx.settings
        stores = Stores.for_context(ctx)
        registry = Registry.from_settings(settings, stores)
        if check_them:
            _check_providers(ctx, registry, provider, timeout, json_out)
            return
        from chatcli.chat import default_provider_name
        from chatcli.providers import site_offline

        default_name = (default_provider_name(settings) or "").strip().lower()
        rows = []
        for name in registry.names():
            row = registry.create(name).describe()
            row["default"] = row["name"] == default_name
            row["site_offline"] = site_offline(row["url"])
            rows.append(row)
        if json_out:
            ctx.stdout.write(json.dumps(rows, indent=2) + "\n")
            return
        from chatcli.render import make_console

        console = make_console(ctx.stdout, env=ctx.env)
        if not ctx.stdout_isatty:
            # Piped, a row is a line (for grep and cut): no wrapping, nothing left out.
            console.width = 1000
        table, left_out = _providers_table(rows, console.width)
        console.print(table)
        if any(row["default"] for row in rows):
            console.print("* the default provider")
        if any(row["site_offline"] for row in rows):
            console.print(
                "site offline: the service's own site is gone; kept for compatibility "
                "(a mirror works with --base-url)"
            )
        if left_out:
            console.print(f"(left out to fit: {', '.join(left_out).lower()}; --json has them)")


def _working_label(row: dict[str, Any]) -> str:
    if row["site_offline"]:
        return "site offline"
    return "yes" if row["working"] else "no"


#: Columns left out, in this order, when the terminal is too narrow for the whole table. NAME
#: and URL always stay, and a URL is never broken: it is what one copies.
_DROPPED_FIRST: Final = ("HISTORY", "SYSTEM", "STREAM", "TOOLS", "KIND", "AUTH", "WORKING")


def _providers_table(rows: list[dict[str, Any]], width: int) -> tuple[Any, list[str]]:
    """The table of ``chatcli providers`` for a terminal ``width`` columns wide, and the
    columns left out to fit it."""
    from rich.cells import cell_len
    from rich.table import Table

    def flag(value: Any) -> str:
        return "yes" if value else "-"

    columns: dict[str, list[str]] = {
        "NAME": [row["name"] + (" *" if row["default"] else "") for row in rows],
        "KIND": [row["kind"] for row in rows],
        "URL": [row["url"] for row in rows],
        "STREAM": [flag(row["supports_stream"]) for row in rows],
        "SYSTEM": [flag(row["supports_system_message"]) for row in rows],
        "HISTORY": [flag(row["supports_message_history"]) for row in rows],
        "TOOLS": [flag(row["supports_tools"]) for row in rows],
        "AUTH": [_auth_label(row) for row in rows],
        "WORKING": [_working_label(row) for row in rows],
    }
    wraps = {"AUTH"}  # "OPENAI_API_KEY (not set)" may take two lines, at its spaces

    def needed(title: str) -> int:
        cells = [title, *columns[title]]
        if title in wraps:
            return max(cell_len(word) for cell in cells for word in cell.split())
        return max(cell_len(cell) for cell in cells)

    shown = list(columns)
    left_out: list[str] = []
    for title in _DROPPED_FIRST:
        if sum(needed(t) for t in shown) + 2 * (len(shown) - 1) <= width:
            break
        shown.remove(title)
        left_out.append(title)
    table = Table(box=None, pad_edge=False, show_edge=False)
    for title in shown:
        table.add_column(title, no_wrap=title not in wraps, overflow="fold")
    for index in range(len(rows)):
        table.add_row(*(columns[title][index] for title in shown))
    return table, left_out


models_app = typer.Typer(
    invoke_without_command=True,
    no_args_is_help=False,
)


@models_app.callback(invoke_without_command=True)
def models(
    typer_ctx: typer.Context,
    provider: ProviderOpt = None,
    base_url: Annotated[
        str | None, typer.Option("--base-url", metavar="URL", help="The provider's root URL.")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """List the models a provider offers (asks the service where it can).

    For -p local: each GGUF file's size, parameter count and context length. Without a
    command it lists; pull and rm manage the GGUF files of DATA/models/.
    """
    ctx = AppContext.current()
    setup_logging(ctx, False)
    with boundary(ctx):
        if typer_ctx.invoked_subcommand is not None:
            if provider or base_url or json_out:
                raise UsageError(
                    f"-p, --base-url and --json go with the listing, not models "
                    f"{typer_ctx.invoked_subcommand}"
                )
            return
        from chatcli.providers import Registry
        from chatcli.store import Stores

        if base_url:
            check_url(base_url, what="--base-url", error=UsageError)
        from chatcli.chat import resolve_provider_name

        settings = ctx.settings
        registry = Registry.from_settings(settings, Stores.for_context(ctx))
        chosen = registry.create(resolve_provider_name(settings, provider), base_url=base_url)
        found: list[str] = run_async(chosen.list_models())
        cls = type(chosen)
        details = _local_details(chosen, found) if cls.name == "local" else None
        if json_out:
            data: dict[str, Any] = {
                "provider": cls.name,
                "default": cls.default_model or None,
                "models": found,
            }
            if details is not None:
                data["details"] = details
            ctx.stdout.write(json.dumps(data, indent=2) + "\n")
            return
        if not found:
            say(ctx, f"{cls.name} lists no models")
            return
        for name in found:
            suffix = "  (default)" if name == cls.default_model and ctx.stdout_isatty else ""
            facts = details.get(name) if details is not None else None
            if facts is not None:
                suffix = f"  {_facts_line(facts)}{suffix}"
            ctx.stdout.write(f"{name}{suffix}\n")


def _local_details(provider: Any, names: list[str]) -> dict[str, dict[str, Any]]:
    """Each local model's file size and what its GGUF header says (``error``: why not)."""
    from chatcli.providers.local import GGUFError, gguf_facts

    details: dict[str, dict[str, Any]] = {}
    for name in names:
        try:
            path = provider.model_path(name)
            facts: dict[str, Any] = {"size": path.stat().st_size}
            facts.update(gguf_facts(path))
        except (UsageError, GGUFError, OSError) as exc:
            facts = {"error": str(exc)}
        details[name] = facts
    return details


def _facts_line(facts: dict[str, Any]) -> str:
    from chatcli.pull import human_size

    if "error" in facts:
        return "(unreadable)"
    params = facts.get("parameter_count")
    context = facts.get("context_length")
    parts = [human_size(facts["size"])]
    parts.append(f"{_count(params)} parameters" if params else "parameters unknown")
    parts.append(f"context {context:,}" if context else "context unknown")
    return ", ".join(parts)


def _count(number: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if number >= scale:
            return f"{number / scale:.1f}".removesuffix(".0") + unit
    return str(number)


@models_app.command("pull")
def models_pull(
    source: Annotated[
        str,
        typer.Argument(
            metavar="SOURCE",
            help="An http(s) URL, or hf:OWNER/REPO/FILE.gguf (Hugging Face).",
            show_default=False,
        ),
    ],
    name: Annotated[
        str | None,
        typer.Option("--name", metavar="NAME", help="Keep it as NAME (default: the file's stem)."),
    ] = None,
    sha256: Annotated[
        str | None,
        typer.Option("--sha256", metavar="HEX", help="The SHA-256 the file must have."),
    ] = None,
    proxy_url: ProxyOpt = None,
    timeout: TimeoutOpt = None,
) -> None:
    """Download a GGUF model into DATA/models/ (resumes a cut download; checks size, SHA-256
    when the source gives one, and the GGUF format)."""
    import re
    import time

    ctx = AppContext.current()
    setup_logging(ctx, False)
    with boundary(ctx):
        from chatcli.providers.local import models_dir
        from chatcli.providers.proxy import resolve_proxy
        from chatcli.pull import human_size, model_name, pull, source_url

        if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
            raise UsageError("--sha256 takes 64 hex digits")
        url = source_url(source)
        stem = model_name(url, name)
        data_dir = ctx.paths.data_dir
        folder = models_dir(data_dir)
        assert folder is not None
        if proxy_url:
            from chatcli.config import PROXY_SCHEMES

            check_url(proxy_url, what="--proxy", schemes=PROXY_SCHEMES, error=UsageError)
        proxy = resolve_proxy(url, proxy_url, ctx.env, configured=ctx.settings.proxy)
        wait = timeout if timeout is not None else ctx.settings.timeout
        started = time.monotonic()
        bar: Any = None
        task: Any = None

        def on_start(offset: int, total: int | None) -> None:
            nonlocal bar, task
            if offset:
                say(ctx, f"resuming {stem} at {human_size(offset)}")
            if not ctx.stderr_isatty:
                return
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            from chatcli.render import make_console

            bar = Progress(
                "{task.description}",
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=make_console(ctx.stderr, env=ctx.env),
                transient=True,
            )
            bar.start()
            task = bar.add_task(stem, total=total, completed=offset)

        def progress(done: int, total: int | None) -> None:
            if bar is not None:
                bar.update(task, completed=done, total=total)

        try:
            result = run_async(
                pull(
                    url,
                    folder,
                    base=data_dir,
                    name=stem,
                    proxy=proxy,
                    timeout=wait,
                    sha256=sha256,
                    progress=progress,
                    on_start=on_start,
                )
            )
        except ProviderError as exc:
            if (folder / f"{stem}.gguf.part").exists():
                exc.message += "; run the same command again to resume"
            raise
        finally:
            if bar is not None:
                bar.stop()
        seconds = time.monotonic() - started
        checked = result.checksum or "no checksum (the source gives none)"
        say(
            ctx,
            f"pulled {stem} ({human_size(result.size)} in {seconds:.1f} s; checked: size, GGUF "
            f"magic, {checked}) to {result.path}; use it with -p local -m {stem}",
        )


@models_app.command("rm")
def models_rm(
    name: Annotated[str, typer.Argument(metavar="NAME", help="A model in DATA/models/.")],
    yes: Annotated[bool, typer.Option("-y", "--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a pulled model from DATA/models/ (asks first on a terminal)."""
    ctx = AppContext.current()
    setup_logging(ctx, False)
    with boundary(ctx):
        from chatcli.providers.local import models_dir
        from chatcli.pull import remove_model

        folder = models_dir(ctx.paths.data_dir)
        assert folder is not None
        path = remove_model(folder, ctx.paths.data_dir, name)
        if not yes:
            if not ctx.stdin_isatty or ctx.stdin is None:
                raise UsageError(f"not deleting {path} without a terminal to ask; add -y")
            ctx.stderr.write(f"Delete {path}? [y/N] ")
            ctx.stderr.flush()
            if ctx.stdin.readline().strip().lower() not in ("y", "yes"):
                say(ctx, "nothing deleted")
                raise typer.Exit(EXIT_ERROR)
        path.unlink()
        say(ctx, f"deleted {path}")


app.add_typer(models_app, name="models")


@app.command("usage")
def usage_command(
    since: Annotated[
        str | None,
        typer.Option(
            "--since", metavar="SPAN", help="Only answers of the last SPAN: 30m, 12h, 7d, 2w."
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Tokens (and cost, where config.toml gives prices) per provider and model."""
    ctx = AppContext.current()
    setup_logging(ctx, False)
    with boundary(ctx):
        from chatcli.store import Stores
        from chatcli.usage import cost
        from chatcli.usage import since as since_time

        start = since_time(since)
        prices = ctx.settings.providers
        rows = [
            {
                "provider": row.provider,
                "model": row.model,
                "turns": row.turns,
                "input_tokens": row.input_tokens,
                "output_tokens": row.output_tokens,
                "estimated_turns": row.estimated,
                "uncounted_turns": row.uncounted,
                "cost": cost(prices, row.provider, row.model, row.input_tokens, row.output_tokens),
            }
            for row in Stores.for_context(ctx).sessions.usage(start)
        ]
        if json_out:
            ctx.stdout.write(json.dumps(rows, indent=2) + "\n")
            return
        if not rows:
            say(ctx, "no answers saved" + (f" in the last {since}" if since else " yet"))
            return
        from rich.table import Table

        from chatcli.render import make_console
        from chatcli.sessions_cli import short_model

        table = Table(box=None, pad_edge=False, show_edge=False)
        for title in ("PROVIDER", "MODEL", "TURNS", "TOKENS IN", "TOKENS OUT", "COST"):
            table.add_column(title, justify="left" if title in ("PROVIDER", "MODEL") else "right")
        for row in rows:
            marks = "~" if row["estimated_turns"] else ""
            table.add_row(
                str(row["provider"]),
                short_model(str(row["model"] or "-"), 40),  # a .gguf path: its file's name
                f"{row['turns']:,}",
                f"{marks}{row['input_tokens']:,}",
                f"{marks}{row['output_tokens']:,}",
                f"{row['cost']:.4f}" if row["cost"] is not None else "-",
            )
        console = make_console(ctx.stdout, env=ctx.env)
        if not ctx.stdout_isatty:
            console.width = 160
        console.print(table)
        if any(row["estimated_turns"] for row in rows):
            console.print("~ includes chatcli's estimates where the service gave no counts")
        if any(row["cost"] is None for row in rows):
            console.print("cost: give prices in config.toml, [providers.NAME.prices]")


@app.command()
def render(raw: RawOpt = False, markdown: MarkdownOpt = False) -> None:
    """Render Markdown piped in, as it arrives, as answers are rendered (into a pipe: unchanged)."""
    ctx = AppContext.current()
    setup_logging(ctx, False)
    with boundary(ctx):
        if ctx.stdin is None or ctx.stdin_isatty:
            raise UsageError(
                "render: nothing piped in; pipe Markdown into it (cat notes.md | chatcli render)"
            )
        from chatcli.render import choose
        from chatcli.render.filter import copy_bytes, render_stream

        if not ctx.stdout_isatty and not markdown:
            copy_bytes(ctx.stdin, ctx.stdout)
            return
        renderer = choose(
            ctx.stdout,
            is_terminal=ctx.stdout_isatty,
            raw=raw,
            markdown=markdown,
            json=False,
            env=ctx.env,
        )
        run_async(render_stream(ctx.stdin, renderer))


@app.command("cmd")
@with_chat_options
def cmd_command(
    request: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="REQUEST", help="What the command should do. Piped stdin is context."
        ),
    ] = None,
    *,
    chat: ChatOptions,
    shell: Annotated[
        str | None,
        typer.Option(
            "--shell",
            metavar="NAME",
            help="The shell to write for and run with (default: $SHELL's, else sh).",
            show_default=False,
            autocompletion=lambda incomplete: [
                name
                for name in ("bash", "zsh", "fish", "sh", "dash", "ksh", "pwsh", "powershell")
                if name.startswith(incomplete)
            ],
        ),
    ] = None,
    os_name: Annotated[
        str | None,
        typer.Option(
            "--os",
            metavar="NAME",
            help="The OS to write for (default: this one, e.g. Debian GNU/Linux 12).",
            show_default=False,
        ),
    ] = None,
    no_interaction: Annotated[
        bool,
        typer.Option(
            "--no-interaction", help="Print the command only, as into a pipe; ask nothing."
        ),
    ] = False,
    discard_typeahead: Annotated[
        bool,
        typer.Option(
            "--discard-typeahead",
            hidden=True,  # for the --install key bindings
            help="Before printing the command, drop keys typed on the terminal meanwhile.",
        ),
    ] = False,
    install: Annotated[
        str | None,
        typer.Option(
            "--install",
            metavar="bash|zsh|fish",
            help="Print a Ctrl-L key binding for the shell's rc file that turns the command "
            "line's text into a command in place (Ctrl-L then no longer clears the screen).",
            show_default=False,
            autocompletion=lambda incomplete: [
                name for name in ("bash", "zsh", "fish") if name.startswith(incomplete)
            ],
        ),
    ] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Ask for one shell command, show it, and run it only if you press r.

    On a terminal it asks: [r]un [e]dit [c]opy e[x]plain [q]uit, after flagging in red a
    command that destroys data; run exits with the command's exit code. Into a pipe (or with
    --no-interaction) it prints the command alone. Nothing is saved unless -S or -c names a
    session.
    """
    ctx = AppContext.current()
    log_handler = setup_logging(ctx, verbose)
    with boundary(ctx, verbose=verbose):
        from chatcli.shellcmd import command_for, install_snippet, program_path

        if install is not None:
            if request:
                raise UsageError("--install prints a key binding: give it no REQUEST")
            ctx.stdout.write(install_snippet(install, program_path(sys.argv[0], ctx.env)))
            return
        piped = read_piped_stdin(ctx)
        if not (request or (piped or "").strip()):
            raise UsageError("no request: say what the command should do (chatcli cmd --help)")
        message = compose_message(" ".join(request or []), piped)
        code = command_for(
            ctx,
            chat,
            message,
            shell=shell,
            os_name=os_name,
            interactive=ctx.stdout_isatty and not no_interaction,
            hold=log_handler.held,
            discard_typeahead=discard_typeahead,
        )
    raise typer.Exit(code)


@app.command()
def paths(json_out: JsonOpt = False) -> None:
    """Show where chatcli keeps its config, data, cache and state."""
    ctx = AppContext.current()
    setup_logging(ctx, False)
    where = ctx.paths.as_dict()
    if json_out:
        ctx.stdout.write(json.dumps(where, indent=2) + "\n")
        return
    width = max(len(key) for key in where)
    for key, value in where.items():
        ctx.stdout.write(f"{key:<{width}}  {value}\n")


app.add_typer(sessions_app, name="sessions")
app.add_typer(templates_app, name="templates")
app.add_typer(tools_app, name="tools")
app.command("serve")(serve)

# -- cookies ------------------------------------------------------------------------------------

cookies_app = typer.Typer(
    help="Manage the cookies web providers use (values are never shown).",
    no_args_is_help=True,
)
app.add_typer(cookies_app, name="cookies")


#: The names ``--browser`` takes (``chatcli.browser.names.BROWSER_NAMES``, not imported for
#: ``--help``; a test keeps the two the same).
BROWSER_HELP = "chrome, chromium, brave, edge, vivaldi, opera, firefox, librewolf"


@cookies_app.command("import")
def cookies_import(
    file: Annotated[
        str | None,
        typer.Argument(
            metavar="[FILE]",
            help="A cookies.txt (Netscape format) or JSON export from a browser extension.",
            show_default=False,
        ),
    ] = None,
    browser: Annotated[
        str | None,
        typer.Option(
            "--browser",
            metavar="NAME",
            help=f"Read them from this browser's profile instead of a FILE: {BROWSER_HELP}.",
            show_default=False,
        ),
    ] = None,
    profile: Annotated[
        str | None,
        typer.Option(
            "--profile",
            metavar="PATH",
            help="With --browser: the profile directory or cookie database to read "
            "(default: the browser's default profile).",
            show_default=False,
        ),
    ] = None,
    domain: Annotated[
        str | None,
        typer.Option(
            "--domain",
            metavar="DOMAIN",
            help="Keep only this domain's cookies (with --browser, default: the domains of the "
            "providers that need cookies).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Import cookies from a browser export (FILE) or from the browser itself (--browser).

    The browser's files are only read (a locked database is read from a private copy).
    """
    from pathlib import Path

    from chatcli.store import Stores
    from chatcli.store.cookies import import_cookies

    ctx = AppContext.current()
    setup_logging(ctx, False)
    with boundary(ctx):
        if file is not None and browser is not None:
            raise UsageError("give either FILE or --browser NAME, not both")
        if profile is not None and browser is None:
            raise UsageError("--profile goes with --browser NAME")
        store = Stores.at(ctx.paths).cookies
        if browser is not None:
            from chatcli.browser import find_browser, import_from_browser

            name = find_browser(browser).name
            domains = [domain] if domain else _cookie_domains(ctx)
            result = import_from_browser(
                store, name, domains, env=ctx.env, cache_dir=ctx.paths.cache_dir, profile=profile
            )
            skipped = f" ({result.expired} already expired, skipped)" if result.expired else ""
            found = sorted({c.domain for c in result.cookies})
            say(
                ctx,
                f"imported {len(result.cookies)} cookie(s) for {', '.join(found)} from {name} "
                f"({result.database}){skipped}",
            )
            return
        if file is None:
            raise UsageError(
                "give a FILE to import (a cookies.txt or JSON export), or --browser NAME"
            )
        imported, expired = import_cookies(store, Path(file).expanduser(), domain=domain)
        skipped = f" ({expired} already expired, skipped)" if expired else ""
        if not imported:
            where = f" for {domain}" if domain else ""
            raise UsageError(f"no usable cookies{where} in {file}{skipped}")
        domains = sorted({c.domain for c in imported})
        say(ctx, f"imported {len(imported)} cookie(s) for {', '.join(domains)}{skipped}")


def _cookie_domains(ctx: AppContext) -> list[str]:
    """The ``cookie_domain`` of every provider that cannot work without cookies."""
    from chatcli.providers import Registry
    from chatcli.providers.web import WebProvider

    registry = Registry.from_config(ctx.settings.providers)
    domains = {
        cls.cookie_domain
        for cls in registry
        if issubclass(cls, WebProvider) and cls.needs_cookies()
    }
    if not domains:
        raise UsageError("no provider needs cookies; name the site with --domain DOMAIN")
    return sorted(domains)


@cookies_app.command("list")
def cookies_list(json_out: JsonOpt = False) -> None:
    """Show stored cookies: domain, name and expiry, values masked."""
    import time

    from chatcli.store import Stores
    from chatcli.store.cookies import mask

    ctx = AppContext.current()
    setup_logging(ctx, False)
    with boundary(ctx):
        cookies = Stores.at(ctx.paths).cookies.all()
        now = time.time()
        rows = [
            {
                "domain": c.domain,
                "name": c.name,
                "value": mask(c.value),
                "expires": c.expires,
                "expired": c.expired(now),
            }
            for c in cookies
        ]
        if json_out:
            ctx.stdout.write(json.dumps(rows, indent=2) + "\n")
            return
        if not rows:
            say(ctx, "no cookies stored (chatcli cookies import FILE, or --browser NAME)")
            return
        for cookie in cookies:
            if cookie.expires is None:
                when = "session"
            else:
                stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(cookie.expires))
                when = f"expired {stamp}" if cookie.expired(now) else f"until {stamp}"
            line = f"{cookie.domain}\t{cookie.name}\t{mask(cookie.value)}\t{when}\n"
            ctx.stdout.write(line)


@cookies_app.command("clear")
def cookies_clear(
    domain: Annotated[
        str | None,
        typer.Argument(metavar="[DOMAIN]", help="Only this domain (and its subdomains)."),
    ] = None,
) -> None:
    """Delete stored cookies: all of them, or one domain's."""
    from chatcli.store import Stores

    ctx = AppContext.current()
    setup_logging(ctx, False)
    with boundary(ctx):
        removed = Stores.at(ctx.paths).cookies.clear(domain)
        where = f" for {domain}" if domain else ""
        say(ctx, f"removed {removed} cookie(s){where}")


#: Options that take two values each time they are given (``-o KEY VALUE``).
_PAIR_OPTIONS: dict[str, tuple[str, ...]] = {"ask": ("option",), "repl": ("option",)}


def build_command() -> Any:
    """The click command tree of :data:`app`, with the pair options made to take two values.

    Typer cannot declare a repeatable option of pairs (``list[tuple[str, str]]``); it is declared
    as a list of strings and given ``nargs=2`` here, which is what click does natively: each
    value then arrives as a (key, value) pair.
    """
    from typer._completion_classes import completion_init

    completion_init()  # Typer's bash/zsh/fish completion, without its install options
    command = typer.main.get_command(app)
    for name, params in _PAIR_OPTIONS.items():
        for param in command.commands[name].params:  # type: ignore[attr-defined]
            if param.name in params:
                param.nargs = 2
    return command


def decoded_arguments(ctx: AppContext, argv: list[str]) -> list[str]:
    """The arguments as text: bytes that are not UTF-8 (which Python keeps as lone surrogates,
    and which no file or database can then store) become U+FFFD, with one warning."""
    fixed = [_repaired(arg) for arg in argv]
    if fixed != argv:
        say(ctx, "warning: an argument is not valid UTF-8; undecodable bytes became U+FFFD")
    return fixed


def _repaired(arg: str) -> str:
    if not any("\udc80" <= char <= "\udcff" for char in arg):
        return arg
    return arg.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def main(argv: list[str] | None = None, ctx: AppContext | None = None) -> NoReturn:
    """The ``chatcli`` entry point; ``ctx`` (default: the real process's) is what commands see."""
    from contextlib import redirect_stderr

    ctx = ctx or AppContext.from_process()
    args = decoded_arguments(ctx, sys.argv[1:] if argv is None else argv)
    if "-x" in args or "--extract" in args:
        from chatcli.extract import with_default_selector

        args = with_default_selector(args)
    try:
        # What the parser prints itself (usage errors quote the arguments) goes through the
        # context's sanitizing stderr too.
        with ctx.using(), redirect_stderr(ctx.stderr):
            build_command()(args=args, prog_name="chatcli")
    except SystemExit as exc:
        raise SystemExit(exc.code if exc.code is not None else EXIT_OK) from None
    raise SystemExit(EXIT_OK)


__all__ = ["app", "main"]
