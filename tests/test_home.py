"""Issue 13: the home is private and cannot be hijacked; numbers and names in files are checked.

* Every directory chatcli creates is 0700 whatever the umask (``CHATCLI_HOME`` included).
* A file chatcli takes settings or credentials from (config.toml, cookies.json, provider state)
  that another user owns or may write is refused with the command that fixes it (exit 2).
* Nothing inside chatcli's own tree (the data, cache and state directories and below) is
  followed through a symbolic link; links the user made above it keep working.
* ``sessions export -o`` writes through what is not a regular file, and replaces what is.
* Numbers in config.toml, cookie files and state files are checked for range and NaN/inf;
  session names for length and control characters; huge or deeply nested files are refused.

Tests run as root here: the other-owner cases chown to ``nobody`` and are skipped otherwise.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from chatcli.errors import ConfigError, UsageError
from chatcli.repl import history_file
from chatcli.store import Cookie, CookieStore, SessionStore, StateStore
from chatcli.store.cookies import MAX_EXPIRY
from tests.conftest import Isolated, assert_one_line_error, run, run_binary
from tests.servers import FakeOpenAI

#: A uid that is not the test's (``nobody``).
OTHER_UID = 65534
FUTURE = int(time.time()) + 86_400

needs_root = pytest.mark.skipif(
    os.getuid() != 0, reason="giving a file to another user (os.chown) needs root"
)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def data_dir(isolated: Isolated) -> Path:
    return isolated.chatcli_home / "data"


def cookie_export(tmp_path: Path, expiry: str = str(FUTURE)) -> Path:
    path = tmp_path / "cookies.txt"
    path.write_text(f"chat-gpt.org\tFALSE\t/\tFALSE\t{expiry}\tcf_clearance\tVALUE\n")
    return path


def make_session(isolated: Isolated, name: str = "notes") -> str:
    store = SessionStore(data_dir(isolated) / "sessions.db")
    try:
        session = store.create(name=name)
        store.add_message(session.id, "user", "What is a monad?\nIn one line.")
        store.add_message(session.id, "assistant", "A monoid in the category of endofunctors.")
        return session.id
    finally:
        store.close()


def a_place_of_someone_else(tmp_path: Path) -> Path:
    """A directory outside the home, with a file, both readable by all (0755 and 0644)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    elsewhere.chmod(0o755)
    target = elsewhere / "theirs.txt"
    target.write_text("not chatcli's\n")
    target.chmod(0o644)
    return elsewhere


# -- the home is private -------------------------------------------------------------------------


def test_every_directory_chatcli_creates_is_0700_whatever_the_umask(
    isolated: Isolated, tmp_path: Path
) -> None:
    home = tmp_path / "a" / "b" / "home"
    old = os.umask(0)
    try:
        result = run_binary(
            ["cookies", "import", str(cookie_export(tmp_path))],
            isolated,
            env={"CHATCLI_HOME": str(home)},
        )
    finally:
        os.umask(old)
    assert result.returncode == 0, result.stderr
    for directory in (tmp_path / "a", tmp_path / "a" / "b", home, home / "data"):
        assert mode(directory) == 0o700, directory
    assert mode(home / "data" / "cookies.json") == 0o600


def test_the_platform_directories_chatcli_creates_are_0700_too(
    isolated: Isolated, tmp_path: Path
) -> None:
    xdg = tmp_path / "xdg"
    env = {
        "CHATCLI_HOME": "",
        "XDG_DATA_HOME": str(xdg / "data"),
        "XDG_STATE_HOME": str(xdg / "state"),
        "XDG_CONFIG_HOME": str(xdg / "config"),
        "XDG_CACHE_HOME": str(xdg / "cache"),
    }
    old = os.umask(0)
    try:
        result = run(["sessions", "list"], isolated, env=env)
    finally:
        os.umask(old)
    assert result.returncode == 0, result.stderr
    for directory in (xdg, xdg / "data", xdg / "data" / "chatcli"):
        assert mode(directory) == 0o700, directory
    assert mode(xdg / "data" / "chatcli" / "sessions.db") == 0o600


@needs_root
def test_a_data_directory_of_another_user_is_refused(isolated: Isolated, tmp_path: Path) -> None:
    data_dir(isolated).mkdir(parents=True)
    os.chown(data_dir(isolated), OTHER_UID, OTHER_UID)
    result = run_binary(["cookies", "import", str(cookie_export(tmp_path))], isolated)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, str(data_dir(isolated)), "belongs to another user")
    assert list(data_dir(isolated).iterdir()) == []


@needs_root
@pytest.mark.parametrize("planted", ["file", "directory"])
def test_a_config_planted_by_another_user_never_gets_the_key(
    fake: FakeOpenAI, isolated: Isolated, planted: str
) -> None:
    config = isolated.write_config(f'[providers.openai]\nbase_url = "{fake.base_url}"\n')
    owned = config if planted == "file" else config.parent
    os.chown(owned, OTHER_UID, OTHER_UID)
    result = run_binary(
        ["ask", "-p", "openai", "hi"], isolated, env={"OPENAI_API_KEY": "sk-THE-SECRET-KEY"}
    )
    assert result.returncode == 2
    line = assert_one_line_error(result.stderr, f"{owned} belongs to another user (uid 65534)")
    assert "chown 0 " in line
    assert fake.requests == []  # the key went nowhere


@pytest.mark.parametrize(
    ("file_mode", "who"),
    [(0o666, "its group and others"), (0o646, "others"), (0o664, "its group")],
)
def test_a_config_others_may_write_is_refused_with_the_chmod_that_fixes_it(
    isolated: Isolated, file_mode: int, who: str
) -> None:
    config = isolated.write_config('provider = "ollama"\n')
    config.chmod(file_mode)
    result = run(["providers", "--json"], isolated)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, f"{config} is writable by {who}; run: chmod go-w {config}")
    config.chmod(file_mode & ~0o022)  # what the line says to do
    assert run(["providers", "--json"], isolated).returncode == 0


def test_a_config_directory_others_may_write_is_refused(isolated: Isolated) -> None:
    config = isolated.write_config('provider = "ollama"\n')
    config.parent.chmod(0o777)
    result = run_binary(["providers"], isolated)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, f"{config.parent} is writable by its group and others")


def test_a_config_toml_that_is_the_users_own_link_is_followed_and_checked(
    isolated: Isolated, tmp_path: Path
) -> None:
    dotfiles = tmp_path / "dotfiles"
    dotfiles.mkdir()
    real = dotfiles / "chatcli.toml"
    real.write_text('provider = "ollama"\n')
    (isolated.chatcli_home / "config").mkdir(parents=True)
    (isolated.chatcli_home / "config" / "config.toml").symlink_to(real)
    result = run_binary(["providers", "--json"], isolated)
    assert result.returncode == 0, result.stderr
    assert [row["name"] for row in json.loads(result.stdout) if row["default"]] == ["ollama"]
    real.chmod(0o646)
    refused = run_binary(["providers", "--json"], isolated)
    assert refused.returncode == 2
    assert_one_line_error(refused.stderr, f"{real} is writable by others")


def test_cookie_and_state_files_others_may_write_are_refused(isolated: Isolated) -> None:
    cookies = CookieStore(data_dir(isolated) / "cookies.json")
    cookies.save([Cookie("chat-gpt.org", "n", "v")])
    cookies.path.chmod(0o622)
    result = run_binary(["cookies", "list"], isolated)
    assert result.returncode == 2
    assert_one_line_error(
        result.stderr, f"{cookies.path} is writable by its group and others; run: chmod go-w"
    )
    state = StateStore(data_dir(isolated) / "providers" / "gptalk.json", base=data_dir(isolated))
    state.save({"token": "t"})
    state.path.chmod(0o602)
    with pytest.raises(ConfigError, match="is writable by others; run: chmod go-w"):
        state.load()


@needs_root
def test_a_cookie_file_of_another_user_is_refused(isolated: Isolated) -> None:
    cookies = CookieStore(data_dir(isolated) / "cookies.json")
    cookies.save([Cookie("chat-gpt.org", "n", "v")])
    os.chown(cookies.path, OTHER_UID, OTHER_UID)
    result = run_binary(["cookies", "list"], isolated)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, f"{cookies.path} belongs to another user")


# -- no link inside chatcli's tree is followed -----------------------------------------------------


def test_links_above_the_home_and_a_home_that_is_a_link_keep_working(
    isolated: Isolated, tmp_path: Path
) -> None:
    real = tmp_path / "real-home"
    real.mkdir()
    (tmp_path / "disk").mkdir()
    (tmp_path / "mnt").symlink_to(tmp_path / "disk")  # like /home -> /usr/home
    (tmp_path / "home-link").symlink_to(real)
    export = cookie_export(tmp_path)
    for home in (tmp_path / "home-link", tmp_path / "mnt" / "chatcli"):
        result = run_binary(
            ["cookies", "import", str(export)], isolated, env={"CHATCLI_HOME": str(home)}
        )
        assert result.returncode == 0, result.stderr
    assert (real / "data" / "cookies.json").is_file()
    assert (tmp_path / "disk" / "chatcli" / "data" / "cookies.json").is_file()


def test_a_data_link_to_another_directory_is_refused_and_it_is_left_alone(
    isolated: Isolated, tmp_path: Path
) -> None:
    elsewhere = a_place_of_someone_else(tmp_path)
    isolated.chatcli_home.mkdir()
    data_dir(isolated).symlink_to(elsewhere)
    for args in (["cookies", "import", str(cookie_export(tmp_path))], ["sessions", "list"]):
        result = run_binary(args, isolated)
        assert result.returncode == 2
        assert_one_line_error(result.stderr, f"{data_dir(isolated)} is a symbolic link")
    assert mode(elsewhere) == 0o755  # not chmodded
    assert [p.name for p in elsewhere.iterdir()] == ["theirs.txt"]


@pytest.mark.parametrize(
    "name", ["cookies.json", "cookies.json.lock", "sessions.db", "sessions.db-wal"]
)
def test_a_file_link_in_the_data_directory_is_refused_and_its_target_untouched(
    isolated: Isolated, tmp_path: Path, name: str
) -> None:
    target = a_place_of_someone_else(tmp_path) / "theirs.txt"
    data_dir(isolated).mkdir(parents=True)
    (data_dir(isolated) / name).symlink_to(target)
    if name.startswith("cookies"):
        args = ["cookies", "import", str(cookie_export(tmp_path))]
    else:
        args = ["sessions", "rename", "x", "y"]
    result = run_binary(args, isolated)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, f"{data_dir(isolated) / name} is a symbolic link")
    assert target.read_text() == "not chatcli's\n" and mode(target) == 0o644


def test_a_dangling_sessions_db_link_creates_no_database_elsewhere(
    isolated: Isolated, tmp_path: Path
) -> None:
    target = tmp_path / "elsewhere.db"
    data_dir(isolated).mkdir(parents=True)
    (data_dir(isolated) / "sessions.db").symlink_to(target)
    result = run_binary(["sessions", "list"], isolated)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "sessions.db is a symbolic link")
    assert not target.exists()


def test_a_repl_history_link_is_refused_and_its_target_untouched(
    isolated: Isolated, tmp_path: Path
) -> None:
    target = a_place_of_someone_else(tmp_path) / "theirs.txt"
    state_dir = isolated.chatcli_home / "state"
    state_dir.mkdir(parents=True)
    (state_dir / "repl_history").symlink_to(target)
    with pytest.raises(ConfigError, match="repl_history is a symbolic link"):
        history_file(state_dir)
    assert target.read_text() == "not chatcli's\n" and mode(target) == 0o644
    (state_dir / "repl_history").unlink()
    assert mode(history_file(state_dir)) == 0o600  # a file of its own is fine


@pytest.mark.parametrize("link", ["providers/gptalk.json", "providers"])
def test_a_provider_state_link_is_refused(isolated: Isolated, tmp_path: Path, link: str) -> None:
    elsewhere = a_place_of_someone_else(tmp_path)
    state = StateStore(data_dir(isolated) / "providers" / "gptalk.json", base=data_dir(isolated))
    state.path.parent.mkdir(parents=True)
    if link == "providers":
        state.path.parent.rmdir()
    (data_dir(isolated) / link).symlink_to(elsewhere / "theirs.txt" if "." in link else elsewhere)
    acts: list[Callable[[], object]] = [state.load, lambda: state.save({"token": "t"})]
    if link == "providers":
        acts.append(state.locked().__enter__)  # its lock file is in the linked directory too
    for act in acts:
        with pytest.raises(ConfigError) as info:
            act()
        assert f"{data_dir(isolated) / link} is a symbolic link" in str(info.value)
    assert [p.name for p in elsewhere.iterdir()] == ["theirs.txt"] and mode(elsewhere) == 0o755
    assert (elsewhere / "theirs.txt").read_text() == "not chatcli's\n"


# -- sessions export -o ----------------------------------------------------------------------------


def test_export_writes_through_a_fifo(isolated: Isolated, tmp_path: Path) -> None:
    make_session(isolated)
    expected = run_binary(["sessions", "export", "notes"], isolated).stdout
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    result = run_binary(["sessions", "export", "notes", "-o", str(fifo)], isolated)
    reader.join(timeout=10)
    assert result.returncode == 0, result.stderr
    assert received == [expected.encode()]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # still the FIFO, not a file in its place


@pytest.mark.parametrize(
    ("output", "fragment", "code"),
    [
        ("a" * 5000, "File name too long", 1),
        ("/tmp/" + "d/" * 3000 + "x", "File name too long", 1),
        ("/tmp", "/tmp is a directory; give a file name", 2),
        ("/nonexistent/dir/x.md", "cannot write /nonexistent/dir/x.md", 1),
    ],
)
def test_export_to_a_path_that_cannot_be_written_is_one_short_line(
    isolated: Isolated, output: str, fragment: str, code: int
) -> None:
    make_session(isolated)
    result = run_binary(["sessions", "export", "notes", "-o", output], isolated)
    assert result.returncode == code
    assert_one_line_error(result.stderr, fragment)
    assert len(result.stderr) < 300  # a long path is shortened, not quoted whole


@pytest.mark.parametrize("output", ["-", "/dev/stdout"])
def test_export_to_stdout(isolated: Isolated, output: str) -> None:
    make_session(isolated)
    result = run_binary(["sessions", "export", "notes", "--format", "json", "-o", output], isolated)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["session"]["name"] == "notes"
    assert os.path.islink("/dev/stdout")  # written through, never replaced


def test_export_to_a_terminal_by_its_path_is_sanitized_like_stdout(isolated: Isolated) -> None:
    import pty

    store = SessionStore(data_dir(isolated) / "sessions.db")
    session = store.create(name="hostile")
    store.add_message(session.id, "assistant", "title \x1b]0;PWNED\x07 and \x9b2J end")
    store.close()
    controller, terminal = pty.openpty()
    try:
        result = run_binary(["sessions", "export", "hostile", "-o", os.ttyname(terminal)], isolated)
        shown = os.read(controller, 65536)
    finally:
        os.close(terminal)
        os.close(controller)
    assert result.returncode == 0, result.stderr
    assert b"title \xe2\x90\x9b]0;PWNED" in shown  # ESC made visible, as on stdout
    assert b"\x1b" not in shown and b"\x07" not in shown and b"\xc2\x9b" not in shown


def test_export_replaces_a_regular_file_atomically_and_writes_through_a_link(
    isolated: Isolated, tmp_path: Path
) -> None:
    make_session(isolated)
    regular = tmp_path / "notes.md"
    regular.write_text("old\n")
    before = regular.stat().st_ino
    assert (
        run_binary(["sessions", "export", "notes", "-f", "-o", str(regular)], isolated).returncode
        == 0
    )
    assert regular.read_text().startswith("# notes")
    assert regular.stat().st_ino != before and mode(regular) == 0o600  # a new file, renamed in
    link = tmp_path / "notes-link.md"
    link.symlink_to(regular)
    regular.write_text("old\n")
    assert (
        run_binary(["sessions", "export", "notes", "-f", "-o", str(link)], isolated).returncode == 0
    )
    assert link.is_symlink() and regular.read_text().startswith("# notes")


# -- numbers in files ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "fragment"),
    [
        ("timeout = nan", "timeout must be a positive number of seconds (0.001 to 86400), not nan"),
        ("timeout = inf", "not inf"),
        ("timeout = 0", "not 0"),
        ("timeout = 1e9", "not 1000000000.0"),
        ("temperature = 99", "temperature must be a number (0 to 2), not 99"),
        ("temperature = nan", "not nan"),
        ("temperature = -0.5", "not -0.5"),
    ],
)
def test_config_numbers_out_of_range_are_refused(
    isolated: Isolated, setting: str, fragment: str
) -> None:
    config = isolated.write_config(setting + "\n")
    result = run(["providers"], isolated)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, str(config), fragment)


def test_a_temperature_out_of_range_is_never_sent(fake: FakeOpenAI, isolated: Isolated) -> None:
    isolated.write_config("temperature = 99\n")
    result = run_binary(
        ["ask", "-p", "ollama", "-m", "m", "--base-url", fake.base_url, "hi"], isolated
    )
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "temperature must be a number (0 to 2), not 99")
    assert fake.requests == []


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("fallback = " + "[" * 50_000 + "]" * 50_000 + "\n", "nested too deeply"),
        ("a = " + "{b = " * 5_000 + "1" + "}" * 5_000 + "\n", "nested too deeply"),
        ("# " + "x" * (2 * 1024 * 1024) + "\n", "is larger than 1 MiB"),
    ],
    ids=["arrays", "tables", "huge"],
)
def test_an_absurd_config_is_one_line(isolated: Isolated, text: str, fragment: str) -> None:
    config = isolated.write_config(text)
    result = run_binary(["providers"], isolated)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, str(config), fragment)


@pytest.mark.parametrize("expiry", ["inf", "-inf", "nan", "1e400", "1e300"])
def test_a_cookie_export_with_an_absurd_expiry_is_refused(
    isolated: Isolated, tmp_path: Path, expiry: str
) -> None:
    result = run_binary(["cookies", "import", str(cookie_export(tmp_path, expiry))], isolated)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "cookies.txt line 1: expiry", "out of range")
    listed = run_binary(["cookies", "list"], isolated)
    assert listed.returncode == 0 and listed.stdout == ""


@pytest.mark.parametrize("expiry", ["Infinity", "NaN", "1e400", "-1e400", "1" + "0" * 400])
def test_a_json_cookie_export_with_an_absurd_expiry_is_refused(
    isolated: Isolated, tmp_path: Path, expiry: str
) -> None:
    export = tmp_path / "cookies.json"
    export.write_text(f'[{{"domain": "a.org", "name": "n", "value": "v", "expires": {expiry}}}]')
    result = run(["cookies", "import", str(export)], isolated)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "item 0: expiry", "out of range")


def test_a_stored_cookie_with_an_infinite_expiry_costs_that_cookie_only(
    isolated: Isolated,
) -> None:
    # What an earlier chatcli wrote after importing an expiry of inf.
    data_dir(isolated).mkdir(parents=True)
    stored = data_dir(isolated) / "cookies.json"
    stored.write_text(
        '{"version": 1, "cookies": ['
        '{"domain": "a.org", "name": "bad", "value": "v", "expires": Infinity},'
        '{"domain": "a.org", "name": "worse", "value": "v", "expires": NaN},'
        f'{{"domain": "a.org", "name": "good", "value": "v", "expires": {FUTURE}}}]}}'
    )
    stored.chmod(0o600)
    result = run_binary(["cookies", "list"], isolated)
    assert result.returncode == 0, result.stderr
    assert [line.split("\t")[1] for line in result.stdout.splitlines()] == ["good"]
    assert "skipped malformed entry 0" in result.stderr


def test_a_browsers_expiry_beyond_year_9999_is_kept_as_its_last_second(
    isolated: Isolated,
) -> None:
    store = CookieStore(data_dir(isolated) / "cookies.json")
    store.save([Cookie("a.org", "far", "v", expires=9.2e15)])  # a browser's "never"
    assert [c.expires for c in store.all()] == [MAX_EXPIRY]
    with pytest.raises(UsageError, match="is not a time"):
        store.save([Cookie("a.org", "nan", "v", expires=float("nan"))])
    result = run(["cookies", "list"], isolated)
    assert result.returncode == 0 and "until 9999-12-31" in result.stdout


def test_a_100_mib_cookie_file_is_refused_before_it_is_read(
    isolated: Isolated, tmp_path: Path
) -> None:
    huge = tmp_path / "cookies.txt"
    with huge.open("wb") as file:
        file.truncate(100 * 1024 * 1024)  # sparse: the size is all that is looked at
    started = time.monotonic()
    result = run_binary(["cookies", "import", str(huge)], isolated)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, f"{huge} is larger than 8 MiB")
    assert time.monotonic() - started < 10


def test_a_deeply_nested_cookie_export_is_one_line(isolated: Isolated, tmp_path: Path) -> None:
    nested = tmp_path / "cookies.json"
    nested.write_text("[" * 100_000 + "]" * 100_000)
    result = run_binary(["cookies", "import", str(nested)], isolated)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "nested too deeply")


@pytest.mark.parametrize(
    "content",
    [b"[" * 100_000 + b"]" * 100_000, b'{"cookies": []' + b" " * (9 * 1024 * 1024) + b"}"],
    ids=["nested", "huge"],
)
def test_an_absurd_stored_cookie_file_is_moved_aside(isolated: Isolated, content: bytes) -> None:
    data_dir(isolated).mkdir(parents=True)
    stored = data_dir(isolated) / "cookies.json"
    stored.write_bytes(content)
    stored.chmod(0o600)
    result = run_binary(["cookies", "list"], isolated)
    assert result.returncode == 0, result.stderr
    assert "moved it to" in result.stderr
    aside = list(data_dir(isolated).glob("cookies.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == content  # kept, not lost


@pytest.mark.parametrize(
    "content",
    ['{"token": "t", "uses": 1e400}', '{"token": "t", "expires_at": NaN}',
     '{"token": "t", "uses": 1e300}', "[" * 100_000 + "]" * 100_000],
    ids=["inf", "nan", "huge", "nested"],
)  # fmt: skip
def test_a_state_file_with_an_absurd_number_is_moved_aside(
    isolated: Isolated, content: str
) -> None:
    state = StateStore(data_dir(isolated) / "providers" / "gptalk.json")
    state.path.parent.mkdir(parents=True)
    state.path.write_text(content)
    state.path.chmod(0o600)
    assert state.load() == {}
    aside = list(state.path.parent.glob("gptalk.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text() == content
    assert state.load() == {}  # and chatcli carries on


def test_a_state_file_with_1e400_no_longer_breaks_every_run(isolated: Isolated) -> None:
    from tests.fakes.gptalk import FakeGPTalk

    state = data_dir(isolated) / "providers" / "gptalk.json"
    state.parent.mkdir(parents=True)
    state.write_text('{"token": "t", "expires_at": 1e400, "uses": 1e400}')
    state.chmod(0o600)
    fake = FakeGPTalk()
    with fake.serve():
        result = run_binary(["ask", "-p", "gptalk", "--base-url", fake.base_url, "hi"], isolated)
    assert result.returncode == 0, result.stderr
    assert "moved it to" in result.stderr and "Traceback" not in result.stderr
    assert fake.logins == 1
    assert json.loads(state.read_text())["uses"] == 1


def test_an_absurd_list_limit_means_all(isolated: Isolated) -> None:
    make_session(isolated)
    huge = str(10**23)
    listed = run_binary(["sessions", "list", "-n", huge], isolated)
    assert listed.returncode == 0, listed.stderr
    assert "\tnotes\t" in listed.stdout
    found = run(["sessions", "search", "monad", "-n", huge], isolated)
    assert found.returncode == 0 and "What is a monad?" in found.stdout


# -- session names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("a\tb", "cannot hold control characters (it has '\\t')"),
        ("red\x1b[31m", "(it has '\\x1b')"),
        ("one\u2028two", "(it has '\\u2028')"),
        ("x" * 101, "at most 100 characters, not 101"),
        ("   ", "cannot be empty"),
    ],
)
def test_a_session_name_is_checked_by_the_store(tmp_path: Path, name: str, fragment: str) -> None:
    store = SessionStore(tmp_path / "sessions.db")
    with pytest.raises(UsageError) as info:
        store.create(name=name)
    assert fragment in str(info.value)
    session = store.create()
    with pytest.raises(UsageError):
        store.rename(session.id, name)
    assert [s.name for s in store.recent()] == [None]
    assert store.rename(session.id, "x" * 100).name == "x" * 100


def test_a_bad_session_name_is_one_line_from_every_command(
    fake: FakeOpenAI, isolated: Isolated
) -> None:
    make_session(isolated)
    renamed = run_binary(["sessions", "rename", "notes", "a\tb"], isolated)
    assert renamed.returncode == 2
    assert_one_line_error(renamed.stderr, "cannot hold control characters")
    asked = run_binary(
        ["ask", "-p", "ollama", "-m", "m", "--base-url", fake.base_url, "-S", "x" * 101, "hi"],
        isolated,
    )
    assert asked.returncode == 2
    assert_one_line_error(asked.stderr, "a session name is at most 100 characters")
    assert fake.requests == []
    listed = run_binary(["sessions", "list"], isolated)
    assert [line.split("\t")[1] for line in listed.stdout.splitlines()] == ["notes"]
