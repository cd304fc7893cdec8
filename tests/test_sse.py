"""The SSE decoder gives the same events however the bytes are split."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from chatcli.providers.sse import SSEDecoder, SSEEvent, decode_all

STREAM = (
    b": keep-alive comment\r\n"
    b'data: {"a": 1}\r\n\r\n'
    b"event: note\n"
    b"id: 7\n"
    b"retry: 3000\n"
    b"data: line one\n"
    b"data: line two\n\n"
    b"data:no-space\r\r"
    b"data: caf\xc3\xa9 \xe2\x9c\x93\n\n"
    b"data\n\n"
    b"event: lonely\n\n"
    b"data: [DONE]\n\n"
)

EXPECTED = [
    SSEEvent(data='{"a": 1}'),
    SSEEvent(data="line one\nline two", event="note", id="7", retry=3000),
    SSEEvent(data="no-space", id="7"),
    SSEEvent(data="café ✓", id="7"),
    SSEEvent(data="", id="7"),
    SSEEvent(data="[DONE]", id="7"),
]


def decode_in_pieces(data: bytes, cuts: list[int]) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    last = 0
    for cut in sorted(cuts):
        events += decoder.feed(data[last:cut])
        last = cut
    events += decoder.feed(data[last:])
    return events + decoder.close()


def test_whole_stream_decodes_to_the_expected_events() -> None:
    assert decode_all(STREAM) == EXPECTED


def test_split_at_every_offset_gives_identical_events() -> None:
    for offset in range(len(STREAM) + 1):
        assert decode_in_pieces(STREAM, [offset]) == EXPECTED, f"split at {offset}"


def test_one_byte_at_a_time() -> None:
    assert decode_in_pieces(STREAM, list(range(len(STREAM)))) == EXPECTED


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=20))
def test_any_splits_give_identical_events(cuts: list[int]) -> None:
    assert decode_in_pieces(STREAM, cuts) == EXPECTED


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(min_value=0, max_value=400), max_size=10))
def test_arbitrary_bytes_never_raise_and_splitting_never_changes_the_result(
    data: bytes, cuts: list[int]
) -> None:
    whole = decode_all(data)
    assert decode_in_pieces(data, [c for c in cuts if c <= len(data)]) == whole


def test_cr_at_chunk_end_followed_by_lf_is_one_line_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: x\r") == []
    # "\n" completes the same line end; the next "\r\n" is the blank line that dispatches.
    assert decoder.feed(b"\n\r\n") == [SSEEvent(data="x")]


def test_event_with_complete_lines_but_no_blank_line_is_delivered_at_close() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: [DONE]\n") == []
    assert decoder.close() == [SSEEvent(data="[DONE]")]


def test_a_line_cut_off_mid_way_is_dropped_at_close() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"choices": [{"delta": {"content": "Hel') == []
    assert decoder.close() == []
