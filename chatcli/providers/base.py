"""The provider core: base classes, capability flags, ``format_prompt`` and the model mixin.

A provider is a small class with class attributes for its capabilities and one classmethod that
talks to its service. The seed providers' Python API is kept exactly::

    async for text in GPTalk.create_async_generator(model, messages, proxy=None, **kwargs): ...
    text = await Aichat.create_async(model, messages, proxy=None, **kwargs)

Both kinds can be driven the same way through :meth:`BaseProvider.stream`, which is what the
engine uses. Providers know nothing of the terminal; they yield text and raise
:class:`chatcli.errors.ProviderError` subclasses.

Keyword arguments every provider accepts (the engine passes them; unknown ones are ignored or, for
the OpenAI protocol, sent to the service as extra body fields):

``base_url``   the service root to talk to instead of the built-in one
``timeout``    seconds for connecting and for silence while reading (no total limit)
``stream``     ``False`` asks for one whole reply where the protocol has a choice
``temperature``  sampling temperature, where the protocol has one
``store``      a :class:`chatcli.store.Stores` for cookies and provider state (web providers;
               default: the stores ``CHATCLI_HOME`` or the platform's data dir point at)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, ClassVar, Final, Literal, TypedDict

from chatcli.errors import ModelNotSupportedError, UsageError

Role = Literal["system", "user", "assistant"]


class Message(TypedDict):
    """One chat message, as every seed protocol exchanges them."""

    role: str
    content: str


#: A conversation: oldest message first.
Messages = Sequence[Message]


def check_messages(messages: Messages, provider: str) -> None:
    """Refuse an empty conversation: there is nothing to ask."""
    if not messages:
        raise UsageError(f"{provider}: no messages to send")


def format_prompt(messages: Messages) -> str:
    """Flatten a conversation into one prompt for services that take a single text.

    One message gives its content unchanged. Otherwise each message becomes ``Role: content``
    (the role capitalised), lines are joined by ``\\n`` and ``\\nAssistant:`` is appended.
    """
    if len(messages) == 1:
        return messages[0]["content"]
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n".join(lines) + "\nAssistant:"


class BaseProvider:
    """Capability flags shared by every provider. Subclasses set what applies."""

    #: Registry name, as typed after ``-p``.
    name: ClassVar[str] = ""
    #: The service's home (for web providers) or API root (for API providers).
    url: ClassVar[str] = ""
    #: ``False`` marks a provider known to be broken; it stays selectable but is flagged.
    working: ClassVar[bool] = True
    supports_stream: ClassVar[bool] = False
    supports_system_message: ClassVar[bool] = False
    supports_message_history: ClassVar[bool] = False
    supports_gpt_35_turbo: ClassVar[bool] = False
    supports_gpt_4: ClassVar[bool] = False
    #: Needs credentials (an API key or cookies) to work at all.
    needs_auth: ClassVar[bool] = False
    #: Short label of the family shown by ``chatcli providers`` ("openai-compatible", "web").
    kind: ClassVar[str] = "web"
    #: The model used when none is given (also set by :class:`ProviderModelMixin`).
    default_model: ClassVar[str] = ""

    @classmethod
    def stream(
        cls, model: str, messages: Messages, *, proxy: str | None = None, **kwargs: Any
    ) -> AsyncIterator[str]:
        """Yield the answer's text in pieces, whichever kind of provider this is."""
        raise NotImplementedError

    @classmethod
    def resolve_model(cls, model: str | None) -> str:
        """The model this provider will use for ``model`` (``None``/empty: the default)."""
        return model or cls.default_model

    @classmethod
    def check_model(cls, model: str, *, data_dir: Any = None) -> None:
        """Refuse a model this provider surely cannot use, before any request (``/model``).
        Most cannot tell without asking their service: they accept anything."""

    @classmethod
    async def pick_model(
        cls,
        model: str | None,
        *,
        proxy: str | None = None,
        base_url: str | None = None,
        timeout: float | None = None,
    ) -> str:
        """The model to use, where finding it may need the service (an API that lists models)."""
        return cls.resolve_model(model)

    @classmethod
    def root_url(cls, base_url: str | None = None) -> str:
        """Where requests go: ``base_url`` when given, else the provider's own URL."""
        return (base_url or cls.url).rstrip("/")

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """Plain facts about the provider, for ``chatcli providers --json``."""
        return {
            "name": cls.name,
            "kind": cls.kind,
            "url": cls.url,
            "working": cls.working,
            "supports_stream": cls.supports_stream,
            "supports_system_message": cls.supports_system_message,
            "supports_message_history": cls.supports_message_history,
            "supports_gpt_35_turbo": cls.supports_gpt_35_turbo,
            "needs_auth": cls.needs_auth,
            "default_model": cls.default_model or None,
        }


class AsyncGeneratorProvider(BaseProvider):
    """A provider whose service streams: it yields text as it arrives."""

    supports_stream = True

    @classmethod
    def create_async_generator(
        cls, model: str, messages: Messages, proxy: str | None = None, **kwargs: Any
    ) -> AsyncIterator[str]:
        raise NotImplementedError

    @classmethod
    def stream(
        cls, model: str, messages: Messages, *, proxy: str | None = None, **kwargs: Any
    ) -> AsyncIterator[str]:
        return cls.create_async_generator(model, messages, proxy=proxy, **kwargs)


class AsyncProvider(BaseProvider):
    """A provider whose service answers in one piece: ``create_async`` returns the whole text."""

    supports_stream = False

    @classmethod
    async def create_async(
        cls, model: str, messages: Messages, proxy: str | None = None, **kwargs: Any
    ) -> str:
        raise NotImplementedError

    @classmethod
    async def _stream_whole(
        cls, model: str, messages: Messages, proxy: str | None, kwargs: Mapping[str, Any]
    ) -> AsyncIterator[str]:
        text = await cls.create_async(model, messages, proxy=proxy, **kwargs)
        if text:
            yield text

    @classmethod
    def stream(
        cls, model: str, messages: Messages, *, proxy: str | None = None, **kwargs: Any
    ) -> AsyncIterator[str]:
        return cls._stream_whole(model, messages, proxy, kwargs)


class ProviderModelMixin:
    """Model names a provider offers: ``models``, ``model_aliases`` and the ``default_model``."""

    default_model: ClassVar[str] = ""
    models: ClassVar[Sequence[str]] = ()
    model_aliases: ClassVar[Mapping[str, str]] = {}
    name: ClassVar[str] = ""

    @classmethod
    def get_model(cls, model: str | None) -> str:
        """Empty gives the default; an alias maps to its model; an unknown name is an error."""
        if not model:
            return cls.default_model
        model = cls.model_aliases.get(model, model)
        if cls.models and model not in cls.models:
            known = ", ".join(cls.models)
            raise ModelNotSupportedError(
                f"model {model!r} is not supported (choose one of: {known})", provider=cls.name
            )
        return model

    @classmethod
    def resolve_model(cls, model: str | None) -> str:
        return cls.get_model(model)

    @classmethod
    def check_model(cls, model: str, *, data_dir: Any = None) -> None:
        cls.get_model(model)


#: Keyword arguments with a fixed meaning for every provider; never service options.
CORE_KWARGS: Final = frozenset(
    {
        "model",
        "messages",
        "proxy",
        "base_url",
        "timeout",
        "stream",
        "temperature",
        "store",
        "cookies",
        "api_key",
    }
)
