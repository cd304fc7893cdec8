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
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from chatcli.errors import ProtocolError, ProviderError, StreamInterruptedError, UsageError
from chatcli.providers import Registry
from chatcli.providers.base import CORE_KWARGS, Message
from chatcli.render import Renderer
from chatcli.store.sessions import Session, SessionStore, Status

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


class Conversation:
    """A chat as it goes: its history, where it is kept, and the provider that answers.

    ``ask`` and the REPL both talk through :meth:`send`. When saving, the user message is
    committed before the request and the answer when it ends; an answer cut short (Ctrl-C,
    timeout, dropped stream) is stored with what arrived, marked ``interrupted``. With
    ``save=False`` (``--no-save``) a session may still be read for its history, but nothing is
    written. The session is created on the first message, so an abandoned REPL leaves no empty
    session behind.
    """

    def __init__(
        self,
        registry: Registry,
        defaults: TurnRequest,
        *,
        store: SessionStore | None = None,
        save: bool = True,
        session: Session | None = None,
        system: str | None = None,
        name: str | None = None,
    ) -> None:
        self.registry = registry
        self.defaults = defaults
        self.store = store
        self.save = save and store is not None
        self.session = session
        self.system = system
        #: The name to give the session when it is created (``-S NAME`` for a new one).
        self.pending_name = name
        self.history: list[Message] = []
        #: The model that answered last (the provider may pick one when none was chosen).
        self.last_model: str | None = None
        #: Database ids of the messages in :attr:`history`, position for position (``None``
        #: where nothing was stored).
        self._ids: list[int | None] = []
        if session is not None and store is not None:
            self._load(session)

    # -- state ------------------------------------------------------------------------------

    @property
    def provider(self) -> str:
        return self.defaults.provider

    @property
    def model(self) -> str | None:
        return self.defaults.model

    def use(self, *, provider: str | None = None, model: str | None = None) -> None:
        """Switch provider and/or model for the next turns (a new provider drops the model)."""
        if provider is not None:
            self.registry.get(provider)  # an unknown name is an error now, not at send
            self.defaults = replace(self.defaults, provider=provider, model=model)
        elif model is not None:
            self.defaults = replace(self.defaults, model=model or None)

    def _load(self, session: Session) -> None:
        assert self.store is not None
        self.session = session
        self.system = session.system
        self.history = []
        self._ids = []
        for message in self.store.messages(session.id):
            self.history.append({"role": message.role, "content": message.content})
            self._ids.append(message.id)

    def load(self, session: Session) -> None:
        """Continue ``session`` (history and system prompt)."""
        if self.store is None:
            raise UsageError("sessions are not being saved (--no-save)")
        self._load(session)
        self.pending_name = None

    def new(self) -> None:
        """Start afresh; the next message opens a new session."""
        self.session = None
        self.history = []
        self._ids = []
        self.pending_name = None

    def set_system(self, text: str | None) -> None:
        self.system = text or None
        if self.save and self.store is not None and self.session is not None:
            self.store.set_system(self.session.id, self.system)

    def rename(self, name: str) -> Session:
        if self.store is None or not self.save:
            raise UsageError("sessions are not being saved (--no-save)")
        if self.session is None:
            self.pending_name = name.strip() or None
            raise UsageError("nothing to rename yet: the session starts with your first message")
        self.session = self.store.rename(self.session.id, name)
        return self.session

    def messages(self, user_text: str | None = None) -> list[Message]:
        """What the provider receives: system prompt, history, and the new message."""
        messages: list[Message] = []
        if self.system:
            messages.append({"role": "system", "content": self.system})
        messages.extend(self.history)
        if user_text is not None:
            messages.append({"role": "user", "content": user_text})
        return messages

    # -- turns ------------------------------------------------------------------------------

    async def send(self, text: str, renderer: Renderer, *, turn: Turn | None = None) -> Turn:
        """Ask ``text``; the answer streams into ``renderer`` and is kept whatever happens."""
        request = replace(self.defaults, messages=self.messages(text))
        user_id = self._store_message(
            "user", text, status="complete", provider=self.provider, model=self.model
        )
        self.history.append({"role": "user", "content": text})
        self._ids.append(user_id)
        return await self._answer(request, renderer, turn)

    async def retry(self, renderer: Renderer, *, turn: Turn | None = None) -> Turn:
        """Ask the last question again, replacing its answer."""
        if not self.history:
            raise UsageError("nothing to retry yet")
        if self.history[-1]["role"] == "assistant":
            self._drop(1)
        if not self.history or self.history[-1]["role"] != "user":
            raise UsageError("nothing to retry: the last message is not a question")
        request = replace(self.defaults, messages=self.messages())
        return await self._answer(request, renderer, turn)

    def undo(self) -> int:
        """Forget the last exchange (the question and its answer, if any); returns how many."""
        if not self.history:
            raise UsageError("nothing to undo")
        count = 1
        if self.history[-1]["role"] == "assistant" and len(self.history) >= 2:
            count = 2
        self._drop(count)
        return count

    def _drop(self, count: int) -> None:
        ids = [i for i in self._ids[-count:] if i is not None]
        del self.history[-count:]
        del self._ids[-count:]
        if ids and self.save and self.store is not None:
            self.store.delete_messages(ids)

    async def _answer(self, request: TurnRequest, renderer: Renderer, turn: Turn | None) -> Turn:
        turn = turn or Turn(provider=request.provider)
        try:
            await run_turn(request, self.registry, renderer, turn=turn)
        finally:
            if turn.model:
                self.last_model = turn.model
            # Runs on success, on errors and on cancellation alike: nothing shown is lost.
            if turn.pieces:
                text = turn.text
                status: Status = "complete" if turn.status == "complete" else "interrupted"
                answer_id = self._store_message(
                    "assistant",
                    text,
                    status=status,
                    provider=turn.provider,
                    model=turn.model or None,
                    duration=turn.duration,
                    error=turn.error,
                )
                self.history.append({"role": "assistant", "content": text})
                self._ids.append(answer_id)
        return turn

    def _store_message(
        self,
        role: Literal["user", "assistant"],
        content: str,
        *,
        status: Status,
        provider: str | None = None,
        model: str | None = None,
        duration: float | None = None,
        error: str | None = None,
    ) -> int | None:
        if self.store is None or not self.save:
            return None
        if self.session is None:
            self.session = self.store.create(
                name=self.pending_name,
                system=self.system,
                provider=self.defaults.provider,
                model=self.defaults.model,
            )
            self.pending_name = None
        message_id = self.store.add_message(
            self.session.id,
            role,
            content,
            provider=provider,
            model=model,
            status=status,
            duration=duration,
            error=error,
        )
        if not self.session.title:
            self.session = self.store.get(self.session.id)  # the first message gave it a title
        return message_id
