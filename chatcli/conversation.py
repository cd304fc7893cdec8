"""A conversation: its history, where it is kept, and who answers it.

``ask``, the REPL and :class:`chatcli.Chat` talk through :class:`Conversation`; each question
becomes one turn (:mod:`chatcli.turn`). Persistence follows the session store's rules: the
question is committed before the request and the answer when it ends, whatever ends it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from chatcli.core import ChatMessage, ImagePart, Message, ToolSpec
from chatcli.errors import ChatcliError, StorageError, UsageError
from chatcli.files import Item
from chatcli.providers import Registry
from chatcli.render import Renderer
from chatcli.store.sessions import (
    Session,
    SessionStore,
    Status,
    StoredMessage,
    check_session_name,
)
from chatcli.templates import Applied, Template, Templates
from chatcli.tools import ToolRound, rounds_from_json, rounds_json
from chatcli.turn import OnEvent, Turn, TurnRequest, preflight, run_turn

if TYPE_CHECKING:
    from chatcli.branches import Branch
    from chatcli.tools.setup import ToolSet

log = logging.getLogger("chatcli.conversation")


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
    #: For an answer: the question it answers (stored as its ``reply_to``).
    question: _Entry | None = None
    #: For an answer: what the model thought (kept apart, never sent back), its token counts
    #: (``usage_estimated``: chatcli's count, the service gave none) and seconds to its first piece.
    reasoning: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    usage_estimated: bool = False
    first_token: float | None = None
    #: For a question asked with images in this process: them (a session keeps only notes).
    images: tuple[ImagePart, ...] = ()
    #: For a question: the context items it carries (files, pages, piped text), sent before
    #: its text and kept once each in the session.
    context: tuple[Item, ...] = ()
    #: For a question: what it follows in the session: the end of the active branch
    #: (``"head"``), or a new branch after that message id (``None``: from the start).
    after: int | Literal["head"] | None = "head"
    #: For an answer: it answers its question again (``/retry``), so it ends the branch.
    retried: bool = False
    #: For an answer that called tools: its rounds, and where its text after them starts.
    rounds: tuple[ToolRound, ...] = ()
    final_from: int = 0

    def as_sent(self) -> list[ChatMessage]:
        """The message as the model gets it again: an answer that called tools is its rounds
        (each its calls and their results) and then the text that followed them."""
        if self.images:
            return [ChatMessage.with_images(self.role, self.sent, self.images)]
        if not self.rounds:
            return [ChatMessage.text(self.role, self.sent)]
        sent = [message for done in self.rounds for message in done.messages()]
        final = self.content[self.final_from :]
        if final.strip():
            sent.append(ChatMessage.text("assistant", final))
        return sent

    @property
    def sent(self) -> str:
        """The text the model gets: the context items, each fenced under its source, then
        the message's own text."""
        return with_context(self.content, self.context)


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
        notice: Callable[[str], None] | None = None,
        templates: Templates | None = None,
    ) -> None:
        self.registry = registry
        self.defaults = defaults
        self.store = store
        self.save = save and store is not None
        self.session = session
        self.system = system
        #: The name to give the session when it is created (``-S NAME`` for a new one).
        self.pending_name = name
        #: Where lines about retries and fallbacks go (the CLI: stderr).
        self.notice = notice
        self._entries: list[_Entry] = []
        #: The model that answered last (the provider may pick one when none was chosen).
        self.last_model: str | None = None
        #: The latest turn, as it stands: after an error or Ctrl-C it holds the partial answer.
        self.last_turn: Turn | None = None
        #: A save failed and was reported; the messages wait in memory for the next one.
        self._save_failed = False
        #: How many unanswered questions the user was told are not sent again.
        self._unanswered_told = 0
        #: The context length of the provider and options last asked (see context_fill).
        self._context_for: tuple[Any, ...] | None = None
        self._context_length: int | None = None
        #: Whether more messages may follow to save what could not be (a REPL), or this is a
        #: one-shot ``ask`` (what is not saved now never will be).
        self.saves_later = True
        #: Where a session's template is found again (``None``: templates are not used).
        self.templates = templates
        #: The template in use (``-t``, ``/role``, or the session's): its prompt frames each
        #: message (see :meth:`compose`).
        self.template: Applied | None = None
        self._told_template: str | None = None
        #: What the next question follows: the end of the active branch (``"head"``), or a
        #: new branch after that message (``None``: from the start; see :meth:`branch_at`).
        self._next_after: int | Literal["head"] | None = "head"
        #: The temperature and options before a template chose any (see use_choices_of).
        self.role_baseline: tuple[float | None, dict[str, Any]] | None = None
        #: The tools the model may call (``--tool``, ``--mcp``, ``[tools]``), if any.
        self.toolset: ToolSet | None = None
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

        A new provider starts from its own URL and model: the old ``--base-url`` would send
        the new provider's key to the old host.
        """
        if provider is not None and self.registry.get(provider).name == self.provider:
            provider = None  # the same provider: keep its URL; only the model may change
        if model:  # a model the provider surely cannot use is refused now, not at send
            self.registry.create(provider or self.provider).check_model(model)
        if provider is not None:
            cls = self.registry.get(provider)  # an unknown name is an error now, not at send
            self.defaults = replace(
                self.defaults, provider=cls.name, model=model or None, base_url=None
            )
            self.last_model = None  # the old provider's choice says nothing of the new one
        elif model is not None:
            self.defaults = replace(self.defaults, model=model or None)

    def use_choices_of(self, template: Template | None) -> None:
        """Switch to what ``template`` chooses: its provider and model, its temperature, and
        its options (for its provider, or for any when it names none). The temperature and
        options come back to what they were before any template chose them first, so a
        role's choices do not outlive it (``None``: just that)."""
        if self.role_baseline is None:
            self.role_baseline = (self.defaults.temperature, dict(self.defaults.options))
        temperature, options = self.role_baseline
        if template is not None and (template.provider is not None or template.model is not None):
            self.use(provider=template.provider, model=template.model)
        cls = self.registry.get(self.provider)
        if template is not None:
            if template.temperature is not None:
                temperature = template.temperature
            if template.provider is None or self.registry.get(template.provider).name == cls.name:
                options = {**options, **template.options}
        try:
            checked = cls.check_options(options)
        except ChatcliError:  # options of a provider left since: not for this one
            checked = cls.check_options(dict(template.options) if template is not None else {})
        self.defaults = replace(self.defaults, temperature=temperature, options=checked)

    def _load(self, session: Session) -> None:
        assert self.store is not None
        self.session = session
        self.system = session.system
        self.template = self._stored_template(session)
        self._next_after = "head"
        stored = self.store.messages(session.id)
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
                reasoning=m.reasoning,
                input_tokens=m.input_tokens,
                output_tokens=m.output_tokens,
                usage_estimated=m.usage_estimated,
                first_token=m.first_token,
                context=m.context,
            )
            for m in stored
        ]
        for entry, message in zip(self._entries, stored, strict=True):
            entry.rounds, entry.final_from = rounds_from_json(message.tools)

    def load(self, session: Session) -> None:
        """Continue ``session``: its history, system prompt, and the provider and model that
        last answered in it, as one pair (a provider no longer known keeps the current one)."""
        if self.store is None:
            raise UsageError("sessions are not being saved (--no-save)")
        self._load(session)
        self.pending_name = None
        if session.provider and session.provider in self.registry:
            cls = self.registry.get(session.provider)
            same = cls.name == self.provider
            self.defaults = replace(
                self.defaults,
                provider=cls.name,
                model=session.model or None,
                base_url=self.defaults.base_url if same else None,  # no key to another host
            )
            if not same:
                self.last_model = None

    def tokens(self) -> int:
        """Tokens this conversation's answers took so far (in and out, as counted)."""
        return sum((e.input_tokens or 0) + (e.output_tokens or 0) for e in self._entries)

    def context_fill(self) -> float | None:
        """How full the model's context was at the last answer (its prompt and answer against
        what the context holds), when both are known."""
        last = next((e for e in reversed(self._entries) if e.role == "assistant"), None)
        if last is None or last.input_tokens is None:
            return None
        key = (
            self.provider,
            self.last_model or self.model,
            tuple(sorted(self.defaults.options.items(), key=str)),
        )
        if self._context_for != key:  # asked once per provider and options, not per redraw
            try:
                provider = self.registry.create(self.provider)
                self._context_length = provider.context_tokens(
                    self.defaults.options, self.last_model or self.model
                )
            except ChatcliError:
                self._context_length = None
            self._context_for = key
        if not self._context_length:
            return None
        return ((last.input_tokens or 0) + (last.output_tokens or 0)) / self._context_length

    def cost(self, prices: Mapping[str, Mapping[str, Any]]) -> float | None:
        """What this conversation's answers cost at ``prices`` (config.toml's), when known."""
        from chatcli.usage import cost

        total, priced = 0.0, False
        for entry in self._entries:
            if entry.role != "assistant":
                continue
            spent = cost(
                prices, entry.provider or "", entry.model or "", entry.input_tokens,
                entry.output_tokens,
            )  # fmt: skip
            if spent is not None:
                total, priced = total + spent, True
        return total if priced else None

    def refresh(self) -> int:
        """Take in the messages another process added to this session meanwhile (an ``ask -S``
        in another terminal); returns how many. Nothing changes while messages of this one
        wait to be saved (they would be out of order)."""
        if not self.save or self.store is None or self.session is None:
            return 0  # --no-save: this conversation is its own, whatever the store holds
        if any(entry.id is None for entry in self._entries) or self._next_after != "head":
            return 0  # (a branch about to start keeps the messages chosen for it)
        known = {entry.id for entry in self._entries}
        try:
            stored = self.store.messages(self.session.id)
            added = sum(1 for message in stored if message.id not in known)
            if added:
                self._load(self.store.get(self.session.id))
        except (StorageError, UsageError):  # unreadable, or deleted meanwhile: carry on
            return 0
        return added

    def new(self) -> None:
        """Start afresh; the next message opens a new session."""
        self.session = None
        self._entries = []
        self.pending_name = None
        self._next_after = "head"

    def set_system(self, text: str | None) -> None:
        self.system = text or None
        if self.save and self.store is not None and self.session is not None:
            self.store.set_system(self.session.id, self.system)

    def set_template(self, applied: Applied | None) -> None:
        """Use ``applied`` (``None``: no template) from the next message on, with its system
        prompt. A template without one keeps the current system prompt, unless that came from
        the template it replaces."""
        old = self.template
        if applied is not None and applied.system is not None:
            self.system = applied.system
        elif old is not None and old.system is not None and old.system == self.system:
            self.system = None
        self.template = applied
        if self.save and self.store is not None and self.session is not None:
            self.store.set_template(
                self.session.id, self.system, applied.stored() if applied else None
            )

    def compose(self, text: str) -> str:
        """The message for the user's ``text``: as it is, or framed by the template's prompt."""
        return self.template.message(text) if self.template is not None else text

    def _stored_template(self, session: Session) -> Applied | None:
        if not session.template or self.templates is None:
            return None
        try:
            applied = self.templates.load(session.template)
            problem = "is gone" if applied is None else None
        except ChatcliError as exc:  # changed since, and now wrong: say so, go on without it
            applied, problem = None, f"cannot be used ({exc})"
        if problem is not None and self._told_template != session.id:
            self._told_template = session.id  # once per session, not at every refresh
            log.warning(
                "this session's template %s; its system prompt is kept, its prompt is not",
                problem,
            )
        return applied

    def rename(self, name: str) -> Session:
        if self.store is None or not self.save:
            raise UsageError("sessions are not being saved (--no-save)")
        if self.session is None:
            self.pending_name = check_session_name(name)
            raise UsageError("nothing to rename yet: the session starts with your first message")
        self.session = self.store.rename(self.session.id, name)
        return self.session

    def messages(
        self,
        user_text: str | None = None,
        images: Sequence[ImagePart] = (),
        context: Sequence[Item] = (),
    ) -> tuple[ChatMessage, ...]:
        """What the provider receives: system prompt, history, and the new message (with
        ``images``, when given). A question asked with images in this process carries them
        again (``/retry``, later turns); one read from a session has only their notes.

        An earlier question that got no answer (its provider failed) stays in the session but
        is not sent again unseen, as a run of questions in a row: ``/retry`` asks it. (Without
        ``user_text`` the last question is the one being asked again, and it is sent.)
        """
        messages: list[ChatMessage] = []
        if self.system:
            messages.append(ChatMessage.text("system", self.system))
        entries = self._entries
        last = len(entries) - 1 if user_text is None else len(entries)
        for index, entry in enumerate(entries):
            answered = index + 1 < len(entries) and entries[index + 1].role == "assistant"
            if entry.role == "user" and not answered and index != last:
                continue
            messages.extend(entry.as_sent())
        if user_text is not None:
            text = with_context(user_text, context)
            if images:
                messages.append(ChatMessage.with_images("user", text, images))
            else:
                messages.append(ChatMessage.text("user", text))
        return tuple(messages)

    def unanswered(self) -> int:
        """How many earlier questions got no answer (and are therefore not sent again)."""
        entries = self._entries
        return sum(
            1
            for index, entry in enumerate(entries)
            if entry.role == "user"
            and not (index + 1 < len(entries) and entries[index + 1].role == "assistant")
        )

    # -- turns ------------------------------------------------------------------------------

    async def send(
        self,
        text: str,
        renderer: Renderer,
        *,
        turn: Turn | None = None,
        on_event: OnEvent | None = None,
        images: Sequence[ImagePart] = (),
        context: Sequence[Item] = (),
    ) -> Turn:
        """Ask ``text``; the answer streams into ``renderer`` (and its events to ``on_event``)
        and is kept whatever happens. ``images`` go with it; the session keeps the text and a
        note of each (``[image: cat.png, 123 KB]``), which is also the text sent with them.
        ``context`` items go before the text, fenced under their sources; the session keeps
        each once, by its content, and the question names them."""
        if images:
            from chatcli.images import with_notes

            text = with_notes(text, images)
        request = replace(self.defaults, messages=self.messages(text, images, context))
        if self.toolset:  # (before any MCP server starts: a missing key is said at once)
            preflight(replace(request, tools=(ToolSpec("tools", ""),)), self.registry)
        request = replace(request, tools=await self._tool_specs())
        preflight(request, self.registry)  # a request that cannot leave stores nothing
        skipped = self.unanswered()
        if skipped > self._unanswered_told:  # said once per new unanswered question
            self._unanswered_told = skipped
            log.warning(
                "%d earlier question(s) of this session got no answer and are not sent again "
                "(in the REPL, /retry asks the last one)",
                skipped,
                extra={"notice": True},
            )
        self._entries.append(
            _Entry(
                "user",
                text,
                provider=self.provider,
                model=self.model,
                images=tuple(images),
                context=tuple(context),
                after=self._next_after,
            )
        )
        self._next_after = "head"
        self._save_pending()
        return await self._answer(request, renderer, turn, on_event)

    async def send_once(
        self, text: str, renderer: Renderer, **kwargs: Any
    ) -> Turn:  # (the keyword arguments of send)
        """:meth:`send`, then :meth:`aclose`: one question (``ask``)."""
        try:
            return await self.send(text, renderer, **kwargs)
        finally:
            await self.aclose()

    async def retry(
        self,
        renderer: Renderer,
        *,
        turn: Turn | None = None,
        on_event: OnEvent | None = None,
    ) -> Turn:
        """Ask the last question again. The old answer stays in the session as a branch of
        its own (``/branches``), and in view until a new one arrives."""
        if not self._entries:
            raise UsageError("nothing to retry yet")
        old: _Entry | None = None
        if self._entries[-1].role == "assistant":
            old = self._entries.pop()
        if not self._entries or self._entries[-1].role != "user":
            if old is not None:
                self._entries.append(old)
            raise UsageError("nothing to retry: the last message is not a question")
        request = replace(self.defaults, messages=self.messages(), tools=await self._tool_specs())
        before = len(self._entries)
        try:
            turn = await self._answer(request, renderer, turn, on_event, retried=True)
        finally:
            if old is not None and len(self._entries) == before:
                self._entries.append(old)  # nothing new came: the old answer stays in view
            elif len(self._entries) > before:
                self._next_after = "head"  # the new answer ends the active branch now
        return turn

    # -- branches ---------------------------------------------------------------------------

    def branch_at(self, count: int) -> None:
        """Keep the first ``count`` messages in view; the next question starts a new branch
        after them. The messages left out stay in the session, on their own branch."""
        if not 0 <= count <= len(self._entries):
            raise UsageError(f"there is no message {count} (this branch has {len(self._entries)})")
        if count < len(self._entries) and any(e.id is None for e in self._entries) and self.save:
            raise UsageError("messages of this session wait to be saved; try again once they are")
        self._entries = self._entries[:count]
        self._next_after = self._entries[-1].id if self._entries else None

    def all_messages(self) -> list[StoredMessage]:
        """Every message of the session, every branch (empty when nothing is saved)."""
        if self.store is None or self.session is None or not self.save:
            return []
        return self.store.messages(self.session.id, every_branch=True)

    def branches(self) -> list[Branch]:
        from chatcli.branches import branches

        return branches(self.all_messages(), self.head)

    @property
    def head(self) -> int | None:
        """The id of the last saved message in view (the active branch's end)."""
        ids = [e.id for e in self._entries if e.id is not None]
        return ids[-1] if ids else None

    def context_of(self, index: int) -> tuple[Item, ...]:
        """The context items message ``index`` (0-based) carried."""
        return self._entries[index].context

    def switch(self, number: int) -> Branch:
        """Make branch ``number`` (as ``/branches`` counts) the active one."""
        if self.store is None or self.session is None or not self.save:
            raise UsageError("branches are kept in saved sessions; this one is not saved yet")
        if any(e.id is None for e in self._entries):
            raise UsageError("messages of this session wait to be saved; try again once they are")
        found = self.branches()
        if not 1 <= number <= len(found):
            raise UsageError(f"there is no branch {number} (this session has {len(found)})")
        branch = found[number - 1]
        self.store.set_head(self.session.id, branch.leaf.id)
        self._load(self.store.get(self.session.id))
        self._next_after = "head"
        return branch

    def undo(self) -> int:
        """Forget the last exchange (the question and its answer, if any); returns how many."""
        if not self._entries:
            raise UsageError("nothing to undo")
        count = 2 if self._entries[-1].role == "assistant" and len(self._entries) >= 2 else 1
        dropped, self._entries = self._entries[-count:], self._entries[:-count]
        ids = [e.id for e in dropped if e.id is not None]
        if ids and self.save and self.store is not None and self.session is not None:
            self.store.forget(self.session.id, ids)
        # The next question follows what is left in view, whatever the head says now.
        self._next_after = self.head
        return count

    async def _answer(
        self,
        request: TurnRequest,
        renderer: Renderer,
        turn: Turn | None,
        on_event: OnEvent | None,
        *,
        retried: bool = False,
    ) -> Turn:
        turn = turn or Turn(provider=request.provider)
        self.last_turn = turn
        question = next((e for e in reversed(self._entries) if e.role == "user"), None)
        toolbox = await self.toolset.toolbox() if self.toolset is not None else None
        try:
            await run_turn(
                request,
                self.registry,
                renderer,
                turn=turn,
                notice=self.notice,
                on_event=on_event,
                toolbox=toolbox,
            )
        finally:
            # Runs on success, on errors and on cancellation alike: nothing shown is lost.
            if turn.model:
                self.last_model = turn.model
            if turn.began:  # (an answer of tool calls alone keeps them)
                self._entries.append(
                    _Entry(
                        "assistant",
                        turn.text,
                        question=question,
                        retried=retried,
                        rounds=tuple(turn.rounds),
                        final_from=turn.final_from,
                        **turn.stored(),
                    )
                )
                self._save_pending()
        return turn

    async def _tool_specs(self) -> tuple[ToolSpec, ...]:
        """The tools on offer for the next question (MCP servers start on first use)."""
        if self.toolset is None:
            return ()
        return (await self.toolset.toolbox()).specs()

    async def aclose(self) -> None:
        """Stop what the conversation started (MCP servers); it may not be used after."""
        if self.toolset is not None:
            await self.toolset.aclose()

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
                    reply_to=entry.question.id if entry.question is not None else None,
                    reasoning=entry.reasoning,
                    input_tokens=entry.input_tokens,
                    output_tokens=entry.output_tokens,
                    usage_estimated=entry.usage_estimated,
                    first_token=entry.first_token,
                    context=entry.context,
                    after=entry.after,
                    retried=entry.retried,
                    tools=rounds_json(entry.rounds, entry.final_from),
                )
        except StorageError as exc:
            unsaved = sum(1 for e in self._entries if e.id is None)
            if self._save_failed:  # said once is enough (a read-only home fails every time)
                log.debug("still could not save %d message(s): %s", unsaved, exc)
            elif self.saves_later:
                log.warning(
                    "could not save this conversation (%s); it is kept in memory, and saved "
                    "with a later message if that can be",
                    exc,
                )
            else:
                log.warning("could not save this conversation (%s); nothing of it was kept", exc)
            self._save_failed = True
            return
        if self._save_failed:
            log.warning("the messages that could not be saved before are saved now")
            self._save_failed = False
        if self.session is not None and not self.session.title:
            # The first message gave it a title. (Deleted meanwhile: the next save sees it.)
            with contextlib.suppress(StorageError, UsageError):
                self.session = self.store.get(self.session.id)

    def _ensure_session(self) -> None:
        assert self.store is not None
        if self.session is not None and not self.store.exists(self.session.id):
            # Deleted by another process while in use: keep talking, into a new session that
            # holds the whole conversation so far.
            log.warning("session %s was deleted elsewhere; saving into a new one", self.session.id)
            self.pending_name = self.session.name
            self.session = None
            for entry in self._entries:
                entry.id, entry.after = None, "head"  # one branch, in order, in the new one
        if self.session is None:
            self.session = self.store.create(
                name=self.pending_name,
                system=self.system,
                provider=self.defaults.provider,
                model=self.defaults.model,
                template=self.template.stored() if self.template is not None else None,
                reuse_name=True,  # another process may have just created it (ask -S NEW)
            )
            self.pending_name = None


def with_context(text: str, context: Sequence[Item]) -> str:
    """``text`` after the context items, each fenced under its source, a blank line apart."""
    if not context:
        return text
    return "\n\n".join([*(item.block() for item in context), *([text] if text else [])])
