"""Markdown streamed block by block, in linear time, with Rich's output byte for byte.

:class:`BlockSplitter` cuts the streamed source into finished top-level blocks;
:class:`MarkdownRenderer` prints each finished block once and redraws only the unfinished tail.
Rendering reuses Rich's internals (:func:`fast_markdown`, a faster code block, printing without
the console's buffering); tests compare the output with Rich's own, byte for byte.

Rich, Pygments and markdown-it are imported only when something is rendered: importing this
module stays as cheap as ``--version`` needs.
"""

from __future__ import annotations

import io
import re
import time
from typing import TYPE_CHECKING, Any, ClassVar, Final

from chatcli.config import REASONING_MODES
from chatcli.render.sanitize import reveal_in_code, sanitize
from chatcli.render.terminal import QuietTerminal, SuspendGuard, call_later

if TYPE_CHECKING:
    from rich.console import Console


_FENCE: Final = re.compile(r"^ {0,3}(`{3,}|~{3,})")
#: The longest language a code block's label shows (the fence's info comes from the model).
LABEL_LANGUAGE: Final = 24
#: Where a code block's label is kept on its markdown-it token.
_LABEL: Final = "chatcli_label"
_LIST_ITEM: Final = re.compile(r"^ {0,3}([-*+]|\d{1,9}[.)])( |$)")


#: The most source text one block may hold, in characters. A block that grows past it (a
#: paragraph with no blank line, a fence never closed: a hostile or broken server, a log piped
#: into ``chatcli render``) is passed on as plain text from there to its end, and Markdown
#: resumes after it: what is held stays bounded, and so does the cost of rendering a block
#: (Rich takes about 5 s for 256 KiB of code, 11 s of a table: a stop waits for that at most).
MAX_BLOCK: Final = 256 << 10


class Plain(str):
    """Source text to show as it is, not rendered: a block that outgrew :data:`MAX_BLOCK`."""

    __slots__ = ()


class BlockSplitter:
    """Cuts streamed Markdown source into finished top-level blocks, in one pass.

    A block is finished at a blank line outside a fenced code block, once the next non-blank
    line shows that it does not continue the block (an indented line, or another item of the
    same list, would). Everything not yet finished is the *tail*.

    A tail longer than ``limit`` characters is handed back as :class:`Plain` text, and so is
    the rest of its block, piece by piece as it comes, holding nothing but the start of a line
    (:class:`_PlainRest`); the next block is Markdown again.
    """

    def __init__(self, *, limit: int = MAX_BLOCK) -> None:
        self._limit = limit
        self._lines: list[str] = []
        # The unfinished last line, in pieces: joining only when it ends keeps a long line
        # (an answer with no newline at all) linear instead of copying it on every piece.
        self._partial: list[str] = []
        self._held_lines = 0  # characters in _lines, each with its newline
        self._held = 0  # and in _partial too
        self._fence: str | None = None
        self._blank_at: int | None = None
        self._plain: _PlainRest | None = None

    @property
    def tail(self) -> str:
        """The unfinished source (trailing blank lines included; Markdown ignores them)."""
        return "\n".join([*self._lines, "".join(self._partial)])

    @property
    def held(self) -> int:
        """How many characters the tail has (what is held to be rendered)."""
        return self._held

    def feed(self, text: str) -> list[str]:
        """Add source text; return the blocks it finished, oldest first, and :class:`Plain`
        text for a block past the limit."""
        finished: list[str] = []
        rest: str | None = text
        while rest:
            if self._plain is not None:
                shown, rest = self._plain.feed(rest)
                if shown:
                    finished.append(Plain(shown))
                if rest is None:  # the block goes on
                    break
                self._plain = None  # it ended: what follows is Markdown again
                continue
            finished += self._feed(rest)
            rest = None
            if self._held > self._limit:
                shown, rest = self._spill()
                if shown:
                    finished.append(shown)
        return finished

    def _feed(self, text: str) -> list[str]:
        finished: list[str] = []
        if "\n" not in text:
            self._partial.append(text)
            self._held += len(text)
            return finished
        pieces = text.split("\n")
        pieces[0] = "".join([*self._partial, pieces[0]])
        self._partial = [pieces.pop()]
        for line in pieces:
            block = self._line(line)
            if block is not None:
                finished.append(block)
        self._held = self._held_lines + len(self._partial[0])
        return finished

    def _spill(self) -> tuple[Plain, str]:
        """The tail's whole lines as plain text, and its unfinished line, which the rest of
        the block (now plain text too) begins with, unless it begins the next block."""
        partial = "".join(self._partial)
        first = self._lines[0] if self._lines else partial
        self._plain = _PlainRest(
            fence=self._fence,
            item=bool(_LIST_ITEM.match(first[: _PlainRest.HEAD])),
            blank=self._blank_at is not None,
        )
        shown = Plain("".join(f"{line}\n" for line in self._lines))
        self._lines, self._partial, self._held_lines, self._held = [], [], 0, 0
        self._fence, self._blank_at = None, None
        return shown, partial

    def _line(self, line: str) -> str | None:
        if self._fence is not None:
            self._add(line)
            if _closes(line, self._fence):
                self._fence = None
            return None
        if not line.strip():
            if self._lines and self._blank_at is None:
                self._blank_at = len(self._lines)
            if self._lines:
                self._add(line)
            return None
        finished: str | None = None
        if self._blank_at is not None:
            # (the block is copied only once it is finished: a long loose list stays linear)
            if _continues(bool(_LIST_ITEM.match(self._lines[0])), line):
                self._blank_at = None
            else:
                finished = "\n".join(self._lines[: self._blank_at])
                self._lines, self._held_lines = [], 0
                self._blank_at = None
        fence = _FENCE.match(line)
        if fence is not None:
            self._fence = fence.group(1)
        self._add(line)
        return finished

    def _add(self, line: str) -> None:
        self._lines.append(line)
        self._held_lines += len(line) + 1


def _closes(line: str, fence: str) -> bool:
    """Whether ``line`` closes the code block ``fence`` opened."""
    stripped = line.strip()
    return stripped.startswith(fence) and not stripped.lstrip(fence[0])


def _continues(item: bool, line: str) -> bool:
    """Whether a line with text after a blank line continues the block before it (``item``:
    that block began with a list item)."""
    if line[:1] in (" ", "\t"):
        return True  # indented: a list item's next paragraph, or indented code
    return item and bool(_LIST_ITEM.match(line))


class _PlainRest:
    """The rest of a block that outgrew the limit, passed on as it arrives until the block
    ends where :class:`BlockSplitter` would end it. It holds the first characters of the
    current line (enough to see a fence or a blank line) and, at most, the start of a line
    that may begin the next block until it is clear whether it does."""

    #: The start of a line kept to tell what it is (a fence closing needs all of its line:
    #: a longer one does not close the block here, which only keeps the text plain longer).
    HEAD: Final = 256
    #: The most of a line after a blank one needed to tell whether it continues the block
    #: (a list item's marker: up to 3 spaces, 9 digits, a dot and a space).
    DECIDE: Final = 16

    def __init__(self, *, fence: str | None, item: bool, blank: bool) -> None:
        """At the start of a line, in the block (``item``: it began with a list item) ``fence``
        left open, after a blank line (``blank``) or not."""
        self._fence = fence
        self._item = item
        self._blank = blank  # a blank line came after the last line with text
        self._head = ""
        self._length = 0
        self._text = False  # the current line has more than blanks
        self._waiting: str | None = "" if self._boundary() else None

    def _boundary(self) -> bool:
        return self._blank and self._fence is None

    def feed(self, text: str) -> tuple[str, str | None]:
        """The text to show, and what follows the block once it has ended (``None``: it
        goes on)."""
        shown: list[str] = []
        at, size = 0, len(text)
        while at < size:
            end = text.find("\n", at)
            stop = size if end < 0 else end
            piece = text[at:stop]
            if self._waiting is not None:  # a line after a blank one: does it continue?
                piece = self._waiting + piece
                verdict = self._verdict(piece, complete=end >= 0)
                if verdict is None:
                    self._waiting = piece  # bounded: DECIDE characters decide
                    break
                self._waiting = None
                if not verdict:
                    return "".join(shown), piece + text[stop:]
            shown.append(piece)
            if len(self._head) < self.HEAD:
                self._head += piece[: self.HEAD - len(self._head)]
            self._length += len(piece)
            self._text = self._text or bool(piece.strip())
            if end < 0:
                break
            shown.append("\n")
            self._line_ended()
            at = end + 1
        return "".join(shown), None

    def _verdict(self, start: str, *, complete: bool) -> bool | None:
        """Whether the line that begins with ``start`` continues the block (``None``: too
        little of it yet)."""
        if not start:
            return True if complete else None  # a blank line
        if start[0] in (" ", "\t") or not self._item:
            return _continues(self._item, start)
        if not complete and len(start) < self.DECIDE:
            return None
        return _continues(self._item, start)

    def _line_ended(self) -> None:
        if self._fence is not None:
            if self._length <= self.HEAD and _closes(self._head, self._fence):
                self._fence = None
        elif not self._text:
            self._blank = True
        else:
            self._blank = False
            fence = _FENCE.match(self._head)
            if fence is not None:
                self._fence = fence.group(1)
        self._head, self._length, self._text = "", 0, False
        self._waiting = "" if self._boundary() else None


def _flag_after(markdown: Any) -> bool | None:
    """Whether Rich puts a blank line after this block (``None``: it has no elements).

    Rich's ``Markdown`` keeps one flag while it renders: whether the element that closed last
    wants a blank line after it (its class's ``new_line``; a horizontal rule or an image does
    not). The next element printed gets a blank line before it when the flag is set. That flag
    is all one block's output takes from the blocks before it.
    """
    from rich.markdown import UnknownElement

    elements, inlines = markdown.elements, markdown.inlines
    opened: list[Any] = []
    flag: bool | None = None
    for token in markdown._flatten_tokens(markdown.parsed):
        kind = token.type
        if kind in _NO_ELEMENT or (token.tag in inlines and kind not in ("fence", "code_block")):
            continue  # text, breaks, links, inline HTML and inline styles are not elements
        if token.nesting == 1:
            opened.append(elements.get(kind) or UnknownElement)
            continue
        element = opened.pop() if token.nesting == -1 else elements.get(kind) or UnknownElement
        flag = bool(element.new_line)
    return flag


#: Tokens Rich's ``Markdown`` handles without an element.
_NO_ELEMENT: Final = frozenset(
    {"text", "hardbreak", "softbreak", "link_open", "link_close", "html_inline"}
)


_PARSER: Any = None
_MARKDOWN_CLASS: Any = None


def _markdown_class() -> Any:
    """Rich's ``Markdown`` with a faster code block that prints the very same bytes.

    Rich's code block looks up the Pygments lexer and builds the colour theme anew for every
    block, renders each line on its own and then pads the result in a second pass: about a
    quarter of all the time spent on an answer with code in it. This one keeps lexers and
    themes, renders all lines in one pass and pads them as it goes. A test renders code
    through both and compares the output byte for byte.
    """
    global _MARKDOWN_CLASS
    if _MARKDOWN_CLASS is not None:
        return _MARKDOWN_CLASS
    from functools import lru_cache

    from rich.markdown import CodeBlock, Markdown
    from rich.segment import Segment
    from rich.syntax import Syntax
    from rich.text import Text

    @lru_cache(maxsize=32)
    def lexer(name: str) -> Any:
        from pygments.lexers import get_lexer_by_name  # type: ignore[import-untyped]
        from pygments.util import ClassNotFound  # type: ignore[import-untyped]

        options = {"stripnl": False, "ensurenl": True, "tabsize": 4}  # as Rich asks for it
        try:
            return get_lexer_by_name(name, **options)
        except ClassNotFound:
            return get_lexer_by_name("text", **options)

    theme = lru_cache(maxsize=4)(Syntax.get_theme)

    class FastCodeBlock(CodeBlock):
        label: str | None = None

        @classmethod
        def create(cls, markdown: Any, token: Any) -> Any:
            block: Any = super().create(markdown, token)
            block.label = token.meta.get(_LABEL)
            return block

        def __rich_console__(self, console: Any, options: Any) -> Any:
            if self.label is not None:
                # Its own line above the block's padding: selecting the code's lines on the
                # screen does not catch it.
                yield Text(self.label, style="dim", end="\n", no_wrap=True, overflow="ellipsis")
            code = str(self.text).rstrip()
            syntax = Syntax(code, lexer(self.lexer_name), theme=theme(self.theme), word_wrap=True)
            ends_on_newline, processed = syntax._process_code(code)
            text = syntax.highlight(processed)
            if not ends_on_newline:
                text.remove_suffix("\n")
            base = syntax._get_base_style()
            width = options.max_width
            code_width = max(0, width - 2)
            rows = text.split("\n", allow_blank=True)
            lines: Any
            if all(row.cell_len <= code_width for row in rows):
                # Nothing to wrap (the usual case): each line padded to the width, as Rich's
                # wrapping would leave it, without its line-breaking pass.
                for row in rows:
                    row.pad_right(code_width - row.cell_len)
                lines = [list(row.render(console, end="")) for row in rows]
            else:
                lines = console.render_lines(
                    text,
                    options.update(width=code_width, height=None, justify="left"),
                    style=syntax.background_style,
                    pad=True,
                )
            side, newline = Segment(" ", base), Segment.line()
            blank = Segment(" " * width + "\n", base)
            yield blank
            for line in lines:
                yield side
                yield from Segment.apply_style(line, base)  # as Rich's padding pass does
                yield side
                yield newline
            yield blank

    class FastMarkdown(Markdown):
        elements: ClassVar = {
            **Markdown.elements,
            "fence": FastCodeBlock,
            "code_block": FastCodeBlock,
        }

    _MARKDOWN_CLASS = FastMarkdown
    return FastMarkdown


def fast_markdown(
    source: str, env: dict[str, Any] | None = None, *, first_label: int | None = None
) -> Any:
    """Rich's ``Markdown`` (links showing their target), reusing one parser.

    Rich builds a new markdown-it parser for every ``Markdown``; building it cost more than
    rendering a typical block. The attributes set here are the ones Rich's constructor sets (a
    test compares them, so a Rich upgrade that adds one fails loudly instead of rendering
    wrong).

    ``first_label``: code blocks get a dim label line above them, ``[N] language``, numbered
    from this (see :func:`code_label`); ``None``: no labels, exactly Rich's output.
    """
    global _PARSER
    if _PARSER is None:
        from markdown_it import MarkdownIt

        _PARSER = MarkdownIt().enable("strikethrough").enable("table")
    cls = _markdown_class()
    markdown = cls.__new__(cls)
    markdown.markup = source
    markdown.parsed = _reveal_in_code(_PARSER.parse(source, env))
    if first_label is not None:
        number = first_label
        for token in markdown.parsed:
            if token.type in _CODE:
                token.meta[_LABEL] = code_label(number, token)
                number += 1
    markdown.code_theme = "monokai"
    markdown.justify = None
    markdown.style = "none"
    # A link shows its real target instead of a hidden OSC 8 hyperlink.
    markdown.hyperlinks = False
    markdown.inline_code_lexer = None
    markdown.inline_code_theme = "monokai"
    return markdown


#: The tokens that are code blocks, as ``chatcli.extract`` counts them.
_CODE: Final = ("fence", "code_block")


def code_count(markdown: Any) -> int:
    """How many code blocks a :func:`fast_markdown` holds (nested ones included)."""
    return sum(token.type in _CODE for token in markdown.parsed)


def code_label(number: int, token: Any) -> str:
    """A code block's label: its number as ``ask -x N`` and ``/copy N`` take it, and the
    language its fence names, as ``-x LANG`` takes it (lower case), made safe and short."""
    words = token.info.split(maxsplit=1) if token.type == "fence" else []
    if not words:
        return f"[{number}]"
    language = sanitize(reveal_in_code(words[0].lower()))
    if len(language) > LABEL_LANGUAGE:
        language = language[: LABEL_LANGUAGE - 1] + "\u2026"
    return f"[{number}] {language}"


def _reveal_in_code(tokens: list[Any]) -> list[Any]:
    """Code blocks and code spans show the characters that hide or reorder text (prose keeps
    them): see :data:`~chatcli.render.sanitize.INVISIBLE_IN_CODE`."""
    for token in tokens:
        if token.type in ("fence", "code_block"):
            token.content = reveal_in_code(token.content)
        elif token.type == "inline" and token.children:
            for child in token.children:
                if child.type == "code_inline":
                    child.content = reveal_in_code(child.content)
    return tokens


def _print_to_text(console: Console, renderable: Any) -> str:
    """What ``console.print(renderable)`` writes to a terminal, without its buffering.

    The same steps (render, crop lines to the width, style to escape codes) minus the locks,
    hooks and buffer ``print`` goes through for every call: with a call per block, those
    cost about a tenth of the rendering. A test compares the two outputs.
    """
    from rich.segment import Segment

    segments = console.render(renderable, console.options)
    lines = Segment.split_and_crop_lines(segments, console.width, pad=False)
    if console.no_color:
        lines = ([*Segment.remove_color(line)] for line in lines)
    system, parts = console._color_system, []
    for line in lines:
        for text, style, _control in line:
            parts.append(style.render(text, color_system=system) if style else text)
    return "".join(parts)


class MarkdownRenderer:
    """Streams Markdown in linear time: finished blocks are printed once, the tail is live.

    Each finished block is rendered with only its predecessor as context (the spacing Rich puts
    between two blocks depends on the first of them alone), so the total work grows linearly
    with the answer and the printed text equals rendering the whole answer at once. Only the
    unfinished tail block is redrawn, at most ``FRAMES_PER_SECOND`` times a second, by moving
    the cursor up over it; a tail taller than the terminal shows only its last lines until it
    is finished, so the scrollback holds every line exactly once. Off a terminal
    (``--markdown`` into a pipe) finished blocks are printed as they complete.

    What it holds is bounded however the text goes on: a block past :data:`MAX_BLOCK` is
    shown as plain text to its end, a tail past :attr:`LIVE_LIMIT` is not redrawn (nor
    rendered when the answer is stopped: it is printed plain), and of the reasoning only
    what is still to be shown is kept.
    """

    FRAMES_PER_SECOND: Final = 15

    #: The largest tail (in characters) redrawn live. Each redraw renders all of the tail, and
    #: Rich takes about a second for 32 KiB of code (or 1 MiB of plain prose): a tail larger
    #: than this keeps its last frame until its block ends and is printed once.
    LIVE_LIMIT: Final = 32 * 1024

    #: Lines of the model's reasoning shown live while it thinks (its latest ones).
    THINKING_LINES: Final = 6
    #: The end of the reasoning that the live view renders (its last lines are in it).
    THINKING_WINDOW: Final = 8 * 1024

    def __init__(
        self,
        console: Console,
        *,
        live: bool,
        reasoning: str = "collapse",
        numbered: bool = False,
    ) -> None:
        """``reasoning``: ``show`` (printed dimmed above the answer), ``collapse`` (live while
        the model thinks, then one line: how long it thought) or ``hide``. ``numbered``: a
        dim line ``[N] language`` above each code block, N as ``ask -x N`` and ``/copy N``
        count them (from 1 for each renderer: one renderer shows one answer)."""
        if reasoning not in REASONING_MODES:
            raise ValueError(f"reasoning must be one of {', '.join(REASONING_MODES)}")
        self.reasoning = reasoning
        self._thought: list[str] = []
        self._thought_held = 0  # characters in _thought
        self._thought_total = 0  # characters of reasoning in all
        self._thinking_since: float | None = None
        self._thought_done = False
        self._console = console
        self.live = live
        self._stream = console.file
        self._echo = QuietTerminal.of(self._stream)
        self._suspend = SuspendGuard(self._before_stop, self._after_resume)
        self._splitter = BlockSplitter()
        #: A CR that ended the last piece: a CRLF's first half, or a line end of its own.
        self._cr = False
        self._spaced = False  # Rich puts a blank line after the last finished block
        self._env: dict[str, Any] = {}  # the parser's state: link definitions seen so far
        self.numbered = numbered
        self._codes = 0  # code blocks in the blocks printed so far
        self._shown_lines = 0  # lines of the live tail now on screen
        self._last_frame = 0.0
        self._frame_due = False  # a redraw is scheduled on the event loop
        self._renderers: dict[int, Console] = {}
        self._started = False
        self._finished = False
        #: What a timed redraw ran into (the terminal gone), raised by the next piece.
        self._failed: OSError | None = None

    # -- rendering to text -------------------------------------------------------------------

    def _width(self) -> int:
        return max(20, self._console.width)

    def _dim(self, text: str) -> str:
        """Plain ``text`` (already sanitized) rendered dimmed at the terminal's width."""
        from rich.text import Text

        return _print_to_text(self._text_console(), Text(text, style="dim"))

    def _render(self, source: str, *, spaced: bool = False) -> tuple[str, bool | None, int]:
        """``source`` rendered with Rich's blank-line flag set (``spaced``) or not at the start,
        the flag it leaves (see :func:`_flag_after`), and how many code blocks it has."""
        renderer = self._text_console()
        first = self._codes + 1 if self.numbered else None
        markdown = fast_markdown(source, self._env, first_label=first)
        flag = _flag_after(markdown)
        if spaced:
            # An element that prints nothing and sets the flag, as a paragraph would: Rich
            # keeps HTML blocks as elements it does not render.
            from markdown_it.token import Token

            markdown.parsed.insert(0, Token("html_block", "", 0, block=True, content=""))
        return _print_to_text(renderer, markdown), flag, code_count(markdown)

    def _text_console(self) -> Console:
        """The console that renders to text at the terminal's current width."""
        from rich.console import Console

        width = self._width()
        renderer = self._renderers.get(width)
        if renderer is None:
            renderer = Console(
                file=io.StringIO(),
                width=width,
                force_terminal=True,
                color_system=self._console.color_system,  # type: ignore[arg-type]
                no_color=self._console.no_color,
                legacy_windows=False,
                _environ=self._console._environ,  # the command's environment, as the console's
                markup=False,
                highlight=False,
                emoji=False,
            )
            self._renderers = {width: renderer}
        return renderer

    def _delta(self, source: str) -> tuple[str, bool | None, int]:
        """What ``source`` adds to the output after the blocks before it, its flag and its
        number of code blocks.

        Each block is rendered once, with Rich's blank-line flag (:func:`_flag_after`) as the
        blocks before it left it, so the pieces add up to rendering everything at once, and
        the work grows linearly with the answer.
        """
        return self._render(source, spaced=self._spaced)

    # -- the screen -------------------------------------------------------------------------

    def _write(self, text: str) -> None:
        self._stream.write(text)

    def _clear_tail(self) -> None:
        if self._shown_lines:
            self._write(f"\r\x1b[{self._shown_lines}A\x1b[J")
            self._shown_lines = 0

    def _commit(self, block: str) -> None:
        if isinstance(block, Plain):
            self._show_plain(block)
            return
        rendered, spaced, codes = self._delta(block)
        self._codes += codes
        if self.live:
            self._clear_tail()
        self._write(rendered)
        if spaced is not None:  # a block with no elements (a link definition) changes nothing
            self._spaced = spaced

    def _show_plain(self, text: str) -> None:
        """Source text (sanitized) as it is: a block too large to render, or to finish
        rendering once stopped."""
        if self.live:
            self._clear_tail()
        if self._spaced:
            self._write("\n")  # the blank line Rich would put before it
            self._spaced = False
        # Its code blocks (if any) are not counted as chatcli.extract counts them: the labels
        # of the blocks after it would be wrong, so there are none.
        self.numbered = False
        from chatcli.render.sanitize import reveal_in_code

        self._write(reveal_in_code(text))  # its code may hide text-direction characters too

    def _draw_tail(self) -> None:
        if self._splitter.held > self.LIVE_LIMIT:
            return  # its last frame stays until the block ends (see LIVE_LIMIT)
        tail = self._splitter.tail
        self._clear_tail()
        if not tail.strip():
            return
        lines = self._delta(tail)[0].splitlines(keepends=True)
        # Never taller than the screen (a redraw cannot reach lines that scrolled away): a
        # tall unfinished block shows its last lines, and all of it is printed once it ends.
        visible = lines[-max(1, self._console.height - 2) :]
        self._write("".join(_unpadded(line) for line in visible))
        self._shown_lines = len(visible)

    # -- the Renderer interface -------------------------------------------------------------

    def start(self) -> None:
        """Called before the answer, and again after each round of tool calls (which
        :meth:`finish` ended, so that their lines and questions had the terminal)."""
        self._started = True
        if self._finished:  # finish showed every block: the next round's text starts anew
            self._splitter = BlockSplitter()
            self._finished = False
            self._thought, self._thought_held, self._thought_total = [], 0, 0
            self._thinking_since, self._thought_done = None, False
        if self.live:
            self._echo.off()
            self._write("\x1b[?25l")  # hide the cursor while the tail is redrawn
            self._stream.flush()
            self._suspend.install()

    def _before_stop(self) -> None:
        """Ctrl-Z: leave the terminal as the shell expects it (the tail is drawn again)."""
        self._clear_tail()
        self._write("\x1b[?25h")
        self._stream.flush()
        self._echo.restore()

    def _after_resume(self) -> None:
        self._echo.off()
        self._write("\x1b[?25l")
        if not self._finished:
            self._draw_tail()
        self._stream.flush()

    def think(self, text: str) -> None:
        if self._failed is not None:
            raise self._failed
        if not text or self._thought_done or self.reasoning == "hide":
            return
        if self._thinking_since is None:
            self._thinking_since = time.monotonic()
        piece = sanitize(text)
        self._thought.append(piece)
        self._thought_held += len(piece)
        self._thought_total += len(piece)
        if self._thought_held > (
            MAX_BLOCK if self.reasoning == "show" else 2 * self.THINKING_WINDOW
        ):
            self._shed_thought()
        if self.live and time.monotonic() - self._last_frame >= 1 / self.FRAMES_PER_SECOND:
            self._draw_thinking()
            self._last_frame = time.monotonic()
            self._stream.flush()

    def _shed_thought(self) -> None:
        """Reasoning that outgrew what is held: shown for good (``show``, where all of it is
        printed), or dropped but for the end the live view needs (``collapse``)."""
        text = "".join(self._thought)
        if self.reasoning == "show":
            cut = text.rfind("\n") + 1
            if cut < len(text) // 2:
                cut = len(text)  # no line ends near the end: cut mid-line
            if self.live:
                self._clear_tail()
            self._write(self._dim(text[:cut].rstrip("\n")) + "\n")
            text = text[cut:]
        else:
            text = text[-self.THINKING_WINDOW :]
        self._thought, self._thought_held = [text], len(text)

    def _draw_thinking(self) -> None:
        """The latest lines of the reasoning, dimmed, in the live region above the answer."""
        text = "".join(self._thought)
        if len(text) > self.THINKING_WINDOW:  # rendering all of it to show its end: quadratic
            text = text[-self.THINKING_WINDOW :]
            text = text[text.find("\n") + 1 :] or text
        lines = self._dim(text).splitlines(keepends=True)
        visible = lines[-max(1, min(self.THINKING_LINES, self._console.height - 2)) :]
        self._clear_tail()
        self._write("".join(_unpadded(line) for line in visible))
        self._shown_lines = len(visible)

    def _end_thinking(self) -> None:
        """The answer begins (or ends): the reasoning is printed whole, or becomes one line."""
        if self._thought_done:
            return
        self._thought_done = True
        if not self._thought:
            return
        if self.live:
            self._clear_tail()
        text = "".join(self._thought)
        if self.reasoning == "show":
            if text:  # (all of it may have been shown already)
                self._write(self._dim(text.rstrip("\n")) + "\n")
        else:
            seconds = time.monotonic() - (self._thinking_since or time.monotonic())
            count = self._thought_total
            self._write(self._dim(f"thought for {seconds:.1f} s ({count:,} characters)"))
            self._write("\n")

    def feed(self, text: str) -> None:
        if self._failed is not None:
            raise self._failed
        if not text:
            return
        self._end_thinking()
        for block in self._splitter.feed(sanitize(self._line_ends(text))):
            self._commit(block)
        if self.live:
            wait = self._last_frame + 1 / self.FRAMES_PER_SECOND - time.monotonic()
            if wait <= 0:
                self._frame()
            elif not self._frame_due:
                self._schedule_frame(wait)
        self._stream.flush()

    def _line_ends(self, text: str) -> str:
        """``text`` with CRLF and lone CR line ends as LF (Markdown's line ends all), a CR at
        the end of a piece held until the next one shows whether an LF follows it."""
        if self._cr:
            text = "\r" + text
        self._cr = text.endswith("\r")
        if self._cr:
            text = text[:-1]
        return text.replace("\r\n", "\n").replace("\r", "\n")

    def _frame(self) -> None:
        self._frame_due = False
        if self._finished:
            return
        self._draw_tail()
        self._last_frame = time.monotonic()
        self._stream.flush()

    def _schedule_frame(self, delay: float) -> None:
        """Draw what arrived even if the stream then pauses (the model thinking mid-answer)."""
        # Outside an event loop the next piece, or finish(), draws it.
        self._frame_due = call_later(delay, self._timed_frame)

    def _timed_frame(self) -> None:
        """The timer's redraw; a terminal gone meanwhile is raised by the next piece instead
        (raised in an event-loop callback, it would only print a traceback)."""
        try:
            self._frame()
        except OSError as exc:
            self._failed = exc

    def finish(self, *, interrupted: bool = False) -> None:
        self._end_thinking()  # an answer that never came still says how long it thought
        self._finished = True
        self._cr = False  # (a CR held at the end: the line end the "\n" below gives)
        for block in self._splitter.feed("\n"):  # completing the last line may end a block
            if interrupted and len(block) > self.LIVE_LIMIT:
                self._show_plain(block + "\n")  # stopped: not seconds of rendering now
            else:
                self._commit(block)
        tail = self._splitter.tail
        if self.live:
            self._clear_tail()
        if interrupted and self._splitter.held > self.LIVE_LIMIT:
            # Stopped: rendering a large unfinished block would keep chatcli busy for
            # seconds after the user (or a SIGTERM) said stop.
            self._show_plain(tail if tail.endswith("\n") else tail + "\n")
        elif tail.strip():
            self._write(self._delta(tail)[0])
        if self.live and self._started:
            self._suspend.remove()
            self._write("\x1b[?25h")
            self._echo.restore()
        self._stream.flush()


_TRAILING_PADDING: Final = re.compile(r"(?:\x1b\[[0-9;]*m| )+$")


def _unpadded(line: str) -> str:
    """A live line without the spaces Rich pads it with to the full width.

    The unfinished tail is erased by moving up as many rows as it has lines; a terminal
    that re-wraps its lines when it gets narrower would turn each full-width line into two
    rows, and the erase would leave copies behind. Short lines stay one row. (Finished
    blocks are printed as Rich renders them, padding and all.)
    """
    body = line.rstrip("\n")
    bare = _TRAILING_PADDING.sub("", body)
    reset = "\x1b[0m" if "\x1b[" in body else ""
    return bare + reset + line[len(body) :]
