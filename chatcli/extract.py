"""``ask -x/--extract``: the code of an answer, without the prose around it.

The answer's code blocks are found the way the renderer finds them (markdown-it: fenced
blocks with their language, and indented ones), so what is extracted is what the screen shows
as code. A selector picks among them: ``last`` (the default), ``all``, a number (the Nth block,
from 1, as they are numbered), or a language (every block fenced with that language, such as
``python`` or ``sh``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from chatcli.errors import ChatcliError, UsageError

#: What ``-x`` takes when given nothing.
DEFAULT: Final = "last"
#: A language as a fence names it (``python``, ``c++``, ``objective-c``, ``f#``).
_LANGUAGE: Final = re.compile(r"[A-Za-z][A-Za-z0-9_+#.-]{0,31}")


@dataclass(frozen=True, slots=True)
class CodeBlock:
    """One block of code in an answer: its language (``""`` when the fence names none) and
    its text, ending with a newline."""

    language: str
    text: str


def is_selector(value: str) -> bool:
    """Whether ``value`` reads as a selector; else it is taken as words of the question
    (``ask -x "write a script"``)."""
    return value.isdigit() or bool(_LANGUAGE.fullmatch(value))


def with_default_selector(args: list[str]) -> list[str]:
    """``chatcli`` arguments with ``last`` put after an ``ask -x`` that has no selector of its
    own (at the end, before another option, or before words that are the question), so that
    ``-x`` reads as a flag there and takes a value elsewhere."""
    command = next((i for i, arg in enumerate(args) if not arg.startswith("-")), None)
    if command is None or args[command] != "ask":
        return args
    out = args[: command + 1]
    rest = args[command + 1 :]
    for i, arg in enumerate(rest):
        if arg == "--":
            out += rest[i:]
            break
        out.append(arg)
        if arg in ("-x", "--extract"):
            following = rest[i + 1] if i + 1 < len(rest) else None
            if following is None or following.startswith("-") or not is_selector(following):
                out.append(DEFAULT)
    return out


def check_selector(value: str) -> str:
    """The selector, or a usage error for one that cannot select anything (``-x 0``)."""
    if value.isdigit() and int(value) < 1:
        raise UsageError(f"-x {value}: blocks are numbered from 1")
    if not is_selector(value):
        raise UsageError(f"-x {value!r}: expected last, all, a block number or a language")
    return value


def code_blocks(markdown: str) -> list[CodeBlock]:
    """The code blocks of ``markdown`` in order (one still open at the end counts: an answer
    cut short keeps the code it has).

    Found as the renderer finds them, so that N here is the ``[N]`` shown on screen: the text
    cut into top-level blocks by the renderer's own splitter, each parsed by the renderer's
    parser (tables on). Where the splitter's cut is not the one a whole-document parse would
    make (a fence opened in a list item and closed at the margin, a fence inside an HTML block
    broken by a blank line), both still agree."""
    import sys

    from markdown_it import MarkdownIt

    from chatcli.render.markdown import BlockSplitter

    splitter = BlockSplitter(limit=sys.maxsize)  # the whole text is in memory already
    text = markdown.replace("\r\n", "\n").replace("\r", "\n")  # as the renderer reads it
    parts = [*splitter.feed(text + "\n"), splitter.tail]
    parser = MarkdownIt().enable("strikethrough").enable("table")
    blocks = []
    for part in parts:
        for token in parser.parse(str(part)):
            if token.type == "fence":
                language = token.info.split(maxsplit=1)[0] if token.info.strip() else ""
                blocks.append(CodeBlock(language.lower(), token.content))
            elif token.type == "code_block":
                blocks.append(CodeBlock("", token.content))
    return blocks


def select(markdown: str, selector: str) -> str:
    """The text ``selector`` picks from the answer's code blocks (blocks joined by a blank
    line); a :class:`ChatcliError` (exit 1) when the answer has none that match."""
    blocks = code_blocks(markdown)
    if not blocks:
        raise ChatcliError("the answer has no code block to extract (-x)")
    if selector == "last":
        chosen = blocks[-1:]
    elif selector == "all":
        chosen = blocks
    elif selector.isdigit():
        number = int(selector)
        if number > len(blocks):
            count = f"{len(blocks)} code block{'s' if len(blocks) != 1 else ''}"
            raise ChatcliError(f"the answer has {count}; -x {number} asks for more")
        chosen = [blocks[number - 1]]
    else:
        chosen = [block for block in blocks if block.language == selector.lower()]
        if not chosen:
            found = sorted({block.language or "unnamed" for block in blocks})
            raise ChatcliError(
                f"the answer has no {selector} code block (it has: {', '.join(found)})"
            )
    return "\n".join(block.text if block.text.endswith("\n") else block.text + "\n"
                     for block in chosen)  # fmt: skip
