"""``chatcli cmd``: one shell command from a request in words, shown, and run only when asked.

The parts: what shell and OS the command is for (:func:`detect_shell`, :func:`detect_os`), the
system prompt that asks for a bare command (:func:`system_prompt`), the command taken out of
the answer (:func:`clean_command`), the commands that destroy data (:func:`dangers`), the
menu on a terminal (:class:`CommandMenu`: run, edit, copy, explain, quit, read one key at a
time), and the key bindings ``--install`` prints (:func:`install_snippet`).

Nothing runs without the user pressing ``r`` at the menu; into a pipe the command is printed,
never run.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shlex
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final

from chatcli.errors import EXIT_CUT, EXIT_INTERRUPTED, EXIT_OK, ChatcliError, UsageError
from chatcli.render.sanitize import INVISIBLE_IN_CODE

if TYPE_CHECKING:
    from rich.console import Console

    from chatcli.context import AppContext
    from chatcli.core import ChatOptions

# -- what the command is for ------------------------------------------------------------------

#: Shells whose ``-c`` is spelled otherwise: (program arguments before the command).
_RUN_FLAGS: Final = {
    "cmd": ("/c",),
    "powershell": ("-NoProfile", "-Command"),
    "pwsh": ("-NoProfile", "-Command"),
}
#: The Pygments lexer that highlights each shell's commands (others: bash's).
_LEXERS: Final = {
    "fish": "fish",
    "powershell": "powershell",
    "pwsh": "powershell",
    "cmd": "batch",
    "tcsh": "tcsh",
    "csh": "tcsh",
}
#: The shells ``--install`` has a key binding for.
INSTALL_SHELLS: Final = ("bash", "zsh", "fish")


def shell_name(path_or_name: str) -> str:
    """A shell's name from its path or name: ``/usr/bin/zsh`` is ``zsh``, ``pwsh.exe`` ``pwsh``."""
    name = path_or_name.replace("\\", "/").rsplit("/", 1)[-1].strip().lower()
    return name.removesuffix(".exe")


def detect_shell(env: Mapping[str, str], override: str | None = None) -> str:
    """The user's shell: ``override`` (``--shell``), else ``$SHELL``'s name, else ``sh``."""
    if override is not None:
        name = shell_name(override)
        if not name:
            raise UsageError("--shell: give a shell's name (bash, zsh, fish, sh, ...)")
        return name
    return shell_name(env.get("SHELL", "")) or "sh"


def detect_os(system: str | None = None, os_release: Path = Path("/etc/os-release")) -> str:
    """The OS as a person would name it: the Linux distribution (``/etc/os-release``'s
    ``PRETTY_NAME``), ``macOS 14.5``, ``Windows 11``; else what ``platform`` says."""
    system = platform.system() if system is None else system
    if system == "Darwin":
        return f"macOS {platform.mac_ver()[0]}".strip()
    if system == "Windows":
        return f"Windows {platform.release()}".strip()
    if system == "Linux":
        try:
            fields = _os_release(os_release.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            fields = {}
        return fields.get("PRETTY_NAME") or fields.get("NAME") or "Linux"
    return system or "an unknown OS"


def _os_release(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip().isidentifier():
            try:
                words = shlex.split(value, posix=True)
            except ValueError:
                continue
            fields[key.strip()] = " ".join(words)
    return fields


def run_argv(shell: str, command: str, env: Mapping[str, str]) -> list[str]:
    """The program line that runs ``command`` with ``shell``: ``$SHELL`` itself when it is that
    shell, else the shell found on ``PATH`` (``bash -c``, ``cmd /c``, ``pwsh -Command``)."""
    configured = env.get("SHELL", "")
    path: str | None = configured if configured and shell_name(configured) == shell else None
    if path is None:
        path = shutil.which(shell, path=env.get("PATH", os.defpath))
    if path is None:
        raise UsageError(f"{shell} is not on PATH to run the command; --shell NAME picks another")
    return [path, *_RUN_FLAGS.get(shell, ("-c",)), command]


def lexer_for(shell: str) -> str:
    return _LEXERS.get(shell, "bash")


def system_prompt(shell: str, os_name: str) -> str:
    """What the model is told: one bare command for this shell and OS, or, asked to explain
    one, a short explanation."""
    return (
        f"You turn requests into shell commands. The user's shell is {shell}, on {os_name}. "
        "When asked for a command, answer with exactly one command line for that shell "
        "(pipes, && and ; are fine) and nothing else: no explanation, no Markdown, no code "
        "fences, no leading $. If the request is unclear, give the most likely command. "
        "Text given before the request is context to use. When asked to explain a command, "
        "say briefly what it does and what each part means, in a few lines of Markdown."
    )


def explain_request(command: str) -> str:
    return f"Explain this command briefly:\n\n{command}"


_FENCE: Final = re.compile(r"^[ \t]*(`{3,}|~{3,})[^\n]*\n(.*?)^[ \t]*\1[ \t]*$", re.M | re.S)
_PROMPT: Final = re.compile(r"^[ \t]*(?:\$|PS>)[ \t]+")


def clean_command(answer: str) -> str:
    """The command in a model's answer: the first fenced block's text when there is one (a
    model adds fences though told not to), a leading ``$ `` taken off each line, and
    surrounding blank space or one pair of backticks removed."""
    text = answer.replace("\r\n", "\n")
    fenced = _FENCE.search(text)
    if fenced:
        text = fenced.group(2)
    else:
        stripped = text.strip()
        if stripped.startswith("```"):  # an opening fence that is never closed
            text = stripped.split("\n", 1)[1] if "\n" in stripped else ""
    text = text.strip()
    if len(text) > 2 and text[0] == text[-1] == "`" and "`" not in text[1:-1]:
        text = text[1:-1].strip()  # `ls -la`, inline
    return "\n".join(_PROMPT.sub("", line, count=1) for line in text.split("\n")).strip()


# -- commands that destroy data ----------------------------------------------------------------

#: Programs that run the command given after their own options (``sudo rm -rf x``).
_WRAPPERS: Final = frozenset(
    ["sudo", "doas", "command", "exec", "nohup", "time", "nice", "ionice", "env", "builtin",
     "busybox", "stdbuf", "timeout", "xargs", "run0", "pkexec", "chroot", "setsid", "taskset"]
)  # fmt: skip
#: Each wrapper's options that take a value (as the next word, or attached: ``-uroot``,
#: ``--user=root``): its short letters, and its long options. The others take none.
_WRAPPER_VALUES: Final[Mapping[str, tuple[str, frozenset[str]]]] = {
    "sudo": ("ugpCDrtUhT", frozenset(["--user", "--group", "--prompt", "--close-from", "--chdir",
                                      "--role", "--type", "--other-user", "--host",
                                      "--command-timeout"])),
    "doas": ("uC", frozenset()),
    "run0": ("ugD", frozenset(["--user", "--group", "--chdir", "--unit", "--property",
                               "--description", "--slice", "--nice", "--setenv", "--machine",
                               "--background"])),
    "pkexec": ("", frozenset(["--user"])),
    "exec": ("a", frozenset()),
    "time": ("fo", frozenset(["--format", "--output"])),
    "nice": ("n", frozenset(["--adjustment"])),
    "ionice": ("cnpPu", frozenset(["--class", "--classdata", "--pid", "--pgid", "--uid"])),
    "env": ("uCS", frozenset(["--unset", "--chdir", "--split-string"])),
    "stdbuf": ("ioe", frozenset(["--input", "--output", "--error"])),
    "timeout": ("sk", frozenset(["--signal", "--kill-after"])),
    "xargs": ("ILnPsdEa", frozenset(["--max-args", "--max-procs", "--max-chars", "--delimiter",
                                     "--arg-file", "--process-slot-var"])),
    "chroot": ("", frozenset(["--userspec", "--groups"])),
}  # fmt: skip
#: Words of the shells' grammar that come before a command (``do rm -rf $f``, fish's ``and``).
_KEYWORDS: Final = frozenset(
    ["do", "then", "else", "elif", "if", "while", "until", "!", "{", "and", "or", "not", "begin"]
)
_ASSIGNMENT: Final = re.compile(r"[A-Za-z_]\w*=.*", re.S)
#: Wrappers whose first plain word is a value, not the command (``timeout 5 rm``).
_WRAPPER_FIRST_VALUE: Final = frozenset(["timeout", "chroot", "taskset"])
_SHELLS: Final = frozenset(["sh", "bash", "zsh", "dash", "ksh", "fish", "mksh", "csh", "tcsh"])
_INTERPRETERS: Final = _SHELLS | frozenset(
    ["python", "python3", "python2", "perl", "ruby", "node", "php", "pwsh", "powershell"]
)
#: The options that give an interpreter its code in the next word (``python -c CODE``).
_CODE_FLAGS: Final = {
    "python": ("-c",), "python3": ("-c",), "python2": ("-c",), "perl": ("-e", "-E"),
    "ruby": ("-e",), "node": ("-e", "-p", "--eval", "--print"), "php": ("-r",),
    "pwsh": ("-c", "-command"), "powershell": ("-c", "-command"),
}  # fmt: skip
_DOWNLOADERS: Final = frozenset(["curl", "wget", "fetch", "http", "https", "aria2c"])
_SQL_CLIENTS: Final = frozenset(
    ["psql", "mysql", "mariadb", "sqlite3", "sqlcmd", "clickhouse-client", "duckdb", "cockroach"]
)
_SQL_DROP: Final = re.compile(r"\b(?:drop\s+(?:table|database|schema)|truncate)\b", re.I)
_SQL_DELETE: Final = re.compile(r"\bdelete\s+from\b", re.I)
_SQL_WHERE: Final = re.compile(r"\bwhere\b", re.I)
_SEPARATORS: Final = frozenset([";", "&", "&&", "||", "|", "|&", "(", ")", "((", "))", "`"])
#: Block devices: disks, partitions, RAID and mapped volumes, by name or by /dev/disk/by-*/;
#: not /dev/null, /dev/zero, a terminal, or a loop device (a file holds what it is written).
_DEVICE: Final = re.compile(
    r"^/dev/(?:sd[a-z]|hd[a-z]|vd[a-z]|xvd[a-z]|nvme\d|mmcblk\d|disk\d|rdisk\d|md\d|md/|dm-\d|"
    r"mapper/(?!control$).|nbd\d|zd\d|rbd\d|bcache\d|sr\d|disk/by-[a-z]+/.)"
)
#: The name starts a word (the look-behind), so a long word is tried once, not at each letter.
_FORK_BOMB: Final = re.compile(r"(?<![\w:.])([\w:.]+)\s*\(\s*\)\s*\{\s*\1\s*\|\s*\1\s*&\s*\}")
_HIDDEN_REASON: Final = (
    "it holds characters that do not show (control or text-direction ones): "
    "what runs is not what you see"
)
_NETWORK_REASON: Final = "it runs a script straight from the network, unread"
#: Characters that show as nothing, or as blank space, beyond those of the Cf, Zl, Zp and Co
#: categories: the soft hyphen, Hangul fillers, variation selectors.
_INVISIBLE: Final = frozenset(
    [0x00AD, 0x115F, 0x1160, 0x3164, 0xFFA0, 0x180E, *range(0x2061, 0x2065),
     *range(0xFE00, 0xFE10), *range(0xE0000, 0xE0080), *range(0xE0100, 0xE01F0)]
)  # fmt: skip


def dangers(command: str) -> list[str]:
    """Why ``command`` may destroy data or the system, one reason per kind, in order; empty
    when nothing is known to be dangerous. Only commands count, not words that are arguments
    or quoted (``echo dd``, ``grep "rm -rf"``); ``sudo``, ``xargs``, ``find -exec``,
    ``sh -c``, ``su -c`` and ``ssh host CMD`` are looked through."""
    reasons: list[str] = []
    if any(_hidden(char) for char in command):
        reasons.append(_HIDDEN_REASON)
    _analyse(command, reasons, depth=0)
    return list(dict.fromkeys(reasons))


def _analyse(command: str, reasons: list[str], *, depth: int) -> None:
    if depth > 3:
        return
    if _FORK_BOMB.search(command):
        reasons.append("a fork bomb: it starts processes until the system stops responding")
    _scan(_tokens(command), reasons, depth=depth)


def _hidden(char: str) -> bool:
    from unicodedata import category

    code = ord(char)
    if code < 0xA0:
        return (code < 0x20 and char not in "\n\t") or code >= 0x7F
    return (
        code in INVISIBLE_IN_CODE
        or code in _INVISIBLE
        or category(char) in ("Cf", "Zl", "Zp", "Co")
    )


def _marked(word: str) -> bool:
    """Whether a command's name holds combining marks (``rm`` is not ``r\u0308m``)."""
    from unicodedata import category

    return any(ord(char) >= 0x300 and category(char) in ("Mn", "Me") for char in word)


def _quote(text: str) -> str:
    """Model text for a reason: characters that do not show spelled ``<U+202E>``."""
    from chatcli.render.sanitize import reveal_in_code

    return "".join(
        f"<U+{ord(char):04X}>" if _hidden(char) or _marked(char) else char
        for char in reveal_in_code(text)
    )


def _tokens(command: str) -> list[str]:
    text = command.replace("\\\n", " ").replace("\n", " ; ").replace("`", " ` ")
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        return list(lexer)
    except ValueError:  # an unclosed quote: words and operators as they stand
        return re.findall(r"[|;&()<>]+|[^\s|;&()<>]+", text)


def _scan(tokens: list[str], reasons: list[str], *, depth: int) -> None:
    """Check each simple command of ``tokens`` (split at ; & && || | and parentheses), noting
    a download piped into an interpreter or SQL that drops data piped into a database client,
    downloads run as code (``bash <(curl ...)``, ``eval $(curl ...)``), and writes to a block
    device."""
    if depth > 3:
        return
    downloading = False  # a download earlier in this pipeline
    dropping = False  # SQL that drops data earlier in this pipeline
    current: list[str] = []
    tokens = [*tokens, ";"]
    for index, token in enumerate(tokens):
        following = tokens[index + 1] if index + 1 < len(tokens) else ""
        if token in ("<(", "(", "`") and _base(following) in _DOWNLOADERS:
            sourced = token == "<(" and len(current) <= 32 and _sources(current)
            substituted = token == "(" and current[-1:] == ["$"] and _runs_code(current[:-1])
            if sourced or substituted or (token == "`" and _runs_code(current)):
                reasons.append(_NETWORK_REASON)
        if token in _SEPARATORS:
            words = _check_simple(current, reasons, depth=depth)
            name = _base(words[0]) if words else ""
            if downloading and name in _INTERPRETERS and _reads_stdin(words):
                reasons.append("it pipes a download into a shell or interpreter: unread code runs")
            if dropping and name in _SQL_CLIENTS:
                reasons.append(_SQL_REASON)
            if token in ("|", "|&"):
                downloading = downloading or name in _DOWNLOADERS
                dropping = dropping or any(_drops_sql(word) for word in words)
            elif name:  # not "(" opening a group in the pipeline
                downloading = dropping = False
            current = []
            continue
        if _is_redirect(token) and _DEVICE.match(following):
            reasons.append(_device(following))
        current.append(token)


_SQL_REASON: Final = "it runs SQL that drops or empties tables or deletes every row"


def _drops_sql(text: str) -> bool:
    if _SQL_DROP.search(text):
        return True
    return any(
        _SQL_DELETE.search(statement) and not _SQL_WHERE.search(statement)
        for statement in text.split(";")
    )


def _is_redirect(token: str) -> bool:
    return bool(token) and set(token) <= set("<>&|") and ">" in token


def _plain(words: list[str]) -> list[str]:
    """``words`` without redirection operators (``>``, ``<``, ``2>&1``)."""
    return [w for w in words if not (w and set(w) <= set("<>&|"))]


def _sources(words: list[str]) -> bool:
    """Whether a process substitution after ``words`` is run as code: ``bash <(...)``,
    ``source <(...)``, not ``diff a <(...)`` nor ``python app.py <(...)``."""
    words = _plain(_unwrap(words)[0])
    if not words:
        return False
    name = _base(words[0])
    if name in ("source", "."):
        return True
    return name in _INTERPRETERS and all(w.startswith("-") for w in words[1:])


def _runs_code(words: list[str]) -> bool:
    """Whether a command substitution after ``words`` is run as code: ``eval $(...)``,
    ``bash -c $(...)``, ``python -c $(...)``."""
    words = _plain(_unwrap(words)[0])
    if not words:
        return False
    name = _base(words[0])
    return name == "eval" or (len(words) > 1 and _is_code_flag(name, words[-1]))


def _is_code_flag(name: str, word: str) -> bool:
    if name in _SHELLS:
        return word == "--command" or (
            word[:1] == "-" and word[1:].isalpha() and "c" in word and "-" not in word[1:]
        )
    return word.lower() in _CODE_FLAGS.get(name, ())


def _from_network(word: str) -> bool:
    """Whether ``word`` is the output of a download: ``$(curl ...)`` or `` `curl ...` ``."""
    word = word.strip()
    if word.startswith("$("):
        inner = word[2:]
    elif word.startswith("`"):
        inner = word[1:]
    else:
        return False
    words = _unwrap(_tokens(inner)[:8])[0]
    return bool(words) and _base(words[0]) in _DOWNLOADERS


def _reads_stdin(words: list[str]) -> bool:
    """Whether an interpreter's command line leaves it reading its code from stdin (no
    script file named, no ``-c``)."""
    for word in words[1:]:
        if word == "-" or word == "--":
            return True
        if not word.startswith("-"):
            return False
        if _is_code_flag(_base(words[0]), word):
            return False
    return True


def _unwrap(words: list[str]) -> tuple[list[str], set[str]]:
    """The command under ``sudo -u x``, ``env A=1``, ``xargs -0`` and the like, and the
    wrappers it is under."""
    words = list(words)
    at = 0
    seen: set[str] = set()
    splits = 0  # env -S strings taken apart: a few, so that nesting them stays cheap
    while at < len(words):
        while at < len(words) and (words[at] in _KEYWORDS or _ASSIGNMENT.fullmatch(words[at])):
            at += 1  # a keyword, or VAR=value, before a command
        if at >= len(words):
            break
        name = _base(words[at])
        if name not in _WRAPPERS:
            break
        seen.add(name)
        at += 1
        letters, longs = _WRAPPER_VALUES.get(name, ("", frozenset()))
        skip_value = name in _WRAPPER_FIRST_VALUE
        while at < len(words):
            word = words[at]
            if word == "--":
                at += 1
                break
            if word.startswith("--"):
                at += 1
                option, equals, value = word.partition("=")
                if not equals and option in longs and at < len(words):
                    value = words[at]
                    at += 1
                if name == "env" and option == "--split-string" and splits < 3:
                    words[at:at] = _tokens(value)
                    splits += 1
                continue
            if word.startswith("-") and len(word) > 1:
                at += 1
                for place, letter in enumerate(word[1:], 2):
                    if name == "command" and letter in "vV":
                        return [], seen  # command -v rm: says what rm is, runs nothing
                    if letter in letters:
                        value = word[place:]
                        if not value and at < len(words):
                            value = words[at]
                            at += 1
                        if name == "env" and letter == "S" and splits < 3:
                            words[at:at] = _tokens(value)
                            splits += 1
                        break
                continue
            if _ASSIGNMENT.fullmatch(word) and name == "env":
                at += 1
                continue
            if skip_value:
                at += 1
                skip_value = False
                continue
            break
    return words[at:], seen


def _base(word: str) -> str:
    return word.lstrip("\\").rsplit("/", 1)[-1]


def _short_flags(words: list[str]) -> tuple[set[str], set[str]]:
    """The short option letters and the long options among ``words`` (up to ``--``)."""
    letters: set[str] = set()
    longs: set[str] = set()
    for word in words:
        if word == "--":
            break
        if word.startswith("--"):
            longs.add(word.split("=", 1)[0])
        elif word.startswith("-") and len(word) > 1 and word[1:].isalpha():
            letters.update(word[1:])
    return letters, longs


def _positional(
    args: list[str], values: str = "", longs: frozenset[str] = frozenset(), *, last: bool = False
) -> list[str]:
    """The words of ``args`` that are not options nor their values; with ``last``, the first
    such word and every word after it (``ssh -p 22 host rm -rf /``)."""
    found: list[str] = []
    at = 0
    while at < len(args):
        word = args[at]
        at += 1
        if last and found:
            found.extend(args[at - 1 :])
            break
        if word == "--":
            found.extend(args[at:])
            break
        if word.startswith("--"):
            if "=" not in word and word in longs:
                at += 1
        elif word.startswith("-") and len(word) > 1:
            for place, letter in enumerate(word[1:], 2):
                if letter in values:
                    at += 0 if word[place:] else 1
                    break
        else:
            found.append(word)
    return found


def _option_value(args: list[str], short: str, longs: tuple[str, ...]) -> str | None:
    """The value of ``-c VALUE`` (also ``-lc VALUE``, ``--command=VALUE``) among ``args``."""
    for at, word in enumerate(args):
        if word == "--":
            break
        option, equals, value = word.partition("=")
        if option in longs:
            return value if equals else (args[at + 1] if at + 1 < len(args) else None)
        if word[:1] == "-" and word[1:2] != "-" and short in word:
            rest = word[word.index(short) + 1 :]
            return rest or (args[at + 1] if at + 1 < len(args) else None)
    return None


def _shell_script(args: list[str]) -> str | None:
    """The command string of ``bash -c CMD`` (also ``-lc``, ``-ec``, ``-o pipefail -c``)."""
    at = 0
    while at < len(args):
        word = args[at]
        at += 1
        if word in ("-o", "+o", "-O", "+O"):
            at += 1
        elif word == "--command" or word.startswith("--command="):
            if "=" in word:
                return word.split("=", 1)[1]
            return args[at] if at < len(args) else None
        elif word[:1] in "-+" and word[1:].isalpha() and "c" in word[1:]:
            while at < len(args) and args[at][:1] in "-+" and args[at] not in ("-", "--"):
                at += 1
            if at < len(args) and args[at] == "--":
                at += 1
            return args[at] if at < len(args) else None
        elif word == "--" or not word.startswith(("-", "+")):
            return None
    return None


_SSH_VALUES: Final = "BbcDEeFIiJLlmOoPpQRSWw"


def _check_simple(
    words: list[str], reasons: list[str], *, depth: int, listed: bool = False
) -> list[str]:
    """Note what is dangerous in one simple command; returns the command, without the
    wrappers before it and its redirections. ``listed``: the command is run on a list of
    files (``find -exec``)."""
    if depth > 3:
        return []
    if words and _marked(words[0]):
        reasons.append(_HIDDEN_REASON)
    unwrapped, wrappers = _unwrap(words)
    words = [w for w in unwrapped if not _is_redirect(w)]
    if not words:
        return []
    if _marked(words[0]):
        reasons.append(_HIDDEN_REASON)
    listed = listed or "xargs" in wrappers
    name, args = _base(words[0]), words[1:]
    letters, longs = _short_flags(args)
    if {"--help", "--version"} & longs:
        return words  # it prints and does nothing else
    positional = _positional(args)
    if name == "rm" and ({"r", "R"} & letters or "--recursive" in longs):
        reasons.append("rm -r deletes a whole tree of files, with no undo")
    elif name in ("rm", "shred", "unlink") and listed:
        reasons.append(f"{name} run on a list (xargs, find -exec) deletes every file it names")
    elif name == "dd":
        reasons.append("dd writes raw bytes: a wrong of= overwrites a disk")
    elif name.startswith("mkfs") or name in ("mke2fs", "mkswap", "mkdosfs", "mkntfs"):
        reasons.append(f"{_quote(name)} makes a new file system, erasing what the device holds")
    elif name == "cryptsetup" and {"luksformat", "erase", "lukserase"} & {
        w.lower() for w in positional[:1]
    }:
        reasons.append("cryptsetup luksFormat/erase destroys the volume's keys and its data")
    elif name in ("chmod", "chown", "chgrp") and ("R" in letters or "--recursive" in longs):
        reasons.append(f"{name} -R changes a whole tree of files at once")
    elif name == "shred":
        reasons.append("shred overwrites files so that they cannot be recovered")
    elif name == "wipefs" and ({"a", "o"} & letters or {"--all", "--offset"} & longs):
        reasons.append("wipefs erases file system signatures: the data becomes unreachable")
    elif name == "truncate":
        reasons.append("truncate cuts files to a size: what was past it is lost")
    elif name in ("fdisk", "sfdisk", "parted", "gdisk", "sgdisk", "cgdisk", "blkdiscard"):
        if not (
            {"l", "p", "d"} & letters
            or {"--list", "--print", "--dump"} & longs
            or (name == "parted" and "print" in positional)
        ):
            reasons.append(f"{name} changes a disk's partitions or discards its data")
    elif name == "rsync" and any(
        w.startswith("--delete") or w == "--remove-source-files" for w in longs
    ):
        reasons.append("rsync --delete deletes files at the destination that the source lacks")
    elif name == "mv" and positional and positional[-1] == "/dev/null" and len(positional) > 1:
        reasons.append("mv to /dev/null throws away what is moved (and, as root, /dev/null)")
    elif name == "crontab" and "r" in letters:
        reasons.append("crontab -r deletes every cron job, with no undo")
    elif name == "kubectl":
        kube = _positional(args, "nlsc", frozenset(["--namespace", "--context", "--kubeconfig",
                                                   "--cluster", "--user", "--server"]))  # fmt: skip
        if kube[:1] == ["delete"]:
            reasons.append("kubectl delete removes cluster resources and what they hold")
    elif name in ("docker", "podman"):
        _check_docker(name, args, reasons)
    elif name in _SQL_CLIENTS and any(_drops_sql(word) for word in args):
        reasons.append(_SQL_REASON)
    elif name == "git" and args:
        _check_git(args, reasons)
    elif name == "find":
        if "-delete" in args:
            reasons.append("find -delete deletes every file it matches")
        at = 0
        while at < len(args):
            if args[at] in ("-exec", "-execdir", "-ok", "-okdir"):
                end = next(
                    (i for i in range(at + 1, len(args)) if args[i] in (";", "+")), len(args)
                )
                _check_simple(args[at + 1 : end], reasons, depth=depth + 1, listed=True)
                at = end  # each word is looked at once, however many -exec there are
            at += 1
    elif name in _SHELLS:
        script = _shell_script(args)
        if script is not None:
            if _from_network(script):
                reasons.append(_NETWORK_REASON)
            _analyse(script, reasons, depth=depth + 1)
    elif name in _CODE_FLAGS:
        code: str | None = None
        for at, word in enumerate(args[:-1]):
            if _is_code_flag(name, word):
                code = args[at + 1]
                break
        if code is not None and _from_network(code):
            reasons.append(_NETWORK_REASON)
    elif name == "eval":
        if any(_from_network(word) for word in args):
            reasons.append(_NETWORK_REASON)
        _analyse(" ".join(args), reasons, depth=depth + 1)
    elif name == "su":
        script = _option_value(args, "c", ("--command", "--session-command"))
        if script is not None:
            _analyse(script, reasons, depth=depth + 1)
    elif name == "ssh":
        remote = _positional(args, _SSH_VALUES, last=True)[1:]
        if remote:
            found: list[str] = []
            _analyse(" ".join(remote), found, depth=depth + 1)
            reasons.extend(f"on the remote host: {reason}" for reason in found)
    for word in args:
        if word.startswith("of=") and _DEVICE.match(word[3:]):
            reasons.append(_device(word[3:]))
        elif name == "tee" and _DEVICE.match(word):
            reasons.append(_device(word))
    target = positional[-1] if positional else ""
    if name in ("cp", "mv", "install", "ddrescue") and _DEVICE.match(target):
        reasons.append(_device(target))
    return words


def _check_docker(name: str, args: list[str], reasons: list[str]) -> None:
    words = _positional(args, "H", frozenset(["--host", "--context", "--config", "--log-level"]))
    letters, longs = _short_flags(args)
    if words[:2] in (["system", "prune"], ["volume", "prune"], ["container", "prune"]):
        reasons.append(f"{name} {words[0]} prune deletes containers, volumes or images for good")
    elif words[:2] in (["volume", "rm"], ["volume", "remove"]):
        reasons.append(f"{name} volume rm deletes volumes and the data in them")
    elif words[:1] == ["rm"] and ({"f", "v"} & letters or {"--force", "--volumes"} & longs):
        reasons.append(f"{name} rm -f/-v removes running containers or their volumes")
    elif words[:2] == ["compose", "down"] and ("v" in letters or "--volumes" in longs):
        reasons.append(f"{name} compose down -v deletes the project's volumes")


def _check_git(args: list[str], reasons: list[str]) -> None:
    at = 0
    while at < len(args) and args[at].startswith("-"):  # git -C repo, git -c key=value
        at += 2 if args[at] in ("-C", "-c") else 1
    if at >= len(args):
        return
    sub, rest = args[at], args[at + 1 :]
    letters, longs = _short_flags(rest)
    paths = _positional(rest)
    if sub == "push" and (
        "f" in letters
        or {"--force", "--force-with-lease", "--mirror", "--delete"} & longs
        or any(w.startswith("+") for w in rest)
    ):
        reasons.append("git push --force replaces the remote's history")
    elif sub == "reset" and "--hard" in longs:
        reasons.append("git reset --hard discards uncommitted changes")
    elif sub == "clean" and ("f" in letters or "--force" in longs):
        reasons.append("git clean -f deletes untracked files")
    elif sub == "checkout" and (
        "." in paths or "--" in rest or {"f"} & letters or "--force" in longs
    ):
        reasons.append("git checkout -- PATH discards uncommitted changes")
    elif sub == "restore" and paths and not _staged_only(letters, longs):
        reasons.append("git restore PATH discards uncommitted changes")
    elif sub == "branch" and ("D" in letters or ("--delete" in longs and "--force" in longs)):
        reasons.append("git branch -D deletes a branch even when it is not merged")
    elif sub == "stash" and paths[:1] in (["clear"], ["drop"]):
        reasons.append(f"git stash {paths[0]} deletes stashed changes")


def _staged_only(letters: set[str], longs: set[str]) -> bool:
    """``git restore --staged`` without ``--worktree``: it unstages, the files keep their text."""
    staged = "S" in letters or "--staged" in longs
    return staged and not ("W" in letters or "--worktree" in longs)


def _device(path: str) -> str:
    return f"it writes to the device {_quote(path)}: a whole disk or partition"


# -- the key bindings of --install --------------------------------------------------------------

_BASH: Final = """\
# chatcli cmd: Ctrl-L turns the text on the command line into a shell command, in place
# (it does not run it). This replaces Ctrl-L's "clear the screen" (Ctrl-X Ctrl-L is a
# free key; change "\\C-l" below to bind that instead).
_chatcli_cmd() {
    [[ -n "$READLINE_LINE" ]] || return 0
    local command
    command=$(CHATCLI -q "$READLINE_LINE" </dev/null) || return 0
    [[ -n "$command" ]] || return 0
    READLINE_LINE=$command
    READLINE_POINT=${#READLINE_LINE}
}
bind -x '"\\C-l": _chatcli_cmd'
"""

_ZSH: Final = """\
# chatcli cmd: Ctrl-L turns the text on the command line into a shell command, in place
# (it does not run it). This replaces Ctrl-L's "clear the screen" (change '^L' below to
# bind another key, '^X^L' say).
_chatcli_cmd() {
    [[ -n $BUFFER ]] || return 0
    local command
    zle -I
    command=$(CHATCLI -q "$BUFFER" </dev/null)
    if [[ $? -eq 0 && -n $command ]]; then
        BUFFER=$command
        CURSOR=${#BUFFER}
    fi
}
zle -N _chatcli_cmd
bindkey '^L' _chatcli_cmd
"""

_FISH: Final = """\
# chatcli cmd: Ctrl-L turns the text on the command line into a shell command, in place
# (it does not run it). This replaces Ctrl-L's "clear the screen" (change \\cl below to
# bind another key, \\cx\\cl say).
function _chatcli_cmd
    set -l line (commandline | string collect)
    if test -n "$line"
        echo  # messages (a warning, an error) start on a line of their own
        set -l command (CHATCLI -q "$line" </dev/null | string collect)
        if test $pipestatus[1] -eq 0 -a -n "$command"
            commandline -r -- $command
            commandline -f end-of-buffer
        end
    end
    commandline -f repaint
end
bind \\cl _chatcli_cmd
"""


def install_snippet(shell: str, program: str = "chatcli") -> str:
    """The lines for ``shell``'s rc file that bind Ctrl-L to :data:`program` ``cmd
    --no-interaction`` on the command line's text (kept as it was when chatcli fails)."""
    snippets = {"bash": _BASH, "zsh": _ZSH, "fish": _FISH}
    if shell not in snippets:
        raise UsageError(f"--install {shell}: give one of {', '.join(INSTALL_SHELLS)}")
    # Keys typed while chatcli works (an Enter) are dropped: the shell would read them once
    # the line holds the command, and run it unseen.
    call = f"{program} cmd --no-interaction --discard-typeahead --"
    return snippets[shell].replace("CHATCLI -q", call)


def program_path(argv0: str, env: Mapping[str, str]) -> str:
    """How the snippet calls chatcli: ``chatcli`` when that is the one on ``PATH``, else the
    path of the one running (quoted for a shell)."""
    running = Path(argv0)
    on_path = shutil.which("chatcli", path=env.get("PATH", os.defpath))
    try:
        if on_path is not None and (
            running.name != "chatcli" or Path(on_path).resolve() == running.resolve()
        ):
            return "chatcli"
    except OSError:
        pass
    if running.name == "chatcli" and running.is_absolute():
        return shlex.quote(str(running))
    return "chatcli"


# -- the menu on a terminal ---------------------------------------------------------------------

#: The menu's answers, by key.
KEYS: Final = {"r": "run", "e": "edit", "c": "copy", "x": "explain", "q": "quit"}
MENU: Final = "[r]un  [e]dit  [c]opy  e[x]plain  [q]uit "


def read_key(fd: int) -> str:
    """One key from the terminal ``fd``, without waiting for Enter: a menu letter (lower
    case), ``"quit"`` for Esc, Ctrl-D or end of input; other keys are passed over. Ctrl-C is
    :class:`KeyboardInterrupt`, as everywhere."""
    from chatcli.render.terminal import keys_one_at_a_time

    # Keys typed before the question was shown (an r while the model answered, or while an
    # explanation streamed) are dropped, never taken for the answer.
    with keys_one_at_a_time(fd, quit_key=False):
        while True:
            data = os.read(fd, 64)
            if not data or data == b"\x04" or data == b"\x1b":
                return "quit"
            key = data[:1].decode("ascii", "replace").lower()
            if len(data) == 1 and key in KEYS:
                return key
            # Anything else (Enter, an arrow key's sequence, a paste) is not an answer.


def run_command(argv: Sequence[str], env: Mapping[str, str], stdin: int | None = None) -> int:
    """Run ``argv`` on chatcli's terminal and wait; its exit code (128 + N when signal N
    ended it). Ctrl-C meanwhile is the command's to handle: chatcli waits on."""
    import signal
    import subprocess

    # A handler, not SIG_IGN: an ignored signal would stay ignored in the command too.
    previous = signal.signal(signal.SIGINT, lambda *_: None)
    try:
        process = subprocess.Popen(list(argv), env=dict(env), stdin=stdin)
        code = process.wait()
    except OSError as exc:
        raise ChatcliError(f"could not run {argv[0]}: {exc.strerror or exc}") from None
    except ValueError:  # a NUL in the command: no program can be given it
        raise ChatcliError("the command holds a NUL character; nothing was run") from None
    finally:
        signal.signal(signal.SIGINT, previous)
    return 128 - code if code < 0 else code


@dataclass
class CommandMenu:
    """The command shown, and the question asked until the user answers.

    The work that is not the terminal's comes in as callables: ``explain`` (ask the model and
    render its answer), ``edit`` (a line editor prefilled with the command: its new text, or
    ``None`` when given up), ``copy`` (to the clipboard: how it went) and ``run`` (the exit
    code), so that each stays small and the menu's rules stay in one place.
    """

    console: Console
    out: IO[str]
    keys_fd: int
    shell: str
    explain: Callable[[str], None]
    edit: Callable[[str], str | None]
    copy: Callable[[str], str]
    run: Callable[[str], int]
    #: Reasons the first command is doubtful beyond its text (an answer cut short).
    notes: Sequence[str] = ()

    def show(self, command: str, notes: Sequence[str] = ()) -> None:
        """The command, highlighted and made safe, then in red why it may destroy data."""
        from rich.syntax import Syntax
        from rich.text import Text

        from chatcli.render.sanitize import reveal_in_code

        shown = reveal_in_code(command)  # the console sanitizes control characters
        # The answers' code theme, background and all: readable on dark and light terminals.
        self.console.print(Syntax(shown, lexer_for(self.shell), theme="monokai", word_wrap=True))
        for reason in [*notes, *dangers(command)]:
            self.console.print(Text(f"danger: {reason}", style="bold red"))

    def ask(self) -> str:
        self.out.write(MENU)
        self.out.flush()
        key = read_key(self.keys_fd)
        answer = KEYS.get(key, "quit")
        self.out.write(answer + "\n")
        self.out.flush()
        return answer

    def loop(self, command: str) -> int:
        """Show ``command`` and ask until it is run, copied or given up; the exit code."""
        self.show(command, self.notes)
        while True:
            try:
                answer = self.ask()
            except KeyboardInterrupt:
                self.out.write("\n")
                self.out.flush()
                return EXIT_INTERRUPTED
            if answer == "quit":
                return EXIT_OK
            if answer == "run":
                return self.run(command)
            if answer == "copy":
                try:
                    how = self.copy(command)
                except ChatcliError as exc:
                    self.out.write(f"not copied: {exc}\n")
                    self.out.flush()
                    continue
                self.out.write(f"copied to {how}\n")
                self.out.flush()
                return EXIT_OK
            if answer == "explain":
                self.explain(command)
                self.show(command)
            elif answer == "edit":
                edited = self.edit(command)
                if edited is not None and edited.strip():
                    command = edited.strip()
                self.show(command)


@contextmanager
def terminal_keys(
    stdin: IO[str] | None, stdin_isatty: bool, *, wanted: bool = True
) -> Iterator[int | None]:
    """The file descriptor of the terminal to read keys from: stdin's, or ``/dev/tty`` when
    stdin is piped in (``None``: there is no terminal, or keys are not ``wanted``)."""
    if not wanted:
        yield None
        return
    own: int | None = None
    if stdin is not None and stdin_isatty:
        with contextlib.suppress(AttributeError, OSError, ValueError):
            own = stdin.fileno()
    if own is not None:
        yield own  # (outside any try: an error in the caller's block is the caller's)
        return
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        yield None
        return
    try:
        yield fd
    finally:
        os.close(fd)


def drop_typed_keys() -> None:
    """Drop the keys typed on the controlling terminal and not read yet (nothing when there
    is no terminal)."""
    import termios

    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return
    try:
        termios.tcflush(fd, termios.TCIFLUSH)
    except termios.error:
        pass
    finally:
        os.close(fd)


def edit_line(command: str, keys_fd: int, own_stdin: bool) -> str | None:
    """A prompt_toolkit line holding ``command`` to edit; its text, or ``None`` on Ctrl-C or
    Ctrl-D."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.input import create_input

    tty = None if own_stdin else os.fdopen(os.dup(keys_fd), "r", closefd=True)
    session: PromptSession[str] = PromptSession(input=create_input(tty) if tty else None)
    try:
        return session.prompt("edit> ", default=command)
    except (EOFError, KeyboardInterrupt):
        return None
    finally:
        if tty is not None:
            tty.close()


# -- the command -------------------------------------------------------------------------------


def command_for(
    ctx: AppContext,
    chat: ChatOptions,
    message: str,
    *,
    shell: str | None = None,
    os_name: str | None = None,
    interactive: bool,
    hold: Callable[[bool], AbstractContextManager[None]],
    discard_typeahead: bool = False,
) -> int:
    """``chatcli cmd``: ask for a command for ``message``; on a terminal (``interactive``)
    show it and ask what to do, else print it alone. The exit code: the command's when it
    ran, else chatcli's."""
    from chatcli.chat import open_conversation
    from chatcli.clikit import run_async, say
    from chatcli.render import NullRenderer, make_console
    from chatcli.turn import CUT

    if chat.template is not None or chat.variables:
        raise UsageError("-t and --var do not go with cmd: it has its own system prompt")
    name = detect_shell(ctx.env, shell)
    prompt = system_prompt(name, os_name or detect_os())
    if chat.system:
        prompt += "\n\n" + chat.system
    # A command is a throwaway: kept only in a session the user names (-S) or continues (-c).
    keep = chat.save and (chat.session is not None or chat.continue_last)
    conversation = open_conversation(
        ctx,
        replace(chat, system=None, save=keep),
        notice=lambda text: say(ctx, text),
        tools=False,  # the answer is the command: no rounds of tool calls around it
    )
    # For these questions only: a continued session keeps its own system prompt and template.
    conversation.system, conversation.template = prompt, None
    conversation.saves_later = interactive  # an explanation may follow
    with hold(interactive), _waiting(ctx, interactive):
        run_async(conversation.send(message, NullRenderer()))
    turn = conversation.last_turn
    command = clean_command(turn.text if turn is not None else "")
    if not command:
        raise ChatcliError("the model gave no command; ask again in other words")
    notes = []
    if turn is not None and turn.status in CUT:
        notes.append("the answer was cut short: the command may be incomplete")
    with terminal_keys(ctx.stdin, ctx.stdin_isatty, wanted=interactive) as keys_fd:
        if keys_fd is None:
            for reason in [*notes, *dangers(command)]:
                say(ctx, f"warning: {reason}")
            if discard_typeahead:
                drop_typed_keys()
            ctx.stdout.write(command + "\n")
            ctx.stdout.flush()
            return EXIT_CUT if notes else EXIT_OK
        own_stdin = ctx.stdin_isatty

        def explain(command: str) -> None:
            from chatcli.render import choose

            renderer = choose(
                ctx.stdout,
                is_terminal=True,
                raw=False,
                markdown=False,
                json=False,
                env=ctx.env,
                reasoning=ctx.settings.reasoning or "collapse",
            )
            try:
                with hold(renderer.live):
                    run_async(conversation.send(explain_request(command), renderer))
            except KeyboardInterrupt:
                say(ctx, "explanation stopped")
            except ChatcliError as exc:
                say(ctx, str(exc))

        def copy(command: str) -> str:
            from chatcli.clipboard import copy, terminal_writer

            return copy(command, ctx.env, terminal_writer(ctx.stdout))

        def run(command: str) -> int:
            argv = run_argv(name, command, ctx.env)
            return run_command(argv, ctx.env, stdin=None if own_stdin else keys_fd)

        menu = CommandMenu(
            console=make_console(ctx.stdout, env=ctx.env),
            out=ctx.stdout,
            keys_fd=keys_fd,
            shell=name,
            explain=explain,
            edit=lambda command: edit_line(command, keys_fd, own_stdin),
            copy=copy,
            run=run,
            notes=notes,
        )
        return menu.loop(command)


@contextmanager
def _waiting(ctx: AppContext, show: bool) -> Iterator[None]:
    """A spinner on stderr while the model thinks (on a terminal)."""
    if not show or not ctx.stderr_isatty:
        yield
        return
    from chatcli.render import make_console

    with make_console(ctx.stderr, env=ctx.env).status("asking for a command", spinner="dots"):
        yield


__all__ = [
    "INSTALL_SHELLS",
    "KEYS",
    "MENU",
    "CommandMenu",
    "clean_command",
    "command_for",
    "dangers",
    "detect_os",
    "detect_shell",
    "edit_line",
    "explain_request",
    "install_snippet",
    "lexer_for",
    "program_path",
    "read_key",
    "run_argv",
    "run_command",
    "system_prompt",
    "terminal_keys",
]
