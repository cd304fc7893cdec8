"""The ``<think>…</think>`` splitter: reasoning a model writes at the start of its answer."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatcli.providers.think import Piece, ThinkSplitter, split_think


def reference(text: str) -> tuple[str, str]:
    """(reasoning, answer) of a whole text, written plainly: the behaviour the splitter keeps."""
    rest = text.lstrip()
    if not rest.startswith("<think>"):
        return "", text
    inner = rest[len("<think>") :].lstrip()
    end = inner.find("</think>")
    if end < 0:
        return inner, ""
    return inner[:end], inner[end + len("</think>") :].lstrip()


def fed(pieces: list[str]) -> list[Piece]:
    splitter = ThinkSplitter()
    out = [pair for piece in pieces for pair in splitter.feed(piece)]
    return out + splitter.close()


def joined(pairs: list[Piece]) -> tuple[str, str]:
    reasoning = "".join(text for kind, text in pairs if kind == "reasoning")
    answer = "".join(text for kind, text in pairs if kind == "answer")
    return reasoning, answer


def cut(text: str, cuts: list[int]) -> list[str]:
    bounds = [0, *sorted({c % (len(text) + 1) for c in cuts}), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


# Texts made of tag fragments, whitespace and letters, so that tags (whole, broken, repeated)
# are common rather than a rare accident of random text.
TEXTS = st.lists(
    st.sampled_from(
        ["<think>", "</think>", "<", "</", "<th", "ink>", "think", ">", "/", " ", "\n", "\t",
         "a", "ok.", "é", "🙂"]
    ),
    max_size=14,
).map("".join)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(TEXTS, st.lists(st.integers(min_value=0, max_value=200), max_size=8))
def test_any_split_gives_what_the_whole_text_gives(text: str, cuts: list[int]) -> None:
    pieces = cut(text, cuts)
    assert "".join(pieces) == text
    whole = joined(split_think(text))
    assert joined(fed(pieces)) == whole == reference(text)


@settings(max_examples=200, deadline=None)
@given(TEXTS)
def test_one_character_at_a_time(text: str) -> None:
    pairs = fed(list(text))
    assert joined(pairs) == reference(text)
    assert all(piece for _, piece in pairs)  # never an empty piece


@pytest.mark.parametrize(
    ("pieces", "expected"),
    [
        # The tags split at every kind of offset.
        (["<th", "ink>", "plan", "</th", "ink>", "Hi"], [("reasoning", "plan"), ("answer", "Hi")]),
        (["<", "t", "h", "i", "n", "k", ">x<", "/think", ">y"],
         [("reasoning", "x"), ("answer", "y")]),
        # Whitespace before the block, inside it and after it.
        (["\n  ", "\n<think>\n\n", "plan", "</think>", "\n\n", "Hi"],
         [("reasoning", "plan"), ("answer", "Hi")]),
        # Never closed: the answer was cut while the model thought.
        (["<think>", "still thinking"], [("reasoning", "still thinking")]),
        # Mentioned later in the answer: text, like the rest.
        (["Use ", "<think>", " tags"], [("answer", "Use "), ("answer", "<think>"),
                                        ("answer", " tags")]),
        (["A</think>B"], [("answer", "A</think>B")]),
        # A second block after the first is answer text.
        (["<think>a</think>b<think>c</think>"], [("reasoning", "a"),
                                                  ("answer", "b<think>c</think>")]),
        # A prefix of the tag that turns out not to be one, and one left at the end.
        (["<th", "ere"], [("answer", "<there")]),
        (["  <thi"], [("answer", "  <thi")]),
        (["<thinking>x"], [("answer", "<thinking>x")]),
        # An empty block (a model told not to think): nothing but the answer.
        (["<think>\n\n</think>\n\n", "Hi"], [("answer", "Hi")]),
        # The closing tag's start held back, then seen not to be the tag.
        (["<think>a</th", "at</think>b"], [("reasoning", "a"), ("reasoning", "</that"),
                                           ("answer", "b")]),
    ],
)  # fmt: skip
def test_pieces_come_out_in_order(pieces: list[str], expected: list[Piece]) -> None:
    assert fed(pieces) == expected


def test_reasoning_streams_as_it_comes() -> None:
    splitter = ThinkSplitter()
    assert splitter.feed("<think>") == []
    assert splitter.feed("one ") == [("reasoning", "one ")]
    assert splitter.feed("two </") == [("reasoning", "two ")]  # "</" may start the tag
    assert splitter.feed("think>Hel") == [("answer", "Hel")]
    assert splitter.feed("lo") == [("answer", "lo")]
    assert splitter.close() == []


def test_an_answer_without_a_block_passes_through_at_once() -> None:
    splitter = ThinkSplitter()
    assert splitter.feed("Hello") == [("answer", "Hello")]
    assert splitter.feed(" <think>") == [("answer", " <think>")]


SHAPES: dict[str, Callable[[int], list[str]]] = {
    "reasoning": lambda n: ["<think>", *["word "] * n, "</th"],
    "whitespace first": lambda n: [" "] * n,
    "whitespace in the block": lambda n: ["<think>", *[" "] * n],
    "tag starts": lambda n: ["<think>", *["a</thin"] * n],
    "one long piece": lambda n: ["<think>" + "x" * n * 10 + "</think>" + "y" * n * 10],
}


@pytest.mark.parametrize("shape", SHAPES)
def test_time_grows_linearly_with_the_answer(shape: str) -> None:
    def seconds(n: int) -> float:
        pieces = SHAPES[shape](n)
        runs = []
        for _ in range(3):
            started = time.perf_counter()
            fed(pieces)
            runs.append(time.perf_counter() - started)
        return min(runs)

    # Eight times the text: about eight times the time, where quadratic work takes 64.
    assert seconds(80_000) < seconds(10_000) * 24
