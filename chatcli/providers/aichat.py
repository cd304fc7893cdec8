"""Aichat (chat-gpt.org): one JSON reply per message; needs the site's cookies.

Cookies come from ``cookies=`` or the store (domain chat-gpt.org), or, with the
``[cookies] from_browser`` opt-in, from the user's browser; without them it fails before any
request, saying how to import them. The body has exactly five fields.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from chatcli.core import ChatRequest, Event, Finish, OptionSpec, TextDelta
from chatcli.errors import MissingAuthError, ProtocolError, ProviderError, quote
from chatcli.providers.base import AsyncProvider, check_messages, format_prompt
from chatcli.providers.web import WebProvider


class Aichat(WebProvider, AsyncProvider):
    """chat-gpt.org: not streaming; history goes in the flattened prompt."""

    name = "aichat"
    url = "https://chat-gpt.org/chat"
    cookie_domain = "chat-gpt.org"
    supports_stream = False
    supports_gpt_35_turbo = True
    needs_auth = True
    # The seed marks it broken (the site stopped answering); it stays selectable, flagged.
    working = False
    option_specs = (OptionSpec("top_p", (float,), "nucleus sampling (default 1)"),)

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        from chatcli.providers import http

        check_messages(request.messages, self.name)
        stores = self.site_stores
        cookies = self.config.cookies
        # In a thread: with the opt-in, a browser's keyring may take a while to answer.
        jar = dict(cookies) if cookies else await asyncio.to_thread(self.stored_cookies, stores)
        if not jar:
            raise MissingAuthError(
                f"needs cookies for {self.cookie_domain}, and none are stored: sign in there in "
                f"your browser and run `chatcli cookies import --browser chrome` (or firefox, "
                f"chromium, …), or export them and run `chatcli cookies import FILE`",
                provider=self.name,
            )
        root = self.root
        headers = {
            "authority": urlsplit(root).netloc,
            "content-type": "application/json",
            "origin": root,
            "referer": f"{root}/chat",
            "user-agent": http.CHROME_USER_AGENT,
            **http.CHROME_CLIENT_HINTS,
        }
        temperature = request.temperature if request.temperature is not None else 0.5
        body = {
            "message": format_prompt(request.plain_messages()),
            "temperature": temperature,
            "presence_penalty": 0,
            "top_p": request.options.get("top_p", 1),
            "frequency_penalty": 0,
        }
        url = f"{root}/api/text"
        async with self.site_session(headers, cookies=jar) as session:
            data = await self.fetch_json(
                session,
                "POST",
                url,
                json=body,
                auth_hint="the cookies may have expired: import fresh ones",
                secrets=jar.values(),
            )
        if not isinstance(data, dict):
            raise ProtocolError(f"unexpected reply: {quote(json.dumps(data))}", provider=self.name)
        if not data.get("response"):
            reason = data.get("message") or "no reason given"
            raise ProviderError(f"the site refused: {quote(str(reason))}", provider=self.name)
        message = data.get("message")
        if not isinstance(message, str):
            raise ProtocolError(
                f"reply without text: {quote(json.dumps(data))}", provider=self.name
            )
        if message:
            yield TextDelta(message)
        yield Finish()
