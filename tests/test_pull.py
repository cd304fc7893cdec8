"""``chatcli models pull`` / ``rm`` and the GGUF header facts of ``models -p local``: files
served by a local aiohttp server (never the network)."""

from __future__ import annotations

import hashlib
import json
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from chatcli.config import Paths
from chatcli.providers import local
from chatcli.pull import source_url
from tests.conftest import Isolated, assert_one_line_error, run, run_binary
from tests.servers import AppServer


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def make_gguf(*, params: int | None = 1234, context: int = 2048, padding: int = 4096) -> bytes:
    """A tiny, well-formed GGUF file: a header with a few keys (a string array among them),
    one 3x5 tensor, then ``padding`` bytes standing for the weights."""
    kvs = [
        _string("general.architecture") + struct.pack("<I", 8) + _string("llama"),
        _string("general.name") + struct.pack("<I", 8) + _string("Tiny"),
        _string("llama.context_length") + struct.pack("<I", 4) + struct.pack("<I", context),
        _string("tokenizer.ggml.tokens")
        + struct.pack("<IIQ", 9, 8, 3)
        + b"".join(_string(t) for t in ("a", "b", "c")),
        _string("tokenizer.ggml.scores") + struct.pack("<IIQ", 9, 6, 3) + b"\0" * 12,
    ]
    if params is not None:
        kvs.append(_string("general.parameter_count") + struct.pack("<IQ", 10, params))
    tensor = (
        _string("w") + struct.pack("<I", 2) + struct.pack("<QQ", 3, 5) + struct.pack("<IQ", 0, 0)
    )
    header = b"GGUF" + struct.pack("<IQQ", 3, 1, len(kvs)) + b"".join(kvs) + tensor
    return header + bytes(range(256)) * (padding // 256)


@dataclass
class Files:
    """What the server serves at ``/f/NAME``, and how (per name: ``mode``)."""

    bodies: dict[str, bytes] = field(default_factory=dict)
    #: "ok", "cut-once" (the first request drops the connection midway), "no-range" (Range is
    #: ignored), "redirect" (Hugging Face's shape: a 302 carrying X-Linked-* to /f/NAME).
    modes: dict[str, str] = field(default_factory=dict)
    extra_headers: dict[str, dict[str, str]] = field(default_factory=dict)
    ranges: list[str | None] = field(default_factory=list)
    cuts: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/f/{name}", self.serve)
        app.router.add_get("/hf/{name}", self.redirect)
        return app

    async def redirect(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        raise web.HTTPFound(f"/f/{name}", headers=self.extra_headers.get(name, {}))

    async def serve(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        body = self.bodies[name]
        mode = self.modes.get(name, "ok")
        asked = request.headers.get("Range")
        self.ranges.append(asked)
        headers = dict(self.extra_headers.get(name, {})) if mode != "redirect" else {}
        start = 0
        if asked and mode != "no-range":
            start = int(asked.removeprefix("bytes=").rstrip("-"))
            if start >= len(body):
                return web.Response(status=416)
            headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
        ranged = bool(asked) and mode != "no-range"
        response = web.StreamResponse(status=206 if ranged else 200, headers=headers)
        response.content_length = len(body) - start
        await response.prepare(request)
        if mode == "cut-once" and not self.cuts:
            self.cuts += 1
            await response.write(body[: len(body) // 2])
            assert request.transport is not None
            request.transport.close()
            return response
        await response.write(body[start:])
        await response.write_eof()
        return response


@pytest.fixture
def files() -> Iterator[tuple[Files, str]]:
    served = Files()
    server = AppServer(served.app())
    server.start()
    try:
        yield served, server.url
    finally:
        server.stop()


def models_dir(isolated: Isolated) -> Path:
    found = local.models_dir(Paths.from_env(isolated.env).data_dir)
    assert found is not None
    return found


def test_pull_from_a_local_server(files: tuple[Files, str], isolated: Isolated) -> None:
    served, url = files
    body = served.bodies["tiny.gguf"] = make_gguf()
    result = run(["models", "pull", f"{url}/f/tiny.gguf"], isolated)
    assert result.returncode == 0, result.stderr
    line = assert_one_line_error(
        result.stderr, "pulled tiny", "no checksum (the source gives none)"
    )
    assert "-m tiny" in line
    kept = models_dir(isolated) / "tiny.gguf"
    assert kept.read_bytes() == body
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert stat.S_IMODE(kept.parent.stat().st_mode) == 0o700
    assert not kept.with_name("tiny.gguf.part").exists()
    mixed = run(["models", "-p", "ollama", "pull", f"{url}/f/tiny.gguf"], isolated)
    assert mixed.returncode == 2
    assert_one_line_error(mixed.stderr, "go with the listing")
    again = run(["models", "pull", f"{url}/f/tiny.gguf"], isolated)
    assert again.returncode == 2
    assert_one_line_error(again.stderr, "exists already", "chatcli models rm tiny")


def test_pull_resumes_after_a_cut(files: tuple[Files, str], isolated: Isolated) -> None:
    served, url = files
    body = served.bodies["big.gguf"] = make_gguf(padding=256 * 1024)
    served.modes["big.gguf"] = "cut-once"
    first = run(["models", "pull", f"{url}/f/big.gguf"], isolated)
    assert first.returncode != 0
    assert_one_line_error(first.stderr, "run the same command again to resume")
    part = models_dir(isolated) / "big.gguf.part"
    assert 0 < part.stat().st_size < len(body)
    assert stat.S_IMODE(part.stat().st_mode) == 0o600
    offset = part.stat().st_size
    second = run(["models", "pull", f"{url}/f/big.gguf"], isolated)
    assert second.returncode == 0, second.stderr
    assert "resuming big at" in second.stderr
    assert served.ranges == [None, f"bytes={offset}-"]
    assert (models_dir(isolated) / "big.gguf").read_bytes() == body
    assert not part.exists()


def test_a_server_ignoring_range_starts_over(files: tuple[Files, str], isolated: Isolated) -> None:
    served, url = files
    body = served.bodies["m.gguf"] = make_gguf()
    served.modes["m.gguf"] = "no-range"
    folder = models_dir(isolated)
    folder.mkdir(parents=True, mode=0o700)
    (folder / "m.gguf.part").write_bytes(b"stale bytes of another download")
    result = run(["models", "pull", f"{url}/f/m.gguf"], isolated)
    assert result.returncode == 0, result.stderr
    assert served.ranges == ["bytes=31-"]
    assert (folder / "m.gguf").read_bytes() == body


def test_a_wrong_size_is_refused(files: tuple[Files, str], isolated: Isolated) -> None:
    served, url = files
    body = served.bodies["m.gguf"] = make_gguf()
    served.modes["m.gguf"] = "redirect"
    served.extra_headers["m.gguf"] = {"X-Linked-Size": str(len(body) + 10)}
    result = run(["models", "pull", f"{url}/hf/m.gguf"], isolated)
    assert result.returncode == 1
    assert_one_line_error(result.stderr, f"announced {len(body) + 10} bytes")
    assert list(models_dir(isolated).iterdir()) == []


def test_a_file_that_is_not_gguf_is_refused(files: tuple[Files, str], isolated: Isolated) -> None:
    served, url = files
    served.bodies["page.gguf"] = b"<html><title>Sign in</title></html>" * 100
    result = run(["models", "pull", f"{url}/f/page.gguf"], isolated)
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "not a GGUF file", "not kept")
    assert list(models_dir(isolated).iterdir()) == []


def test_the_checksum_is_verified(files: tuple[Files, str], isolated: Isolated) -> None:
    served, url = files
    body = served.bodies["m.gguf"] = make_gguf()
    served.modes["m.gguf"] = "redirect"
    served.extra_headers["m.gguf"] = {"X-Linked-Etag": '"' + "0" * 64 + '"'}
    bad = run(["models", "pull", f"{url}/hf/m.gguf"], isolated)
    assert bad.returncode == 1
    assert_one_line_error(bad.stderr, "does not match", "X-Linked-Etag", "removed")
    assert list(models_dir(isolated).iterdir()) == []
    digest = hashlib.sha256(body).hexdigest()
    served.extra_headers["m.gguf"] = {"X-Linked-Etag": f'"{digest}"'}
    good = run(["models", "pull", f"{url}/hf/m.gguf"], isolated)
    assert good.returncode == 0, good.stderr
    assert "sha256 (from X-Linked-Etag)" in good.stderr
    wrong = run(
        ["models", "pull", "--name", "n2", "--sha256", "1" * 64, f"{url}/f/m.gguf"], isolated
    )
    assert wrong.returncode == 1
    assert_one_line_error(wrong.stderr, "does not match", "--sha256")


def test_hf_sources_map_to_resolve_main() -> None:
    assert source_url("hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF/q4.gguf") == (
        "https://huggingface.co/Qwen/Qwen2.5-0.5B-Instruct-GGUF/resolve/main/q4.gguf"
    )


def test_models_rm(isolated: Isolated, tmp_path: Path) -> None:
    folder = models_dir(isolated)
    folder.mkdir(parents=True, mode=0o700)
    (folder / "mine.gguf").write_bytes(make_gguf())
    outside = tmp_path / "outside.gguf"
    outside.write_bytes(b"GGUF")
    refused = run(["models", "rm", "mine"], isolated)
    assert refused.returncode == 2
    assert_one_line_error(refused.stderr, "without a terminal", "-y")
    assert (folder / "mine.gguf").exists()
    for name in ("../../outside", str(outside), "absent"):
        result = run(["models", "rm", "-y", name], isolated)
        assert result.returncode == 2, name
    assert outside.exists()
    removed = run(["models", "rm", "-y", "mine"], isolated)
    assert removed.returncode == 0, removed.stderr
    assert not (folder / "mine.gguf").exists()


def test_models_local_shows_header_facts(
    isolated: Isolated, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "bundled_model", lambda: None)
    folder = models_dir(isolated)
    folder.mkdir(parents=True, mode=0o700)
    (folder / "given.gguf").write_bytes(make_gguf(params=135_000_000, context=8192))
    (folder / "derived.gguf").write_bytes(make_gguf(params=None, context=2048))
    (folder / "broken.gguf").write_bytes(b"GGUF\x03\0\0\0")
    result = run(["models", "-p", "local"], isolated)
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "135M parameters" in lines["given"] and "context 8,192" in lines["given"]
    assert "15 parameters" in lines["derived"] and "context 2,048" in lines["derived"]
    assert "(unreadable)" in lines["broken"]
    data = json.loads(run(["models", "-p", "local", "--json"], isolated).stdout)
    assert data["details"]["given"]["context_length"] == 8192
    assert data["details"]["derived"]["parameter_count"] == 15


def test_the_gguf_reader_is_bounded(tmp_path: Path) -> None:
    hostile = tmp_path / "h.gguf"
    hostile.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2**62))
    with pytest.raises(local.GGUFError, match="longer than"):
        local.gguf_facts(hostile)
    many = tmp_path / "many.gguf"
    many.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 2**40))
    with pytest.raises(local.GGUFError, match="more keys"):
        local.gguf_facts(many)


def test_a_missing_local_model_says_how_to_pull_one(isolated: Isolated) -> None:
    result = run(["ask", "-p", "local", "-m", "not-there", "hi"], isolated)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "unknown model 'not-there'", "chatcli models pull")


def test_pull_through_the_binary(files: tuple[Files, str], isolated: Isolated) -> None:
    served, url = files
    body = served.bodies["bin.gguf"] = make_gguf()
    result = run_binary(["models", "pull", f"{url}/f/bin.gguf"], isolated)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert_one_line_error(result.stderr, "pulled bin")
    assert (models_dir(isolated) / "bin.gguf").read_bytes() == body
    listed = run_binary(["models", "-p", "local"], isolated)
    assert "bin  " in listed.stdout and "context 2,048" in listed.stdout


def test_one_pull_of_a_name_at_a_time(files: tuple[Files, str], isolated: Isolated) -> None:
    import fcntl
    import os

    served, url = files
    served.bodies["m.gguf"] = make_gguf()
    folder = models_dir(isolated)
    folder.mkdir(parents=True, mode=0o700)
    fd = os.open(folder / "m.gguf.part", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        result = run(["models", "pull", f"{url}/f/m.gguf"], isolated)
    finally:
        os.close(fd)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "another chatcli is pulling m already")
    assert served.ranges == []


def test_nothing_is_left_when_nothing_arrived(isolated: Isolated) -> None:
    result = run(["models", "pull", "http://127.0.0.1:9/x.gguf"], isolated)
    assert result.returncode != 0
    line = assert_one_line_error(result.stderr, "cannot connect")
    assert "resume" not in line
    assert list(models_dir(isolated).iterdir()) == []


def test_a_part_the_server_cannot_continue_starts_over(
    files: tuple[Files, str], isolated: Isolated
) -> None:
    served, url = files
    body = served.bodies["m.gguf"] = make_gguf()
    folder = models_dir(isolated)
    folder.mkdir(parents=True, mode=0o700)
    (folder / "m.gguf.part").write_bytes(b"x" * (len(body) + 5))
    result = run(["models", "pull", f"{url}/f/m.gguf"], isolated)
    assert result.returncode == 0, result.stderr
    assert served.ranges == [f"bytes={len(body) + 5}-", None]
    assert (folder / "m.gguf").read_bytes() == body


def test_pull_goes_through_the_proxy_of_the_environment(
    files: tuple[Files, str], isolated: Isolated
) -> None:
    from tests.servers import ForwardProxy

    served, url = files
    body = served.bodies["p.gguf"] = make_gguf()
    with ForwardProxy() as proxy:
        result = run(["models", "pull", f"{url}/f/p.gguf"], isolated, env={"HTTP_PROXY": proxy.url})
    assert result.returncode == 0, result.stderr
    assert any("/f/p.gguf" in line for line in proxy.seen), proxy.seen
    assert (models_dir(isolated) / "p.gguf").read_bytes() == body
