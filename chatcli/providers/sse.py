"""An incremental Server-Sent Events decoder (WHATWG "event stream" rules).

Bytes go in as they arrive, in any split; complete events come out. Lines end at ``\\r\\n``,
``\\r`` or ``\\n`` (a ``\\r`` at the end of one chunk and a ``\\n`` at the start of the next are one
line end). Lines are split as bytes and decoded whole, so a UTF-8 character cut between two
chunks is never damaged. ``:`` lines are comments (keep-alives) and are skipped; several ``data:``
lines of one event are joined with ``\\n``.

One leniency: at the end of the stream, an event whose last line was complete but which lacked
the closing blank line is still delivered (some servers end with ``data: [DONE]\\n``). A line cut
off without its line end is dropped, so a stream cut mid-line never yields half a payload.

Given ``max_event``, the decoder holds no more than that many bytes of one line, or of one
event's data lines: past it, it drops what it holds, stops decoding and sets
:attr:`SSEDecoder.overflow`. The events completed before are still returned, so the caller
delivers them and then stops the stream (see ``chatcli.providers.http.iter_sse``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LINE_END = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event. ``event`` is ``"message"`` unless the stream named it."""

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Feed bytes with :meth:`feed`, finish with :meth:`close`; both return the events completed."""

    __slots__ = (
        "_buffer",
        "_data",
        "_event",
        "_id",
        "_max",
        "_pending_cr",
        "_retry",
        "_saw_field",
        "_size",
        "overflow",
    )

    def __init__(self, *, max_event: int | None = None) -> None:
        #: What outgrew ``max_event`` ("line" or "event"); once set, input is ignored.
        self.overflow: str | None = None
        self._max = max_event
        #: Bytes of the current event's data lines.
        self._size = 0
        self._buffer = bytearray()
        self._pending_cr = False
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._retry: int | None = None
        self._saw_field = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        if self.overflow:
            return events
        if self._pending_cr:
            # The previous chunk ended in "\r": a "\n" here belongs to that same line end.
            self._pending_cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if not chunk:
            return events
        pos = 0
        for match in _LINE_END.finditer(chunk):
            begin, end = match.span()
            if self._buffer:
                self._buffer += chunk[pos:begin]
                line = bytes(self._buffer)
                self._buffer.clear()
            else:
                line = chunk[pos:begin]
            if not self._line(line, events):
                return events  # something outgrew max_event: decode no more
            pos = end
        if pos and chunk[-1] == 0x0D:
            self._pending_cr = True
        self._buffer += chunk[pos:]
        if self._max is not None and len(self._buffer) > self._max:
            self._stop("line")
        return events

    def close(self) -> list[SSEEvent]:
        """End of stream: deliver an event whose lines were complete; drop a cut-off line."""
        events: list[SSEEvent] = []
        self._buffer.clear()
        self._pending_cr = False
        if not self.overflow:
            self._dispatch(events)
        return events

    def _stop(self, what: str) -> None:
        """Something outgrew ``max_event``: forget the event and the line, decode no more."""
        self.overflow = what
        self._buffer.clear()
        self._data = []
        self._saw_field = False

    def _line(self, raw: bytes, events: list[SSEEvent]) -> bool:
        """Take one line; ``False`` once something outgrew ``max_event`` (see :meth:`_stop`)."""
        if not raw:
            self._dispatch(events)
            return True
        if self._max is not None and len(raw) > self._max:
            self._stop("line")
            return False
        line = raw.decode("utf-8", errors="replace")
        if line.startswith(":"):
            return True
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._size += len(raw)
            if self._max is not None and self._size > self._max:
                self._stop("event")
                return False
            self._data.append(value)
            self._saw_field = True
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
        # Any other field name is ignored, as the standard says.
        return True

    def _dispatch(self, events: list[SSEEvent]) -> None:
        if self._saw_field:
            events.append(
                SSEEvent(
                    data="\n".join(self._data),
                    event=self._event or "message",
                    id=self._id,
                    retry=self._retry,
                )
            )
        self._data = []
        self._size = 0
        self._event = ""
        self._retry = None
        self._saw_field = False


def decode_all(data: bytes) -> list[SSEEvent]:
    """Decode a whole stream at once (tests and small replies)."""
    decoder = SSEDecoder()
    return decoder.feed(data) + decoder.close()
