"""Model text is untrusted: none of its control bytes may reach a terminal, however it is split.

Every renderer is fed hostile text split at every offset; what it writes is stripped of the
sequences chatcli itself emits (Rich's colours, the cursor moves of the live tail), and what
remains must hold no ESC, no C1 control (0x9B CSI and friends), and no BEL, BS, CR or DEL.
"""

from __future__ import annotations

import io
import json
import re

import pytest
from rich.console import Console

from chatcli.render import MarkdownRenderer, PlainRenderer, sanitize
from tests.conftest import Isolated, run
from tests.servers import FakeOpenAI

OSC52 = "\x1b]52;c;ZWNobyBwd25lZA==\x07"  # write the clipboard
OSC8 = "\x1b]8;;https://evil.example\x1b\\innocent\x1b]8;;\x1b\\"  # a hidden hyperlink
TITLE = "\x1b]0;pwned\x07\x1b]2;pwned too\x1b\\"  # window title
CLEAR = "\x1b[2J\x1b[H"  # clear the screen, cursor home
MOVES = "\x1b[5A\x1b[10D\x1b[K\x1b7\x1b8"  # cursor up, left, erase, save/restore
C1 = "\x9b2J\x9d0;c1 title\x9c\x90dcs\x9c"  # the 8-bit forms
MODES = "\x1b[?1000h\x1b[?2004l\x1bPq#0\x1b\\"  # mouse reporting, paste mode, DCS (sixel)
OTHERS = "\x07bell\x08back\rreturn\x7fdel"

HOSTILE = (
    f"# Title {TITLE}\n\n"
    f"A paragraph {OSC52} with {OSC8} and {CLEAR} and {MOVES}.\n\n"
    f"- item {C1}\n- item {MODES}\n\n"
    f"```python\nprint('{OSC52}')  # {CLEAR}\nx = '{C1}'\n```\n\n"
    f"[link {OSC8}](https://example.com/{CLEAR}) and `code {MOVES}` and **bold {OTHERS}**\n\n"
    "[bold red]rich markup[/bold red] and [link=https://evil.example]fake[/link]\n"
)

#: What chatcli itself writes to a terminal: SGR colours, and the live tail's cursor moves.
OURS = re.compile(r"\x1b\[[0-9;]*m|\r\x1b\[\d+A\x1b\[J|\x1b\[\?25[lh]")
FORBIDDEN = ("\x1b", "\x07", "\x08", "\r", "\x7f", *(chr(c) for c in range(0x80, 0xA0)))


def leaks(output: str) -> list[str]:
    rest = OURS.sub("", output)
    return [repr(char) for char in FORBIDDEN if char in rest]


def console(buffer: io.StringIO) -> Console:
    return Console(
        file=buffer, width=80, height=24, force_terminal=True, color_system="truecolor",
        markup=False, highlight=False, emoji=False,
    )  # fmt: skip


def render_split(text: str, offset: int, kind: str) -> str:
    buffer = io.StringIO()
    renderer = (
        MarkdownRenderer(console(buffer), live=kind == "live")
        if kind in ("live", "markdown")
        else PlainRenderer(buffer, safe=True)
    )
    renderer.start()
    renderer.feed(text[:offset])
    renderer.feed(text[offset:])
    renderer.finish()
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["live", "markdown", "raw"])
def test_no_model_control_byte_survives_any_split(kind: str) -> None:
    for offset in range(len(HOSTILE) + 1):
        output = render_split(HOSTILE, offset, kind)
        assert not leaks(output), (offset, leaks(output))
        # ...and the text around the sequences is still there, made visible.
        assert "␛]52;c;ZWNobyBwd25lZA==" in output, offset


def test_rich_markup_in_model_text_is_never_interpreted() -> None:
    output = render_split(HOSTILE, len(HOSTILE), "markdown")
    plain = OURS.sub("", output)
    assert "[bold red]rich markup[/bold red]" in plain
    assert "[link=https://evil.example]fake[/link]" in plain
    assert "\x1b]8;" not in output  # no hyperlink of any kind
    raw = render_split(HOSTILE, len(HOSTILE), "raw")
    assert "[bold red]rich markup[/bold red]" in raw and "\x1b[" not in raw


def test_markdown_links_show_their_real_target() -> None:
    output = OURS.sub("", render_split("[the docs](https://evil.example/pwn)\n", 5, "markdown"))
    assert "the docs (https://evil.example/pwn)" in output


def test_sanitize_is_a_visible_one_to_one_mapping_per_character() -> None:
    for code in [*range(0x20), 0x7F, *range(0x80, 0xA0)]:
        shown = sanitize(chr(code))
        if code in (0x09, 0x0A):
            assert shown == chr(code)
        else:
            assert shown and all(not leaks(c) for c in shown), hex(code)
            assert shown != chr(code)
    assert sanitize("ünïcödé ✓ 漢字") == "ünïcödé ✓ 漢字"


def test_error_messages_quoting_a_server_are_sanitized(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    fake.mode, fake.status = "status", 500
    fake.body = json.dumps({"error": {"message": f"boom {OSC52} {CLEAR} \x9b31m"}})
    result = run(["ask", "-p", "ollama", "-m", "m", "--base-url", fake.base_url, "hi"], isolated)
    assert result.returncode == 1
    assert not leaks(result.stderr), result.stderr
    assert "␛]52" in result.stderr


def test_stored_text_stays_raw_and_titles_are_shown_safe(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    fake.pieces = [f"answer {OSC52}"]
    question = f"question {TITLE}"
    assert run(["ask", "-p", "ollama", "-m", "m", "--base-url", fake.base_url, question],
               isolated).returncode == 0  # fmt: skip
    # The database keeps exactly what was said...
    exported = json.loads(run(["sessions", "list", "--json"], isolated).stdout)
    assert exported[0]["title"] == question
    shown = run(["sessions", "show", exported[0]["id"], "--json"], isolated).stdout
    assert json.loads(shown)["messages"][1]["content"] == f"answer {OSC52}"
    # ...and what is listed for people never carries a control byte.
    listed = run(["sessions", "list"], isolated).stdout
    assert not leaks(listed) and "question ␛]0;pwned" in listed
    found = run(["sessions", "search", "answer"], isolated).stdout
    assert not leaks(found) and "answer ␛]52" in found


def test_code_shows_the_characters_that_hide_or_reorder_it_and_prose_keeps_them() -> None:
    # "Trojan Source": a right-to-left override inside code makes the shown order differ
    # from the order that runs; zero-width characters hide text.
    source = (
        "Prose keeps \u202eRTL\u202c and zero\u200bwidth.\n\n"
        "```python\nif access_level != 'user\u202e \u2066# admin\u2069 \u2066':\n```\n\n"
        "Inline `is_admin\u200b = True` too.\n"
    )
    output = OURS.sub("", render_split(source, len(source), "markdown"))
    assert "Prose keeps \u202eRTL\u202c and zero\u200bwidth." in output
    assert "'user<U+202E> <U+2066># admin<U+2069> <U+2066>'" in output
    assert "is_admin<U+200B> = True" in output
    code = output[output.index("access_level") :]
    assert not any(char in code for char in "\u202e\u2066\u2069\u200b")
