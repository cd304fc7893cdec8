"""The five seed providers against their strict fakes: Python API, the real binary, failures."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from chatcli.core import Message
from chatcli.errors import MissingAuthError, ModelNotSupportedError, ProviderError
from chatcli.providers import Registry, format_prompt
from chatcli.providers.aichat import Aichat
from chatcli.providers.chatgptt import ChatGptt
from chatcli.providers.fakegpt import FakeGpt
from chatcli.providers.gptalk import GPTalk
from chatcli.providers.opchatgpts import Opchatgpts
from chatcli.store import Cookie, Stores
from tests.conftest import CHATCLI, Isolated, assert_one_line_error, run
from tests.fakes.aichat import FakeAichat
from tests.fakes.chatgptt import FakeChatGptt
from tests.fakes.fakegpt import FakeFakeGpt
from tests.fakes.gptalk import FakeGPTalk
from tests.fakes.opchatgpts import FakeOpchatgpts
from tests.fakes.seed import SeedFake
from tests.servers import ForwardProxy

FAKES: dict[str, type[SeedFake]] = {
    "gptalk": FakeGPTalk,
    "chatgptt": FakeChatGptt,
    "opchatgpts": FakeOpchatgpts,
    "fakegpt": FakeFakeGpt,
    "aichat": FakeAichat,
}
AICHAT_COOKIES = {"cf_clearance": "abc123", "session": "s1"}

pytestmark = pytest.mark.usefixtures("fast_retries")


def expected_answer(fake: Any) -> str:
    return "".join(fake.pieces) if hasattr(fake, "pieces") else str(fake.answer)


@pytest.fixture(params=list(FAKES))
def served(request: pytest.FixtureRequest, isolated: Isolated) -> Iterator[tuple[str, Any]]:
    """Each provider's fake, served; Aichat's cookies imported into the isolated store."""
    name: str = request.param
    fake = FAKES[name]()
    if name == "aichat":
        Stores(isolated.chatcli_home / "data").cookies.save(
            [
                Cookie("chat-gpt.org", k, v, expires=time.time() + 3600)
                for k, v in AICHAT_COOKIES.items()
            ]
        )
    with fake.serve():
        yield name, fake


def ask(name: str, fake: Any, *args: str) -> list[str]:
    return ["ask", "-p", name, "--base-url", fake.base_url, *args]


# -- the Python API, as the seed documents show it ------------------------------------------------


def collect(
    provider: Any, messages: list[Message], model: str | None = None, **kwargs: Any
) -> list[str]:
    model = provider.default_model if model is None else model

    async def go() -> list[str]:
        if provider is Aichat:
            return [await provider.create_async(model=model, messages=messages, **kwargs)]
        return [
            piece
            async for piece in provider.create_async_generator(
                model=model, messages=messages, proxy=None, **kwargs
            )
        ]

    return asyncio.run(go())


CLASSES = {
    "gptalk": GPTalk,
    "chatgptt": ChatGptt,
    "opchatgpts": Opchatgpts,
    "fakegpt": FakeGpt,
    "aichat": Aichat,
}


def sent_prompt(name: str, fake: Any) -> Any:
    """What the service received as the conversation, in its own shape."""
    last = (
        fake.requests[-1]
        if name != "fakegpt"
        else [r for r in fake.requests if r.path == "/api/conversation"][-1]
    )
    if name == "gptalk":
        chat = [r for r in fake.requests if r.path == "/api/chatgpt/chatapi/text"][-1]
        return chat.json["content"]
    if name == "chatgptt":
        return last.form["message"]
    if name == "opchatgpts":
        return last.json["messages"]
    if name == "fakegpt":
        return last.json["messages"][0]["content"]["parts"][0]
    return last.json["message"]


def test_python_api_two_turns_carry_the_first_exchange(
    served: tuple[str, Any], isolated: Isolated
) -> None:
    name, fake = served
    provider = CLASSES[name]
    store = Stores(isolated.chatcli_home / "data")
    first: list[Message] = [{"role": "user", "content": "What is 2+2?"}]
    pieces = collect(provider, first, base_url=fake.base_url, store=store)
    answer = "".join(pieces)
    assert answer == expected_answer(fake)
    if provider.supports_stream and name != "chatgptt":
        assert len(pieces) > 1, "a streaming provider yields the answer in pieces"
    assert sent_prompt(name, fake) == (first if name == "opchatgpts" else "What is 2+2?")

    second: list[Message] = [
        *first,
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "And 3+3?"},
    ]
    assert "".join(collect(provider, second, base_url=fake.base_url, store=store)) == answer
    if name == "opchatgpts":
        assert sent_prompt(name, fake) == second  # the message list, as given
    else:
        assert sent_prompt(name, fake) == format_prompt(second)
        assert sent_prompt(name, fake) == (
            f"User: What is 2+2?\nAssistant: {answer}\nUser: And 3+3?\nAssistant:"
        )


def test_system_message_reaches_each_protocol(served: tuple[str, Any], isolated: Isolated) -> None:
    name, fake = served
    messages: list[Message] = [
        {"role": "system", "content": "Be brief"},
        {"role": "user", "content": "Hi"},
    ]
    store = Stores(isolated.chatcli_home / "data")
    collect(CLASSES[name], messages, base_url=fake.base_url, store=store)
    expected = messages if name == "opchatgpts" else "System: Be brief\nUser: Hi\nAssistant:"
    assert sent_prompt(name, fake) == expected


# -- the real binary ------------------------------------------------------------------------------


def test_binary_answers_with_the_system_prompt_carried_by_each_protocol(
    served: tuple[str, Any], isolated: Isolated
) -> None:
    name, fake = served
    result = run([*ask(name, fake), "--system", "Be brief", "What is 2+2?"], isolated)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected_answer(fake) + "\n"
    assert result.stderr == ""
    if name == "opchatgpts":
        assert sent_prompt(name, fake) == [
            {"role": "system", "content": "Be brief"},
            {"role": "user", "content": "What is 2+2?"},
        ]
    else:
        assert sent_prompt(name, fake) == "System: Be brief\nUser: What is 2+2?\nAssistant:"


def test_binary_through_a_forward_proxy(served: tuple[str, Any], isolated: Isolated) -> None:
    name, fake = served
    with ForwardProxy() as proxy:
        result = run([*ask(name, fake), "--proxy", proxy.url, "hi"], isolated)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected_answer(fake) + "\n"
    # Every request the service saw came through the proxy.
    through = [urlsplit(line.split(" ", 1)[1]) for line in proxy.seen]
    assert {f"{u.scheme}://{u.netloc}" for u in through} == {fake.base_url}
    assert [u.path or "/" for u in through] == [r.path for r in fake.requests]


def test_cloudflare_page_is_one_clear_error(isolated: Isolated) -> None:
    for name in ("gptalk", "chatgptt", "aichat"):  # the fakes that can play a Cloudflare page
        fake = FAKES[name]()
        fake.mode = "cloudflare"
        if name == "aichat":
            Stores(isolated.chatcli_home / "data").cookies.save(
                [Cookie("chat-gpt.org", k, v) for k, v in AICHAT_COOKIES.items()]
            )
        with fake.serve():
            result = run([*ask(name, fake), "hi"], isolated)
        assert result.returncode == 1, (name, result.stderr)
        assert result.stdout == ""
        assert_one_line_error(result.stderr, f"{name}: blocked by Cloudflare")


@pytest.mark.parametrize(
    ("name", "mode", "fragment", "partial"),
    [
        ("gptalk", "cut", "ended before [DONE]", True),
        ("gptalk", "broken_line", "unexpected stream line", True),
        ("gptalk", "reject_always", "not authorised (HTTP 401", False),
        ("gptalk", "ratelimit", "rate limited (HTTP 429", False),
        (
            "chatgptt",
            "missing_nonce",
            "Required authentication tokens not found in page HTML",
            False,
        ),
        ("chatgptt", "error_json", "the site reported: Nonce expired", False),
        ("chatgptt", "ratelimit", "rate limited (HTTP 429", False),
        ("opchatgpts", "error_event", "the site reported: Rate limit exceeded", True),
        ("opchatgpts", "broken_line", "unexpected stream line", True),
        ("opchatgpts", "no_type", "unexpected stream line", True),
        ("opchatgpts", "cut", "ended before its end event", True),
        ("fakegpt", "empty_accounts", "no shared accounts available", False),
        ("fakegpt", "all_busy", "no shared accounts available (all are busy)", False),
        ("fakegpt", "no_text", "No valid response", False),
        ("fakegpt", "cut", "ended before [DONE]", True),
        ("fakegpt", "reject_always", "not authorised (HTTP 401", False),
        ("aichat", "falsy", "the site refused: Invalid cookie", False),
    ],
)
def test_failure_modes_end_in_one_line_and_exit_1(
    isolated: Isolated, name: str, mode: str, fragment: str, partial: bool
) -> None:
    fake: Any = FAKES[name]()
    fake.mode = mode
    if name == "aichat":
        Stores(isolated.chatcli_home / "data").cookies.save(
            [Cookie("chat-gpt.org", k, v) for k, v in AICHAT_COOKIES.items()]
        )
    with fake.serve():
        result = run([*ask(name, fake), "--retries", "0", "hi"], isolated)
    assert result.returncode == 1, result.stderr
    assert_one_line_error(result.stderr, f"{name}: ", fragment)
    if partial:
        # Text shown before the failure stays; it is a prefix of the answer.
        shown = result.stdout.rstrip("\n")
        assert shown and expected_answer(fake).startswith(shown), result.stdout
    else:
        assert result.stdout == ""


def test_chatgptt_accepts_single_quoted_attributes(isolated: Isolated) -> None:
    fake = FakeChatGptt()
    fake.mode = "single_quotes"
    with fake.serve():
        result = run([*ask("chatgptt", fake), "hi"], isolated)
    assert (result.returncode, result.stdout) == (0, fake.answer + "\n"), result.stderr


def test_chatgptt_validates_the_model_without_sending_it(isolated: Isolated) -> None:
    with pytest.raises(ModelNotSupportedError, match="chatgptt: model 'gpt-5'"):
        collect(
            ChatGptt, [{"role": "user", "content": "x"}], "gpt-5", base_url="http://localhost:9"
        )
    fake = FakeChatGptt()
    with fake.serve():
        result = run([*ask("chatgptt", fake), "-m", "gpt-4o-mini", "hi"], isolated)
    assert result.returncode == 0, result.stderr
    assert "gpt-4o-mini" not in json.dumps(fake.requests[-1].form)


def test_gptalk_text_that_stops_extending_emits_nothing_for_that_event(isolated: Isolated) -> None:
    fake = FakeGPTalk()
    fake.mode = "not_extending"
    with fake.serve():
        result = run([*ask("gptalk", fake), "hi"], isolated)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "".join(fake.pieces) + "\n"


# -- auth state and cookies across processes -----------------------------------------------------


def test_gptalk_seven_one_shot_runs_log_in_exactly_twice(isolated: Isolated) -> None:
    fake = FakeGPTalk()
    with fake.serve():
        for _ in range(7):
            result = run([*ask("gptalk", fake), "hi"], isolated)
            assert result.returncode == 0, result.stderr
    assert fake.logins == 2
    state = isolated.chatcli_home / "data" / "providers" / "gptalk.json"
    assert json.loads(state.read_text())["uses"] == 2
    assert oct(state.stat().st_mode & 0o777) == "0o600"


def test_gptalk_expired_token_logs_in_again_without_being_refused(isolated: Isolated) -> None:
    fake = FakeGPTalk()
    fake.token_ttl = 1
    with fake.serve():
        assert run([*ask("gptalk", fake), "hi"], isolated).returncode == 0
        time.sleep(2.1)  # past expires_at
        assert run([*ask("gptalk", fake), "hi"], isolated).returncode == 0
    assert fake.logins == 2
    assert fake.rejections == []  # chatcli saw the expiry itself; the site never had to refuse


@pytest.mark.parametrize("name", ["gptalk", "fakegpt"])
def test_a_refused_token_logs_in_once_more_and_retries_once(isolated: Isolated, name: str) -> None:
    fake: Any = FAKES[name]()
    with fake.serve():
        assert run([*ask(name, fake), "hi"], isolated).returncode == 0
        fake.mode = "reject_once"
        result = run([*ask(name, fake), "hi"], isolated)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected_answer(fake) + "\n"
    assert fake.logins == 2


def test_fakegpt_token_and_cookies_persist_across_processes(isolated: Isolated) -> None:
    fake = FakeFakeGpt()
    with fake.serve():
        for _ in range(3):
            result = run([*ask("fakegpt", fake), "hi"], isolated)
            assert result.returncode == 0, result.stderr
    assert fake.logins == 1
    stored = Stores(isolated.chatcli_home / "data").cookies.for_domain("chat-shared2.zhile.io")
    assert stored, "the login cookie is kept under the service's own domain"


def test_chatgptt_saves_the_page_cookies_and_sends_them_next_time(isolated: Isolated) -> None:
    fake = FakeChatGptt()
    with fake.serve():
        assert run([*ask("chatgptt", fake), "hi"], isolated).returncode == 0
        stored = Stores(isolated.chatcli_home / "data").cookies.for_domain("chatgptt.me")
        assert set(fake.page_cookies) <= set(stored)
        assert run([*ask("chatgptt", fake), "again"], isolated).returncode == 0
    page_requests = [r for r in fake.requests if r.method == "GET"]
    assert set(stored) <= set(page_requests[-1].cookies)


def test_aichat_without_cookies_fails_before_any_request(isolated: Isolated) -> None:
    fake = FakeAichat()
    with fake.serve():
        result = run([*ask("aichat", fake), "hi"], isolated)
    assert result.returncode == 1
    assert_one_line_error(
        result.stderr,
        "aichat: needs cookies for chat-gpt.org",
        "`chatcli cookies import --browser chrome`",
        "`chatcli cookies import FILE`",
    )
    assert fake.requests == []
    with pytest.raises(MissingAuthError):
        collect(Aichat, [{"role": "user", "content": "x"}], store=Stores(isolated.root / "empty"))


def test_aichat_uses_imported_cookies_of_its_domain_at_another_root(isolated: Isolated) -> None:
    export = isolated.root / "cookies.txt"
    future = int(time.time()) + 3600
    rows = [f".chat-gpt.org\tTRUE\t/\tTRUE\t{future}\t{k}\t{v}" for k, v in AICHAT_COOKIES.items()]
    rows.append(f"chat-gpt.org\tFALSE\t/\tFALSE\t{int(time.time()) - 5}\texpired\tzzz")
    rows.append(f"other.site\tFALSE\t/\tFALSE\t{future}\tforeign\tyyy")
    export.write_text("# Netscape HTTP Cookie File\n" + "\n".join(rows) + "\n")
    assert run(["cookies", "import", str(export)], isolated).returncode == 0
    fake = FakeAichat()
    with fake.serve():
        result = run([*ask("aichat", fake), "--temperature", "0.5", "hi"], isolated)
    assert result.returncode == 0, result.stderr
    assert result.stdout == fake.answer + "\n"
    # Exactly the live cookies of chat-gpt.org reached the fake (it checks too).
    assert fake.requests[-1].cookies == AICHAT_COOKIES


def test_aichat_python_api_takes_cookies_directly(isolated: Isolated) -> None:
    fake = FakeAichat()
    fake.expected_temperature, fake.expected_top_p = 0.2, 0.9
    with fake.serve():
        answer = collect(
            Aichat,
            [{"role": "user", "content": "hi"}],
            base_url=fake.base_url,
            cookies=AICHAT_COOKIES,
            temperature=0.2,
            top_p=0.9,
            store=Stores(isolated.root / "d"),
        )
    assert answer == [fake.answer]


def test_every_seed_provider_is_registered_with_its_flags() -> None:
    registry = Registry.builtin()
    for name, cls in CLASSES.items():
        assert registry.get(name) is cls
    assert GPTalk.supports_stream and GPTalk.supports_gpt_35_turbo
    assert not GPTalk.supports_message_history
    assert ChatGptt.supports_system_message and ChatGptt.supports_message_history
    assert Opchatgpts.supports_message_history and Opchatgpts.supports_stream
    assert not Aichat.supports_stream and Aichat.needs_auth
    assert FakeGpt.supports_gpt_35_turbo


def test_provider_errors_name_the_provider(isolated: Isolated) -> None:
    with pytest.raises(ProviderError) as info:
        collect(GPTalk, [{"role": "user", "content": "x"}], base_url="http://localhost:9",
                store=Stores(isolated.root / "d"))  # fmt: skip
    assert str(info.value).startswith("gptalk: cannot connect to http://localhost:9")


def test_files_written_for_web_providers_are_private(isolated: Isolated) -> None:
    fake = FakeFakeGpt()
    with fake.serve():
        assert run([*ask("fakegpt", fake), "hi"], isolated).returncode == 0
    data = isolated.chatcli_home / "data"
    for path in [data / "cookies.json", data / "providers" / "fakegpt.json"]:
        assert oct(path.stat().st_mode & 0o777) == "0o600", path
    for directory in [data, data / "providers"]:
        assert oct(directory.stat().st_mode & 0o777) == "0o700", directory
    assert not any(p.name.endswith(".tmp") for p in Path(data).rglob("*"))


def test_gptalk_processes_running_together_never_overspend_a_token(isolated: Isolated) -> None:
    fake = FakeGPTalk()
    with fake.serve():
        assert run([*ask("gptalk", fake), "hi"], isolated).returncode == 0
        processes = [
            subprocess.Popen(
                [str(CHATCLI), *ask("gptalk", fake), f"hi {i}"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=isolated.env,
            )
            for i in range(6)
        ]
        for process in processes:
            _, err = process.communicate(timeout=60)
            assert process.returncode == 0, err
    # 7 chats: 5 on the first token, 2 on the second. The fake flags a sixth use as a violation.
    assert fake.logins == 2
    assert fake.rejections == []


def test_fakegpt_event_shapes_that_are_not_messages_are_ignored() -> None:
    odd = [
        '{"message": {"author": "assistant", "content": {"parts": ["x"]}}}',
        '{"message": {"author": {"role": "assistant"}, "metadata": {"message_type": "next"},'
        ' "content": "hi"}}',
        '{"message": {"author": {"role": "assistant"}, "metadata": {"message_type": "next"},'
        ' "content": {"parts": [3]}}}',
        '{"message": null}',
        "[1, 2]",
    ]
    for line in odd:
        assert FakeGpt._assistant_text(line) is None, line


def test_an_empty_conversation_is_refused(isolated: Isolated) -> None:
    from chatcli.errors import UsageError

    for provider in CLASSES.values():
        with pytest.raises(UsageError, match="no messages to send"):
            collect(provider, [], base_url="http://localhost:9", store=Stores(isolated.root / "d"))


def test_binary_two_turns_with_continue_carry_the_first_exchange(
    served: tuple[str, Any], isolated: Isolated
) -> None:
    name, fake = served
    first = run([*ask(name, fake), "What is 2+2?"], isolated)
    assert first.returncode == 0, first.stderr
    answer = expected_answer(fake)
    # -c continues the last session with its own provider; only the root is repeated.
    second = run(["ask", "-c", "--base-url", fake.base_url, "And 3+3?"], isolated)
    assert second.returncode == 0, second.stderr
    conversation = [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "And 3+3?"},
    ]
    if name == "opchatgpts":
        assert sent_prompt(name, fake) == conversation
    else:
        assert sent_prompt(name, fake) == format_prompt(conversation)  # type: ignore[arg-type]
