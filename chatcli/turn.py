"""One turn: ask a provider (retrying, falling back), stream its events into a renderer.

``ask``, the REPL, ``providers --check`` and the Python API all call :func:`run_turn`. It owns
retries, fallback and cancellation: when the task is cancelled (Ctrl-C) or the stream fails,
the renderer is finished cleanly and the partial answer is kept on the :class:`Turn`, whose
``status`` then says what happened. The caller decides what to store and which exit code to
use. Conversation history and persistence live in :mod:`chatcli.conversation`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final, Literal

from chatcli.core import (
    ChatMessage,
    ChatRequest,
    Event,
    Finish,
    FinishReason,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCalls,
    ToolSpec,
    Usage,
    without_tools,
)
from chatcli.errors import (
    ChatcliError,
    ProtocolError,
    ProviderError,
    StreamInterruptedError,
    UsageError,
)
from chatcli.providers import Registry
from chatcli.providers.base import BaseProvider
from chatcli.render import Renderer
from chatcli.tools import ToolResult, ToolRound

if TYPE_CHECKING:
    from chatcli.tools import Toolbox

log = logging.getLogger("chatcli.turn")

#: How a turn ended: ``complete``; cut by a limit (see :data:`CUT`); ``interrupted`` (Ctrl-C, a
#: signal, a failure after some text); ``error`` (failed before any text).
TurnStatus = Literal[
    "pending",
    "complete",
    "length",
    "context",
    "content_filter",
    "repetition",
    "interrupted",
    "error",
]

#: The statuses of an answer that ended normally but is not whole, and the line that says so.
CUT: Final[Mapping[str, str]] = {
    "length": "the answer was cut at the token limit (-o max_tokens N allows more)",
    "context": "the answer was cut: the conversation filled the model's context",
    "content_filter": "the service's content filter withheld the rest of the answer",
    "repetition": "the answer was stopped: the model kept repeating itself",
}


#: What sees a turn's events as they come (:func:`run_turn`'s ``on_event``).
OnEvent = Callable[[Event], Awaitable[None] | None]


@dataclass(frozen=True, kw_only=True, slots=True)
class TurnRequest:
    """Everything needed to ask for one answer, settled before the turn starts."""

    provider: str
    messages: tuple[ChatMessage, ...] = ()
    model: str | None = None
    temperature: float | None = None
    #: ``-o KEY VALUE`` pairs, checked against what each provider of the chain takes.
    options: Mapping[str, Any] = field(default_factory=dict)
    stream: bool = True
    #: ``--proxy``: wins over the configured proxy and the environment, for every provider.
    proxy: str | None = None
    #: ``--base-url``: the first provider's root (the fallbacks use their own).
    base_url: str | None = None
    timeout: float | None = None
    #: How often a failure before any text is retried (per provider).
    retries: int = 2
    #: Providers to try, in order, when this one fails before any text.
    fallback: tuple[str, ...] = ()
    #: The model each fallback uses (by provider name); without one, its default.
    fallback_models: Mapping[str, str] = field(default_factory=dict)
    #: Each provider of the chain, the first too, gets the options it takes and goes without
    #: the others (``chatcli serve``, whose clients send fields not every provider knows);
    #: otherwise an option the first does not take is an error.
    loose_options: bool = False
    #: Tools the model may call (see :mod:`chatcli.tools`; the turn's toolbox runs them).
    tools: tuple[ToolSpec, ...] = ()
    #: ``none``: answer without calling tools (the last round of a question).
    tool_choice: Literal["auto", "none"] = "auto"


@dataclass(kw_only=True, slots=True)
class Turn:
    """The answer as it stands: filled in while streaming, final when :func:`run_turn` ends."""

    provider: str
    model: str = ""
    #: The answer's pieces as they arrived (joined on demand: appending to one string would
    #: copy the whole answer on every piece).
    pieces: list[str] = field(default_factory=list)
    #: What the model thought before answering, kept apart from the answer.
    reasoning_pieces: list[str] = field(default_factory=list)
    usage: Usage | None = None
    #: Why the answer ended, when the provider said so (``None`` until then).
    finish_reason: FinishReason | None = None
    status: TurnStatus = "pending"
    error: str | None = None
    started: float = field(default_factory=time.monotonic)
    first_piece_at: float | None = None
    ended: float | None = None
    #: The rounds of tool calls this answer took, in order (see :class:`ToolRound`).
    rounds: list[ToolRound] = field(default_factory=list)
    #: The calls of the round that just ended, not answered yet.
    calls: list[ToolCall] = field(default_factory=list)
    #: Where the last round's text starts in :attr:`text` (the answer after the tools).
    final_from: int = 0
    #: Pieces of thinking and of tool calls handed to ``on_event`` (a caller that streams
    #: them has shown them: the turn is never retried after one).
    emitted: int = 0

    def stored(self) -> dict[str, Any]:
        """What the sessions database keeps of the answer besides its text (the keywords of
        ``SessionStore.add_message``): who answered, how it ended, its thinking, tokens and
        timing. An answer still pending is stored as interrupted."""
        usage = self.usage
        return {
            "provider": self.provider,
            "model": self.model or None,
            "status": "interrupted" if self.status == "pending" else self.status,
            "duration": self.duration,
            "error": self.error,
            "reasoning": self.reasoning or None,
            "input_tokens": usage.input_tokens if usage else None,
            "output_tokens": usage.output_tokens if usage else None,
            "usage_estimated": usage.estimated if usage else False,
            "first_token": self.first_piece_at - self.started if self.first_piece_at else None,
        }

    @property
    def began(self) -> bool:
        """Something of the answer exists: text was shown, or tools were called."""
        return bool(self.pieces or self.rounds)

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def reasoning(self) -> str:
        return "".join(self.reasoning_pieces)

    @property
    def duration(self) -> float:
        return (self.ended or time.monotonic()) - self.started


#: Retry delays: 0.5 s, 1 s, 2 s ... capped, each cut by up to a quarter at random (jitter).
BACKOFF_BASE: Final = 0.5
BACKOFF_CAP: Final = 8.0
#: The longest ``Retry-After`` waited for; a longer one fails (or falls back) at once.
RETRY_AFTER_LIMIT: Final = 60.0


def backoff(attempt: int, retry_after: float | None = None) -> float | None:
    """Seconds to wait before retry ``attempt`` (0-based); ``None``: the server asks too much."""
    if retry_after is not None:
        return retry_after if retry_after <= RETRY_AFTER_LIMIT else None
    delay: float = min(BACKOFF_BASE * 2**attempt, BACKOFF_CAP)
    return delay * (1 - 0.25 * random.random())


async def run_turn(
    request: TurnRequest,
    registry: Registry,
    renderer: Renderer,
    *,
    turn: Turn | None = None,
    notice: Callable[[str], None] | None = None,
    on_event: OnEvent | None = None,
    toolbox: Toolbox | None = None,
    keep_calls: bool = False,
) -> Turn:
    """Run one turn. Raises the provider's error (or ``CancelledError``) after recording it.

    Failures before any text are retried (``request.retries`` times, with backoff, honouring
    ``Retry-After``) when they are worth it (connection errors, timeouts, 408, 409, 429, 5xx),
    then the next provider of ``request.fallback`` is tried. Once text has been shown nothing
    is retried: the partial answer stays and the turn is marked interrupted. ``notice`` gets a
    line for each retry and fallback (the CLI prints it on stderr).

    With a ``toolbox`` (and ``request.tools``), an answer that calls tools is a round: the
    renderer finishes, the toolbox answers the calls (asking the user first where it must),
    and the model is asked again with the results, up to ``toolbox.max_rounds`` rounds; the
    last one asks it to answer without tools.

    With ``keep_calls`` (and no toolbox), the tools of ``request.tools`` are offered and the
    calls the model makes end the turn, kept on ``turn.calls`` for the caller to answer
    (``chatcli serve`` hands them to its client).

    Pass ``turn`` to keep a handle on the partial answer from outside (e.g. for Ctrl-C);
    ``on_event`` sees every event of the attempt that answers (the Python API streams them);
    when it returns an awaitable, the stream waits for it (back-pressure: ``chatcli serve``
    reads no faster than its client). Once it has seen a piece of thinking or of a tool call,
    nothing is retried, as once text was shown.
    """
    turn = turn or Turn(provider=request.provider)
    notice = notice or (lambda text: None)
    if (toolbox is None or not toolbox) and not keep_calls:
        request = replace(request, tools=())
    rendering = False
    try:
        while True:
            renderer.start()
            rendering = True
            await _run_chain(request, registry, renderer, turn, notice, on_event)
            if not turn.calls or (keep_calls and toolbox is None):
                break
            if toolbox is None or request.tool_choice == "none":
                raise ProtocolError(
                    f"the model kept calling tools after its last round "
                    f"({len(turn.rounds)} rounds; [tools] max_rounds in config.toml allows more)",
                    provider=turn.provider,
                )
            text = "".join(turn.pieces)[turn.final_from :]
            if text.strip():  # the paragraph ends here: the next round's text is not in it
                turn.pieces.append("\n\n")
                renderer.feed("\n\n")
            renderer.finish()
            rendering = False
            request = await _tool_round(request, turn, text, toolbox, notice)
    except asyncio.CancelledError:
        _end(turn, "interrupted", "interrupted")
        if rendering:
            renderer.finish(interrupted=True)
        raise
    except ProviderError as exc:
        if isinstance(exc, StreamInterruptedError):
            exc.partial = turn.text
        _end(turn, "interrupted" if turn.began else "error", str(exc))
        if rendering:
            renderer.finish(interrupted=True)
        raise
    except BaseException as exc:
        _end(turn, "interrupted" if turn.began else "error", str(exc) or type(exc).__name__)
        if rendering:
            renderer.finish(interrupted=True)
        raise
    status = _ended_as(turn.finish_reason)
    _end(turn, status, None)
    renderer.finish()
    if status in CUT:
        log.warning("%s: %s", turn.provider, CUT[status])
    log.debug(
        "turn done: %s answered, %d chars in %.2f s (first piece after %s, %d tool rounds)",
        turn.provider,
        len(turn.text),
        turn.duration,
        f"{turn.first_piece_at - turn.started:.2f} s" if turn.first_piece_at else "-",
        len(turn.rounds),
    )
    return turn


async def _tool_round(
    request: TurnRequest,
    turn: Turn,
    text: str,
    toolbox: Toolbox,
    notice: Callable[[str], None],
) -> TurnRequest:
    """Answer the calls the model just made after writing ``text``, keep the round on
    ``turn``, and return the next request: the conversation with the calls and results."""
    calls, turn.calls = turn.calls, []
    results: list[ToolResult] = []
    try:
        for call in calls:
            results.append(await toolbox.run_one(call))
    except asyncio.CancelledError:
        # What ran is kept (a command may have changed things); the rest is said not to.
        results += [ToolResult("not run: the user stopped the answer", True)] * (
            len(calls) - len(results)
        )
        turn.rounds.append(ToolRound(text, tuple(calls), tuple(results)))
        raise
    done = ToolRound(text, tuple(calls), tuple(results))
    turn.rounds.append(done)
    turn.final_from = sum(len(piece) for piece in turn.pieces)
    choice: Literal["auto", "none"] = "auto"
    if len(turn.rounds) >= toolbox.max_rounds:
        choice = "none"
        notice(
            f"the model called tools {len(turn.rounds)} times; it is asked to answer now "
            "([tools] max_rounds in config.toml allows more)"
        )
    return replace(request, messages=(*request.messages, *done.messages()), tool_choice=choice)


async def _run_chain(
    request: TurnRequest,
    registry: Registry,
    renderer: Renderer,
    turn: Turn,
    notice: Callable[[str], None],
    on_event: OnEvent | None,
) -> None:
    chain = [request.provider, *request.fallback]
    if request.tools:  # a fallback that cannot call tools would answer without them, unseen
        chain = [request.provider, *(n for n in request.fallback if _calls_tools(registry, n))]
    shown = len(turn.pieces)  # (text of earlier tool rounds: this round has shown nothing)
    emitted, reasoned = turn.emitted, len(turn.reasoning_pieces)
    failures: list[ProviderError] = []
    for index, name in enumerate(chain):
        # The model and URL were chosen for the first provider; the others use their own.
        # Each provider is built once for the turn: its proxy is settled there.
        provider = registry.create(
            name,
            base_url=request.base_url if index == 0 else None,
            proxy=request.proxy,
            timeout=request.timeout,
        )
        options = _options_for(provider, request, first=index == 0)
        # Picked once per provider (a service without a chosen model is asked for its list);
        # a retry after a failed pick picks again.
        model = request.model if index == 0 else request.fallback_models.get(name)
        turn.model = ""
        attempt = 0
        while True:
            turn.provider = provider.name
            try:
                await _attempt(provider, request, model, options, renderer, turn, on_event)
                if index:
                    log.info("answered by %s", provider.name)
                return
            except ProviderError as exc:
                if exc.provider is None:
                    exc.provider = provider.name
                if len(turn.pieces) > shown or turn.emitted > emitted:
                    raise  # text was shown: never retried silently
                del turn.reasoning_pieces[reasoned:]  # (a failed attempt's thinking)
                delay = backoff(attempt, getattr(exc, "retry_after", None))
                if exc.retryable and attempt < request.retries and delay is not None:
                    attempt += 1
                    model = turn.model or model
                    notice(f"{exc}; retrying in {delay:.1f} s ({attempt}/{request.retries})")
                    await asyncio.sleep(delay)
                    continue
                failures.append(exc)
                if index + 1 < len(chain):
                    notice(f"{exc}; trying {chain[index + 1]}")
                break
    if len(failures) == 1:
        raise failures[0]
    reasons = "; ".join(str(f) for f in failures)
    raise ProviderError(f"every provider failed: {reasons}")


def _calls_tools(registry: Registry, name: str) -> bool:
    try:
        return registry.get(name).capabilities().tools
    except ChatcliError:
        return True  # an unknown name: creating it says so, as without tools


def _options_for(provider: BaseProvider, request: TurnRequest, *, first: bool) -> dict[str, Any]:
    """The options a provider of the chain is sent: for the first, those asked for, one it
    does not take being an error (unless ``loose_options``); for the others, those they take."""
    if first and not request.loose_options:
        return provider.check_options(request.options)
    return _options_taken(provider, request.options)


def _options_taken(provider: BaseProvider, options: Mapping[str, Any]) -> dict[str, Any]:
    """A fallback gets the options it takes; those it does not are left out (said in ``-v``)."""
    taken: dict[str, Any] = {}
    for key, value in options.items():
        try:
            taken.update(provider.check_options({key: value}))
        except UsageError as exc:  # this provider does not take it
            log.info("%s: leaving out -o %s (%s)", provider.name, key, exc)
    return taken


async def _attempt(
    provider: BaseProvider,
    request: TurnRequest,
    model: str | None,
    options: Mapping[str, Any],
    renderer: Renderer,
    turn: Turn,
    on_event: OnEvent | None,
) -> None:
    model = await provider.pick_model(model)
    turn.model = model
    log.debug("turn: provider=%s model=%s messages=%d", provider.name, model, len(request.messages))
    tools = provider.capabilities().tools and bool(request.tools)
    chat = ChatRequest(
        # A provider that cannot call tools, or a request without them (services refuse calls
        # in the history then), gets earlier rounds' calls as the text around them.
        messages=request.messages if tools else without_tools(request.messages),
        model=model,
        temperature=request.temperature,
        options=options,
        stream=request.stream,
        tools=request.tools if tools else (),
        tool_choice=request.tool_choice,
    )
    stream = provider.stream(chat)
    finish: Finish | None = None
    text, thought = _WholeCharacters(), _WholeCharacters()
    calls = ToolCalls()
    answered = False
    try:
        async for event in stream:
            if isinstance(event, TextDelta):
                event = TextDelta(text(event.text))
            elif isinstance(event, ReasoningDelta):
                event = ReasoningDelta(thought(event.text))
            if on_event is not None:
                if isinstance(event, ToolCallDelta) or (
                    isinstance(event, ReasoningDelta) and event.text
                ):
                    turn.emitted += 1
                pending = on_event(event)
                if pending is not None:
                    await pending
            if isinstance(event, TextDelta):
                if not event.text:
                    continue
                if turn.first_piece_at is None:
                    turn.first_piece_at = time.monotonic()
                answered = answered or bool(event.text.strip())
                turn.pieces.append(event.text)
                renderer.feed(event.text)
            elif isinstance(event, ReasoningDelta):
                turn.reasoning_pieces.append(event.text)
                renderer.think(event.text)
            elif isinstance(event, Usage):
                turn.usage = event
            elif isinstance(event, Finish):
                finish = event
            elif isinstance(event, ToolCallDelta):
                if not chat.tools:
                    log.debug("%s: a tool call (not run: no tools are offered)", provider.name)
                    continue
                try:
                    calls.feed(event)
                except ValueError as exc:
                    raise ProtocolError(str(exc), provider=provider.name) from None
    finally:
        await _close(stream)
    if text.held:  # the stream ended on half a character
        turn.pieces.append("\ufffd")
        renderer.feed("\ufffd")
    if finish is None:
        raise StreamInterruptedError(
            "the answer ended without saying it was finished; it may be incomplete",
            provider=provider.name,
        )
    turn.finish_reason = finish.reason
    if calls and finish.reason in ("tool_calls", "stop"):  # (some servers say stop)
        try:
            turn.calls = calls.calls()
        except ValueError as exc:
            raise ProtocolError(str(exc), provider=provider.name) from None
        turn.finish_reason = "tool_calls"
        return
    if not answered:
        source = "the model" if provider.kind == "offline" else "the service"
        raise ProtocolError(f"{source} sent an empty answer", provider=provider.name)


_SURROGATE: Final = re.compile("[\ud800-\udfff]")


class _WholeCharacters:
    """Pieces of text as whole characters. A server's JSON may escape a character outside the
    Basic Multilingual Plane as a UTF-16 pair, and split the pair across two stream events:
    the halves are joined; a half with no partner becomes U+FFFD (no file, database or terminal
    can hold one)."""

    def __init__(self) -> None:
        self.held = ""

    def __call__(self, piece: str) -> str:
        piece, self.held = self.held + piece, ""
        if piece and "\ud800" <= piece[-1] <= "\udbff":  # a first half: its partner may follow
            piece, self.held = piece[:-1], piece[-1]
        if _SURROGATE.search(piece):
            piece = piece.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return piece


def preflight(request: TurnRequest, registry: Registry) -> None:
    """Raise what would stop every provider of the chain before a request leaves (no key, a
    missing runtime, a model it cannot use): the first one's error, when none is ready.
    An option the first provider does not take is an error at once, as in :func:`run_turn`."""
    chain = [request.provider, *request.fallback]
    _refuse_images(request, registry, chain)
    if request.tools and not _calls_tools(registry, request.provider):
        raise UsageError(
            f"{registry.get(request.provider).name} cannot call tools (--tool, --mcp); "
            "an OpenAI-compatible provider or anthropic can"
        )
    first: ChatcliError | None = None
    for index, name in enumerate(chain):
        try:
            provider = registry.create(
                name,
                base_url=request.base_url if index == 0 else None,
                proxy=request.proxy,
                timeout=request.timeout,
            )
        except ChatcliError as exc:
            first = first or exc
            continue
        options = _options_for(provider, request, first=index == 0)  # (raised: no fallback)
        try:
            provider.preflight()
            if index == 0 and request.model:
                provider.check_model(request.model)
            provider.check_fits(request.messages, options, request.model if index == 0 else None)
            return
        except ChatcliError as exc:
            first = first or exc
    if first is not None:
        raise first


def _refuse_images(request: TurnRequest, registry: Registry, chain: list[str]) -> None:
    """Images go to no provider of the chain that takes none (a fallback would drop them
    unseen), nor over a provider's limit: refused before anything is sent or stored."""
    if not any(message.images for message in request.messages):
        return
    from chatcli.images import check_messages

    for name in chain:
        try:
            cls = registry.get(name)
        except ChatcliError:
            continue  # an unknown name: the loop below says so
        check_messages(cls, request.messages)


def _ended_as(reason: FinishReason | None) -> TurnStatus:
    """The status of an answer that ended with ``reason`` (none given: a normal stop)."""
    if reason in ("length", "context", "content_filter", "repetition"):
        return reason
    return "complete"


def _end(turn: Turn, status: TurnStatus, error: str | None) -> None:
    turn.status = status
    turn.error = error
    turn.ended = time.monotonic()


async def _close(stream: Any) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
