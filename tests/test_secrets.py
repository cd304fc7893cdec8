"""Secrets never leave their place: a planted key, cookie value and proxy password are
searched for in everything chatcli prints and writes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from chatcli.store import Cookie, Stores
from tests.conftest import Isolated, run
from tests.fakes.aichat import FakeAichat
from tests.servers import FakeOpenAI, ForwardProxy

pytestmark = pytest.mark.usefixtures("fast_retries")

KEY = "sk-CANARY-KEY-7f3a9b2c"
COOKIE = "CANARY-COOKIE-51d2e8"
PASSWORD = "CANARY-PASS-c0ffee"


def everything_written(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def test_no_secret_reaches_output_logs_database_or_exports(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    env = {"OPENAI_API_KEY": KEY}
    outputs: list[str] = []
    with ForwardProxy() as proxy:
        proxy_url = f"http://user:{PASSWORD}@localhost:{proxy.port}"
        # A key the server echoes back in an error, with -v logging and a traceback.
        fake.mode, fake.status = "status", 401
        fake.body = f'{{"error": {{"message": "Incorrect API key provided: {KEY}"}}}}'
        failed = run(["ask", "-p", "openai", "-v", "--retries", "0", "--base-url",
                      fake.base_url, "--proxy", proxy_url, "-S", "canary", "first"],
                     isolated, env=env)  # fmt: skip
        assert failed.returncode == 1
        outputs += [failed.stdout, failed.stderr]
        # A working turn, then everything that shows or exports the session.
        fake.mode = "ok"
        ok = run(["ask", "-p", "openai", "-v", "--base-url", fake.base_url, "--proxy", proxy_url,
                  "-S", "canary", "--json", "second"], isolated, env=env)  # fmt: skip
        assert ok.returncode == 0, ok.stderr
        outputs += [ok.stdout, ok.stderr]
    assert all(r.headers.get("Authorization") == f"Bearer {KEY}" for r in fake.requests)
    export = isolated.root / "export.json"
    for args in (["sessions", "show", "canary"], ["sessions", "show", "canary", "--json"],
                 ["sessions", "export", "canary", "--format", "json", "-o", str(export)],
                 ["sessions", "list", "--json"], ["sessions", "search", "second"],
                 ["providers", "--json"], ["paths"]):  # fmt: skip
        result = run(args, isolated, env=env)
        outputs += [result.stdout, result.stderr]

    # The Aichat cookie: stored, sent, never shown.
    Stores(isolated.chatcli_home / "data").cookies.save(
        [Cookie("chat-gpt.org", "session", COOKIE, expires=time.time() + 3600)]
    )
    aichat = FakeAichat()
    aichat.required_cookies = {"session": COOKIE}
    aichat.mode = "falsy"  # an error reply, quoted in the message
    with aichat.serve():
        result = run(["ask", "-p", "aichat", "-v", "--base-url", aichat.base_url, "hi"], isolated)
    assert result.returncode == 1 and aichat.requests[-1].cookies == {"session": COOKIE}
    listed = run(["cookies", "list"], isolated)
    outputs += [result.stdout, result.stderr, listed.stdout, listed.stderr]

    printed = "\n".join(outputs)
    for secret in (KEY, PASSWORD):
        assert secret not in printed
        assert secret.encode() not in everything_written(isolated.chatcli_home)
        assert secret.encode() not in export.read_bytes()
    assert COOKIE not in printed
    # The cookie value lives in exactly one place: the 0600 cookie file.
    holders = [
        p
        for p in isolated.chatcli_home.rglob("*")
        if p.is_file() and COOKIE.encode() in p.read_bytes()
    ]
    assert holders == [isolated.chatcli_home / "data" / "cookies.json"]
