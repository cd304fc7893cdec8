"""Code blocks on a terminal carry a dim label ``[N] language``: N is the number ``ask -x N``,
``/copy N`` and ``/save N`` take (:mod:`chatcli.extract` counts them), however the answer
streams in; off a terminal, and wherever Rich's own output is compared, there are none."""

from __future__ import annotations

import io
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatcli.extract import code_blocks
from chatcli.render import MarkdownRenderer, PlainRenderer, choose
from chatcli.render.markdown import LABEL_LANGUAGE
from tests.test_render import make_console, screen_lines, stream, whole

#: A label line as the screen shows it: inside a list or a quote it is indented or marked.
LABEL = re.compile(r"^[\s▌•\d.]*\[(\d+)\](?: (\S+))?$")
SGR = re.compile(r"\x1b\[[0-9;]*m")

#: Blocks of every kind that holds code, and some that do not.
KINDS = [
    "```python\nprint('x')\n```",
    "```\nno language\n\nwith a blank line\n```",
    "~~~sh\necho tilde\n~~~",
    "````markdown\n```js\nnot a block of its own\n```\n````",
    "```C++ with words after\nint main();\n```",
    "    indented code\n    second line",
    "- a list\n\n  ```rust\n  fn nested() {}\n  ```",
    "1. one\n\n       indented in an item",
    "> quoted\n>\n> ```go\n> package main\n> ```",
    "A paragraph with `inline code`, which is no block.",
    "- item\n- item two\n  ~~~\n  in a tight list\n  ~~~",
    "| a | b |\n|---|---|\n| 1 | 2 |",
    "# Heading",
]
#: What may end an answer: an unclosed fence counts as a block (``-x`` takes what it has).
ENDINGS = ["", "```python\nunclosed = True\n", "~~~\nunclosed\n\nstill code", "    last"]


def labels(output: str) -> list[tuple[int, str]]:
    """(number, language) of every label line in ``output``, in order."""
    found = []
    for line in SGR.sub("", output).splitlines():
        match = LABEL.match(line.rstrip())
        if match:
            found.append((int(match[1]), match[2] or ""))
    return found


def expected(text: str) -> list[tuple[int, str]]:
    return [(n, block.language) for n, block in enumerate(code_blocks(text), 1)]


def numbered(text: str, cuts: list[int], *, live: bool, width: int = 60) -> str:
    return stream(text, cuts, live=live, width=width, numbered=True)


def test_every_kind_of_block_is_labelled_as_extract_numbers_it() -> None:
    text = "\n\n".join(KINDS) + "\n\n" + ENDINGS[1]
    want = expected(text)
    assert [n for n, _ in want] == list(range(1, 12))  # ten blocks above, and the unclosed one
    assert [language for _, language in want][:5] == ["python", "", "sh", "markdown", "c++"]
    assert labels(numbered(text, [], live=False)) == want
    # In pieces of one to three characters: fences and labels split across pieces.
    for step in (1, 2, 3):
        assert labels(numbered(text, list(range(0, len(text), step)), live=False)) == want


@settings(max_examples=120, deadline=None)
@given(
    st.lists(st.sampled_from(KINDS), min_size=1, max_size=7),
    st.sampled_from(ENDINGS),
    st.lists(st.integers(min_value=0, max_value=600), max_size=15),
)
def test_labels_agree_with_extract_in_any_order_and_any_pieces(
    kinds: list[str], ending: str, cuts: list[int]
) -> None:
    text = "\n\n".join([*kinds, ending]) + "\n"
    cuts = [cut for cut in cuts if cut <= len(text)]
    assert labels(numbered(text, cuts, live=False)) == expected(text)


@pytest.mark.parametrize("height", [40, 6])
def test_live_labels_are_drawn_once_each_in_the_scrollback(
    height: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(MarkdownRenderer, "FRAMES_PER_SECOND", 10**9)  # redraw on every piece
    text = "\n\n".join([KINDS[0], "Some words.", KINDS[2], KINDS[6], ENDINGS[1]])
    buffer = io.StringIO()
    renderer = MarkdownRenderer(make_console(buffer, 60, height), live=True, numbered=True)
    renderer.start()
    for start in range(0, len(text), 4):
        renderer.feed(text[start : start + 4])
    renderer.finish()
    shown = [line for line in screen_lines(buffer.getvalue(), 60, height) if LABEL.match(line)]
    assert [line.strip() for line in shown] == ["[1] python", "[2] sh", "[3] rust", "[4] python"]


def test_the_label_is_a_line_of_its_own_above_the_block_and_dim() -> None:
    answer = "Intro.\n\n```python\nx = 1\n```\n"
    output = numbered(answer, [], live=False)
    lines = output.splitlines()
    at = next(i for i, line in enumerate(lines) if "[1] python" in line)
    assert lines[at] == "\x1b[2m[1] python\x1b[0m"  # dim, nothing else on the line
    assert SGR.sub("", lines[at + 1]).strip() == ""  # the block's own padding follows
    assert SGR.sub("", lines[at + 2]).strip() == "x = 1"
    # Without the label line, the output is Rich's own.
    assert "\n".join(lines[:at] + lines[at + 1 :]) + "\n" == whole(answer)


def test_a_language_from_the_model_is_made_safe_and_short() -> None:
    # Control characters arrive visible (the text is sanitized), a long name is cut.
    hostile = "```Py\x1b]52;c;eA==\x07" + "x" * 200 + "\ncode\n```\n\n```&#13;evil\nmore\n```\n"
    output = numbered(hostile, [5], live=False)
    found = labels(output)
    assert [n for n, _ in found] == [1, 2]
    for _, language in found:
        assert len(language) <= LABEL_LANGUAGE
        assert not any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in language)
    assert found[0][1].startswith("py␛]52") and found[0][1].endswith("…")
    assert found[1][1] == "&#13;evil"  # markdown-it keeps this entity as it is
    assert "\r" not in output and "\x07" not in output and "\x1b]" not in output


def test_numbering_starts_again_for_each_renderer_as_each_answer_gets_its_own() -> None:
    answer = "```sh\nls\n```\n\n```sh\npwd\n```\n"
    for _ in range(2):  # the REPL makes a renderer for every answer
        buffer = io.StringIO()
        renderer = choose(buffer, is_terminal=True, raw=False, markdown=False, json=False, env={})
        renderer.start()
        renderer.feed(answer)
        renderer.finish()
        shown = screen_lines(buffer.getvalue(), 80, 25)  # live: frames were drawn and erased
        assert [line for line in shown if LABEL.match(line)] == ["[1] sh", "[2] sh"]


def test_no_labels_off_a_terminal_or_unless_asked() -> None:
    answer = "Text.\n\n```python\nx = 1\n```\n"
    # --markdown into a pipe renders, without labels.
    piped = io.StringIO()
    renderer = choose(piped, is_terminal=False, raw=False, markdown=True, json=False, env={})
    assert isinstance(renderer, MarkdownRenderer) and not renderer.numbered
    renderer.start()
    renderer.feed(answer)
    renderer.finish()
    assert labels(piped.getvalue()) == []
    # --raw and a plain pipe: no rendering at all.
    for is_terminal, raw in ((True, True), (False, False)):
        plain = choose(io.StringIO(), is_terminal=is_terminal, raw=raw, markdown=False,
                       json=False, env={})  # fmt: skip
        assert isinstance(plain, PlainRenderer)
    # The renderer's own default is Rich's output exactly (the differential tests use it).
    assert stream(answer, [3, 20], live=False) == whole(answer)


def test_an_indented_line_right_after_a_table_is_counted_alike() -> None:
    # (extract parsed without tables once, and counted this block one short)
    text = "| a | b |\n|---|---|\n    shown as code\n\n```sh\nls\n```\n"
    assert labels(numbered(text, [], live=False)) == expected(text)


#: Where the renderer's cut into blocks is not a whole-document parse's, found by a review:
#: extract counts by the same cut, so the labels still name what -x N and /copy N take.
SPLIT_APART = [
    # A model's usual slip: a fence opened in a list item, closed at the margin.
    "1. Install it:\n   ```bash\n   pip install requests\n```\n2. Write the script:\n"
    "```python\nimport requests\n```\n\n```bash\npython script.py\n```\n",
    "<!-- a comment\n\n```sh\nls\n```\n-->\n\n```py\nx = 1\n```\n",
    "<pre>\n\n```sh\nls\n```\n</pre>\n\n```py\nx = 1\n```\n",
    "```sh\nls\n    ```\nstill code?\n```\n\n```py\nx\n```\n",
    "``` a`b\nnot a fence\n```\n\n```py\nx\n```\n",
]


@pytest.mark.parametrize("text", SPLIT_APART)
def test_labels_and_extract_agree_where_the_cut_is_not_commonmarks(text: str) -> None:
    want = expected(text)
    assert want  # each has code
    assert labels(numbered(text, [], live=False)) == want
    assert labels(numbered(text, list(range(0, len(text), 2)), live=False)) == want


@pytest.mark.parametrize("newline", ["\r\n", "\r"])
def test_crlf_and_cr_line_ends_are_line_ends(newline: str) -> None:
    text = "Two:\n\n```python\nprint(1)\n```\n\n```sh\nls\n```\n".replace("\n", newline)
    assert expected(text) == [(1, "python"), (2, "sh")]
    for cuts in ([], list(range(0, len(text), 1))):  # a CRLF split between pieces too
        output = numbered(text, cuts, live=False)
        assert labels(output) == [(1, "python"), (2, "sh")]
        assert "␍" not in output
