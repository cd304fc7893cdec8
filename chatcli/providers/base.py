"""The provider core: a provider is an instance, built from a typed configuration, that turns
a typed request into typed events.

::

    provider = Registry.builtin().create("ollama")        # or Ollama(ProviderConfig(...))
    request = ChatRequest(messages=(ChatMessage.text("user", "Hi"),), model="llama3.2")
    async for event in provider.stream(request):          # TextDelta, Usage, Finish, ...
        ...

A provider class declares, as data, what it can do (:meth:`BaseProvider.capabilities`), the
``-o`` options it takes (:attr:`BaseProvider.option_specs`), and its models. It knows nothing
of the terminal: it yields events and raises :class:`chatcli.errors.ProviderError` subclasses
(which are ``RuntimeError`` too, as the seed providers' errors were).

The seed providers' Python API is kept exactly, as a thin layer over :meth:`stream`::

    async for text in GPTalk.create_async_generator(model, messages, proxy=None, **kwargs): ...
    text = await Aichat.create_async(model, messages, proxy=None, **kwargs)

There, ``kwargs`` may hold ``base_url``, ``api_key``, ``timeout``, ``store`` and ``cookies``
(the configuration), ``stream`` and ``temperature`` (the request), and the provider's options.
That layer is an edge like the command line: it reads the process environment (for proxies,
keys and directories) once per call. Nothing below it does.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Final

from chatcli.core import (
    Capabilities,
    ChatMessage,
    ChatRequest,
    Event,
    Finish,
    Message,
    Messages,
    OptionSpec,
    TextDelta,
    check_options,
)
from chatcli.errors import ModelNotSupportedError, UsageError

if TYPE_CHECKING:
    from chatcli.store import Stores

log = logging.getLogger("chatcli.providers")

#: A conversation that surely fills this much of a known context is warned about first.
CONTEXT_WARNING: Final = 0.8

__all__ = [
    "AsyncGeneratorProvider",
    "AsyncProvider",
    "BaseProvider",
    "Message",
    "Messages",
    "ProviderConfig",
    "ProviderModelMixin",
    "check_messages",
    "format_prompt",
]


def check_messages(messages: Sequence[Any], provider: str) -> None:
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


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """How one provider instance talks to its service; settled before it is built."""

    #: The service root to use instead of the provider's own (``--base-url``, config).
    base_url: str | None = None
    #: The credential to send, already looked up (never read from the environment later).
    api_key: str | None = field(default=None, repr=False)
    #: The proxy to go through, already chosen; ``None`` connects directly.
    proxy: str | None = None
    #: Seconds to connect and of silence while reading; ``None``: the defaults. No total limit.
    timeout: float | None = None
    #: Where cookies and provider state live (web providers; the local model's ``models/``).
    stores: Stores | None = None
    #: Cookies to send instead of the stored ones (the seed Aichat's ``cookies=``).
    cookies: Mapping[str, str] | None = field(default=None, repr=False)


#: Keyword arguments of the seed API that configure the provider rather than the request.
_CONFIG_KWARGS = ("base_url", "api_key", "timeout", "store", "cookies")


class BaseProvider:
    """A provider: class attributes declare what it is; an instance talks to its service."""

    #: Registry name, as typed after ``-p``.
    name: ClassVar[str] = ""
    #: The service's home (for web providers) or API root (for API providers).
    url: ClassVar[str] = ""
    #: ``False`` marks a provider known to be broken; it stays selectable but is flagged.
    working: ClassVar[bool] = True
    #: Tokens its models' contexts hold, when known (``context_length`` in config.toml).
    context_length: ClassVar[int | None] = None
    supports_stream: ClassVar[bool] = False
    supports_system_message: ClassVar[bool] = False
    supports_message_history: ClassVar[bool] = False
    supports_gpt_35_turbo: ClassVar[bool] = False
    supports_gpt_4: ClassVar[bool] = False
    supports_images: ClassVar[bool] = False
    #: The biggest image it takes, in bytes as sent (base64-encoded); ``None``: no known limit.
    max_image_bytes: ClassVar[int | None] = None
    supports_tools: ClassVar[bool] = False
    #: Asks its service for the models it offers; otherwise :attr:`models` is the list.
    lists_models: ClassVar[bool] = False
    #: Needs credentials (an API key or cookies) to work at all.
    needs_auth: ClassVar[bool] = False
    #: Short label of the family shown by ``chatcli providers`` ("openai-compatible", "web").
    kind: ClassVar[str] = "web"
    #: The model used when none is given (also set by :class:`ProviderModelMixin`).
    default_model: ClassVar[str] = ""
    #: The models it offers, when it has a fixed list.
    models: ClassVar[Sequence[str]] = ()
    #: The ``-o`` options it takes.
    option_specs: ClassVar[tuple[OptionSpec, ...]] = ()
    #: Options it does not know are sent to the service as they are (the OpenAI protocol).
    open_options: ClassVar[bool] = False
    #: Keeps files under chatcli's data directory (cookies, login state, model files).
    uses_stores: ClassVar[bool] = False

    def __init__(self, config: ProviderConfig | None = None) -> None:
        self.config = config if config is not None else ProviderConfig()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.root!r}>"

    # -- what it is ---------------------------------------------------------------------------

    @classmethod
    def capabilities(cls) -> Capabilities:
        return Capabilities(
            stream=cls.supports_stream,
            system_message=cls.supports_system_message,
            message_history=cls.supports_message_history,
            images=cls.supports_images,
            tools=cls.supports_tools,
            model_listing=cls.lists_models,
        )

    @classmethod
    def root_url(cls, base_url: str | None = None) -> str:
        """Where requests go: ``base_url`` when given, else the provider's own URL."""
        return (base_url or cls.url).rstrip("/")

    @property
    def root(self) -> str:
        return self.root_url(self.config.base_url)

    @classmethod
    def configure(
        cls,
        env: Mapping[str, str],
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        proxy: str | None = None,
        configured_proxy: str | None = None,
        timeout: float | None = None,
        stores: Stores | None = None,
        cookies: Mapping[str, str] | None = None,
    ) -> ProviderConfig:
        """The configuration for this provider, with what the environment decides settled now:
        the proxy (``proxy`` wins; else ``configured_proxy`` or the ``*_PROXY`` variables,
        unless ``NO_PROXY`` exempts the root). Subclasses also settle keys and URLs here."""
        from chatcli.providers.proxy import resolve_proxy

        root = cls.root_url(base_url)
        chosen = resolve_proxy(root, proxy, env, configured=configured_proxy) if root else None
        return ProviderConfig(
            base_url=base_url,
            api_key=api_key,
            proxy=chosen,
            timeout=timeout,
            stores=stores,
            cookies=cookies,
        )

    def describe(self) -> dict[str, Any]:
        """Plain facts about the provider, for ``chatcli providers --json``."""
        caps = self.capabilities()
        return {
            "name": self.name,
            "kind": self.kind,
            "url": (self.config.base_url or self.url).rstrip("/"),
            "working": self.working,
            "supports_stream": caps.stream,
            "supports_system_message": caps.system_message,
            "supports_message_history": caps.message_history,
            "supports_gpt_35_turbo": self.supports_gpt_35_turbo,
            "supports_images": caps.images,
            "supports_tools": caps.tools,
            "lists_models": caps.model_listing,
            "needs_auth": self.needs_auth,
            "default_model": self.default_model or None,
            "options": [spec.name for spec in self.option_specs] or None,
        }

    # -- options and models -------------------------------------------------------------------

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """``options`` if this provider takes them; else a usage error naming those it takes."""
        return check_options(
            options, cls.option_specs, provider=cls.name, open_ended=cls.open_options
        )

    @classmethod
    def resolve_model(cls, model: str | None) -> str:
        """The model this provider will use for ``model`` (``None``/empty: the default)."""
        return model or cls.default_model

    def check_model(self, model: str) -> None:
        """Refuse a model this provider surely cannot use, before any request (``/model``).
        Most cannot tell without asking their service: they accept anything."""

    def preflight(self) -> None:
        """Raise now what would stop the request before it leaves (no API key, a missing
        runtime). Checked before the question is stored: such a failure leaves no session."""

    def context_tokens(self, options: Mapping[str, Any], model: str | None = None) -> int | None:
        """How many tokens the model's context holds with these options, when the provider
        knows (``context_length`` in its config.toml table; else a service's model may hold
        anything: ``None``)."""
        return self.context_length

    def count_tokens(
        self, text: str, options: Mapping[str, Any], model: str | None = None
    ) -> int | None:
        """``text``'s tokens counted by the model's own tokenizer, where the provider has it
        (``None``: it cannot count, only estimate)."""
        return None

    def check_fits(
        self,
        messages: Sequence[ChatMessage],
        options: Mapping[str, Any],
        model: str | None = None,
    ) -> None:
        """Refuse a conversation that surely cannot fit the model's context, before anything
        is stored or sent. The estimate is low on purpose (four bytes a token; real text
        takes more tokens), so that only what certainly overflows is refused."""
        limit = self.context_tokens(options, model)
        if limit is None:
            return
        estimate = sum(len(m.content.encode("utf-8", "surrogatepass")) for m in messages) // 4
        if estimate >= limit:
            raise UsageError(
                f"{self.name}: the input is at least {estimate:,} tokens, more than the "
                f"{limit:,} its model's context holds; shorten it, or use a provider with a "
                f"larger context (-p NAME)"
            )
        if estimate >= limit * CONTEXT_WARNING:
            log.warning(
                "%s: this conversation already fills at least %d%% of the %s tokens the model's "
                "context holds; the answer may be cut (a new session, /new in the REPL, starts "
                "afresh)",
                self.name,
                estimate * 100 // limit,
                f"{limit:,}",
            )

    async def pick_model(self, model: str | None) -> str:
        """The model to use, where finding it may need the service (an API that lists models)."""
        return self.resolve_model(model)

    async def list_models(self) -> list[str]:
        """The models it offers: its fixed list (providers that ask their service override)."""
        return list(self.models) or ([self.default_model] if self.default_model else [])

    # -- talking --------------------------------------------------------------------------------

    def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        """Ask; yield the answer as events, ending with a :class:`~chatcli.core.Finish`."""
        seed = _seed_override(type(self))
        if seed is not None:
            events: AsyncIterator[Event] = seed(self, request)
            return events
        raise NotImplementedError(f"{type(self).__name__} does not implement stream()")

    # -- the seed API's edge ----------------------------------------------------------------------

    @classmethod
    async def _seed_call(
        cls, model: str, messages: Messages, proxy: str | None, kwargs: Mapping[str, Any]
    ) -> tuple[BaseProvider, ChatRequest]:
        """An instance and a request from a seed-style call (``proxy`` and ``**kwargs``)."""
        from chatcli.config import environment

        check_messages(messages, cls.name)
        options = dict(kwargs)
        settings = {key: options.pop(key) for key in _CONFIG_KWARGS if key in options}
        stream = bool(options.pop("stream", True))
        temperature = options.pop("temperature", None)
        stores = settings.get("store")
        if stores is None and cls.uses_stores:
            stores = default_stores()
        provider = cls(
            cls.configure(
                environment(),
                base_url=settings.get("base_url"),
                api_key=settings.get("api_key"),
                proxy=proxy,
                timeout=settings.get("timeout"),
                stores=stores,
                cookies=settings.get("cookies"),
            )
        )
        request = ChatRequest(
            messages=tuple(ChatMessage.from_dict(m) for m in messages),
            model=await provider.pick_model(model),
            temperature=float(temperature) if temperature is not None else None,
            options=cls.check_options(options),
            stream=stream,
        )
        return provider, request


def default_stores() -> Stores:
    """The stores the process environment points at (``CHATCLI_HOME`` or the platform's
    directories, with config.toml's ``[cookies]`` opt-in): for the seed API, and for providers
    built without stores. An edge, like the command line: it reads the environment."""
    from chatcli.config import Paths, environment, load_settings
    from chatcli.store import Stores

    env = environment()
    paths = Paths.from_env(env)
    return Stores.for_settings(paths, load_settings(paths, env))


def _seed_override(cls: type[BaseProvider]) -> Any:
    """For a class written to the seed API alone (it overrides ``create_async_generator`` or
    ``create_async`` but not :meth:`BaseProvider.stream`): its events, from its text."""
    generator = getattr(cls, "create_async_generator", None)
    if generator is not None and generator.__func__ is not _SEED_GENERATOR:
        return _events_from_generator
    whole = getattr(cls, "create_async", None)
    if whole is not None and whole.__func__ is not _SEED_WHOLE:
        return _events_from_whole
    return None


async def _events_from_generator(
    provider: BaseProvider, request: ChatRequest
) -> AsyncIterator[Event]:
    kwargs = _seed_kwargs(provider, request)
    stream = type(provider).create_async_generator(  # type: ignore[attr-defined]
        request.model, request.plain_messages(), provider.config.proxy, **kwargs
    )
    async for text in stream:
        if text:
            yield TextDelta(str(text))
    yield Finish()


async def _events_from_whole(provider: BaseProvider, request: ChatRequest) -> AsyncIterator[Event]:
    kwargs = _seed_kwargs(provider, request)
    text = await type(provider).create_async(  # type: ignore[attr-defined]
        request.model, request.plain_messages(), provider.config.proxy, **kwargs
    )
    if text:
        yield TextDelta(str(text))
    yield Finish()


def _seed_kwargs(provider: BaseProvider, request: ChatRequest) -> dict[str, Any]:
    config = provider.config
    kwargs: dict[str, Any] = dict(request.options)
    kwargs["stream"] = request.stream
    for key, value in (
        ("temperature", request.temperature),
        ("base_url", config.base_url),
        ("api_key", config.api_key),
        ("timeout", config.timeout),
        ("store", config.stores),
        ("cookies", config.cookies),
    ):
        if value is not None:
            kwargs[key] = value
    return kwargs


class AsyncGeneratorProvider(BaseProvider):
    """A provider whose service streams. Seed API: ``create_async_generator`` yields text."""

    supports_stream = True

    @classmethod
    async def create_async_generator(
        cls, model: str, messages: Messages, proxy: str | None = None, **kwargs: Any
    ) -> AsyncGenerator[str, None]:
        """Yield the answer's text as it arrives (the seed providers' API)."""
        provider, request = await cls._seed_call(model, messages, proxy, kwargs)
        async for event in provider.stream(request):
            if isinstance(event, TextDelta):
                yield event.text


class AsyncProvider(BaseProvider):
    """A provider whose service answers in one piece. Seed API: ``create_async`` returns it."""

    supports_stream = False

    @classmethod
    async def create_async(
        cls, model: str, messages: Messages, proxy: str | None = None, **kwargs: Any
    ) -> str:
        """The whole answer's text (the seed providers' API)."""
        provider, request = await cls._seed_call(model, messages, proxy, kwargs)
        pieces = [e.text async for e in provider.stream(request) if isinstance(e, TextDelta)]
        return "".join(pieces)


_SEED_GENERATOR = AsyncGeneratorProvider.create_async_generator.__func__  # type: ignore[attr-defined]
_SEED_WHOLE = AsyncProvider.create_async.__func__  # type: ignore[attr-defined]


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

    def check_model(self, model: str) -> None:
        self.get_model(model)
