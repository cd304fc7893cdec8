"""A request's JSON into chatcli's terms: its messages (text, images, tool calls and results)
and its tools; what is wrong is an :class:`~chatcli.server.errors.ApiError` saying where."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from typing import Any, Final, cast

from chatcli.core import (
    ChatMessage,
    ImagePart,
    Part,
    Role,
    TextPart,
    ToolCall,
    ToolSpec,
)
from chatcli.server.errors import ApiError

#: The most messages one request may carry.
MAX_MESSAGES: Final = 10_000

_ROLES: Final = ("system", "developer", "user", "assistant", "tool")


def parse_messages(given: Any) -> tuple[ChatMessage, ...]:
    if not isinstance(given, list) or not given:
        raise ApiError(400, "messages must be a non-empty list", param="messages")
    if len(given) > MAX_MESSAGES:
        raise ApiError(400, f"more than {MAX_MESSAGES:,} messages", param="messages")
    out: list[ChatMessage] = []
    for index, message in enumerate(given):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise ApiError(400, f"{where} must be an object", param=where)
        role = message.get("role")
        if role not in _ROLES:
            raise ApiError(
                400, f"{where}.role must be one of {', '.join(_ROLES)}", param=f"{where}.role"
            )
        if role == "developer":
            role = "system"
        parts = _parts(message.get("content"), where, images=role == "user")
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise ApiError(400, f"{where}.tool_call_id is required", param=where)
            out.append(ChatMessage.tool_result(call_id, "".join(_texts(parts))))
            continue
        calls: tuple[ToolCall, ...] = ()
        if role == "assistant" and message.get("tool_calls"):
            calls = _calls(message["tool_calls"], where)
        out.append(ChatMessage(cast(Role, role), parts, tool_calls=calls))
    if out[-1].role not in ("user", "tool"):
        raise ApiError(400, "the last message must be the user's (or a tool result)")
    return tuple(out)


def _texts(parts: Sequence[Part]) -> list[str]:
    return [p.text for p in parts if isinstance(p, TextPart)]


def _parts(content: Any, where: str, *, images: bool) -> tuple[Part, ...]:
    if content is None:
        return (TextPart(""),)
    if isinstance(content, str):
        return (TextPart(content),)
    if not isinstance(content, list):
        raise ApiError(400, f"{where}.content must be text or a list of parts", param=where)
    parts: list[Part] = []
    for number, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append(TextPart(part["text"]))
        elif kind == "image_url" and images:
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str):
                raise ApiError(400, f"{where}.content[{number}].image_url.url is required")
            parts.append(_image(url, f"{where}.content[{number}]"))
        else:
            raise ApiError(
                400,
                f"{where}.content[{number}]: only text"
                + (" and image_url" if images else "")
                + " parts are taken here",
                param=where,
            )
    images_first = [p for p in parts if isinstance(p, ImagePart)]
    text = "\n".join(_texts(parts))
    return (*images_first, TextPart(text))


def _image(url: str, where: str) -> ImagePart:
    from chatcli.images import sniff

    if url.startswith(("http://", "https://")):
        return ImagePart.from_url(url)
    if not url.startswith("data:") or "," not in url:
        raise ApiError(400, f"{where}: an image is a data: URL or an http(s) address")
    header, _, payload = url.partition(",")
    if not header.endswith(";base64"):
        raise ApiError(400, f"{where}: a data: URL image must be base64")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{where}: the image's base64 is malformed") from None
    kind = sniff(data)
    if kind is None:
        raise ApiError(400, f"{where}: not a PNG, JPEG, WebP or GIF image")
    return ImagePart(data, kind, name="image")


def parse_tools(given: Any) -> tuple[ToolSpec, ...]:
    if given is None or given == []:
        return ()
    if not isinstance(given, list):
        raise ApiError(400, "tools must be a list", param="tools")
    specs: list[ToolSpec] = []
    for index, tool in enumerate(given):
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(tool, dict)
            or tool.get("type") != "function"
            or not isinstance(function, dict)
        ):
            raise ApiError(400, f"tools[{index}] must be a function tool", param="tools")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise ApiError(400, f"tools[{index}].function.name is required", param="tools")
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(parameters, dict):
            raise ApiError(400, f"tools[{index}].function.parameters must be an object")
        description = function.get("description") or ""
        specs.append(ToolSpec(name, str(description), parameters))
    return tuple(specs)


def _calls(given: Any, where: str) -> tuple[ToolCall, ...]:
    if not isinstance(given, list):
        raise ApiError(400, f"{where}.tool_calls must be a list", param=where)
    calls: list[ToolCall] = []
    for call in given:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(call.get("id"), str):
            raise ApiError(400, f"{where}.tool_calls: each needs an id and a function")
        arguments = function.get("arguments", "")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        calls.append(ToolCall(call["id"], str(function.get("name", "")), arguments))
    return tuple(calls)
