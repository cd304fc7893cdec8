"""Retries with backoff, Retry-After, and the provider fallback chain, counted at the fake."""

from __future__ import annotations

import json
import time

import pytest
from aiohttp import web

from tests.conftest import Isolated, run, run_binary
from tests.faults import HangingPort, without_local
from tests.servers import AppServer, FakeOpenAI

pytestmark = pytest.mark.usefixtures("fast_retries")


def ask(fake: FakeOpenAI, *args: str) -> list[str]:
    return ["ask", "-p", "ollama", "-m", "m", "--base-url", fake.base_url, *args]


def chat_requests(fake: FakeOpenAI) -> int:
    return sum(1 for r in fake.requests if r.path.endswith("/chat/completions"))


@pytest.mark.parametrize("status", [500, 502, 503, 408, 409])
def test_retryable_statuses_are_retried_twice_then_fail(
    fake: FakeOpenAI, isolated: Isolated, status: int
) -> None:
    fake.mode, fake.status, fake.body = "status", status, '{"error": "flaky"}'
    result = run(ask(fake, "hi"), isolated)
    assert result.returncode == 1
    assert chat_requests(fake) == 3  # the first try and two retries
    lines = result.stderr.splitlines()
    assert [line for line in lines if "retrying in" in line][-1].endswith("(2/2)")
    assert lines[-1].startswith(f"chatcli: ollama: HTTP {status}")
    assert result.stdout == ""


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_client_errors_are_not_retried(fake: FakeOpenAI, isolated: Isolated, status: int) -> None:
    fake.mode, fake.status, fake.body = "status", status, '{"error": "no"}'
    result = run(ask(fake, "hi"), isolated)
    assert result.returncode == 1 and chat_requests(fake) == 1
    assert "retrying" not in result.stderr


def test_retries_option_and_recovery(fake: FakeOpenAI, isolated: Isolated) -> None:
    fake.mode, fake.status = "status", 503
    assert run(ask(fake, "--retries", "0", "hi"), isolated).returncode == 1
    assert chat_requests(fake) == 1

    # A server that recovers: the answer arrives after one retry.
    server = FakeOpenAI()
    calls = {"n": 0}

    async def flaky(request: web.Request) -> web.StreamResponse:
        calls["n"] += 1
        server.mode = "status" if calls["n"] == 1 else "ok"
        return await server._chat(request)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", flaky)
    with AppServer(app) as http:
        server.status = 500
        result = run(["ask", "-p", "ollama", "-m", "m", "--base-url", f"{http.url}/v1", "hi"],
                     isolated)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Hello, world!\n" and calls["n"] == 2
    assert "retrying in" in result.stderr


@pytest.mark.parametrize(("status", "said"), [(429, "rate limited"), (503, "HTTP 503")])
def test_retry_after_is_honoured_and_shown(
    fake: FakeOpenAI, isolated: Isolated, status: int, said: str
) -> None:
    fake.mode, fake.status, fake.body = "status", status, '{"error": {"message": "slow down"}}'
    fake.headers = {"Retry-After": "1"}
    started = time.monotonic()
    result = run(ask(fake, "--retries", "1", "hi"), isolated)
    assert result.returncode == 1 and chat_requests(fake) == 2
    assert time.monotonic() - started >= 1.0
    assert said in result.stderr and "the server asks to wait 1 s" in result.stderr
    assert "retrying in 1.0 s (1/1)" in result.stderr


def test_a_retry_after_beyond_the_limit_is_not_waited_for(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    fake.mode, fake.status, fake.headers = "status", 429, {"Retry-After": "100"}
    result = run(ask(fake, "hi"), isolated)
    assert result.returncode == 1 and chat_requests(fake) == 1


def test_text_already_shown_is_never_retried(fake: FakeOpenAI, isolated: Isolated) -> None:
    fake.mode = "drop"  # two pieces, then the connection breaks
    result = run(ask(fake, "hi"), isolated)
    assert result.returncode == 1 and chat_requests(fake) == 1
    assert result.stdout == "Hello, \n"


def test_a_refused_loopback_connection_fails_at_once_and_a_timeout_is_retried(
    isolated: Isolated,
) -> None:
    # Nothing listens on this machine's port (Ollama not started): asking again cannot help.
    refused = run(["ask", "-p", "ollama", "-m", "m", "--base-url", "http://localhost:9/v1", "hi"],
                  isolated)  # fmt: skip
    assert refused.returncode == 1
    assert "retrying" not in refused.stderr and "connection refused" in refused.stderr
    hanging = HangingPort()
    try:
        url = f"http://localhost:{hanging.port}/v1"
        timed_out = run(["ask", "-p", "ollama", "-m", "m", "--base-url", url, "--timeout", "0.3",
                         "hi"], isolated)  # fmt: skip
    finally:
        hanging.close()
    assert timed_out.returncode == 1
    assert timed_out.stderr.count("retrying in") == 2


def test_fallback_chain_tries_the_next_provider(fake: FakeOpenAI, isolated: Isolated) -> None:
    isolated.write_config(
        f'[providers.good]\ntype = "openai"\nbase_url = "{fake.base_url}"\nmodel = "m"\n'
    )
    result = run(["ask", "-p", "ollama,good", "--base-url", "http://localhost:9/v1", "--retries",
                  "0", "--json", "hi"], isolated)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["provider"] == "good"
    assert "trying good" in result.stderr
    assert chat_requests(fake) == 1
    verbose = run(["ask", "-p", "ollama,good", "--base-url", "http://localhost:9/v1",
                   "--retries", "0", "-v", "hi"], isolated)  # fmt: skip
    assert verbose.returncode == 0 and verbose.stdout == "Hello, world!\n"
    assert "answered by good" in verbose.stderr


def test_fallback_from_config_and_all_failing(fake: FakeOpenAI, isolated: Isolated) -> None:
    fake.mode, fake.status, fake.body = "status", 401, '{"error": "bad key"}'
    isolated.write_config(
        'provider = "ollama"\nfallback = ["broken"]\n'
        f'[providers.broken]\ntype = "openai"\nbase_url = "{fake.base_url}"\nmodel = "m"\n'
    )
    result = run(["ask", "--base-url", "http://localhost:9/v1", "--retries", "0", "hi"], isolated)
    assert result.returncode == 1
    last = result.stderr.splitlines()[-1]
    assert last.startswith("chatcli: every provider failed: ollama: cannot connect")
    assert "broken: not authorised (HTTP 401" in last


def test_providers_check_reports_each_configured_provider(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    # Nothing configured and no offline model installed: nothing to check.
    hidden = without_local(isolated.root / "site")
    nothing = run_binary(["providers", "--check"], isolated, env=hidden)
    assert nothing.returncode == 2 and "no provider is configured" in nothing.stderr
    isolated.write_config(
        'provider = "good"\nfallback = ["down"]\n'
        f'[providers.good]\ntype = "openai"\nbase_url = "{fake.base_url}"\nmodel = "m"\n'
        '[providers.down]\ntype = "openai"\nbase_url = "http://localhost:9/v1"\nmodel = "m"\n'
    )
    result = run(["providers", "--check", "--json"], isolated)
    assert result.returncode == 1  # one of them failed
    assert result.stderr == ""  # the table says so: no error line (nor an "internal error")
    rows = {row["provider"]: row for row in json.loads(result.stdout)}
    assert set(rows) == {"good", "down"}  # only what is configured: nothing else is contacted
    assert rows["good"]["ok"] and rows["good"]["model"] == "m"
    assert 0 <= rows["good"]["first_token_s"] <= rows["good"]["total_s"]
    assert not rows["down"]["ok"] and "connection refused" in rows["down"]["error"]
    assert fake.requests[-1].body["messages"][0]["content"].startswith("Reply with")
    table = run(["providers", "--check", "-p", "good"], isolated)
    assert table.returncode == 0, table.stderr
    assert "good" in table.stdout and " ok " in table.stdout
    failed = run(["providers", "--check", "-p", "down"], isolated)
    assert (failed.returncode, failed.stderr) == (1, "")
    assert "failed" in failed.stdout and "connection refused" in failed.stdout
