"""The chat page of ``chatcli serve``, in a real headless Chromium, in front of the real server
(a subprocess) in front of the fake OpenAI service: it loads clean under its Content Security
Policy, streams answers as Markdown, never runs what a model writes, stops on request, and asks
for the server's token."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from tests.cdp import Chromium
from tests.conftest import Isolated
from tests.servers import FakeOpenAI

SERVE = [sys.executable, "-m", "chatcli", "serve"]
#: The line on stderr that gives the address ("chatcli: serving on http://127.0.0.1:PORT/ ...";
#: "chatcli serve: listening on ..." is taken too).
LISTENING = re.compile(r"chatcli(?: serve)?: (?:listening|serving) on (http://127\.0\.0\.1:(\d+)/)")


@contextmanager
def chatcli_serve(
    isolated: Isolated, fake: FakeOpenAI, *extra: str, timeout: float = 30
) -> Iterator[str]:
    """``chatcli serve --port 0`` as a subprocess, its provider the fake; yields the page's URL
    (``http://127.0.0.1:PORT/``). Stopped (SIGTERM, then SIGKILL) when the block ends."""
    isolated.write_config(f'[providers.ollama]\nbase_url = "{fake.base_url}"\n')
    env = dict(isolated.env, CHATCLI_PROVIDER="ollama")
    process = subprocess.Popen(
        [*SERVE, "--port", "0", *extra],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        cwd=isolated.root,
        start_new_session=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    said: list[str] = []

    def drain() -> None:  # keeps reading stderr, so the server never blocks on a full pipe
        assert process.stderr is not None
        for raw in process.stderr:
            lines.put(raw.decode("utf-8", errors="replace"))
        lines.put(None)

    threading.Thread(target=drain, daemon=True).start()
    try:
        deadline = time.monotonic() + timeout
        url = None
        while url is None:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"chatcli serve said no URL in {timeout} s: {said}") from None
            assert line is not None, f"chatcli serve exited: {''.join(said)}"
            said.append(line)
            if found := LISTENING.search(line):
                url = found.group(1)
        yield url
    finally:
        with suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def assert_page_headers(url: str) -> None:
    """The page's files come with the Content Security Policy that keeps inline script out."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for name, kind in (("", "text/html"), ("chat.js", "javascript"), ("chat.css", "text/css")):
        with opener.open(url + name, timeout=10) as response:
            policy = response.headers["Content-Security-Policy"] or ""
            assert kind in response.headers["Content-Type"], (name, response.headers)
            assert "default-src 'none'" in policy and "script-src 'self'" in policy, policy
            assert "unsafe-inline" not in policy, policy


def ask(browser: Chromium, question: str) -> None:
    """Type ``question`` and click Send, once the page is idle with its models listed."""
    browser.wait_for("document.querySelectorAll('#model option').length > 0")
    browser.wait_for("document.body.dataset.state === 'idle'")
    browser.evaluate(f"document.getElementById('input').value = {json.dumps(question)}")
    browser.evaluate("document.getElementById('send').click()")


def wait_answered(browser: Chromium, count: int, timeout: float = 15) -> None:
    """Until ``count`` answers are on the page and it is idle again (the last one ended)."""
    browser.wait_for(
        f"document.querySelectorAll('.message.assistant').length === {count}"
        " && document.body.dataset.state === 'idle'",
        timeout=timeout,
    )


def last_answer(browser: Chromium, what: str) -> object:
    """``what`` (an expression of ``answer``) for the last assistant message."""
    return browser.evaluate(
        "(() => { const all = document.querySelectorAll('#messages .message.assistant');"
        f" const answer = all[all.length - 1]; return {what}; }})()"
    )


#: An answer in pieces that cut through its Markdown, as a stream does.
MARKDOWN = [
    "# Title\n\nSome ", "**bo", "ld** and ", "`code`", ", see [the docs](https://exa",
    "mple.com/docs).\n\n- one\n- two\n\n```pyth", 'on\nprint("hi")\nprint("there")\n```\n',
]  # fmt: skip


def test_the_page_streams_a_markdown_answer(
    isolated: Isolated, fake: FakeOpenAI, tmp_path: Path
) -> None:
    fake.pieces = MARKDOWN
    fake.reasoning = ["Thinking ", "it over."]
    with chatcli_serve(isolated, fake) as url, Chromium() as browser:
        assert_page_headers(url)
        browser.navigate(url)
        options = browser.wait_for(
            "(() => { const o = [...document.querySelectorAll('#model option')];"
            " return o.length && o.map((x) => [x.value, x.selected]); })()"
        )
        listed = [value for value, _ in options]
        served = browser.evaluate(
            "fetch('/v1/models').then((r) => r.json()).then((j) => j.data.map((m) => m.id))"
        )
        assert listed == served
        assert listed[:2] == [f"ollama/{model}" for model in fake.models]  # the default first
        assert options[0][1], "the first model is not the one selected"

        ask(browser, "Show me Markdown")
        wait_answered(browser, 1)
        assert last_answer(browser, "answer.querySelector('.body strong').textContent") == "bold"
        assert last_answer(browser, "answer.querySelector('.body code').textContent") == "code"
        assert last_answer(browser, "answer.querySelector('.body h1').textContent") == "Title"
        assert last_answer(browser, "answer.querySelectorAll('.body li').length") == 2
        assert last_answer(browser, "answer.querySelector('.code-label').textContent") == "python"
        assert last_answer(browser, "answer.querySelector('pre code').textContent") == (
            'print("hi")\nprint("there")'
        )
        assert last_answer(
            browser,
            "(({href, rel, target, textContent}) => [href, rel, target, textContent])"
            "(answer.querySelector('.body a'))",
        ) == ["https://example.com/docs", "noopener noreferrer", "_blank", "the docs"]
        assert last_answer(browser, "answer.querySelector('details').textContent") == (
            "ThinkingThinking it over."
        )
        assert last_answer(browser, "answer.querySelector('.status').hidden") is True
        assert browser.evaluate(
            "[...document.querySelectorAll('.message.user .body')].map((x) => x.textContent)"
        ) == ["Show me Markdown"]
        # The server got the question, for the model picked.
        chat = [r.body for r in fake.requests if r.path.endswith("/chat/completions")]
        assert chat[-1]["messages"][-1] == {"role": "user", "content": "Show me Markdown"}
        assert chat[-1]["model"] == listed[0].split("/", 1)[-1]

        # A second question carries the conversation so far.
        fake.reasoning = []
        fake.pieces = ["Again."]
        browser.evaluate("document.getElementById('input').value = 'More'")
        browser.evaluate(
            "document.getElementById('input').dispatchEvent("
            "new KeyboardEvent('keydown', {key: 'Enter', bubbles: true, cancelable: true}))"
        )
        wait_answered(browser, 2)
        chat = [r.body for r in fake.requests if r.path.endswith("/chat/completions")]
        assert [m["role"] for m in chat[-1]["messages"]] == ["user", "assistant", "user"]
        assert chat[-1]["messages"][1]["content"] == "".join(MARKDOWN)

        shot = browser.screenshot(tmp_path / "page.png")
        assert shot.read_bytes().startswith(b"\x89PNG")
        if os.environ.get("CHATCLI_KEEP_SCREENSHOT"):
            shutil.copy(shot, "/tmp/chatcli-page.png")

        # New chat clears it all.
        browser.evaluate("document.getElementById('new').click()")
        assert browser.evaluate("document.querySelectorAll('.message').length") == 0

        # The model picked is the one selected next time.
        browser.evaluate(
            f"const pick = document.getElementById('model'); pick.value = {json.dumps(listed[1])};"
            " pick.dispatchEvent(new Event('change'))"
        )
        browser.navigate(url)
        browser.wait_for("document.querySelectorAll('#model option').length > 0")
        assert browser.evaluate("document.getElementById('model').value") == listed[1]
        assert browser.problems == []


HOSTILE = [
    'An image: <img src=x onerror="window.pwned=1">\n\n',
    "A script: <script>window.pwned=2</script>\n\n",
    "A link: [click](javascript:window.pwned=3)\n\n",
    'Bold: <b onmouseover="window.pwned=4">hover</b>\n\n',
    '```html\n<img src=x onerror="window.pwned=5">\n```\n',
]


def test_model_text_cannot_run_script(isolated: Isolated, fake: FakeOpenAI) -> None:
    fake.pieces = HOSTILE
    with chatcli_serve(isolated, fake) as url, Chromium() as browser:
        browser.navigate(url)
        ask(browser, "Be hostile")
        wait_answered(browser, 1)
        time.sleep(0.3)  # room for an onerror that would fire
        # Hover over everything, for any onmouseover.
        browser.evaluate(
            "document.querySelectorAll('#messages *').forEach((node) =>"
            " node.dispatchEvent(new MouseEvent('mouseover', {bubbles: true})))"
        )
        assert browser.evaluate("typeof window.pwned") == "undefined"
        text = str(last_answer(browser, "answer.querySelector('.body').textContent"))
        for literal in (
            '<img src=x onerror="window.pwned=1">',
            "<script>window.pwned=2</script>",
            "[click](javascript:window.pwned=3)",
            '<b onmouseover="window.pwned=4">hover</b>',
            '<img src=x onerror="window.pwned=5">',
        ):
            assert literal in text, (literal, text)
        counted = browser.evaluate(
            "['img', 'script', 'b', 'a', 'iframe', 'object', 'embed', 'svg']"
            ".map((tag) => document.querySelectorAll('#messages ' + tag).length)"
        )
        assert counted == [0] * 8
        assert browser.problems == []


def test_stop_ends_the_stream(isolated: Isolated, fake: FakeOpenAI) -> None:
    fake.pieces = [f"piece {n} " for n in range(200)]
    fake.delay = 0.1
    with chatcli_serve(isolated, fake) as url, Chromium() as browser:
        browser.navigate(url)
        ask(browser, "Talk slowly")
        browser.wait_for("document.body.dataset.state === 'streaming'")
        browser.wait_for("!document.getElementById('stop').hidden")
        browser.wait_for(
            "(document.querySelector('.message.assistant .body') || {}).textContent"
            "?.includes('piece 2')"
        )
        browser.evaluate("document.getElementById('stop').click()")
        browser.wait_for("document.body.dataset.state === 'idle'", timeout=5)
        assert last_answer(browser, "answer.querySelector('.status').textContent") == "stopped"
        assert last_answer(browser, "answer.querySelector('.status').hidden") is False
        assert browser.evaluate("document.getElementById('stop').hidden") is True
        shown = str(last_answer(browser, "answer.querySelector('.body').textContent"))
        time.sleep(0.5)  # nothing more arrives once stopped
        assert last_answer(browser, "answer.querySelector('.body').textContent") == shown
        assert "piece 199" not in shown
        assert browser.problems == []


def test_the_token(isolated: Isolated, fake: FakeOpenAI) -> None:
    fake.pieces = ["Authorized."]
    with chatcli_serve(isolated, fake, "--token", "secret-t") as url:
        with Chromium() as browser:
            # From the address printed: it works, and the token leaves the address bar.
            browser.navigate(f"{url}#token=secret-t")
            ask(browser, "hello")
            wait_answered(browser, 1)
            body = last_answer(browser, "answer.querySelector('.body').textContent")
            assert body == "Authorized."
            assert browser.evaluate("location.href") == url
            assert browser.evaluate("location.hash") == ""
            assert browser.evaluate("document.getElementById('token-form').hidden") is True
            assert browser.problems == []

        with Chromium() as browser:
            # Without it (a fresh browser): the page asks, then works.
            browser.navigate(url)
            browser.wait_for("!document.getElementById('token-form').hidden")
            assert browser.evaluate("document.querySelectorAll('#model option').length") == 0
            browser.evaluate(
                "document.getElementById('token-input').value = 'secret-t';"
                "document.getElementById('token-save').click()"
            )
            browser.wait_for("document.getElementById('token-form').hidden")
            ask(browser, "hello")
            wait_answered(browser, 1)
            body = last_answer(browser, "answer.querySelector('.body').textContent")
            assert body == "Authorized."
            # The one refusal, before the token was given, is the only thing logged.
            refused = "the server responded with a status of 401"
            assert [p for p in browser.problems if refused not in p] == []


def test_the_status_line_says_how_an_answer_ended(isolated: Isolated, fake: FakeOpenAI) -> None:
    with chatcli_serve(isolated, fake) as url, Chromium() as browser:
        browser.navigate(url)
        statuses: list[object] = []
        for setting in ({"finish_reason": "length"}, {"mode": "error_event"}):
            for key, value in setting.items():
                setattr(fake, key, value)
            ask(browser, "go on")
            count = len(statuses) + 1
            wait_answered(browser, count)
            statuses.append(last_answer(browser, "answer.querySelector('.status').textContent"))
            # What came before the end is shown all the same.
            body = last_answer(browser, "answer.querySelector('.body').textContent")
            assert str(body).startswith("Hello,"), body
        assert statuses[0] == "cut at the token limit"
        assert str(statuses[1]).startswith("error: ") and "overloaded" in str(statuses[1])
        assert browser.problems == []


#: Markdown source -> the HTML the page's renderer builds from it (compared as outerHTML, which
#: the test reads; the page itself never parses HTML).
RENDERED = {
    "plain *em* _em_ snake_case_name": "<p>plain <em>em</em> <em>em</em> snake_case_name</p>",
    "**a *b* c**": "<p><strong>a <em>b</em> c</strong></p>",
    "`<b>` and \\*stars\\*": "<p><code>&lt;b&gt;</code> and *stars*</p>",
    "line one\nline two": "<p>line one<br>line two</p>",
    "## Sub *title*": "<h2>Sub <em>title</em></h2>",
    "> quoted\n> **text**": "<blockquote><p>quoted<br><strong>text</strong></p></blockquote>",
    "1. a\n2. b\n   - nested": "<ol><li>a</li><li>b<ul><li>nested</li></ul></li></ol>",
    "3. three": '<ol start="3"><li>three</li></ol>',
    "---": "<hr>",
    "```\nunclosed <i>": (
        '<div class="code"><div class="code-bar"><span class="code-label">code</span>'
        '<button class="copy" type="button">Copy</button></div>'
        "<pre><code>unclosed &lt;i&gt;</code></pre></div>"
    ),
    "[x](JaVaScRiPt:alert(1)) [y](data:text/html,hi) [z](vbscript:x) [w](/relative)": (
        "<p>[x](JaVaScRiPt:alert(1)) [y](data:text/html,hi) [z](vbscript:x) [w](/relative)</p>"
    ),
    "[**b**](http://h.test/a?b=1&c=2)": (
        '<p><a href="http://h.test/a?b=1&amp;c=2" rel="noopener noreferrer" target="_blank">'
        "<strong>b</strong></a></p>"
    ),
    "<svg onload=alert(1)>": "<p>&lt;svg onload=alert(1)&gt;</p>",
}


def test_the_markdown_renderer(isolated: Isolated, fake: FakeOpenAI) -> None:
    with chatcli_serve(isolated, fake) as url, Chromium() as browser:
        browser.navigate(url)
        rendered = browser.evaluate(
            f"Object.fromEntries(Object.keys({json.dumps(RENDERED)}).map((source) => {{"
            " const box = document.createElement('div');"
            " box.append(renderMarkdown(source)); return [source, box.innerHTML]; }))"
        )
        assert rendered == RENDERED
        assert browser.problems == []


def test_the_heading_renderer(isolated: Isolated, fake: FakeOpenAI) -> None:
    """Closing #s come off a heading; a line full of spaces takes no time to look at."""
    headings = {
        "# Title ##": "<h1>Title</h1>",
        "## C#": "<h2>C#</h2>",
        "### a #b#  ": "<h3>a #b#</h3>",
        "# spaced" + " " * 50_000 + "out": "<h1>spaced" + " " * 50_000 + "out</h1>",
    }
    with chatcli_serve(isolated, fake) as url, Chromium() as browser:
        browser.navigate(url)
        rendered = browser.evaluate(
            f"Object.fromEntries(Object.keys({json.dumps(headings)}).map((source) => {{"
            " const box = document.createElement('div');"
            " box.append(renderMarkdown(source)); return [source, box.innerHTML]; }))"
        )
        assert rendered == headings
        assert browser.problems == []


def deep_list(depth: int) -> str:
    """A list nested ``depth`` deep, an item on each level."""
    return "".join(f"{'  ' * level}- item {level}\n" for level in range(depth))


#: Hostile answers, and the text each shows once its ``*``, ``>``, ``-`` and blanks are out.
DEEP = {
    "quote": (">" * 20_000 + " x", "x"),
    "list": (deep_list(2000), "".join(f"item{level}" for level in range(2000))),
    "emphasis": ("**a " * 5000, "a" * 5000),
    "nested emphasis": ("*" * 30_000 + "a" + "*" * 30_000, "a"),
}


def test_deep_nesting_leaves_the_page_usable(isolated: Isolated, fake: FakeOpenAI) -> None:
    """Nesting deep enough to overflow a recursive renderer's stack is cut off at a depth
    (deeper, it shows as text); the answer ends, the page is usable again."""
    with chatcli_serve(isolated, fake) as url, Chromium() as browser:
        browser.navigate(url)
        for count, (name, (answer, shown)) in enumerate(DEEP.items(), start=1):
            # In pieces (some 30), so the page renders it part made too.
            size = max(1000, len(answer) // 30)
            fake.pieces = [answer[start : start + size] for start in range(0, len(answer), size)]
            fake.delay = 0.01
            ask(browser, f"Nest a {name}")
            wait_answered(browser, count, timeout=30)
            text = str(last_answer(browser, "answer.querySelector('.body').textContent"))
            assert re.sub(r"[\s*>-]", "", text) == shown, name
            assert last_answer(browser, "answer.querySelector('.status').hidden") is True, name
            depth = last_answer(
                browser,
                "Math.max(0, ...[...answer.querySelectorAll('.body *')].map((node) => {"
                " let depth = 0; for (; node && !node.matches('.body'); node = node.parentNode)"
                " depth += node.matches('blockquote, ul, ol, strong, em');"
                " return depth; }))",
            )
            assert isinstance(depth, int) and 1 <= depth <= 20, (name, depth)
            assert browser.evaluate("document.getElementById('send').disabled") is False
            assert browser.evaluate("document.getElementById('stop').hidden") is True
        assert browser.problems == []


def long_answer(lines: int) -> str:
    """``lines`` lines of Markdown of every kind."""
    out = []
    for n in range(lines):
        kind = n % 30
        if kind == 0:
            out.append(f"## Part {n}")
        elif kind in (1, 2, 3):
            out.append(f"Line {n} of a paragraph, with **bold** and `code` and *more*.")
        elif kind == 4:
            out.append("")
        elif kind in (5, 6, 7):
            out.append(f"- item {n}" if kind != 7 else f"  - nested item {n}")
        elif kind == 8:
            out.append(f"> quoted line {n}")
        elif kind == 9:
            out.append("```python")
        elif kind in (10, 11):
            out.append(f"print({n})")
        elif kind == 12:
            out.append("```")
        elif kind == 13:
            out.append(f"1. first {n}")
        elif kind == 14:
            out.append(f"2. second {n}")
        else:
            out.append(f"Line {n}: [a link](https://example.com/{n}) and plain words.")
    return "\n".join(out) + "\n"


def test_a_long_answer_streams_in_good_time(isolated: Isolated, fake: FakeOpenAI) -> None:
    """A long answer, a line a piece: the page keeps up (loose bound: a whole re-render each
    frame would take far longer), and what it shows is the whole answer rendered."""
    answer = long_answer(3000)
    fake.pieces = answer.splitlines(keepends=True)
    fake.delay = 0.001
    with chatcli_serve(isolated, fake) as url, Chromium() as browser:
        browser.navigate(url)
        ask(browser, "Talk at length")
        started = time.monotonic()
        wait_answered(browser, 1, timeout=60)
        assert time.monotonic() - started < 20
        assert last_answer(browser, "answer.querySelector('.status').hidden") is True
        text = str(last_answer(browser, "answer.querySelector('.body').textContent"))
        assert "Line 2999:" in text and "nested item 2977" in text
        # Rendered bit by bit as it came, it is what rendering it whole makes.
        assert last_answer(
            browser,
            "(() => { const box = document.createElement('div');"
            f" box.append(renderMarkdown({json.dumps(answer)}));"
            " return box.innerHTML === answer.querySelector('.body').innerHTML; })()",
        )
        assert browser.problems == []


#: Markdown cut anywhere by the stream: each block kind, lazy lines, loose lists, CRLF.
GROWING = (
    "# Head #\n\nA paragraph\nwith a lazy line\n---\nafter the rule\n\n"
    "- one\n- two\n  indented\n\n  still two\n\n- three\nlazy\n> quote\n> more\n"
    "continued\n\n1. a\n2) b\n3. c\n\n```js\nlet x = 1;\n\n```\n~~~\nno lang\n"
    "> ```\n> in a quote\n\n***\n**bold\nline** *em* `code`\r\nCRLF line\r\n\r\n"
    "  - indented start\n    - deeper\n        code-ish\n\n#not heading\n\n- \n-\n"
)


def test_the_streaming_view_matches_a_whole_render(isolated: Isolated, fake: FakeOpenAI) -> None:
    """The view that renders an answer as it grows builds again only what may still change:
    after every character, it shows what rendering the text so far whole shows."""
    with chatcli_serve(isolated, fake) as url, Chromium() as browser:
        browser.navigate(url)
        mismatches = browser.evaluate(
            f"(() => {{ const source = {json.dumps(GROWING)};"
            " const box = document.createElement('div'), view = markdownView(box);"
            " const bad = [];"
            " for (let n = 0; n <= source.length; n++) {"
            "  view(source.slice(0, n));"
            "  const whole = document.createElement('div');"
            "  whole.append(renderMarkdown(source.slice(0, n)));"
            "  if (whole.innerHTML !== box.innerHTML) bad.push(n); }"
            " return bad; })()"
        )
        assert mismatches == []
        assert browser.problems == []


def test_a_render_that_fails_leaves_the_page_usable(isolated: Isolated, fake: FakeOpenAI) -> None:
    """Should rendering an answer throw, the answer shows as text, its status says so, and the
    page is ready for the next question."""
    fake.pieces = ["Some **text**\n", "on two lines <b>"]
    with chatcli_serve(isolated, fake) as url, Chromium() as browser:
        browser.navigate(url)
        browser.evaluate(
            "window.realRenderBlocks = renderBlocks;"
            " window.renderBlocks = () => { throw new RangeError('too deep'); }"
        )
        ask(browser, "Break it")
        wait_answered(browser, 1)
        assert last_answer(browser, "answer.querySelector('.status').textContent") == (
            "could not render this answer; shown as text"
        )
        assert last_answer(browser, "answer.querySelector('.status').hidden") is False
        assert last_answer(browser, "answer.querySelector('.body').textContent") == (
            "Some **text**\non two lines <b>"
        )
        assert last_answer(browser, "answer.querySelectorAll('.body strong, .body b').length") == 0
        assert browser.evaluate("document.getElementById('send').disabled") is False
        assert browser.evaluate("document.getElementById('stop').hidden") is True

        browser.evaluate("window.renderBlocks = window.realRenderBlocks")
        fake.pieces = ["Fine **again**."]
        ask(browser, "Again")
        wait_answered(browser, 2)
        assert last_answer(browser, "answer.querySelector('.body strong').textContent") == "again"
        assert last_answer(browser, "answer.querySelector('.status').hidden") is True
        assert browser.problems == []
