"""``chatcli serve``: every provider behind one OpenAI-compatible endpoint, and a chat page.

Routes (aiohttp's server):

- ``POST /v1/chat/completions``: the OpenAI request (``model`` is ``PROVIDER/MODEL``, a bare
  model of the default provider, or a fallback chain ``a/m1,b,c/m3``); streamed as
  ``chat.completion.chunk`` events or answered whole, with ``usage``. The answer comes from
  :func:`chatcli.turn.run_turn`: the same retries, fallback, cookies and limits as ``ask``.
- ``GET /v1/models``: every usable provider's models, as ``PROVIDER/MODEL``.
- ``GET /health``: ``{"status": "ok"}``.
- ``GET /``: the chat page (``page/``: static files, no build step, no external assets).

Safety: loopback unless told otherwise, and then only with a token (``Authorization: Bearer``),
checked on every API request in constant time. Without a token, requests must name a loopback
``Host`` (a web page cannot reach the server by DNS rebinding), and a request from another
web origin is refused unless ``--cors-origin`` allows it (a page cannot spend the user's
credits). A request's body is read within :data:`MAX_BODY` bytes, an answer within
:data:`MAX_ANSWER` characters; streamed events are written as they come, with the socket's
back-pressure, so a slow reader holds the upstream back instead of filling memory.
"""

from chatcli.server.app import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    MAX_ANSWER,
    MAX_BODY,
    Running,
    ServeOptions,
    Server,
    is_loopback,
    start,
)
from chatcli.server.errors import ApiError
from chatcli.server.wire import BACKLOG

__all__ = [
    "BACKLOG",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "MAX_ANSWER",
    "MAX_BODY",
    "ApiError",
    "Running",
    "ServeOptions",
    "Server",
    "is_loopback",
    "start",
]
