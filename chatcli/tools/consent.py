"""Asking the user on the terminal whether a tool call may run, and telling them of each call.

The call is shown first: the tool, where it comes from, and its arguments pretty-printed, all
through the sanitizer (they are the model's words). Then one key: ``y`` runs it, ``n`` does
not (the model is told the user declined), ``a`` runs it and every later call of that tool in
this session without asking. Keys typed before the question appeared are dropped, never taken
for the answer; Esc and Ctrl-D are ``n``; Ctrl-C stops the answer.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Mapping
from typing import IO, Any, Final

from chatcli.core import ToolCall
from chatcli.render.sanitize import reveal_in_code, sanitize
from chatcli.tools import Answer, Tool, ToolResult, pretty_arguments

#: The answers by key.
KEYS: Final[dict[bytes, Answer]] = {b"y": "yes", b"n": "no", b"a": "always"}
#: The longest line of a call's arguments shown after it ran.
SHOWN_ARGUMENTS: Final = 100
#: The most characters of arguments a question shows (whole: a cut could hide what runs);
#: a call with more is declined without asking.
MAX_SHOWN: Final = 16 * 1024


class TerminalConsent:
    """Asks on the terminal whose keys ``keys`` gives (``None``: no terminal, nobody to ask),
    writing to ``stream`` (stderr)."""

    def __init__(self, stream: IO[str], keys: Callable[[], int | None]) -> None:
        self.stream = stream
        self.keys = keys

    async def ask(self, tool: Tool, call: ToolCall, arguments: Mapping[str, Any]) -> Answer | None:
        fd = self.keys()
        if fd is None:
            return None
        body = pretty_arguments(arguments, limit=None)
        if len(body) > MAX_SHOWN:
            self._write(
                f"{tool.name}: its arguments are too long to show whole "
                f"({len(body):,} characters); not run\n"
            )
            return "no"
        # Every character shown as what it is: a bidi override or zero-width mark could make
        # the command on screen differ from the one that runs.
        shown = "\n".join("    " + line for line in reveal_in_code(body).splitlines())
        self._write(f"\n{tool.name} ({tool.source}) would run with:\n{shown}\n")
        self._write("Allow it? [y]es, [n]o, [a]lways for this tool: ", sanitized=True)
        answer = await read_answer(fd)
        self._write(f"{answer}\n", sanitized=True)
        return answer

    def show(self, call: ToolCall, result: ToolResult) -> None:
        arguments = " ".join(call.arguments.split())  # one line
        if len(arguments) > SHOWN_ARGUMENTS:
            arguments = arguments[: SHOWN_ARGUMENTS - 1] + "…"
        if result.is_error:
            first = result.text.strip().splitlines()[0] if result.text.strip() else "failed"
            outcome = f"✗ {first[:200]}"
        else:
            lines = result.text.count("\n") + (not result.text.endswith("\n"))
            outcome = f"{len(result.text):,} characters, {lines:,} lines"
        self._write(f"⚙ {call.name} {arguments} → {outcome}\n")

    def _write(self, text: str, *, sanitized: bool = False) -> None:
        self.stream.write(text if sanitized else sanitize(text))
        self.stream.flush()


async def read_answer(fd: int) -> Answer:
    """One of y, n, a from the terminal ``fd``, keys read one at a time and not echoed; other
    keys are passed over. The terminal is left as it was found."""
    from chatcli.render.terminal import keys_one_at_a_time

    loop = asyncio.get_running_loop()
    # A key typed while the model answered is not taken for consent.
    with keys_one_at_a_time(fd):
        while True:
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(fd, _wake, ready)
            try:
                await ready
            finally:
                loop.remove_reader(fd)
            data = os.read(fd, 64)
            if not data or data in (b"\x04", b"\x1b"):
                return "no"
            answer = KEYS.get(data.lower()) if len(data) == 1 else None
            if answer is not None:
                return answer


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


def one_line(arguments: str) -> str:
    """A call's JSON arguments on one line (for ``sessions show``), as sent when malformed."""
    try:
        return json.dumps(json.loads(arguments), ensure_ascii=False)
    except (ValueError, RecursionError):
        return " ".join(arguments.split())
