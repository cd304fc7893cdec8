"""A strict fake of Aichat (chat-gpt.org): one JSON POST that needs the browser's cookies and
answers with one JSON reply.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.fakes import Seen
from tests.fakes.seed import SeedFake, is_number

BODY_FIELDS = ("message", "temperature", "presence_penalty", "top_p", "frequency_penalty")


class FakeAichat(SeedFake):
    """chat-gpt.org: ``POST /api/text`` (cookies mandatory) -> ``{"response", "message"}``.

    The fake's root stands for the site root (``https://chat-gpt.org``). Modes: "ok", "falsy",
    "cloudflare".
    """

    def __init__(self) -> None:
        super().__init__()
        self.answer = "Hello from Aichat!"
        #: The cookies the POST must carry, exactly.
        self.required_cookies: dict[str, str] = {"cf_clearance": "abc123", "session": "s1"}
        #: When set, the body's ``message`` must equal it (format_prompt(messages)).
        self.expected_message: str | None = None
        #: The sampling values the body must carry (kwargs; these are the defaults).
        self.expected_temperature: float = 0.5
        self.expected_top_p: float = 1

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/api/text", self._text)
        self.add_catch_all(app)

    def _check(self, seen: Seen) -> bool:
        self.expect_chrome(seen)
        self.expect_client_hints(seen)
        self.expect_header(seen, "origin", self.origin)
        self.expect_header(seen, "referer", f"{self.base_url}/chat")
        self.expect_header(seen, "content-type", "application/json")
        self.expect_same("text query", seen.query, {})
        body = self.json_body(seen)
        if body is None or not self.expect_keys("text body", body, BODY_FIELDS):
            return False
        before = len(self.violations)
        self.expect_text("text message", body["message"], self.expected_message)
        self.expect_same("text presence_penalty", body["presence_penalty"], 0)
        self.expect_same("text frequency_penalty", body["frequency_penalty"], 0)
        sampling: dict[str, Any] = {
            "temperature": self.expected_temperature,
            "top_p": self.expected_top_p,
        }
        for key, expected in sampling.items():
            value = body[key]
            self.expect(
                is_number(value) and value == expected,
                f"text {key}: expected {expected!r}, got {value!r}",
            )
        return len(self.violations) == before

    async def _text(self, request: web.Request) -> web.StreamResponse:
        seen = await self.record(request)
        cookies_ok = seen.cookies == self.required_cookies
        self.expect_same("text cookies", seen.cookies, self.required_cookies)
        body_ok = self._check(seen)
        if self.mode == "cloudflare":
            return self.cloudflare()
        if not cookies_ok:
            return web.json_response(
                {"response": False, "message": "Missing or invalid cookies"}, status=403
            )
        if not body_ok:
            return web.json_response({"response": False, "message": "Bad request"}, status=400)
        if self.mode == "falsy":
            return web.json_response({"response": False, "message": "Invalid cookie"})
        return web.json_response({"response": True, "message": self.answer})
