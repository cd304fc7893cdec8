"""chatcli from Python: a chat with history and sessions, no terminal involved.

::

    import chatcli

    chat = chatcli.Chat(provider="ollama", model="llama3.2", session="work")
    answer = chat.ask("What is a monad?")      # an Answer: text, reasoning, usage, ...
    print(answer.text, answer.finish_reason)

    async for event in chat.stream("And a functor?"):   # in async code
        if isinstance(event, chatcli.TextDelta):
            print(event.text, end="")

    for session in chatcli.list_sessions():
        print(session.id, session.label)

Settings come as on the command line, lowest first: built-in defaults < config.toml <
environment (``CHATCLI_PROVIDER``, keys, ``*_PROXY``, ...) < the arguments given here. The
environment is read once, when a :class:`Chat` is made (pass ``env=`` to use another);
``home=`` puts config, data and cache under one directory, like ``CHATCLI_HOME``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatcli.chat import conversation_from
from chatcli.config import Paths, Settings, environment, load_settings
from chatcli.core import ChatOptions, Event, FinishReason, Message, Usage
from chatcli.render import NullRenderer
from chatcli.store import Session, StoredMessage, Stores
from chatcli.turn import Turn, TurnStatus

log = logging.getLogger("chatcli.api")


@dataclass(frozen=True, slots=True)
class Answer:
    """One answer and how it ended."""

    text: str
    #: What the model thought before answering ("" when it showed nothing).
    reasoning: str
    usage: Usage | None
    #: Why it ended, as the provider said: ``stop``, ``length``, ...; ``None`` if it did not.
    finish_reason: FinishReason | None
    #: ``complete``, ``interrupted`` (cut off, partial text kept) or ``error``.
    status: TurnStatus
    provider: str
    model: str
    #: The id of the session it was saved in; ``None`` when not saved.
    session: str | None

    def __str__(self) -> str:
        return self.text


def _settle(home: str | Path | None, env: Mapping[str, str] | None) -> tuple[Settings, Stores]:
    snapshot = dict(environment() if env is None else env)
    if home is not None:
        snapshot["CHATCLI_HOME"] = str(home)
    paths = Paths.from_env(snapshot)
    settings = load_settings(paths, snapshot)
    return settings, Stores.for_settings(paths, settings)


class Chat:
    """A conversation with a provider, saved as a session unless ``save=False``.

    ``session`` continues (or starts) the session with that name, id or id prefix;
    ``continue_last`` continues the most recent one. ``options`` are the provider's own
    (what ``-o`` takes); one it does not take is a :class:`~chatcli.errors.UsageError` now.
    Failures raise :class:`~chatcli.errors.ProviderError`; the partial answer of a turn that
    broke off stays in the history and in :attr:`last_answer`.
    """

    def __init__(
        self,
        provider: str | None = None,
        model: str | None = None,
        *,
        session: str | None = None,
        continue_last: bool = False,
        system: str | None = None,
        temperature: float | None = None,
        options: Mapping[str, Any] | None = None,
        base_url: str | None = None,
        proxy: str | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        stream: bool = True,
        save: bool = True,
        home: str | Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        settings, stores = _settle(home, env)
        chosen = ChatOptions(
            provider=provider,
            model=model,
            system=system,
            temperature=temperature,
            options=dict(options or {}),
            stream=stream,
            proxy=proxy,
            base_url=base_url,
            timeout=timeout,
            session=session,
            continue_last=continue_last,
            save=save,
            retries=retries,
        )
        self._conversation = conversation_from(settings, stores, chosen, notice=log.warning)
        #: The latest answer (partial, if the turn broke off), or ``None`` before any.
        self.last_answer: Answer | None = None

    @property
    def provider(self) -> str:
        return self._conversation.provider

    @property
    def model(self) -> str | None:
        """The model asked for; after an answer, the one that answered."""
        return self._conversation.model or self._conversation.last_model

    @property
    def session(self) -> Session | None:
        """The session it is saved in, once the first message created it."""
        return self._conversation.session if self._conversation.save else None

    @property
    def history(self) -> list[Message]:
        """The conversation so far, oldest first (the system prompt not included)."""
        return self._conversation.history

    def ask(self, text: str) -> Answer:
        """Ask and wait for the whole answer (from code that is not already async)."""
        return asyncio.run(self.ask_async(text))

    async def ask_async(self, text: str) -> Answer:
        """Ask and wait for the whole answer."""
        try:
            await self._conversation.send(text, NullRenderer())
        finally:
            self._remember()
        assert self.last_answer is not None
        return self.last_answer

    async def stream(self, text: str) -> AsyncIterator[Event]:
        """Ask; yield the answer's events as they arrive. Stopping early (``break``) stops
        the answer, which is kept as interrupted."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        task = asyncio.ensure_future(
            self._conversation.send(text, NullRenderer(), on_event=queue.put_nowait)
        )
        task.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            while (event := await queue.get()) is not None:
                yield event
            await task  # raises what ended it
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._remember()

    def _remember(self) -> None:
        turn: Turn | None = self._conversation.last_turn
        if turn is None:
            return
        session = self.session
        self.last_answer = Answer(
            text=turn.text,
            reasoning=turn.reasoning,
            usage=turn.usage,
            finish_reason=turn.finish_reason,
            status=turn.status,
            provider=turn.provider,
            model=turn.model,
            session=session.id if session is not None else None,
        )


def list_sessions(
    limit: int = 20, *, home: str | Path | None = None, env: Mapping[str, str] | None = None
) -> list[Session]:
    """The most recently used sessions, newest first."""
    _, stores = _settle(home, env)
    return stores.sessions.recent(limit)


def load_session(
    ref: str, *, home: str | Path | None = None, env: Mapping[str, str] | None = None
) -> tuple[Session, list[StoredMessage]]:
    """A session (by name, id or unique id prefix) and its messages, oldest first."""
    _, stores = _settle(home, env)
    session = stores.sessions.find(ref)
    return session, stores.sessions.messages(session.id)
