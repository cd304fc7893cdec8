"""``chatcli serve`` as the real binary: the token it makes up off loopback, the log line per
request, Ctrl-C cutting an open stream with an error event, and bad flags."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.conftest import CHATCLI, Isolated, assert_one_line_error, run_binary
from tests.servers import FakeOpenAI

LISTENING = re.compile(r"serving on http://[^:]+:(\d+)/")


class Served:
    def __init__(self, process: subprocess.Popen[bytes], port: int, stderr: list[str]) -> None:
        self.process = process
        self.port = port
        self.stderr = stderr

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def request(self, path: str, body: Any = None, token: str | None = None) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url(path), data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=20) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def read_line(self, timeout: float = 20) -> str:
        """The next line of stderr (the process's own log)."""
        assert self.process.stderr is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stderr.readline().decode("utf-8", "replace")
            if line:
                self.stderr.append(line)
                return line
            time.sleep(0.01)
        raise AssertionError(f"no line on stderr; so far: {self.stderr}")


@contextmanager
def serve(isolated: Isolated, *args: str) -> Iterator[Served]:
    process = subprocess.Popen(
        [str(CHATCLI), "serve", "--port", "0", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=isolated.env,
        cwd=isolated.root,
    )
    lines: list[str] = []
    try:
        served = Served(process, 0, lines)
        found = LISTENING.search(served.read_line())
        assert found, lines
        served.port = int(found.group(1))
        yield served
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        assert process.stderr is not None
        process.stderr.close()


def configure(isolated: Isolated, fake: FakeOpenAI) -> None:
    isolated.write_config(
        'provider = "ollama"\nmodel = "m"\nretries = 0\n'
        f'[providers.ollama]\nbase_url = "{fake.base_url}"\n'
    )


QUESTION = {"model": "ollama/m", "messages": [{"role": "user", "content": "hi"}]}


def test_off_loopback_a_token_is_made_up_printed_once_and_required(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    configure(isolated, fake)
    with serve(isolated, "--host", "0.0.0.0") as served:
        said = served.read_line()
        token = said.split("token (shown once, not stored): ", 1)[1].strip()
        assert len(token) >= 24
        assert f"#token={token}" in served.read_line()
        assert served.request("/v1/models")[0] == 401
        status, body = served.request("/v1/chat/completions", QUESTION, token="wrong-token-x")
        assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
        status, body = served.request("/v1/chat/completions", QUESTION, token=token)
        assert status == 200
        assert json.loads(body)["choices"][0]["message"]["content"] == "Hello, world!"
        assert served.request("/health")[0] == 200
        served.process.send_signal(signal.SIGINT)
        assert served.process.wait(20) == 0
        assert served.process.stderr is not None
        rest = served.process.stderr.read().decode()
    log = "".join(served.stderr) + rest
    assert len(fake.requests) == 1
    assert "GET /v1/models - 401 " in log
    assert re.search(r"POST /v1/chat/completions ollama/m 200 \d+\.\d\ds \d+\.\d\ds", log)
    assert log.count(token) == 2  # the line that gives it, and the page's address


def test_ctrl_c_cuts_an_open_stream_with_an_error_event_and_exits_0(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    configure(isolated, fake)
    fake.pieces = ["word "] * 200
    fake.delay = 0.05
    with serve(isolated) as served:
        request = urllib.request.Request(
            served.url("/v1/chat/completions"),
            data=json.dumps({**QUESTION, "stream": True}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=20) as response:
            first = response.readline()
            assert first.startswith(b"data: {")
            served.process.send_signal(signal.SIGINT)
            events = [line for line in response.read().split(b"\n") if line.startswith(b"data:")]
        assert served.process.wait(20) == 0
        assert served.process.stderr is not None
        rest = served.process.stderr.read().decode()
    last = json.loads(events[-1][len(b"data: ") :])
    assert last["error"]["message"] == "the server stopped; the answer is cut"
    assert b"[DONE]" not in b"".join(events)  # a cut answer never says it is complete
    assert "stopping: open answers are cut" in rest and "chatcli: stopped" in rest
    assert "POST /v1/chat/completions ollama/m 503 " in rest


def test_bad_flags_are_one_line_errors(isolated: Isolated) -> None:
    result = run_binary(["serve", "--cors-origin", "app.example"], isolated)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "--cors-origin", "https://app.example")
    result = run_binary(["serve", "--cors-origin", "https://app.example/path"], isolated)
    assert result.returncode == 2
    result = run_binary(["serve", "--token", "short"], isolated)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "--token", "at least 8")


def test_a_port_in_use_is_one_line(fake: FakeOpenAI, isolated: Isolated) -> None:
    configure(isolated, fake)
    with serve(isolated) as served:
        result = run_binary(["serve", "--port", str(served.port)], isolated)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, f"cannot listen on 127.0.0.1:{served.port}")


def test_a_cut_answer_is_said_in_its_log_line(fake: FakeOpenAI, isolated: Isolated) -> None:
    configure(isolated, fake)
    fake.finish_reason = "length"
    with serve(isolated) as served:
        status, body = served.request("/v1/chat/completions", QUESTION)
        assert status == 200 and json.loads(body)["choices"][0]["finish_reason"] == "length"
        line = served.read_line()
    assert re.search(r"POST /v1/chat/completions ollama/m 200 \S+ \S+ length$", line.strip())
    assert "max_tokens" not in "".join(served.stderr)  # (the command line's advice)
