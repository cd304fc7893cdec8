"""Showing an answer: the renderer interface, its simple implementations, and the choice.

The engine drives a :class:`Renderer` (``start``, ``feed`` for each piece, ``finish``) and knows
nothing else about output. Which renderer a command gets is decided once, in :func:`choose`:

* stdout is not a terminal: :class:`PlainRenderer` writes the model's text exactly as received;
* a terminal with ``--raw``: :class:`PlainRenderer` with the text sanitized;
* a terminal (or ``--markdown``): :class:`MarkdownRenderer`, Rich Markdown streamed block by
  block in linear time (live on a terminal, where each code block gets a dim label ``[N]``
  with the number ``ask -x N`` and ``/copy N`` take);
* ``--json``: :class:`NullRenderer` (the command prints one JSON object at the end).

The parts live in submodules: :mod:`chatcli.render.sanitize` (model text made safe for a
terminal), :mod:`chatcli.render.markdown` (the streaming Markdown renderer) and
:mod:`chatcli.render.terminal` (terminal modes: Ctrl-Z, key echo). Their public names are
importable from here too.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, Final, Protocol

from chatcli.render.markdown import BlockSplitter, MarkdownRenderer, fast_markdown
from chatcli.render.sanitize import SafeStream, reveal_in_code, sanitize, unwrapped
from chatcli.render.terminal import QuietTerminal, SuspendGuard, call_later

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "BlockSplitter",
    "MarkdownRenderer",
    "NullRenderer",
    "PlainRenderer",
    "QuietTerminal",
    "Renderer",
    "SafeStream",
    "SuspendGuard",
    "choose",
    "fast_markdown",
    "make_console",
    "reveal_in_code",
    "sanitize",
    "unwrapped",
]


class Renderer(Protocol):
    """What the engine needs from an output."""

    #: Redraws a region of the terminal while streaming (nothing else may write there then).
    live: bool

    def start(self) -> None:
        """Called before the first piece, and again after each round of tool calls (the
        answer goes on after :meth:`finish` gave the terminal to their lines)."""

    def feed(self, text: str) -> None:
        """Show one more piece of the answer."""

    def think(self, text: str) -> None:
        """One more piece of what the model thinks before answering (shown, collapsed or
        hidden as the renderer was told; never mixed into the answer)."""

    def finish(self, *, interrupted: bool = False) -> None:
        """The answer is over (``interrupted``: it broke off); leave the output tidy."""


class NullRenderer:
    """Shows nothing (``--json`` prints the whole result at the end)."""

    live = False

    def start(self) -> None:
        pass

    def feed(self, text: str) -> None:
        pass

    def think(self, text: str) -> None:
        pass

    def finish(self, *, interrupted: bool = False) -> None:
        pass


class PlainRenderer:
    """Writes pieces as they come. ``safe``: sanitize for a terminal; else write them verbatim."""

    live = False

    #: Pieces are flushed together at most this often (a flush per piece is a system call per
    #: token); a piece is never held back longer than this.
    FLUSH_INTERVAL: Final = 1 / 30

    def __init__(self, stream: IO[str], *, safe: bool) -> None:
        self._stream = stream
        self._safe = safe
        self._last = ""
        self._last_flush = 0.0
        self._flush_due = False
        #: What a timed flush ran into (a closed pipe), raised by the next piece.
        self._failed: OSError | None = None

    def start(self) -> None:
        pass

    def feed(self, text: str) -> None:
        if self._failed is not None:
            raise self._failed
        if not text:
            return
        self._stream.write(sanitize(text) if self._safe else text)
        self._last = text[-1]
        wait = self._last_flush + self.FLUSH_INTERVAL - time.monotonic()
        if wait <= 0:
            self._flush()
        elif not self._flush_due:
            self._flush_due = call_later(wait, self._timed_flush)
            if not self._flush_due:
                self._flush()

    def think(self, text: str) -> None:
        """Plain output is the answer alone: in a pipe stdout carries nothing else, and
        ``--raw`` on a terminal means the answer's text and no more."""

    def _timed_flush(self) -> None:
        """The timer's flush. A pipe closed meanwhile (``| head``, ``q`` in ``less``) is kept
        for the next piece to raise in the turn's own code, which ends quietly and keeps the
        session; raised here, in an event-loop callback, it would print a traceback."""
        try:
            self._flush()
        except OSError as exc:
            self._failed = exc

    def _flush(self) -> None:
        self._flush_due = False
        self._stream.flush()
        self._last_flush = time.monotonic()

    def finish(self, *, interrupted: bool = False) -> None:
        if self._failed is not None:
            raise self._failed
        # End with a newline so the shell prompt starts on its own line.
        if self._last and self._last != "\n":
            self._stream.write("\n")
        self._stream.flush()


def make_console(
    stream: IO[str],
    *,
    force_terminal: bool | None = None,
    env: Mapping[str, str] | None = None,
) -> Console:
    """A Rich console for text from outside: no markup, no highlighting, and every piece of
    text made safe (:func:`sanitize`) as it is turned into output, while Rich's own styles and
    cursor controls are kept. Given a :class:`SafeStream`, it writes to the stream under it.

    ``env`` is the environment whose ``NO_COLOR``, ``COLUMNS``, ``TERM`` and the like it obeys
    (the command's, from its context; ``None``: the process's).
    """
    return _safe_console_class()(
        file=unwrapped(stream),
        force_terminal=force_terminal,
        markup=False,
        highlight=False,
        emoji=False,
        _environ=env,  # Rich's own parameter for this (rich is pinned below its next major)
    )


_SAFE_CONSOLE: type[Console] | None = None


def _safe_console_class() -> type[Console]:
    """Rich's ``Console`` with each text segment sanitized where output is put together."""
    global _SAFE_CONSOLE
    if _SAFE_CONSOLE is None:
        from collections.abc import Iterable

        from rich.console import Console
        from rich.segment import Segment

        class SafeConsole(Console):
            def _render_buffer(self, buffer: Iterable[Segment]) -> str:
                return super()._render_buffer(
                    segment if segment.control else segment._replace(text=sanitize(segment.text))
                    for segment in buffer
                )

        _SAFE_CONSOLE = SafeConsole
    return _SAFE_CONSOLE


def choose(
    stream: IO[str],
    *,
    is_terminal: bool,
    raw: bool,
    markdown: bool,
    json: bool,
    env: Mapping[str, str] | None = None,
    reasoning: str = "collapse",
) -> Renderer:
    """The renderer for these output settings (see the module docstring).

    The renderers make the answer safe themselves, as it streams: given a :class:`SafeStream`
    they write to the stream under it, so the text is not sanitized twice on its hot path.
    """
    if json:
        return NullRenderer()
    stream = unwrapped(stream)
    if markdown and not raw:
        return MarkdownRenderer(
            make_console(stream, force_terminal=True, env=env),
            live=is_terminal,
            reasoning=reasoning if is_terminal else "hide",  # into a pipe: the answer alone
            numbered=is_terminal,  # into a pipe: the answer alone, no labels
        )
    if not is_terminal:
        return PlainRenderer(stream, safe=False)
    if raw:
        return PlainRenderer(stream, safe=True)
    return MarkdownRenderer(
        make_console(stream, env=env), live=True, reasoning=reasoning, numbered=True
    )
