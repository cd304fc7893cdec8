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
     "busybox", "stdbuf", "timeout", "xargs", "run0", "pkexec"]
)  # fmt: skip
#: The options of those wrappers that take a value as the next word.
_WRAPPER_VALUES: Final = frozenset(
    ["-u", "-g", "-p", "-C", "-D", "-r", "-t", "-U", "-h", "-n", "-c", "-s", "-k", "-I", "-L",
     "-P", "-d", "-E", "-a", "-i", "-o", "-e"]
)  # fmt: skip
#: Words of the shells' grammar that come before a command (``do rm -rf $f``, fish's ``and``).
_KEYWORDS: Final = frozenset(
    ["do", "then", "else", "elif", "if", "while", "until", "!", "{", "and", "or", "not", "begin"]
)
_ASSIGNMENT: Final = re.compile(r"[A-Za-z_]\w*=.*", re.S)
#: Wrappers whose first plain word is a value, not the command (``timeout 5 rm``).
_WRAPPER_FIRST_VALUE: Final = frozenset(["timeout"])
_SHELLS: Final = frozenset(["sh", "bash", "zsh", "dash", "ksh", "fish", "mksh", "csh", "tcsh"])
_INTERPRETERS: Final = _SHELLS | frozenset(
    ["python", "python3", "python2", "perl", "ruby", "node", "php", "pwsh", "powershell"]
)
_DOWNLOADERS: Final = frozenset(["curl", "wget", "fetch", "http", "https", "aria2c"])
_SEPARATORS: Final = frozenset([";", "&", "&&", "||", "|", "|&", "(", ")", "((", "))", "`"])
#: Block devices: disks and partitions, not /dev/null, /dev/zero or a terminal.
_DEVICE: Final = re.compile(
    r"^/dev/(sd[a-z]|hd[a-z]|vd[a-z]|xvd[a-z]|nvme\d|mmcblk\d|disk\d|rdisk\d|md\d|dm-\d|"
    r"mapper/|loop\d|sr\d|by-(id|uuid|label|path)/)"
)
_FORK_BOMB: Final = re.compile(r"([\w:.]+)\s*\(\s*\)\s*\{\s*\1\s*\|\s*\1\s*&\s*\}")
_SHELL_FROM_NETWORK: Final = re.compile(
    r"\b(?:ba|z|da|k|fi)?sh\b[^|;&]*(?:<\(|\$\(|`)\s*(?:curl|wget)\b"
)


def dangers(command: str) -> list[str]:
    """Why ``command`` may destroy data or the system, one reason per kind, in order; empty
    when nothing is known to be dangerous. Only commands count, not words that are arguments
    or quoted (``echo dd``, ``grep "rm -rf"``); ``sudo``, ``xargs``, ``find -exec`` and
    ``sh -c`` are looked through."""
    reasons: list[str] = []
    if any(_hidden(char) for char in command):
        reasons.append(
            "it holds characters that do not show (control or text-direction ones): "
            "what runs is not what you see"
        )
    if _FORK_BOMB.search(command):
        reasons.append("a fork bomb: it starts processes until the system stops responding")
    if _SHELL_FROM_NETWORK.search(command):
        reasons.append("it runs a script straight from the network, unread")
    _scan(_tokens(command), reasons, depth=0)
    return list(dict.fromkeys(reasons))


def _hidden(char: str) -> bool:
    code = ord(char)
    return (code < 0x20 and char not in "\n\t") or 0x7F <= code < 0xA0 or code in INVISIBLE_IN_CODE


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
    a download piped into an interpreter, and writes to a block device."""
    if depth > 3:
        return
    downloading = False  # a download earlier in this pipeline
    current: list[str] = []
    for index, token in enumerate([*tokens, ";"]):
        if token in _SEPARATORS:
            name = _check_simple(current, reasons, depth=depth)
            if downloading and name in _INTERPRETERS:
                reasons.append("it pipes a download into a shell or interpreter: unread code runs")
            if token in ("|", "|&"):
                downloading = downloading or name in _DOWNLOADERS
            elif name:  # not "(" opening a group in the pipeline
                downloading = False
            current = []
            continue
        if _is_redirect(token) and index + 1 < len(tokens) and _DEVICE.match(tokens[index + 1]):
            reasons.append(_device(tokens[index + 1]))
        current.append(token)


def _is_redirect(token: str) -> bool:
    return bool(token) and set(token) <= set("<>&|") and ">" in token


def _unwrap(words: list[str]) -> list[str]:
    """The command under ``sudo -u x``, ``env A=1``, ``xargs -0`` and the like."""
    words = list(words)
    while words:
        while words and (words[0] in _KEYWORDS or _ASSIGNMENT.fullmatch(words[0])):
            words.pop(0)  # a keyword, or VAR=value, before a command
        if not words:
            break
        name = _base(words[0])
        if name not in _WRAPPERS:
            break
        words.pop(0)
        skip_value = name in _WRAPPER_FIRST_VALUE
        while words:
            word = words[0]
            if word == "--":
                words.pop(0)
                break
            if word.startswith("-") and len(word) > 1:
                words.pop(0)
                if word in _WRAPPER_VALUES and words and name not in ("env", "nohup", "time"):
                    words.pop(0)
                continue
            if _ASSIGNMENT.fullmatch(word) and name == "env":
                words.pop(0)
                continue
            if skip_value:
                words.pop(0)
                skip_value = False
                continue
            break
    return words


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


def _check_simple(words: list[str], reasons: list[str], *, depth: int) -> str:
    """Note what is dangerous in one simple command; returns its program's name."""
    words = [w for w in _unwrap(words) if not _is_redirect(w)]
    if not words:
        return ""
    name, args = _base(words[0]), words[1:]
    letters, longs = _short_flags(args)
    if name == "rm" and ({"r", "R"} & letters or "--recursive" in longs):
        reasons.append("rm -r deletes a whole tree of files, with no undo")
    elif name == "dd":
        reasons.append("dd writes raw bytes: a wrong of= overwrites a disk")
    elif name.startswith("mkfs"):
        reasons.append(f"{name} makes a new file system, erasing what the device holds")
    elif name in ("chmod", "chown", "chgrp") and ("R" in letters or "--recursive" in longs):
        reasons.append(f"{name} -R changes a whole tree of files at once")
    elif name == "shred":
        reasons.append("shred overwrites files so that they cannot be recovered")
    elif name == "wipefs":
        reasons.append("wipefs erases file system signatures: the data becomes unreachable")
    elif name == "truncate":
        reasons.append("truncate cuts files to a size: what was past it is lost")
    elif name in ("fdisk", "sfdisk", "parted", "gdisk", "sgdisk", "blkdiscard"):
        reasons.append(f"{name} changes a disk's partitions or discards its data")
    elif name == "git" and args:
        sub, rest = args[0], args[1:]
        sub_letters, sub_longs = _short_flags(rest)
        if sub == "push" and (
            "f" in sub_letters
            or {"--force", "--force-with-lease", "--mirror", "--delete"} & sub_longs
            or any(w.startswith("+") for w in rest)
        ):
            reasons.append("git push --force replaces the remote's history")
        elif sub == "reset" and "--hard" in sub_longs:
            reasons.append("git reset --hard discards uncommitted changes")
        elif sub == "clean" and ("f" in sub_letters or "--force" in sub_longs):
            reasons.append("git clean -f deletes untracked files")
        elif sub in ("checkout", "restore") and rest and rest[-1] == "." and "--" in rest:
            reasons.append(f"git {sub} -- . discards uncommitted changes")
    elif name == "find":
        if "-delete" in args:
            reasons.append("find -delete deletes every file it matches")
        for at, word in enumerate(args):
            if word in ("-exec", "-execdir", "-ok", "-okdir"):
                end = next(
                    (i for i in range(at + 1, len(args)) if args[i] in (";", "+")), len(args)
                )
                _check_simple(args[at + 1 : end], reasons, depth=depth + 1)
    elif name in _SHELLS and "-c" in args:
        script = args[args.index("-c") + 1 :]
        if script:
            _scan(_tokens(script[0]), reasons, depth=depth + 1)
    elif name == "eval":
        _scan(_tokens(" ".join(args)), reasons, depth=depth + 1)
    for word in args:
        if word.startswith("of=") and _DEVICE.match(word[3:]):
            reasons.append(_device(word[3:]))
        elif name == "tee" and _DEVICE.match(word):
            reasons.append(_device(word))
    return name


def _device(path: str) -> str:
    return f"it writes to the device {path}: a whole disk or partition"


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
    call = f"{program} cmd --no-interaction --"
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
    import termios

    from chatcli.render.terminal import SuspendGuard

    saved = termios.tcgetattr(fd)
    mode = termios.tcgetattr(fd)
    mode[3] &= ~(termios.ICANON | termios.ECHO)  # keys one at a time, unechoed; ISIG kept
    mode[6][termios.VMIN], mode[6][termios.VTIME] = 1, 0
    termios.tcsetattr(fd, termios.TCSANOW, mode)
    # Ctrl-Z: the shell gets its terminal back as it was; fg reads keys one at a time again.
    guard = SuspendGuard(
        lambda: termios.tcsetattr(fd, termios.TCSANOW, saved),
        lambda: termios.tcsetattr(fd, termios.TCSANOW, mode),
    )
    guard.install()
    try:
        while True:
            data = os.read(fd, 64)
            if not data or data == b"\x04" or data == b"\x1b":
                return "quit"
            key = data[:1].decode("ascii", "replace").lower()
            if len(data) == 1 and key in KEYS:
                return key
            # Anything else (Enter, an arrow key's sequence, a paste) is not an answer.
    finally:
        guard.remove()
        termios.tcsetattr(fd, termios.TCSANOW, saved)


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
    if stdin is not None and stdin_isatty:
        try:
            yield stdin.fileno()
            return
        except (AttributeError, OSError, ValueError):
            pass
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        yield None
        return
    try:
        yield fd
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
        ctx, replace(chat, system=None, save=keep), notice=lambda text: say(ctx, text)
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
