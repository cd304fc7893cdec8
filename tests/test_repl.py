"""The REPL driven through prompt_toolkit's pipe input: keys, slash commands, cancellation."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import stat
import sys
from pathlib import Path

import pytest
from prompt_toolkit.document import Document
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from chatcli.conversation import Conversation
from chatcli.providers import Registry
from chatcli.render import PlainRenderer
from chatcli.repl import Repl, SlashCompleter, history_file
from chatcli.store import SessionStore, Stores
from chatcli.turn import TurnRequest
from tests.conftest import Isolated
from tests.servers import FakeOpenAI

pytestmark = pytest.mark.usefixtures("fast_retries")

ENTER = "\r"
CTRL_J = "\n"
ALT_ENTER = "\x1b\r"
CTRL_C = "\x03"
CTRL_D = "\x04"
PASTE_START, PASTE_END = "\x1b[200~", "\x1b[201~"


class Harness:
    """A Repl on pipe input, talking to the fake, writing answers into a string."""

    def __init__(self, fake: FakeOpenAI, root: Path, *, save: bool = True) -> None:
        self.fake = fake
        self.stores = Stores(root / "data")
        registry = Registry(Registry.builtin()._entries, stores=self.stores)
        defaults = TurnRequest(provider="ollama", model="m", base_url=fake.base_url)
        self.conversation = Conversation(registry, defaults, store=self.stores.sessions, save=save)
        self.out = io.StringIO()
        self.history_path = history_file(root / "state")
        self.editor: str | None = None
        #: The last REPL run.
        self.repl: Repl | None = None

    def run(self, keys: str, *, quit_after_requests: int | None = None) -> str:
        """Type ``keys``, then Ctrl-D (at once, or once the fake has seen that many requests);
        run until the REPL exits and return its output."""

        async def go() -> None:
            with create_pipe_input() as pipe:
                repl = Repl(
                    self.conversation,
                    stdout=self.out,
                    make_renderer=lambda: PlainRenderer(self.out, safe=True),
                    history_path=self.history_path,
                    input=pipe,
                    output=DummyOutput(),
                    editor=self.editor,
                )
                self.repl = repl
                if quit_after_requests is None:
                    pipe.send_text(keys + CTRL_D)
                else:
                    pipe.send_text(keys)

                    async def quit_later() -> None:
                        while len(self.fake.requests) < quit_after_requests:
                            await asyncio.sleep(0.02)
                        await asyncio.sleep(0.2)
                        pipe.send_text(CTRL_D)

                    quitter = asyncio.ensure_future(quit_later())
                await asyncio.wait_for(repl.run(), 30)
                if quit_after_requests is not None:
                    await quitter

        asyncio.run(go())
        return self.out.getvalue()

    def sent(self, index: int = -1) -> list[dict[str, str]]:
        messages: list[dict[str, str]] = self.fake.requests[index].body["messages"]
        return messages


@pytest.fixture
def harness(fake: FakeOpenAI, isolated: Isolated) -> Harness:
    return Harness(fake, isolated.root)


def test_enter_sends_and_history_carries_over(harness: Harness) -> None:
    out = harness.run(f"first{ENTER}second{ENTER}")
    assert out.count("Hello, world!") == 2
    assert [m["content"] for m in harness.sent()] == ["first", "Hello, world!", "second"]
    session = harness.conversation.session
    assert session is not None and session.title == "first"
    stored = harness.stores.sessions.messages(session.id)
    assert [(m.role, m.status) for m in stored] == [
        ("user", "complete"), ("assistant", "complete"),
        ("user", "complete"), ("assistant", "complete"),
    ]  # fmt: skip


@pytest.mark.parametrize("newline", [CTRL_J, ALT_ENTER])
def test_newline_keys_insert_a_line_instead_of_sending(harness: Harness, newline: str) -> None:
    harness.run(f"line one{newline}line two{ENTER}")
    assert len(harness.fake.requests) == 1
    assert harness.sent()[-1]["content"] == "line one\nline two"


def test_a_bracketed_paste_arrives_as_one_message(harness: Harness) -> None:
    harness.run(f"{PASTE_START}def f():\r\n    return 1\r\n{PASTE_END}{ENTER}")
    assert len(harness.fake.requests) == 1
    assert harness.sent()[-1]["content"] == "def f():\n    return 1\n"


def test_ctrl_c_at_the_prompt_clears_the_line(harness: Harness) -> None:
    harness.run(f"abandoned text{CTRL_C}kept{ENTER}")
    assert [m["content"] for m in harness.sent()] == ["kept"]


def test_input_history_persists_in_a_private_file(harness: Harness, fake: FakeOpenAI) -> None:
    harness.run(f"remember me{ENTER}")
    assert stat.S_IMODE(harness.history_path.stat().st_mode) == 0o600
    assert "remember me" in harness.history_path.read_text()
    # A new REPL: Up recalls the earlier input.
    again = Harness(fake, harness.history_path.parent.parent)
    again.run(f"\x1b[A{ENTER}")
    assert again.sent()[-1]["content"] == "remember me"


def test_slash_commands(harness: Harness, isolated: Isolated) -> None:
    target = isolated.root / "talk.md"
    out = harness.run(
        f"/system Be brief{ENTER}"
        f"hello{ENTER}"
        f"/model other-model{ENTER}"
        f"again{ENTER}"
        f"/rename chat{ENTER}"
        f"/history{ENTER}"
        f"/export {target}{ENTER}"
        f"/undo{ENTER}"
        f"/retry{ENTER}"
    )
    assert "system prompt set" in out and "model: other-model" in out
    assert "is now named 'chat'" in out
    assert "you> hello" in out and "assistant> Hello, world!" in out
    # /undo dropped "again" and its answer; /retry asked "hello" again, replacing its answer.
    assert "forgot the last 2 message(s)" in out
    assert harness.sent()[0]["content"] == "Be brief"
    assert [m["content"] for m in harness.sent()] == ["Be brief", "hello"]
    assert harness.fake.requests[1].body["model"] == "other-model"
    assert target.read_text().startswith("# chat\n")
    session = harness.stores.sessions.find("chat")
    assert [m.content for m in harness.stores.sessions.messages(session.id)] == [
        "hello",
        "Hello, world!",
    ]


def test_new_sessions_and_load(harness: Harness) -> None:
    out = harness.run(
        f"in the first{ENTER}/rename one{ENTER}/new{ENTER}in the second{ENTER}"
        f"/sessions{ENTER}/load one{ENTER}back in the first{ENTER}"
    )
    assert "continuing one (2 messages)" in out
    assert [m["content"] for m in harness.sent()] == [
        "in the first", "Hello, world!", "back in the first",
    ]  # fmt: skip
    assert len(harness.stores.sessions.recent()) == 2


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        ("/bogus", "unknown command /bogus; /help lists them"),
        ("/load", "usage: /load NAME"),
        ("/load nothing-here", "no session named 'nothing-here'"),
        ("/provider nope", "unknown provider 'nope'"),
        ("/retry", "nothing to retry yet"),
        ("/undo", "nothing to undo"),
        ("/new extra", "usage: /new (takes no argument)"),
        ("/export", "usage: /export FILE"),
    ],
)
def test_bad_commands_get_one_line_and_the_repl_goes_on(
    harness: Harness, line: str, reply: str
) -> None:
    out = harness.run(f"{line}{ENTER}still here{ENTER}")
    assert f"chatcli: {reply}" in out
    assert harness.sent()[-1]["content"] == "still here"


def test_provider_errors_print_one_line_and_nothing_is_lost(
    harness: Harness, fake: FakeOpenAI
) -> None:
    fake.mode, fake.status, fake.body = "status", 503, '{"error": "overloaded"}'
    out = harness.run(f"doomed{ENTER}")
    assert "chatcli: ollama: HTTP 503 Service Unavailable" in out and "overloaded" in out
    fake.mode = "ok"
    harness.run(f"retry now{ENTER}")
    # The question that got no answer is kept, but not sent again unseen as a second question
    # in a row (/retry would ask it).
    assert [m["content"] for m in harness.sent()] == ["retry now"]
    assert [m[1] for m in stored_rows(harness)][:2] == ["doomed", "retry now"]


def test_edit_command_sends_what_the_editor_saved(harness: Harness, isolated: Isolated) -> None:
    script = isolated.root / "editor.py"
    script.write_text(
        "import sys\nopen(sys.argv[1], 'w').write('written in the editor\\nsecond line\\n')\n"
    )
    harness.editor = f"{sys.executable} {script}"
    harness.run(f"/edit{ENTER}")
    assert harness.sent()[-1]["content"] == "written in the editor\nsecond line\n"


def test_sigint_while_streaming_cancels_keeps_the_part_and_returns_to_the_prompt(
    harness: Harness, fake: FakeOpenAI
) -> None:
    fake.pieces = ["one ", "two ", "three ", "four ", "five"]
    fake.delay = 0.3

    async def interrupt_soon() -> None:
        while "one" not in harness.out.getvalue():
            await asyncio.sleep(0.02)
        os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends while an answer streams

    async def go() -> None:
        with create_pipe_input() as pipe:
            repl = Repl(
                harness.conversation,
                stdout=harness.out,
                make_renderer=lambda: PlainRenderer(harness.out, safe=True),
                input=pipe,
                output=DummyOutput(),
            )
            killer = asyncio.ensure_future(interrupt_soon())
            await repl.handle("long please")
            await killer
            await repl.handle("after")

    fake_answer = "".join(fake.pieces)
    asyncio.run(go())
    out = harness.out.getvalue()
    assert "[interrupted] (the part shown is kept)" in out
    session = harness.conversation.session
    assert session is not None
    stored = harness.stores.sessions.messages(session.id)
    assert [(m.role, m.status) for m in stored][:2] == [
        ("user", "complete"),
        ("assistant", "interrupted"),
    ]
    assert stored[1].content and fake_answer.startswith(stored[1].content)
    assert stored[1].content != fake_answer
    # The REPL went on: the next question carried the interrupted exchange.
    assert [m["content"] for m in harness.sent()][:2] == ["long please", stored[1].content]


def test_no_save_keeps_nothing(fake: FakeOpenAI, isolated: Isolated) -> None:
    harness = Harness(fake, isolated.root, save=False)
    out = harness.run(f"secret stuff{ENTER}/rename x{ENTER}")
    assert "not being saved" in out
    assert SessionStore(isolated.root / "data" / "sessions.db").recent() == []


def complete(harness: Harness, text: str) -> list[str]:
    repl = Repl(
        harness.conversation,
        stdout=harness.out,
        make_renderer=lambda: PlainRenderer(harness.out, safe=True),
        output=DummyOutput(),
    )
    completer = SlashCompleter(repl)
    return [c.text for c in completer.get_completions(Document(text), None)]


def test_tab_completion_of_commands_providers_models_and_sessions(harness: Harness) -> None:
    harness.run(f"hi{ENTER}/rename project-x{ENTER}")
    assert complete(harness, "/re") == ["/reasoning", "/rename", "/retry"]
    assert "ollama" in complete(harness, "/provider ol")
    assert complete(harness, "/provider gpt") == ["gptalk"]
    assert complete(harness, "/load proj") == ["project-x"]
    assert complete(harness, "/model ") == ["m"]
    harness.conversation.use(provider="chatgptt")
    assert complete(harness, "/model gpt-4o") == ["gpt-4o", "gpt-4o-mini"]
    assert complete(harness, "plain text") == []


def test_toolbar_shows_provider_model_and_session(harness: Harness) -> None:
    repl = Repl(
        harness.conversation,
        stdout=harness.out,
        make_renderer=lambda: PlainRenderer(harness.out, safe=True),
        output=DummyOutput(),
    )
    text = "".join(fragment[1] for fragment in repl.toolbar())
    assert "ollama · m · new session" in text
    harness.run(f"name me{ENTER}")
    text = "".join(fragment[1] for fragment in repl.toolbar())
    assert "ollama · m · name me" in text
    # Before any answer and without -m, the provider's own default model is named.
    harness.conversation.use(provider="local")
    text = "".join(fragment[1] for fragment in repl.toolbar())
    assert "local · smollm2-135m-instruct · name me" in text


def test_ctrl_x_ctrl_e_edits_the_input_in_the_editor(
    harness: Harness, isolated: Isolated, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = isolated.root / "append.py"
    script.write_text(
        "import sys\np = sys.argv[1]\ntext = open(p).read().rstrip('\\n')\n"
        "open(p, 'w').write(text + ' (edited)\\nwith a second line\\n')\n"
    )
    monkeypatch.setenv("VISUAL", f"{sys.executable} {script}")
    # Ctrl-X Ctrl-E: edit, then send. (Ctrl-D waits: typed during the edit it would delete.)
    harness.run("draft\x18\x05", quit_after_requests=1)
    assert harness.sent()[-1]["content"].startswith("draft (edited)\nwith a second line")


def test_ctrl_r_searches_earlier_input(harness: Harness, fake: FakeOpenAI) -> None:
    harness.run(f"alpha question{ENTER}beta question{ENTER}")
    again = Harness(fake, harness.history_path.parent.parent)
    again.run(f"\x12alpha{ENTER}{ENTER}")  # Ctrl-R, type, accept the match, send it
    assert again.sent()[-1]["content"] == "alpha question"


# -- what the review of sessions and the REPL found ----------------------------------------------


def stored_rows(harness: Harness) -> list[tuple[str, str, str]]:
    session = harness.conversation.session
    assert session is not None
    return [(m.role, m.content, m.status) for m in harness.stores.sessions.messages(session.id)]


def test_a_failed_retry_keeps_the_old_answer(harness: Harness, fake: FakeOpenAI) -> None:
    harness.run(f"first question{ENTER}")
    fake.mode, fake.status, fake.body = "status", 503, '{"error": "busy"}'
    out = harness.run(f"/retry{ENTER}")
    assert "HTTP 503" in out
    assert stored_rows(harness) == [
        ("user", "first question", "complete"),
        ("assistant", "Hello, world!", "complete"),
    ]
    fake.mode = "ok"
    harness.run(f"next{ENTER}")
    assert [m["content"] for m in harness.sent()] == ["first question", "Hello, world!", "next"]


def test_a_successful_retry_replaces_the_answer(harness: Harness, fake: FakeOpenAI) -> None:
    harness.run(f"first question{ENTER}")
    fake.pieces = ["A better answer."]
    harness.run(f"/retry{ENTER}")
    assert stored_rows(harness) == [
        ("user", "first question", "complete"),
        ("assistant", "A better answer.", "complete"),
    ]


def test_the_repl_survives_its_session_being_deleted_elsewhere(
    harness: Harness, isolated: Isolated
) -> None:
    harness.run(f"before{ENTER}")
    first = harness.conversation.session
    assert first is not None
    SessionStore(isolated.root / "data" / "sessions.db").delete([first.id])  # another process
    out = harness.run(f"after{ENTER}")
    assert "internal error" not in out
    second = harness.conversation.session
    assert second is not None and second.id != first.id
    assert [m[1] for m in stored_rows(harness)] == [
        "before",
        "Hello, world!",
        "after",
        "Hello, world!",
    ]


def test_an_answer_that_cannot_be_saved_yet_is_kept_and_saved_later(
    harness: Harness, isolated: Isolated, caplog: pytest.LogCaptureFixture
) -> None:
    import sqlite3

    harness.stores.sessions.busy_timeout_ms = 200
    harness.stores.sessions.close()  # reopen with the short timeout
    harness.run(f"warm up{ENTER}")
    blocker = sqlite3.connect(isolated.root / "data" / "sessions.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        harness.run(f"while locked{ENTER}")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    warned = [r for r in caplog.records if r.levelname == "WARNING"]
    assert ["could not save" in r.getMessage() for r in warned] == [True]  # once, not twice
    assert harness.conversation.unsaved == 2
    harness.run(f"later{ENTER}")
    assert harness.conversation.unsaved == 0
    assert "could not be saved before are saved now" in caplog.records[-1].getMessage()
    assert [m[1] for m in stored_rows(harness)] == [
        "warm up", "Hello, world!", "while locked", "Hello, world!", "later", "Hello, world!",
    ]  # fmt: skip
    assert [m["content"] for m in harness.sent()][2:4] == ["while locked", "Hello, world!"]


def test_switching_provider_drops_the_old_url_so_no_key_goes_to_the_old_host(
    harness: Harness,
) -> None:
    assert harness.conversation.defaults.base_url == harness.fake.base_url
    harness.conversation.use(provider="ollama", model="other")  # same provider: URL stays
    assert harness.conversation.defaults.base_url == harness.fake.base_url
    registry = harness.conversation.registry
    registry.proxy, registry.env = "http://configured:3128", {"NO_PROXY": "localhost"}

    def proxy_of_next_turn() -> str | None:
        defaults = harness.conversation.defaults
        provider = registry.create(defaults.provider, base_url=defaults.base_url)
        return provider.config.proxy

    assert proxy_of_next_turn() is None  # the fake is on localhost: NO_PROXY
    harness.conversation.use(provider="openai")
    defaults = harness.conversation.defaults
    assert (defaults.provider, defaults.base_url, defaults.model) == ("openai", None, None)
    # The proxy is weighed again for the new provider's own host.
    assert proxy_of_next_turn() == "http://configured:3128"


def test_export_leaves_the_target_directory_mode_alone(
    harness: Harness, isolated: Isolated
) -> None:
    shared = isolated.root / "shared"
    shared.mkdir(mode=0o755)
    harness.run(f"hello{ENTER}/export {shared / 'talk.md'}{ENTER}")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755
    assert stat.S_IMODE((shared / "talk.md").stat().st_mode) == 0o600


def test_ctrl_c_while_the_editor_runs_does_not_end_the_repl(
    harness: Harness, isolated: Isolated
) -> None:
    script = isolated.root / "editor.py"
    script.write_text(
        "import os, signal, sys\n"
        "os.kill(os.getppid(), signal.SIGINT)  # Ctrl-C reaches the whole foreground group\n"
        "open(sys.argv[1], 'w').write('survived the interrupt\\n')\n"
    )
    harness.editor = f"{sys.executable} {script}"
    harness.run(f"/edit{ENTER}")
    assert harness.sent()[-1]["content"] == "survived the interrupt\n"


def test_refresh_takes_in_turns_another_process_added(harness: Harness) -> None:
    harness.run(f"mine{ENTER}")
    conversation = harness.conversation
    assert conversation.refresh() == 0  # nothing new
    session = conversation.session
    assert session is not None
    other = harness.stores.sessions  # another process writing to the same database
    question = other.add_message(session.id, "user", "from elsewhere")
    other.add_message(session.id, "assistant", "its answer", reply_to=question)
    assert conversation.refresh() == 2
    assert [m["content"] for m in conversation.history] == [
        "mine", "Hello, world!", "from elsewhere", "its answer",
    ]  # fmt: skip
    harness.run(f"next{ENTER}")
    assert [m["content"] for m in harness.sent()][-3:] == ["from elsewhere", "its answer", "next"]


def test_loading_a_session_takes_its_provider_and_model_as_one_pair(harness: Harness) -> None:
    conversation = harness.conversation
    sessions = harness.stores.sessions
    fruits = sessions.create(name="fruits", provider="lmstudio", model="qwen")
    question = sessions.add_message(fruits.id, "user", "apples?")
    sessions.add_message(
        fruits.id, "assistant", "red", provider="lmstudio", model="qwen", reply_to=question
    )
    conversation.use(model="something-else")
    conversation.load(sessions.find("fruits"))
    assert (conversation.provider, conversation.model) == ("lmstudio", "qwen")
    assert conversation.defaults.base_url is None  # the old provider's URL does not follow
    # A session whose pair has no model takes the provider's default, not the current model.
    plain = sessions.create(name="plain", provider="lmstudio", model=None)
    conversation.load(plain)
    assert (conversation.provider, conversation.model) == ("lmstudio", None)


# -- small screens and first steps (issue 14) ------------------------------------------------------

GGUF = "/home/u/models/Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf"


def toolbar_text(harness: Harness) -> str:
    repl = Repl(
        harness.conversation,
        stdout=harness.out,
        make_renderer=lambda: PlainRenderer(harness.out, safe=True),
        output=DummyOutput(),  # 80 columns
    )
    return "".join(fragment[1] for fragment in repl.toolbar())


def test_the_toolbar_keeps_the_title_when_the_model_is_a_long_path(harness: Harness) -> None:
    title = "How do I write a Rust macro that counts its arguments?"
    harness.run(f"{title}{ENTER}")
    harness.conversation.use(model=GGUF)
    text = toolbar_text(harness)
    assert len(text) <= 80, text
    assert text.startswith(" ollama · Meta-") and text.rstrip().endswith(f"· {title}")
    assert "Q4_K_M ·" in text and "/home/u" not in text and ".gguf" not in text
    # Room to spare: the whole file name, and the key hint back.
    harness.conversation.use(model="/models/tiny.gguf")
    harness.conversation.rename("rust")
    text = toolbar_text(harness)
    assert text.startswith(" ollama · tiny · rust ")  # (then the session's tokens, if counted)
    assert text.endswith("  Alt-Enter newline · Ctrl-D quit · /help")


def test_model_and_provider_without_a_name_show_the_current_one_and_the_choices(
    harness: Harness,
) -> None:
    out = harness.run(f"/model{ENTER}/provider{ENTER}/provider chatgptt{ENTER}/model{ENTER}")
    assert "usage:" not in out
    assert "model: m\nmodels of ollama: m (/model NAME switches)\n" in out
    assert "the service may offer more: chatcli models -p ollama asks it" in out
    assert "provider: ollama\nproviders: openai, ollama, lmstudio," in out
    assert "model: gpt-4o\nmodels of chatgptt: gpt-4, gpt-4o, gpt-4o-mini (/model" in out
    assert harness.conversation.provider == "chatgptt" and not harness.fake.requests


def test_tab_puts_a_single_match_in_at_once(harness: Harness) -> None:
    # Keys arrive all at once, as from a fast typist: Tab does not wait for the menu.
    out = harness.run(f"/mod\t other{ENTER}/provider gpta\t{ENTER}")
    assert "model: other" in out and "provider: gptalk" in out
    assert "unknown command" not in out


def test_tab_fills_in_what_several_matches_share(harness: Harness) -> None:
    out = harness.run(f"/his\t{ENTER}/model gpt\t{ENTER}")
    assert "(no messages yet)" in out  # /his -> /history
    harness.conversation.use(provider="chatgptt")
    out = harness.run(f"/model gpt-4o-\t{ENTER}")
    assert "model: gpt-4o-mini" in out


def test_history_wraps_between_words_at_the_terminal_width(
    harness: Harness, fake: FakeOpenAI
) -> None:
    question = " ".join(["antidisestablishmentarianism"] * 5)  # 29-letter words, 149 characters
    fake.pieces = ["Sure: " + " ".join(f"word{n}" for n in range(40)),
                   "\n```\n" + "x = 1  " * 20 + "\n```"]  # fmt: skip
    harness.run(f"{question}{ENTER}")
    out = harness.run(f"/history{ENTER}").split("you> ", 1)[1]
    lines = ("you> " + out).splitlines()
    code = "x = 1  " * 20
    assert code.rstrip() in [line.rstrip() for line in lines]  # fenced code: left alone
    prose = [line for line in lines if not line.startswith(("x = 1", "```"))]
    assert all(len(line) <= 80 for line in prose), prose
    words = " ".join(prose).split()
    assert words.count("antidisestablishmentarianism") == 5  # no word cut in two
    assert [w for w in words if w.startswith("word")] == [f"word{n}" for n in range(40)]


def test_the_prompt_takes_in_what_another_process_added_and_says_so(harness: Harness) -> None:
    harness.run(f"mine{ENTER}")
    session = harness.conversation.session
    assert session is not None
    question = harness.stores.sessions.add_message(session.id, "user", "from elsewhere")
    harness.stores.sessions.add_message(session.id, "assistant", "ok", reply_to=question)
    out = harness.run(f"next{ENTER}")
    assert "(2 message(s) added to this session elsewhere; see /history)" in out
    assert [m["content"] for m in harness.sent()][-3:] == ["from elsewhere", "ok", "next"]


def test_refresh_leaves_a_no_save_conversation_alone(harness: Harness) -> None:
    harness.run(f"stored{ENTER}")
    conversation = harness.conversation
    session = conversation.session
    assert session is not None
    conversation.save = False  # from here on, nothing of this chat is written
    harness.run(f"private{ENTER}")
    harness.stores.sessions.add_message(session.id, "user", "from elsewhere")
    assert conversation.refresh() == 0
    assert [m["content"] for m in conversation.history] == [
        "stored", "Hello, world!", "private", "Hello, world!",
    ]  # fmt: skip


def test_options_the_new_provider_does_not_take_are_refused_before_anything_is_stored(
    harness: Harness,
) -> None:
    from dataclasses import replace

    harness.run(f"first{ENTER}")
    conversation = harness.conversation
    conversation.defaults = replace(conversation.defaults, options={"top_p": 0.5})
    conversation.use(provider="gptalk")  # a web service that takes no -o options
    before = stored_rows(harness)
    out = harness.run(f"second{ENTER}")
    assert "gptalk: unknown option -o top_p" in out
    assert stored_rows(harness) == before


def test_the_reasoning_command_shows_and_sets_the_mode(harness: Harness) -> None:
    out = harness.run(f"/reasoning{ENTER}")
    assert "reasoning: collapse (show, collapse or hide)" in out
    harness.run(f"/reasoning hide{ENTER}")
    assert harness.repl is not None and harness.repl.reasoning == "hide"
    assert "give one of show, collapse, hide" in harness.run(f"/reasoning loud{ENTER}")


def test_the_toolbar_shows_the_sessions_tokens_context_and_cost(
    harness: Harness, fake: FakeOpenAI
) -> None:
    from chatcli.providers.base import BaseProvider

    assert harness.repl is None or harness.repl.spent() == ""
    fake.usage = {"prompt_tokens": 1500, "completion_tokens": 500}
    harness.run(f"hi{ENTER}")
    repl = harness.repl
    assert repl is not None
    assert repl.spent() == "2.0k tokens"  # no context length known, no prices given
    repl.prices = {"ollama": {"prices": {"m": {"input": 1.0, "output": 2.0}}}}
    assert repl.spent() == "2.0k tokens · cost 0.0025"
    ollama = harness.conversation.registry.get("ollama")
    harness.conversation.registry._entries["ollama"] = type(
        "Ollama", (ollama,), {"context_length": 4000}
    )
    harness.conversation._context_for = None
    assert repl.spent() == "2.0k tokens · context 50% · cost 0.0025"
    assert issubclass(ollama, BaseProvider)


def test_files_wait_for_the_next_message_and_can_be_listed_and_dropped(
    harness: Harness, isolated: Isolated
) -> None:
    (isolated.root / "a.py").write_text("print('a')\n")
    (isolated.root / "b.md").write_text("# B\n")
    out = harness.run(
        f"/file {isolated.root / 'a.py'}{ENTER}/file {isolated.root / 'b.md'}{ENTER}"
        f"/context{ENTER}/drop 2{ENTER}/drop 9{ENTER}/context{ENTER}what is this?{ENTER}"
        f"/context{ENTER}"
    )
    assert f"+ {isolated.root / 'a.py'} (11 bytes, ~3 tokens)" in out
    assert f"2. {isolated.root / 'b.md'} (4 bytes, ~1 tokens)" in out
    assert f"- {isolated.root / 'b.md'}" in out
    assert "/drop 9: give an item's number from /context (1 to 1)" in out
    # The message carries what waited, fenced under its path, then the question; then the
    # items are spent (they are in the conversation now).
    assert harness.sent()[-1]["content"] == (
        f"{isolated.root / 'a.py'}\n```python\nprint('a')\n```\n\nwhat is this?"
    )
    assert out.rstrip().endswith("(nothing waits for your next message; /file PATH adds to it)")


def test_an_image_waits_for_the_next_message_and_goes_as_a_part(isolated: Isolated) -> None:
    from tests.servers import AppServer, FakeVisionOpenAI

    vision = FakeVisionOpenAI()
    with AppServer(vision.app()) as server:
        vision.base_url = f"{server.url}/v1"
        harness = Harness(vision, isolated.root)
        picture = isolated.root / "dot.png"
        picture.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(64)))
        out = harness.run(
            f"/image {picture}{ENTER}/context{ENTER}/image {isolated.root}{ENTER}what is it?{ENTER}"
        )
    assert "+ image dot.png" in out and "image: dot.png" in out
    assert "a directory, not an image" in out
    parts = vision.requests[-1].body["messages"][-1]["content"]
    assert parts[0]["type"] == "image_url"
    assert parts[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert parts[-1]["type"] == "text" and parts[-1]["text"].startswith("what is it?")
    assert not vision.violations
    assert harness.repl is not None and harness.repl.images == []  # spent with the message


def test_between_prompts_the_terminal_never_goes_back_to_line_mode(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Keys typed in the moment after an answer, before the next prompt takes the terminal,
    # must not be echoed nor have their Enter turned into Ctrl-J ("add a line"), nor be
    # held in line mode (where Ctrl-D is an end of file that no one reads, and is lost).
    import termios

    from chatcli.repl import _TypeAhead

    master, slave = os.openpty()
    before = termios.tcgetattr(slave)
    seen: list[tuple[bool, bool]] = []
    questions = iter(["first", "second"])

    async def read(self: Repl) -> str:
        attrs = termios.tcgetattr(slave)
        seen.append(
            (
                bool(attrs[3] & termios.ECHO),
                bool(attrs[0] & termios.ICRNL | attrs[3] & termios.ICANON),
            )
        )
        try:
            return next(questions)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr(Repl, "read", read)

    async def go() -> None:
        repl = Repl(
            harness.conversation,
            stdout=harness.out,
            make_renderer=lambda: PlainRenderer(harness.out, safe=True),
            output=DummyOutput(),
        )
        repl.type_ahead = _TypeAhead(slave)
        await repl.run()

    try:
        asyncio.run(go())
        assert seen == [(False, False)] * 3  # quiet before every prompt, the first included
        assert harness.out.getvalue().count("Hello, world!") == 2
        assert termios.tcgetattr(slave) == before  # and as it was once the REPL ends
    finally:
        os.close(master)
        os.close(slave)
