"""A strict fake of GPTalk (gptalk.net): token login, a one-time stream token, cumulative SSE."""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fakes import Seen
from tests.fakes.seed import (
    SeedFake,
    hex_pattern,
)

#: Successful text calls one login token allows.
MAX_USES = 5


@dataclass
class GPTalkToken:
    """A login token the fake issued."""

    expires_at: int
    uses: int = 0
    revoked: bool = False


@dataclass
class StreamToken:
    """A one-time stream token, and the x-auth-timestamp of the text call that got it."""

    timestamp: int | None
    used: bool = False


class FakeGPTalk(SeedFake):
    """gptalk.net: ``login`` -> token T; ``chatapi/text`` (Bearer T) -> stream token S;
    ``chatapi/stream?token=S`` -> SSE whose every event carries the whole answer so far.

    Modes: "ok", "reject_once", "reject_always", "not_extending", "cut", "broken_line",
    "cloudflare", "ratelimit".
    """

    APPID = "2229"

    def __init__(self) -> None:
        super().__init__()
        self.pieces: list[str] = ["Hello", " from", " GPTalk", "!"]
        #: Lifetime of issued tokens in seconds (negative: already expired when issued).
        self.token_ttl: int = 3600
        #: The model the text call must send ("sent as given").
        self.expected_model: str | None = "gpt-3.5-turbo"
        #: When set, the text call's ``content`` must equal it (format_prompt(messages)).
        self.expected_content: str | None = None
        self.retry_after = "7"
        #: Successful logins.
        self.logins = 0
        #: Issued login tokens by value, with expiry and successful-use count.
        self.tokens: dict[str, GPTalkToken] = {}
        #: Issued stream tokens by value.
        self.stream_tokens: dict[str, StreamToken] = {}
        #: Text calls answered 401, with the reason.
        self.rejections: list[str] = []

    @property
    def answer(self) -> str:
        return "".join(self.pieces)

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/api/chatgpt/user/login", self._login)
        app.router.add_post("/api/chatgpt/chatapi/text", self._text)
        app.router.add_get("/api/chatgpt/chatapi/stream", self._stream)
        self.add_catch_all(app)

    def _check_headers(self, seen: Seen) -> int | None:
        """The headers of every request; returns the x-auth-timestamp."""
        self.expect_header(seen, "x-auth-appid", self.APPID)
        self.expect_header(seen, "x-auth-openid", "")
        self.expect_header(seen, "x-auth-platform", "")
        self.expect_header(seen, "origin", self.origin)
        self.expect_header(seen, "authority", self.authority)
        self.expect_header(seen, "content-type", "application/json")
        self.expect_chrome(seen)
        return self.expect_fresh_timestamp(
            f"{seen.path} header x-auth-timestamp", seen.headers.get("x-auth-timestamp")
        )

    def _unauthorized(self, reason: str) -> web.Response:
        self.rejections.append(reason)
        return self.json_error(401, {"code": 401, "message": "Unauthorized", "data": None})

    async def _login(self, request: web.Request) -> web.StreamResponse:
        seen = await self.record(request)
        self._check_headers(seen)
        if self.mode == "cloudflare":
            return self.cloudflare()
        body = self.json_body(seen)
        if body is None or not self.expect_keys("login body", body, ("fingerprint", "platform")):
            return self.json_error(400, {"code": 400, "message": "bad request"})
        ok = self.expect_match("login fingerprint", body["fingerprint"], hex_pattern(32))
        ok = self.expect_same("login platform", body["platform"], "fingerprint") and ok
        if not ok:
            return self.json_error(400, {"code": 400, "message": "bad request"})
        token = secrets.token_hex(16)
        expires_at = int(time.time()) + self.token_ttl
        self.tokens[token] = GPTalkToken(expires_at)
        self.logins += 1
        return web.json_response({"data": {"token": token, "expires_at": expires_at}})

    def _check_text_body(self, seen: Seen, timestamp: int | None) -> bool:
        body = self.json_body(seen)
        keys = (
            "content", "accept", "from", "model", "is_mobile", "user_agent", "is_open_ctx",
            "prompt", "roid", "temperature", "ctx_msg_count", "created_at",
        )  # fmt: skip
        if body is None or not self.expect_keys("text body", body, keys):
            return False
        before = len(self.violations)
        self.expect_text("text content", body["content"], self.expected_content)
        self.expect_text("text model", body["model"], self.expected_model)
        constants = {
            "accept": "stream",
            "from": 1,
            "is_mobile": 0,
            "is_open_ctx": 0,
            "prompt": "",
            "roid": 111,
            "temperature": 0,
            "ctx_msg_count": 3,
        }
        for key, value in constants.items():
            self.expect_same(f"text {key}", body[key], value)
        self.expect_same("text user_agent (= the user-agent header)", body["user_agent"],
                         seen.headers.get("User-Agent"))  # fmt: skip
        if timestamp is not None:
            self.expect_same("text created_at (= x-auth-timestamp)", body["created_at"], timestamp)
        else:
            self.expect(type(body["created_at"]) is int, f"text created_at {body['created_at']!r}")
        return len(self.violations) == before

    async def _text(self, request: web.Request) -> web.StreamResponse:
        seen = await self.record(request)
        timestamp = self._check_headers(seen)
        if self.mode == "cloudflare":
            return self.cloudflare()
        authorization = seen.headers.get("authorization", "")
        self.expect(
            re.fullmatch(r"Bearer \S+", authorization) is not None,
            f"text authorization: expected 'Bearer <token>', got {authorization!r}",
        )
        if not self._check_text_body(seen, timestamp):
            return self.json_error(400, {"code": 400, "message": "bad request"})
        if self.mode == "ratelimit":
            return self.json_error(
                429,
                {"code": 429, "message": "Too Many Requests"},
                headers={"Retry-After": self.retry_after},
            )
        token = self.tokens.get(authorization.removeprefix("Bearer "))
        self.expect(
            token is None or token.uses < MAX_USES,
            f"text: a token already used {MAX_USES} times was sent (log in again first)",
        )
        if self.mode == "reject_always":
            return self._unauthorized("reject_always")
        if self.mode == "reject_once":
            self.mode = "ok"  # once: later calls follow the token rules
            if token is not None:
                token.revoked = True
            return self._unauthorized("reject_once")
        if token is None or token.revoked:
            return self._unauthorized("unknown token")
        if token.expires_at < time.time():
            return self._unauthorized("expired token")
        if token.uses >= MAX_USES:
            return self._unauthorized("token used up")
        token.uses += 1
        stream_token = secrets.token_urlsafe(24)
        self.stream_tokens[stream_token] = StreamToken(timestamp)
        return web.json_response({"data": {"token": stream_token}})

    def _events(self) -> list[str | dict[str, Any]]:
        """What the stream sends: cumulative text, then [DONE], bent by ``mode``."""
        events: list[str | dict[str, Any]] = [
            {"content": "".join(self.pieces[: i + 1])} for i in range(len(self.pieces))
        ]
        if self.mode == "not_extending":
            events.insert(min(2, len(events)), {"content": "Something else entirely"})
        if self.mode == "broken_line":
            events.insert(min(1, len(events)), '{"content": "Hel')
        if self.mode != "cut":
            events.append("[DONE]")
        return events

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        seen = await self.record(request)
        timestamp = self._check_headers(seen)
        if self.mode == "cloudflare":
            return self.cloudflare()
        self.expect_absent(seen, "authorization")
        self.expect_keys("stream query", seen.query, ("token",))
        stream_token = self.stream_tokens.get(seen.query.get("token", ""))
        if stream_token is None or stream_token.used:
            self.violations.append(
                f"stream: token {seen.query.get('token')!r} was not issued or was already used"
            )
            return self.json_error(401, {"code": 401, "message": "invalid stream token"})
        stream_token.used = True
        if stream_token.timestamp is not None and timestamp is not None:
            self.expect_same(
                "stream x-auth-timestamp (= that of the text call)",
                timestamp,
                stream_token.timestamp,
            )
        writer = await self.open_sse(request)
        try:
            for event in self._events():
                await writer.data(event)
        except ConnectionError:
            pass  # the client stopped reading (it may, after an error)
        return writer.response
