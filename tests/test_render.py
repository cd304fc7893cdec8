"""The streaming Markdown renderer: same result as rendering at once, each line once, linear."""

from __future__ import annotations

import asyncio
import io
import re
from typing import Any

import pyte
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from rich.cells import cell_len
from rich.console import Console
from rich.markdown import Markdown

from chatcli import render
from chatcli.render import BlockSplitter, MarkdownRenderer, fast_markdown

DOC = """# Streaming answer

Here is a paragraph with **bold**, `code` and a [link](https://example.com/path). It is long
enough to wrap across lines at sixty columns, and it goes on a little.

- first item
- second item

  with a second paragraph
- third item

1. one
2. two

```python
def fibonacci(n):
    a, b = 0, 1

    for _ in range(n):
        a, b = b, a + b
    return a
```

| Name | Value |
|------|-------|
| alpha | 1 |
| beta | 2 |

> A quote that spans
> two lines.

---

## Conclusion
Final words here.
"""

SGR = re.compile(r"\x1b\[[0-9;]*m")


def make_console(buffer: io.StringIO, width: int = 60, height: int = 40) -> Console:
    return Console(
        file=buffer, width=width, height=height, force_terminal=True, color_system="truecolor",
        markup=False, highlight=False, emoji=False,
    )  # fmt: skip


def whole(text: str, width: int = 60) -> str:
    buffer = io.StringIO()
    make_console(buffer, width).print(Markdown(text, hyperlinks=False))
    return buffer.getvalue()


def stream(
    text: str,
    cuts: list[int],
    *,
    live: bool,
    width: int = 60,
    height: int = 40,
    numbered: bool = False,
) -> str:
    buffer = io.StringIO()
    renderer = MarkdownRenderer(make_console(buffer, width, height), live=live, numbered=numbered)
    renderer.start()
    last = 0
    for cut in [*sorted(cuts), len(text)]:
        renderer.feed(text[last:cut])
        last = cut
    renderer.finish()
    return buffer.getvalue()


def screen_lines(output: str, width: int, height: int) -> list[str]:
    """Every line a terminal shows for ``output``, scrollback first, trailing blanks dropped."""
    screen = pyte.HistoryScreen(width, height, history=10_000)
    pyte.Stream(screen).feed(output.replace("\n", "\r\n"))
    top = ["".join(line[x].data for x in range(width)).rstrip() for line in screen.history.top]
    lines = top + [line.rstrip() for line in screen.display]
    while lines and not lines[-1]:
        lines.pop()
    return lines


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(DOC)), max_size=40))
def test_streamed_output_equals_rendering_the_whole_answer(cuts: list[int]) -> None:
    assert stream(DOC, cuts, live=False) == whole(DOC)


#: Blocks of every kind, including the ones whose spacing is unusual: a horizontal rule (no
#: blank line after it), a quote or a list ending in one, an image, HTML, a link definition.
BLOCKS = [
    "A paragraph with **bold** and `code`.",
    "# Heading one",
    "## Heading two",
    "### Heading three\nand a paragraph right under it",
    "- a\n- b\n\n  more of b",
    "1. one\n2. two",
    "> quoted\n> text",
    "> quoted, then a rule\n>\n> ---",
    "- item, then a rule\n\n  ---",
    "---",
    "***",
    "```python\nprint('x')\n```",
    "```\n```",
    "    indented code",
    "| a | b |\n|---|---|\n| 1 | 2 |",
    "![an image](https://example.com/i.png)",
    "<div>html</div>",
    "[ref]: https://example.com/ref",
    "text with a [ref] link",
]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=8),
    st.lists(st.integers(min_value=0, max_value=400), max_size=12),
)
def test_every_order_of_block_kinds_streams_as_it_renders(
    blocks: list[str], cuts: list[int]
) -> None:
    # A link may use a definition further down; streamed, the link is printed before the
    # definition arrives (the one way streaming differs from rendering the whole answer).
    definition, use = BLOCKS.index("[ref]: https://example.com/ref"), BLOCKS[-1]
    assume(use not in blocks or BLOCKS[definition] in blocks[: blocks.index(use)])
    text = "\n\n".join(blocks) + "\n"
    cuts = [cut for cut in cuts if cut <= len(text)]
    assert stream(text, cuts, live=False, width=40) == whole(text, 40)


@pytest.mark.parametrize("height", [60, 12, 5])
def test_live_screen_and_scrollback_hold_each_line_once(
    height: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(MarkdownRenderer, "FRAMES_PER_SECOND", 10**9)  # redraw on every piece
    cuts = list(range(0, len(DOC), 7))
    output = stream(DOC, cuts, live=True, height=height)
    expected = screen_lines(whole(DOC), 60, 500)
    assert screen_lines(output, 60, height) == expected
    assert "..." not in "\n".join(screen_lines(output, 60, height))


def test_work_grows_linearly_with_the_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    rendered: list[int] = []
    original = MarkdownRenderer._delta

    def counting(self: MarkdownRenderer, source: str) -> Any:
        rendered.append(len(source))
        return original(self, source)

    monkeypatch.setattr(MarkdownRenderer, "_delta", counting)
    monkeypatch.setattr(MarkdownRenderer, "FRAMES_PER_SECOND", 10**9)  # the worst case

    def cost(copies: int) -> int:
        rendered.clear()
        text = DOC * copies
        stream(text, list(range(0, len(text), 5)), live=False)
        return sum(rendered)

    small, large = cost(4), cost(20)
    assert large <= 6 * small  # 5x the text: about 5x the work, not 25x
    assert large <= 2 * len(DOC * 20)  # each character is rendered about once


def test_a_code_line_wider_than_the_terminal_keeps_the_layout() -> None:
    text = "```python\nx = '" + "a" * 300 + "'\n```\n\nafter\n"
    output = stream(text, [10, 50, 200], live=False, width=40)
    for line in SGR.sub("", output).splitlines():
        assert cell_len(line) <= 40, line


def test_blocks_after_a_resize_use_the_new_width() -> None:
    buffer = io.StringIO()
    console = make_console(buffer, width=80)
    renderer = MarkdownRenderer(console, live=False)
    renderer.start()
    renderer.feed("first paragraph " * 10 + "\n\nsecond\n")  # the first block is done
    console.width = 40  # the terminal was made narrower
    renderer.feed("second paragraph " * 10 + "\n\nend\n")
    renderer.finish()
    lines = SGR.sub("", buffer.getvalue()).splitlines()
    second = [line for line in lines if "second" in line]
    assert second and all(cell_len(line) <= 40 for line in second)
    assert any(cell_len(line.rstrip()) > 40 for line in lines if "first" in line)


def blocks(text: str, step: int = 3) -> list[str]:
    splitter = BlockSplitter()
    found: list[str] = []
    for start in range(0, len(text), step):
        found += splitter.feed(text[start : start + step])
    return found


def test_splitter_never_cuts_inside_fences_or_lists() -> None:
    text = "para\n\n```\ncode\n\nmore code\n```\n\n- a\n\n- b\n\n  indented\n\nlast\n"
    assert blocks(text) == ["para", "```\ncode\n\nmore code\n```", "- a\n\n- b\n\n  indented"]
    assert BlockSplitter().feed("no blank lines yet\nstill going\n") == []


def test_fast_markdown_sets_what_rich_sets() -> None:
    # If a Rich upgrade adds an attribute to Markdown, rendering would break: fail here first.
    assert set(vars(fast_markdown("x"))) == set(vars(Markdown("x")))


CODE_LINE = st.lists(
    st.sampled_from([*"abc xyz_()=:'\"#\t{}-+", "界", "é", "averyveryverylongword"]), max_size=40
).map("".join)


@settings(max_examples=80, deadline=None)
@given(
    lines=st.lists(CODE_LINE, max_size=6),
    info=st.sampled_from(["", "python", "js", "bash", "nosuchlanguage", "python extra words"]),
    width=st.integers(min_value=8, max_value=120),
    indented=st.booleans(),
)
def test_fast_code_block_prints_what_richs_prints(
    lines: list[str], info: str, width: int, indented: bool
) -> None:
    code = "\n".join(lines)
    if indented:
        source = "para\n\n" + "".join(f"    {line}\n" for line in lines if line.strip())
    else:
        fence, quoted, listed = f"```{info}\n{code}\n```", f"> ```{info}\n> {code}\n> ```", code
        source = f"{fence}\n\n{quoted}\n\n- item\n\n  ```\n  {listed}\n  ```\n"
    theirs, ours = io.StringIO(), io.StringIO()
    make_console(theirs, width).print(Markdown(source, hyperlinks=False))
    make_console(ours, width).print(fast_markdown(source))
    assert ours.getvalue() == theirs.getvalue()


@pytest.mark.parametrize("no_color", [False, True])
@pytest.mark.parametrize("system", ["truecolor", "256", "standard", None])
def test_printing_to_text_writes_what_console_print_writes(system: Any, no_color: bool) -> None:
    from chatcli.render.markdown import _print_to_text

    printed = io.StringIO()
    console = Console(
        file=printed, width=50, force_terminal=True, color_system=system, no_color=no_color,
        markup=False, highlight=False, emoji=False,
    )  # fmt: skip
    console.print(fast_markdown(DOC))
    assert _print_to_text(console, fast_markdown(DOC)) == printed.getvalue()


def test_live_tail_lines_carry_no_padding_so_a_narrower_window_does_not_rewrap_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(MarkdownRenderer, "FRAMES_PER_SECOND", 10**9)
    buffer = io.StringIO()
    renderer = MarkdownRenderer(make_console(buffer, 60, 40), live=True)
    renderer.start()
    renderer.feed("A short **line**\nand another")  # no blank line yet: all of it is the tail
    frame = buffer.getvalue()
    lines = [SGR.sub("", line) for line in frame.split("\n")]
    assert "A short line" in lines[0]
    assert all(not line.endswith(" ") for line in lines), lines
    renderer.finish()
    final = whole("A short **line**\nand another") + "\x1b[?25h"  # padded, then the cursor
    assert buffer.getvalue().endswith(final)


def test_raw_output_is_flushed_in_batches_not_per_token() -> None:
    class Counting(io.StringIO):
        flushes = 0

        def flush(self) -> None:
            Counting.flushes += 1

    buffer = Counting()
    renderer = render.PlainRenderer(buffer, safe=False)

    async def stream_tokens() -> None:  # as the engine does, inside the event loop
        for _ in range(1000):
            renderer.feed("tok ")
        renderer.finish()

    asyncio.run(stream_tokens())
    assert buffer.getvalue() == "tok " * 1000 + "\n"
    assert Counting.flushes < 20


class _ClosedPipe(io.StringIO):
    """A stdout whose reader went away after the first flush."""

    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        if self.flushes > 1:
            raise BrokenPipeError(32, "Broken pipe")


def test_a_pipe_closed_before_a_timed_flush_is_raised_by_the_next_piece_not_the_loop() -> None:
    # `chatcli ask ... | less`, then q: the flush the timer runs meets the closed pipe.
    stream = _ClosedPipe()
    renderer = render.PlainRenderer(stream, safe=False)
    problems: list[dict[str, Any]] = []

    async def answer() -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda loop, context: problems.append(context)
        )
        renderer.feed("first")  # flushed at once
        renderer.feed(" second")  # within the interval: flushed by the timer
        await asyncio.sleep(renderer.FLUSH_INTERVAL * 3)
        renderer.feed(" third")

    with pytest.raises(BrokenPipeError):
        asyncio.run(answer())
    assert problems == []  # nothing went to the loop's handler ("Exception in callback")
    assert stream.flushes == 2
    with pytest.raises(BrokenPipeError):
        renderer.finish(interrupted=True)
