"""The typed core every provider speaks: messages made of parts, a request, options, events.

A provider instance turns one :class:`ChatRequest` into a stream of :data:`Event` objects::

    request = ChatRequest(messages=(ChatMessage.text("user", "Hi"),), model="llama3.2")
    async for event in provider.stream(request):
        match event:
            case TextDelta(text=text): ...        # a piece of the answer
            case ReasoningDelta(text=text): ...   # a piece of what the model thought first
            case Usage(): ...                      # token counts, when the service gives them
            case Finish(reason=reason): ...        # the answer ended, and why

A stream that stops without a :class:`Finish` did not end: the engine reports it as
interrupted. Nothing here does I/O or imports a third-party module.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias, TypedDict

from chatcli.errors import UsageError

Role = Literal["system", "user", "assistant", "tool"]


class Message(TypedDict):
    """One chat message as the seed protocols exchange them: a role and its text."""

    role: str
    content: str


#: A conversation in the seed providers' shape: oldest message first.
Messages = Sequence[Message]


# -- messages -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TextPart:
    """Text in a message."""

    text: str


@dataclass(frozen=True, slots=True)
class ImagePart:
    """An image in a message: its bytes, as read, and their media type (``image/png``,
    ``image/jpeg``, ``image/webp`` or ``image/gif``, recognised by the bytes themselves).
    ``name`` says where it came from (a file's name), for notes and ``--dry-run``. An image on
    the web is sent as its address instead (``url``; the service fetches it): then ``data`` and
    ``media_type`` are empty."""

    data: bytes = field(repr=False)
    media_type: str
    name: str = ""
    url: str = ""

    @classmethod
    def from_url(cls, url: str) -> ImagePart:
        return cls(b"", "", url, url)

    @property
    def size(self) -> int:
        return len(self.data)

    def base64(self) -> str:
        import base64

        return base64.b64encode(self.data).decode("ascii")

    def data_url(self) -> str:
        """The image as a ``data:`` URL (the OpenAI protocol's ``image_url``), or its address."""
        return self.url or f"data:{self.media_type};base64,{self.base64()}"

    def note(self) -> str:
        """A short note of the image for the stored text: ``[image: cat.png, 123 KB]``."""
        if self.url:
            return f"[image: {self.url}]"
        return f"[image: {self.name or self.media_type}, {format_size(self.size)}]"


def format_size(size: int) -> str:
    """``812 bytes``, ``123 KB``, ``4.2 MB`` (powers of 1024)."""
    if size < 1024:
        return f"{size} bytes"
    if size < 1024 * 1024:
        return f"{round(size / 1024)} KB"
    return f"{size / (1024 * 1024):.1f} MB"


#: What a message is made of: text and images (files may join this union).
Part: TypeAlias = TextPart | ImagePart


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool offered to the model: its name, what it does, and the JSON Schema (an object)
    its arguments follow."""

    name: str
    description: str
    parameters: Mapping[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A whole tool call the model made: ``arguments`` is the JSON text it sent, as sent
    (checking it is the caller's: a model may send malformed JSON, and is told so)."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of a conversation: a role and its parts, in order. An assistant message
    may carry the tool calls the model made (``tool_calls``); a ``tool`` message is the result
    of one, its text in ``parts`` and the call it answers in ``tool_call_id``."""

    role: Role
    parts: tuple[Part, ...]
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""

    @classmethod
    def tool_result(cls, call_id: str, text: str) -> ChatMessage:
        return cls("tool", (TextPart(text),), tool_call_id=call_id)

    @classmethod
    def text(cls, role: Role, text: str) -> ChatMessage:
        return cls(role, (TextPart(text),))

    @classmethod
    def with_images(cls, role: Role, text: str, images: Sequence[ImagePart]) -> ChatMessage:
        """A message of ``images`` (first, as vision models read best) and then ``text``."""
        parts: tuple[Part, ...] = (*images, TextPart(text))
        return cls(role, parts)

    @classmethod
    def from_dict(cls, message: Mapping[str, Any]) -> ChatMessage:
        """A ``{"role": ..., "content": ...}`` dict (the seed shape) as a message."""
        role = message.get("role")
        content = message.get("content")
        if role not in ("system", "user", "assistant"):
            raise UsageError(f"a message's role must be system, user or assistant, not {role!r}")
        if not isinstance(content, str):
            raise UsageError(f"a message's content must be text, not {type(content).__name__}")
        return cls.text(role, content)

    @property
    def content(self) -> str:
        """The message's text: its text parts joined."""
        return "".join(part.text for part in self.parts if isinstance(part, TextPart))

    @property
    def images(self) -> tuple[ImagePart, ...]:
        """The message's images, in order (none for a message of text)."""
        return tuple(part for part in self.parts if isinstance(part, ImagePart))

    def as_dict(self) -> Message:
        return {"role": self.role, "content": self.content}


def without_tools(messages: Sequence[ChatMessage]) -> tuple[ChatMessage, ...]:
    """``messages`` for a provider that cannot call tools: an answer's rounds of tool calls
    become the text written around them (the calls and their results are left out), and an
    answer split by its rounds is one message again."""
    if not any(m.tool_calls or m.role == "tool" for m in messages):
        return tuple(messages)
    out: list[ChatMessage] = []
    joining = False  # the last message is an answer whose rounds are being joined
    for message in messages:
        if message.role == "tool":
            continue
        if message.role == "assistant" and joining and out and out[-1].role == "assistant":
            text = "\n\n".join(t for t in (out[-1].content, message.content) if t.strip())
            out[-1] = ChatMessage.text("assistant", text)
        elif message.tool_calls:
            out.append(ChatMessage.text("assistant", message.content))
        else:
            out.append(message)
        joining = bool(message.tool_calls)
    return tuple(m for m in out if m.role != "assistant" or m.content.strip())


# -- options --------------------------------------------------------------------------------------

#: Keys with a meaning of their own in every request, never provider options (``-o``): why each
#: is refused there. The one list of them.
RESERVED_OPTIONS: Final[Mapping[str, str]] = {
    "model": "use -m/--model",
    "messages": "the conversation is built by chatcli",
    "stream": "use --no-stream",
    "proxy": "use --proxy",
    "timeout": "use --timeout",
    "base_url": "use --base-url",
    "temperature": "use --temperature",
    "api_key": "set the provider's key variable",
    "store": "reserved",
    "cookies": "use chatcli cookies import",
}

_TYPE_WORDS: Final[dict[type, str]] = {
    int: "a whole number",
    float: "a number",
    str: "text",
    bool: "true or false",
    list: "a list",
    dict: "an object",
}


@dataclass(frozen=True, slots=True)
class OptionSpec:
    """One ``-o KEY VALUE`` option a provider takes, and the JSON types its value may have."""

    name: str
    types: tuple[type, ...]
    help: str = ""

    def check(self, value: Any, provider: str) -> Any:
        """``value`` if it has one of :attr:`types` (an int passes for a float); else an error."""
        wanted = self.types
        ok = isinstance(value, wanted) and not (isinstance(value, bool) and bool not in wanted)
        if not ok and float in wanted and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            words = " or ".join(_TYPE_WORDS.get(t, t.__name__) for t in wanted)
            raise UsageError(f"{provider}: -o {self.name} {value!r}: expected {words}")
        return value


def check_options(
    options: Mapping[str, Any],
    specs: Iterable[OptionSpec],
    *,
    provider: str,
    open_ended: bool = False,
) -> dict[str, Any]:
    """``options`` checked against the ``specs`` a provider declares.

    An unknown key is a usage error naming the options the provider takes; with ``open_ended``
    (a protocol that forwards extra fields to its service) unknown keys pass as they are.
    Reserved keys are always refused.
    """
    known = {spec.name: spec for spec in specs}
    checked: dict[str, Any] = {}
    for key, value in options.items():
        if key in RESERVED_OPTIONS:
            raise UsageError(f"-o {key}: not a provider option ({RESERVED_OPTIONS[key]})")
        spec = known.get(key)
        if spec is not None:
            checked[key] = spec.check(value, provider)
        elif open_ended:
            checked[key] = value
        else:
            takes = f"known: {', '.join(known)}" if known else "it takes no -o options"
            raise UsageError(f"{provider}: unknown option -o {key} ({takes})")
    return checked


# -- the request ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """What one provider is asked: the conversation, the model, and how to answer."""

    messages: tuple[ChatMessage, ...]
    #: The model to use, already chosen (the engine resolves defaults before asking).
    model: str = ""
    temperature: float | None = None
    #: Provider options (``-o``), checked against what the provider declares.
    options: Mapping[str, Any] = field(default_factory=dict)
    #: ``False`` asks for one whole reply where the protocol has a choice.
    stream: bool = True
    #: Tools the model may call (only for a provider whose capabilities include tools).
    tools: tuple[ToolSpec, ...] = ()
    #: ``none``: the tools are described but the model is asked to answer without calling
    #: any (the last round a question may take).
    tool_choice: Literal["auto", "none"] = "auto"

    def plain_messages(self) -> list[Message]:
        """The conversation as ``{"role", "content"}`` dicts, for protocols that take text."""
        return [message.as_dict() for message in self.messages]


# -- events ---------------------------------------------------------------------------------------

FinishReason = Literal["stop", "length", "context", "content_filter", "repetition", "tool_calls"]


@dataclass(frozen=True, slots=True)
class TextDelta:
    """The next piece of the answer."""

    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """The next piece of what the model thought before answering (never part of the answer)."""

    text: str


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts for the turn, as the service reported them (or estimated, when marked)."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    estimated: bool = False


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a tool call the model makes: its arguments arrive as JSON text in pieces."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class Finish:
    """The answer ended, and why: ``stop`` (complete), ``length`` (cut at the token limit),
    ``context`` (cut by the context size), ``content_filter``, ``repetition`` (stopped by
    chatcli because the model repeated itself verbatim), ``tool_calls``. ``raw`` is the
    service's own word for it, when it gave one."""

    reason: FinishReason = "stop"
    raw: str | None = None


Event: TypeAlias = TextDelta | ReasoningDelta | Usage | ToolCallDelta | Finish


@dataclass(slots=True)
class _PartialCall:
    id: str | None = None
    name: str | None = None
    pieces: list[str] = field(default_factory=list)
    #: Characters of arguments so far (kept: summing the pieces each time would be quadratic).
    size: int = 0


class ToolCalls:
    """The tool calls of one answer, put together from their pieces (:class:`ToolCallDelta`,
    keyed by index; several calls may come at once, their pieces interleaved), bounded: at
    most :attr:`MAX_CALLS` calls of at most :attr:`MAX_ARGUMENTS` characters of arguments each.
    Past a bound :meth:`feed` raises :class:`ValueError` saying which."""

    MAX_CALLS: Final = 64
    MAX_ARGUMENTS: Final = 1024 * 1024
    #: Tool names are at most 64 characters in every protocol; a model's may be longer (and
    #: is then no tool's), never without end.
    MAX_NAME: Final = 256

    def __init__(self) -> None:
        self._calls: dict[int, _PartialCall] = {}

    def __bool__(self) -> bool:
        return bool(self._calls)

    def feed(self, delta: ToolCallDelta) -> None:
        call = self._calls.get(delta.index)
        if call is None:
            if len(self._calls) >= self.MAX_CALLS:
                raise ValueError(f"more than {self.MAX_CALLS} tool calls in one answer")
            call = self._calls[delta.index] = _PartialCall()
        if delta.id:
            call.id = delta.id
        if delta.name and delta.name != call.name:  # (some servers repeat it with each piece)
            call.name = (call.name or "") + delta.name
            if len(call.name) > self.MAX_NAME:
                raise ValueError(f"a tool call's name passed {self.MAX_NAME} characters")
        if delta.arguments:
            call.size += len(delta.arguments)
            if call.size > self.MAX_ARGUMENTS:
                raise ValueError(
                    f"a tool call's arguments passed {self.MAX_ARGUMENTS:,} characters"
                )
            call.pieces.append(delta.arguments)

    def calls(self) -> list[ToolCall]:
        """The calls in index order; one with no id gets one of its own (unique: some protocols
        want every call of a conversation told apart), one with no name is a
        :class:`ValueError` (it cannot be run, nor answered by name)."""
        import secrets

        whole = []
        for index in sorted(self._calls):
            call = self._calls[index]
            if not call.name:
                raise ValueError(f"tool call {index} has no name")
            ident = call.id or f"call_{secrets.token_hex(8)}"
            whole.append(ToolCall(ident, call.name, "".join(call.pieces)))
        return whole


#: The OpenAI protocol's ``finish_reason`` values (and a few servers' variants) as reasons.
FINISH_REASONS: Final[Mapping[str, FinishReason]] = {
    "stop": "stop",
    "eos": "stop",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "length": "length",
    "max_tokens": "length",
    "content_filter": "content_filter",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "tool_use": "tool_calls",
}


def finish_from(raw: str | None) -> Finish:
    """A :class:`Finish` from a service's reason; an unknown word counts as a normal stop."""
    return Finish(FINISH_REASONS.get(raw or "stop", "stop"), raw)


# -- capabilities ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a provider can do, as data: shown by ``chatcli providers`` and checked by callers."""

    stream: bool = False
    system_message: bool = False
    message_history: bool = False
    images: bool = False
    tools: bool = False
    #: Asks its service which models exist (``chatcli models``); else it has a fixed list.
    model_listing: bool = False


# -- what a conversation is asked to be -----------------------------------------------------------


@dataclass(kw_only=True)
class ChatOptions:
    """What the caller chose for a conversation (``None``: not given, so settings decide).

    ``ask`` and ``repl`` build it from their shared options (``clikit.with_chat_options``),
    :class:`chatcli.Chat` from its arguments; ``chat.conversation_from`` applies it.
    """

    provider: str | None = None
    model: str | None = None
    system: str | None = None
    temperature: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    stream: bool = True
    proxy: str | None = None
    base_url: str | None = None
    timeout: float | None = None
    session: str | None = None
    continue_last: bool = False
    save: bool = True
    retries: int | None = None
    #: ``-t NAME``: a template (see :mod:`chatcli.templates`), and ``--var`` values for it.
    template: str | None = None
    variables: dict[str, str] = field(default_factory=dict)
    #: ``--tool``, ``--mcp``, ``--allow-tool``: tools the model may call (on top of config's).
    tools: list[str] = field(default_factory=list)
    mcp: list[str] = field(default_factory=list)
    allow_tools: list[str] = field(default_factory=list)
