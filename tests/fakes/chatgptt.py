"""A strict fake of ChatGptt (chatgptt.me), a WordPress "AI Power" chat: a home page that carries
a nonce and a post id and sets a session cookie, then one form POST to admin-ajax.php.
"""

from __future__ import annotations

import re
import secrets

from aiohttp import web

from tests.fakes import Seen
from tests.fakes.seed import SeedFake, hex_pattern

FORM_FIELDS = (
    "_wpnonce",
    "post_id",
    "url",
    "action",
    "message",
    "bot_id",
    "chatbot_identity",
    "wpaicg_chat_client_id",
    "wpaicg_chat_history",
)

#: A double-quoted HTML attribute (the page's quotes are swapped for "single_quotes").
_ATTRIBUTE = re.compile(r'(\s[\w-]+)="([^"]*)"')

_PAGE = """<!DOCTYPE html>
<html lang="en-US">
<head>
<meta charset="UTF-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ChatGPT Online - Free AI Chat &#8211; ChatGPTT</title>
<link rel="stylesheet" id="wpaicg-chat-css"
  href="/wp-content/plugins/gpt3-ai-content-generator/public/css/wpaicg-public.css?ver=1.8.56"
  type="text/css" media="all">
<script type="text/javascript" id="wpaicg-init-js-extra">
/* <![CDATA[ */
var wpaicgParams = {"ajax_url":"\\/wp-admin\\/admin-ajax.php","search_nonce":"5b1c0e7d2a",
  "logged_in":"0"};
/* ]]> */
</script>
</head>
<body class="page-template-default page page-id-{post_id}">
<div id="page" class="site"><main id="main" class="site-main">
<article id="post-{post_id}" class="post-{post_id} page type-page status-publish hentry">
<div class="entry-content">
<div class="wpaicg-chat-shortcode" data-user-bg-color="#444654" data-color="#fff"
  data-fontsize="13" data-use-avatar="0"
  data-user-avatar="/wp-content/plugins/gpt3-ai-content-generator/public/images/default.png"
  data-you="You" data-ai-avatar="/wp-content/plugins/gpt3-ai-content-generator/public/images/ai.png"
  data-ai-name="AI" data-ai-bg-color="#343541" {nonce_attr} data-post-id="{post_id}"
  data-url="{url}" data-bot-id="0" data-width="100%" data-height="445" data-chat_addition="0"
  data-speech="" data-voice_service="" style="width: 100%;">
  <div class="wpaicg-chat-shortcode-content"><ul class="wpaicg-chat-shortcode-messages">
    <li class="wpaicg-ai-message"><p><strong class="wpaicg-chat-avatar">AI:</strong>
      Hi! How can I help you?</p></li>
  </ul></div>
  <div class="wpaicg-chat-shortcode-type">
    <textarea class="wpaicg-chat-shortcode-typing" placeholder="Type a message"></textarea>
    <span class="wpaicg-chat-shortcode-send"><svg viewBox="0 0 16 16">
      <path d="M15.854.146a.5.5 0 0 1 .11.54l-5.819 14.547"/></svg></span>
  </div>
</div>
<h2>Other bots</h2>
<div class="wpaicg-chat-shortcode" data-nonce="decoy0nonce" data-post-id="99999"
  data-bot-id="7"></div>
</div></article></main></div>
<footer class="site-footer">&copy; 2023 ChatGPTT</footer>
</body>
</html>
"""


class FakeChatGptt(SeedFake):
    """chatgptt.me: ``GET /`` (nonce, post id, cookie) then ``POST /wp-admin/admin-ajax.php``.

    Modes: "ok", "missing_nonce", "single_quotes", "error_json", "cloudflare" (the home page),
    "ratelimit" (the POST).
    """

    COOKIE = "wpaicg_chat_session"

    def __init__(self) -> None:
        super().__init__()
        self.nonce = "f3a91c07be"
        self.post_id = "106"
        self.answer = "Hello from ChatGptt!"
        #: When set, the POST's ``message`` must equal it (format_prompt(messages)).
        self.expected_message: str | None = None
        #: The cookies the latest home page set; the POST must send them back.
        self.page_cookies: dict[str, str] = {}
        #: Every wpaicg_chat_client_id seen (a new one each call).
        self.client_ids: list[str] = []
        self.page_loads = 0

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/", self._home)
        app.router.add_post("/wp-admin/admin-ajax.php", self._ajax)
        self.add_catch_all(app)

    def _check_headers(self, seen: Seen) -> None:
        self.expect_header(seen, "accept", "application/json")
        self.expect_header(seen, "origin", self.origin)
        self.expect_header(seen, "referer", f"{self.base_url}/chat")
        self.expect_chrome(seen)

    def page(self) -> str:
        """The home page HTML as the current mode serves it."""
        nonce_attr = "" if self.mode == "missing_nonce" else f'data-nonce="{self.nonce}"'
        html = (
            _PAGE.replace("{nonce_attr}", nonce_attr)
            .replace("{post_id}", self.post_id)
            .replace("{url}", self.base_url)
        )
        if self.mode == "missing_nonce":
            html = html.replace(' data-nonce="decoy0nonce"', "")
        if self.mode == "single_quotes":
            html = _ATTRIBUTE.sub(r"\1='\2'", html)
        return html

    async def _home(self, request: web.Request) -> web.StreamResponse:
        seen = await self.record(request)
        self._check_headers(seen)
        self.expect_same("home page query", seen.query, {})
        if self.mode == "cloudflare":
            return self.cloudflare()
        self.page_loads += 1
        self.page_cookies = {self.COOKIE: secrets.token_hex(16), "pll_language": "en"}
        response = web.Response(text=self.page(), content_type="text/html", charset="utf-8")
        for name, value in self.page_cookies.items():
            response.set_cookie(name, value, path="/")
        return response

    def _check_form(self, seen: Seen) -> bool:
        form = self.form_body(seen, FORM_FIELDS)
        if form is None:
            return False
        before = len(self.violations)
        expected = {
            "_wpnonce": self.nonce,
            "post_id": self.post_id,
            "url": self.base_url,
            "action": "wpaicg_chat_shortcode_message",
            "bot_id": "0",
            "chatbot_identity": "shortcode",
            "wpaicg_chat_history": "None",
        }
        for key, value in expected.items():
            self.expect_equal(f"admin-ajax {key}", form[key], value)
        self.expect_text("admin-ajax message", form["message"], self.expected_message)
        client_id = form["wpaicg_chat_client_id"]
        if self.expect_match("admin-ajax wpaicg_chat_client_id", client_id, hex_pattern(10)):
            self.expect(
                client_id not in self.client_ids,
                f"admin-ajax wpaicg_chat_client_id {client_id!r} reused (must be new each call)",
            )
        self.client_ids.append(client_id)
        return len(self.violations) == before

    async def _ajax(self, request: web.Request) -> web.StreamResponse:
        seen = await self.record(request)
        self._check_headers(seen)
        self.expect(bool(self.page_cookies), "admin-ajax: POST without loading the home page")
        for name, value in self.page_cookies.items():
            self.expect_equal(f"admin-ajax cookie {name}", seen.cookies.get(name), value)
        form_ok = self._check_form(seen)
        if self.mode == "ratelimit":
            return web.Response(
                status=429,
                text="<html><head><title>429 Too Many Requests</title></head><body>"
                "<center><h1>429 Too Many Requests</h1></center><hr><center>nginx</center>"
                "</body></html>",
                content_type="text/html",
            )
        if not form_ok:
            return web.json_response({"status": "error", "msg": "Bad request"}, status=400)
        if self.mode == "error_json":
            return web.json_response({"status": "error", "msg": "Nonce expired"})
        return web.json_response({"status": "success", "data": self.answer})
