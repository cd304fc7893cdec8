"""Providers: the registry by name, and the public classes.

``import chatcli.providers`` is cheap: provider modules import aiohttp only when they talk.

    >>> from chatcli.providers import Registry
    >>> registry = Registry.builtin()
    >>> registry.get("ollama").url
    'http://localhost:11434/v1'
    >>> registry.create("ollama").root
    'http://localhost:11434/v1'

A registry built for a run (:meth:`Registry.from_settings`) holds what configuring a provider
needs (the environment snapshot, the configured proxy and timeout, the stores), so that
:meth:`Registry.create` settles keys, URLs and proxies once, without reading the process.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

from chatcli.errors import ConfigError, check_url
from chatcli.providers.base import (
    AsyncGeneratorProvider,
    AsyncProvider,
    BaseProvider,
    Message,
    Messages,
    ProviderConfig,
    ProviderModelMixin,
    format_prompt,
)

if TYPE_CHECKING:
    from chatcli.config import Settings
    from chatcli.store import Stores

__all__ = [
    "AsyncGeneratorProvider",
    "AsyncProvider",
    "BaseProvider",
    "Message",
    "Messages",
    "ProviderConfig",
    "ProviderModelMixin",
    "Registry",
    "format_prompt",
    "get_provider",
]

#: Providers with a class of their own: name -> "module:Class", imported on first use.
_CLASSES: dict[str, str] = {
    "anthropic": "chatcli.providers.anthropic:Anthropic",
    "gptalk": "chatcli.providers.gptalk:GPTalk",
    "chatgptt": "chatcli.providers.chatgptt:ChatGptt",
    "opchatgpts": "chatcli.providers.opchatgpts:Opchatgpts",
    "fakegpt": "chatcli.providers.fakegpt:FakeGpt",
    "aichat": "chatcli.providers.aichat:Aichat",
    "local": "chatcli.providers.local:Local",
}


class Registry:
    """Provider classes by name: the built-in ones, plus those ``config.toml`` defines."""

    def __init__(
        self,
        entries: Mapping[str, type[BaseProvider] | str],
        *,
        env: Mapping[str, str] | None = None,
        proxy: str | None = None,
        timeout: float | None = None,
        stores: Stores | None = None,
    ) -> None:
        self._entries: dict[str, type[BaseProvider] | str] = dict(entries)
        #: The environment snapshot providers are configured from (keys, ``*_PROXY``, URLs).
        self.env: Mapping[str, str] = env if env is not None else {}
        #: The configured proxy (config.toml), weighed against ``NO_PROXY`` per provider.
        self.proxy = proxy
        #: The configured timeout, for providers created without one.
        self.timeout = timeout
        self.stores = stores

    @classmethod
    def from_settings(cls, settings: Settings, stores: Stores | None = None) -> Registry:
        """The registry of a run: built-ins and config.toml's providers, configured from
        ``settings`` (its environment snapshot, proxy and timeout) and ``stores``."""
        registry = cls.from_config(settings.providers)
        registry.env = settings.env
        registry.proxy = settings.proxy
        registry.timeout = settings.timeout
        registry.stores = stores
        return registry

    def create(
        self,
        name: str,
        *,
        base_url: str | None = None,
        proxy: str | None = None,
        timeout: float | None = None,
    ) -> BaseProvider:
        """An instance of provider ``name``, its key, URL and proxy settled now. ``proxy``
        (``--proxy``) wins; else the configured proxy or ``*_PROXY``, unless ``NO_PROXY``
        exempts the provider's root."""
        cls = self.get(name)
        return cls(
            cls.configure(
                self.env,
                base_url=base_url,
                proxy=proxy,
                configured_proxy=self.proxy,
                timeout=timeout if timeout is not None else self.timeout,
                stores=self.stores,
            )
        )

    @classmethod
    def builtin(cls) -> Registry:
        from chatcli.providers.openai import PRESETS, make_provider

        entries: dict[str, type[BaseProvider] | str] = {p.name: make_provider(p) for p in PRESETS}
        entries.update(_CLASSES)
        return cls(entries)

    @classmethod
    def from_config(cls, providers: Mapping[str, Mapping[str, Any]]) -> Registry:
        """The built-in registry with ``[providers.NAME]`` tables applied."""
        from chatcli.providers.openai import PRESETS, make_provider, preset_from_config

        registry = cls.builtin()
        presets = {p.name: p for p in PRESETS}
        for raw_name, table in providers.items():
            name = raw_name.strip().lower()  # names are matched case-insensitively
            kind = table.get("type")
            if name in presets and kind in (None, "openai"):
                registry._entries[name] = make_provider(
                    preset_from_config(name, table, presets[name])
                )
            elif kind == "openai":
                registry._entries[name] = make_provider(preset_from_config(name, table))
            elif name in registry._entries and kind is None:
                if "model" in table:  # a built-in class with another default model
                    base = registry.get(name)
                    registry._entries[name] = type(
                        base.__name__, (base,), {"default_model": str(table["model"])}
                    )
                if "base_url" in table:  # a web service's mirror (what --base-url does)
                    base = registry.get(name)
                    if base.kind == "offline":
                        raise ConfigError(f"providers.{name}.base_url: it runs in-process")
                    url = check_url(
                        str(table["base_url"]), what=f"providers.{name}.base_url", error=ConfigError
                    )
                    registry._entries[name] = type(base.__name__, (base,), {"url": url})
                # other settings of a built-in web provider are read where it is used
            elif kind is None:
                raise ConfigError(
                    f'providers.{name}: unknown provider; add type = "openai" to define it'
                )
            else:
                raise ConfigError(
                    f'providers.{name}: unknown type {kind!r} (only "openai" can be defined)'
                )
            # What its models hold, when the service does not say; the offline model's state
            # cache cap and rereading (local only; config.py checks that).
            overrides: dict[str, int | bool] = {
                k: int(table[k]) for k in ("context_length", "state_cache_mib") if k in table
            }
            if "reread" in table:
                overrides["reread"] = bool(table["reread"])
            if overrides:
                base = registry.get(name)
                registry._entries[name] = type(base.__name__, (base,), overrides)
        return registry

    def names(self) -> list[str]:
        return list(self._entries)

    def __iter__(self) -> Iterator[type[BaseProvider]]:
        for name in self._entries:
            yield self.get(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._entries

    def get(self, name: str) -> type[BaseProvider]:
        """The provider class called ``name`` (case-insensitive); a clear error if none is."""
        key = name.strip().lower()
        entry = self._entries.get(key)
        if entry is None:
            known = ", ".join(sorted(self._entries))
            raise ConfigError(f"unknown provider {name!r}; known providers: {known}")
        if isinstance(entry, str):
            module_name, _, class_name = entry.partition(":")
            entry = getattr(importlib.import_module(module_name), class_name)
            assert isinstance(entry, type) and issubclass(entry, BaseProvider)
            self._entries[key] = entry
        return entry


def get_provider(name: str) -> type[BaseProvider]:
    """A built-in provider class by name (the Python API's shortcut)."""
    return Registry.builtin().get(name)


#: The hosts of the web services chatcli grew out of: all five sites are offline today (README,
#: "Web chat services"). Their providers stay, for compatibility and for mirrors.
OFFLINE_SITES: Final[frozenset[str]] = frozenset(
    {"gptalk.net", "chatgptt.me", "opchatgpts.net", "chat-shared2.zhile.io", "chat-gpt.org"}
)


def site_offline(url: str) -> bool:
    from urllib.parse import urlsplit

    try:
        host = urlsplit(url).hostname
    except ValueError:
        return False
    return host in OFFLINE_SITES
