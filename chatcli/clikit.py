"""The command line's shared machinery: the error boundary, stderr logging, option types.

Every command builds its :class:`~chatcli.context.AppContext`, calls :func:`setup_logging`, and
runs inside :func:`boundary`, the one place where chatcli's errors become a line on stderr
and an exit code.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import math
import os
import signal
import traceback
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import IO, Annotated, Any, Final, TypeVar

import typer

from chatcli.context import AppContext
from chatcli.core import RESERVED_OPTIONS, ChatOptions
from chatcli.errors import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    ChatcliError,
    UsageError,
    redact_credentials,
)

T = TypeVar("T")

#: The longest ``--timeout`` (a day): a wait for a connection, or for the next piece.
MAX_TIMEOUT: Final = 86400.0

# -- the error boundary -----------------------------------------------------------------------


def say(ctx: AppContext, message: str) -> None:
    """One line on stderr, with any credentials in URLs blanked (the context's stderr makes it
    safe for a terminal)."""
    ctx.stderr.write(f"chatcli: {redact_credentials(message)}\n")
    ctx.stderr.flush()


def print_traceback(ctx: AppContext, exc: BaseException) -> None:
    ctx.stderr.write(redact_credentials("".join(traceback.format_exception(exc))))


@contextmanager
def boundary(ctx: AppContext, *, verbose: bool = False) -> Iterator[None]:
    """Turn chatcli's errors into one line on stderr and the right exit code."""
    try:
        yield
    except ChatcliError as exc:
        if verbose or ctx.debug:
            print_traceback(ctx, exc)
        say(ctx, str(exc))
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        say(ctx, "interrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Terminated as exc:
        # What was shown is saved already; the terminal may be gone (SIGHUP): say it if we can.
        with suppress(OSError, ValueError):
            say(ctx, f"stopped by {signal.Signals(exc.signum).name}")
        for stream in (ctx.stdout, ctx.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                silence(stream)  # else the exit's own flush fails again, and the code is lost
        raise typer.Exit(128 + exc.signum) from None
    except BrokenPipeError:
        # The reader went away (`chatcli ask ... | head`): stop quietly, as other tools do.
        silence_stdout(ctx)
        raise typer.Exit(EXIT_OK) from None
    except typer.Exit:
        raise  # a command's own exit code (an Exception subclass too: not a bug)
    except Exception as exc:
        # A bug, not a condition we know: still one line, with the way to see more.
        if verbose or ctx.debug:
            print_traceback(ctx, exc)
            say(ctx, f"internal error: {type(exc).__name__}: {exc}")
        else:
            say(ctx, f"internal error: {type(exc).__name__}: {exc} (run with -v for details)")
        raise typer.Exit(EXIT_ERROR) from None


#: Signals that stop a command as Ctrl-C does, keeping what was shown (see :func:`run_async`).
STOP_SIGNALS: Final = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)


class Terminated(Exception):
    """The command was stopped by one of :data:`STOP_SIGNALS`; the exit code is 128 + it."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum


def run_async(work: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(work)``, with SIGTERM and SIGHUP handled as Ctrl-C is.

    A ``timeout``, a closed terminal or tmux window, or a killed job cancels the running task, so
    a turn ends as interrupted with the part shown saved, and then :class:`Terminated` is raised
    (the boundary exits 143 or 129). The handlers are plain signal handlers, which run between
    any two bytecodes: a signal that arrives while the last of the work runs without awaiting
    (saving the answer) is not lost. A second signal stops chatcli at once, the default way.
    A signal the user chose to ignore (``nohup``) stays ignored.
    """
    import asyncio  # here, not at the top: --version and --help start without it

    async def guarded() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        received: list[int] = []

        def stop(signum: int, _frame: object) -> None:
            if received:  # asked twice: stop now
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
                return
            received.append(signum)
            loop.call_soon_threadsafe(task.cancel)

        previous: dict[int, Any] = {}
        for signum in STOP_SIGNALS:
            with suppress(ValueError, OSError):  # not the main thread: leave them be
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    previous[signum] = signal.signal(signum, stop)
        try:
            result = await work
        except (asyncio.CancelledError, Exception):
            # After a hang-up, ending the answer on the terminal that is gone fails too (EIO).
            if received:
                raise Terminated(received[0]) from None
            raise
        finally:
            for signum, handler in previous.items():
                with suppress(ValueError, OSError):
                    signal.signal(signum, handler)
        if received:  # it came after the last await
            raise Terminated(received[0])
        return result

    return asyncio.run(guarded())


def silence_stdout(ctx: AppContext) -> None:
    silence(ctx.stdout)


def silence(stream: IO[str]) -> None:
    """Point the stream's file descriptor at /dev/null, so that flushing at exit cannot fail
    again (a closed pipe, a terminal that hung up)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
    except (OSError, ValueError):
        pass


class StderrHandler(logging.Handler):
    """Log lines on stderr, safe for a terminal; held back while a live display owns it.

    A line written under Rich's live region moves the cursor behind its back, and the next
    redraw then leaves a stale copy of the answer on screen.
    """

    def __init__(self, ctx: AppContext, *, debug: bool) -> None:
        super().__init__(logging.DEBUG if debug else logging.WARNING)
        prefix = "chatcli: %(name)s: " if debug else "chatcli: warning: "
        self.setFormatter(logging.Formatter(prefix + "%(message)s"))
        self._debug = debug
        self._stream = ctx.stderr
        self._held: list[str] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        # A notice (``extra={"notice": True}``) tells what chatcli did: no "warning:" label.
        if getattr(record, "notice", False) and not self._debug:
            text = "chatcli: " + record.getMessage()
        else:
            text = self.format(record)
        line = redact_credentials(text) + "\n"  # made safe by the context's stderr
        if self._held is not None:
            self._held.append(line)
        else:
            self._stream.write(line)
            self._stream.flush()

    @contextmanager
    def held(self, hold: bool) -> Iterator[None]:
        """Keep lines back inside the block when ``hold``; write them all when it ends."""
        if not hold:
            yield
            return
        self._held = []
        try:
            yield
        finally:
            lines, self._held = self._held, None
            with suppress(OSError, ValueError):  # stderr gone (a hang-up): keep the real outcome
                self._stream.write("".join(lines))
                self._stream.flush()


def setup_logging(ctx: AppContext, verbose: bool) -> StderrHandler:
    handler = StderrHandler(ctx, debug=verbose or ctx.debug)
    root = logging.getLogger("chatcli")
    root.handlers[:] = [handler]
    root.setLevel(handler.level)
    root.propagate = False
    return handler


# -- shared option types ------------------------------------------------------------------------

# -- shell completion of names, from the live installation ------------------------------------
# Each runs in a short-lived process the shell starts on Tab: cheap imports, and never an error.


def _matching(names: list[str], incomplete: str) -> list[str]:
    return sorted({n for n in names if n and n.startswith(incomplete)})


def complete_provider(incomplete: str) -> list[str]:
    try:
        from chatcli.providers import Registry

        ctx = AppContext.current()
        # -p a,b,c: complete the last name of the list.
        done, _, last = incomplete.rpartition(",")
        prefix = f"{done}," if done else ""
        names = Registry.from_config(ctx.settings.providers).names()
        return [prefix + name for name in _matching(names, last)]
    except Exception:
        return []


def complete_model(ctx: typer.Context, incomplete: str) -> list[str]:
    """The models the chosen (or default) provider is known to offer, without asking it."""
    try:
        from chatcli.providers import Registry

        app = AppContext.current()
        name = ctx.params.get("provider") or app.settings.provider
        if not name:
            return []
        provider = Registry.from_config(app.settings.providers).get(name)
        names = [*provider.models, provider.default_model]
        if app.settings.model and name == app.settings.provider:
            names.append(app.settings.model)
        return _matching(names, incomplete)
    except Exception:
        return []


def complete_session(incomplete: str) -> list[str]:
    try:
        from chatcli.store import Stores

        sessions = Stores.at(AppContext.current().paths).sessions
        if not sessions.path.exists():
            return []
        recent = sessions.recent(200)
        return _matching([s.name or "" for s in recent] + [s.id for s in recent], incomplete)
    except Exception:
        return []


def complete_template(incomplete: str) -> list[str]:
    try:
        from chatcli.templates import Templates

        found = Templates(AppContext.current().paths.config_dir / "templates").names()
        return _matching(found, incomplete)
    except Exception:
        return []


ProviderOpt = Annotated[
    str | None,
    typer.Option(
        "-p",
        "--provider",
        metavar="NAME",
        help="Provider name (see `chatcli providers`); a,b,c falls back in order.",
        show_default=False,
        autocompletion=complete_provider,
    ),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "-m",
        "--model",
        metavar="NAME",
        help="Model name.",
        show_default=False,
        autocompletion=complete_model,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
SessionOpt = Annotated[
    str | None,
    typer.Option(
        "-S",
        "--session",
        metavar="NAME",
        help="Continue the session with this name or id (prefix), or start one so named; "
        "NAME@N goes on from its message N, as a new branch.",
        show_default=False,
        autocompletion=complete_session,
    ),
]
TemplateOpt = Annotated[
    str | None,
    typer.Option(
        "-t",
        "--template",
        metavar="NAME",
        help="Use a template (role): its system prompt, prompt and model (see chatcli templates).",
        show_default=False,
        autocompletion=complete_template,
    ),
]
VarOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--var",
        metavar="NAME=VALUE",
        help="A value for a template's {NAME}; repeatable.",
        show_default=False,
    ),
]


def complete_tool(incomplete: str) -> list[str]:
    try:
        from chatcli.tools.builtin import BUILTIN

        return _matching(list(BUILTIN), incomplete)
    except Exception:
        return []


def complete_mcp(incomplete: str) -> list[str]:
    try:
        return _matching(list(AppContext.current().settings.tools.servers), incomplete)
    except Exception:
        return []


ToolOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--tool",
        metavar="NAME",
        help="Let the model call this built-in tool (read_file, list_dir, search_text, "
        "run_shell); repeatable.",
        show_default=False,
        autocompletion=complete_tool,
    ),
]
McpOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--mcp",
        metavar="NAME",
        help="Let the model call this MCP server's tools ([mcp.servers.NAME]); repeatable.",
        show_default=False,
        autocompletion=complete_mcp,
    ),
]
AllowToolOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-tool",
        metavar="NAME",
        help="Run this tool without asking, also off a terminal; repeatable.",
        show_default=False,
    ),
]
ContinueOpt = Annotated[
    bool, typer.Option("-c", "--continue", help="Continue the most recent session.")
]
NoSaveOpt = Annotated[bool, typer.Option("--no-save", help="Do not save this conversation.")]
VerboseOpt = Annotated[
    bool, typer.Option("-v", "--verbose", help="Log details to stderr; tracebacks on errors.")
]
SystemOpt = Annotated[
    str | None,
    typer.Option("--system", metavar="TEXT", help="System prompt.", show_default=False),
]


def _finite(value: float | None) -> float | None:
    """A number option's check that ranges cannot make: ``nan`` compares false with both ends."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a number chatcli can use")
    return value


TemperatureOpt = Annotated[
    float | None,
    typer.Option(
        "--temperature",
        metavar="X",
        min=0.0,
        max=2.0,
        callback=_finite,
        help="Sampling temperature (0-2).",
    ),
]
#: ``-o KEY VALUE``, repeatable. Typer cannot declare a list of pairs: this is declared as a
#: list of strings and ``cli.build_command`` gives it ``nargs=2``, so each value is a pair.
OptionOpt = Annotated[
    list[str] | None,
    typer.Option(
        "-o",
        "--option",
        metavar="KEY VALUE",
        help="Provider option, repeatable (-o max_tokens 200). JSON values are decoded.",
    ),
]
BaseUrlOpt = Annotated[
    str | None,
    typer.Option("--base-url", metavar="URL", help="The provider's root URL (an API's /v1 root)."),
]
ProxyOpt = Annotated[
    str | None,
    typer.Option(
        "--proxy",
        metavar="URL",
        help="Proxy URL: http:// or socks5:// (default: the *_PROXY variables).",
    ),
]
TimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        metavar="SECONDS",
        min=0.001,
        max=MAX_TIMEOUT,
        callback=_finite,
        help="Seconds to connect, and of silence while reading.",
    ),
]
NoStreamOpt = Annotated[bool, typer.Option("--no-stream", help="Ask for the whole answer at once.")]
RawOpt = Annotated[bool, typer.Option("--raw", help="Plain text, even on a terminal.")]


def _reasoning_mode(value: str | None) -> str | None:
    from chatcli.config import REASONING_MODES

    if value is not None and value not in REASONING_MODES:
        raise typer.BadParameter(f"{value!r}: give one of {', '.join(REASONING_MODES)}")
    return value


ReasoningOpt = Annotated[
    str | None,
    typer.Option(
        "--reasoning",
        metavar="show|collapse|hide",
        callback=_reasoning_mode,
        help="A reasoning model's thinking on a terminal (default: collapse to one line).",
        show_default=False,
    ),
]
MarkdownOpt = Annotated[bool, typer.Option("--markdown", help="Render Markdown, even into a pipe.")]
RetriesOpt = Annotated[
    int | None,
    typer.Option(
        "--retries",
        metavar="N",
        min=0,
        max=10,
        help="Retries of a failure before any text (default 2).",
        show_default=False,
    ),
]


# -- the chat options ``ask`` and ``repl`` share, declared once --------------------------------


def parse_option_value(value: str) -> Any:
    """``-o KEY VALUE``: JSON literals (numbers, true/false/null, lists, objects), else text.

    A number must be finite: ``NaN``, ``Infinity`` and ``1e400`` (which overflows to infinity)
    are refused, wherever they sit in the value.
    """
    try:
        return json.loads(value, parse_constant=_not_finite, parse_float=_finite_float)
    except _NotFinite as exc:
        raise UsageError(f"{exc} is not a finite number") from None
    except (ValueError, RecursionError):
        return value


class _NotFinite(ValueError):
    pass


def _not_finite(word: str) -> Any:
    raise _NotFinite(word)


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise _NotFinite(text)
    return number


def parse_options(pairs: Iterable[Sequence[str]]) -> dict[str, Any]:
    """``-o KEY VALUE`` pairs as provider options; reserved keys are refused. (Whether the
    provider takes them is checked once it is known.)"""
    options: dict[str, Any] = {}
    for key, value in pairs:
        if key in RESERVED_OPTIONS:
            raise UsageError(f"-o {key}: not a provider option ({RESERVED_OPTIONS[key]})")
        if not key.isidentifier():
            raise UsageError(f"-o {key!r}: option names are words like max_tokens or top_p")
        try:
            options[key] = parse_option_value(value)
        except UsageError as exc:
            raise UsageError(f"-o {key} {value}: {exc}") from None
    return options


def _chat_parameter(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
    )


#: The options, in the order ``--help`` shows them; :func:`with_chat_options` gives them to
#: a command, and :func:`chat_options` turns their values into one :class:`ChatOptions`.
CHAT_OPTIONS: Final = (
    _chat_parameter("provider", ProviderOpt, None),
    _chat_parameter("model", ModelOpt, None),
    _chat_parameter("system", SystemOpt, None),
    _chat_parameter("template", TemplateOpt, None),
    _chat_parameter("var", VarOpt, None),
    _chat_parameter("temperature", TemperatureOpt, None),
    _chat_parameter("option", OptionOpt, None),
    _chat_parameter("base_url", BaseUrlOpt, None),
    _chat_parameter("proxy", ProxyOpt, None),
    _chat_parameter("timeout", TimeoutOpt, None),
    _chat_parameter("retries", RetriesOpt, None),
    _chat_parameter("tool", ToolOpt, None),
    _chat_parameter("mcp", McpOpt, None),
    _chat_parameter("allow_tool", AllowToolOpt, None),
    _chat_parameter("no_stream", NoStreamOpt, False),
    _chat_parameter("session", SessionOpt, None),
    _chat_parameter("continue_last", ContinueOpt, False),
    _chat_parameter("no_save", NoSaveOpt, False),
)


def chat_options(values: Mapping[str, Any]) -> ChatOptions:
    """The :class:`ChatOptions` of the shared options' values (``-o`` pairs are parsed here)."""
    from chatcli.templates import check_name, parse_vars

    return ChatOptions(
        provider=values["provider"],
        model=values["model"],
        system=values["system"],
        temperature=values["temperature"],
        options=parse_options(values["option"] or []),
        stream=not values["no_stream"],
        proxy=values["proxy"],
        base_url=values["base_url"],
        timeout=values["timeout"],
        session=values["session"],
        continue_last=values["continue_last"],
        save=not values["no_save"],
        retries=values["retries"],
        template=check_name(values["template"]) if values["template"] is not None else None,
        variables=parse_vars(values["var"] or []),
        tools=list(values["tool"] or []),
        mcp=list(values["mcp"] or []),
        allow_tools=list(values["allow_tool"] or []),
    )


def with_chat_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command`` the shared chat options in place of its ``chat: ChatOptions`` parameter.

    Typer reads the signature this returns: the command's own parameters with :data:`CHAT_OPTIONS`
    where ``chat`` was. The command is called with ``chat`` built from their values; a bad
    ``-o`` is reported like any usage error.
    """
    signature = inspect.signature(command, eval_str=True)
    own = list(signature.parameters.values())
    at = [p.name for p in own].index("chat")
    parameters = [*own[:at], *CHAT_OPTIONS, *own[at + 1 :]]
    names = [p.name for p in CHAT_OPTIONS]

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        values = {name: kwargs.pop(name) for name in names}
        with boundary(AppContext.current()):
            chosen = chat_options(values)
        command(*args, chat=chosen, **kwargs)

    run.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in parameters}
    return run
