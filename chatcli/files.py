"""Files as context (``ask -f``): files, directories, globs and stdin, read safely and bounded.

Each item reaches the model as a fenced block headed by its path, its language told by its
extension. A directory in a git work tree is listed by git itself (``git ls-files``: its
``.gitignore`` files and ``.git/info/exclude`` apply exactly as for git); elsewhere it is walked
without following links, leaving hidden entries out. Binary files, files over the per-file
limit and what would pass the total limit are skipped, and each skip is reported with why.

An ``http://`` or ``https://`` spec is a web page, fetched and made readable by
:mod:`chatcli.pages` (its source is the URL as fetched, after redirects): one that cannot be
fetched is an error, one whose text is over the per-file limit is skipped as a file would be.
A PDF, local or fetched, is read when the ``pdf`` extra is installed, else skipped (a file) or
refused (a URL) with the command that installs it.
"""

from __future__ import annotations

import glob
import os
import shutil
import stat
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final

from chatcli.errors import UsageError
from chatcli.pages import fetch_pages, is_url

#: Largest file read whole, and largest total of all files (bytes); ``--max-file-size`` and
#: ``--max-context`` raise them.
MAX_FILE: Final = 256 * 1024
MAX_TOTAL: Final = 2 * 1024 * 1024
#: How much of a file's start is checked for NUL bytes (binary) before it is read whole.
_SNIFF: Final = 8192

#: Fence languages by extension (what Markdown highlighters call them).
LANGUAGES: Final[Mapping[str, str]] = {
    ".py": "python", ".pyi": "python", ".js": "javascript", ".mjs": "javascript",
    ".ts": "typescript", ".tsx": "tsx", ".jsx": "jsx", ".rs": "rust", ".go": "go",
    ".c": "c", ".h": "c", ".cc": "cpp", ".cpp": "cpp", ".hpp": "cpp", ".java": "java",
    ".kt": "kotlin", ".rb": "ruby", ".php": "php", ".cs": "csharp", ".swift": "swift",
    ".sh": "bash", ".bash": "bash", ".zsh": "zsh", ".fish": "fish", ".ps1": "powershell",
    ".sql": "sql", ".html": "html", ".css": "css", ".scss": "scss", ".json": "json",
    ".toml": "toml", ".yaml": "yaml", ".yml": "yaml", ".xml": "xml", ".md": "markdown",
    ".rst": "rst", ".tex": "latex", ".lua": "lua", ".r": "r", ".scala": "scala",
    ".hs": "haskell", ".ex": "elixir", ".exs": "elixir", ".erl": "erlang", ".clj": "clojure",
    ".dart": "dart", ".vue": "vue", ".svelte": "svelte", ".tf": "hcl", ".ini": "ini",
    ".cfg": "ini", ".diff": "diff", ".patch": "diff", ".dockerfile": "dockerfile",
}  # fmt: skip
_NAMED: Final[Mapping[str, str]] = {
    "Dockerfile": "dockerfile", "Makefile": "makefile", "CMakeLists.txt": "cmake",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Item:
    """One piece of context: where it came from, and its text."""

    source: str
    text: str
    language: str = ""

    @property
    def size(self) -> int:
        return len(self.text.encode("utf-8", "surrogatepass"))

    @property
    def tokens(self) -> int:
        """An estimate (four bytes a token, rounded up)."""
        return -(-self.size // 4)

    def block(self) -> str:
        """The item as the model gets it: its path, then its text fenced (a fence longer than
        any run of backticks inside, so the text cannot close it)."""
        return f"{self.source}\n{fenced(self.text, self.language)}"


def fenced(text: str, language: str = "") -> str:
    """``text`` in a Markdown code fence longer than any run of backticks inside it (so the
    text cannot close it)."""
    longest, run = 0, 0
    for char in text:
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    body = text if text.endswith("\n") else text + "\n"
    return f"{fence}{language}\n{body}{fence}"


@dataclass(slots=True)
class Gathered:
    items: list[Item] = field(default_factory=list)
    #: (path, why) for each file left out.
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(item.size for item in self.items)

    def text(self) -> str:
        """Every item's block, a blank line apart."""
        return "\n\n".join(item.block() for item in self.items)


def language_of(path: str) -> str:
    name = os.path.basename(path)
    return _NAMED.get(name) or LANGUAGES.get(os.path.splitext(name)[1].lower(), "")


def gather(
    specs: Iterable[str],
    *,
    stdin: str | None = None,
    env: Mapping[str, str] | None = None,
    max_file: int = MAX_FILE,
    max_total: int = MAX_TOTAL,
    proxy: str | None = None,
    configured_proxy: str | None = None,
    timeout: float | None = None,
) -> Gathered:
    """The items ``specs`` name, in order: files, directories, globs, ``-`` for stdin, or
    http(s) URLs.

    A spec that names nothing is a usage error, and so is a URL that cannot be fetched (an
    HTTP error, a refused content type: a :class:`~chatcli.errors.ProviderError` or
    :class:`UsageError`); files and pages left out (binary, too big, over the total) are listed
    in :attr:`Gathered.skipped`. URLs are fetched through ``proxy`` (``--proxy``), else
    ``configured_proxy`` (the config's), else the ``*_PROXY`` variables of ``env``, with
    ``timeout`` (``--timeout``) or the default timeouts.
    """
    env = env if env is not None else {}
    gathered = Gathered()
    seen: set[str] = set()
    total = 0
    for spec in specs:
        if spec == "-":
            if stdin is None:
                raise UsageError("-f -: stdin is a terminal, or was already read")
            gathered.items.append(Item("(stdin)", stdin))
            total += gathered.items[-1].size
            continue
        if is_url(spec):
            if spec in seen:
                continue
            seen.add(spec)
            (page,) = fetch_pages(
                [spec],
                env=env,
                max_file=max_file,
                proxy=proxy,
                configured_proxy=configured_proxy,
                timeout=timeout,
            )
            if page.text is None:
                gathered.skipped.append((page.source, page.why))
            elif total + len(page.text.encode("utf-8", "surrogatepass")) > max_total:
                gathered.skipped.append((page.source, f"over the total of {_kib(max_total)}"))
            else:
                gathered.items.append(Item(page.source, page.text, page.language))
                total += gathered.items[-1].size
            continue
        for path in _expand(_home(spec, env), env):
            key = os.path.realpath(path)
            if key in seen:
                continue
            seen.add(key)
            item, why = _read(path, max_file)
            if item is None:
                gathered.skipped.append((path, why))
            elif total + item.size > max_total:
                gathered.skipped.append((path, f"over the total of {_kib(max_total)}"))
            else:
                gathered.items.append(item)
                total += item.size
    return gathered


def _home(spec: str, env: Mapping[str, str]) -> str:
    """``~/x`` under the HOME of the given environment (not the process's)."""
    home = env.get("HOME")
    if home and (spec == "~" or spec.startswith("~/")):
        return home + spec[1:]
    return spec


def _expand(spec: str, env: Mapping[str, str]) -> Iterator[str]:
    """The files one spec names (a file, a directory's files, a glob's), sorted."""
    if any(char in spec for char in "*?["):
        matches = sorted(glob.glob(spec, recursive=True))
        if not matches:
            raise UsageError(f"-f {spec}: no file matches")
        for match in matches:
            yield from _expand_path(match, env)
        return
    if not os.path.lexists(spec):
        raise UsageError(f"-f {spec}: no such file or directory")
    yield from _expand_path(spec, env)


def _expand_path(path: str, env: Mapping[str, str]) -> Iterator[str]:
    if os.path.isdir(path):
        yield from walk(path, env)
    else:
        yield path


def walk(directory: str, env: Mapping[str, str] | None = None) -> list[str]:
    """A directory's files: as git lists them in a work tree (ignored ones left out), else a
    walk that follows no links and leaves hidden entries out. Sorted, as paths under it."""
    listed = _git_files(directory, env or {})
    if listed is not None:
        return listed
    found: list[str] = []
    for root, dirs, files in os.walk(directory, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(root, f) for f in sorted(files) if not f.startswith("."))
    return found


def _git_files(directory: str, env: Mapping[str, str]) -> list[str] | None:
    """``git ls-files`` of a directory in a work tree (tracked and untracked, not ignored),
    run in the given environment less what would point git at another repository."""
    git = shutil.which("git", path=env.get("PATH", os.defpath))
    if git is None:
        return None
    clean = {k: v for k, v in env.items() if not k.startswith("GIT_")}
    try:
        done = subprocess.run(
            [git, "-C", directory, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            timeout=60,
            check=False,
            env=clean,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None  # not a work tree
    names = sorted({n for n in done.stdout.decode("utf-8", "surrogateescape").split("\0") if n})
    return [os.path.join(directory, name) for name in names]


def _read(path: str, max_file: int) -> tuple[Item | None, str]:
    """The file as an item, or ``None`` and why it is left out."""
    try:
        info = os.stat(path)
    except OSError as exc:
        return None, exc.strerror or "cannot be read"
    if not stat.S_ISREG(info.st_mode):
        return None, "not a regular file"
    if path.lower().endswith(".pdf"):
        return _read_pdf(path, info.st_size, max_file)
    if info.st_size > max_file:
        return None, f"{_kib(info.st_size)}, over the per-file {_kib(max_file)}"
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_file + 1)
    except OSError as exc:
        return None, exc.strerror or "cannot be read"
    if b"\0" in data[:_SNIFF]:
        return None, "binary"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None, "binary (not UTF-8 text)"
    return Item(path, text, language_of(path)), ""


def _read_pdf(path: str, size: int, max_file: int) -> tuple[Item | None, str]:
    """A PDF's text (the ``pdf`` extra), or ``None`` and why."""
    from chatcli.pages import PDF_FACTOR, pdf_available, pdf_text

    if not pdf_available():
        from chatcli import install_hint

        return None, f"a PDF; to read it: {install_hint('pdf')}"
    if size > max_file * PDF_FACTOR:
        return None, f"a PDF of {_kib(size)}, over the {_kib(max_file * PDF_FACTOR)} read"
    try:
        with open(path, "rb") as handle:
            text = pdf_text(handle.read(max_file * PDF_FACTOR + 1), path)
    except OSError as exc:
        return None, exc.strerror or "cannot be read"
    except UsageError:
        return None, "not a readable PDF"
    if len(text.encode("utf-8", "surrogatepass")) > max_file:
        return None, f"its text is over the per-file {_kib(max_file)}"
    return Item(path, text), ""


def _kib(size: int) -> str:
    return f"{size / 1024:,.0f} KiB" if size < 1024 * 1024 else f"{size / 1024 / 1024:,.1f} MiB"
