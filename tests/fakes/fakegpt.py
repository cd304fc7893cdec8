"""A strict fake of FakeGpt (chat-shared2.zhile.io), a shared-account ChatGPT-web clone: pick an
account from ``/api/loads``, log in with a form (a redirect that sets a session cookie), read the
access token from ``/api/auth/session``, then chat over SSE with cumulative text.
"""

from __future__ import annotations

import secrets
import time
import uuid
from typing import Any

from aiohttp import web

from tests.fakes import Seen
from tests.fakes.seed import RANDOM10, SeedFake

MODEL = "text-davinci-002-render-sha"
SYSTEM_TEXT = "You are ChatGPT, a large language model trained by OpenAI."
VARIANT_TEXT = "IGNORED: a variant, not the next message"

BODY_FIELDS = (
    "action",
    "messages",
    "parent_message_id",
    "model",
    "plugin_ids",
    "timezone_offset_min",
    "suggestions",
    "history_and_training_disabled",
    "arkose_token",
    "force_paragen",
)

_HOME = """<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">
<title>ChatGPT</title></head><body><div id="__next">Logged in.</div></body></html>
"""


class FakeFakeGpt(SeedFake):
    """chat-shared2.zhile.io: ``/api/loads`` -> ``/auth/login`` (302 + cookie) ->
    ``/api/auth/session`` (access token) -> ``/api/conversation`` (SSE, cumulative).

    Modes: "ok", "empty_accounts", "all_busy", "reject_once", "reject_always", "no_text", "cut".

    ``/api/loads`` lists busy accounts (``count`` above 0) around the idle ones; a login with a
    busy account is a violation: the site's own client only ever took an idle one.
    """

    COOKIE = "session"

    def __init__(self) -> None:
        super().__init__()
        self.pieces: list[str] = ["Hello", " from", " FakeGpt", "!"]
        #: What ``/api/loads`` offers.
        self.accounts: list[dict[str, Any]] = [
            {"token_id": "tk-7f3a9c", "count": 12},
            {"token_id": "tk-2b8e41", "count": 0},
            {"token_id": "tk-d05c66", "count": 27},
            {"token_id": "tk-91ce07", "count": 0},
            {"token_id": "tk-40aa5d", "count": 3},
        ]
        #: When set, the conversation's ``parts[0]`` must equal it (format_prompt(messages)).
        self.expected_prompt: str | None = None
        #: Completed login flows (a session cookie traded for an access token).
        self.logins = 0
        #: Every idle token_id ever offered, the busy ones, and every login form.
        self.offered: set[str] = set()
        self.busy: set[str] = set()
        self.login_forms: list[dict[str, str]] = []
        #: Session cookie -> the access token it got (None until /api/auth/session).
        self.sessions: dict[str, str | None] = {}
        #: Access token -> the session cookie it belongs to; revoked ones are dropped.
        self.access_tokens: dict[str, str] = {}
        #: Conversation requests answered 401, with the reason.
        self.rejections: list[str] = []

    @property
    def answer(self) -> str:
        return "".join(self.pieces)

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/api/loads", self._loads)
        app.router.add_post("/auth/login", self._login)
        app.router.add_get("/", self._home)
        app.router.add_get("/api/auth/session", self._session)
        app.router.add_post("/api/conversation", self._conversation)
        self.add_catch_all(app)

    def _check_headers(self, seen: Seen) -> None:
        self.expect_header(seen, "accept-language", "en-US")
        self.expect_header(seen, "referer", f"{self.base_url}/?v=2")
        self.expect_chrome(seen)
        self.expect_client_hints(seen)

    # -- login ---------------------------------------------------------------------------------

    async def _loads(self, request: web.Request) -> web.StreamResponse:
        seen = await self.record(request)
        self._check_headers(seen)
        if self.expect_keys("loads query", seen.query, ("t",)):
            self.expect_fresh_timestamp("loads t", seen.query["t"])
        if self.mode == "empty_accounts":
            return web.json_response({"loads": []})
        accounts = self.accounts
        if self.mode == "all_busy":
            accounts = [{**account, "count": account["count"] or 1} for account in accounts]
        self.offered.update(str(a["token_id"]) for a in accounts if a["count"] == 0)
        self.busy.update(str(a["token_id"]) for a in accounts if a["count"] != 0)
        return web.json_response({"loads": accounts})

    async def _login(self, request: web.Request) -> web.StreamResponse:
        seen = await self.record(request)
        self._check_headers(seen)
        self.expect_same("login query", seen.query, {})
        form = self.form_body(seen, ("token_key", "session_password"))
        if form is None:
            return web.json_response({"detail": "bad login form"}, status=400)
        self.login_forms.append(form)
        offered = form["token_key"] in self.offered
        if form["token_key"] in self.busy:
            self.expect(False, f"login with the busy account {form['token_key']!r} (count > 0)")
        else:
            self.expect(
                offered, f"login token_key {form['token_key']!r} was not offered by /api/loads"
            )
        password = self.expect_match("login session_password", form["session_password"], RANDOM10)
        if not offered or not password:
            return web.json_response({"detail": "bad login form"}, status=400)
        cookie = secrets.token_urlsafe(24)
        self.sessions[cookie] = None
        response = web.Response(status=302, headers={"Location": "/"})
        response.set_cookie(self.COOKIE, cookie, path="/", httponly=True, samesite="Lax")
        return response

    async def _home(self, request: web.Request) -> web.StreamResponse:
        seen = await self.record(request)
        self._check_headers(seen)
        return web.Response(text=_HOME, content_type="text/html", charset="utf-8")

    async def _session(self, request: web.Request) -> web.StreamResponse:
        seen = await self.record(request)
        self._check_headers(seen)
        self.expect_same("session query", seen.query, {})
        cookie = seen.cookies.get(self.COOKIE)
        if cookie not in self.sessions:
            self.violations.append(f"session: no session cookie from /auth/login, got {cookie!r}")
            return web.json_response({"detail": "not logged in"}, status=401)
        assert cookie is not None
        token = self.sessions[cookie]
        if token is None:
            token = "eyJhbGciOiJSUzI1NiJ9." + secrets.token_urlsafe(48)
            self.sessions[cookie] = token
            self.access_tokens[token] = cookie
            self.logins += 1
        return web.json_response(
            {
                "user": {
                    "id": "user-" + secrets.token_hex(12),
                    "name": "shared",
                    "email": "",
                    "image": "",
                    "groups": [],
                },
                "expires": time.strftime(
                    "%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() + 86400)
                ),
                "accessToken": token,
                "authProvider": "auth0",
            }
        )

    # -- conversation --------------------------------------------------------------------------

    def _check_body(self, seen: Seen) -> str | None:
        """The conversation body; returns the prompt (parts[0]) when it is well formed."""
        body = self.json_body(seen)
        if body is None or not self.expect_keys("conversation body", body, BODY_FIELDS):
            return None
        before = len(self.violations)
        constants = {
            "action": "next",
            "model": MODEL,
            "plugin_ids": [],
            "timezone_offset_min": -120,
            "suggestions": [],
            "history_and_training_disabled": True,
            "arkose_token": "",
            "force_paragen": False,
        }
        for key, value in constants.items():
            self.expect_same(f"conversation {key}", body[key], value)
        self.expect_uuid4("conversation parent_message_id", body["parent_message_id"])
        messages = body["messages"]
        prompt = None
        if not isinstance(messages, list) or len(messages) != 1:
            self.violations.append(f"conversation messages: expected one message, got {messages!r}")
        else:
            (message,) = messages
            if self.expect_keys(
                "conversation message", message, ("id", "author", "content", "metadata")
            ):
                self.expect_uuid4("conversation message id", message["id"])
                self.expect(
                    message["id"] != body["parent_message_id"],
                    "conversation: message id equals parent_message_id",
                )
                self.expect_same("conversation author", message["author"], {"role": "user"})
                self.expect_same("conversation message metadata", message["metadata"], {})
                content = message["content"]
                if self.expect_keys("conversation content", content, ("content_type", "parts")):
                    self.expect_same("content_type", content["content_type"], "text")
                    parts = content["parts"]
                    if isinstance(parts, list) and len(parts) == 1:
                        self.expect_text("conversation parts[0]", parts[0], self.expected_prompt)
                        prompt = parts[0]
                    else:
                        self.violations.append(
                            f"conversation parts: expected [text], got {parts!r}"
                        )
        return prompt if len(self.violations) == before else None

    def _unauthorized(self, reason: str) -> web.Response:
        self.rejections.append(reason)
        return web.json_response(
            {"detail": {"message": "Your authentication token has expired.", "code": reason}},
            status=401,
        )

    async def _conversation(self, request: web.Request) -> web.StreamResponse:
        seen = await self.record(request)
        self._check_headers(seen)
        self.expect_header(seen, "accept", "text/event-stream")
        self.expect_same("conversation query", seen.query, {})
        authorization = seen.headers.get("X-Authorization", "")
        token = authorization.removeprefix("Bearer ") if authorization.startswith("Bearer ") else ""
        self.expect(bool(token), f"conversation X-Authorization: {authorization!r}")
        cookie = seen.cookies.get(self.COOKIE)
        self.expect(
            cookie in self.sessions,
            f"conversation: no session cookie from /auth/login, got {cookie!r}",
        )
        owner = self.access_tokens.get(token)
        self.expect(
            owner is None or cookie is None or owner == cookie,
            "conversation: the session cookie is not the one the access token came with",
        )
        prompt = self._check_body(seen)
        if prompt is None:
            return web.json_response({"detail": "bad request"}, status=400)
        if not token or cookie not in self.sessions:
            return self._unauthorized("missing_credentials")
        if self.mode == "reject_always":
            return self._unauthorized("reject_always")
        if self.mode == "reject_once":
            self.mode = "ok"  # once: the next login works again
            self.access_tokens.pop(token, None)
            return self._unauthorized("reject_once")
        if owner is None:
            return self._unauthorized("unknown_token")
        writer = await self.open_sse(request)
        try:
            for event in self._events(prompt):
                await writer.data(event)
        except ConnectionError:
            pass  # the client stopped reading
        return writer.response

    def _events(self, prompt: str) -> list[str | dict[str, Any]]:
        """What the stream sends: events to ignore, cumulative assistant text, [DONE]."""
        conversation = str(uuid.uuid4())
        parent = str(uuid.uuid4())

        def event(role: str, text: str, kind: str = "next", final: bool = False) -> dict[str, Any]:
            return {
                "message": {
                    "id": str(uuid.uuid4()),
                    "author": {"role": role, "name": None, "metadata": {}},
                    "create_time": time.time(),
                    "update_time": None,
                    "content": {"content_type": "text", "parts": [text]},
                    "status": "finished_successfully" if final else "in_progress",
                    "end_turn": True if final else None,
                    "weight": 1.0,
                    "metadata": {"message_type": kind, "model_slug": MODEL, "parent_id": parent},
                    "recipient": "all",
                },
                "conversation_id": conversation,
                "error": None,
            }

        ignored = [event("system", SYSTEM_TEXT), event("user", prompt)]
        events: list[str | dict[str, Any]] = [*ignored, event("assistant", "")]
        if self.mode == "no_text":
            events.append(event("assistant", VARIANT_TEXT, kind="variant"))
        else:
            cumulative = ["".join(self.pieces[: i + 1]) for i in range(len(self.pieces))]
            for index, text in enumerate(cumulative):
                events.append(event("assistant", text))
                if index == 0:
                    events.append(event("assistant", VARIANT_TEXT, kind="variant"))
            events.append(event("assistant", self.answer, final=True))
        if self.mode != "cut":
            events.append("[DONE]")
        return events
