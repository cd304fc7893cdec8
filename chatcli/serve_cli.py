"""``chatcli serve``: the command that starts :mod:`chatcli.server` and stops it on Ctrl-C."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from chatcli.clikit import TimeoutOpt, VerboseOpt, boundary, run_async, say, setup_logging
from chatcli.context import AppContext
from chatcli.errors import UsageError

#: Where the token comes from when ``--token`` is not given.
TOKEN_ENV = "CHATCLI_SERVE_TOKEN"


def serve(
    host: Annotated[
        str,
        typer.Option(
            "--host",
            metavar="ADDRESS",
            help="The address to listen on. Anything but loopback needs a token "
            "(--token, CHATCLI_SERVE_TOKEN, or one made up and printed once).",
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option(
            "--port", metavar="PORT", min=0, max=65535, help="The port (0: any free one)."
        ),
    ] = 8808,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            metavar="TOKEN",
            help="Require Authorization: Bearer TOKEN on every API request.",
            show_default=False,
        ),
    ] = None,
    cors_origins: Annotated[
        list[str] | None,
        typer.Option(
            "--cors-origin",
            metavar="ORIGIN",
            help="A web origin (https://app.example) whose pages may call the API; repeatable.",
            show_default=False,
        ),
    ] = None,
    save: Annotated[
        bool,
        typer.Option("--save", help="Keep each conversation as a session (chatcli sessions)."),
    ] = False,
    timeout: TimeoutOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Serve every provider as one OpenAI-compatible API, with a chat page at /.

    POST /v1/chat/completions takes model as PROVIDER/MODEL (or a bare model of the default
    provider; a,b,c falls back); GET /v1/models lists them; GET /health. One line per request
    on stderr; Ctrl-C stops it, cutting open answers with an error event.
    """
    ctx = AppContext.current()
    handler = setup_logging(ctx, verbose)
    _log_aiohttp(ctx, verbose or ctx.debug)
    handler.addFilter(_NotForTheServer())
    with boundary(ctx, verbose=verbose):
        import re
        import secrets

        from chatcli.chat import default_provider_name
        from chatcli.server import ServeOptions, Server, is_loopback
        from chatcli.store import Stores

        origins = tuple(o.rstrip("/") for o in cors_origins or ())
        for origin in origins:
            # An origin is a scheme and a host (app://obsidian.md, chrome-extension://ID too).
            if not re.fullmatch(r"[a-z][a-z0-9+.-]*://[^/\s?#]+", origin):
                raise UsageError(
                    f"--cors-origin {origin!r}: give a scheme and host, like https://app.example"
                )
        token = token or ctx.env.get(TOKEN_ENV) or None
        if token is not None and (len(token) < 8 or not token.isprintable() or " " in token):
            raise UsageError("--token: use at least 8 printable characters, no spaces")
        made_up = False
        if token is None and not is_loopback(host):
            token, made_up = secrets.token_urlsafe(24), True
        options = ServeOptions(
            host=host, port=port, token=token, cors_origins=origins, save=save, timeout=timeout
        )
        settings = ctx.settings

        def line(text: str) -> None:
            ctx.stderr.write(text + "\n")
            ctx.stderr.flush()

        async def main() -> None:
            import asyncio
            import signal

            from chatcli.server import start

            server = Server(
                settings,
                Stores.for_context(ctx),
                options,
                say=line,
                default_provider=default_provider_name(settings),
            )
            running = await start(server)
            url = running.urls[0] if running.urls else f"http://{host}:{port}/"
            say(ctx, f"serving on {url} (the chat page; the API at {url}v1)")
            if made_up:
                say(ctx, f"token (shown once, not stored): {token}")
            if token is not None:
                say(ctx, f"the page with the token: {url}#token={token}")
            if save:
                say(ctx, "each conversation is saved as a session (chatcli sessions list)")
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
            for signum in signals:
                loop.add_signal_handler(signum, stop.set)
            try:
                await stop.wait()
                say(ctx, "stopping: open answers are cut")
                for signum in signals:  # asked again: stop at once
                    loop.add_signal_handler(signum, setattr, running, "hurry", True)
                await running.stop()
            finally:
                for signum in signals:
                    loop.remove_signal_handler(signum)
            say(ctx, "stopped")

        run_async(main())


def _log_aiohttp(ctx: AppContext, verbose: bool) -> None:
    """aiohttp's own complaints (a malformed request, a handler that failed) on stderr as one
    line each, as chatcli's; tracebacks only with -v. A port scanner's garbage makes one
    short line, not a page."""

    from chatcli.clikit import StderrHandler

    class OneLine(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if record.exc_info and not verbose:
                error = record.exc_info[1]
                record.msg = f"{record.getMessage()}: {error!r}"[:300]
                record.args, record.exc_info, record.exc_text = (), None, None
            return True

    handler = StderrHandler(ctx, debug=verbose)
    handler.addFilter(OneLine())
    aiohttp_log = logging.getLogger("aiohttp")
    aiohttp_log.handlers[:] = [handler]
    aiohttp_log.setLevel(logging.DEBUG if verbose else logging.WARNING)
    aiohttp_log.propagate = False


class _NotForTheServer(logging.Filter):
    """Drops the line ``ask`` gives about a cut answer (advice for the command line); the
    request's own log line says how it ended."""

    def filter(self, record: logging.LogRecord) -> bool:
        from chatcli.turn import CUT

        args = record.args
        if record.name == "chatcli.turn" and isinstance(args, tuple) and len(args) == 2:
            return args[1] not in CUT.values()
        return True
