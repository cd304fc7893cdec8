"""Images attached to a question (``ask -a/--attach IMAGE``): read, recognised, checked.

An image is recognised by its first bytes, never by its name: PNG, JPEG, WebP or GIF. A file
is read bounded (:data:`MAX_FILE_BYTES`); a bigger one is refused before it is read whole.
Each provider that takes images says how big one may be (``max_image_bytes``, measured as
sent: base64-encoded); a bigger image is scaled down when Pillow is importable, else refused
with the limit named. A provider that takes no images is refused before anything is sent or
stored. Nothing here talks to a service.
"""

from __future__ import annotations

import importlib
import io
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from chatcli.core import ChatMessage, ImagePart, format_size
from chatcli.errors import UsageError, check_url

if TYPE_CHECKING:
    from chatcli.providers.base import BaseProvider

#: The biggest file ``-a`` reads (20 MiB): a bigger one is refused unread.
MAX_FILE_BYTES: Final = 20 * 1024 * 1024

#: The formats taken, by media type, as their names are said.
FORMATS: Final = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/webp": "WebP",
    "image/gif": "GIF",
}


def sniff(data: bytes) -> str | None:
    """The media type of an image's bytes (PNG, JPEG, WebP, GIF), or ``None``."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def load_image(path: str, *, limit: int = MAX_FILE_BYTES) -> ImagePart:
    """The image in the file at ``path`` (an ``http(s)://`` address: the image there, sent as
    its address for the service to fetch); a usage error (one line) for anything else."""
    if path.lower().startswith(("http://", "https://")):
        return ImagePart.from_url(check_url(path, what="-a", error=UsageError))
    file = Path(path).expanduser()
    try:
        with file.open("rb") as stream:
            data = stream.read(limit + 1)
    except FileNotFoundError:
        raise UsageError(f"-a {path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"-a {path}: a directory, not an image") from None
    except OSError as exc:
        raise UsageError(f"-a {path}: cannot read it ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise UsageError(f"-a {path}: more than {format_size(limit)}; attach a smaller image")
    media_type = sniff(data)
    if media_type is None:
        raise UsageError(f"-a {path}: not a PNG, JPEG, WebP or GIF image (judged by its content)")
    return ImagePart(data, media_type, file.name)


def sent_size(image: ImagePart) -> int:
    """How many bytes the image takes as sent: base64-encoded (an address: none counted)."""
    return 4 * math.ceil(image.size / 3)


def check_takes_images(provider: type[BaseProvider] | BaseProvider, count: int) -> None:
    """Refuse ``count`` images for a provider that takes none."""
    if count and not provider.capabilities().images:
        raise UsageError(
            f"{provider.name} does not take images (-a); use a provider that does, such as "
            f"openai, an OpenAI-compatible server with a vision model, or anthropic"
        )


def check_size(provider: type[BaseProvider] | BaseProvider, image: ImagePart) -> None:
    """Refuse an image bigger than the provider takes, naming its limit."""
    limit = provider.max_image_bytes
    if limit is not None and sent_size(image) > limit:
        raise UsageError(
            f"{image.name or 'an image'} is {format_size(sent_size(image))} as sent "
            f"(base64), over the {format_size(limit)} {provider.name} takes per image; "
            f"attach a smaller one (or install Pillow, which lets chatcli scale it down)"
        )


def check_messages(
    provider: type[BaseProvider] | BaseProvider, messages: Iterable[ChatMessage]
) -> None:
    """Refuse the images of ``messages`` that ``provider`` cannot take (none, or too big)."""
    images = [image for message in messages for image in message.images]
    check_takes_images(provider, len(images))
    for image in images:
        check_size(provider, image)


def fit(images: Sequence[ImagePart], providers: Sequence[type[BaseProvider]]) -> list[ImagePart]:
    """``images`` made fit for every provider in ``providers`` (the chain that may answer):
    each must take images; an image over the smallest limit is scaled down with Pillow when
    it can be imported, else refused naming the limit."""
    if not images:
        return []
    for provider in providers:
        check_takes_images(provider, len(images))
    limited = [p for p in providers if p.max_image_bytes is not None]
    if not limited:
        return list(images)
    strictest = min(limited, key=lambda p: p.max_image_bytes or 0)
    limit = strictest.max_image_bytes or 0
    fitted: list[ImagePart] = []
    for image in images:
        if sent_size(image) > limit:
            image = scale_down(image, limit * 3 // 4) or image
        check_size(strictest, image)  # still too big (or no Pillow): refused, limit named
        fitted.append(image)
    return fitted


def scale_down(image: ImagePart, max_bytes: int) -> ImagePart | None:
    """``image`` re-encoded smaller than ``max_bytes`` with Pillow, in its own format (a GIF:
    its first frame); ``None`` without Pillow or when it cannot be made small enough."""
    try:
        pil: Any = importlib.import_module("PIL.Image")
    except ImportError:
        return None
    formats = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP", "image/gif": "GIF"}
    try:
        picture = pil.open(io.BytesIO(image.data))
        picture.load()
        if image.media_type == "image/jpeg" and picture.mode not in ("RGB", "L"):
            picture = picture.convert("RGB")
        factor = math.sqrt(max_bytes / image.size) * 0.9
        for _ in range(8):
            width = max(1, int(picture.width * factor))
            height = max(1, int(picture.height * factor))
            smaller = picture.resize((width, height))
            out = io.BytesIO()
            options: dict[str, Any] = {"quality": 85} if image.media_type == "image/jpeg" else {}
            smaller.save(out, format=formats[image.media_type], **options)
            data = out.getvalue()
            if len(data) <= max_bytes:
                return ImagePart(data, image.media_type, image.name)
            factor *= 0.75
    except Exception:  # a picture Pillow cannot read or write: refused as it is
        return None
    return None


def notes(images: Sequence[ImagePart]) -> str:
    """The notes of ``images`` for the stored text, one a line (empty for none)."""
    return "\n".join(image.note() for image in images)


def with_notes(text: str, images: Sequence[ImagePart]) -> str:
    """``text`` with a note of each image after a blank line: what a session keeps."""
    if not images:
        return text
    return f"{text.rstrip()}\n\n{notes(images)}" if text.strip() else notes(images)


def describe(image: ImagePart) -> str:
    """``cat.png  PNG  123 KB`` for ``--dry-run``."""
    if image.url:
        return f"{image.url}  (an address: the service fetches it)"
    return f"{image.name or '-'}  {FORMATS.get(image.media_type, image.media_type)}  " + (
        f"{format_size(image.size)} ({image.size:,} bytes)"
    )
