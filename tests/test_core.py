"""The provider core, the error tree, configuration and the pieces of the CLI that are pure."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from chatcli.cli import compose_message
from chatcli.clikit import parse_option_value, parse_options
from chatcli.config import Paths, load_settings
from chatcli.core import Capabilities, ChatMessage, ChatRequest, Finish, TextDelta
from chatcli.errors import (
    ConfigError,
    ModelNotSupportedError,
    ProtocolError,
    ProviderError,
    ResponseStatusError,
    StreamInterruptedError,
    UsageError,
    check_url,
    redact_credentials,
    redact_url,
)
from chatcli.providers import (
    AsyncGeneratorProvider,
    AsyncProvider,
    BaseProvider,
    ProviderConfig,
    ProviderModelMixin,
    Registry,
    format_prompt,
    get_provider,
)
from chatcli.providers.http import describe_error_body, parse_retry_after
from chatcli.providers.proxy import resolve_proxy
from chatcli.render import sanitize
from chatcli.turn import backoff

# -- format_prompt and the model mixin ------------------------------------------------------------


def test_format_prompt_with_one_message_returns_its_content_unchanged() -> None:
    assert format_prompt([{"role": "user", "content": "  Hi\nthere "}]) == "  Hi\nthere "


def test_format_prompt_flattens_a_conversation_exactly() -> None:
    messages = [
        {"role": "system", "content": "Be brief"},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "2+2?"},
    ]
    assert format_prompt(messages) == (  # type: ignore[arg-type]
        "System: Be brief\nUser: Hi\nAssistant: Hello\nUser: 2+2?\nAssistant:"
    )


class Modelled(ProviderModelMixin, AsyncGeneratorProvider):
    name = "modelled"
    default_model = "gpt-4o"
    models: ClassVar = ["gpt-4", "gpt-4o", "gpt-4o-mini"]
    model_aliases: ClassVar = {"four": "gpt-4"}


def test_get_model_default_alias_and_known() -> None:
    assert Modelled.get_model("") == "gpt-4o"
    assert Modelled.get_model(None) == "gpt-4o"
    assert Modelled.get_model("four") == "gpt-4"
    assert Modelled.get_model("gpt-4o-mini") == "gpt-4o-mini"


def test_get_model_unknown_names_the_provider() -> None:
    with pytest.raises(ModelNotSupportedError) as info:
        Modelled.get_model("llama")
    assert str(info.value).startswith("modelled: model 'llama' is not supported")


def test_both_seed_kinds_stream_events_through_the_typed_entry_point() -> None:
    # Classes written to the seed API alone (a classmethod yielding or returning text) are
    # driven through the typed core like any other: text becomes TextDelta, then a Finish.
    import asyncio

    class Whole(AsyncProvider):
        name = "whole"

        @classmethod
        async def create_async(cls, model: str, messages: Any, proxy: Any = None, **kw: Any) -> str:
            return f"{model}:{messages[-1]['content']}:{proxy}:{kw.get('flag')}"

    class Pieces(AsyncGeneratorProvider):
        name = "pieces"

        @classmethod
        async def create_async_generator(
            cls, model: str, messages: Any, proxy: Any = None, **kw: Any
        ) -> Any:
            for part in ("a", "b"):
                yield part

    async def collect(provider: BaseProvider) -> list[Any]:
        request = ChatRequest(
            messages=(ChatMessage.text("user", "q"),), model="m", options={"flag": 1}
        )
        return [event async for event in provider.stream(request)]

    whole = Whole(ProviderConfig(proxy="px"))
    assert asyncio.run(collect(whole)) == [TextDelta("m:q:px:1"), Finish("stop")]
    assert asyncio.run(collect(Pieces())) == [TextDelta("a"), TextDelta("b"), Finish("stop")]
    assert not Whole.capabilities().stream and Pieces.capabilities().stream


def test_a_provider_with_no_stream_of_its_own_says_so() -> None:
    import asyncio

    class Nothing(AsyncGeneratorProvider):
        name = "nothing"

    with pytest.raises(NotImplementedError):
        asyncio.run(first_event(Nothing().stream(ChatRequest(messages=()))))


def test_options_are_checked_against_what_the_provider_declares() -> None:
    gptalk = get_provider("gptalk")
    no_options = r"gptalk: unknown option -o max_tokens \(it takes no -o options\)"
    with pytest.raises(UsageError, match=no_options):
        gptalk.check_options({"max_tokens": 5})
    aichat = get_provider("aichat")
    assert aichat.check_options({"top_p": 0.5}) == {"top_p": 0.5}
    assert aichat.check_options({"top_p": 1}) == {"top_p": 1}  # a whole number is a number
    with pytest.raises(UsageError, match="known: top_p"):
        aichat.check_options({"top_k": 5})
    with pytest.raises(UsageError, match=r"-o top_p 'x': expected a number"):
        aichat.check_options({"top_p": "x"})
    # The OpenAI protocol forwards what it does not know, but still checks what it does.
    openai = get_provider("openai")
    assert openai.check_options({"logit_bias": {"1": 2}}) == {"logit_bias": {"1": 2}}
    with pytest.raises(UsageError, match="max_tokens"):
        openai.check_options({"max_tokens": "lots"})
    for reserved in ("model", "stream", "temperature", "api_key"):
        with pytest.raises(UsageError, match="not a provider option"):
            openai.check_options({reserved: 1})


def test_capabilities_are_declared_data() -> None:
    assert get_provider("ollama").capabilities().model_listing
    assert not get_provider("gptalk").capabilities().model_listing
    assert get_provider("chatgptt").capabilities() == Capabilities(
        stream=True, system_message=True, message_history=True
    )
    assert not get_provider("aichat").capabilities().stream


def test_provider_errors_are_runtime_errors_as_the_seeds_were() -> None:
    # The seeds raised RuntimeError and their callers catch it.
    for error in (ProviderError("x"), ProtocolError("x"), StreamInterruptedError("x")):
        assert isinstance(error, RuntimeError)
    assert not isinstance(UsageError("x"), RuntimeError)


async def first_event(events: AsyncIterator[Any]) -> Any:
    return await anext(events)


# -- registry -------------------------------------------------------------------------------------


def test_registry_has_every_preset() -> None:
    names = set(Registry.builtin().names())
    assert {
        "openai", "ollama", "lmstudio", "llamacpp", "vllm", "openrouter", "groq", "deepseek",
        "mistral", "together",
    } <= names  # fmt: skip
    assert get_provider("OpenAI").key_env == "OPENAI_API_KEY"  # type: ignore[attr-defined]


def test_registry_unknown_name_lists_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        Registry.builtin().get("nope")
    assert "unknown provider 'nope'" in str(info.value) and "ollama" in str(info.value)


def test_registry_from_config_defines_and_overrides() -> None:
    registry = Registry.from_config(
        {
            "mybox": {
                "type": "openai",
                "base_url": "http://box:8000/v1/",
                "api_key_env": "BOX_KEY",
                "model": "qwen",
            },
            "ollama": {"model": "llama3.2"},
        }
    )
    box: Any = registry.get("mybox")
    assert box.root_url() == "http://box:8000/v1"
    assert box.key_env == "BOX_KEY" and box.key_required and box.default_model == "qwen"
    assert registry.get("ollama").default_model == "llama3.2"
    assert Registry.builtin().get("ollama").default_model == ""
    with pytest.raises(ConfigError, match="needs base_url"):
        Registry.from_config({"other": {"type": "openai"}})
    with pytest.raises(ConfigError, match="unknown type"):
        Registry.from_config({"other": {"type": "grpc", "base_url": "x"}})
    with pytest.raises(ConfigError, match=r"providers\.bad\.base_url"):
        Registry.from_config({"bad": {"type": "openai", "base_url": "localhost:8000/v1"}})
    # Names are case-insensitive, as typed after -p.
    mixed = Registry.from_config({"MyBox": {"type": "openai", "base_url": "http://b/v1"}})
    assert mixed.get("MyBox").name == "mybox" and mixed.get("mybox").name == "mybox"


def test_openai_base_url_variable_moves_only_openai() -> None:
    env = {"OPENAI_BASE_URL": "http://gateway/v1"}
    registry = Registry(Registry.builtin()._entries, env=env)
    assert registry.create("openai").root == "http://gateway/v1"
    assert registry.create("openai", base_url="http://flag/v1").root == "http://flag/v1"
    assert registry.create("groq").root == "https://api.groq.com/openai/v1"
    # The variable is read from the snapshot the registry was given, not from the process.
    assert Registry.builtin().create("openai").root == "https://api.openai.com/v1"


def test_keys_and_proxies_are_settled_once_from_the_snapshot() -> None:
    env = {"GROQ_API_KEY": "sk-1", "HTTPS_PROXY": "http://px:3128", "NO_PROXY": "localhost"}
    registry = Registry(Registry.builtin()._entries, env=env)
    groq = registry.create("groq")
    assert groq.config.api_key == "sk-1" and groq.config.proxy == "http://px:3128"
    assert "sk-1" not in repr(groq.config)
    assert registry.create("ollama").config.proxy is None  # localhost: NO_PROXY
    assert registry.create("ollama", proxy="socks5://s:1").config.proxy == "socks5://s:1"
    assert registry.create("local").config.proxy is None  # nothing is fetched


# -- errors ---------------------------------------------------------------------------------------


def test_errors_are_one_line_and_name_the_provider() -> None:
    error = ProviderError("boom\n  on two lines", provider="ollama")
    assert str(error) == "ollama: boom on two lines"
    assert ResponseStatusError("x", status=503).retryable
    assert not ResponseStatusError("x", status=400).retryable
    assert UsageError("x").exit_code == 2 and ConfigError("x").exit_code == 2
    assert ProviderError("x").exit_code == 1


def test_redact_url_hides_passwords_only() -> None:
    assert redact_url("http://user:s3cret@proxy:8080/x") == "http://user:***@proxy:8080/x"
    assert redact_url("socks5://proxy:1080") == "socks5://proxy:1080"


def test_redact_credentials_in_free_text() -> None:
    text = "407, message='Proxy Authentication Required', url='http://user:S3CRET@localhost:5'"
    assert redact_credentials(text) == text.replace("S3CRET", "***")
    assert redact_credentials("socks5://u:p@h:1, http://h/x") == "socks5://u:***@h:1, http://h/x"


@pytest.mark.parametrize(
    "url", ["localhost:11434/v1", "http://[bad/v1", "ftp://host/", "http://", "http://h:99999/"]
)
def test_check_url_refuses_what_is_not_an_http_url(url: str) -> None:
    with pytest.raises(UsageError) as info:
        check_url(url, what="--base-url", error=UsageError)
    assert str(info.value).startswith("--base-url: ")


def test_check_url_accepts_proxy_schemes() -> None:
    schemes = ("http", "socks5")
    assert check_url("socks5://h:1", what="--proxy", schemes=schemes, error=UsageError)
    with pytest.raises(UsageError):
        check_url("socks5://", what="--proxy", schemes=schemes, error=UsageError)


def test_error_bodies_are_described_in_one_line() -> None:
    assert describe_error_body('{"error": {"message": "bad key", "type": "x"}}', "") == "bad key"
    assert describe_error_body('{"error": "model not found"}', "") == "model not found"
    assert describe_error_body('{"detail": "nope"}', "") == "nope"
    html = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
    assert (
        describe_error_body(html, "text/html")
        == "an HTML page titled '502 Bad Gateway', not the API"
    )
    assert describe_error_body("", "text/plain") == "an empty body"
    assert "\n" not in describe_error_body("line1\nline2", "text/plain")


def test_retry_after_seconds_dates_and_cap() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("100000") == 120.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


# -- proxies from the environment -----------------------------------------------------------------


def test_resolve_proxy_precedence_and_no_proxy() -> None:
    env = {
        "HTTPS_PROXY": "http://p:1",
        "ALL_PROXY": "socks5://s:2",
        "NO_PROXY": "internal.corp,.lan,box:9",
    }
    assert resolve_proxy("https://api.openai.com/v1", None, env) == "http://p:1"
    assert resolve_proxy("http://host/v1", None, env) == "socks5://s:2"
    assert resolve_proxy("https://api.internal.corp/v1", None, env) is None
    assert resolve_proxy("http://x.lan/v1", None, env) is None
    assert resolve_proxy("http://box:9/v1", None, env) is None
    assert resolve_proxy("http://box:8/v1", None, env) == "socks5://s:2"
    assert resolve_proxy("https://api.openai.com", "http://flag:3", env) == "http://flag:3"
    assert (
        resolve_proxy(
            "https://a", None, {"https_proxy": "http://lower:1", "HTTPS_PROXY": "http://upper:1"}
        )
        == "http://lower:1"
    )
    assert resolve_proxy("https://a", None, {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "*"}) is None


def test_no_proxy_ports_addresses_and_ranges() -> None:
    def direct(url: str, no_proxy: str) -> bool:
        return resolve_proxy(url, None, {"ALL_PROXY": "http://p:1", "NO_PROXY": no_proxy}) is None

    # An entry's port is compared with the scheme's default port when the URL gives none.
    assert direct("https://example.com/v1", "example.com:443")
    assert not direct("https://example.com/v1", "example.com:8443")
    assert direct("http://example.com/v1", "example.com:80")
    # IP addresses, IPv6 bare or bracketed, and CIDR ranges.
    assert direct("http://127.0.0.1:11434/v1", "127.0.0.0/8")
    assert not direct("http://10.1.2.3/v1", "127.0.0.0/8")
    assert direct("http://[::1]:8080/v1", "::1")
    assert direct("http://[::1]:8080/v1", "[::1]:8080")
    assert not direct("http://[::1]:8080/v1", "[::1]:9090")
    assert direct("http://[fd00::5]/v1", "fd00::/8")
    assert not direct("http://127.0.0.1/v1", "localhost")  # no name resolution on either side


def test_configured_proxy_obeys_no_proxy_but_the_flag_does_not() -> None:
    env = {"NO_PROXY": "localhost"}
    assert resolve_proxy("http://localhost:11434/v1", None, env, configured="http://c:1") is None
    assert resolve_proxy("https://api.openai.com/v1", None, env, configured="http://c:1") == (
        "http://c:1"
    )
    assert resolve_proxy("http://localhost:11434/v1", "http://flag:1", env) == "http://flag:1"


# -- configuration --------------------------------------------------------------------------------


def test_paths_under_chatcli_home(tmp_path: Path) -> None:
    paths = Paths.from_env({"CHATCLI_HOME": str(tmp_path)})
    assert paths.config_file == tmp_path / "config" / "config.toml"
    assert paths.data_dir == tmp_path / "data"
    assert {paths.cache_dir.parent, paths.state_dir.parent} == {tmp_path}


@pytest.mark.skipif(sys.platform in ("darwin", "win32"), reason="the XDG rules are Linux's")
@pytest.mark.parametrize("xdg", [False, True])
def test_paths_follow_the_given_environment_as_platformdirs_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, xdg: bool
) -> None:
    import platformdirs

    env = {"HOME": str(tmp_path / "home")}
    if xdg:
        for name in ("CONFIG", "DATA", "CACHE", "STATE"):
            env[f"XDG_{name}_HOME"] = str(tmp_path / name.lower())
    paths = Paths.from_env(env)
    # The same directories platformdirs gives when the process itself has that environment.
    for key in ("HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    expected = (
        platformdirs.user_config_dir("chatcli", appauthor=False),
        platformdirs.user_data_dir("chatcli", appauthor=False),
        platformdirs.user_cache_dir("chatcli", appauthor=False),
        platformdirs.user_state_dir("chatcli", appauthor=False),
    )
    found = (paths.config_dir, paths.data_dir, paths.cache_dir, paths.state_dir)
    assert tuple(map(str, found)) == expected
    assert str(paths.data_dir).startswith(str(tmp_path / ("data" if xdg else "home")))
    # A relative XDG value is ignored, as the specification says.
    relative = Paths.from_env({"HOME": str(tmp_path), "XDG_DATA_HOME": "rel/dir"})
    assert relative.data_dir == tmp_path / ".local" / "share" / "chatcli"


def test_settings_precedence(tmp_path: Path) -> None:
    paths = Paths.from_env({"CHATCLI_HOME": str(tmp_path)})
    paths.config_dir.mkdir(parents=True)
    paths.config_file.write_text('provider = "ollama"\nmodel = "a"\ntimeout = 5\ntemperature = 1\n')
    settings = load_settings(paths, {})
    assert (settings.provider, settings.model, settings.timeout, settings.temperature) == (
        "ollama", "a", 5.0, 1.0,
    )  # fmt: skip
    settings = load_settings(paths, {"CHATCLI_PROVIDER": "vllm", "CHATCLI_MODEL": "b"})
    assert (settings.provider, settings.model) == ("vllm", "b")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('provider = "ollama"\nmodel = \n', "line 2"),
        ("timeout = -1\n", "positive"),
        ('timeout = "soon"\n', "timeout must be a number"),
        ("colour = 1\n", "unknown setting 'colour'"),
        ("[providers.x]\nbase = 1\n", "providers.x.base"),
        ("temperature = true\n", "temperature must be a number"),
    ],
)
def test_bad_config_names_the_file_and_the_problem(
    tmp_path: Path, text: str, fragment: str
) -> None:
    paths = Paths.from_env({"CHATCLI_HOME": str(tmp_path)})
    paths.config_dir.mkdir(parents=True)
    paths.config_file.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(paths, {})
    assert str(paths.config_file) in str(info.value)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


# -- pure CLI helpers -----------------------------------------------------------------------------


def test_compose_message_orders_stdin_then_blank_line_then_prompt() -> None:
    assert compose_message("write a commit message", "diff --git a b\n+x\n") == (
        "diff --git a b\n+x\n\nwrite a commit message"
    )
    assert compose_message("", "just the file\n") == "just the file\n"
    assert compose_message("only prompt", None) == "only prompt"
    assert compose_message("only prompt", "  \n") == "only prompt"
    with pytest.raises(UsageError):
        compose_message("", None)
    with pytest.raises(UsageError):
        compose_message(" ", "\n")


def test_reserved_option_keys_are_refused() -> None:
    assert parse_options([("max_tokens", "5"), ("top_p", "0.9")]) == {"max_tokens": 5, "top_p": 0.9}
    for key, hint in [("model", "-m/--model"), ("stream", "--no-stream"), ("proxy", "--proxy")]:
        with pytest.raises(UsageError, match=hint):
            parse_options([(key, "x")])
    with pytest.raises(UsageError):
        parse_options([("max-tokens", "5")])


def test_option_values_decode_json_literals() -> None:
    assert parse_option_value("200") == 200
    assert parse_option_value("0.5") == 0.5
    assert parse_option_value("true") is True
    assert parse_option_value('["\\n"]') == ["\n"]
    assert parse_option_value("hello world") == "hello world"


def test_sanitize_makes_every_control_character_visible() -> None:
    dangerous = "\x1b]52;c;ZXZpbA==\x07\x1b[2J\r\x08\x7f\x9b31m\x90"
    shown = sanitize(f"ok\t{dangerous}\nend")
    assert shown.startswith("ok\t") and shown.endswith("\nend")
    for char in "\x1b\x07\r\x08\x7f\x9b\x90":
        assert char not in shown
    assert "␛]52;c;ZXZpbA==" in shown and "\\x9b" in shown


# -- retries --------------------------------------------------------------------------------------


def test_backoff_grows_with_jitter_and_caps() -> None:
    delays = [backoff(n) for n in range(8)]
    assert all(d is not None for d in delays)
    assert 0.375 <= delays[0] <= 0.5 and 0.75 <= delays[1] <= 1.0  # type: ignore[operator]
    assert all(d <= 8.0 for d in delays if d is not None)
    assert backoff(0, retry_after=7.0) == 7.0 and backoff(0, retry_after=61.0) is None


# -- before a request leaves ----------------------------------------------------------------------


def test_a_conversation_that_surely_overflows_the_context_is_refused_before_anything() -> None:
    from chatcli.providers.base import BaseProvider

    class Small(BaseProvider):
        name = "small"

        def context_tokens(self, options: Any, model: str | None = None) -> int | None:
            return int(options.get("n_ctx", 100))

    provider = Small()
    fits = (ChatMessage.text("user", "x" * 300),)  # at least 75 tokens: under 100
    provider.check_fits(fits, {})
    too_big = (ChatMessage.text("system", "s" * 100), ChatMessage.text("user", "é" * 200))
    with pytest.raises(UsageError) as info:
        provider.check_fits(too_big, {})  # 500 bytes: at least 125 tokens
    assert "at least 125 tokens, more than the 100" in str(info.value)
    provider.check_fits(too_big, {"n_ctx": 1000})  # a larger context takes it
    BaseProvider().check_fits(too_big, {})  # a provider that cannot tell refuses nothing


def test_install_advice_names_this_project_on_the_index() -> None:
    import tomllib

    import chatcli

    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert project["project"]["name"] == chatcli.DISTRIBUTION != "chatcli"
    assert project["project"]["scripts"]["chatcli"] == "chatcli.cli:main"
    # Extras that name the project itself name it by its distribution.
    selves = [d for ds in project["project"]["optional-dependencies"].values() for d in ds]
    assert all(not d.startswith("chatcli[") for d in selves)
    assert chatcli.install_hint("local") == (
        "pip install 'chatcli-shell[local]' (in a checkout: pip install '.[local]')"
    )


def test_a_provider_from_the_environment_does_not_inherit_another_providers_model(
    tmp_path: Path,
) -> None:
    paths = Paths.from_env({"CHATCLI_HOME": str(tmp_path)})
    paths.config_dir.mkdir(parents=True)
    paths.config_file.write_text('provider = "ollama"\nmodel = "llama3.2"\n')
    chosen = load_settings(paths, {"CHATCLI_PROVIDER": "vllm"})
    assert (chosen.provider, chosen.model) == ("vllm", None)
    same = load_settings(paths, {"CHATCLI_PROVIDER": "Ollama"})
    assert (same.provider, same.model) == ("Ollama", "llama3.2")
    both = load_settings(paths, {"CHATCLI_PROVIDER": "vllm", "CHATCLI_MODEL": "qwen"})
    assert (both.provider, both.model) == ("vllm", "qwen")


@pytest.mark.parametrize(
    ("table", "fragment"),
    [
        ('prices = { "m" = { input = -1, output = 2 } }', "prices.m.input must be a price"),
        ('prices = { "m" = { input = nan, output = 2 } }', "prices.m.input must be a price"),
        ('prices = { "m" = { in = 1 } }', "must be a table like { input = 0.15"),
        ('prices = { "m" = 3 }', "must be a table like"),
        ("context_length = 0", "context_length must be 1 to"),
    ],
)
def test_prices_and_context_lengths_in_config_are_checked(
    tmp_path: Path, table: str, fragment: str
) -> None:
    paths = Paths.from_env({"CHATCLI_HOME": str(tmp_path)})
    paths.config_dir.mkdir(parents=True)
    paths.config_file.write_text(f"[providers.ollama]\n{table}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(paths, {})
    assert fragment in str(info.value)


def test_a_speed_is_given_only_for_an_answer_that_streamed_for_a_while() -> None:
    from chatcli.usage import speed

    assert speed(100, 0.5, 2.5) == 50.0
    assert speed(20, 0.475, 0.475) is None  # came whole (--no-stream): no rate
    assert speed(None, 0.5, 2.5) is None and speed(10, None, 2.5) is None
