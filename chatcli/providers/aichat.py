"""Aichat (chat-gpt.org): one JSON reply per message; needs the site's cookies.

Cookies come from ``cookies=`` or the store (domain chat-gpt.org), or, with the
``[cookies] from_browser`` opt-in, from the user's browser; without them it fails before any
request, saying how to import them. The body has exactly five fields.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from chatcli.errors import MissingAuthError, ProtocolError, ProviderError, quote
from chatcli.providers.base import AsyncProvider, Messages, check_messages, format_prompt
from chatcli.providers.web import WebProvider
from chatcli.store import Stores


class Aichat(WebProvider, AsyncProvider):
    """chat-gpt.org: not streaming; history goes in the flattened prompt."""

    name = "aichat"
    url = "https://chat-gpt.org/chat"
    cookie_domain = "chat-gpt.org"
    supports_stream = False
    supports_gpt_35_turbo = True
    needs_auth = True

    @classmethod
    async def create_async(
        cls,
        model: str,
        messages: Messages,
        proxy: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float | None = None,
        store: Stores | None = None,
        cookies: dict[str, str] | None = None,
        temperature: float = 0.5,
        top_p: float = 1,
        **kwargs: Any,
    ) -> str:
        from chatcli.providers import http

        check_messages(messages, cls.name)
        stores = cls.stores(store)
        # In a thread: with the opt-in, a browser's keyring may take a while to answer.
        jar = dict(cookies) if cookies else await asyncio.to_thread(cls.stored_cookies, stores)
        if not jar:
            raise MissingAuthError(
                f"needs cookies for {cls.cookie_domain}, and none are stored: sign in there in "
                f"your browser and run `chatcli cookies import --browser chrome` (or firefox, "
                f"chromium, …), or export them and run `chatcli cookies import FILE`",
                provider=cls.name,
            )
        root = cls.root_url(base_url)
        headers = {
            "content-type": "application/json",
            "origin": root,
            "referer": f"{root}/chat",
            "user-agent": http.CHROME_USER_AGENT,
            **http.CHROME_CLIENT_HINTS,
        }
        body = {
            "message": format_prompt(messages),
            "temperature": temperature,
            "presence_penalty": 0,
            "top_p": top_p,
            "frequency_penalty": 0,
        }
        url = f"{root}/api/text"
        async with cls.browser_session(
            root=root, store=stores, proxy=proxy, timeout=timeout, headers=headers, cookies=jar
        ) as session:
            data = await cls.fetch_json(
                session,
                "POST",
                url,
                json=body,
                auth_hint="the cookies may have expired: import fresh ones",
                secrets=jar.values(),
            )
        if not isinstance(data, dict):
            raise ProtocolError(f"unexpected reply: {quote(json.dumps(data))}", provider=cls.name)
        if not data.get("response"):
            reason = data.get("message") or "no reason given"
            raise ProviderError(f"the site refused: {quote(str(reason))}", provider=cls.name)
        message = data.get("message")
        if not isinstance(message, str):
            raise ProtocolError(f"reply without text: {quote(json.dumps(data))}", provider=cls.name)
        return message
