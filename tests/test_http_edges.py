"""HTTP edges a hostile server or proxy can push a client over (issue 13, part B): redirect
loops and broken redirects, TLS verification, Retry-After out of range, and credentials echoed
back. Each ends in one clear line, is retried only when another try could help, and never
shows a secret.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from aiohttp import web

from chatcli.errors import note_url_credentials, redact_credentials
from chatcli.providers import http
from tests.conftest import Isolated, assert_one_line_error, run, run_binary
from tests.faults import refusing_port
from tests.hostile import Hostile, TLSServer, self_signed_certificate
from tests.servers import AppServer, FakeOpenAI, ForwardProxy


@pytest.fixture
def hostile() -> Iterator[Hostile]:
    server = Hostile()
    with server.serve() as served:
        server.root = served.url
        yield server


def ask(root: str, *extra: str) -> list[str]:
    return ["ask", "-p", "ollama", "-m", "m", "--base-url", f"{root}/v1", *extra, "hi"]


def everything_written(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


# -- redirects ------------------------------------------------------------------------------------


def test_binary_a_redirect_loop_stops_after_a_few_hops(
    hostile: Hostile, isolated: Isolated
) -> None:
    root = hostile.root
    hostile.mode = "redirect_loop"
    result = run_binary(ask(root), isolated)  # retries left at their default (2)
    assert result.returncode == 1 and result.stdout == ""
    line = assert_one_line_error(result.stderr, "too many redirects from ")
    assert f"{root}/v1/chat/completions" in line and "stopped" in line
    # The limit's redirects and the one refused; not retried (it was 30 requests before).
    assert len(hostile.seen) == http.MAX_REDIRECTS + 1


def test_a_web_provider_stops_a_redirect_loop_too(hostile: Hostile, isolated: Isolated) -> None:
    root = hostile.root
    hostile.mode = "redirect_loop"
    result = run(["ask", "-p", "gptalk", "--base-url", root, "hi"], isolated)
    assert result.returncode == 1
    assert_one_line_error(result.stderr, f"too many redirects from {root}/api/chatgpt/user/login")
    assert len(hostile.seen) == http.MAX_REDIRECTS + 1


@pytest.mark.parametrize(
    ("location", "fragment"),
    [
        ("ftp://files.example/x", "redirected to 'ftp://files.example/x', which is not an http"),
        ("http://[broken/x", "redirected to 'http://[broken/x', which is not an http"),
        ("mailto:someone@example.com", "redirected to 'mailto:someone@example.com'"),
    ],
)
def test_a_redirect_that_cannot_be_followed_names_where_it_led(
    hostile: Hostile, isolated: Isolated, location: str, fragment: str
) -> None:
    root = hostile.root
    hostile.mode, hostile.location = "redirect_to", location
    result = run(ask(root), isolated)
    assert result.returncode == 1  # a provider error, not a usage error about the user's URL
    line = assert_one_line_error(result.stderr, fragment)
    assert f"{root}/v1/chat/completions" in line
    assert len(hostile.seen) == 1  # not retried


def test_binary_a_redirect_to_a_dead_port_names_that_port(
    hostile: Hostile, isolated: Isolated
) -> None:
    root = hostile.root
    dead = refusing_port()
    hostile.mode, hostile.location = "redirect_to", f"http://localhost:{dead}/elsewhere"
    result = run_binary(ask(root, "--retries", "0"), isolated)
    assert result.returncode == 1
    line = assert_one_line_error(result.stderr, f"cannot connect to localhost:{dead}")
    assert f"redirected from {root}/v1/chat/completions" in line
    assert "connection refused" in line


# -- TLS ----------------------------------------------------------------------------------------


def test_binary_a_certificate_that_fails_verification_is_named_and_not_retried(
    tmp_path: Path, isolated: Isolated
) -> None:
    cert, key = self_signed_certificate(tmp_path / "tls")
    fake = FakeOpenAI()
    with TLSServer(fake.app(), cert, key) as server:
        result = run_binary(ask(f"{server.url}"), isolated)  # retries left at their default
        assert result.returncode == 1 and result.stdout == ""
        line = assert_one_line_error(result.stderr, "certificate verify failed for localhost")
        assert "self-signed certificate" in line
        assert server.handshakes == 1 and fake.requests == []
        # The same server, its certificate trusted: it answers (the failure was the check).
        trusted = run_binary(ask(server.url), isolated, env={"SSL_CERT_FILE": str(cert)})
        assert trusted.returncode == 0, trusted.stderr
        assert trusted.stdout == "Hello, world!\n"


# -- Retry-After ----------------------------------------------------------------------------------


def test_retry_after_values_that_ask_for_no_wait_are_ignored() -> None:
    now = 1_700_000_000.0
    past = "Tue, 14 Nov 2023 22:00:00 GMT"  # an hour before ``now``
    future = "Tue, 14 Nov 2023 23:13:20 GMT"  # 3600 s after ``now``
    for value in ("0", "-5", "-0.5", past, "nan", "inf", "1e400", "soon", "", None):
        assert http.parse_retry_after(value, now=now) is None, value
        assert http.retry_after_asked(value, now=now) is None, value
    assert http.parse_retry_after("2.5") == 2.5
    assert http.retry_after_asked(future, now=now) == 3600.0
    assert http.parse_retry_after(future, now=now) == http.RETRY_AFTER_CAP
    assert http.retry_after_asked("86400") == 86400.0
    assert [http.format_wait(s) for s in (3, 90, 3600, 7200, 3 * 86400)] == [
        "3 s", "90 s", "60 min", "2 h", "3 days",
    ]  # fmt: skip


def test_binary_a_retry_after_beyond_the_cap_says_what_was_asked_and_gives_up(
    hostile: Hostile, isolated: Isolated
) -> None:
    hostile.mode, hostile.retry_after = "retry_after", "86400"
    started = time.monotonic()
    result = run_binary(ask(hostile.root), isolated)  # retries left at their default
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "rate limited (HTTP 429", "the server asks to wait 24 h")
    assert len(hostile.seen) == 1 and time.monotonic() - started < 10


@pytest.mark.parametrize("value", ["0", "-3", "Thu, 01 Jan 2015 00:00:00 GMT"])
def test_a_retry_after_of_no_wait_falls_back_to_the_normal_backoff(
    hostile: Hostile, isolated: Isolated, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    import chatcli.turn

    asked: list[float | None] = []

    def backoff(attempt: int, retry_after: float | None = None) -> float:
        asked.append(retry_after)
        return 0.0

    monkeypatch.setattr(chatcli.turn, "backoff", backoff)
    hostile.mode, hostile.retry_after = "retry_after", value
    result = run(ask(hostile.root, "--retries", "2"), isolated)
    assert result.returncode == 1 and len(hostile.seen) == 3
    assert asked == [None, None, None]
    assert "asks to wait" not in result.stderr


def test_binary_retry_after_zero_waits_the_normal_backoff(
    hostile: Hostile, isolated: Isolated
) -> None:
    hostile.mode, hostile.retry_after = "retry_after", "0"
    result = run_binary(ask(hostile.root, "--retries", "1"), isolated)
    assert result.returncode == 1 and len(hostile.seen) == 2
    notice = result.stderr.splitlines()[0]
    wait = float(notice.split("retrying in ")[1].split(" s")[0])
    assert 0.3 <= wait <= 0.5, notice  # turn.BACKOFF_BASE less jitter, not 0 s


# -- proxy credentials ----------------------------------------------------------------------------

#: Every character RFC 3986 allows in a URL's password as it is: sub-delims, ":" and the
#: unreserved marks (letters and digits need no test). A percent-encoded one is tested too.
LEGAL = "!$&'()*+,;=:-._~"


def test_every_spelling_of_noted_proxy_credentials_is_blanked_out() -> None:
    proxy = "http://carol:Pa'ss%40w(o)rd~1@proxy.test:3128"
    note_url_credentials(proxy)
    basic = base64.b64encode(b"carol:Pa'ss@w(o)rd~1").decode()
    text = (
        f"tried {proxy}; login carol:Pa'ss@w(o)rd~1 refused; got Basic {basic}; "
        "password Pa'ss%40w(o)rd~1 or Pa'ss@w(o)rd~1"
    )
    shown = redact_credentials(text)
    for secret in ("Pa'ss", "w(o)rd", basic):
        assert secret not in shown, shown
    assert shown.count("***") == 5 and "proxy.test:3128" in shown


@pytest.mark.parametrize("char", list(LEGAL))
def test_a_url_password_with_any_legal_character_is_blanked_out(char: str) -> None:
    text = f"407, url='http://user:ab{char}cd{char}ef@localhost:5/', then http://h/x"
    assert redact_credentials(text) == "407, url='http://user:***@localhost:5/', then http://h/x"


def proxy_login_refused(isolated: Isolated, password: str, *, binary: bool) -> tuple[str, str]:
    """``ask -v`` through a proxy that refuses the login: aiohttp's own error, the one that
    quotes the proxy URL, goes through the ``-v`` traceback."""
    with ForwardProxy(require_auth="Basic bm90OnRoaXM=") as proxy:
        proxy_url = f"http://user:{password}@localhost:{proxy.port}"
        args = ["ask", "-v", "--retries", "0", "-p", "ollama", "-m", "m", "--base-url",
                "https://localhost:9/v1", "--proxy", proxy_url, "hi"]  # fmt: skip
        result = (run_binary if binary else run)(args, isolated)
        assert proxy.seen and proxy.seen[0].startswith("CONNECT ")
    assert result.returncode == 1
    assert "the proxy refused the request" in result.stderr.splitlines()[-1]
    return result.stdout, result.stderr


@pytest.mark.parametrize("char", list(LEGAL))
def test_v_output_never_shows_a_proxy_password_whatever_its_characters(
    isolated: Isolated, char: str
) -> None:
    password = f"Se{char}cret{char}9"
    stdout, stderr = proxy_login_refused(isolated, password, binary=False)
    assert "Traceback" in stderr and "ClientHttpProxyError" in stderr  # what -v adds
    assert password not in stdout + stderr
    assert "user:***@localhost" in stderr


def test_binary_v_output_never_shows_a_proxy_password(isolated: Isolated) -> None:
    password = f"x{LEGAL}%40y"
    stdout, stderr = proxy_login_refused(isolated, password, binary=True)
    assert "Traceback" in stderr
    for secret in (password, password.replace("%40", "@"), "!$&'()*+,;="):
        assert secret not in stdout + stderr


def test_binary_a_proxy_that_echoes_the_credentials_back_gets_them_blanked(
    hostile: Hostile, isolated: Isolated
) -> None:
    password = "Pr0xy'Pa$$(word)%2F1"
    decoded = password.replace("%2F", "/")
    basic = base64.b64encode(f"dave:{decoded}".encode()).decode()
    hostile.mode = "echo_proxy_auth"
    target = f"http://localhost:{refusing_port()}"  # never reached: the proxy answers
    proxy = f"http://dave:{password}@{urlsplit(hostile.root).netloc}"
    result = run_binary(ask(target, "-v", "--retries", "0", "--proxy", proxy), isolated)
    assert result.returncode == 1 and len(hostile.seen) == 1
    line = result.stderr.splitlines()[-1]
    assert "HTTP 407" in line and "proxy login *** refused (you sent Basic ***)" in line
    for secret in (password, decoded, basic, "Pa$$(word)"):
        assert secret not in result.stdout + result.stderr
        assert secret.encode() not in everything_written(isolated.chatcli_home)


@pytest.mark.parametrize("status", [200, 500])
def test_json_nested_too_deep_is_one_line_not_an_internal_error(
    isolated: Isolated, status: int
) -> None:
    body = "[" * 100_000  # json.loads raises RecursionError, not ValueError

    async def reply(request: web.Request) -> web.Response:
        return web.Response(status=status, text=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", reply)
    with AppServer(app) as server:
        args = ["ask", "-p", "ollama", "-m", "m", "--base-url", f"{server.url}/v1", "--no-stream",
                "--retries", "0", "hi"]  # fmt: skip
        result = run(args, isolated)
    assert result.returncode == 1
    assert "internal error" not in result.stderr and "RecursionError" not in result.stderr
    assert_one_line_error(result.stderr, "ollama")
    if status == 500:
        assert "HTTP 500" in result.stderr
