"""The OpenAI chat-completions protocol, written once, and the table of services that speak it.

Each service is a row of :data:`PRESETS` (name, API root, key variable); :func:`make_provider`
turns a row into a small provider class. ``config.toml`` adds rows of its own
(``[providers.NAME] type = "openai"``).

Protocol notes:

* ``POST {base}/chat/completions`` with ``model``, ``messages``, ``stream`` and any extra options
  (``-o max_tokens 100`` becomes ``"max_tokens": 100``). ``Authorization: Bearer KEY`` when a key
  is known.
* A streamed reply is SSE: ``choices[0].delta.content`` pieces, a ``finish_reason`` on the last
  choice, then ``data: [DONE]``. A stream that ends with neither is *interrupted*, not complete
  (proxies and crashing servers end streams early and cleanly). A payload with an ``error`` key
  is an in-band error.
* Some servers ignore ``stream: true`` and answer with one JSON object; that is accepted.
* ``GET {base}/models`` lists models as ``{"data": [{"id": ...}, ...]}``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final

from chatcli.errors import (
    ConfigError,
    MissingAuthError,
    ProtocolError,
    ProviderError,
    StreamInterruptedError,
    check_url,
    quote,
    redact_url,
)
from chatcli.providers.base import CORE_KWARGS, AsyncGeneratorProvider, Messages, check_messages

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger("chatcli.openai")


@dataclass(frozen=True, slots=True)
class Preset:
    """One OpenAI-compatible service."""

    name: str
    base_url: str
    #: The environment variable holding the API key, if the service takes one.
    key_env: str | None
    #: Without a key the service refuses every request, so chatcli says so before sending.
    key_required: bool
    default_model: str = ""
    #: A variable that moves the API root (``OPENAI_BASE_URL``), if the service has one.
    base_url_env: str | None = None
    description: str = ""


PRESETS: Final[tuple[Preset, ...]] = (
    Preset(
        "openai",
        "https://api.openai.com/v1",
        "OPENAI_API_KEY",
        True,
        "gpt-4o-mini",
        base_url_env="OPENAI_BASE_URL",
        description="OpenAI API",
    ),
    Preset("ollama", "http://localhost:11434/v1", "OLLAMA_API_KEY", False, description="Ollama"),
    Preset(
        "lmstudio", "http://localhost:1234/v1", "LMSTUDIO_API_KEY", False, description="LM Studio"
    ),
    Preset(
        "llamacpp", "http://localhost:8080/v1", "LLAMACPP_API_KEY", False,
        description="llama.cpp server",
    ),
    Preset("vllm", "http://localhost:8000/v1", "VLLM_API_KEY", False, description="vLLM"),
    Preset(
        "openrouter", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY", True,
        "openai/gpt-4o-mini", description="OpenRouter",
    ),
    Preset(
        "groq", "https://api.groq.com/openai/v1", "GROQ_API_KEY", True, "llama-3.1-8b-instant",
        description="Groq",
    ),
    Preset(
        "deepseek", "https://api.deepseek.com/v1", "DEEPSEEK_API_KEY", True, "deepseek-chat",
        description="DeepSeek",
    ),
    Preset(
        "mistral", "https://api.mistral.ai/v1", "MISTRAL_API_KEY", True, "mistral-small-latest",
        description="Mistral AI",
    ),
    Preset(
        "together", "https://api.together.xyz/v1", "TOGETHER_API_KEY", True,
        "meta-llama/Llama-3.3-70B-Instruct-Turbo", description="Together AI",
    ),
)  # fmt: skip


class OpenAICompatible(AsyncGeneratorProvider):
    """A service speaking the OpenAI chat-completions protocol. Subclasses are table rows."""

    kind = "openai-compatible"
    supports_stream = True
    supports_system_message = True
    supports_message_history = True
    key_env: ClassVar[str | None] = None
    key_required: ClassVar[bool] = False
    base_url_env: ClassVar[str | None] = None
    description: ClassVar[str] = ""

    # -- configuration ----------------------------------------------------------------------

    @classmethod
    def root_url(cls, base_url: str | None = None) -> str:  # the API root, for this family
        """``base_url``, else the service's variable (``OPENAI_BASE_URL``), else the row's URL."""
        root = base_url or (os.environ.get(cls.base_url_env) if cls.base_url_env else None)
        return (root or cls.url).rstrip("/")

    @classmethod
    def api_key(cls, api_key: str | None = None) -> str | None:
        """``api_key`` if given, else the value of the service's key variable."""
        if api_key:
            return api_key
        return (os.environ.get(cls.key_env) or None) if cls.key_env else None

    @classmethod
    def _headers(cls, key: str | None) -> dict[str, str]:
        from chatcli import __version__

        headers = {
            "Accept": "application/json, text/event-stream",
            "User-Agent": f"chatcli/{__version__}",
        }
        if key:
            headers["Authorization"] = f"Bearer {key}"
        elif cls.key_required:
            raise MissingAuthError(
                f"no API key: set {cls.key_env} (or api_key_env in config.toml)", provider=cls.name
            )
        return headers

    @classmethod
    @contextlib.asynccontextmanager
    async def _call(
        cls,
        method: str,
        path: str,
        *,
        base_url: str | None,
        api_key: str | None,
        proxy: str | None,
        timeout: float | None,
        body: Any = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One request to the API, its HTTP errors raised; failures while reading it mapped."""
        from chatcli.providers import http

        url = f"{cls.root_url(base_url)}/{path}"
        key = cls.api_key(api_key)
        headers = cls._headers(key)
        log.debug("%s %s", method, redact_url(url))
        with http.http_errors(cls.name, url):
            async with (
                http.open_session(base_url=url, proxy=proxy, timeout=timeout) as session,
                session.request(method, url, json=body, headers=headers) as response,
            ):
                await http.check_status(
                    response, cls.name, auth_hint=cls._auth_hint(), secrets=[key]
                )
                yield response

    @classmethod
    def _auth_hint(cls) -> str:
        return f"check {cls.key_env}" if cls.key_env else ""

    @classmethod
    def describe(cls) -> dict[str, Any]:
        facts = super().describe()
        facts["url"] = cls.root_url()
        facts["key_env"] = cls.key_env
        facts["key_set"] = bool(cls.api_key())
        facts["description"] = cls.description
        return facts

    # -- models -----------------------------------------------------------------------------

    @classmethod
    async def list_models(
        cls,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        proxy: str | None = None,
        timeout: float | None = None,
    ) -> list[str]:
        """The model ids the service offers (``GET /models``)."""
        from chatcli.providers import http

        async with cls._call(
            "GET", "models", base_url=base_url, api_key=api_key, proxy=proxy, timeout=timeout
        ) as response:
            data = await http.read_json(response, cls.name)
        items = data.get("data") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise ProtocolError(
                f"unexpected model list: {quote(json.dumps(data))}", provider=cls.name
            )
        ids = [item["id"] for item in items if isinstance(item, dict) and "id" in item]
        return sorted(str(i) for i in ids)

    @classmethod
    async def pick_model(
        cls,
        model: str | None,
        *,
        proxy: str | None = None,
        base_url: str | None = None,
        timeout: float | None = None,
        api_key: str | None = None,
    ) -> str:
        """``model``, else the configured default, else the first model the server lists."""
        if model or cls.default_model:
            return model or cls.default_model
        models = await cls.list_models(
            base_url=base_url, api_key=api_key, proxy=proxy, timeout=timeout
        )
        if not models:
            raise ConfigError(
                f"{cls.name}: no model given and the server lists none; pass -m MODEL"
            )
        log.debug("%s: no model given, using the first listed: %s", cls.name, models[0])
        return models[0]

    # -- chat -------------------------------------------------------------------------------

    @classmethod
    async def create_async_generator(
        cls,
        model: str,
        messages: Messages,
        proxy: str | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float | None = None,
        stream: bool = True,
        temperature: float | None = None,
        **options: Any,
    ) -> AsyncIterator[str]:
        """Yield the answer's text as the service sends it."""
        from chatcli.providers import http

        check_messages(messages, cls.name)
        model = await cls.pick_model(
            model, base_url=base_url, api_key=api_key, proxy=proxy, timeout=timeout
        )
        body: dict[str, Any] = {"model": model, "messages": list(messages), "stream": stream}
        if temperature is not None:
            body["temperature"] = temperature
        body.update({k: v for k, v in options.items() if k not in CORE_KWARGS})
        async with cls._call(
            "POST",
            "chat/completions",
            base_url=base_url,
            api_key=api_key,
            proxy=proxy,
            timeout=timeout,
            body=body,
        ) as response:
            # Servers do not always honour ``stream``: read what was sent, not what was asked.
            if "text/event-stream" in response.headers.get("Content-Type", ""):
                async for piece in cls._read_stream(response):
                    yield piece
            else:
                data = await http.read_json(response, cls.name)
                text = cls._whole_reply_text(data)
                if text:
                    yield text

    @classmethod
    async def _read_stream(cls, response: aiohttp.ClientResponse) -> AsyncIterator[str]:
        from chatcli.providers import http

        done = False
        finish_reason: str | None = None
        async for event in http.iter_sse(response):
            data = event.data.strip()
            if not data:
                continue
            if data == "[DONE]":
                done = True
                break
            try:
                chunk = json.loads(data)
            except ValueError:
                raise ProtocolError(
                    f"malformed JSON in the stream: {quote(data)}", provider=cls.name
                ) from None
            if not isinstance(chunk, dict):
                raise ProtocolError(f"unexpected stream event: {quote(data)}", provider=cls.name)
            if chunk.get("error"):
                message = http.error_message_from_body(data) or "error event in the stream"
                raise ProviderError(f"the service reported: {quote(message)}", provider=cls.name)
            choices = chunk.get("choices")
            if not isinstance(choices, list):
                raise ProtocolError(
                    f"stream event without choices: {quote(data)}", provider=cls.name
                )
            for choice in choices[:1]:  # n=1: one answer
                if not isinstance(choice, dict):
                    raise ProtocolError(f"malformed choice: {quote(data)}", provider=cls.name)
                delta = choice.get("delta") or {}
                content = delta.get("content") if isinstance(delta, dict) else None
                if isinstance(content, str) and content:
                    yield content
                if choice.get("finish_reason"):
                    finish_reason = str(choice["finish_reason"])
        if not done and finish_reason is None:
            raise StreamInterruptedError(
                "the stream ended before its end marker; the answer is incomplete",
                provider=cls.name,
            )
        if finish_reason == "length":
            log.warning(
                "%s: the answer was cut at the token limit (finish_reason=length)", cls.name
            )

    @classmethod
    def _whole_reply_text(cls, data: Any) -> str:
        try:
            message = data["choices"][0]["message"]
            content = message.get("content")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise ProtocolError(
                f"unexpected reply: {quote(json.dumps(data))}",
                provider=cls.name,
            ) from None
        if content is None:
            return ""
        if not isinstance(content, str):
            raise ProtocolError(
                f"reply content is not text: {quote(json.dumps(data))}", provider=cls.name
            )
        return content


def make_provider(preset: Preset) -> type[OpenAICompatible]:
    """A provider class for one row of the table."""
    attrs: dict[str, Any] = {
        "name": preset.name,
        "url": preset.base_url,
        "key_env": preset.key_env,
        "key_required": preset.key_required,
        "needs_auth": preset.key_required,
        "default_model": preset.default_model,
        "base_url_env": preset.base_url_env,
        "description": preset.description,
        "supports_gpt_35_turbo": preset.name == "openai",
        "__doc__": f"{preset.description or preset.name} (OpenAI-compatible).",
    }
    class_name = "".join(part.capitalize() for part in preset.name.replace("-", "_").split("_"))
    return type(class_name or "Custom", (OpenAICompatible,), attrs)


def preset_from_config(name: str, table: Mapping[str, Any], base: Preset | None = None) -> Preset:
    """A table row from ``[providers.NAME]`` in config.toml, over a built-in row if one exists."""
    base_url = table.get("base_url") or (base.base_url if base else None)
    if not base_url:
        raise ConfigError(f"providers.{name}: an OpenAI-compatible provider needs base_url")
    check_url(base_url, what=f"providers.{name}.base_url", error=ConfigError)
    key_env = table.get("api_key_env") or (base.key_env if base else None)
    return Preset(
        name=name,
        base_url=str(base_url),
        key_env=key_env,
        key_required=bool(table.get("api_key_env")) or (base.key_required if base else False),
        default_model=table.get("model") or (base.default_model if base else ""),
        base_url_env=None if table.get("base_url") else (base.base_url_env if base else None),
        description=base.description if base else f"{name} (config.toml)",
    )
