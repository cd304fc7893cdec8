"""A stored conversation as text: Markdown for people, JSON for programs.

Used by ``sessions show``, ``sessions export`` and the REPL's ``/export``. The text is the raw
stored text; making it safe for a terminal is the renderer's job, not this module's.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from chatcli.store import Session, StoredMessage

if TYPE_CHECKING:
    from chatcli.branches import Branch


def when(timestamp: float) -> str:
    """A local date and time, to the minute."""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


#: How an answer that is not whole is marked in its heading.
STATUS_WORDS: Final = {
    "length": "cut at the token limit",
    "context": "cut: the context was full",
    "content_filter": "withheld by a content filter",
    "repetition": "stopped: it kept repeating itself",
    "interrupted": "interrupted",
    "error": "failed",
}


def message_heading(message: StoredMessage) -> str:
    """``You`` or ``Assistant · provider · model``, with why it is not whole when it is not:
    ``(interrupted)``, ``(cut at the token limit)``, ..."""
    if message.role == "user":
        heading = "You"
    else:
        parts = ["Assistant", message.provider, message.model]
        heading = " · ".join(p for p in parts if p)
    if message.status != "complete":
        heading += f" ({STATUS_WORDS.get(message.status, message.status)})"
    return heading


def about(message: StoredMessage) -> str:
    """An answer's reasoning and tokens in one line (empty when neither is known):
    ``thought: 1,204 characters · 830 tokens in, 212 out``."""
    parts = []
    if message.reasoning:
        parts.append(f"thought: {len(message.reasoning):,} characters")
    if message.input_tokens is not None or message.output_tokens is not None:
        estimate = "about " if message.usage_estimated else ""
        parts.append(
            f"{estimate}{message.input_tokens or 0:,} tokens in, {message.output_tokens or 0:,} out"
        )
    return " · ".join(parts)


def to_markdown(
    session: Session,
    messages: Sequence[StoredMessage],
    *,
    reasoning: bool = False,
    context: bool = False,
    branches: Sequence[Branch] = (),
) -> str:
    """The session as Markdown, its messages numbered along the branch (as ``-S NAME@N`` and
    ``/edit N`` count); an answer's reasoning is one line, or whole with ``reasoning``; a
    question's context items are listed, or given whole (fenced under their sources) with
    ``context``. With ``branches`` (every branch of the session) each branch follows the
    first, from where it leaves the ones before it; else ``messages`` is one branch."""
    lines = [f"# {session.label}", ""]
    details = [f"session {session.id}", f"started {when(session.created_at)}"]
    if session.name and session.title:
        details.insert(0, session.title)
    lines += [f"_{' · '.join(details)}_", ""]
    if session.system:
        lines += ["**System:**", "", session.system, ""]
    if not branches:
        return "\n".join(lines + _messages(messages, 1, reasoning, context))
    shown: list[tuple[int, ...]] = []
    for branch in branches:
        ids = tuple(m.id for m in branch.path)
        shared, source = 0, 0
        for earlier_number, earlier in enumerate(shown, 1):
            common = next(
                (i for i, (a, b) in enumerate(zip(ids, earlier, strict=False)) if a != b),
                min(len(ids), len(earlier)),
            )
            if common > shared:
                shared, source = common, earlier_number
        active = " (active)" if branch.active else ""
        if shown:
            lines += ["---", ""]
        if shared:
            lines += [
                f"_Branch {branch.number}{active}: messages 1–{shared} as in branch {source},"
                " then:_",
                "",
            ]
        else:
            lines += [f"_Branch {branch.number}{active}:_", ""]
        lines += _messages(branch.path[shared:], shared + 1, reasoning, context)
        shown.append(ids)
    return "\n".join(lines)


def _messages(
    messages: Sequence[StoredMessage], first: int, reasoning: bool, context: bool
) -> list[str]:
    lines: list[str] = []
    for number, message in enumerate(messages, first):
        lines += [f"## {number} · {message_heading(message)}", ""]
        facts = about(message) if message.role == "assistant" else ""
        if facts:
            lines += [f"_{facts}_", ""]
        if message.context and context:
            lines += [item.block() + "\n" for item in message.context]
        elif message.context:
            listed = ", ".join(f"{i.source} ({i.size:,} bytes)" for i in message.context)
            lines += [f"_context: {listed}_", ""]
        if reasoning and message.reasoning:
            quoted = "\n".join(f"> {line}" for line in message.reasoning.rstrip("\n").splitlines())
            lines += ["**Thinking:**", "", quoted, ""]
        lines += _answer(message)
    return lines


def _answer(message: StoredMessage) -> list[str]:
    """The message's text; an answer that called tools shows each round's calls and what
    they returned where they came, between the text written before and after them."""
    from chatcli.tools import rounds_from_json

    rounds, final_from = rounds_from_json(message.tools)
    if not rounds:
        return [message.content.rstrip("\n"), ""]
    from chatcli.files import fenced
    from chatcli.tools.consent import one_line

    lines: list[str] = []
    for done in rounds:
        if done.text.strip():
            lines += [done.text.rstrip("\n"), ""]
        for call, result in zip(done.calls, done.results, strict=True):
            failed = " (failed)" if result.is_error else ""
            lines += [
                f"**Tool call:** `{call.name}` `{one_line(call.arguments)}`{failed}",
                "",
                fenced(result.text),
                "",
            ]
    final = message.content[final_from:].rstrip("\n")
    return lines + ([final, ""] if final.strip() else [])


def session_dict(session: Session) -> dict[str, Any]:
    return {
        "id": session.id,
        "name": session.name,
        "title": session.title,
        "system": session.system,
        "provider": session.provider,
        "model": session.model,
        "created_at": session.created_at,
        "updated_at": session.updated_at,
        "messages": session.message_count,
        "head": session.head,
    }


def message_dict(message: StoredMessage) -> dict[str, Any]:
    return {
        "id": message.id,
        "parent": message.parent,
        "role": message.role,
        "content": message.content,
        "provider": message.provider,
        "model": message.model,
        "created_at": message.created_at,
        "duration": message.duration,
        "status": message.status,
        "error": message.error,
        "reasoning": message.reasoning,
        "context": [
            {"source": item.source, "language": item.language, "content": item.text}
            for item in message.context
        ],
        "tool_rounds": _rounds(message),
        "usage": {
            "input_tokens": message.input_tokens,
            "output_tokens": message.output_tokens,
            "estimated": message.usage_estimated,
            "first_token_seconds": message.first_token,
        },
    }


def _rounds(message: StoredMessage) -> list[dict[str, Any]]:
    from chatcli.tools import rounds_as_dicts, rounds_from_json

    return rounds_as_dicts(rounds_from_json(message.tools)[0])


def to_json(session: Session, messages: Sequence[StoredMessage]) -> dict[str, Any]:
    return {"session": session_dict(session), "messages": [message_dict(m) for m in messages]}
