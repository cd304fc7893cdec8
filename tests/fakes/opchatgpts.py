"""A strict fake of Opchatgpts (opchatgpts.net), a WordPress "AI Engine" chat: one JSON POST
answered by SSE deltas (``live`` events, then ``end``).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from tests.fakes import Seen
from tests.fakes.seed import RANDOM10, SeedFake

BODY_FIELDS = (
    "botId",
    "chatId",
    "contextId",
    "customId",
    "messages",
    "newMessage",
    "session",
    "stream",
)


class FakeOpchatgpts(SeedFake):
    """opchatgpts.net: ``POST /wp-json/mwai-ui/v1/chats/submit`` -> SSE deltas.

    Modes: "ok", "error_event", "broken_line", "no_type", "cut".
    """

    ERROR = "Rate limit exceeded"

    def __init__(self) -> None:
        super().__init__()
        self.pieces: list[str] = ["Hello", " from", " Opchatgpts", "!"]
        #: When set, the body's ``messages`` must equal it (the message list as given).
        self.expected_messages: list[dict[str, Any]] | None = None
        #: Every chatId seen.
        self.chat_ids: list[str] = []

    @property
    def answer(self) -> str:
        return "".join(self.pieces)

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/wp-json/mwai-ui/v1/chats/submit", self._submit)
        self.add_catch_all(app)

    def _check(self, seen: Seen) -> bool:
        self.expect_chrome(seen)
        self.expect_header(seen, "accept", "*/*")
        self.expect_header(seen, "origin", self.origin)
        self.expect_header(seen, "referer", f"{self.base_url}/chatgpt-free-use/")
        self.expect_same("submit query", seen.query, {})
        body = self.json_body(seen)
        if body is None or not self.expect_keys("submit body", body, BODY_FIELDS):
            return False
        before = len(self.violations)
        for key, value in {
            "botId": "default",
            "contextId": 28,
            "customId": None,
            "session": "N/A",
            "stream": True,
        }.items():
            self.expect_same(f"submit {key}", body[key], value)
        self.expect_match("submit chatId", body["chatId"], RANDOM10)
        self.chat_ids.append(body["chatId"])
        messages = body["messages"]
        if self.expected_messages is not None:
            self.expect_same("submit messages", messages, self.expected_messages)
        elif not isinstance(messages, list) or not messages:
            self.violations.append(f"submit messages: expected a non-empty list, got {messages!r}")
        else:
            for index, message in enumerate(messages):
                self.expect(
                    isinstance(message, dict)
                    and isinstance(message.get("role"), str)
                    and isinstance(message.get("content"), str),
                    f"submit messages[{index}] is not a role/content message: {message!r}",
                )
        last = messages[-1] if isinstance(messages, list) and messages else None
        self.expect_same(
            "submit newMessage (= the last message's content)",
            body["newMessage"],
            last.get("content") if isinstance(last, dict) else None,
        )
        return len(self.violations) == before

    def _events(self) -> list[str | dict[str, Any]]:
        """What the stream sends, bent by ``mode``."""
        events: list[str | dict[str, Any]] = [
            {"type": "live", "data": piece} for piece in self.pieces
        ]
        if self.mode == "error_event":
            return [*events[:1], {"type": "error", "data": self.ERROR}]
        if self.mode == "broken_line":
            events.insert(min(1, len(events)), '{"type": "live", "data": "wo')
        if self.mode == "no_type":
            events.insert(min(1, len(events)), {"data": " stray"})
        if self.mode != "cut":
            end = {"success": True, "reply": self.answer, "images": None, "actions": []}
            events.append({"type": "end", "data": json.dumps(end)})
        return events

    async def _submit(self, request: web.Request) -> web.StreamResponse:
        seen = await self.record(request)
        if not self._check(seen):
            return web.json_response({"success": False, "message": "Invalid request."}, status=400)
        writer = await self.open_sse(request)
        try:
            for event in self._events():
                await writer.data(event)
        except ConnectionError:
            pass  # the client stopped reading (it may, after an error event)
        return writer.response
