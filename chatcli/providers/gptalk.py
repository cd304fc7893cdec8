"""GPTalk (gptalk.net): log in for a token, trade it for a one-time stream token, read SSE.

The stream is *cumulative*: each event carries the whole answer so far, and only the new
suffix is yielded. A token serves five chats or until ``expires_at``; it is kept in the
provider state so consecutive processes share it (seven one-shot runs log in twice).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from chatcli.core import ChatRequest, Event, Finish, TextDelta
from chatcli.errors import (
    AuthenticationError,
    ProtocolError,
    StreamInterruptedError,
    quote,
)
from chatcli.providers.base import AsyncGeneratorProvider, check_messages, format_prompt
from chatcli.providers.web import WebProvider
from chatcli.store import StateStore

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger("chatcli.gptalk")

#: A token is good for this many chats (the site's own limit).
MAX_USES: Final = 5


class GPTalk(WebProvider, AsyncGeneratorProvider):
    """gptalk.net: streaming, cumulative text; history goes in the flattened prompt."""

    name = "gptalk"
    url = "https://gptalk.net"
    cookie_domain = "gptalk.net"
    supports_stream = True
    supports_gpt_35_turbo = True
    default_model = "gpt-3.5-turbo"

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        from chatcli.providers import http

        check_messages(request.messages, self.name)
        root = self.root
        stores = self.site_stores
        state = stores.state(self.name)
        user_agent = http.CHROME_USER_AGENT
        # GPTalk signs every request of one chat with the same timestamp.
        timestamp = int(time.time())
        headers = {
            "x-auth-appid": "2229",
            "x-auth-openid": "",
            "x-auth-platform": "",
            "x-auth-timestamp": str(timestamp),
            "origin": root,
            "authority": urlsplit(root).netloc,
            "user-agent": user_agent,
            "content-type": "application/json",
        }
        body = {
            "content": format_prompt(request.plain_messages()),
            "accept": "stream",
            "from": 1,
            "model": request.model or self.default_model,
            "is_mobile": 0,
            "user_agent": user_agent,
            "is_open_ctx": 0,
            "prompt": "",
            "roid": 111,
            # The site's own client sends 0; a temperature the caller chose goes instead.
            "temperature": request.temperature if request.temperature is not None else 0,
            "ctx_msg_count": 3,
            "created_at": timestamp,
        }
        async with self.site_session(headers) as session:
            token = await self._reserve_use(session, root, state)
            for attempt in (1, 2):
                try:
                    stream_token = await self._request_stream(session, root, token, body)
                    break
                except AuthenticationError:
                    # A 401 means the site forgot the token: log in once more and retry once.
                    with state.locked():
                        if state.load().get("token") == token:
                            state.clear()
                    if attempt == 2:
                        raise
                    log.debug("gptalk: token refused, logging in again")
                    token = await self._reserve_use(session, root, state)
            async for piece in self._read_stream(session, root, stream_token):
                yield TextDelta(piece)
        yield Finish()

    @classmethod
    async def _reserve_use(
        cls, session: aiohttp.ClientSession, root: str, state: StateStore
    ) -> str:
        """A token with a use left, that use counted before it is spent.

        Counting under the state lock, before the request, keeps processes running at the
        same time from spending a sixth use between them; logging in happens under the same
        lock, so they do not each log in either.
        """
        with state.locked():
            saved = state.load()
            if cls._usable_token(saved) is None:
                saved = await cls._login(session, root)
            saved["uses"] = int(saved.get("uses", 0)) + 1
            state.save(saved)
            return str(saved["token"])

    @staticmethod
    def _usable_token(saved: dict[str, Any]) -> str | None:
        token = saved.get("token")
        if not isinstance(token, str) or not token:
            return None
        try:
            expired = float(saved.get("expires_at", 0)) < time.time()
            exhausted = int(saved.get("uses", 0)) >= MAX_USES
        except (TypeError, ValueError):
            return None
        return None if expired or exhausted else token

    @classmethod
    async def _login(cls, session: aiohttp.ClientSession, root: str) -> dict[str, Any]:

        url = f"{root}/api/chatgpt/user/login"
        payload = {"fingerprint": secrets.token_hex(16), "platform": "fingerprint"}
        data = await cls.fetch_json(session, "POST", url, json=payload)
        try:
            token = data["data"]["token"]
            expires_at = data["data"]["expires_at"]
        except (KeyError, TypeError):
            raise ProtocolError(
                f"login gave no token: {quote(json.dumps(data))}", provider=cls.name
            ) from None
        if not isinstance(token, str) or not token:
            raise ProtocolError("login gave an empty token", provider=cls.name)
        log.debug("gptalk: logged in, token valid until %s", expires_at)
        return {"token": token, "expires_at": expires_at, "uses": 0}

    @classmethod
    async def _request_stream(
        cls, session: aiohttp.ClientSession, root: str, token: str, body: dict[str, Any]
    ) -> str:

        url = f"{root}/api/chatgpt/chatapi/text"
        headers = {"authorization": f"Bearer {token}"}
        data = await cls.fetch_json(
            session, "POST", url, json=body, headers=headers, secrets=[token]
        )
        try:
            stream_token = data["data"]["token"]
        except (KeyError, TypeError):
            raise ProtocolError(
                f"no stream token in the reply: {quote(json.dumps(data))}", provider=cls.name
            ) from None
        if not isinstance(stream_token, str) or not stream_token:
            raise ProtocolError("the stream token is empty", provider=cls.name)
        return stream_token

    @classmethod
    def _content(cls, data: str) -> str:
        """The whole answer so far, from one stream event's data."""
        try:
            content = json.loads(data)["content"]
        except (ValueError, RecursionError, KeyError, TypeError, IndexError):
            raise ProtocolError(
                f"unexpected stream line: {quote(data)}", provider=cls.name
            ) from None
        if not isinstance(content, str):
            raise ProtocolError(f"stream content is not text: {quote(data)}", provider=cls.name)
        return content

    @classmethod
    async def _read_stream(
        cls, session: aiohttp.ClientSession, root: str, stream_token: str
    ) -> AsyncIterator[str]:
        from chatcli.providers import http

        url = f"{root}/api/chatgpt/chatapi/stream"
        shown = ""
        done = False
        with http.http_errors(cls.name, url):
            async with session.get(url, params={"token": stream_token}) as response:
                await http.check_status(response, cls.name, secrets=[stream_token])
                async for event in http.iter_sse(response, cls.name):
                    data = event.data.strip()
                    if data == "[DONE]":
                        done = True
                        break
                    content = cls._content(data)
                    if not content.startswith(shown):
                        # The text jumped (the site restarted its answer): emit nothing rather
                        # than garbage; a later event that extends what was shown resumes it.
                        continue
                    new = content[len(shown) :]
                    if new:
                        shown = content
                        yield new
        if not done:
            raise StreamInterruptedError(
                "the stream ended before [DONE]; the answer is incomplete", provider=cls.name
            )
