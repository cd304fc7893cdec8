"""FakeGpt (chat-shared2.zhile.io): a shared-account ChatGPT web clone, streaming cumulative text.

Login picks a shared account from ``/api/loads``, posts it to ``/auth/login`` (which sets a
session cookie, maybe through a redirect) and reads an access token from
``/api/auth/session``. The chat streams ChatGPT-web events whose parts carry the whole answer so
far; only the assistant's ``next`` events count. Token and cookies persist across processes.
"""

from __future__ import annotations

import json
import logging
import random
import string
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final

from chatcli.core import ChatRequest, Event, Finish, TextDelta
from chatcli.errors import (
    AuthenticationError,
    ProtocolError,
    ProviderError,
    StreamInterruptedError,
    quote,
)
from chatcli.providers.base import AsyncGeneratorProvider, check_messages, format_prompt
from chatcli.providers.web import WebProvider
from chatcli.store import Stores

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger("chatcli.fakegpt")

#: The model the site's backend is always asked for, whatever the caller chose.
SITE_MODEL: Final = "text-davinci-002-render-sha"
_PASSWORD_ALPHABET: Final = string.ascii_lowercase + string.digits


class FakeGpt(WebProvider, AsyncGeneratorProvider):
    """chat-shared2.zhile.io: streaming, cumulative text; history in the flattened prompt."""

    name = "fakegpt"
    url = "https://chat-shared2.zhile.io"
    cookie_domain = "chat-shared2.zhile.io"
    supports_stream = True
    supports_gpt_35_turbo = True
    default_model = SITE_MODEL

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        from chatcli.providers import http

        check_messages(request.messages, self.name)
        root = self.root
        headers = {
            "accept-language": "en-US",
            "user-agent": http.CHROME_USER_AGENT,
            "referer": f"{root}/?v=2",
            **http.CHROME_CLIENT_HINTS,
        }
        stores = self.site_stores
        state = stores.state(self.name)
        body = {
            "action": "next",
            "messages": [
                {
                    "id": str(uuid.uuid4()),
                    "author": {"role": "user"},
                    "content": {
                        "content_type": "text",
                        "parts": [format_prompt(request.plain_messages())],
                    },
                    "metadata": {},
                }
            ],
            "parent_message_id": str(uuid.uuid4()),
            "model": SITE_MODEL,
            "plugin_ids": [],
            "timezone_offset_min": -120,
            "suggestions": [],
            "history_and_training_disabled": True,
            "arkose_token": "",
            "force_paragen": False,
        }
        async with self.site_session(headers) as session:
            token = await self._access_token(session, root, stores)
            for attempt in (1, 2):
                try:
                    async for piece in self._converse(session, root, token, body):
                        yield TextDelta(piece)
                    yield Finish()
                    return
                except AuthenticationError:
                    # Refused before any text: drop token and cookies, log in once, retry once.
                    if attempt == 2:
                        with state.locked():
                            if state.load().get("access_token") == token:
                                state.clear()
                        raise
                    log.debug("fakegpt: access token refused, logging in again")
                    token = await self._access_token(session, root, stores, refused=token)

    @classmethod
    async def _access_token(
        cls,
        session: aiohttp.ClientSession,
        root: str,
        stores: Stores,
        *,
        refused: str | None = None,
    ) -> str:
        """The stored token, or a fresh login's; under the state lock, so processes started
        together (or retrying together) log in once between them."""
        state = stores.state(cls.name)
        with state.locked():
            token = state.load().get("access_token")
            if isinstance(token, str) and token and token != refused:
                return token
            if refused is not None:
                session.cookie_jar.clear()  # the refused login's cookies go with its token
                stores.cookies.clear(cls.cookie_domain)
            token = await cls._login(session, root)
            state.save({"access_token": token})
            return token

    @classmethod
    async def _login(cls, session: aiohttp.ClientSession, root: str) -> str:
        from chatcli.providers import http

        url = f"{root}/api/loads"
        data = await cls.fetch_json(session, "GET", url, params={"t": str(int(time.time()))})
        loads = data.get("loads") if isinstance(data, dict) else None
        if not isinstance(loads, list):
            raise ProtocolError(
                f"unexpected account list: {quote(json.dumps(data))}", provider=cls.name
            )
        # Only an idle account (``count`` 0) is used, as the site's own client did: a busy
        # one is shared with someone chatting right now.
        accounts = [
            a["token_id"]
            for a in loads
            if isinstance(a, dict) and a.get("token_id") and _count(a.get("count")) == 0
        ]
        if not accounts:
            raise ProviderError(
                "no shared accounts available (all are busy); try again later", provider=cls.name
            )
        form = {
            "token_key": str(random.choice(accounts)),
            "session_password": "".join(random.choices(_PASSWORD_ALPHABET, k=10)),
        }
        url = f"{root}/auth/login"
        with http.http_errors(cls.name, url):
            async with session.post(url, data=form) as response:  # follows its redirect
                await http.check_status(response, cls.name)
                await http.read_body(response, cls.name)
        url = f"{root}/api/auth/session"
        data = await cls.fetch_json(session, "GET", url)
        token = data.get("accessToken") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise ProtocolError("login gave no access token", provider=cls.name)
        log.debug("fakegpt: logged in with a shared account")
        return token

    @classmethod
    async def _converse(
        cls, session: aiohttp.ClientSession, root: str, token: str, body: dict[str, Any]
    ) -> AsyncIterator[str]:
        from chatcli.providers import http

        url = f"{root}/api/conversation"
        headers = {"x-authorization": f"Bearer {token}", "accept": "text/event-stream"}
        shown = ""
        done = False
        with http.http_errors(cls.name, url):
            async with session.post(url, json=body, headers=headers) as response:
                await http.check_status(response, cls.name, secrets=[token])
                async for event in http.iter_sse(response, cls.name):
                    data = event.data.strip()
                    # The original compared the line with its newline attached and never
                    # matched; the decoder gives the bare value.
                    if data == "[DONE]":
                        done = True
                        break
                    text = cls._assistant_text(data)
                    if text is None or not text.startswith(shown):
                        continue
                    new = text[len(shown) :]
                    if new:
                        shown = text
                        yield new
        if not done:
            raise StreamInterruptedError(
                "the stream ended before [DONE]; the answer is incomplete", provider=cls.name
            )
        if not shown:
            raise ProtocolError("No valid response", provider=cls.name)

    @classmethod
    def _assistant_text(cls, data: str) -> str | None:
        """The cumulative text of an assistant ``next`` event; ``None`` for any other event."""
        try:
            event = json.loads(data)
        except (ValueError, RecursionError):  # nested too deep: not JSON we read
            raise ProtocolError(
                f"unexpected stream line: {quote(data)}", provider=cls.name
            ) from None
        message = event.get("message") if isinstance(event, dict) else None
        if not isinstance(message, dict):
            return None
        metadata, author, content = (
            part if isinstance(part := message.get(key), dict) else {}
            for key in ("metadata", "author", "content")
        )
        if metadata.get("message_type") != "next" or author.get("role") != "assistant":
            return None
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts or not isinstance(parts[0], str):
            return None
        return parts[0]


def _count(value: Any) -> int | None:
    """An account's ``count`` (how busy it is), if it is a whole number."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None
