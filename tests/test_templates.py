"""Templates (roles): their files and variables, ``ask -t`` through the real binary with stdin,
``/role`` in the REPL, the session keeping the template, and ``chatcli templates``."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import sys
from pathlib import Path

import pytest

from chatcli.errors import ConfigError, UsageError
from chatcli.templates import BUILTIN, Templates, builtin, parse, parse_vars
from tests.conftest import Isolated, assert_one_line_error, run, run_binary
from tests.servers import FakeOpenAI
from tests.test_repl import ENTER, Harness


def write_template(isolated: Isolated, name: str, text: str) -> Path:
    folder = isolated.chatcli_home / "config" / "templates"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


def sent(fake: FakeOpenAI, index: int = -1) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in fake.requests[index].body["messages"]]


# -- the format ----------------------------------------------------------------------------


def test_variables_escapes_and_other_braces() -> None:
    template = parse(
        "t",
        {
            "system": 'Answer in {lang}. JSON looks like {"a": 1}; {{lang}} is literal.',
            "prompt": "About {topic}:\n{input}",
            "vars": {"lang": "French"},
        },
        None,
    )
    assert template.variables == ["lang", "topic"]
    values = template.values({"topic": "{lang} braces"})
    assert template.system_text(values) == (
        'Answer in French. JSON looks like {"a": 1}; {lang} is literal.'
    )
    # A value is put in as it is: its own {lang} is not expanded again, nor is {input}'s text.
    assert template.message("the {topic}", values) == "About {lang} braces:\nthe {topic}"


def test_a_prompt_without_input_has_the_input_after_it() -> None:
    template = parse("t", {"prompt": "Tell a joke."}, None)
    assert template.message("about cats", {}) == "Tell a joke.\n\nabout cats"
    assert template.message("", {}) == "Tell a joke."
    assert not template.needs_input()
    assert parse("u", {"system": "s"}, None).message("hi", {}) == "hi"


def test_missing_and_unknown_variables_are_named() -> None:
    template = parse("t", {"system": "{a} and {b}", "vars": {"b": "x"}}, None)
    with pytest.raises(UsageError, match=r"template 't' needs --var a=VALUE"):
        template.values({})
    with pytest.raises(UsageError, match=r"has no variable 'c' \(its variables: a, b\)"):
        template.values({"a": "1", "c": "2"})
    assert template.values({"a": "1", "b": "2"}) == {"a": "1", "b": "2"}
    with pytest.raises(UsageError, match="NAME=VALUE"):
        parse_vars(["novalue"])
    with pytest.raises(UsageError, match="input"):
        parse_vars(["input=x"])
    assert parse_vars(["a=1=2", "b="]) == {"a": "1=2", "b": ""}


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"sytem": "typo"}, "unknown key 'sytem'"),
        ({"system": 3}, "system has the wrong type"),
        ({"temperature": 5}, "temperature must be between 0 and 2"),
        ({"system": "hi", "vars": {"x": "1"}}, "vars.x is not used"),
        ({"options": {"model": "m"}}, "options.model is not a provider option"),
        ({"system": "{input}", "vars": {"input": "x"}}, "vars.input"),
    ],
)
def test_a_bad_template_is_an_error_naming_the_file_and_key(
    data: dict[str, object], error: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=str(tmp_path / "t.toml")) as caught:
        parse("t", data, tmp_path / "t.toml")
    assert error in str(caught.value)


def test_builtin_templates_are_valid_and_a_file_replaces_one(isolated: Isolated) -> None:
    for name in BUILTIN:
        template = builtin(name)
        assert template.system and template.description and template.path is None
        # Every variable has a default: none is required.
        assert template.values({}) == dict(template.defaults)
        assert set(template.defaults) == set(template.variables)
    templates = Templates(isolated.chatcli_home / "config" / "templates")
    assert templates.get("review").path is None
    path = write_template(isolated, "review", 'system = "Mine."\n')
    assert templates.get("review").path == path
    assert templates.get("review").system == "Mine."
    with pytest.raises(UsageError, match="no template named 'nope'"):
        templates.get("nope")
    with pytest.raises(UsageError, match="not a template name"):
        templates.get("../config")


def test_a_template_file_others_can_write_is_refused(isolated: Isolated) -> None:
    path = write_template(isolated, "mine", 'system = "x"\n')
    path.chmod(0o666)
    with pytest.raises(ConfigError, match="writable"):
        Templates(path.parent).get("mine")


# -- ask -t, through the real binary -------------------------------------------------------


def test_ask_with_a_template_variables_and_piped_stdin(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    base = ["-p", "ollama", "-m", "m", "--base-url", fake.base_url]
    result = run_binary(
        ["ask", "-t", "review", "--var", "focus=naming", *base, "be brief"],
        isolated,
        input="def f(): pass\n",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Hello, world!\n"
    (role, system), (_, message) = sent(fake)
    assert role == "system" and "Focus on naming." in system
    assert message == "Review this code:\n\ndef f(): pass\n\nbe brief"
    assert fake.requests[-1].body["temperature"] == 0.2  # the template's


def test_template_errors_through_the_real_binary(fake: FakeOpenAI, isolated: Isolated) -> None:
    base = ["-p", "ollama", "-m", "m", "--base-url", fake.base_url]
    write_template(isolated, "needs", 'system = "Speak {lang}."\n')
    missing = run_binary(["ask", "-t", "needs", *base, "hi"], isolated)
    assert missing.returncode == 2
    assert_one_line_error(missing.stderr, "template 'needs' needs --var lang=VALUE")
    unknown = run_binary(["ask", "-t", "needs", "--var", "lnag=x", *base, "hi"], isolated)
    assert unknown.returncode == 2
    assert_one_line_error(unknown.stderr, "no variable 'lnag'", "its variables: lang")
    nothing = run_binary(["ask", "-t", "commit", *base], isolated)
    assert nothing.returncode == 2
    assert_one_line_error(nothing.stderr, "template 'commit' works on your input")
    absent = run_binary(["ask", "-t", "nope", *base, "hi"], isolated)
    assert absent.returncode == 2
    assert_one_line_error(absent.stderr, "no template named 'nope'", "commit, explain")
    stray = run_binary(["ask", "--var", "a=b", *base, "hi"], isolated)
    assert stray.returncode == 2
    assert_one_line_error(stray.stderr, "--var goes with -t")
    write_template(isolated, "broken", 'system = "x"\nsytem = "y"\n')
    broken = run_binary(["ask", "-t", "broken", *base, "hi"], isolated)
    assert broken.returncode == 2
    assert_one_line_error(broken.stderr, "broken.toml", "unknown key 'sytem'")
    write_template(isolated, "elsewhere", 'provider = "nosuch"\nsystem = "x"\n')
    unknown_provider = run_binary(["ask", "-t", "elsewhere", "hi"], isolated)
    assert unknown_provider.returncode == 2
    assert_one_line_error(unknown_provider.stderr, "template 'elsewhere'", "'nosuch'")
    assert fake.requests == []  # nothing was sent for any of them


def test_a_template_chooses_provider_model_and_options_and_flags_win(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    isolated.write_config(
        f'[providers.box]\ntype = "openai"\nbase_url = "{fake.base_url}"\n'
        f'[providers.other]\ntype = "openai"\nbase_url = "{fake.base_url}"\n'
    )
    write_template(
        isolated,
        "terse",
        'system = "Be terse."\nprovider = "box"\nmodel = "tiny"\ntemperature = 0.1\n'
        "[options]\nmax_tokens = 42\n",
    )
    assert run(["ask", "-t", "terse", "hi"], isolated).returncode == 0
    body = fake.requests[-1].body
    assert (body["model"], body["temperature"], body["max_tokens"]) == ("tiny", 0.1, 42)
    assert (
        run(["ask", "-t", "terse", "-m", "big", "--temperature", "1", "hi"], isolated).returncode
        == 0
    )
    body = fake.requests[-1].body
    assert (body["model"], body["temperature"], body["max_tokens"]) == ("big", 1, 42)
    # Another provider: the template's model and options are for its own, and are not used.
    assert run(["ask", "-t", "terse", "-p", "other", "-m", "m2", "hi"], isolated).returncode == 0
    body = fake.requests[-1].body
    assert body["model"] == "m2" and "max_tokens" not in body
    assert sent(fake)[0] == ("system", "Be terse.")  # the system prompt still applies


def test_the_session_keeps_the_template_and_continue_uses_it(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    base = ["-p", "ollama", "-m", "m", "--base-url", fake.base_url]
    first = run(
        ["ask", "-t", "translate", "--var", "to=German", *base, "-S", "de", "cat"], isolated
    )
    assert first.returncode == 0, first.stderr
    second = run(["ask", "-S", "de", *base, "dog"], isolated)
    assert second.returncode == 0, second.stderr
    messages = sent(fake)
    assert messages[0] == ("system", messages[0][1]) and "into German" in messages[0][1]
    assert messages[1:] == [("user", "cat"), ("assistant", "Hello, world!"), ("user", "dog")]
    database = isolated.chatcli_home / "data" / "sessions.db"
    with sqlite3.connect(database) as db:
        (stored,) = db.execute("SELECT template FROM sessions WHERE name = 'de'").fetchone()
    assert json.loads(stored) == {"name": "translate", "vars": {"to": "German"}}
    # --var changes a value of the session's template; -c continues it too.
    assert run(["ask", "-c", "--var", "to=Dutch", *base, "bird"], isolated).returncode == 0
    assert "into Dutch" in sent(fake)[0][1]
    # The template file gone: the session goes on with its system prompt, and says so.
    write_template(isolated, "translate", 'system = "Gone soon."\nprompt = "{input}"\n')
    assert run(["ask", "-c", "-t", "translate", *base, "x"], isolated).returncode == 0
    (isolated.chatcli_home / "config" / "templates" / "translate.toml").unlink()
    with sqlite3.connect(database) as db:
        db.execute("""UPDATE sessions SET template = '{"name": "vanished"}'""")
    later = run(["ask", "-c", *base, "y"], isolated)
    assert later.returncode == 0
    assert "template is gone" in later.stderr
    assert sent(fake)[0] == ("system", "Gone soon.") and sent(fake)[-1] == ("user", "y")


# -- /role in the REPL ----------------------------------------------------------------------


def test_role_switches_the_system_prompt_and_frames_messages(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    harness = Harness(fake, isolated.root)
    from chatcli.templates import Templates

    harness.conversation.templates = Templates(isolated.root / "templates")
    out = harness.run(f"/role explain{ENTER}ls -la{ENTER}")
    assert harness.repl is not None
    toolbar = "".join(fragment[1] for fragment in harness.repl.toolbar())
    assert "· role explain" in toolbar
    out += harness.run(
        f"/role translate to=Latin{ENTER}hello{ENTER}"
        f"/role{ENTER}/role nope{ENTER}/role -{ENTER}plain{ENTER}"
    )
    assert "role: explain (ollama · m) · Explain a shell command" in out
    first = sent(fake, 0)
    assert first[0][0] == "system" and "shell commands" in first[0][1]
    assert first[-1] == ("user", "Explain this command:\n\nls -la")
    second = sent(fake, 1)
    assert "into Latin" in second[0][1] and second[-1] == ("user", "hello")
    assert "role: translate" in out and "templates: commit, explain, review, translate" in out
    assert "no template named 'nope'" in out
    assert "role removed" in out
    third = sent(fake, 2)
    assert third[0][0] != "system" and third[-1] == ("user", "plain")
    session = harness.conversation.session
    assert session is not None
    assert harness.stores.sessions.get(session.id).template is None
    completions = list(harness.repl.candidates("role")) if harness.repl else []
    assert completions == ["commit", "explain", "review", "translate"]


def test_role_with_a_missing_variable_changes_nothing(fake: FakeOpenAI, isolated: Isolated) -> None:
    harness = Harness(fake, isolated.root)
    harness.conversation.templates = Templates(isolated.root / "templates")
    write = isolated.root / "templates"
    write.mkdir()
    (write / "needs.toml").write_text('system = "Speak {lang}."\n')
    out = harness.run(f"/role needs{ENTER}hi{ENTER}")
    assert "needs --var lang=VALUE" in out
    assert sent(fake)[-1] == ("user", "hi") and sent(fake)[0][0] != "system"


# -- chatcli templates ----------------------------------------------------------------------


def test_templates_list_and_show(isolated: Isolated) -> None:
    write_template(
        isolated, "review", 'description = "My review"\nsystem = "{x}"\n[vars]\nx = "1"\n'
    )
    write_template(isolated, "zed", 'description = "Z"\nsystem = "z"\n')
    listed = run(["templates", "list", "--json"], isolated)
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert list(rows) == ["commit", "explain", "review", "translate", "zed"]
    assert rows["review"]["origin"] == "file (replaces built-in)"
    assert rows["review"]["variables"] == ["x"] and rows["commit"]["origin"] == "built-in"
    plain = run(["templates", "list"], isolated).stdout
    assert "zed" in plain and "My review" in plain
    assert run(["templates", "show", "commit"], isolated).stdout == BUILTIN["commit"]
    missing = run(["templates", "show", "nope"], isolated)
    assert missing.returncode == 2 and "no template named 'nope'" in missing.stderr


def editor_script(isolated: Isolated, text: str) -> str:
    """An $EDITOR that replaces the file with ``text`` (and keeps what it was given)."""
    script = isolated.root / "editor.py"
    seen = isolated.root / "seen.toml"
    script.write_text(
        "import shutil, sys\n"
        f"shutil.copy(sys.argv[1], {str(seen)!r})\n"
        f"open(sys.argv[1], 'w').write({text!r})\n"
    )
    return f"{sys.executable} {script}"


def test_templates_edit_saves_only_a_valid_template(isolated: Isolated) -> None:
    good = 'description = "Pirate"\nsystem = "Talk like a pirate."\n'
    saved = run(
        ["templates", "edit", "pirate"], isolated, env={"EDITOR": editor_script(isolated, good)}
    )
    assert saved.returncode == 0, saved.stderr
    path = isolated.chatcli_home / "config" / "templates" / "pirate.toml"
    assert path.read_text() == good and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "system = " in (isolated.root / "seen.toml").read_text()  # started from a skeleton
    bad = 'system = "unclosed\n'
    refused = run(
        ["templates", "edit", "pirate"], isolated, env={"EDITOR": editor_script(isolated, bad)}
    )
    assert refused.returncode == 1
    assert "was not changed" in refused.stderr and path.read_text() == good
    # A built-in one starts from its text, and the file then replaces it.
    mine = BUILTIN["commit"].replace("repository's usual", "Conventional Commits")
    assert (
        run(
            ["templates", "edit", "commit"], isolated, env={"EDITOR": editor_script(isolated, mine)}
        ).returncode
        == 0
    )
    assert (isolated.root / "seen.toml").read_text() == BUILTIN["commit"]
    assert "Conventional Commits" in Templates(path.parent).get("commit").defaults["style"]


def test_templates_edit_never_writes_through_a_link(isolated: Isolated) -> None:
    elsewhere = isolated.root / "elsewhere.toml"
    elsewhere.write_text('system = "x"\n')
    folder = isolated.chatcli_home / "config" / "templates"
    folder.mkdir(parents=True)
    (folder / "linked.toml").symlink_to(elsewhere)
    env = {"EDITOR": editor_script(isolated, 'system = "changed"\n')}
    result = run(["templates", "edit", "linked"], isolated, env=env)
    assert result.returncode != 0 and "link" in result.stderr
    assert elsewhere.read_text() == 'system = "x"\n'


def test_templates_rm(isolated: Isolated) -> None:
    path = write_template(isolated, "commit", 'system = "mine"\n')
    removed = run(["templates", "rm", "commit"], isolated)
    assert removed.returncode == 0 and "the built-in commit is used again" in removed.stderr
    assert not path.exists()
    again = run(["templates", "rm", "commit"], isolated)
    assert again.returncode == 2 and "is built in" in again.stderr
    assert run(["templates", "rm", "nope"], isolated).returncode == 2


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_completion_offers_template_names(isolated: Isolated) -> None:
    from tests.test_completions import bash_complete

    write_template(isolated, "reviewer", 'system = "x"\n')
    assert bash_complete("chatcli ask -t rev", isolated.env) == ["review", "reviewer"]
    assert bash_complete("chatcli templates show tr", isolated.env) == ["translate"]


def test_an_old_database_gains_the_template_column(isolated: Isolated) -> None:
    from chatcli.store import SessionStore
    from chatcli.store.sessions import MIGRATIONS

    path = isolated.root / "old.db"
    with sqlite3.connect(path) as db:
        for script in MIGRATIONS[:5]:
            db.executescript(script)
        db.execute("PRAGMA user_version = 5")
        db.execute(
            "INSERT INTO sessions (id, name, title, created_at, updated_at)"
            " VALUES ('abc123', 'old', 'Old', 1, 1)"
        )
    os.chmod(path, 0o600)
    store = SessionStore(path)
    assert store.get("abc123").template is None
    store.set_template("abc123", "s", '{"name": "commit", "vars": {}}')
    assert store.get("abc123").template == '{"name": "commit", "vars": {}}'


# -- template edges a review found -------------------------------------------------------------


def test_continuing_a_session_brings_back_its_templates_temperature_and_options(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    write_template(
        isolated, "calm", 'system = "Calm."\ntemperature = 0.3\n[options]\nmax_tokens = 50\n'
    )
    base = ["-p", "ollama", "-m", "m", "--base-url", fake.base_url]
    assert run(["ask", *base, "-t", "calm", "-S", "c", "one"], isolated).returncode == 0
    assert run(["ask", *base, "-S", "c", "two"], isolated).returncode == 0
    body = fake.requests[-1].body
    assert (body["temperature"], body["max_tokens"]) == (0.3, 50)
    assert run(["ask", *base, "-c", "--temperature", "1", "three"], isolated).returncode == 0
    assert fake.requests[-1].body["temperature"] == 1  # a flag still wins


def test_a_roles_temperature_and_options_do_not_outlive_it(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    harness = Harness(fake, isolated.root)
    harness.conversation.templates = Templates(isolated.root / "templates")
    folder = isolated.root / "templates"
    folder.mkdir()
    (folder / "hot.toml").write_text(
        'system = "Hot."\ntemperature = 1.5\n[options]\nmax_tokens = 7\n'
    )
    (folder / "plain.toml").write_text('system = "Plain."\n')
    harness.run(f"/role hot{ENTER}a{ENTER}/role -{ENTER}b{ENTER}/role plain{ENTER}c{ENTER}")
    bodies = [r.body for r in fake.requests]
    assert (bodies[0]["temperature"], bodies[0]["max_tokens"]) == (1.5, 7)
    for body in bodies[1:]:
        assert "temperature" not in body and "max_tokens" not in body


def test_a_broken_template_file_is_listed_and_opens_for_editing(isolated: Isolated) -> None:
    write_template(isolated, "broken", 'description = "x\n')
    listed = run(["templates", "list"], isolated)
    assert listed.returncode == 0 and "commit" in listed.stdout
    assert "broken" in listed.stdout and "file (broken)" in listed.stdout
    rows = {r["name"]: r for r in json.loads(run(["templates", "list", "--json"], isolated).stdout)}
    assert "error" in rows["broken"] and "error" not in rows["commit"]
    fixed = 'description = "x"\nsystem = "y"\n'
    env = {"EDITOR": editor_script(isolated, fixed)}
    assert run(["templates", "edit", "broken"], isolated, env=env).returncode == 0
    assert (isolated.root / "seen.toml").read_text() == 'description = "x\n'  # opened as it was
    assert Templates(isolated.chatcli_home / "config" / "templates").get("broken").system == "y"


def test_a_linked_template_is_refused_before_the_editor_runs(isolated: Isolated) -> None:
    dotfiles = isolated.root / "dot"
    dotfiles.mkdir()
    (dotfiles / "mine.toml").write_text('system = "x"\n')
    config = isolated.chatcli_home / "config"
    config.mkdir(parents=True)
    (config / "templates").symlink_to(dotfiles)
    env = {"EDITOR": editor_script(isolated, 'system = "changed"\n')}
    for name in ("mine", "new"):
        result = run(["templates", "edit", name], isolated, env=env)
        assert result.returncode == 2
        assert "symbolic link" in result.stderr and str(dotfiles / f"{name}.toml") in result.stderr
        assert not (isolated.root / "seen.toml").exists()  # the editor never ran
    assert (dotfiles / "mine.toml").read_text() == 'system = "x"\n'
