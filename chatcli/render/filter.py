"""``chatcli render``: Markdown from stdin, rendered as it arrives, by the answers' renderer.

Another program's output (``llm "..." | chatcli render``, ``cat notes.md | chatcli render``)
goes through the same block renderer as chatcli's own answers: each finished block is rendered
once (linear time however long the text), the block still growing is redrawn live, and nothing
reaches the terminal unsanitized. Into a pipe or a file (and with ``--raw``' plain text there
too) the bytes pass through unchanged, so a script may keep ``| chatcli render`` in a pipeline.

stdin is read in a thread of its own, a chunk at a time as the writer sends it (``read1``: one
system call, whatever is there), and handed to the event loop; a stop (Ctrl-C, SIGTERM) ends
the rendering at once, leaving the thread blocked on a read that nobody waits for.

Input that never ends a block (a log with no blank line, a fence never closed) is held only up
to the renderer's bound, ``MAX_BLOCK``, then passed on as plain text to the block's end; what
is held when a stop comes is not rendered at length on the way out (see
:class:`~chatcli.render.markdown.MarkdownRenderer`).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import threading
from typing import IO, Any, Final

from chatcli.render import Renderer

#: The most read from stdin at once (the renderer gets each chunk as one piece).
CHUNK: Final = 64 * 1024


async def render_stream(source: IO[Any], renderer: Renderer) -> None:
    """Feed what ``source`` (a text stream, its bytes read through ``buffer`` when it has
    one) carries to ``renderer`` until its end; a stop in between finishes the renderer as
    interrupted. Bytes that are not UTF-8 become U+FFFD."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | BaseException | None] = asyncio.Queue(maxsize=4)

    def post(item: str | BaseException | None) -> None:
        # Bounded: the reader waits while the renderer catches up, so memory stays flat.
        # A loop that is gone (a stop) leaves nobody to read it.
        with contextlib.suppress(RuntimeError, asyncio.CancelledError):
            asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()

    def read() -> None:
        binary = getattr(source, "buffer", None)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        try:
            while True:
                if binary is not None:
                    data = binary.read1(CHUNK)
                    if not data:
                        break
                    text = decoder.decode(data)
                else:
                    text = source.read(CHUNK)
                    if not text:
                        break
                if text:
                    post(text)
            tail = decoder.decode(b"", final=True)
            if tail:
                post(tail)
            post(None)
        except BaseException as exc:  # handed to the rendering side, raised there
            post(exc)

    threading.Thread(target=read, name="chatcli-render-stdin", daemon=True).start()
    renderer.start()
    interrupted = True
    try:
        while True:
            item = await queue.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            renderer.feed(item)
        interrupted = False
    finally:
        renderer.finish(interrupted=interrupted)


def copy_bytes(source: IO[Any], target: IO[Any]) -> None:
    """Pass stdin to stdout unchanged, each chunk as it arrives (into a pipe or file)."""
    binary_in = getattr(source, "buffer", None)
    binary_out = getattr(target, "buffer", None)
    if binary_in is None or binary_out is None:  # text streams (an in-process caller)
        while text := source.read(CHUNK):
            target.write(text)
            target.flush()
        return
    target.flush()
    while data := binary_in.read1(CHUNK):
        binary_out.write(data)
        binary_out.flush()
