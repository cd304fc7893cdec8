"""A hostile server: it answers like an OpenAI-compatible API or a web chat site, then attacks.

One aiohttp application answers every path; :attr:`Hostile.mode` says how it misbehaves. The
streamed attacks first send :attr:`Hostile.pieces` as real answer text (the partial answer a
client must keep), then the attack itself, ``size`` bytes of it once decompressed:

* ``gzip_bomb``: an SSE stream sent gzip-compressed: the answer, then one ``data:`` line that
  never ends. It inflates about a thousandfold: tiny on the wire.
* ``gzip_comments``: the same, but the bomb is SSE comment lines (``: ...``), which a client
  reads and drops: only a limit on the whole reply, counted after inflating, stops it.
* ``deflate_comments``: the same, sent with ``Content-Encoding: deflate`` (zlib).
* ``endless_line``: an SSE stream whose last line never ends (``data: aaaa...``, no newline).
* ``endless_event``: an SSE event of many short ``data:`` lines and no blank line to end it.
* ``many_events``: an SSE stream of valid answer events, ``size`` bytes of them, no end marker.
* ``huge_json``: a non-streamed JSON answer of ``size`` bytes (any path).
* ``huge_page``: an HTML page of ``size`` bytes (any path): what a web provider fetches first.
* ``redirect_loop``: every request is redirected to another path of this server, forever.
* ``redirect_to``: every request is redirected to :attr:`location`.
* ``retry_after``: HTTP 429 with ``Retry-After: <retry_after>``.
* ``echo_proxy_auth``: HTTP 407, with a body that repeats the ``Proxy-Authorization``
  credentials it was sent, decoded (``user:password``) and as sent: a proxy that leaks them.

The attacks are generated as they are sent, in 1 MiB steps: nothing the size of the attack is
ever held in memory, so a benchmark can ask for a gigabyte. :class:`TLSServer` serves the same
application over HTTPS with a self-signed certificate made by :func:`self_signed_certificate`.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import ssl
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from tests.servers import AppServer

MiB = 1024 * 1024
_STEP = MiB


def answer_event(text: str, path: str = "/v1/chat/completions") -> bytes:
    """One SSE event carrying ``text``, as the service at ``path`` words it: Opchatgpts's
    ``{"type": "live"}`` events, else an OpenAI chunk."""
    if "/mwai-ui/" in path:
        payload: dict[str, object] = {"type": "live", "data": text}
    else:
        payload = {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
    return f"data: {json.dumps(payload)}\n\n".encode()


async def _repeat(block: bytes, size: int) -> AsyncIterator[bytes]:
    """``size`` bytes made of ``block`` repeated, in steps of about a MiB."""
    step = block * max(1, _STEP // len(block))
    left = size
    while left > 0:
        piece = step[:left]
        left -= len(piece)
        yield piece


class CompressionBomb:
    """A gzip (or zlib, for ``deflate``) stream of ``head`` then ``size`` bytes of ``filler``,
    made in constant memory.

    After a full flush a deflate compressor forgets its history, so compressing the same MiB of
    filler always gives the same block: the block is made once and sent again and again.
    """

    def __init__(self, head: bytes, filler: bytes, size: int, encoding: str) -> None:
        self.head, self.size, self.gzip = head, size, encoding == "gzip"
        self.step = filler * max(1, _STEP // len(filler))

    def _check(self, data: bytes, value: int) -> int:
        return zlib.crc32(data, value) if self.gzip else zlib.adler32(data, value)

    async def chunks(self) -> AsyncIterator[bytes]:
        deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        # gzip with no name and no time; or zlib's two bytes (deflate, 32 KiB window, level 9)
        header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" if self.gzip else b"\x78\xda"
        yield header + deflate.compress(self.head) + deflate.flush(zlib.Z_FULL_FLUSH)
        check, total = self._check(self.head, 0 if self.gzip else 1), len(self.head)
        block = deflate.compress(self.step) + deflate.flush(zlib.Z_FULL_FLUSH)
        left = self.size
        while left >= len(self.step):
            check = self._check(self.step, check)
            total += len(self.step)
            left -= len(self.step)
            yield block
        tail = self.step[:left]
        check, total = self._check(tail, check), total + len(tail)
        end = deflate.compress(tail) + deflate.flush(zlib.Z_FINISH)
        if self.gzip:
            yield end + check.to_bytes(4, "little") + (total % 2**32).to_bytes(4, "little")
        else:
            yield end + check.to_bytes(4, "big")


@dataclass
class Hostile:
    """The server's behaviour; change the fields between requests."""

    #: One of the modes above; set it before the first request.
    mode: str = ""
    #: Bytes of the attack, once decompressed.
    size: int = 9 * MiB
    #: Answer text sent before a streamed attack.
    pieces: list[str] = field(default_factory=lambda: ["Hello", ", world"])
    #: ``http://localhost:PORT`` once served (the tests' fixture sets it).
    root: str = ""
    #: Where ``redirect_to`` sends every request.
    location: str = ""
    #: The ``Retry-After`` value of ``retry_after``.
    retry_after: str = "1"
    #: Every request seen, as ``METHOD path``.
    seen: list[str] = field(default_factory=list)
    #: Bytes of the attack actually written before the client hung up.
    sent: int = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * MiB)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    def serve(self) -> AppServer:
        return AppServer(self.app())

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.seen.append(f"{request.method} {request.path}")
        mode = self.mode
        if mode == "redirect_loop":
            hop = len(self.seen)
            raise web.HTTPFound(f"/loop/{hop % 2}")
        if mode == "redirect_to":  # sent as it is, however broken
            return web.Response(status=302, headers={"Location": self.location})
        if mode == "retry_after":
            body = {"error": {"message": "slow down"}}
            return web.json_response(body, status=429, headers={"Retry-After": self.retry_after})
        if mode == "echo_proxy_auth":
            return self._echo_proxy_auth(request)
        if mode == "huge_json":
            start = b'{"choices": [{"index": 0, "finish_reason": "stop", "message": {"content": "'
            return await self._send(request, "application/json", start, b"a", "")
        if mode == "huge_page":
            head = b"<!DOCTYPE html><html><head><title>Chat</title></head><body>"
            return await self._send(request, "text/html", head, b"<p>lorem ipsum</p>\n", "")
        answer = b"".join(answer_event(piece, request.path) for piece in self.pieces)
        if mode == "gzip_bomb":
            return await self._send(request, "text/event-stream", answer + b"data: ", b"a", "gzip")
        if mode in ("gzip_comments", "deflate_comments"):
            filler = b": " + b"z" * 1021 + b"\n"  # 1 KiB comment lines
            encoding = mode.partition("_")[0]
            return await self._send(request, "text/event-stream", answer, filler, encoding)
        if mode == "endless_line":
            return await self._send(request, "text/event-stream", answer + b"data: ", b"a", "")
        if mode == "endless_event":
            line = b"data: " + b"a" * 1017 + b"\n"  # 1 KiB lines, never a blank one
            return await self._send(request, "text/event-stream", answer, line, "")
        if mode == "many_events":
            event = answer_event("lorem ipsum dolor sit amet, " * 36, request.path)  # ~1 KiB
            return await self._send(request, "text/event-stream", answer, event, "")
        raise AssertionError(f"unknown mode {mode!r}")

    async def _send(
        self, request: web.Request, content_type: str, head: bytes, filler: bytes, encoding: str
    ) -> web.StreamResponse:
        """``head``, then ``size`` bytes of ``filler`` (compressed with ``encoding``)."""
        headers = {"Content-Type": content_type}
        if encoding:
            headers["Content-Encoding"] = encoding
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        self.sent = 0
        if encoding:
            chunks = CompressionBomb(head, filler, self.size, encoding).chunks()
        else:
            await response.write(head)
            chunks = _repeat(filler, self.size)
        try:
            async for chunk in chunks:
                await response.write(chunk)
                self.sent += len(chunk)
        except (ConnectionError, RuntimeError):
            pass  # the client hung up: what it should do
        return response

    def _echo_proxy_auth(self, request: web.Request) -> web.Response:
        sent = request.headers.get("Proxy-Authorization", "")
        decoded = ""
        if sent.startswith("Basic "):
            decoded = base64.b64decode(sent[6:]).decode("latin-1")
        body = {"error": {"message": f"proxy login {decoded} refused (you sent {sent})"}}
        return web.json_response(body, status=407, reason="Proxy Authentication Required")


# -- HTTPS -----------------------------------------------------------------------------------------


def self_signed_certificate(folder: Path, host: str = "localhost") -> tuple[Path, Path]:
    """A certificate for ``host`` (and 127.0.0.1) signed by its own key: (cert, key) PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(host), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class TLSServer(AppServer):
    """:class:`AppServer` over HTTPS; ``handshakes`` counts the TLS handshakes clients began."""

    def __init__(self, app: web.Application, cert: Path, key: Path) -> None:
        super().__init__(app)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.handshakes = 0

        def hello(*_: object) -> None:
            self.handshakes += 1

        self.context.sni_callback = hello

    async def _start(self) -> int:
        self._runner = web.AppRunner(self.app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.context)
        await site.start()
        server = site._server
        assert server is not None
        return int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"
