"""Providers: the registry by name, and the public classes.

``import chatcli.providers`` is cheap: provider modules import aiohttp only when they talk.

    >>> from chatcli.providers import Registry
    >>> registry = Registry.builtin()
    >>> registry.get("ollama").url
    'http://localhost:11434/v1'
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any

from chatcli.errors import ConfigError
from chatcli.providers.base import (
    AsyncGeneratorProvider,
    AsyncProvider,
    BaseProvider,
    Message,
    Messages,
    ProviderModelMixin,
    format_prompt,
)

__all__ = [
    "AsyncGeneratorProvider",
    "AsyncProvider",
    "BaseProvider",
    "Message",
    "Messages",
    "ProviderModelMixin",
    "Registry",
    "format_prompt",
    "get_provider",
]

#: Providers with a class of their own: name -> "module:Class", imported on first use.
_CLASSES: dict[str, str] = {
    "gptalk": "chatcli.providers.gptalk:GPTalk",
    "chatgptt": "chatcli.providers.chatgptt:ChatGptt",
    "opchatgpts": "chatcli.providers.opchatgpts:Opchatgpts",
    "fakegpt": "chatcli.providers.fakegpt:FakeGpt",
    "aichat": "chatcli.providers.aichat:Aichat",
    "local": "chatcli.providers.local:Local",
}


class Registry:
    """Provider classes by name: the built-in ones, plus those ``config.toml`` defines."""

    def __init__(self, entries: Mapping[str, type[BaseProvider] | str]) -> None:
        self._entries: dict[str, type[BaseProvider] | str] = dict(entries)

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
                # other settings of a built-in web provider are read where it is used
            elif kind is None:
                raise ConfigError(
                    f'providers.{name}: unknown provider; add type = "openai" to define it'
                )
            else:
                raise ConfigError(
                    f'providers.{name}: unknown type {kind!r} (only "openai" can be defined)'
                )
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
