"""``chatcli serve --save``: each conversation kept as a session, recognised again when a
request goes on from it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from chatcli.core import (
    ChatMessage,
    without_tools,
)
from chatcli.errors import (
    UsageError,
)
from chatcli.turn import Turn

if TYPE_CHECKING:
    from chatcli.store import Stores

log = logging.getLogger("chatcli.server")

#: Conversations ``--save`` remembers, to add to their sessions.
MAX_THREADS: Final = 10_000


@dataclass(slots=True)
class _Thread:
    """A conversation recorded by ``--save``: its session and the id of its last message."""

    session_id: str
    head: int


class Recorder:
    """Keeps exchanges in the sessions database, on a thread of its own (SQLite blocks), one at
    a time; remembers the conversations it kept (up to :data:`MAX_THREADS`) to add to them."""

    def __init__(self, stores: Stores) -> None:
        self.stores = stores
        self._threads: dict[str, _Thread] = {}
        self._saver = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="chatcli-save")

    async def save(self, messages: Sequence[ChatMessage], turn: Turn) -> None:
        """:meth:`record` off the event loop; it finishes even when the caller is cancelled."""
        saving = asyncio.get_running_loop().run_in_executor(
            self._saver, self.record, messages, turn
        )
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(saving)

    def close(self) -> None:
        """Waits for what is being saved."""
        self._saver.shutdown(wait=True)

    def record(self, messages: Sequence[ChatMessage], turn: Turn) -> None:
        """Keep the exchange in a session (``--save``; run on the saver thread, one at a time).

        The conversation is its user messages and the assistant's text (a tool round's calls
        and results are the client's business; an answer's text around them is one answer).
        A request that goes on from an exchange kept before (the same messages, the same
        system prompt) adds to that session: after that answer, so that asking again from an
        earlier point (a retry, an edited question) makes a branch, as ``/retry`` does. Else
        the messages so far start a new session."""
        from chatcli.errors import StorageError

        if not turn.text.strip():
            return  # nothing answered (a failure before any text, or tool calls only)
        view = _conversation(messages)
        asked = [index for index, (role, _) in enumerate(view) if role == "user"]
        if not asked:
            return
        prior, question = view[: asked[-1]], view[asked[-1]][1]
        # Text the assistant wrote in this answer's earlier tool rounds, then the last.
        answer = "\n\n".join([*(text for _, text in view[asked[-1] + 1 :]), turn.text])
        system = next((m.content for m in messages if m.role == "system"), None)
        sessions = self.stores.sessions
        try:
            key = _digest(system, prior)
            thread = self._threads.pop(key, None)
            if thread is not None and sessions.exists(thread.session_id):
                self._threads[key] = thread  # (kept, the most recent: it may be asked again)
                session_id, after = thread.session_id, thread.head
            else:
                session = sessions.create(system=system, provider=turn.provider, model=turn.model)
                session_id, after = session.id, None
                last_question: int | None = None
                for role, text in prior:
                    if role == "user":
                        after = last_question = sessions.add_message(session_id, "user", text)
                    else:
                        after = sessions.add_message(
                            session_id, "assistant", text, reply_to=last_question
                        )
            question_id = sessions.add_message(
                session_id, "user", question, after=after if after is not None else "head"
            )
            answer_id = sessions.add_message(
                session_id, "assistant", answer, reply_to=question_id, **turn.stored()
            )
            answered = [*prior, ("user", question), ("assistant", answer)]
            self._threads[_digest(system, answered)] = _Thread(session_id, answer_id)
            while len(self._threads) > MAX_THREADS:  # (the least recently used go first)
                self._threads.pop(next(iter(self._threads)))
        except (StorageError, UsageError) as exc:
            log.warning("could not save the exchange: %s", exc)


def _digest(system: str | None, conversation: Sequence[tuple[str, str]]) -> str:
    return hashlib.sha256(json.dumps([system, conversation]).encode()).hexdigest()


def _conversation(messages: Sequence[ChatMessage]) -> list[tuple[str, str]]:
    """A request's messages as ``--save`` keeps them: (role, text) of the user's and of the
    assistant's text, an answer's text around its tool rounds as one (:func:`without_tools`,
    as a provider without tools is sent it)."""
    return [
        (message.role, _stored_text(message))
        for message in without_tools(messages)
        if message.role == "user" or (message.role == "assistant" and message.content.strip())
    ]


def _stored_text(message: ChatMessage) -> str:
    from chatcli.images import with_notes

    return with_notes(message.content, message.images) if message.images else message.content
