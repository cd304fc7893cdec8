"""Opchatgpts (opchatgpts.net): a WordPress "AI Engine" chat streaming deltas over SSE.

The whole message list goes as given; the model is ignored. Events are
``{"type": "live", "data": DELTA}`` until ``{"type": "end", ...}``; ``{"type": "error"}``
carries the site's reason.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import AsyncIterator
from typing import Final

from chatcli.core import ChatRequest, Event, Finish, TextDelta
from chatcli.errors import ProtocolError, ProviderError, StreamInterruptedError, quote
from chatcli.providers.base import AsyncGeneratorProvider, check_messages
from chatcli.providers.web import WebProvider

_ID_ALPHABET: Final = string.ascii_lowercase + string.digits


class Opchatgpts(WebProvider, AsyncGeneratorProvider):
    """opchatgpts.net: streaming deltas; the message list (system included) goes as given."""

    name = "opchatgpts"
    url = "https://opchatgpts.net"
    cookie_domain = "opchatgpts.net"
    supports_stream = True
    supports_message_history = True
    supports_gpt_35_turbo = True

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        from chatcli.providers import http

        check_messages(request.messages, self.name)
        messages = request.plain_messages()
        root = self.root
        headers = {
            "user-agent": http.CHROME_USER_AGENT,
            "accept": "*/*",
            "origin": root,
            "referer": f"{root}/chatgpt-free-use/",
        }
        body = {
            "botId": "default",
            "chatId": "".join(random.choices(_ID_ALPHABET, k=10)),
            "contextId": 28,
            "customId": None,
            "messages": messages,
            "newMessage": messages[-1]["content"],
            "session": "N/A",
            "stream": True,
        }
        url = f"{root}/wp-json/mwai-ui/v1/chats/submit"
        ended = False
        async with self.site_session(headers) as session:
            with http.http_errors(self.name, url):
                async with session.post(url, json=body) as response:
                    await http.check_status(response, self.name)
                    async for event in http.iter_sse(response, self.name):
                        kind, data = self._event(event.data)
                        if kind == "live":
                            if data:
                                yield TextDelta(data)
                        elif kind == "end":
                            ended = True
                            break
                        elif kind == "error":
                            raise ProviderError(
                                f"the site reported: {quote(data or 'an error')}",
                                provider=self.name,
                            )
        if not ended:
            raise StreamInterruptedError(
                "the stream ended before its end event; the answer is incomplete",
                provider=self.name,
            )
        yield Finish()

    @classmethod
    def _event(cls, line: str) -> tuple[str, str]:
        try:
            event = json.loads(line)
        except (ValueError, RecursionError):  # nested too deep: not JSON we read
            event = None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise ProtocolError(f"unexpected stream line: {quote(line)}", provider=cls.name)
        data = event.get("data")
        return event["type"], data if isinstance(data, str) else ("" if data is None else str(data))
