"""What the Markdown renderer holds is bounded: a block that outgrows ``MAX_BLOCK`` (an endless
paragraph, a fence never closed) is shown as plain text to its end, then Markdown resumes; a
large unfinished block is not redrawn live, nor rendered once the answer is stopped; the
reasoning kept while a model thinks is bounded too."""

from __future__ import annotations

import io
import re
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatcli.render import BlockSplitter, MarkdownRenderer
from chatcli.render.markdown import MAX_BLOCK, Plain
from tests.test_render import BLOCKS, SGR, make_console

#: Blocks that outgrow a small limit, of every way a block goes on: lines, one long line, a
#: fence, a list (whose items go on past blank lines), indented continuations.
LONG = [
    "a paragraph line\n" * 12 + "the end of it",
    "one long line " * 20,
    "```python\n" + "x = 1\n\n" * 10 + "```",
    "~~~\nnever closed\n\n" + "code\n" * 10,
    "- item\n" * 6 + "\n- another item\n\n  its second paragraph\n\n123456789. item",
    "para\n" + "line\n" * 10 + "\n    indented, so it goes on\n\n\tand on",
    "> quoted\n" * 15,
    "```\n" + "a" * 300 + "\n\n```\n\n",
]


def split(text: str, cuts: list[int], limit: int | None) -> tuple[list[str], str, int]:
    """What a splitter returns for ``text`` fed in pieces, its tail, and the most it held."""
    splitter = BlockSplitter() if limit is None else BlockSplitter(limit=limit)
    found: list[str] = []
    most = last = 0
    for cut in [*sorted(cuts), len(text)]:
        found += splitter.feed(text[last:cut])
        last = cut
        most = max(most, len(splitter.tail))
    found += splitter.feed("\n")
    return found, splitter.tail, most


def squeezed(text: str) -> str:
    return re.sub(r"\s+", "", text)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(BLOCKS + LONG), min_size=1, max_size=8),
    st.integers(min_value=1, max_value=300),
    st.lists(st.integers(min_value=0, max_value=3000), max_size=30),
)
def test_the_splitter_holds_at_most_its_limit_and_loses_nothing(
    blocks: list[str], limit: int, cuts: list[int]
) -> None:
    text = "\n\n".join(blocks) + "\n"
    cuts = [cut for cut in cuts if cut <= len(text)]
    found, tail, most = split(text, cuts, limit)
    assert most <= limit
    assert squeezed("".join(found) + tail) == squeezed(text)
    # Blocks end where they end without a limit: past a plain one, the same blocks follow.
    whole, _, _ = split(text, cuts, None)
    rendered = iter(whole)
    assert all(any(block == other for other in rendered) for block in found
               if not isinstance(block, Plain))  # fmt: skip


def rendered(pieces: list[str], *, live: bool, interrupted: bool = False) -> str:
    buffer = io.StringIO()
    renderer = MarkdownRenderer(make_console(buffer, 80, 24), live=live, numbered=True)
    renderer.start()
    for piece in pieces:
        renderer.feed(piece)
        assert len(renderer._splitter.tail) <= MAX_BLOCK  # what it holds, all of it
    renderer.finish(interrupted=interrupted)
    return buffer.getvalue()


def test_an_endless_paragraph_is_shown_plain_past_the_limit_then_markdown_resumes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(MarkdownRenderer, "FRAMES_PER_SECOND", 10**9)  # redraw on every piece
    line = "some **words** and `code` in a paragraph that never ends\n"
    paragraph = line * (3 * MAX_BLOCK // len(line))  # 3 MiB, no blank line
    before = "```sh\nls\n```\n\n"
    after = "\n\n# Heading\n\n```python\nprint('x')\n```\n"
    text = before + paragraph + after
    pieces = [text[start : start + 4096] for start in range(0, len(text), 4096)]
    for live in (False, True):
        output = SGR.sub("", rendered(pieces, live=live))
        # The first MiB and the rest of the paragraph are plain: their marks are kept.
        assert output.count("some **words** and `code`") == paragraph.count("some")
        assert "[1] sh" in output  # labelled before the plain text
        assert "Heading" in output and "# Heading" not in output  # Markdown again
        assert "print('x')" in output and "```" not in output.split("Heading")[1]
        # Its code blocks were not counted as -x counts them: no labels after it.
        assert "[2]" not in output


def test_a_fence_never_closed_is_plain_past_the_limit() -> None:
    code = "```python\n" + "value = compute(1, 2)\n\n" * (MAX_BLOCK // 20)
    pieces = [code[start : start + 65536] for start in range(0, len(code), 65536)]
    started = time.monotonic()
    output = rendered(pieces, live=True)
    assert time.monotonic() - started < 30  # Rich would take minutes for all of it
    assert output.count("value = compute(1, 2)") == code.count("value")
    assert "```python" in output  # shown as it came


def test_the_work_stays_linear_however_long_the_block(monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    original = MarkdownRenderer._delta

    def counting(self: MarkdownRenderer, source: str) -> Any:
        sizes.append(len(source))
        return original(self, source)

    monkeypatch.setattr(MarkdownRenderer, "_delta", counting)
    monkeypatch.setattr(MarkdownRenderer, "FRAMES_PER_SECOND", 10**9)  # the worst case
    text = "word " * (2 * MAX_BLOCK // 5)
    rendered([text[start : start + 1024] for start in range(0, len(text), 1024)], live=True)
    # Live redraws stop at LIVE_LIMIT; nothing past the limit is rendered at all.
    assert max(sizes) <= MarkdownRenderer.LIVE_LIMIT
    assert sum(sizes) <= MarkdownRenderer.LIVE_LIMIT**2 // 1024 + MarkdownRenderer.LIVE_LIMIT


def test_stopped_with_a_large_unfinished_block_it_prints_it_plain_at_once() -> None:
    code = "```python\n" + "total = sum(range(10))\n" * (300 * 1024 // 23)  # 300 KiB
    started = time.monotonic()
    output = rendered([code[:100], code[100:]], live=True, interrupted=True)
    assert time.monotonic() - started < 5  # rendering it would take Rich about 10 s
    assert output.count("total = sum(range(10))") == code.count("total")
    assert output.endswith("\n\x1b[?25h")  # ends its line, then the cursor is shown again
    # A small one is rendered as ever.
    small = SGR.sub("", rendered(["```python\nx = 1\n"], live=True, interrupted=True))
    assert "x = 1" in small and "```" not in small


@pytest.mark.parametrize(("mode", "live"), [("collapse", True), ("show", True), ("show", False)])
def test_reasoning_held_while_a_model_thinks_is_bounded(
    mode: str, live: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(MarkdownRenderer, "FRAMES_PER_SECOND", 10**9)
    buffer = io.StringIO()
    renderer = MarkdownRenderer(make_console(buffer, 80, 24), live=live, reasoning=mode)
    renderer.start()
    piece = "I consider the question once more.\n" * 1000  # 35 KB
    count = 3 * MAX_BLOCK // 2 // len(piece)  # 1.5 MiB in all
    for _ in range(count):
        renderer.think(piece)
        assert sum(map(len, renderer._thought)) <= MAX_BLOCK
    renderer.feed("The answer.\n")
    renderer.finish()
    output = SGR.sub("", buffer.getvalue())
    if mode == "collapse":
        assert f"({count * len(piece):,} characters)" in output
    elif not live:  # all of it is shown, above the answer
        assert output.count("I consider the question once more.") == count * 1000
    assert "The answer." in output


def test_text_shown_plain_names_text_direction_characters() -> None:
    from chatcli.render.markdown import BlockSplitter

    buffer = io.StringIO()
    renderer = MarkdownRenderer(make_console(buffer, 80, 24), live=False)
    renderer._splitter = BlockSplitter(limit=1000)
    renderer.start()
    renderer.feed("```py\n" + "x = 1\n" * 300 + "access = 'user\u202e \u2066// admin'\n```\n")
    renderer.finish()
    output = buffer.getvalue()
    assert "\u202e" not in output and "\u2066" not in output
    assert "U+202E" in output


def test_a_stop_does_not_render_a_large_block_the_last_line_ended() -> None:
    buffer = io.StringIO()
    renderer = MarkdownRenderer(make_console(buffer, 80, 24), live=False)
    renderer.start()
    rows = "".join(f"| {i} | value {i} |\n" for i in range(3000))  # ~60 KB of table
    renderer.feed("| a | b |\n|---|---|\n" + rows + "\nnext")  # the table ends at "next"'s line
    renderer.finish(interrupted=True)
    output = buffer.getvalue()
    assert "| 2999 | value 2999 |" in output  # its source, as it is: not rendered
