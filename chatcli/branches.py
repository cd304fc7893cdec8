"""A session's branches: every path from its first message to a message nothing follows.

``/retry``, ``/edit N`` and ``-S NAME@N`` keep the old path and start a new one beside it; the
session's head says which is active. Branches are numbered by where they start, oldest
first (branch 1 is the original conversation), so a number keeps meaning the same branch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from chatcli.store import StoredMessage

#: How much of a message a branch listing quotes.
PREVIEW: Final = 48


@dataclass(frozen=True, slots=True)
class Branch:
    number: int
    #: Its messages, first to last (the last is what nothing follows).
    path: tuple[StoredMessage, ...]
    #: Whether the session's head is on it.
    active: bool

    @property
    def leaf(self) -> StoredMessage:
        return self.path[-1]


def children_of(messages: Sequence[StoredMessage]) -> dict[int | None, list[StoredMessage]]:
    """Each message's followers, oldest first (``None``: the first messages). A parent that
    is not in the session (a damaged file) counts as none."""
    known = {m.id for m in messages}
    children: dict[int | None, list[StoredMessage]] = {}
    for message in sorted(messages, key=lambda m: m.id):
        parent = message.parent if message.parent in known else None
        children.setdefault(parent, []).append(message)
    return children


def branches(messages: Sequence[StoredMessage], head: int | None) -> list[Branch]:
    """Every branch of a session (``messages``: all of them, with their parents)."""
    return _branches(children_of(messages), head)


def _branches(children: dict[int | None, list[StoredMessage]], head: int | None) -> list[Branch]:
    up: dict[int, StoredMessage | None] = {}
    leaves: list[StoredMessage] = []
    # Depth first, oldest child first; iterative, so a long session cannot overflow a stack.
    # Each message is in one list of children, so each is met once, and a loop in a damaged
    # file (which no first message leads into) is never entered.
    stack: list[tuple[StoredMessage, StoredMessage | None]] = [
        (root, None) for root in reversed(children.get(None, []))
    ]
    while stack:
        message, parent = stack.pop()
        up[message.id] = parent
        following = children.get(message.id, [])
        if not following:
            leaves.append(message)
        stack.extend((child, message) for child in reversed(following))
    found = []
    for number, leaf in enumerate(leaves, 1):
        path: list[StoredMessage] = []
        at: StoredMessage | None = leaf
        while at is not None:  # each path is walked once, from its end: linear in its length
            path.append(at)
            at = up[at.id]
        path.reverse()
        active = head is not None and any(m.id == head for m in path)
        found.append(Branch(number, tuple(path), active))
    return _one_active(found)


def _one_active(found: list[Branch]) -> list[Branch]:
    """Exactly one branch active: the first through the head (a head that is not a leaf, as
    after ``-S NAME@N``, lies on several)."""
    marked = False
    result = []
    for branch in found:
        active = branch.active and not marked
        marked = marked or active
        result.append(Branch(branch.number, branch.path, active))
    return result


def preview(text: str, width: int = PREVIEW) -> str:
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def tree_lines(messages: Sequence[StoredMessage], head: int | None) -> list[str]:
    """The session as a tree of runs (messages that follow one another with no fork), each
    with its message numbers and first words; a run that ends a branch shows its number, and
    ``*`` marks the active one."""
    children = children_of(messages)
    leaf_number = {b.leaf.id: b for b in _branches(children, head)}
    lines: list[str] = []
    # (first message of the run, its position in the path (1-based), the prefix, the connector)
    # Each message is in one list of children: met once, as in branches().
    roots = children.get(None, [])
    stack: list[tuple[StoredMessage, int, str, str]] = [
        (root, 1, "", "" if len(roots) == 1 else "└─ " if i == 0 else "├─ ")
        for i, root in enumerate(reversed(roots))
    ]
    while stack:
        first, position, prefix, connector = stack.pop()
        run = [first]
        while len(children.get(run[-1].id, [])) == 1:
            run.append(children[run[-1].id][0])
        last = position + len(run) - 1
        span = f"{position}" if last == position else f"{position}–{last}"
        who = "you" if first.role == "user" else "answer"
        label = f"{connector}messages {span}: {who}: {preview(first.content)}"
        branch = leaf_number.get(run[-1].id)
        if branch is not None:
            mark = " *" if branch.active else ""
            label += f"  [branch {branch.number}{mark}]"
        lines.append(prefix + label)
        following = children.get(run[-1].id, [])
        inner = prefix + ("   " if connector.startswith("└") else "│  " if connector else "")
        for index, child in enumerate(reversed(following)):
            stack.append((child, last + 1, inner, "└─ " if index == 0 else "├─ "))
    return lines


__all__ = ["Branch", "branches", "children_of", "preview", "tree_lines"]
