"""Showing an answer: the renderer interface, its implementations, and the terminal sanitizer.

The engine drives a :class:`Renderer` (``start``, ``feed`` for each piece, ``finish``) and knows
nothing else about output. Which renderer a command gets is decided once, in :func:`choose`:

* stdout is not a terminal: :class:`PlainRenderer` writes the model's text exactly as received;
* a terminal with ``--raw``: :class:`PlainRenderer` with the text sanitized;
* a terminal (or ``--markdown``): :class:`MarkdownRenderer`, Rich Markdown, live while streaming;
* ``--json``: :class:`NullRenderer` (the command prints one JSON object at the end).

Model text is untrusted: :func:`sanitize` makes every control character except newline and tab
visible before it reaches a terminal (ESC, CR, BEL, DEL, C1 such as 0x9B). It works per
character with no state, so an escape sequence split across two stream pieces is caught too.
"""

from __future__ import annotations

from typing import IO, TYPE_CHECKING, Any, Final, Protocol

if TYPE_CHECKING:
    from rich.console import Console
    from rich.live import Live
    from rich.markdown import Markdown


def _visible_table() -> dict[int, str]:
    table: dict[int, str] = {}
    for code in range(0x20):
        if code not in (0x09, 0x0A):
            table[code] = chr(0x2400 + code)  # U+2400.. "control pictures": ␛ ␍ ␇ ...
    table[0x7F] = "\u2421"  # ␡
    for code in range(0x80, 0xA0):
        table[code] = f"\\x{code:02x}"
    return table


_VISIBLE: Final = _visible_table()


def sanitize(text: str) -> str:
    """``text`` safe for a terminal: control characters other than ``\\n``/``\\t`` made visible."""
    return text.translate(_VISIBLE)


class Renderer(Protocol):
    """What the engine needs from an output."""

    #: Redraws a region of the terminal while streaming (nothing else may write there then).
    live: bool

    def start(self) -> None:
        """Called once before the first piece."""

    def feed(self, text: str) -> None:
        """Show one more piece of the answer."""

    def finish(self, *, interrupted: bool = False) -> None:
        """The answer is over (``interrupted``: it broke off); leave the output tidy."""


class NullRenderer:
    """Shows nothing (``--json`` prints the whole result at the end)."""

    live = False

    def start(self) -> None:
        pass

    def feed(self, text: str) -> None:
        pass

    def finish(self, *, interrupted: bool = False) -> None:
        pass


class PlainRenderer:
    """Writes pieces as they come. ``safe``: sanitize for a terminal; else write them verbatim."""

    live = False

    def __init__(self, stream: IO[str], *, safe: bool) -> None:
        self._stream = stream
        self._safe = safe
        self._last = ""

    def start(self) -> None:
        pass

    def feed(self, text: str) -> None:
        if not text:
            return
        self._stream.write(sanitize(text) if self._safe else text)
        self._stream.flush()
        self._last = text[-1]

    def finish(self, *, interrupted: bool = False) -> None:
        # End with a newline so the shell prompt starts on its own line.
        if self._last and self._last != "\n":
            self._stream.write("\n")
        self._stream.flush()


class MarkdownRenderer:
    """Rich Markdown. On a terminal it redraws live while streaming; else it prints at the end.

    This is the simple renderer: it re-renders the whole answer on each refresh (bounded to a
    few per second). It sits behind :class:`Renderer` so a block-streaming one can replace it.
    """

    REFRESH_PER_SECOND: Final = 8

    def __init__(self, console: Console, *, live: bool) -> None:
        self._console = console
        self.live = live
        self._live: Live | None = None
        self._text: list[str] = []
        self._echo = _TerminalEcho(console.file)

    def _markdown(self) -> Markdown:
        from rich.markdown import Markdown

        # hyperlinks=False: a link shows its real target instead of a hidden OSC 8 link.
        return Markdown(sanitize("".join(self._text)), hyperlinks=False)

    def start(self) -> None:
        if self.live:
            from rich.live import Live

            self._live = Live(
                console=self._console,
                refresh_per_second=self.REFRESH_PER_SECOND,
                vertical_overflow="visible",
                auto_refresh=True,
            )
            self._echo.off()
            self._live.start()

    def feed(self, text: str) -> None:
        if not text:
            return
        self._text.append(text)
        if self._live is not None:
            self._live.update(self._markdown())

    def finish(self, *, interrupted: bool = False) -> None:
        if self._live is not None:
            self._live.update(self._markdown(), refresh=True)
            self._live.stop()
            self._live = None
            self._echo.restore()
        elif self._text:
            self._console.print(self._markdown())


class _TerminalEcho:
    """Turns the terminal's echo off while a live region is drawn, and back on after.

    Keys typed during an answer, and the ``^C`` a terminal echoes for Ctrl-C, would otherwise
    land inside the region and shift the cursor under Rich, which then leaves stale lines.
    """

    def __init__(self, stream: object) -> None:
        self._stream = stream
        self._saved: list[Any] | None = None

    def off(self) -> None:
        try:
            import termios

            fd = self._stream.fileno()  # type: ignore[attr-defined]
            saved = termios.tcgetattr(fd)
            quiet = list(saved)
            quiet[3] &= ~(termios.ECHO | termios.ECHOCTL)
            termios.tcsetattr(fd, termios.TCSANOW, quiet)
            self._saved = saved
        except (ImportError, AttributeError, ValueError, OSError):
            self._saved = None  # not a terminal (or not a POSIX one): nothing to do

    def restore(self) -> None:
        if self._saved is None:
            return
        try:
            import termios

            fd = self._stream.fileno()  # type: ignore[attr-defined]
            termios.tcsetattr(fd, termios.TCSANOW, self._saved)
        except (ImportError, AttributeError, ValueError, OSError):
            pass
        self._saved = None


def make_console(stream: IO[str], *, force_terminal: bool | None = None) -> Console:
    """A Rich console for model output: no markup, no highlighting of model text."""
    from rich.console import Console

    return Console(
        file=stream,
        force_terminal=force_terminal,
        markup=False,
        highlight=False,
        emoji=False,
    )


def choose(
    stream: IO[str], *, is_terminal: bool, raw: bool, markdown: bool, json: bool
) -> Renderer:
    """The renderer for these output settings (see the module docstring)."""
    if json:
        return NullRenderer()
    if markdown and not raw:
        return MarkdownRenderer(make_console(stream, force_terminal=True), live=is_terminal)
    if not is_terminal:
        return PlainRenderer(stream, safe=False)
    if raw:
        return PlainRenderer(stream, safe=True)
    return MarkdownRenderer(make_console(stream), live=True)
