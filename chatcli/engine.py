"""One conversation turn: resolve the provider, stream its answer into a renderer, return it.

``ask`` and the REPL both call :func:`run_turn`. The engine owns cancellation: when the task is
cancelled (Ctrl-C) or the stream fails, the renderer is finished cleanly and the partial answer is
kept on the :class:`Turn`, whose ``status`` then says what happened. The caller decides what to
store and which exit code to use.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from chatcli.errors import ProtocolError, ProviderError, StreamInterruptedError
from chatcli.providers import Registry
from chatcli.providers.base import CORE_KWARGS, Message
from chatcli.render import Renderer

log = logging.getLogger("chatcli.engine")

TurnStatus = Literal["pending", "complete", "interrupted", "error"]


@dataclass(kw_only=True, slots=True)
class TurnRequest:
    """Everything needed to ask one provider for one answer."""

    provider: str
    messages: list[Message]
    model: str | None = None
    temperature: float | None = None
    #: ``-o KEY VALUE`` pairs, passed to the provider as keyword arguments.
    options: dict[str, Any] = field(default_factory=dict)
    stream: bool = True
    proxy: str | None = None
    base_url: str | None = None
    timeout: float | None = None
    #: Where web providers keep cookies and tokens (``None``: the default location).
    store: Any = None


@dataclass(kw_only=True, slots=True)
class Turn:
    """The answer as it stands: filled in while streaming, final when :func:`run_turn` ends."""

    provider: str
    model: str = ""
    #: The answer's pieces as they arrived (joined on demand: appending to one string would
    #: copy the whole answer on every piece).
    pieces: list[str] = field(default_factory=list)
    status: TurnStatus = "pending"
    error: str | None = None
    started: float = field(default_factory=time.monotonic)
    first_piece_at: float | None = None
    ended: float | None = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def duration(self) -> float:
        return (self.ended or time.monotonic()) - self.started


async def run_turn(
    request: TurnRequest, registry: Registry, renderer: Renderer, *, turn: Turn | None = None
) -> Turn:
    """Run one turn. Raises the provider's error (or ``CancelledError``) after recording it.

    Pass ``turn`` to keep a handle on the partial answer from outside (e.g. for Ctrl-C).
    """
    provider = registry.get(request.provider)
    turn = turn or Turn(provider=provider.name)
    turn.provider = provider.name
    # Options never override what the request fixes (the CLI refuses such keys up front).
    kwargs: dict[str, Any] = {k: v for k, v in request.options.items() if k not in CORE_KWARGS}
    kwargs.update(stream=request.stream, timeout=request.timeout)
    if request.base_url:
        kwargs["base_url"] = request.base_url
    if request.temperature is not None:
        kwargs["temperature"] = request.temperature
    if request.store is not None:
        kwargs["store"] = request.store
    renderer.start()
    try:
        model = await provider.pick_model(
            request.model, proxy=request.proxy, base_url=request.base_url, timeout=request.timeout
        )
        turn.model = model
        log.debug(
            "turn: provider=%s model=%s messages=%d", provider.name, model, len(request.messages)
        )
        stream = provider.stream(model, request.messages, proxy=request.proxy, **kwargs)
        try:
            async for piece in stream:
                if not piece:
                    continue
                if turn.first_piece_at is None:
                    turn.first_piece_at = time.monotonic()
                turn.pieces.append(piece)
                renderer.feed(piece)
        finally:
            await _close(stream)
        if not any(piece.strip() for piece in turn.pieces):
            raise ProtocolError("the service sent an empty answer", provider=provider.name)
    except asyncio.CancelledError:
        _end(turn, "interrupted", "interrupted")
        renderer.finish(interrupted=True)
        raise
    except ProviderError as exc:
        if exc.provider is None:
            exc.provider = provider.name
        if isinstance(exc, StreamInterruptedError):
            exc.partial = turn.text
        _end(turn, "interrupted" if turn.pieces else "error", str(exc))
        renderer.finish(interrupted=True)
        raise
    except BaseException as exc:
        _end(turn, "interrupted" if turn.pieces else "error", str(exc) or type(exc).__name__)
        renderer.finish(interrupted=True)
        raise
    _end(turn, "complete", None)
    renderer.finish()
    log.debug(
        "turn done: %d chars in %.2f s (first piece after %s)",
        len(turn.text),
        turn.duration,
        f"{turn.first_piece_at - turn.started:.2f} s" if turn.first_piece_at else "-",
    )
    return turn


def _end(turn: Turn, status: TurnStatus, error: str | None) -> None:
    turn.status = status
    turn.error = error
    turn.ended = time.monotonic()


async def _close(stream: Any) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
