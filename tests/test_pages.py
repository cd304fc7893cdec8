"""``ask -f URL``: web pages as context, fetched through chatcli's HTTP layer from a local
server, made readable (HTML's main content as Markdown; text, Markdown and JSON as they are),
bounded, and refused or failed with one line naming the URL."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import socket
from collections.abc import Iterator

import pytest
from aiohttp import web

from chatcli.errors import ProviderError, UsageError
from chatcli.files import gather
from chatcli.pages import html_to_markdown
from tests.conftest import Isolated, assert_one_line_error, run, run_binary
from tests.servers import AppServer, FakeOpenAI, ForwardProxy

ARTICLE = """<!doctype html>
<html><head><title>A Site</title>
<style>body { color: red } .menu { display: none }</style>
<script>var tracking = "SCRIPT-TEXT";</script>
<link rel="stylesheet" href="/s.css"></head>
<body>
<nav class="menu"><ul><li><a href="/">Home NAV-TEXT</a></li>
<li><a href="/about">About</a></li></ul></nav>
<header><p>HEADER-TEXT</p></header>
<div role="navigation">ROLE-NAV-TEXT</div>
<main><article>
<h1>Why ducks float</h1>
<p>Ducks   float because of <a href="/air">air sacs</a> and <em>oily</em> feathers.</p>
<ul><li>Air sacs</li><li>Preening oil</li></ul>
<pre>print("quack")
    indented</pre>
<script>console.log("INLINE-SCRIPT")</script>
</article>
<aside>ASIDE-TEXT</aside></main>
<form><input name="q"><button>SEARCH-TEXT</button></form>
<footer>FOOTER-TEXT © 2026</footer>
</body></html>
"""
CHROME = (
    "NAV-TEXT", "HEADER-TEXT", "ROLE-NAV-TEXT", "SCRIPT-TEXT", "INLINE-SCRIPT", "ASIDE-TEXT",
    "SEARCH-TEXT", "FOOTER-TEXT", "color: red", "display: none",
)  # fmt: skip


def tiny_pdf(text: str) -> bytes:
    """A one-page PDF showing ``text`` in Helvetica (enough for a text extractor)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


class Site:
    """A small web site: an article, plain text, JSON, Markdown, a redirect, a 404, a page that
    never ends, an image, a PDF and a page that never answers. Counts what it sent."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self.streamed = 0
        self.user_agents: list[str] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/article", self.article)
        app.router.add_get("/notes.txt", self.plain)
        app.router.add_get("/latin1", self.latin1)
        app.router.add_get("/data", self.data)
        app.router.add_get("/readme", self.readme)
        app.router.add_get("/moved", self.moved)
        app.router.add_get("/huge", self.huge)
        app.router.add_get("/big-text", self.big_text)
        app.router.add_get("/image", self.image)
        app.router.add_get("/paper", self.paper)
        app.router.add_get("/slow", self.slow)
        app.router.add_get("/legacy", self.legacy)
        app.router.add_get("/flaky", self.flaky)
        app.router.add_get("/down", self.down)
        app.router.add_get("/table.csv", self.csv)
        app.router.add_get("/fake-text", self.fake_text)
        return app

    async def article(self, request: web.Request) -> web.Response:
        self.user_agents.append(request.headers.get("User-Agent", ""))
        return web.Response(text=ARTICLE, content_type="text/html")

    async def plain(self, request: web.Request) -> web.Response:
        return web.Response(text="plain notes\n  kept   as they are\n", content_type="text/plain")

    async def latin1(self, request: web.Request) -> web.Response:
        return web.Response(
            body="café crème\n".encode("latin-1"), content_type="text/plain", charset="latin-1"
        )

    async def data(self, request: web.Request) -> web.Response:
        return web.json_response({"answer": 42, "list": [1, 2]})

    async def readme(self, request: web.Request) -> web.Response:
        return web.Response(text="# Title\n\n- item\n", content_type="text/markdown")

    async def moved(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/notes.txt")

    async def huge(self, request: web.Request) -> web.StreamResponse:
        """HTML without end (no Content-Length): up to 256 MiB unless the client hangs up."""
        response = web.StreamResponse(headers={"Content-Type": "text/html"})
        await response.prepare(request)
        chunk = b"<p>" + b"endless words " * 4600 + b"</p>\n"  # about 64 KiB
        try:
            while self.streamed < 256 * 1024 * 1024:
                await response.write(chunk)
                self.streamed += len(chunk)
        except (ConnectionError, RuntimeError):
            pass
        return response

    async def big_text(self, request: web.Request) -> web.Response:
        return web.Response(text="y" * 300_000, content_type="text/plain")

    async def image(self, request: web.Request) -> web.Response:
        return web.Response(body=b"\x89PNG\r\n\x1a\n" + bytes(100), content_type="image/png")

    async def paper(self, request: web.Request) -> web.Response:
        return web.Response(body=tiny_pdf("Ducks in print"), content_type="application/pdf")

    async def flaky(self, request: web.Request) -> web.Response:
        self.hits["flaky"] = self.hits.get("flaky", 0) + 1
        if self.hits["flaky"] < 3:
            return web.Response(status=503, text="busy")
        return web.Response(text="third time lucky", content_type="text/plain")

    async def down(self, request: web.Request) -> web.Response:
        self.hits["down"] = self.hits.get("down", 0) + 1
        return web.Response(status=502, text="bad gateway")

    async def legacy(self, request: web.Request) -> web.Response:
        page = '<html><head><meta charset="windows-1252"></head><body><p>naïve – “quoted”</p>'
        return web.Response(body=page.encode("cp1252"), headers={"Content-Type": "text/html"})

    async def csv(self, request: web.Request) -> web.Response:
        return web.Response(text="a,b\n1,2\n", content_type="text/csv")

    async def fake_text(self, request: web.Request) -> web.Response:
        return web.Response(body=b"MZ\x00\x00binary", content_type="text/plain")

    async def slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(text="late")


@pytest.fixture
def site() -> Iterator[tuple[Site, str]]:
    served = Site()
    with AppServer(served.app()) as server:
        yield served, server.url


def ask(fake: FakeOpenAI, *args: str) -> list[str]:
    return ["ask", "-p", "ollama", "-m", "m", "--base-url", fake.base_url, *args]


def sent(fake: FakeOpenAI) -> str:
    content: str = fake.requests[-1].body["messages"][-1]["content"]
    return content


def test_an_html_page_sends_only_its_article_as_markdown(
    fake: FakeOpenAI, isolated: Isolated, site: tuple[Site, str]
) -> None:
    served, url = site
    result = run(ask(fake, "-f", f"{url}/article", "why?"), isolated)
    assert result.returncode == 0, result.stderr
    message = sent(fake)
    # The fence is longer than the code block's inside it.
    assert message.startswith(f"{url}/article\n````markdown\n# Why ducks float\n"), message
    assert f"Ducks float because of [air sacs]({url}/air) and *oily* feathers." in message
    assert "- Air sacs\n- Preening oil" in message
    assert '```\nprint("quack")\n    indented\n```\n````' in message
    for chrome in CHROME:
        assert chrome not in message
    assert message.rstrip().endswith("why?")
    assert served.user_agents == ["chatcli/0.1.0"]


def test_text_json_and_markdown_pass_as_they_are_in_the_charset_named(
    fake: FakeOpenAI, isolated: Isolated, site: tuple[Site, str]
) -> None:
    _, url = site
    specs = [f"{url}/notes.txt", f"{url}/data", f"{url}/readme", f"{url}/latin1"]
    result = run(ask(fake, *[a for s in specs for a in ("-f", s)], "go"), isolated)
    assert result.returncode == 0, result.stderr
    message = sent(fake)
    assert f"{url}/notes.txt\n```\nplain notes\n  kept   as they are\n```" in message
    assert f"{url}/data\n```json\n{json.dumps({'answer': 42, 'list': [1, 2]})}\n```" in message
    assert f"{url}/readme\n```markdown\n# Title\n\n- item\n```" in message
    assert f"{url}/latin1\n```\ncafé crème\n```" in message


def test_other_text_passes_html_names_its_charset_and_binary_served_as_text_is_left_out(
    isolated: Isolated, site: tuple[Site, str]
) -> None:
    _, url = site
    specs = [f"{url}/legacy", f"{url}/table.csv", f"{url}/fake-text"]
    gathered = gather(specs, env=isolated.env)
    assert [(i.source, i.text, i.language) for i in gathered.items] == [
        (f"{url}/legacy", "naïve – “quoted”\n", "markdown"),
        (f"{url}/table.csv", "a,b\n1,2\n", ""),
    ]
    assert gathered.skipped == [(f"{url}/fake-text", "binary, though served as text")]


def test_a_redirect_is_followed_and_the_item_is_named_by_where_it_led(
    isolated: Isolated, site: tuple[Site, str]
) -> None:
    _, url = site
    gathered = gather([f"{url}/moved"], env=isolated.env)
    assert [(i.source, i.text) for i in gathered.items] == [
        (f"{url}/notes.txt", "plain notes\n  kept   as they are\n")
    ]


def test_a_password_in_the_url_is_not_in_the_source(
    isolated: Isolated, site: tuple[Site, str]
) -> None:
    _, url = site
    port = url.rsplit(":", 1)[1]
    gathered = gather([f"http://me:hunter2@localhost:{port}/notes.txt"], env=isolated.env)
    # aiohttp sends them as Basic auth and the URL it reports has none; nor has the item.
    assert gathered.items[0].source == f"http://localhost:{port}/notes.txt"


def test_a_server_error_is_tried_twice_more_then_fails(
    isolated: Isolated, site: tuple[Site, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("chatcli.pages.RETRY_DELAY", 0.01)
    served, url = site
    gathered = gather([f"{url}/flaky"], env=isolated.env)
    assert gathered.items[0].text == "third time lucky" and served.hits["flaky"] == 3
    with pytest.raises(ProviderError, match=f"HTTP 502 Bad Gateway from {url}/down"):
        gather([f"{url}/down"], env=isolated.env)
    assert served.hits["down"] == 3


def test_a_404_fails_in_one_line_naming_the_url_and_sends_nothing(
    fake: FakeOpenAI, isolated: Isolated, site: tuple[Site, str]
) -> None:
    _, url = site
    result = run(ask(fake, "-f", f"{url}/nowhere", "hi"), isolated)
    assert result.returncode != 0
    assert_one_line_error(result.stderr, "404", f"{url}/nowhere")
    assert fake.requests == []


def test_connection_refused_fails_in_one_line_and_sends_nothing(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run(ask(fake, "-f", f"http://localhost:{port}/page", "hi"), isolated)
    assert result.returncode != 0
    assert_one_line_error(result.stderr, "connection refused", f"http://localhost:{port}/page")
    assert fake.requests == []


def test_a_page_that_never_answers_times_out_naming_the_url(
    isolated: Isolated, site: tuple[Site, str]
) -> None:
    _, url = site
    with pytest.raises(ProviderError, match=f"{url}/slow went silent"):
        gather([f"{url}/slow"], env=isolated.env, timeout=0.3)


def test_a_huge_page_is_read_only_to_its_limit_and_left_out_with_why(
    fake: FakeOpenAI, isolated: Isolated, site: tuple[Site, str]
) -> None:
    served, url = site
    result = run(
        ask(fake, "-f", f"{url}/huge", "-f", f"{url}/big-text", "-f", f"{url}/data", "hi"),
        isolated,
    )
    assert result.returncode == 0, result.stderr
    assert f"{url}/huge (an HTML page over the 2.0 MiB read)" in result.stderr
    assert f"{url}/big-text (the page of 293 KiB, over the 256 KiB read)" in result.stderr
    message = sent(fake)
    assert f"{url}/data\n" in message and "/huge" not in message and "/big-text" not in message
    # The client hung up near its cap: the server got nowhere near its 256 MiB.
    assert served.streamed < 32 * 1024 * 1024


def test_html_whose_text_is_over_the_per_file_limit_is_left_out(
    isolated: Isolated, site: tuple[Site, str]
) -> None:
    _, url = site
    gathered = gather([f"{url}/article"], env=isolated.env, max_file=100)
    assert gathered.items == []
    ((source, why),) = gathered.skipped
    assert source == f"{url}/article" and why.startswith("an HTML page of 1 KiB, over the")
    gathered = gather([f"{url}/article"], env=isolated.env, max_file=120)
    ((source, why),) = gathered.skipped
    assert why.startswith("its text is ") and ", over the per-file " in why


def test_a_binary_type_is_refused_naming_it(
    fake: FakeOpenAI, isolated: Isolated, site: tuple[Site, str]
) -> None:
    _, url = site
    result = run(ask(fake, "-f", f"{url}/image", "hi"), isolated)
    assert result.returncode != 0
    assert_one_line_error(result.stderr, f"-f {url}/image: the page is image/png", "refused")
    assert fake.requests == []


def test_a_pdf_without_the_extra_is_refused_with_the_install_hint(
    isolated: Isolated, site: tuple[Site, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pypdf", None)  # as if the extra were not installed
    _, url = site
    with pytest.raises(UsageError, match=r"pip install 'chatcli-shell\[pdf\]'"):
        gather([f"{url}/paper"], env=isolated.env)
    pdf = isolated.root / "paper.pdf"
    pdf.write_bytes(tiny_pdf("local"))
    gathered = gather([str(pdf)], env=isolated.env)
    ((path, why),) = gathered.skipped
    assert path == str(pdf) and "pip install 'chatcli-shell[pdf]'" in why


@pytest.mark.skipif(importlib.util.find_spec("pypdf") is None, reason="needs the pdf extra")
def test_with_the_extra_a_pdf_url_or_file_is_read_as_text(
    isolated: Isolated, site: tuple[Site, str]
) -> None:
    _, url = site
    pdf = isolated.root / "paper.pdf"
    pdf.write_bytes(tiny_pdf("Local words"))
    broken = isolated.root / "broken.pdf"
    broken.write_bytes(b"%PDF-1.4 and then nothing")
    gathered = gather([f"{url}/paper", str(pdf), str(broken)], env=isolated.env)
    assert [(i.source, i.text) for i in gathered.items] == [
        (f"{url}/paper", "Ducks in print\n"),
        (str(pdf), "Local words\n"),
    ]
    assert gathered.skipped == [(str(broken), "not a readable PDF")]


def test_pages_go_through_the_proxy_the_environment_names(
    isolated: Isolated, site: tuple[Site, str]
) -> None:
    _, url = site
    with ForwardProxy() as proxy:
        env = {**isolated.env, "HTTP_PROXY": proxy.url}
        gathered = gather([f"{url}/notes.txt"], env=env)
        assert proxy.seen == [f"GET {url}/notes.txt"]
        assert gathered.items[0].text.startswith("plain notes")
        gathered = gather([f"{url}/data"], env={**env, "NO_PROXY": "localhost"})
        assert proxy.seen == [f"GET {url}/notes.txt"]  # bypassed


def test_the_real_binary_takes_a_url(
    fake: FakeOpenAI, isolated: Isolated, site: tuple[Site, str]
) -> None:
    _, url = site
    result = run_binary(ask(fake, "-f", f"{url}/article", "-f", f"{url}/image", "hi"), isolated)
    assert result.returncode != 0
    assert_one_line_error(result.stderr, "image/png")
    assert fake.requests == []
    result = run_binary(ask(fake, "-f", f"{url}/article", "summarise"), isolated)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Hello, world!\n"
    message = sent(fake)
    assert "# Why ducks float" in message and "NAV-TEXT" not in message


def test_markdown_of_nested_lists_tables_quotes_and_pages_without_a_main() -> None:
    html = (
        "<title>T</title><body><div class=menu hidden>HIDDEN</div>"
        "<p>Intro<br>line two</p><ol><li>one<ul><li>inner</li></ul></li><li>two</li></ol>"
        "<blockquote>said</blockquote><table><tr><th>A</th><th>B</th></tr>"
        "<tr><td>1</td><td>2</td></tr></table><p><a href='#top'>top</a> <code>x</code></p>"
    )
    assert html_to_markdown(html, "http://e.x/") == (
        "# T\n\nIntro\nline two\n\n1. one\n   - inner\n2. two\n\n> said\n\n"
        "| A | B |\n| 1 | 2 |\n\ntop `x`\n"
    )
