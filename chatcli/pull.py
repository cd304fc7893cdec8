"""``chatcli models pull``: download a GGUF model into ``DATA/models/``, and ``models rm``.

The download goes through chatcli's HTTP layer (the proxy chosen from the environment snapshot
and config.toml, the connect and idle-read timeouts, at most five redirects) and is streamed to
disk a chunk at a time, never held in memory. It lands in ``NAME.gguf.part`` next to the target
(0600, in the 0700 models directory, never through a link) and is renamed into place only once
it is whole and checked:

* **size**: the bytes received must be what the server announced (``Content-Length``, the total
  of a ``Content-Range``, and Hugging Face's ``X-Linked-Size``);
* **checksum**: a SHA-256 when the source gives one: ``--sha256 HEX``, an
  ``x-checksum-sha256`` header, or Hugging Face's ``X-Linked-Etag`` (the LFS object's SHA-256)
  when it is 64 hex digits. A plain ``ETag`` is an opaque validator and is not taken for one;
* **format**: the file must start with ``GGUF``.

A file that fails a check is removed, with one line. A download cut short keeps its ``.part``:
the same command resumes it with an HTTP ``Range`` request (a server that ignores it sends the
whole file again, and the download starts over).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

from chatcli.errors import ProtocolError, StorageError, UsageError, check_url
from chatcli.store.files import FILE_MODE, check_own_file, check_tree, link_error, private_dir

#: The largest model accepted: far above any GGUF file one would run on a CPU.
MAX_MODEL_BYTES: Final = 512 * 1024**3
CHUNK_BYTES: Final = 1024 * 1024
GGUF_MAGIC: Final = b"GGUF"
#: A model's name in DATA/models: a file name, with no path and no leading dot.
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]{0,199}$")
_SHA256_RE: Final = re.compile(r"^[0-9a-f]{64}$")
_HF_RE: Final = re.compile(r"^hf:([^/\s]+)/([^/\s]+)/(.+\.gguf)$", re.IGNORECASE)

PROVIDER: Final = "pull"

Progress = Callable[[int, int | None], None]


def source_url(source: str) -> str:
    """The URL of ``source``: an http(s) URL, or ``hf:OWNER/REPO/FILE.gguf`` (Hugging Face's
    ``resolve/main`` URL of that file)."""
    found = _HF_RE.match(source.strip())
    if found:
        owner, repo, file = found.groups()
        if ".." in file.split("/"):
            raise UsageError(f"not a file in a repository: {source}")
        return f"https://huggingface.co/{owner}/{repo}/resolve/main/{file}"
    if source.lower().startswith("hf:"):
        raise UsageError(f"expected hf:OWNER/REPO/FILE.gguf, got {source!r}")
    check_url(source, what="the model URL", error=UsageError)
    return source


def model_name(url: str, name: str | None = None) -> str:
    """The name the model is kept under (``NAME.gguf``): ``name``, else the URL's file stem."""
    if name is None:
        last = unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])
        name = last[: -len(".gguf")] if last.lower().endswith(".gguf") else last
    elif name.lower().endswith(".gguf"):
        name = name[: -len(".gguf")]
    if not _NAME_RE.match(name):
        raise UsageError(
            f"cannot name the model {name!r} (letters, digits and ._+- only); "
            "give one with --name NAME"
        )
    return name


def checksum_of(headers_seen: list[Mapping[str, str]]) -> tuple[str, str] | None:
    """(the SHA-256 in hex, the header it came from) that the source gives, if any."""
    for headers in headers_seen:
        for header in ("x-checksum-sha256", "X-Linked-Etag"):
            value = headers.get(header, "").strip().removeprefix("W/").strip('"').lower()
            if _SHA256_RE.match(value):
                return value, header
    return None


def _linked_size(headers_seen: list[Mapping[str, str]]) -> int | None:
    for headers in headers_seen:
        value = headers.get("X-Linked-Size", "").strip()
        if value.isdigit():
            return int(value)
    return None


@dataclass
class Pulled:
    path: Path
    size: int
    checksum: str | None  # "sha256 (from HEADER)" when one was verified
    resumed_from: int


def _open_part(part: Path, offset: int | None) -> int:
    """The ``.part`` file opened for writing at ``offset`` (0: emptied; ``None``: as it is),
    created 0600 if missing, never through a link."""
    try:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise link_error(part) from None
        raise StorageError(f"cannot write {part}: {exc.strerror or exc}") from exc
    os.fchmod(fd, FILE_MODE)
    if offset is not None:
        os.ftruncate(fd, offset)
        os.lseek(fd, offset, os.SEEK_SET)
    return fd


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        while chunk := os.read(fd, CHUNK_BYTES):
            digest.update(chunk)
    finally:
        os.close(fd)
    return digest.hexdigest()


def _head(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return os.read(fd, len(GGUF_MAGIC))
    finally:
        os.close(fd)


def _refuse(part: Path, message: str) -> ProtocolError:
    part.unlink(missing_ok=True)
    return ProtocolError(message, provider=PROVIDER)


async def pull(
    url: str,
    folder: Path,
    *,
    base: Path,
    name: str,
    proxy: str | None,
    timeout: float | None,
    sha256: str | None = None,
    progress: Progress | None = None,
    on_start: Callable[[int, int | None], None] | None = None,
) -> Pulled:
    """Download ``url`` to ``folder/NAME.gguf`` (see the module's notes). One download of a
    name at a time: a second one is refused while the first holds its ``.part``."""
    import fcntl

    private_dir(folder, base=base)
    target = folder / f"{name}.gguf"
    part = folder / f"{name}.gguf.part"
    if check_own_file(target) is not None:
        raise UsageError(f"{target} exists already; remove it first (chatcli models rm {name})")
    check_own_file(part)
    lock = _open_part(part, None)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"another chatcli is pulling {name} already") from None
        try:
            return await _pull_locked(
                url,
                folder,
                base=base,
                name=name,
                proxy=proxy,
                timeout=timeout,
                sha256=sha256,
                progress=progress,
                on_start=on_start,
            )
        except BaseException:
            with contextlib.suppress(OSError):
                if part.stat().st_size == 0:
                    part.unlink()  # nothing arrived: nothing to resume
            raise
    finally:
        os.close(lock)


async def _pull_locked(
    url: str,
    folder: Path,
    *,
    base: Path,
    name: str,
    proxy: str | None,
    timeout: float | None,
    sha256: str | None = None,
    progress: Progress | None = None,
    on_start: Callable[[int, int | None], None] | None = None,
) -> Pulled:
    """:func:`pull`, with the ``.part`` locked."""
    from chatcli.errors import redact_url
    from chatcli.providers.http import check_status, http_errors, open_session

    private_dir(folder, base=base)
    target = folder / f"{name}.gguf"
    part = folder / f"{name}.gguf.part"
    if check_own_file(target) is not None:
        raise UsageError(f"{target} exists already; remove it first (chatcli models rm {name})")
    shown = redact_url(url)
    for _attempt in range(2):
        st = check_own_file(part)
        offset = st.st_size if st is not None else 0
        headers = {"Range": f"bytes={offset}-", "Accept-Encoding": "identity"} if offset else {}
        headers.setdefault("Accept-Encoding", "identity")
        async with open_session(base_url=url, proxy=proxy, timeout=timeout) as session:
            with http_errors(PROVIDER, url):
                async with session.get(url, headers=headers) as response:
                    if response.status == 416 and offset:
                        os.close(_open_part(part, 0))  # not a start of this file: emptied
                        continue
                    await check_status(response, PROVIDER)
                    seen: list[Mapping[str, str]] = [response.headers]
                    seen += [r.headers for r in response.history]
                    if response.status == 206 and not _range_starts(response, offset):
                        raise ProtocolError(
                            f"{shown} sent a different part of the file than asked for",
                            provider=PROVIDER,
                        )
                    if response.status != 206:
                        offset = 0  # the server ignored Range (or was not asked): start over
                    length = response.content_length
                    expected = offset + length if length is not None else None
                    total = _range_total(response)
                    expected = total if total is not None else expected
                    linked = _linked_size(seen)
                    if linked is not None and expected is not None and linked != expected:
                        raise _refuse(
                            part,
                            f"{shown}: the server announced {linked} bytes but sends {expected}",
                        )
                    expected = expected if expected is not None else linked
                    if expected is not None and expected > MAX_MODEL_BYTES:
                        raise ProtocolError(
                            f"{shown} is {expected} bytes, more than any model chatcli takes",
                            provider=PROVIDER,
                        )
                    if on_start is not None:
                        on_start(offset, expected)
                    received = await _receive(response, part, offset, progress, expected, shown)
            break
    else:
        raise ProtocolError(f"{shown} refused every range asked for", provider=PROVIDER)
    if expected is not None and received != expected:
        raise _refuse(part, f"{shown}: expected {expected} bytes, received {received}; removed")
    if _head(part) != GGUF_MAGIC:
        raise _refuse(part, f"{shown} is not a GGUF file (no GGUF magic); not kept")
    verified: str | None = None
    wanted = (sha256.lower(), "--sha256") if sha256 else checksum_of(seen)
    if wanted is not None:
        digest, source = wanted
        actual = _sha256_file(part)
        if actual != digest:
            raise _refuse(
                part, f"{shown}: SHA-256 {actual} does not match {digest} ({source}); removed"
            )
        verified = f"sha256 (from {source})"
    check_own_file(target)
    os.replace(part, target)
    return Pulled(target, received, verified, offset)


def _range_starts(response: Any, offset: int) -> bool:
    found = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return found is not None and int(found.group(1)) == offset


def _range_total(response: Any) -> int | None:
    found = re.match(r"bytes \d+-\d+/(\d+)$", response.headers.get("Content-Range", "").strip())
    return int(found.group(1)) if found else None


async def _receive(
    response: Any,
    part: Path,
    offset: int,
    progress: Progress | None,
    expected: int | None,
    shown: str,
) -> int:
    """Stream the body onto the ``.part`` from ``offset``; the size it then has. A body that is
    not GGUF is refused as soon as its first bytes say so."""
    fd = _open_part(part, offset)
    received = offset
    head = b""
    try:
        async for chunk in response.content.iter_chunked(CHUNK_BYTES):
            if received == 0 or (head and len(head) < len(GGUF_MAGIC)):
                head += chunk[: len(GGUF_MAGIC) - len(head)]
                if len(head) >= len(GGUF_MAGIC) and head != GGUF_MAGIC:
                    os.close(fd)
                    fd = -1
                    raise _refuse(part, f"{shown} is not a GGUF file (no GGUF magic); not kept")
            received += len(chunk)
            if received > MAX_MODEL_BYTES:
                raise ProtocolError(f"{shown} is larger than any model", provider=PROVIDER)
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
            if progress is not None:
                progress(received, expected)
        os.fsync(fd)
    finally:
        if fd >= 0:
            os.close(fd)
    return received


def remove_model(folder: Path, base: Path, name: str) -> Path:
    """The path of model ``name`` in ``folder`` (refused outside it), checked for removal."""
    stem = name[: -len(".gguf")] if name.lower().endswith(".gguf") else name
    if not _NAME_RE.match(stem):
        raise UsageError(
            f"{name!r} is not a model in {folder}: give a name from chatcli models -p local"
        )
    if not check_tree(folder, base):
        raise UsageError(f"no model {stem!r} in {folder}")
    path = folder / f"{stem}.gguf"
    if check_own_file(path) is None:
        part = folder / f"{stem}.gguf.part"
        if check_own_file(part) is None:
            raise UsageError(f"no model {stem!r} in {folder}")
        return part
    return path


def human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def elapsed_since(start: float) -> float:
    return max(time.monotonic() - start, 1e-9)
