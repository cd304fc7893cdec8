"""``chatcli repl``: an interactive chat on prompt_toolkit, through the same engine as ``ask``.

Keys: Enter sends; Alt-Enter (Esc, Enter) and Ctrl-J insert a newline; a pasted block arrives
whole (bracketed paste); Ctrl-X Ctrl-E edits the input in $EDITOR; Ctrl-R searches the input
history, which persists in the state directory (0600). Ctrl-C while an answer streams stops it
(the part received is kept, marked interrupted); Ctrl-C at the prompt clears the line; Ctrl-D on
an empty line leaves. Slash commands (``/help``) manage the session, provider and model.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import (
    CompleteEvent,
    Completer,
    Completion,
    get_common_complete_suffix,
)
from prompt_toolkit.document import Document
from prompt_toolkit.filters import is_searching
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.history import FileHistory
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.key_binding.bindings.completion import generate_completions
from prompt_toolkit.utils import get_cwidth

from chatcli.conversation import Conversation
from chatcli.core import ImagePart
from chatcli.errors import ChatcliError, UsageError
from chatcli.files import Gathered, Item
from chatcli.render import QuietTerminal, Renderer, SuspendGuard, sanitize
from chatcli.store.files import private_file
from chatcli.turn import Turn

if TYPE_CHECKING:
    from prompt_toolkit.input import Input
    from prompt_toolkit.output import Output

HISTORY_FILE: Final = "repl_history"
#: The least room the toolbar leaves a model's name (a longer one loses its middle).
TOOLBAR_MODEL: Final = 12
#: The toolbar's key hint, the longest that fits.
TOOLBAR_HINTS: Final = (
    "  Enter send · Alt-Enter newline · Ctrl-C stop · Ctrl-D quit · /help",
    "  Alt-Enter newline · Ctrl-D quit · /help",
    "  /help",
)


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    usage: str
    help: str


COMMANDS: Final[tuple[Command, ...]] = (
    Command("help", "/help", "show this list"),
    Command("new", "/new", "start a new session"),
    Command("sessions", "/sessions", "list recent sessions"),
    Command("load", "/load NAME", "continue a session (name, id or id prefix)"),
    Command("rename", "/rename NAME", "name the current session"),
    Command("provider", "/provider NAME", "switch provider (no name: show it and the others)"),
    Command("model", "/model NAME", "switch model (no name: show it and the known ones)"),
    Command("system", "/system TEXT", "set the system prompt (no text: show it; '-': remove it)"),
    Command("role", "/role NAME", "use a template from now on (no name: show them; '-': none)"),
    Command("reasoning", "/reasoning MODE", "a model's thinking: show, collapse or hide"),
    Command(
        "tools", "/tools on|off NAME", "let the model call a tool or MCP server (no name: list)"
    ),
    Command("retry", "/retry", "ask the last question again (the old answer stays a branch)"),
    Command("branches", "/branches", "show the session's branches as a tree"),
    Command("switch", "/switch N", "continue on branch N (no N: show the branches)"),
    Command("undo", "/undo", "forget the last question and its answer"),
    Command("history", "/history", "show the conversation so far"),
    Command("file", "/file PATH", "add a file, directory or glob to your next message"),
    Command("context", "/context", "list what your next message carries, with sizes"),
    Command("drop", "/drop N", "leave item N out of your next message"),
    Command("image", "/image PATH", "attach an image (or its URL) to your next message"),
    Command("export", "/export FILE", "write the session as Markdown to FILE"),
    Command("copy", "/copy [N]", "copy code block N of the last answer (no N: all of it)"),
    Command("save", "/save N FILE", "write code block N of the last answer to FILE"),
    Command("edit", "/edit [N]", "write a message in $EDITOR; N: change question N, ask again"),
    Command("clear", "/clear", "clear the screen"),
    Command("exit", "/exit", "leave (Ctrl-D does too)"),
)
_BY_NAME: Final = {c.name: c for c in COMMANDS} | {"quit": COMMANDS[-1]}
#: Commands that, given no argument, show what they would change (or, for /copy, take all).
_SHOWN_WITHOUT_ARGUMENT: Final = (
    "system", "provider", "model", "reasoning", "copy", "role", "edit", "switch", "tools",
)  # fmt: skip


def history_file(state_dir: Path) -> Path:
    """The input history file, created owner-only before prompt_toolkit appends to it.

    The state directory is chatcli's own (0700, and neither it nor the file is ever a link:
    see ``private_file``), so prompt_toolkit can then open the file by name.
    """
    return private_file(state_dir / HISTORY_FILE)


class SlashCompleter(Completer):
    """Completes command names, and provider, model and session names after their command."""

    def __init__(self, repl: Repl) -> None:
        self._repl = repl

    def get_completions(self, document: Document, complete_event: Any) -> Iterator[Completion]:
        text = document.text_before_cursor
        if not text.startswith("/") or "\n" in text:
            return
        if " " not in text:
            for name in sorted(_BY_NAME):
                if name.startswith(text[1:]):
                    yield Completion(
                        "/" + name, start_position=-len(text), display_meta=_BY_NAME[name].help
                    )
            return
        command, _, argument = text[1:].partition(" ")
        if command == "file":  # a path: what the file system has
            from prompt_toolkit.completion import PathCompleter

            path = Document(argument, len(argument))
            yield from PathCompleter(expanduser=True).get_completions(path, complete_event)
            return
        for candidate in self._repl.candidates(command):
            if candidate.startswith(argument):
                yield Completion(candidate, start_position=-len(argument))


def key_bindings() -> KeyBindings:
    bindings = KeyBindings()

    # Not while searching (Ctrl-R): there Enter accepts the match, as usual.
    @bindings.add("enter", filter=~is_searching)
    def _send(event: KeyPressEvent) -> None:
        event.current_buffer.validate_and_handle()

    @bindings.add("escape", "enter", filter=~is_searching)  # Alt-Enter
    @bindings.add("c-j", filter=~is_searching)
    def _newline(event: KeyPressEvent) -> None:
        event.current_buffer.insert_text("\n")

    # As in a shell: one match is put in at once. (The menu shown while typing would otherwise
    # take Tab for "highlight the first entry", leaving the match to be accepted.)
    @bindings.add("tab", filter=~is_searching)
    def _complete(event: KeyPressEvent) -> None:
        buffer = event.current_buffer
        state = buffer.complete_state
        if buffer.completer is None or (state is not None and state.complete_index is not None):
            generate_completions(event)  # moving through the menu
            return
        document = buffer.document
        found = list(
            buffer.completer.get_completions(document, CompleteEvent(completion_requested=True))
        )
        if len(found) == 1:
            buffer.apply_completion(found[0])
        elif common := get_common_complete_suffix(document, found):
            buffer.insert_text(common)
        else:
            generate_completions(event)

    return bindings


class Repl:
    """The loop: read a message or a command, answer it, repeat."""

    def __init__(
        self,
        conversation: Conversation,
        *,
        stdout: IO[str],
        make_renderer: Callable[[], Renderer],
        history_path: Path | None = None,
        input: Input | None = None,
        output: Output | None = None,
        hold_logs: Callable[[bool], contextlib.AbstractContextManager[None]] | None = None,
        editor: str | None = None,
    ) -> None:
        self.conversation = conversation
        conversation.notice = lambda text: self.say(f"chatcli: {text}")
        self.stdout = stdout
        self.make_renderer = make_renderer
        #: How a reasoning model's thinking shows (``/reasoning`` changes it).
        self.reasoning = "collapse"
        #: Prices per provider and model, from config.toml (for the toolbar's cost).
        self.prices: Mapping[str, Mapping[str, Any]] = {}
        #: Context items waiting for the next message (-f, /file, piped stdin).
        self.context: list[Item] = []
        #: Images waiting for the next message (/image).
        self.images: list[ImagePart] = []
        #: The environment files are found in (``~``, git's PATH), from the context.
        self.env: Mapping[str, str] = {}
        #: The -f limits, in bytes (config.toml's max_file_kib and max_context_kib).
        from chatcli.files import MAX_FILE, MAX_TOTAL

        self.max_file, self.max_total = MAX_FILE, MAX_TOTAL
        self.hold_logs = hold_logs or (lambda hold: contextlib.nullcontext())
        self.editor = editor
        self.running = True
        #: After ``/edit N``: N and the question's text, until it is asked or left.
        self.editing: tuple[int, str] | None = None
        self.type_ahead = _TypeAhead(_terminal_fd() if input is None else None)
        self.session: PromptSession[str] = PromptSession(
            multiline=True,
            key_bindings=key_bindings(),
            history=FileHistory(str(history_path)) if history_path else None,
            completer=SlashCompleter(self),
            complete_while_typing=True,
            enable_open_in_editor=True,
            bottom_toolbar=self.toolbar,
            input=input,
            output=output,
        )

    # -- what the user sees ------------------------------------------------------------------

    def toolbar(self) -> FormattedText:
        """Provider, model and session on one line: the session's title is kept whole, a long
        model name is shortened (a .gguf path to its file name), and the key hint goes first
        when the line is too narrow for it."""
        from chatcli.sessions_cli import short_model

        conversation = self.conversation
        session = conversation.session
        where = session.label if session is not None else "new session"
        if not conversation.save:
            where += " (not saved)"
        if conversation.template is not None:
            where += f" · role {conversation.template.name}"
        provider, where = sanitize(conversation.provider), sanitize(where)
        width = self.width()
        room = width - get_cwidth(f" {provider} ·  · {where} ")
        model = short_model(sanitize(self.current_model()), max(TOOLBAR_MODEL, room))
        text = f" {provider} · {model} · {where} "
        left = width - get_cwidth(text)
        spent = self.spent()
        if spent and get_cwidth(spent) + 2 <= left:  # the session's tokens, context, cost
            text, left = f"{text}· {spent} ", left - get_cwidth(spent) - 2
        hint = next((h for h in TOOLBAR_HINTS if get_cwidth(h) <= left), "")
        return FormattedText([("bold", text), ("", hint)])

    def spent(self) -> str:
        """``12.3k tokens · context 45% · cost 0.0123``: what is known of it, or nothing."""
        conversation = self.conversation
        parts = []
        tokens = conversation.tokens()
        if tokens:
            parts.append(f"{tokens / 1000:.1f}k tokens" if tokens >= 1000 else f"{tokens} tokens")
        fill = conversation.context_fill()
        if fill is not None:
            parts.append(f"context {fill:.0%}")
        cost = conversation.cost(self.prices)
        if cost is not None:
            parts.append(f"cost {cost:.4f}")
        return " · ".join(parts)

    def width(self) -> int:
        """The terminal's width, in columns."""
        return self.session.output.get_size().columns

    def current_model(self) -> str:
        """The model the next question goes to, as far as it is known before it is sent."""
        conversation = self.conversation
        default = conversation.registry.get(conversation.provider).default_model
        return conversation.model or conversation.last_model or default or "default model"

    def say(self, text: str) -> None:
        """A line of chatcli's own (notes, command output) on stdout, safe for the terminal."""
        self.stdout.write(sanitize(text) + "\n")
        self.stdout.flush()

    def error(self, text: str) -> None:
        self.say(f"chatcli: {text}")

    def candidates(self, command: str) -> Iterable[str]:
        """Completion candidates for ``command``'s argument."""
        conversation = self.conversation
        if command == "provider":
            return conversation.registry.names()
        if command == "model":
            return self.known_models()
        if command == "role" and conversation.templates is not None:
            return conversation.templates.names()
        if command in ("load", "rm") and conversation.store is not None:
            with contextlib.suppress(ChatcliError):
                sessions = conversation.store.recent(50)
                return [s.name for s in sessions if s.name] + [s.id for s in sessions]
        return []

    def known_models(self) -> list[str]:
        """The models the current provider is known to offer, without asking its service: its
        own list and default (the offline model: the files it finds), and those in use."""
        conversation = self.conversation
        provider = conversation.registry.get(conversation.provider)
        names = [*provider.models, provider.default_model]
        names += [conversation.model or "", conversation.last_model or ""]
        with contextlib.suppress(ChatcliError):
            found = getattr(conversation.registry.create(provider.name), "known_models", None)
            if found is not None:
                names += found()
        return sorted({name for name in names if name})

    # -- the loop ------------------------------------------------------------------------------

    async def read(self) -> str:
        """The next input. SIGINT is ignored meanwhile: the prompt reads Ctrl-C as a key, and
        a signal can only come from an editor it started (Ctrl-X Ctrl-E), which handles it.
        After ``/edit N`` the line holds question N to change."""
        default = self.editing[1] if self.editing is not None else ""
        with _sigint_ignored():
            return await self.session.prompt_async(FormattedText([("bold", "> ")]), default=default)

    async def run(self) -> None:
        self.say(
            "chatcli: Enter sends, Alt-Enter adds a line, /help lists commands, Ctrl-D leaves."
        )
        # Keys typed ahead are kept for the next prompt all the time between prompts, up to the
        # moment the prompt takes the terminal (it restores this mode when it returns): the
        # terminal is never back in line mode, where Enter would become Ctrl-J, "add a line".
        with self.type_ahead:
            try:
                await self._loop()
            finally:
                await self.conversation.aclose()  # MCP servers stop with the REPL

    async def _loop(self) -> None:
        while self.running:
            added = self.conversation.refresh()  # another process may have used the session
            if added:
                self.say(f"({added} message(s) added to this session elsewhere; see /history)")
            try:
                text = await self.read()
            except KeyboardInterrupt:
                self.drop_edit()
                continue  # Ctrl-C at the prompt: the line is cleared
            except EOFError:
                break  # Ctrl-D on an empty line
            try:
                await self.handle(text)
            except KeyboardInterrupt:
                self.say("[interrupted]")  # Ctrl-C during a command: back to the prompt

    async def handle(self, text: str) -> None:
        """One submitted input: a slash command, or a message to send."""
        if self.editing is not None and text.strip() and not text.startswith("/"):
            await self.ask_edited(text)
            return
        self.drop_edit()
        if not text.strip():
            return
        if text.startswith("/") and not text.startswith("//"):
            try:
                await self.command(text)
            except ChatcliError as exc:
                self.error(str(exc))
            return
        if text.startswith("//"):
            text = text[1:]  # "//etc" sends "/etc"
        waiting = tuple(self.context)  # sent first, each fenced under its path, as with ask -f
        images = tuple(self.images)
        text = self.conversation.compose(text)  # framed by the role's prompt, if any
        before = len(self.conversation.history)
        await self.answer(
            lambda renderer: self.conversation.send(text, renderer, context=waiting, images=images)
        )
        if len(self.conversation.history) > before:
            self.context, self.images = [], []  # sent (and kept in the conversation)

    async def answer(self, ask: Callable[[Renderer], Awaitable[Turn]]) -> None:
        """Stream one answer; Ctrl-C (SIGINT) cancels it and the loop goes on."""
        renderer = self.make_renderer()
        previous = self.conversation.last_turn
        task = asyncio.ensure_future(ask(renderer))
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGINT, task.cancel)
        try:
            with self.hold_logs(renderer.live):
                await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the REPL itself is being stopped
            turn = self.conversation.last_turn
            shown = turn is not None and turn is not previous and turn.began
            kept = " (the part shown is kept)" if shown else ""
            self.say(f"[interrupted]{kept}")
        except ChatcliError as exc:
            self.error(str(exc))
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGINT)

    # -- slash commands --------------------------------------------------------------------------

    async def command(self, text: str) -> None:
        name, _, argument = text[1:].strip().partition(" ")
        argument = argument.strip()
        command = _BY_NAME.get(name.lower())
        if command is None:
            raise UsageError(f"unknown command /{name}; /help lists them")
        takes_argument = " " in command.usage
        if takes_argument and not argument and command.name not in _SHOWN_WITHOUT_ARGUMENT:
            raise UsageError(f"usage: {command.usage} ({command.help})")
        if not takes_argument and argument:
            raise UsageError(f"usage: {command.usage} (takes no argument)")
        await getattr(self, f"_cmd_{command.name}")(argument)

    async def _cmd_help(self, _: str) -> None:
        width = max(len(c.usage) for c in COMMANDS)
        for command in COMMANDS:
            self.say(f"  {command.usage:<{width}}  {command.help}")
        self.say("  //text sends a message that starts with /")

    async def _cmd_new(self, _: str) -> None:
        self.conversation.new()
        self.say("new session (saved from its first message)")

    async def _cmd_sessions(self, _: str) -> None:
        from chatcli.transcript import when

        store = self.conversation.store
        sessions = store.recent(10) if store is not None else []
        if not sessions:
            self.say("no saved sessions yet")
        current = self.conversation.session
        for session in sessions:
            mark = "*" if current is not None and session.id == current.id else " "
            self.say(
                f"{mark} {session.id}  {session.label}  ({session.message_count} messages, "
                f"{when(session.updated_at)})"
            )

    async def _cmd_load(self, argument: str) -> None:
        store = self.conversation.store
        if store is None:
            raise UsageError("no session store")
        session = store.find(argument)
        self.conversation.load(session)  # with the provider and model that last answered there
        self.say(f"continuing {session.label} ({session.message_count} messages)")

    async def _cmd_rename(self, argument: str) -> None:
        session = self.conversation.rename(argument)
        self.say(f"session {session.id} is now named {session.name!r}")

    async def _cmd_provider(self, argument: str) -> None:
        if not argument:
            self.say(f"provider: {self.conversation.provider}")
            names = ", ".join(self.conversation.registry.names())
            self.say(f"providers: {names} (/provider NAME switches)")
            return
        self.conversation.use(provider=argument)
        self.say(f"provider: {self.conversation.provider}")

    async def _cmd_role(self, argument: str) -> None:
        conversation = self.conversation
        templates = conversation.templates
        if templates is None:
            raise UsageError("templates are not available here")
        if not argument:
            current = conversation.template
            self.say(f"role: {current.name if current else '(none)'}")
            self.say(f"templates: {', '.join(templates.names())} (/role NAME [VAR=VALUE ...])")
            return
        if argument == "-":
            conversation.use_choices_of(None)
            conversation.set_template(None)
            self.say("role removed (provider and model stay as they are)")
            return
        from chatcli.templates import Applied, parse_vars

        name, *pairs = argument.split()
        template = templates.get(name)
        applied = Applied(template, template.values(parse_vars(pairs)))
        conversation.use_choices_of(template)
        conversation.set_template(applied)
        about = f" · {template.description}" if template.description else ""
        self.say(f"role: {template.name} ({conversation.provider} · {self.current_model()}){about}")

    async def _cmd_reasoning(self, argument: str) -> None:
        from chatcli.config import REASONING_MODES

        if argument:
            if argument not in REASONING_MODES:
                raise UsageError(f"/reasoning {argument}: give one of {', '.join(REASONING_MODES)}")
            self.reasoning = argument
        self.say(f"reasoning: {self.reasoning} (show, collapse or hide)")

    async def _cmd_tools(self, argument: str) -> None:
        toolset = self.conversation.toolset
        if toolset is None:
            raise UsageError("tools are not available here")
        if argument:
            switch, _, name = argument.partition(" ")
            name = name.strip()
            if switch not in ("on", "off") or not name:
                raise UsageError("usage: /tools on NAME, /tools off NAME")
            if switch == "on":
                kind = toolset.enable(name)
                if kind == "server":
                    try:
                        await toolset.toolbox()  # started now: one that fails says so here
                    except BaseException:
                        toolset.disable(name)  # and is not on (every question would fail)
                        raise
            else:
                toolset.disable(name)
        from chatcli.tools.builtin import BUILTIN

        on = toolset.describe()
        self.say("tools on: " + ("none" if not on else ""))
        for line in on:
            self.say(f"  {line}")
        off = [n for n in [*BUILTIN, *toolset.settings.servers] if n not in toolset.builtins]
        off = [n for n in off if n not in toolset.servers]
        if off:
            self.say(f"also known: {', '.join(off)} (/tools on NAME)")

    async def _cmd_model(self, argument: str) -> None:
        if argument:
            self.conversation.use(model=argument)
            self.say(f"model: {self.conversation.model}")
            return
        provider = self.conversation.registry.get(self.conversation.provider)
        self.say(f"model: {self.current_model()}")
        known = self.known_models()
        choices = ", ".join(known) if known else "none known here"
        self.say(f"models of {provider.name}: {choices} (/model NAME switches)")
        if provider.lists_models and provider.kind != "offline":
            self.say(f"the service may offer more: chatcli models -p {provider.name} asks it")

    async def _cmd_system(self, argument: str) -> None:
        if not argument:
            self.say(f"system prompt: {self.conversation.system or '(none)'}")
            return
        self.conversation.set_system(None if argument == "-" else argument)
        self.say("system prompt removed" if argument == "-" else "system prompt set")

    async def _cmd_retry(self, _: str) -> None:
        if not self.conversation.history:
            raise UsageError("nothing to retry yet")
        await self.answer(self.conversation.retry)

    async def _cmd_undo(self, _: str) -> None:
        count = self.conversation.undo()
        self.say(f"forgot the last {count} message(s)")

    def add_context(self, gathered: Gathered) -> None:
        """Items for the next message; what was left out, and why, in one line."""
        self.context.extend(gathered.items)
        for item in gathered.items:
            self.say(f"+ {item.source} ({item.size:,} bytes, ~{item.tokens:,} tokens)")
        if gathered.skipped:
            left = ", ".join(f"{path} ({why})" for path, why in gathered.skipped)
            self.say(f"left out: {left}")

    async def _cmd_file(self, argument: str) -> None:
        from chatcli.files import gather

        self.add_context(
            gather([argument], env=self.env, max_file=self.max_file, max_total=self.max_total)
        )

    async def _cmd_image(self, argument: str) -> None:
        from chatcli.images import describe, fit, load_image

        conversation = self.conversation
        providers = [conversation.registry.get(conversation.provider)]
        image = fit([load_image(argument)], providers)[0]  # refused now if it cannot go
        self.images.append(image)
        self.say(f"+ image {describe(image)}")

    async def _cmd_context(self, _: str) -> None:
        if self.images:
            from chatcli.images import describe

            for image in self.images:
                self.say(f"image: {describe(image)}")
        if not self.context:
            self.say("(nothing waits for your next message; /file PATH adds to it)")
            return
        for number, item in enumerate(self.context, 1):
            self.say(f"{number}. {item.source} ({item.size:,} bytes, ~{item.tokens:,} tokens)")
        total = sum(item.size for item in self.context)
        tokens = sum(item.tokens for item in self.context)
        self.say(
            f"in all {total:,} bytes, ~{tokens:,} tokens (estimated), sent with your next message"
        )

    async def _cmd_drop(self, argument: str) -> None:
        try:
            number = int(argument)
            item = self.context[number - 1]
            if number < 1:
                raise IndexError
        except (ValueError, IndexError):
            raise UsageError(
                f"/drop {argument}: give an item's number from /context (1 to {len(self.context)})"
            ) from None
        del self.context[number - 1]
        self.say(f"- {item.source}")

    async def _cmd_history(self, _: str) -> None:
        if not self.conversation.history:
            self.say("(no messages yet)")
        width = self.width()
        if self.conversation.system:
            self.say(wrap(f"system> {self.conversation.system}", width))
        for number, message in enumerate(self.conversation.history, 1):
            who = "you" if message["role"] == "user" else "assistant"
            self.say(wrap(f"{number} {who}> {message['content']}", width))

    async def _cmd_export(self, argument: str) -> None:
        from chatcli.store.files import write_user_file
        from chatcli.transcript import to_markdown

        conversation = self.conversation
        if conversation.store is None or conversation.session is None:
            raise UsageError("nothing saved to export yet")
        session = conversation.store.get(conversation.session.id)
        text = to_markdown(session, conversation.store.messages(session.id), context=True)
        path = Path(argument).expanduser()
        write_user_file(path, text.encode())
        self.say(f"wrote {path}")

    def last_answer(self) -> str:
        for message in reversed(self.conversation.history):
            if message["role"] == "assistant":
                return str(message["content"])
        raise UsageError("no answer yet")

    async def _cmd_copy(self, argument: str) -> None:
        from chatcli.clipboard import copy, terminal_writer
        from chatcli.extract import check_selector, select

        text = self.last_answer()
        if argument:
            text = select(text, check_selector(argument))
        how = copy(text, self.env, terminal_writer(self.stdout))
        self.say(f"copied {len(text):,} characters to {how}")

    async def _cmd_save(self, argument: str) -> None:
        from chatcli.extract import check_selector, select
        from chatcli.store.files import write_user_file

        number, _, name = argument.partition(" ")
        if not number.isdigit() or not name.strip():
            raise UsageError("usage: /save N FILE (code block N of the last answer)")
        code = select(self.last_answer(), check_selector(number))
        path = Path(name.strip()).expanduser()
        if path.exists() and not await self.confirm(f"{path} exists; replace it? [y/N] "):
            self.say("(not saved)")
            return
        write_user_file(path, code.encode())
        self.say(f"wrote code block {number} to {path} ({len(code.encode()):,} bytes)")

    async def confirm(self, question: str) -> bool:
        """A yes-or-no question on the prompt line; anything but yes (Ctrl-C, Ctrl-D) is no."""
        # A prompt of its own: one line, and nothing of it in the input history.
        asker: PromptSession[str] = PromptSession(
            input=self.session.input, output=self.session.output
        )
        try:
            answer = await asker.prompt_async(question)
        except (EOFError, KeyboardInterrupt):
            return False
        return answer.strip().lower() in ("y", "yes")

    async def _cmd_edit(self, argument: str) -> None:
        if argument:
            self.start_edit(argument)
            return
        text = self.edit("")
        if text.strip():
            self.say(text)
            await self.handle(text)
        else:
            self.say("(empty: nothing sent)")

    def start_edit(self, argument: str) -> None:
        """``/edit N``: the next prompt holds question N; Enter asks it again as a new branch
        (the old one stays), Ctrl-C or a command leaves it."""
        history = self.conversation.history
        if not argument.isdigit() or not 1 <= int(argument) <= len(history):
            raise UsageError(f"/edit N: N is a message number of /history (1 to {len(history)})")
        number = int(argument)
        if history[number - 1]["role"] != "user":
            raise UsageError(
                f"message {number} is an answer; /edit {number - 1} changes its question"
            )
        self.editing = (number, history[number - 1]["content"])
        self.say(f"editing question {number}: Enter asks it again on a new branch; Ctrl-C leaves")

    def drop_edit(self) -> None:
        if self.editing is not None:
            self.say(f"(question {self.editing[0]} left as it was)")
            self.editing = None

    async def ask_edited(self, text: str) -> None:
        """Ask the changed question ``text`` in place of question N, on a new branch: its
        context items go with it again, and the template's framing is already in it."""
        assert self.editing is not None
        number = self.editing[0]
        self.editing = None
        conversation = self.conversation
        carried = conversation.context_of(number - 1)
        conversation.branch_at(number - 1)
        waiting = (*carried, *self.context)
        images = tuple(self.images)
        before = len(conversation.history)
        await self.answer(
            lambda renderer: conversation.send(text, renderer, context=waiting, images=images)
        )
        if len(conversation.history) > before:
            self.context, self.images = [], []

    async def _cmd_branches(self, _: str) -> None:
        from chatcli.branches import branches, tree_lines

        conversation = self.conversation
        messages = conversation.all_messages()
        if not messages:
            self.say("(no saved messages yet: branches start from saved ones)")
            return
        found = branches(messages, conversation.head)
        if len(found) == 1:
            self.say(f"one branch, {len(found[0].path)} messages (/retry and /edit N make more)")
            return
        self.say(f"{len(found)} branches (* active; /switch N continues on one):")
        for line in tree_lines(messages, conversation.head):
            self.say(line)

    async def _cmd_switch(self, argument: str) -> None:
        if not argument:
            await self._cmd_branches("")
            return
        if not argument.isdigit():
            raise UsageError("/switch N: N is a branch number of /branches")
        from chatcli.branches import preview

        branch = self.conversation.switch(int(argument))
        last = branch.leaf
        who = "you" if last.role == "user" else "answer"
        shown = f"{len(branch.path)} messages; last, {who}: {preview(last.content)}"
        self.say(f"branch {branch.number}: {shown}")

    async def _cmd_clear(self, _: str) -> None:
        self.session.output.erase_screen()
        self.session.output.cursor_goto(0, 0)
        self.session.output.flush()

    async def _cmd_exit(self, _: str) -> None:
        self.running = False

    def edit(self, initial: str) -> str:
        """Run $VISUAL/$EDITOR on ``initial`` and return what was saved."""
        editor = self.editor or "vi"
        with tempfile.TemporaryDirectory(prefix="chatcli-") as folder:
            path = Path(folder) / "message.md"
            path.write_text(initial)
            try:
                # The editor gets the terminal as it was, and the usual Ctrl-C.
                with _sigint_ignored(), self.type_ahead.suspended():
                    code = subprocess.call(
                        [*shlex.split(editor), str(path)],
                        preexec_fn=_default_sigint,  # the editor gets the usual Ctrl-C
                    )
            except OSError as exc:
                raise UsageError(
                    f"cannot run the editor {editor!r}: {exc.strerror or exc}"
                ) from None
            if code != 0:
                raise UsageError(f"the editor {editor!r} exited with status {code}; nothing sent")
            return path.read_text()


def wrap(text: str, width: int) -> str:
    """``text`` made safe for the terminal, its lines broken between words to fit ``width``
    columns; a word longer than that (a URL) is kept whole, and fenced code is left as it is."""
    lines: list[str] = []
    fenced = False
    for line in sanitize(text).split("\n"):
        fence = line.lstrip().startswith(("```", "~~~"))
        fenced = fenced != fence
        if fence or fenced or get_cwidth(line) <= width:
            lines.append(line)
            continue
        broken = textwrap.wrap(line, width, break_long_words=False, break_on_hyphens=False)
        lines += broken or [""]
    return "\n".join(lines)


class _TypeAhead:
    """Between prompts (an answer streaming, a command running), keys typed ahead are kept as
    they are: not echoed over the output, and Enter not turned into Ctrl-J.

    The terminal's line discipline would otherwise echo them into the answer and translate
    Enter (CR) into LF, which the prompt reads as Ctrl-J, "add a line": a question typed
    during an answer would not be sent by its Enter. With echo and that translation off, the
    next prompt shows the typed text and Enter sends it, as in a shell. The prompt itself
    puts the terminal in its own mode and back.
    """

    def __init__(self, fd: int | None) -> None:
        self._terminal = QuietTerminal(fd, keep_enter=True)
        # Ctrl-Z meanwhile: the shell gets the terminal as it was, and fg sets it up again.
        self._suspend = SuspendGuard(self._terminal.restore, self._terminal.off)

    def __enter__(self) -> None:
        self._terminal.off()
        if self._terminal.active:
            self._suspend.install()

    def __exit__(self, *exc: object) -> None:
        self._suspend.remove()
        self._terminal.restore()

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        """The terminal as it was, for a program chatcli runs (an editor)."""
        active = self._terminal.active
        self._terminal.restore()
        try:
            yield
        finally:
            if active:
                self._terminal.off()


def _terminal_fd() -> int | None:
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):
        return None
    return fd if os.isatty(fd) else None


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: nothing to guard
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
