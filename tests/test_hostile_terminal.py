"""Nothing from outside reaches a terminal raw: every field a server, the config file or the
cookie store can fill is made hostile, and every command that shows it runs on a real
pseudo-terminal; no ESC, C1 control or other control byte from those fields may reach it.

(The answer's own renderers are tested split at every offset in ``test_terminal_safety``.)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from chatcli.store import Cookie, Stores
from tests.conftest import CHATCLI
from tests.servers import FakeOpenAI
from tests.test_terminal import run_in_terminal

#: Sequences a hostile string is built from: clipboard, title, clear, cursor, C1, modes, bells.
FRAGMENTS = (
    "\x1b]52;c;ZXZpbA==\x07", "\x1b]0;pwned\x07", "\x1b[2J\x1b[H", "\x1b[5A\x1b[K", "\x9b2J",
    "\x9d0;t\x9c", "\x1bP+q\x1b\\", "\x1b[?1049h", "\x07", "\x08", "\r", "\x7f", "\x1b",
)  # fmt: skip
_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"], exclude_characters="\0"))
HOSTILE = st.lists(st.sampled_from(FRAGMENTS) | _TEXT, min_size=1, max_size=4).map(
    lambda parts: "x" + "".join(parts) + "\x1b[31m"  # never empty, always one escape
)

#: What chatcli itself writes to a terminal: SGR colours, the live tail's cursor moves, and
#: the pseudo-terminal's own CR before each LF.
OURS = re.compile(r"\x1b\[[0-9;]*m|\r\x1b\[\d+A\x1b\[J|\x1b\[\?25[lh]|\r(?=\n)")
FORBIDDEN = ("\x1b", "\x07", "\x08", "\r", "\x7f", *(chr(c) for c in range(0x80, 0xA0)))


def leaks(output: bytes) -> list[str]:
    rest = OURS.sub("", output.decode("utf-8", errors="replace"))
    return [repr(char) for char in FORBIDDEN if char in rest]


def toml_string(text: str) -> str:
    """A TOML basic string holding ``text`` exactly (controls escaped as TOML requires)."""
    out = []
    for char in text:
        code = ord(char)
        if code < 0x20 or 0x7F <= code < 0xA0 or char in '"\\':
            out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    model=HOSTILE,
    answer=HOSTILE,
    error=HOSTILE,
    name=HOSTILE.map(lambda name: name.replace(",", ";")),  # -p a,b names a fallback chain
    cookie=HOSTILE,
)
@example(
    model="m\x1b]52;c;ZXZpbA==\x07", answer="a\x9b2J", error="e\x1b]0;t\x07",
    name="p\x1b[2J", cookie="c\x1b[?1049h",
)  # fmt: skip
def test_no_control_byte_from_outside_reaches_the_terminal(
    model: str, answer: str, error: str, name: str, cookie: str
) -> None:
    fake = FakeOpenAI(models=[model, "plain"], pieces=[answer])
    from tests.servers import AppServer

    server = AppServer(fake.app())
    server.start()
    fake.base_url = f"{server.url}/v1"
    try:
        with tempfile.TemporaryDirectory() as root:
            home = Path(root) / "chatcli"
            (home / "config").mkdir(parents=True)
            (home / "config" / "config.toml").write_text(
                f"[providers.{toml_string(name)}]\n"
                f'type = "openai"\nbase_url = "{fake.base_url}"\nmodel = {toml_string(model)}\n'
            )
            Stores(home / "data").cookies.save([Cookie(f"{cookie}.example", cookie, cookie)])
            env = {**os.environ, "HOME": root, "CHATCLI_HOME": str(home), "TERM": "xterm-256color"}
            for key in ("NO_COLOR", "OPENAI_API_KEY", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
                env.pop(key, None)
            ollama = ["-p", "ollama", "--base-url", fake.base_url]
            commands: list[tuple[list[str], int]] = [
                (["models", *ollama], 0),
                (["ask", *ollama, "-S", "s", f"question {answer}"], 0),  # the server's model
                (["ask", "-p", name, "--markdown", "again"], 0),  # the configured provider
                (["sessions", "list"], 0),
                (["sessions", "show", "s"], 0),
                (["sessions", "search", "question"], 0),
                (["providers"], 0),
                (["providers", "--check", "-p", name], 0),
                (["cookies", "list"], 0),
                ([f"--{name}"], 2),  # the parser's own error quotes the argument
            ]
            for args, expected in commands:
                code, output = run_in_terminal(args, env)
                assert code == expected, (args, output)
                assert not leaks(output), (args, leaks(output), output)
                assert b"internal error" not in output, (args, output)
            # A failure whose body and traceback quote the server, with -v.
            fake.mode, fake.status, fake.body = "status", 500, json.dumps({"error": error})
            code, output = run_in_terminal(["ask", *ollama, "-v", "--retries", "0", "hi"], env)
            assert code == 1 and b"Traceback" in output
            assert not leaks(output), (leaks(output), output)
    finally:
        server.stop()


def test_the_same_fields_into_a_pipe_stay_byte_exact(tmp_path: Path) -> None:
    answer = "keep \x1b[1mthis\x1b[0m \x9b and \u202e exactly"
    fake = FakeOpenAI(pieces=[answer])
    from tests.servers import AppServer

    with AppServer(fake.app()) as server:
        fake.base_url = f"{server.url}/v1"
        env = {**os.environ, "CHATCLI_HOME": str(tmp_path), "HOME": str(tmp_path)}
        result = subprocess.run(
            [str(CHATCLI), "ask", "-p", "ollama", "-m", "m", "--base-url", fake.base_url, "hi"],
            capture_output=True, env=env, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == answer + "\n"
