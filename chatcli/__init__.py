"""chatcli: a terminal chat client for language models, and a library under it.

The library works without the command line::

    import chatcli

    chat = chatcli.Chat(provider="ollama", model="llama3.2", session="work")
    print(chat.ask("What is a monad?").text)

See :mod:`chatcli.api` (:class:`Chat`, :class:`Answer`, :func:`list_sessions`,
:func:`load_session`) and :mod:`chatcli.core` (requests and events). Importing this package does
no I/O and loads neither typer nor aiohttp: those names are loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: The name chatcli is published under on the package index (``chatcli`` there is another,
#: unrelated project: installing that would replace this one). The command and the Python
#: package are ``chatcli``.
DISTRIBUTION = "chatcli-shell"


def install_hint(extra: str) -> str:
    """The command that adds an extra, from the package index and from a checkout."""
    return f"pip install '{DISTRIBUTION}[{extra}]' (in a checkout: pip install '.[{extra}]')"


if TYPE_CHECKING:
    from chatcli.api import Answer, Chat, list_sessions, load_session
    from chatcli.core import (
        ChatMessage,
        ChatRequest,
        Event,
        Finish,
        ReasoningDelta,
        TextDelta,
        ToolCallDelta,
        Usage,
    )

__all__ = [
    "Answer",
    "Chat",
    "ChatMessage",
    "ChatRequest",
    "Event",
    "Finish",
    "ReasoningDelta",
    "TextDelta",
    "ToolCallDelta",
    "Usage",
    "__version__",
    "list_sessions",
    "load_session",
]

_API = ("Answer", "Chat", "list_sessions", "load_session")


def __getattr__(name: str) -> Any:
    # Loaded on first use, so that `import chatcli` (and `chatcli --version`) stays cheap.
    if name in _API:
        from chatcli import api

        return getattr(api, name)
    if name in __all__:
        from chatcli import core

        return getattr(core, name)
    raise AttributeError(f"module 'chatcli' has no attribute {name!r}")
