"""ChatGptt (chatgptt.me): a WordPress "AI Power" chat; one JSON reply per message.

The home page carries a nonce and a post id in ``data-`` attributes and sets cookies; the
message is posted to ``admin-ajax.php`` with them. The model is validated but never sent.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import AsyncIterator
from typing import Any, ClassVar, Final
from urllib.parse import urlsplit

from chatcli.core import ChatRequest, Event, Finish, TextDelta
from chatcli.errors import ProtocolError, ProviderError, quote
from chatcli.providers.base import (
    AsyncGeneratorProvider,
    ProviderModelMixin,
    check_messages,
    format_prompt,
)
from chatcli.providers.web import WebProvider

_NONCE: Final = re.compile(r"""data-nonce=["']([^"']+)["']""")
_POST_ID: Final = re.compile(r"""data-post-id=["']([^"']+)["']""")
_AJAX_PATH: Final = "/wp-admin/admin-ajax.php"


class ChatGptt(WebProvider, ProviderModelMixin, AsyncGeneratorProvider):
    """chatgptt.me: one JSON reply; system message and history go in the flattened prompt."""

    name = "chatgptt"
    url = "https://chatgptt.me"
    cookie_domain = "chatgptt.me"
    supports_stream = True
    supports_system_message = True
    supports_message_history = True
    default_model = "gpt-4o"
    models: ClassVar = ["gpt-4", "gpt-4o", "gpt-4o-mini"]
    #: Where messages are posted (the seed's attribute; with ``base_url``, under that root).
    api_endpoint: ClassVar[str] = f"{url}{_AJAX_PATH}"

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        from chatcli.providers import http

        check_messages(request.messages, self.name)
        self.get_model(request.model)  # an unknown model is an error even though it is not sent
        root = self.root
        headers = {
            "authority": urlsplit(root).netloc,
            "accept": "application/json",
            "origin": root,
            "referer": f"{root}/chat",
            "user-agent": http.CHROME_USER_AGENT,
        }
        async with self.site_session(headers) as session:
            with http.http_errors(self.name, root):
                async with session.get(root) as response:
                    await http.check_status(response, self.name)
                    page = await http.read_text(response, self.name)
            nonce, post_id = _NONCE.search(page), _POST_ID.search(page)
            if nonce is None or post_id is None:
                raise ProtocolError(
                    "Required authentication tokens not found in page HTML", provider=self.name
                )
            form = {
                "_wpnonce": nonce.group(1),
                "post_id": post_id.group(1),
                "url": root,
                "action": "wpaicg_chat_shortcode_message",
                "message": format_prompt(request.plain_messages()),
                "bot_id": "0",
                "chatbot_identity": "shortcode",
                "wpaicg_chat_client_id": secrets.token_hex(5),
                "wpaicg_chat_history": "None",
            }
            url = f"{root}{_AJAX_PATH}"
            data = await self.fetch_json(session, "POST", url, data=form)
        yield TextDelta(self._reply(data))
        yield Finish()

    @classmethod
    def _reply(cls, data: Any) -> str:
        if not isinstance(data, dict):
            raise ProtocolError(f"unexpected reply: {quote(json.dumps(data))}", provider=cls.name)
        if data.get("status") == "success" and isinstance(data.get("data"), str):
            return str(data["data"])
        if data.get("status") == "error":
            message = data.get("msg") or data.get("message") or "no reason given"
            raise ProviderError(f"the site reported: {quote(str(message))}", provider=cls.name)
        raise ProtocolError(f"unexpected reply: {quote(json.dumps(data))}", provider=cls.name)
