"""One conversation turn: resolve the provider, stream its answer into a renderer, return it.

``ask`` and the REPL both call :func:`run_turn`. The engine owns cancellation: when the task is
cancelled (Ctrl-C) or the stream fails, the renderer is finished cleanly and the partial answer is
kept on the :class:`Turn`, whose ``status`` then says what happened. The caller decides what to
store and which exit code to use.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

from chatcli.errors import (
    ProtocolError,
    ProviderError,
    StorageError,
    StreamInterruptedError,
    UsageError,
)
from chatcli.providers import Registry
from chatcli.providers.base import CORE_KWARGS, BaseProvider, Message
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
    #: How often a failure before any text is retried (per provider).
    retries: int = 2
    #: Providers to try, in order, when this one fails before any text.
    fallback: list[str] = field(default_factory=list)


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
) -> Turn:
    """Run one turn. Raises the provider's error (or ``CancelledError``) after recording it.

    Failures before any text are retried (``request.retries`` times, with backoff, honouring
    ``Retry-After``) when they are worth it (connection errors, timeouts, 408, 409, 429, 5xx),
    then the next provider of ``request.fallback`` is tried. Once text has been shown nothing
    is retried: the partial answer stays and the turn is marked interrupted. ``notice`` gets a
    line for each retry and fallback (the CLI prints it on stderr).

    Pass ``turn`` to keep a handle on the partial answer from outside (e.g. for Ctrl-C).
    """
    turn = turn or Turn(provider=request.provider)
    renderer.start()
    try:
        await _run_chain(request, registry, renderer, turn, notice or (lambda text: None))
    except asyncio.CancelledError:
        _end(turn, "interrupted", "interrupted")
        renderer.finish(interrupted=True)
        raise
    except ProviderError as exc:
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
        "turn done: %s answered, %d chars in %.2f s (first piece after %s)",
        turn.provider,
        len(turn.text),
        turn.duration,
        f"{turn.first_piece_at - turn.started:.2f} s" if turn.first_piece_at else "-",
    )
    return turn


async def _run_chain(
    request: TurnRequest,
    registry: Registry,
    renderer: Renderer,
    turn: Turn,
    notice: Callable[[str], None],
) -> None:
    chain = [request.provider, *request.fallback]
    failures: list[ProviderError] = []
    for index, name in enumerate(chain):
        provider = registry.get(name)
        # The model, URL and proxy were chosen for the first provider; the others use their own.
        attempt_request = (
            request
            if index == 0
            else replace(request, provider=provider.name, model=None, base_url=None, proxy=None)
        )
        attempt = 0
        while True:
            turn.provider = provider.name
            try:
                await _attempt(provider, attempt_request, renderer, turn)
                if index:
                    log.info("answered by %s", provider.name)
                return
            except ProviderError as exc:
                if exc.provider is None:
                    exc.provider = provider.name
                if turn.pieces:
                    raise  # text was shown: never retried silently
                delay = backoff(attempt, getattr(exc, "retry_after", None))
                if exc.retryable and attempt < request.retries and delay is not None:
                    attempt += 1
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


async def _attempt(
    provider: type[BaseProvider], request: TurnRequest, renderer: Renderer, turn: Turn
) -> None:
    # Options never override what the request fixes (the CLI refuses such keys up front).
    kwargs: dict[str, Any] = {k: v for k, v in request.options.items() if k not in CORE_KWARGS}
    kwargs.update(stream=request.stream, timeout=request.timeout)
    if request.base_url:
        kwargs["base_url"] = request.base_url
    if request.temperature is not None:
        kwargs["temperature"] = request.temperature
    if request.store is not None:
        kwargs["store"] = request.store
    model = await provider.pick_model(
        request.model, proxy=request.proxy, base_url=request.base_url, timeout=request.timeout
    )
    turn.model = model
    log.debug("turn: provider=%s model=%s messages=%d", provider.name, model, len(request.messages))
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
        source = "the model" if provider.kind == "offline" else "the service"
        raise ProtocolError(f"{source} sent an empty answer", provider=provider.name)


def _end(turn: Turn, status: TurnStatus, error: str | None) -> None:
    turn.status = status
    turn.error = error
    turn.ended = time.monotonic()


async def _close(stream: Any) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


@dataclass(slots=True)
class _Entry:
    """A message of the conversation in memory, and its database row once it has one."""

    role: Literal["user", "assistant"]
    content: str
    provider: str | None = None
    model: str | None = None
    status: Status = "complete"
    duration: float | None = None
    error: str | None = None
    #: The database id; ``None`` while unsaved (no store, ``--no-save``, or a failed write).
    id: int | None = None


class Conversation:
    """A chat as it goes: its history, where it is kept, and the provider that answers.

    ``ask`` and the REPL both talk through :meth:`send`. When saving, the user message is
    committed before the request and the answer when it ends; an answer cut short (Ctrl-C,
    timeout, dropped stream) is stored with what arrived, marked ``interrupted``. With
    ``save=False`` (``--no-save``) a session may still be read for its history, but nothing is
    written. The session is created on the first message, so an abandoned REPL leaves no empty
    session behind.

    Nothing shown is ever dropped from memory: a message that cannot be written (the database
    locked too long, the session deleted by another process) stays in the history, unsaved,
    and is written with the next message that can be.
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
        proxy_for: Callable[[str], str | None] | None = None,
    ) -> None:
        self.registry = registry
        self.defaults = defaults
        self.store = store
        self.save = save and store is not None
        self.session = session
        self.system = system
        #: The name to give the session when it is created (``-S NAME`` for a new one).
        self.pending_name = name
        #: Chooses the proxy for a provider's root URL when the provider changes.
        self.proxy_for = proxy_for
        #: Where lines about retries and fallbacks go (the CLI: stderr).
        self.notice: Callable[[str], None] | None = None
        self._entries: list[_Entry] = []
        #: The model that answered last (the provider may pick one when none was chosen).
        self.last_model: str | None = None
        if session is not None and store is not None:
            self._load(session)

    # -- state ------------------------------------------------------------------------------

    @property
    def provider(self) -> str:
        return self.defaults.provider

    @property
    def model(self) -> str | None:
        return self.defaults.model

    @property
    def history(self) -> list[Message]:
        return [{"role": e.role, "content": e.content} for e in self._entries]

    @property
    def unsaved(self) -> int:
        """How many messages are waiting to be written."""
        return sum(1 for e in self._entries if e.id is None) if self.save else 0

    def use(self, *, provider: str | None = None, model: str | None = None) -> None:
        """Switch provider and/or model for the next turns.

        A new provider starts from its own URL and model: the old ``--base-url`` (and the
        proxy chosen for it) would send the new provider's key to the old host.
        """
        if provider is not None and self.registry.get(provider).name == self.provider:
            provider = None  # the same provider: keep its URL; only the model may change
        if model:  # a model the provider surely cannot use is refused now, not at send
            store = self.defaults.store
            self.registry.get(provider or self.provider).check_model(
                model, data_dir=getattr(store, "data_dir", None)
            )
        if provider is not None:
            cls = self.registry.get(provider)  # an unknown name is an error now, not at send
            proxy = self.proxy_for(cls.root_url(None)) if self.proxy_for else None
            self.defaults = replace(
                self.defaults, provider=cls.name, model=model or None, base_url=None, proxy=proxy
            )
            self.last_model = None  # the old provider's choice says nothing of the new one
        elif model is not None:
            self.defaults = replace(self.defaults, model=model or None)

    def _load(self, session: Session) -> None:
        assert self.store is not None
        self.session = session
        self.system = session.system
        self._entries = [
            _Entry(
                m.role,  # type: ignore[arg-type]
                m.content,
                provider=m.provider,
                model=m.model,
                status=m.status,  # type: ignore[arg-type]
                duration=m.duration,
                error=m.error,
                id=m.id,
            )
            for m in self.store.messages(session.id)
        ]

    def load(self, session: Session) -> None:
        """Continue ``session`` (history and system prompt)."""
        if self.store is None:
            raise UsageError("sessions are not being saved (--no-save)")
        self._load(session)
        self.pending_name = None

    def new(self) -> None:
        """Start afresh; the next message opens a new session."""
        self.session = None
        self._entries = []
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
        self._entries.append(_Entry("user", text, provider=self.provider, model=self.model))
        self._save_pending()
        return await self._answer(request, renderer, turn)

    async def retry(self, renderer: Renderer, *, turn: Turn | None = None) -> Turn:
        """Ask the last question again. Its old answer goes only once a new one arrives."""
        if not self._entries:
            raise UsageError("nothing to retry yet")
        old: _Entry | None = None
        if self._entries[-1].role == "assistant":
            old = self._entries.pop()
        if not self._entries or self._entries[-1].role != "user":
            if old is not None:
                self._entries.append(old)
            raise UsageError("nothing to retry: the last message is not a question")
        request = replace(self.defaults, messages=self.messages())
        before = len(self._entries)
        try:
            turn = await self._answer(request, renderer, turn)
        finally:
            answered = len(self._entries) > before
            if old is not None and not answered:
                self._entries.append(old)  # nothing new came: the old answer stays
            elif old is not None and old.id is not None and self.store is not None:
                self._forget([old.id])
        return turn

    def undo(self) -> int:
        """Forget the last exchange (the question and its answer, if any); returns how many."""
        if not self._entries:
            raise UsageError("nothing to undo")
        count = 2 if self._entries[-1].role == "assistant" and len(self._entries) >= 2 else 1
        dropped, self._entries = self._entries[-count:], self._entries[:-count]
        self._forget([e.id for e in dropped if e.id is not None])
        return count

    def _forget(self, ids: list[int]) -> None:
        if ids and self.save and self.store is not None:
            self.store.delete_messages(ids)

    async def _answer(self, request: TurnRequest, renderer: Renderer, turn: Turn | None) -> Turn:
        turn = turn or Turn(provider=request.provider)
        try:
            await run_turn(request, self.registry, renderer, turn=turn, notice=self.notice)
        finally:
            # Runs on success, on errors and on cancellation alike: nothing shown is lost.
            if turn.model:
                self.last_model = turn.model
            if turn.pieces:
                self._entries.append(
                    _Entry(
                        "assistant",
                        turn.text,
                        provider=turn.provider,
                        model=turn.model or None,
                        status="complete" if turn.status == "complete" else "interrupted",
                        duration=turn.duration,
                        error=turn.error,
                    )
                )
                self._save_pending()
        return turn

    def _save_pending(self) -> None:
        """Write every unsaved message, oldest first; on failure keep them for next time."""
        if not self.save or self.store is None:
            return
        if all(e.id is not None for e in self._entries):
            return
        try:
            self._ensure_session()  # may mark everything unsaved (a deleted session)
            assert self.session is not None
            for entry in [e for e in self._entries if e.id is None]:
                entry.id = self.store.add_message(
                    self.session.id,
                    entry.role,
                    entry.content,
                    provider=entry.provider,
                    model=entry.model,
                    status=entry.status,
                    duration=entry.duration,
                    error=entry.error,
                )
        except StorageError as exc:
            log.warning(
                "could not save %d message(s) (%s); this chat keeps them and saves them with "
                "its next message if it can",
                sum(1 for e in self._entries if e.id is None),
                exc,
            )
            return
        if self.session is not None and not self.session.title:
            self.session = self.store.get(self.session.id)  # the first message gave it a title

    def _ensure_session(self) -> None:
        assert self.store is not None
        if self.session is not None and not self.store.exists(self.session.id):
            # Deleted by another process while in use: keep talking, into a new session that
            # holds the whole conversation so far.
            log.warning("session %s was deleted elsewhere; saving into a new one", self.session.id)
            self.pending_name = self.session.name
            self.session = None
            for entry in self._entries:
                entry.id = None
        if self.session is None:
            self.session = self.store.create(
                name=self.pending_name,
                system=self.system,
                provider=self.defaults.provider,
                model=self.defaults.model,
                reuse_name=True,  # another process may have just created it (ask -S NEW)
            )
            self.pending_name = None
