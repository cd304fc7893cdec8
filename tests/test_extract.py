"""``ask -x/--extract``: only the answer's code on stdout, chosen by a selector."""

from __future__ import annotations

import pytest

from chatcli.extract import code_blocks, is_selector, select
from tests.conftest import Isolated, assert_one_line_error, run
from tests.servers import FakeOpenAI

pytestmark = pytest.mark.usefixtures("fast_retries")

ANSWER = [
    "Here is the script:\n\n```Python\nimport sys\n",
    "print(sys.argv)\n```\n\nRun it with:\n\n```sh\npython x.py a b\n```\n\n",
    "Or indented:\n\n    echo plain\n",
]


def ask(fake: FakeOpenAI, *args: str) -> list[str]:
    return ["ask", "-p", "ollama", "-m", "m", "--base-url", fake.base_url, *args]


def question(fake: FakeOpenAI) -> str:
    content: str = fake.requests[-1].body["messages"][-1]["content"]
    return content


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ([], "echo plain\n"),  # the last block
        (["-x", "1"], "import sys\nprint(sys.argv)\n"),
        (["-x", "2"], "python x.py a b\n"),
        (["-x", "python"], "import sys\nprint(sys.argv)\n"),  # languages match in any case
        (["-x", "SH"], "python x.py a b\n"),
        (["-x", "all"], "import sys\nprint(sys.argv)\n\npython x.py a b\n\necho plain\n"),
    ],
)
def test_the_selector_picks_the_code_and_stdout_has_nothing_else(
    fake: FakeOpenAI, isolated: Isolated, selector: list[str], expected: str
) -> None:
    fake.pieces = ANSWER
    args = ["write a script", *selector] if selector else ["write a script", "-x"]
    result = run(ask(fake, "-S", "code", *args), isolated)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected
    assert question(fake) == "write a script"
    # The whole answer is kept in the session all the same.
    shown = run(["sessions", "show", "code"], isolated)
    assert "Run it with:" in shown.stdout


def test_a_question_right_after_x_is_the_question_not_a_selector(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    fake.pieces = ANSWER
    result = run(ask(fake, "-x", "write a script"), isolated)
    assert (result.returncode, result.stdout) == (0, "echo plain\n")
    assert question(fake) == "write a script"


@pytest.mark.parametrize(
    ("pieces", "selector", "fragments"),
    [
        (["No code here, only words."], [], ("no code block",)),
        (ANSWER, ["-x", "5"], ("has 3 code blocks", "-x 5")),
        (ANSWER, ["-x", "rust"], ("no rust code block", "python, sh, unnamed")),
    ],
)
def test_nothing_to_extract_is_one_line_and_exit_1(
    fake: FakeOpenAI,
    isolated: Isolated,
    pieces: list[str],
    selector: list[str],
    fragments: tuple[str, ...],
) -> None:
    fake.pieces = pieces
    result = run(ask(fake, "hi", *(selector or ["-x"])), isolated)
    assert result.returncode == 1
    assert result.stdout == ""
    assert_one_line_error(result.stderr, *fragments)


def test_bad_selectors_and_json_are_usage_errors(fake: FakeOpenAI, isolated: Isolated) -> None:
    for args, fragment in [
        (["hi", "-x", "0"], "numbered from 1"),
        (["hi", "-x", "--json"], "-x and --json"),
    ]:
        result = run(ask(fake, *args), isolated)
        assert result.returncode == 2
        assert_one_line_error(result.stderr, fragment)
    assert fake.requests == []  # refused before anything was sent


def test_a_cut_answer_gives_the_code_it_has_and_exit_3(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    fake.pieces, fake.finish_reason = ["```sh\necho one\necho tw"], "length"
    result = run(ask(fake, "hi", "-x"), isolated)
    assert result.returncode == 3
    assert result.stdout == "echo one\necho tw\n"


def test_blocks_are_found_as_the_renderer_finds_them() -> None:
    text = "```\nbare\n```\n\n~~~js extra words\nlet a\n~~~\n\n    indented\n\n`inline` is not\n"
    assert [(b.language, b.text) for b in code_blocks(text)] == [
        ("", "bare\n"),
        ("js", "let a\n"),
        ("", "indented\n"),
    ]
    assert select(text, "js") == "let a\n"
    assert is_selector("c++") and is_selector("12") and not is_selector("two words")


def test_x_reads_as_a_flag_before_options_and_the_question() -> None:
    from chatcli.extract import with_default_selector as default

    assert default(["ask", "-x"]) == ["ask", "-x", "last"]
    assert default(["ask", "-x", "-S", "s", "q"]) == ["ask", "-x", "last", "-S", "s", "q"]
    assert default(["ask", "-x", "write a script"]) == ["ask", "-x", "last", "write a script"]
    assert default(["ask", "-x", "2", "q"]) == ["ask", "-x", "2", "q"]
    assert default(["ask", "--extract=sh", "q"]) == ["ask", "--extract=sh", "q"]
    assert default(["ask", "--", "-x"]) == ["ask", "--", "-x"]  # words of the question
    assert default(["repl", "-x"]) == ["repl", "-x"]  # ask's option only


def test_on_a_terminal_the_answer_shows_on_stderr_and_the_file_gets_the_code(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    import shlex

    from tests.conftest import CHATCLI
    from tests.test_repl_terminal import Terminal

    fake.pieces = ANSWER
    out = isolated.root / "code.txt"
    command = " ".join(shlex.quote(a) for a in [str(CHATCLI), *ask(fake, "hi", "-x", "sh")])
    term = Terminal([], {**isolated.env, "TERM": "xterm-256color"}, shell=f"{command} > {out}")
    try:
        assert term.wait_exit(timeout=30) == 0
        assert "Run it with:" in term.text()  # the answer, rendered for the person watching
        assert "```" not in term.text()
    finally:
        term.close()
    assert out.read_text() == "python x.py a b\n"
