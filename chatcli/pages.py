"""Web pages as context (``ask -f URL``): fetched through chatcli's own HTTP layer, made readable.

A page is fetched with :func:`chatcli.providers.http.open_session` (the proxy chosen from the
environment snapshot as for any request, the default or given timeouts, at most
:data:`~chatcli.providers.http.MAX_REDIRECTS` redirects) and read through
:func:`~chatcli.providers.http.iter_body`, stopping at a cap of its own, so memory stays bounded
whatever the server sends.

What arrives is turned into text by its content type: HTML becomes Markdown of its main content
(``<main>`` or ``<article>`` when the page has one; menus, headers, footers, forms, scripts and
styles never), plain text, Markdown and JSON pass as they are, a PDF is read by ``pypdf`` when
the ``pdf`` extra is installed. Anything else is refused, naming its type.

The HTML reader is the standard library's :class:`html.parser.HTMLParser`: no dependency, and
no page can make it run code or fetch anything.
"""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Final
from urllib.parse import urljoin, urlsplit

from chatcli.errors import UsageError, redact_url

#: What names the source in errors (``-f: HTTP 404 Not Found from …``).
SOURCE: Final = "-f"
#: How many times the per-file limit an HTML page may weigh before it is read: markup, scripts
#: and styles make up most of a page, and what is left must still fit the per-file limit.
HTML_FACTOR: Final = 8
PDF_FACTOR: Final = 16
#: Further tries of a page whose fetch failed in a way worth trying again, and the first wait
#: (seconds; doubled each time).
RETRIES: Final = 2
RETRY_DELAY = 0.5

_HTML_TYPES: Final = ("text/html", "application/xhtml+xml")
_MARKDOWN_TYPES: Final = ("text/markdown", "text/x-markdown")
_PDF_TYPES: Final = ("application/pdf", "application/x-pdf")


def is_url(spec: str) -> bool:
    return spec[:8].lower().startswith(("http://", "https://"))


@dataclass(frozen=True, slots=True)
class Page:
    """A fetched page as text (``None`` and why when it is left out)."""

    #: The URL as fetched (after redirects), any password blanked.
    source: str
    text: str | None
    language: str = ""
    why: str = ""


def fetch_pages(
    urls: Sequence[str],
    *,
    env: Mapping[str, str],
    max_file: int,
    proxy: str | None = None,
    configured_proxy: str | None = None,
    timeout: float | None = None,
) -> list[Page]:
    """Fetch every URL (in order) from synchronous code. The first failure raises: a page that
    cannot be had is an error, not a skip, so nothing is sent without it."""
    return asyncio.run(
        _fetch_all(
            urls,
            env=env,
            max_file=max_file,
            proxy=proxy,
            configured_proxy=configured_proxy,
            timeout=timeout,
        )
    )


async def _fetch_all(
    urls: Sequence[str],
    *,
    env: Mapping[str, str],
    max_file: int,
    proxy: str | None,
    configured_proxy: str | None,
    timeout: float | None,
) -> list[Page]:
    return [
        await fetch_page(
            url,
            env=env,
            max_file=max_file,
            proxy=proxy,
            configured_proxy=configured_proxy,
            timeout=timeout,
        )
        for url in urls
    ]


async def fetch_page(
    url: str,
    *,
    env: Mapping[str, str],
    max_file: int,
    proxy: str | None = None,
    configured_proxy: str | None = None,
    timeout: float | None = None,
) -> Page:
    """One page as text; errors (connection, timeout, an HTTP error, a refused type) raise.

    A failure worth another try (a connection that failed elsewhere than this machine, a 5xx
    reply) is tried again up to :data:`RETRIES` times; a timeout or a rate limit is not, as
    waiting again would only make the question wait longer.
    """
    from chatcli.errors import ProviderError, ProviderTimeoutError, RateLimitError

    for attempt in range(RETRIES + 1):
        try:
            return await _fetch_once(
                url,
                env=env,
                max_file=max_file,
                proxy=proxy,
                configured_proxy=configured_proxy,
                timeout=timeout,
            )
        except (ProviderTimeoutError, RateLimitError):
            raise
        except ProviderError as exc:
            if not exc.retryable or attempt == RETRIES:
                raise
            await asyncio.sleep(RETRY_DELAY * 2**attempt)
    raise AssertionError("unreachable")


async def _fetch_once(
    url: str,
    *,
    env: Mapping[str, str],
    max_file: int,
    proxy: str | None = None,
    configured_proxy: str | None = None,
    timeout: float | None = None,
) -> Page:
    from chatcli import __version__
    from chatcli.providers import http
    from chatcli.providers.proxy import resolve_proxy

    chosen = resolve_proxy(url, proxy, env, configured=configured_proxy)
    headers = {
        "User-Agent": f"chatcli/{__version__}",
        "Accept": "text/html,application/xhtml+xml,text/markdown,text/plain,application/json,"
        "application/pdf;q=0.9,*/*;q=0.1",
    }
    with http.http_errors(SOURCE, url):
        async with (
            http.open_session(base_url=url, proxy=chosen, timeout=timeout, headers=headers) as s,
            s.get(url) as response,
        ):
            await http.check_status(response, SOURCE)
            source = redact_url(str(response.url))
            mime = response.content_type.lower()  # "application/octet-stream" when unnamed
            kind = _kind(mime, source)
            if kind == "pdf":
                _pdf_reader()  # refuse before downloading when the extra is missing
            factor = {"html": HTML_FACTOR, "pdf": PDF_FACTOR}.get(kind, 1)
            cap = max_file * factor
            if response.content_length is not None and response.content_length > cap:
                return Page(source, None, why=_over_read(response.content_length, cap, kind))
            data = bytearray()
            body = http.iter_body(response, SOURCE)
            try:
                async for chunk in body:
                    data += chunk
                    if len(data) > cap:
                        return Page(source, None, why=_over_read(None, cap, kind))
            finally:
                await body.aclose()
            charset = _charset(
                response.charset or (_meta_charset(data) if kind == "html" else None)
            )
    if kind == "pdf":
        text, language = pdf_text(bytes(data), source), ""
    elif kind != "html" and b"\0" in data[:8192]:
        return Page(source, None, why="binary, though served as text")
    else:
        raw = bytes(data).decode(charset, errors="replace")
        if kind == "html":
            text, language = html_to_markdown(raw, source), "markdown"
        else:
            text, language = raw, kind
    if not text.strip():
        return Page(source, None, why="no readable text")
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_file:
        what = "its text" if kind in ("html", "pdf") else "the page"
        return Page(source, None, why=f"{what} is {_kib(size)}, over the per-file {_kib(max_file)}")
    return Page(source, text, language)


def _kind(mime: str, source: str) -> str:
    """``html``, ``pdf``, or the fence language of text that passes as it is; refuses the rest."""
    if mime in _HTML_TYPES:
        return "html"
    if mime in _MARKDOWN_TYPES:
        return "markdown"
    if mime == "application/json" or mime.endswith("+json"):
        return "json"
    if mime.startswith("text/"):
        from chatcli.files import language_of

        # Plain text, CSV, code: raw.githubusercontent.com and the like serve code as
        # text/plain, and the URL's extension tells its language.
        return language_of(urlsplit(source).path) or ""
    if mime in _PDF_TYPES:
        return "pdf"
    raise UsageError(
        f"-f {source}: the page is {mime or 'of no content type'}, not HTML, text, Markdown, "
        "JSON or PDF; refused"
    )


def _over(size: int | None, cap: int, kind: str) -> str:
    """Why a page is left unread: its size (when told) is over what is read of its kind."""
    what = {"html": "an HTML page", "pdf": "a PDF"}.get(kind, "the page")
    return f"{what} of {_kib(size)}, over" if size else f"{what} over"


def _over_read(size: int | None, cap: int, kind: str) -> str:
    return f"{_over(size, cap, kind)} the {_kib(cap)} read"


_META_CHARSET: Final = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([\w.:-]+)""", re.IGNORECASE)


def _meta_charset(data: bytes | bytearray) -> str | None:
    """The charset an HTML page names in its first bytes (``<meta charset=…>``)."""
    found = _META_CHARSET.search(bytes(data[:4096]))
    return found.group(1).decode("ascii") if found else None


def _charset(name: str | None) -> str:
    import codecs

    try:
        return codecs.lookup(name or "utf-8").name
    except LookupError:
        return "utf-8"


def _kib(size: int) -> str:
    from chatcli.files import _kib

    return _kib(size)


# -- PDF (the optional ``pdf`` extra) -------------------------------------------------------------


def pdf_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("pypdf") is not None


def _pdf_reader() -> type:
    import importlib

    try:
        # Imported by name: the extra may be absent where the type checker runs.
        reader: type = importlib.import_module("pypdf").PdfReader
    except ImportError:
        from chatcli import install_hint

        raise UsageError(f"-f: reading PDFs needs the pdf extra: {install_hint('pdf')}") from None
    return reader


def pdf_text(data: bytes, source: str) -> str:
    """The text of every page of a PDF, a blank line apart."""
    import logging

    reader_type = _pdf_reader()
    logging.getLogger("pypdf").setLevel(logging.ERROR)  # its warnings about damaged files
    try:
        reader = reader_type(io.BytesIO(data))
        pages = [page.extract_text() or "" for page in reader.pages]
    except Exception as exc:  # pypdf raises many kinds on a damaged file
        raise UsageError(f"-f {source}: not a readable PDF ({type(exc).__name__})") from None
    return "\n\n".join(page.strip() for page in pages if page.strip()) + "\n"


# -- HTML to Markdown -----------------------------------------------------------------------------

#: Elements whose content is never text to read: code, styles, navigation and page chrome.
_DROPPED: Final = frozenset(
    {
        "script", "style", "noscript", "template", "head", "nav", "header", "footer", "aside",
        "form", "button", "select", "textarea", "iframe", "svg", "canvas", "dialog", "menu",
        "object", "embed", "video", "audio", "map",
    }
)  # fmt: skip
_DROPPED_ROLES: Final = frozenset(
    {"navigation", "banner", "contentinfo", "complementary", "search", "menu", "menubar"}
)
_VOID: Final = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
     "track", "wbr"}
)  # fmt: skip
_BLOCKS: Final = frozenset(
    {
        "p", "div", "section", "article", "main", "body", "html", "table", "figure", "figcaption",
        "dl", "dt", "dd", "address", "details", "summary", "hgroup", "center",
    }
)  # fmt: skip
_HEADINGS: Final = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_SPACE: Final = re.compile(r"\s+")


class _Reader(HTMLParser):
    """Markdown of a page, kept twice: all of it, and what lies in ``<main>``/``<article>``."""

    def __init__(self, base: str) -> None:
        super().__init__(convert_charrefs=True)
        self.base = base
        self.whole: list[str] = []
        self.main: list[str] = []
        self.title: list[str] = []
        self._stack: list[str] = []  # open elements (void ones never pushed)
        self._dropped = 0  # depth inside dropped elements (counted on the stack)
        self._main = 0  # depth inside main/article
        self._drop_marks: list[bool] = []
        self._main_marks: list[bool] = []
        self._pre = 0
        self._lists: list[str] = []  # "ul"/"ol", innermost last
        self._counters: list[int] = []
        self._quote = 0
        self._links: list[str | None] = []
        self._in_title = False
        self._cell = 0

    # -- output --

    def _emit(self, text: str) -> None:
        self.whole.append(text)
        if self._main:
            self.main.append(text)

    def _block(self) -> None:
        self._emit("\n\n" + "> " * self._quote)

    def _line(self) -> None:
        start = "\n" + "> " * self._quote
        if not (self.whole and self.whole[-1].endswith(start)):  # already at a line's start
            self._emit(start)

    # -- parser callbacks --

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "title" and not self._dropped_outside_head():
            self._in_title = True
        if tag in _VOID:
            if self._dropped:
                return
            if tag == "br":
                self._line()
            elif tag == "hr":
                self._block()
                self._emit("---")
                self._block()
            elif tag == "img" and found.get("alt"):
                self._emit(_SPACE.sub(" ", found["alt"] or "").strip())
            return
        drop = (
            tag in _DROPPED
            or (found.get("role") or "").lower() in _DROPPED_ROLES
            or "hidden" in found
            or (found.get("aria-hidden") or "").lower() == "true"
        )
        is_main = tag in ("main", "article") or (found.get("role") or "").lower() == "main"
        self._stack.append(tag)
        self._drop_marks.append(drop)
        self._main_marks.append(is_main)
        self._dropped += drop
        self._main += is_main
        if self._dropped:
            return
        self._open(tag, found)

    def _dropped_outside_head(self) -> bool:
        return self._dropped > 0 and "head" not in self._stack

    def _open(self, tag: str, attrs: dict[str, str | None]) -> None:
        if tag in _HEADINGS:
            self._block()
            self._emit("#" * _HEADINGS[tag] + " ")
        elif tag in _BLOCKS:
            self._block()
        elif tag in ("ul", "ol"):
            self._line() if self._lists else self._block()
            self._lists.append(tag)
            self._counters.append(0)
        elif tag == "li":
            self._line()
            # Under each enclosing item, as far as its marker is wide ("- ", "1. ").
            indent = "".join("   " if kind == "ol" else "  " for kind in self._lists[:-1])
            if self._lists and self._lists[-1] == "ol":
                self._counters[-1] += 1
                self._emit(f"{indent}{self._counters[-1]}. ")
            else:
                self._emit(f"{indent}- ")
        elif tag == "pre":
            self._block()
            self._emit("```\n")
            self._pre += 1
        elif tag == "code" and not self._pre:
            self._emit("`")
        elif tag in ("strong", "b"):
            self._emit("**")
        elif tag in ("em", "i"):
            self._emit("*")
        elif tag == "blockquote":
            self._quote += 1
            self._block()
        elif tag == "a":
            href = (attrs.get("href") or "").strip()
            keep = href and not href.startswith(("#", "javascript:", "mailto:"))
            self._links.append(urljoin(self.base, href) if keep else None)
            if keep:
                self._emit("[")
        elif tag == "tr":
            self._line()
            self._emit("|")
        elif tag in ("td", "th"):
            self._emit(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if tag in _VOID or tag not in self._stack:
            return
        # Close everything left open inside it (<li> and <p> are often not closed).
        while self._stack:
            open_tag = self._stack.pop()
            drop, is_main = self._drop_marks.pop(), self._main_marks.pop()
            if not self._dropped:
                self._close(open_tag)
            self._dropped -= drop
            self._main -= is_main
            if open_tag == tag:
                break

    def _close(self, tag: str) -> None:
        if tag in _HEADINGS or tag in _BLOCKS:
            self._block()
        elif tag in ("ul", "ol"):
            if self._lists:
                self._lists.pop()
                self._counters.pop()
            self._line() if self._lists else self._block()
        elif tag == "pre":
            self._pre = max(self._pre - 1, 0)
            self._emit("\n```")
            self._block()
        elif tag == "code" and not self._pre:
            self._emit("`")
        elif tag in ("strong", "b"):
            self._emit("**")
        elif tag in ("em", "i"):
            self._emit("*")
        elif tag == "blockquote":
            self._quote = max(self._quote - 1, 0)
            self._block()
        elif tag == "a":
            href = self._links.pop() if self._links else None
            if href:
                self._emit(f"]({href})")
        elif tag in ("td", "th"):
            self._emit(" |")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title.append(data)
            return
        if self._dropped:
            return
        if self._pre:
            self._emit(data)
        else:
            self._emit(_SPACE.sub(" ", data))


def html_to_markdown(html: str, base: str = "") -> str:
    """The readable part of an HTML page as Markdown: ``<main>``/``<article>`` when there is
    one (else the body), never navigation, page headers and footers, forms, scripts or styles.
    Links are made absolute against ``base``. A title heads it when the text has no ``#``."""
    reader = _Reader(base)
    reader.feed(html)
    reader.close()
    text = _tidy("".join(reader.main) if "".join(reader.main).strip() else "".join(reader.whole))
    title = _SPACE.sub(" ", "".join(reader.title)).strip()
    if title and text and not text.startswith("# "):
        text = f"# {title}\n\n{text}"
    return text + "\n" if text else ""


def _tidy(text: str) -> str:
    """Lines without stray spaces (code blocks kept as they are; list items keep their
    nesting), at most one blank line between blocks."""
    out: list[str] = []
    in_code = False
    for line in text.split("\n"):
        bare = line.strip()
        if bare.lstrip("> ").startswith("```"):
            in_code = not in_code
            out.append(line.rstrip())
        elif in_code:
            out.append(line)
        elif bare in ("", ">"):
            out.append("")
        else:
            indent = line[: len(line) - len(line.lstrip(" "))] if _ITEM.match(bare) else ""
            out.append(indent + re.sub(r"(?<=\S) {2,}", " ", bare))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip()


_ITEM: Final = re.compile(r"(-|\d+\.) ")
