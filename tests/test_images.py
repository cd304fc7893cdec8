"""Images attached to a question (``ask -a/--attach IMAGE``): recognised by their bytes, sent as
image parts (OpenAI's ``image_url`` data URLs, Anthropic's base64 ``image`` blocks), refused
before anything is sent or stored where they cannot go, and noted in the session."""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chatcli.core import ChatMessage, ChatRequest, ImagePart, TextPart
from chatcli.errors import UsageError
from chatcli.images import MAX_FILE_BYTES, load_image, sniff, with_notes
from chatcli.providers import Registry
from chatcli.providers.anthropic import conversation
from chatcli.providers.openai import wire_messages
from chatcli.turn import TurnRequest, preflight
from tests.conftest import Isolated, assert_one_line_error, run, run_binary, serve
from tests.fakes.anthropic import API_KEY, FakeVisionAnthropic
from tests.servers import FakeVisionOpenAI

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
JPEG = b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF" + bytes(200)
GIF = b"GIF89a" + bytes(100)
WEBP = b"RIFF" + (100).to_bytes(4, "little") + b"WEBPVP8 " + bytes(100)
OPENAI_ENV = {"OPENAI_API_KEY": "sk-test-123"}
ANTHROPIC_ENV = {"ANTHROPIC_API_KEY": API_KEY}


@pytest.fixture
def vision() -> Iterator[FakeVisionOpenAI]:
    yield from serve(FakeVisionOpenAI())


@pytest.fixture
def claude() -> Iterator[FakeVisionAnthropic]:
    service = FakeVisionAnthropic()
    with service.serve():
        yield service


def image(isolated: Isolated, name: str = "cat.png", data: bytes = PNG) -> Path:
    path = isolated.root / name
    path.write_bytes(data)
    return path


def stored(isolated: Isolated) -> list[dict[str, Any]]:
    path = isolated.chatcli_home / "data" / "sessions.db"
    if not path.exists():
        return []
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    rows = [dict(r) for r in db.execute("SELECT * FROM messages ORDER BY id")]
    db.close()
    return rows


def openai_ask(vision: FakeVisionOpenAI, *args: str) -> list[str]:
    return ["ask", "-p", "openai", "-m", "gpt-test", "--base-url", vision.base_url, *args]


# -- recognising images ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "media_type"),
    [(PNG, "image/png"), (JPEG, "image/jpeg"), (GIF, "image/gif"), (WEBP, "image/webp")],
)
def test_images_are_recognised_by_their_bytes_not_their_name(
    isolated: Isolated, data: bytes, media_type: str
) -> None:
    assert sniff(data) == media_type
    loaded = load_image(str(image(isolated, "picture.txt", data)))
    assert (loaded.media_type, loaded.data, loaded.name) == (media_type, data, "picture.txt")


def test_a_file_that_is_not_an_image_is_refused_by_its_bytes(
    isolated: Isolated, vision: FakeVisionOpenAI
) -> None:
    fake_png = image(isolated, "notes.png", b"just some text, named like a picture\n")
    result = run(openai_ask(vision, "-a", str(fake_png), "What is it?"), isolated, env=OPENAI_ENV)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "notes.png", "not a PNG, JPEG, WebP or GIF image")
    assert vision.requests == [] and stored(isolated) == []


def test_a_file_over_the_read_limit_is_refused_unread(
    isolated: Isolated, vision: FakeVisionOpenAI
) -> None:
    huge = image(isolated, "huge.png")
    with huge.open("r+b") as file:
        file.truncate(MAX_FILE_BYTES + 1)  # sparse: cheap to make
    result = run(openai_ask(vision, "-a", str(huge), "What is it?"), isolated, env=OPENAI_ENV)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "huge.png", "more than 20.0 MB")
    assert vision.requests == [] and stored(isolated) == []


def test_a_missing_file_is_one_line(isolated: Isolated, vision: FakeVisionOpenAI) -> None:
    result = run(openai_ask(vision, "-a", "nowhere.png", "Hi"), isolated, env=OPENAI_ENV)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "nowhere.png", "no such file")


# -- serialising ----------------------------------------------------------------------------------


def test_text_alone_is_serialised_as_before_and_images_as_parts() -> None:
    picture = ImagePart(PNG, "image/png", "cat.png")
    request = ChatRequest(
        messages=(
            ChatMessage.text("system", "Be brief."),
            ChatMessage.with_images("user", "What is it?", [picture]),
        ),
        model="m",
    )
    assert request.messages[1].parts == (picture, TextPart("What is it?"))
    assert request.messages[1].content == "What is it?"
    url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert wire_messages(request) == [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": "What is it?"},
            ],
        },
    ]


def test_anthropic_merges_a_turn_with_images_into_blocks() -> None:
    picture = ImagePart(GIF, "image/gif", "a.gif")
    system, turns = conversation(
        [
            ChatMessage.text("system", "Be brief."),
            ChatMessage.text("user", "First."),
            ChatMessage.with_images("user", "Second.", [picture]),
        ]
    )
    assert system == "Be brief."
    data = base64.b64encode(GIF).decode()
    assert turns == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "First."},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/gif", "data": data},
                },
                {"type": "text", "text": "Second."},
            ],
        }
    ]
    # Text alone is a string, as it always was.
    assert conversation([ChatMessage.text("user", "Hi")])[1] == [{"role": "user", "content": "Hi"}]


# -- through the command line ---------------------------------------------------------------------


def test_openai_gets_each_image_as_a_data_url_and_the_session_notes_them(
    isolated: Isolated, vision: FakeVisionOpenAI
) -> None:
    cat, dog = image(isolated, "cat.png", PNG), image(isolated, "dog.jpg", JPEG)
    result = run(
        openai_ask(vision, "-a", str(cat), "--attach", str(dog), "Which is which?"),
        isolated,
        env=OPENAI_ENV,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Hello, world!")
    (request,) = vision.requests
    (message,) = request.body["messages"]
    note = "[image: cat.png, 1 KB]\n[image: dog.jpg, 210 bytes]"
    assert message == {
        "role": "user",
        "content": [
            {
                "type": "image_url",
                "image_url": {"url": "data:image/png;base64," + base64.b64encode(PNG).decode()},
            },
            {
                "type": "image_url",
                "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(JPEG).decode()},
            },
            {"type": "text", "text": f"Which is which?\n\n{note}"},
        ],
    }
    question, answer = stored(isolated)
    assert question["role"] == "user" and question["content"] == f"Which is which?\n\n{note}"
    assert answer["content"] == "Hello, world!"


def test_a_question_without_images_is_sent_exactly_as_before(
    isolated: Isolated, vision: FakeVisionOpenAI
) -> None:
    result = run(openai_ask(vision, "Hi"), isolated, env=OPENAI_ENV)
    assert result.returncode == 0, result.stderr
    assert vision.requests[0].body["messages"] == [{"role": "user", "content": "Hi"}]


def test_anthropic_gets_base64_image_blocks(
    isolated: Isolated, claude: FakeVisionAnthropic
) -> None:
    picture = image(isolated, "shot.webp", WEBP)
    args = ["ask", "-p", "anthropic", "--base-url", claude.base_url, "-a", str(picture), "What?"]
    result = run(args, isolated, env=ANTHROPIC_ENV)
    assert result.returncode == 0, result.stderr
    (seen,) = claude.messages_requests
    (turn,) = seen.json["messages"]
    assert turn["content"] == [
        {
            "type": "image",
            "source": {
                "type": "base64",
                "media_type": "image/webp",
                "data": base64.b64encode(WEBP).decode(),
            },
        },
        {"type": "text", "text": f"What?\n\n[image: shot.webp, {len(WEBP)} bytes]"},
    ]


def test_an_image_over_anthropics_limit_is_refused_naming_it(
    isolated: Isolated, claude: FakeVisionAnthropic
) -> None:
    # 4 MiB is 5.3 MB as base64: over the 5 MB the API takes. Not a real picture, so even
    # with Pillow installed it cannot be scaled down: refused either way.
    big = image(isolated, "big.png", PNG + bytes(4 * 1024 * 1024))
    args = ["ask", "-p", "anthropic", "--base-url", claude.base_url, "-a", str(big), "What?"]
    result = run(args, isolated, env=ANTHROPIC_ENV)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "big.png", "over the 5.0 MB anthropic takes per image")
    assert claude.requests == [] and stored(isolated) == []


@pytest.mark.parametrize("provider", ["gptalk", "local"])
def test_providers_that_take_no_images_refuse_before_any_request(
    isolated: Isolated, vision: FakeVisionOpenAI, provider: str
) -> None:
    picture = image(isolated)
    args = ["ask", "-p", provider, "--base-url", vision.base_url, "-a", str(picture), "What?"]
    result = run(args, isolated)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, f"{provider} does not take images")
    assert vision.requests == [] and stored(isolated) == []


def test_a_fallback_that_takes_no_images_is_refused_too() -> None:
    picture = ImagePart(PNG, "image/png", "cat.png")
    request = TurnRequest(
        provider="openai",
        fallback=("gptalk",),
        messages=(ChatMessage.with_images("user", "What?", [picture]),),
    )
    with pytest.raises(UsageError, match="gptalk does not take images"):
        preflight(request, Registry.builtin())


def test_dry_run_shows_each_image_with_its_type_and_size(
    isolated: Isolated, vision: FakeVisionOpenAI
) -> None:
    picture = image(isolated, "cat.png")
    result = run(
        openai_ask(vision, "--dry-run", "-a", str(picture), "What?"), isolated, env=OPENAI_ENV
    )
    assert result.returncode == 0, result.stderr
    assert f"image: cat.png  PNG  1 KB ({len(PNG):,} bytes)\n" in result.stdout
    assert "What?\n\n[image: cat.png, 1 KB]" in result.stdout
    as_json = run(
        openai_ask(vision, "--dry-run", "--json", "-a", str(picture), "What?"),
        isolated,
        env=OPENAI_ENV,
    )
    plan = json.loads(as_json.stdout)
    assert plan["images"] == [{"name": "cat.png", "media_type": "image/png", "bytes": len(PNG)}]
    assert vision.requests == [] and stored(isolated) == []


def test_the_binary_attaches_an_image(isolated: Isolated, vision: FakeVisionOpenAI) -> None:
    picture = image(isolated, "cat.png")
    result = run_binary(
        openai_ask(vision, "-a", str(picture), "What is it?"), isolated, env=OPENAI_ENV
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Hello, world!")
    parts = vision.requests[0].body["messages"][0]["content"]
    assert parts[0]["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(PNG).decode()


def test_notes_follow_the_text() -> None:
    picture = ImagePart(b"x" * 2048, "image/gif", "a.gif")
    assert with_notes("Hi\n", [picture]) == "Hi\n\n[image: a.gif, 2 KB]"
    assert with_notes("", [picture]) == "[image: a.gif, 2 KB]"
    assert with_notes("Hi", []) == "Hi"


def test_a_retry_in_the_same_process_sends_the_images_again(vision: FakeVisionOpenAI) -> None:
    import asyncio
    import io

    from chatcli.conversation import Conversation
    from chatcli.render import PlainRenderer

    registry = Registry(Registry.builtin()._entries, env=OPENAI_ENV)
    defaults = TurnRequest(provider="openai", model="gpt-test", base_url=vision.base_url)
    chat = Conversation(registry, defaults, save=False)
    picture = ImagePart(PNG, "image/png", "cat.png")
    out = io.StringIO()

    async def ask_then_retry() -> None:
        await chat.send("What?", PlainRenderer(out, safe=False), images=[picture])
        await chat.retry(PlainRenderer(out, safe=False))

    asyncio.run(ask_then_retry())
    first, again = (request.body["messages"] for request in vision.requests)
    assert first == again
    assert first[0]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert chat.history[0]["content"] == "What?\n\n[image: cat.png, 1 KB]"


def test_an_image_too_big_is_scaled_down_when_pillow_can(monkeypatch: pytest.MonkeyPatch) -> None:
    from chatcli import images
    from chatcli.providers.anthropic import Anthropic

    small = ImagePart(PNG, "image/png", "big.png")
    monkeypatch.setattr(images, "scale_down", lambda image, max_bytes: small)
    big = ImagePart(PNG + bytes(6 * 1024 * 1024), "image/png", "big.png")
    assert images.fit([big], [Anthropic]) == [small]


def test_an_address_is_sent_for_the_service_to_fetch(
    isolated: Isolated, vision: FakeVisionOpenAI, claude: FakeVisionAnthropic
) -> None:
    url = "https://example.com/cat.png"
    result = run(openai_ask(vision, "-a", url, "What?"), isolated, env=OPENAI_ENV)
    assert result.returncode == 0, result.stderr
    assert vision.requests[0].body["messages"][0]["content"] == [
        {"type": "image_url", "image_url": {"url": url}},
        {"type": "text", "text": f"What?\n\n[image: {url}]"},
    ]
    args = ["ask", "-p", "anthropic", "--base-url", claude.base_url, "-a", url, "What?"]
    result = run(args, isolated, env=ANTHROPIC_ENV)
    assert result.returncode == 0, result.stderr
    image_block = claude.messages_requests[0].json["messages"][0]["content"][0]
    assert image_block == {"type": "image", "source": {"type": "url", "url": url}}
    dry = run(openai_ask(vision, "--dry-run", "-a", url, "What?"), isolated, env=OPENAI_ENV)
    assert f"image: {url}  (an address: the service fetches it)\n" in dry.stdout
    bad = run(openai_ask(vision, "-a", "https://", "What?"), isolated, env=OPENAI_ENV)
    assert bad.returncode == 2 and bad.stderr.startswith("chatcli: -a")


def test_a_real_picture_too_big_for_anthropic_is_scaled_down_by_pillow(
    isolated: Isolated, claude: FakeVisionAnthropic
) -> None:
    pil = pytest.importorskip("PIL.Image", reason="needs Pillow (pip install pillow)")
    import base64
    import io
    import os

    # Noise does not compress: 1,400 x 1,400 pixels is about 5.9 MB as a PNG, 7.8 MB as sent.
    picture = pil.frombytes("RGB", (1400, 1400), os.urandom(1400 * 1400 * 3))
    out = io.BytesIO()
    picture.save(out, format="PNG")
    big = image(isolated, "noise.png", out.getvalue())
    args = ["ask", "-p", "anthropic", "--base-url", claude.base_url, "-a", str(big), "What?"]
    result = run(args, isolated, env=ANTHROPIC_ENV)
    assert result.returncode == 0, result.stderr
    (seen,) = claude.messages_requests
    block = seen.json["messages"][-1]["content"][0]
    assert block["type"] == "image" and block["source"]["media_type"] == "image/png"
    sent = base64.b64decode(block["source"]["data"])
    assert len(block["source"]["data"]) <= 5 * 1024 * 1024  # what the API takes, as sent
    smaller = pil.open(io.BytesIO(sent))
    assert smaller.format == "PNG" and smaller.width < 1400 and smaller.height < 1400
