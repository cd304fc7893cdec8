"""Tools a model may call: what one is, what a call returns, and the box that runs them.

A :class:`Tool` has a name the model calls it by, a description, a JSON Schema for its
arguments, and says whether it *acts* (writes, runs something, or reaches the network): a tool
that acts runs only with the user's consent (:class:`Consent`), or when allow-listed. The
built-in tools live in :mod:`chatcli.tools.builtin`, MCP servers' in :mod:`chatcli.tools.mcp`.

:class:`Toolbox` is what a turn gets (:func:`chatcli.turn.run_turn`): the tools on offer, and
:meth:`Toolbox.run` to answer one round of the model's calls, in order. Whatever a tool
returns reaches the model as data, bounded (:data:`MAX_RESULT`); nothing of it reaches the
terminal but through the sanitizer (the caller's :class:`Consent` shows it).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

from chatcli.core import ChatMessage, TextPart, ToolCall, ToolSpec

log = logging.getLogger("chatcli.tools")

#: The most characters of one tool's result the model gets; more is cut, with a note saying
#: how much was left out.
MAX_RESULT: Final = 32 * 1024
#: A tool name as every protocol takes it (OpenAI's rule, the strictest).
NAME_PATTERN: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: The default cap on rounds of tool calls for one question (``[tools] max_rounds``).
DEFAULT_MAX_ROUNDS: Final = 10

Answer = Literal["yes", "no", "always"]


class ToolError(Exception):
    """A tool could not do what it was asked: the message goes to the model as the result."""


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What a call returned (``is_error``: it failed, or was refused; the text says why)."""

    text: str
    is_error: bool = False


class Tool(Protocol):
    """A tool the model may call."""

    #: The name the model calls it by (matches :data:`NAME_PATTERN`).
    name: str
    description: str
    #: The JSON Schema (an object) its arguments follow.
    parameters: Mapping[str, Any]
    #: It writes, runs something or reaches the network: it asks first (see :class:`Consent`).
    acts: bool
    #: Where it comes from: ``built-in``, or ``mcp:SERVER``.
    source: str

    async def run(self, arguments: Mapping[str, Any]) -> ToolResult:
        """Do the call. Raise :class:`ToolError` for a failure the model should be told of."""
        ...


def spec_of(tool: Tool) -> ToolSpec:
    return ToolSpec(tool.name, tool.description, tool.parameters)


def bounded(text: str, limit: int = MAX_RESULT) -> str:
    """``text`` cut to ``limit`` characters, with a note of what was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n[... cut: {len(text) - limit:,} more characters not shown]"


class Consent(Protocol):
    """Asks the user whether a call that acts may run.

    :meth:`ask` returns ``yes``, ``no`` or ``always`` (yes, and for the rest of this session
    without asking), or ``None`` when nobody can be asked (no terminal): the call is refused.
    :meth:`show` tells the user of each call and its outcome (sanitized: the text is the
    model's and the tool's).
    """

    async def ask(
        self, tool: Tool, call: ToolCall, arguments: Mapping[str, Any]
    ) -> Answer | None: ...

    def show(self, call: ToolCall, result: ToolResult) -> None: ...


class NoConsent:
    """Nobody to ask, and nothing shown: only allow-listed tools that act run (the API)."""

    async def ask(self, tool: Tool, call: ToolCall, arguments: Mapping[str, Any]) -> Answer | None:
        return None

    def show(self, call: ToolCall, result: ToolResult) -> None:
        pass


@dataclass(kw_only=True)
class Toolbox:
    """The tools on offer for a question, and how their calls are answered."""

    tools: Sequence[Tool] = ()
    consent: Consent = field(default_factory=NoConsent)
    #: Tools that act yet run without asking (``--allow-tool``, ``[tools] allow``).
    allowed: set[str] = field(default_factory=set)
    #: Rounds of tool calls one question may take; the last round asks for an answer.
    max_rounds: int = DEFAULT_MAX_ROUNDS

    def __bool__(self) -> bool:
        return bool(self.tools)

    def specs(self) -> tuple[ToolSpec, ...]:
        return tuple(spec_of(tool) for tool in self.tools)

    def find(self, name: str) -> Tool | None:
        return next((tool for tool in self.tools if tool.name == name), None)

    async def run_one(self, call: ToolCall) -> ToolResult:
        """Answer a call: run it (asking first when it acts), or say why not."""
        result = await self._run(call)
        result = ToolResult(bounded(result.text), result.is_error)
        self.consent.show(call, result)
        return result

    async def _run(self, call: ToolCall) -> ToolResult:
        tool = self.find(call.name)
        if tool is None:
            known = ", ".join(t.name for t in self.tools) or "none"
            return ToolResult(f"there is no tool {call.name!r} (the tools are: {known})", True)
        arguments = parse_arguments(call.arguments)
        if isinstance(arguments, ToolResult):
            return arguments
        if tool.acts and tool.name not in self.allowed:
            answer = await self.consent.ask(tool, call, arguments)
            if answer is None:
                return ToolResult(
                    f"refused: {tool.name} acts (it runs, writes or reaches the network) and "
                    "nobody is at a terminal to allow it; the user may allow-list it with "
                    f"--allow-tool {tool.name}",
                    True,
                )
            if answer == "no":
                return ToolResult(f"the user declined to run {tool.name} this time", True)
            if answer == "always":
                self.allowed.add(tool.name)
        try:
            return await tool.run(arguments)
        except ToolError as exc:
            return ToolResult(str(exc) or "the tool failed", True)
        except Exception as exc:  # a tool's own bug or an outside failure: the model is told
            log.debug("tool %s failed", tool.name, exc_info=True)
            return ToolResult(f"{tool.name} failed: {type(exc).__name__}: {exc}", True)


def parse_arguments(text: str) -> dict[str, Any] | ToolResult:
    """A call's arguments as an object, or the error result telling the model what is wrong
    (malformed JSON, or JSON that is not an object). No arguments at all is ``{}``."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return ToolResult(f"the arguments are not valid JSON ({exc}); send a JSON object", True)
    if not isinstance(value, dict):
        return ToolResult("the arguments must be a JSON object", True)
    return value


def pretty_arguments(arguments: Mapping[str, Any], *, limit: int | None = 2000) -> str:
    """Arguments as indented JSON for a person to read, cut at ``limit`` characters (``None``:
    whole; the caller sanitizes it before it is shown)."""
    text = json.dumps(arguments, indent=2, ensure_ascii=False, default=str)
    if limit is None or len(text) <= limit:
        return text
    return text[:limit] + f"\n... ({len(text) - limit:,} more)"


# -- an answer's rounds, kept ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToolRound:
    """One round of tool calls in an answer: the text the model wrote before calling, its
    calls, and what each returned (in the calls' order)."""

    text: str
    calls: tuple[ToolCall, ...]
    results: tuple[ToolResult, ...]

    def messages(self) -> tuple[ChatMessage, ...]:
        """The round as the protocols carry it: the assistant's calls, then each result."""
        return (
            ChatMessage("assistant", (TextPart(self.text),), tool_calls=self.calls),
            *(
                ChatMessage.tool_result(call.id, result.text)
                for call, result in zip(self.calls, self.results, strict=True)
            ),
        )


def rounds_json(rounds: Sequence[ToolRound], final_from: int) -> str | None:
    """An answer's tool rounds as the session keeps them, with where its text after them
    starts (``None``: it called no tools)."""
    if not rounds:
        return None
    return json.dumps(
        {
            "final_from": final_from,
            "rounds": [
                {
                    "text": done.text,
                    "calls": [
                        {"id": c.id, "name": c.name, "arguments": c.arguments} for c in done.calls
                    ],
                    "results": [{"text": r.text, "error": r.is_error} for r in done.results],
                }
                for done in rounds
            ],
        },
        ensure_ascii=False,
    )


def rounds_as_dicts(rounds: Sequence[ToolRound]) -> list[dict[str, Any]]:
    """Rounds as JSON output gives them (``--json``, ``sessions export --format json``)."""
    return [
        {
            "text": done.text,
            "calls": [
                {"id": c.id, "name": c.name, "arguments": c.arguments, "result": r.text,
                 "failed": r.is_error}
                for c, r in zip(done.calls, done.results, strict=True)
            ],
        }
        for done in rounds
    ]  # fmt: skip


def rounds_from_json(text: str | None) -> tuple[tuple[ToolRound, ...], int]:
    """The tool rounds and ``final_from`` kept with an answer; nothing for a value that is
    not what :func:`rounds_json` writes (an edited or damaged database: the answer's text
    is still sent, without its calls)."""
    if not text:
        return (), 0
    try:
        data = json.loads(text)
        rounds = []
        for item in data["rounds"]:
            calls = tuple(
                ToolCall(str(c["id"]), str(c["name"]), str(c["arguments"])) for c in item["calls"]
            )
            results = tuple(ToolResult(str(r["text"]), bool(r["error"])) for r in item["results"])
            if len(calls) != len(results) or not calls:
                raise ValueError("a round's calls and results do not match")
            rounds.append(ToolRound(str(item["text"]), calls, results))
        final_from = data["final_from"]
        if not isinstance(final_from, int) or final_from < 0:
            raise ValueError("final_from")
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        log.debug("an answer's stored tool calls are unreadable (%s); left out", exc)
        return (), 0
    return tuple(rounds), final_from
