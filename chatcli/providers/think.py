"""Reasoning a model writes into its answer text: a ``<think>…</think>`` block at the start.

Models served raw (Qwen3 or DeepSeek-R1 GGUF files behind llama.cpp with no reasoning parser,
or run by the ``local`` provider) think aloud in the answer itself::

    <think>
    The user greets me; a short greeting back.
    </think>

    Hello!

:class:`ThinkSplitter` is fed the answer's pieces as they stream and says which text is
reasoning and which is answer, whatever the pieces' boundaries (a tag may arrive as ``<th``
then ``ink>``). Only a block at the very start counts (whitespace before it is allowed): an
answer that mentions ``<think>`` later is left as it is. A block never closed (the answer was
cut) is all reasoning. Whitespace just inside the opening tag and just after the closing one
is dropped, so neither part starts with blank lines. Each piece costs time in proportion to
its length: at most the few characters of a possible tag are held back.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Final, Literal, TypeAlias

from chatcli.core import ReasoningDelta, TextDelta

Kind: TypeAlias = Literal["reasoning", "answer"]
Piece: TypeAlias = tuple[Kind, str]

OPEN: Final = "<think>"
CLOSE: Final = "</think>"


class ThinkSplitter:
    """Splits an answer fed piece by piece into reasoning and answer text (see the module)."""

    def __init__(self) -> None:
        #: "start" (no text yet tells whether a block opens), "thinking" (inside the block),
        #: "answering" (after it, or there was none).
        self._state: Literal["start", "thinking", "answering"] = "start"
        #: Whitespace seen before anything else (kept as pieces: it may be long).
        self._lead: list[str] = []
        #: Text that may be the start of the tag awaited; held until the next piece tells.
        self._held = ""
        #: Drop whitespace at the start of what comes next (just inside or after the block).
        self._trim = False

    def feed(self, piece: str) -> list[Piece]:
        """The reasoning and answer text this piece completes, in order."""
        out: list[Piece] = []
        if self._state == "start":
            piece = self._opening(piece)
        if self._state == "thinking":
            piece = self._thinking(piece, out)
        if self._state == "answering":
            self._add(out, "answer", piece)
        return out

    def close(self) -> list[Piece]:
        """What is still held, once the answer has ended."""
        out: list[Piece] = []
        if self._state == "start":  # only whitespace, or the start of a tag and no more
            self._add(out, "answer", "".join(self._lead) + self._held)
        elif self._state == "thinking":  # never closed: it was all reasoning
            self._add(out, "reasoning", self._held)
        self._state, self._lead, self._held = "answering", [], ""
        return out

    def _opening(self, piece: str) -> str:
        """Look for the opening tag; what is left of ``piece`` for the state now reached."""
        if not self._held:
            rest = piece.lstrip()
            self._lead.append(piece[: len(piece) - len(rest)])
            piece = rest
            if not piece:
                return ""
        head = self._held + piece
        if head.startswith(OPEN):
            self._state, self._trim, self._lead, self._held = "thinking", True, [], ""
            return head[len(OPEN) :]
        if OPEN.startswith(head):  # perhaps the tag, in pieces: wait for more
            self._held = head
            return ""
        self._state = "answering"  # no block: everything is answer, as it came
        lead, self._lead, self._held = "".join(self._lead), [], ""
        return lead + head

    def _thinking(self, piece: str, out: list[Piece]) -> str:
        """Reasoning up to the closing tag; what is left of ``piece`` after it."""
        text = self._held + piece
        if self._trim:
            text = text.lstrip()
            if not text:
                return ""
            self._trim = False
        end = text.find(CLOSE)
        if end >= 0:
            self._add(out, "reasoning", text[:end])
            self._state, self._trim, self._held = "answering", True, ""
            return text[end + len(CLOSE) :]
        keep = _partial_tag(text, CLOSE)
        self._held = text[len(text) - keep :]
        self._add(out, "reasoning", text[: len(text) - keep])
        return ""

    def _add(self, out: list[Piece], kind: Kind, text: str) -> None:
        if kind == "answer" and self._trim:
            text = text.lstrip()
            if text:
                self._trim = False
        if text:
            out.append((kind, text))


def _partial_tag(text: str, tag: str) -> int:
    """How many of ``text``'s last characters are a start of ``tag`` (less than all of it)."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


def split_think(text: str) -> list[Piece]:
    """A whole answer's reasoning and answer text."""
    splitter = ThinkSplitter()
    return [*splitter.feed(text), *splitter.close()]


def as_events(pieces: Iterable[Piece]) -> Iterator[TextDelta | ReasoningDelta]:
    """The pieces as the events a provider yields."""
    for kind, text in pieces:
        yield ReasoningDelta(text) if kind == "reasoning" else TextDelta(text)
