"""Memory stays bounded whatever a server sends: every read has a limit, and going over it ends
the turn with one line naming the limit, the partial answer kept (issue 13, part A).

Each form comes from the hostile server (tests/hostile.py). In-process tests lower the limits
(to 64 KiB per SSE line or event, 256 KiB per reply) to stay quick; the real binary, whose
limits cannot be lowered, gets sizes just over the real ones, cheap to make (a gzip bomb is a
few kilobytes on the wire).
"""

from __future__ import annotations

import sqlite3
import subprocess
import time
from collections.abc import Iterator

import pytest

from chatcli.errors import LimitError, format_size
from chatcli.providers import http
from chatcli.providers.sse import SSEDecoder, SSEEvent
from chatcli.store import Cookie, Stores
from tests.conftest import Isolated, run, run_binary
from tests.hostile import Hostile, MiB, answer_event

KiB = 1024
SMALL_EVENT = 64 * KiB
SMALL_REPLY = 256 * KiB

#: A fragment of the one error line for each limit.
EVENT_LINE = "the server sent an SSE line over {}; stopped (limit)"
EVENT = "the server sent an SSE event over {}; stopped (limit)"
REPLY = "the server sent a reply over {}; stopped (limit)"


@pytest.fixture
def hostile() -> Iterator[Hostile]:
    server = Hostile()
    with server.serve() as served:
        server.root = served.url
        yield server


@pytest.fixture
def small_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "MAX_EVENT_BYTES", SMALL_EVENT)
    monkeypatch.setattr(http, "MAX_REPLY_BYTES", SMALL_REPLY)


def stored(isolated: Isolated) -> list[tuple[str, str, str]]:
    db = sqlite3.connect(isolated.chatcli_home / "data" / "sessions.db")
    rows = db.execute("SELECT role, content, status FROM messages ORDER BY id").fetchall()
    db.close()
    return rows


def ask(provider: str, root: str, *extra: str) -> list[str]:
    model = ["-m", "m"] if provider == "ollama" else []
    base = f"{root}/v1" if provider == "ollama" else root
    return ["ask", "-p", provider, *model, "--base-url", base, "-S", "limits", *extra, "question"]


def check(
    result: subprocess.CompletedProcess[str],
    isolated: Isolated,
    provider: str,
    fragment: str,
    partial: str = "",
) -> None:
    """Exit 1, one line naming the limit, the partial answer on stdout and in the session."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert lines == [f"chatcli: {provider}: {fragment}"], result.stderr
    assert result.stdout.rstrip("\n") == partial
    rows = stored(isolated)
    assert rows[0] == ("user", "question", "complete")
    if partial:
        assert rows[1:] == [("assistant", partial, "interrupted")]
    else:
        assert rows[1:] == []


# -- the SSE decoder ------------------------------------------------------------------------------


def test_a_line_over_the_limit_stops_the_decoder_after_the_events_before_it() -> None:
    decoder = SSEDecoder(max_event=100)
    events = decoder.feed(b"data: first\n\n" + b"data: " + b"x" * 200)
    assert events == [SSEEvent(data="first")]
    assert decoder.overflow == "line"
    assert decoder.feed(b"\n\ndata: later\n\n") == [] and decoder.close() == []


def test_an_event_over_the_limit_stops_the_decoder_though_each_line_is_short() -> None:
    decoder = SSEDecoder(max_event=100)
    assert decoder.feed(b"data: ok\n\n" + b"data: 0123456789\n" * 5) == [SSEEvent(data="ok")]
    assert decoder.overflow is None
    assert decoder.feed(b"data: 0123456789\n" * 5) == []
    assert decoder.overflow == "event"


def test_a_line_or_event_of_exactly_the_limit_passes() -> None:
    line = b"data: " + b"y" * 94  # 100 bytes
    decoder = SSEDecoder(max_event=100)
    assert decoder.feed(line + b"\n\n") == [SSEEvent(data="y" * 94)]
    assert decoder.feed(line[:50]) == [] and decoder.feed(line[50:] + b"\n\n") != []
    assert decoder.overflow is None


def test_the_limit_is_met_at_the_same_place_however_the_bytes_are_split() -> None:
    stream = answer_event("Hello") + answer_event(", world") + b"data: " + b"z" * 300
    for cut in range(len(stream) + 1):
        decoder = SSEDecoder(max_event=256)
        events = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
        assert len(events) == 2 and decoder.overflow == "line", cut


def test_without_a_limit_the_decoder_holds_what_it_is_given() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: " + b"x" * 100_000 + b"\n\n")[0].data == "x" * 100_000


def test_limit_errors_name_the_size_and_are_not_retried() -> None:
    error = LimitError("an SSE event", 8 * MiB, provider="ollama")
    assert str(error) == "ollama: the server sent an SSE event over 8 MiB; stopped (limit)"
    assert not error.retryable and isinstance(error, RuntimeError)
    assert [format_size(n) for n in (64 * KiB, 8 * MiB, 3 * MiB // 2, 100)] == [
        "64 KiB", "8 MiB", "1.5 MiB", "100 bytes",
    ]  # fmt: skip
    assert (http.MAX_EVENT_BYTES, http.MAX_REPLY_BYTES) == (8 << 20, 64 << 20)


# -- each form, in process, with small limits -----------------------------------------------------


STREAMED = {
    "gzip_bomb": EVENT_LINE,
    "endless_line": EVENT_LINE,
    "endless_event": EVENT,
    "gzip_comments": REPLY,
    "deflate_comments": REPLY,
}


@pytest.mark.usefixtures("small_limits")
@pytest.mark.parametrize("mode", list(STREAMED))
def test_a_streamed_attack_ends_the_turn_and_keeps_the_partial_answer(
    mode: str, hostile: Hostile, isolated: Isolated
) -> None:
    limit = SMALL_REPLY if STREAMED[mode] == REPLY else SMALL_EVENT
    # Over the limit at stake, and under the other one (the reply's), so that it is the one met.
    hostile.mode, hostile.size = mode, 4 * SMALL_REPLY if limit == SMALL_REPLY else 2 * SMALL_EVENT
    result = run(ask("ollama", hostile.root), isolated)
    check(result, isolated, "ollama", STREAMED[mode].format(format_size(limit)), "Hello, world")
    assert hostile.seen == ["POST /v1/chat/completions"]  # not retried


@pytest.mark.usefixtures("small_limits")
def test_answer_text_itself_counts_against_the_reply_limit(
    hostile: Hostile, isolated: Isolated
) -> None:
    hostile.mode, hostile.size = "many_events", 4 * SMALL_REPLY
    result = run(ask("ollama", hostile.root), isolated)
    assert result.returncode == 1
    assert result.stderr == f"chatcli: ollama: {REPLY.format('256 KiB')}\n"
    shown = result.stdout.rstrip("\n")
    assert shown.startswith("Hello, worldlorem ipsum") and len(shown) < SMALL_REPLY
    assert stored(isolated)[1] == ("assistant", shown, "interrupted")


@pytest.mark.usefixtures("small_limits")
def test_a_huge_json_answer_is_not_read_past_the_limit(
    hostile: Hostile, isolated: Isolated
) -> None:
    hostile.mode, hostile.size = "huge_json", 40 * SMALL_REPLY
    result = run(ask("ollama", hostile.root, "--no-stream"), isolated)
    check(result, isolated, "ollama", REPLY.format("256 KiB"))
    assert hostile.sent < 20 * SMALL_REPLY  # the client hung up long before the end


@pytest.mark.usefixtures("small_limits")
def test_a_json_answer_under_the_limit_is_read_whole(hostile: Hostile, isolated: Isolated) -> None:
    hostile.mode, hostile.size = "huge_json", SMALL_REPLY - 200  # the JSON stays unfinished
    result = run(ask("ollama", hostile.root, "--no-stream"), isolated)
    assert result.returncode == 1 and "expected JSON from" in result.stderr  # read to the end


def store_aichat_cookies(isolated: Isolated) -> None:
    Stores(isolated.chatcli_home / "data").cookies.save(
        [Cookie("chat-gpt.org", "session", "s1", expires=time.time() + 3600)]
    )


#: web provider -> (mode, limit message). What each reads first: ChatGptt its home page (for
#: the nonce), GPTalk the login's token, FakeGpt the shared accounts, Aichat the answer.
WEB = {
    "chatgptt": ("huge_page", REPLY),
    "gptalk": ("huge_json", REPLY),
    "fakegpt": ("huge_json", REPLY),
    "aichat": ("huge_json", REPLY),
    "opchatgpts": ("endless_line", EVENT_LINE),
}


@pytest.mark.usefixtures("small_limits")
@pytest.mark.parametrize("provider", list(WEB))
def test_every_web_provider_reads_pages_and_json_within_the_limit(
    provider: str, hostile: Hostile, isolated: Isolated
) -> None:
    mode, message = WEB[provider]
    if provider == "aichat":
        store_aichat_cookies(isolated)
    hostile.mode, hostile.size = mode, 8 * SMALL_REPLY if message == REPLY else 2 * SMALL_EVENT
    result = run(ask(provider, hostile.root), isolated)
    limit = SMALL_REPLY if message == REPLY else SMALL_EVENT
    partial = "Hello, world" if mode == "endless_line" else ""
    check(result, isolated, provider, message.format(format_size(limit)), partial)
    assert len(hostile.seen) == 1


# -- the real binary, over the real limits --------------------------------------------------------


def test_binary_gzip_bomb(hostile: Hostile, isolated: Isolated) -> None:
    # 9 MiB of one endless line, inflated from about 10 KiB on the wire.
    hostile.mode, hostile.size = "gzip_bomb", 9 * MiB
    result = run_binary(ask("ollama", hostile.root), isolated)
    check(result, isolated, "ollama", EVENT_LINE.format("8 MiB"), "Hello, world")
    assert hostile.sent < 64 * KiB


def test_binary_gzip_bomb_counts_what_comes_out_of_the_decompressor(
    hostile: Hostile, isolated: Isolated
) -> None:
    # Comment lines are read and dropped: only the reply limit, counted after inflating, stops
    # 65 MiB that arrive as about 70 KiB.
    hostile.mode, hostile.size = "gzip_comments", 65 * MiB
    result = run_binary(ask("ollama", hostile.root), isolated)
    check(result, isolated, "ollama", REPLY.format("64 MiB"), "Hello, world")
    assert hostile.sent < MiB


def test_binary_endless_line(hostile: Hostile, isolated: Isolated) -> None:
    hostile.mode, hostile.size = "endless_line", 9 * MiB
    result = run_binary(ask("ollama", hostile.root), isolated)
    check(result, isolated, "ollama", EVENT_LINE.format("8 MiB"), "Hello, world")


def test_binary_endless_event(hostile: Hostile, isolated: Isolated) -> None:
    hostile.mode, hostile.size = "endless_event", 9 * MiB
    result = run_binary(ask("ollama", hostile.root), isolated)
    check(result, isolated, "ollama", EVENT.format("8 MiB"), "Hello, world")


def test_binary_huge_json(hostile: Hostile, isolated: Isolated) -> None:
    hostile.mode, hostile.size = "huge_json", 66 * MiB
    result = run_binary(ask("ollama", hostile.root, "--no-stream"), isolated)
    check(result, isolated, "ollama", REPLY.format("64 MiB"))


def test_binary_huge_page(hostile: Hostile, isolated: Isolated) -> None:
    hostile.mode, hostile.size = "huge_page", 66 * MiB
    result = run_binary(ask("chatgptt", hostile.root), isolated)
    check(result, isolated, "chatgptt", REPLY.format("64 MiB"))
