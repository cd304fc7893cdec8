"""The strict checks the five seed fakes share.

Case-insensitive headers, type-strict JSON comparison, random-value formats, Cloudflare pages
and a catch-all 404 that records a violation for any request the protocol does not have.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterable
from typing import Any, TypeVar, overload
from urllib.parse import parse_qsl

from aiohttp import web

from tests.fakes import FakeService, Seen, SSEWriter

_T = TypeVar("_T")

#: "10 chars of [a-z0-9]".
RANDOM10 = re.compile(r"[a-z0-9]{10}")
#: How far a client's unix-seconds timestamp may be from the fake's clock.
CLOCK_SKEW = 300

CLOUDFLARE_PAGE = """<!DOCTYPE html><html lang="en-US"><head><title>Just a moment...</title>
<meta http-equiv="Content-Type" content="text/html; charset=UTF-8">
<meta name="robots" content="noindex,nofollow">
<meta name="viewport" content="width=device-width,initial-scale=1">
<style>*{box-sizing:border-box;margin:0;padding:0}html{line-height:1.15}</style>
</head><body class="no-js"><div class="main-wrapper" role="main"><div class="main-content">
<noscript><div id="challenge-error-title"><div class="h2"><span class="icon-wrapper">
<div class="heading-icon warning-icon"></div></span><span id="challenge-error-text">
Enable JavaScript and cookies to continue</span></div></div></noscript>
<div id="cf-please-wait">Checking if the site connection is secure</div>
</div></div><script>(function(){window._cf_chl_opt={cvId:'3',cZone:"localhost",cType:'managed',
cRay:'8a1b2c3d4e5f6a7b',cH:'x'};}());</script></body></html>
"""


def hex_pattern(count: int) -> re.Pattern[str]:
    """``count`` hex digits (either case)."""
    return re.compile(f"[0-9a-fA-F]{{{count}}}")


def same_json(actual: Any, expected: Any) -> bool:
    """Equality as JSON sees it: ``1``, ``1.0`` and ``true`` all differ; key sets must match."""
    if type(actual) is not type(expected):
        return False
    if isinstance(actual, dict):
        return actual.keys() == expected.keys() and all(
            same_json(actual[key], expected[key]) for key in actual
        )
    if isinstance(actual, list):
        return len(actual) == len(expected) and all(map(same_json, actual, expected))
    return bool(actual == expected)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class Headers(dict[str, str]):
    """Request headers keyed by lower-case name and looked up case-insensitively."""

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__((name.lower(), value) for name, value in pairs)

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())

    @overload
    def get(self, name: str, default: None = None, /) -> str | None: ...
    @overload
    def get(self, name: str, default: str, /) -> str: ...
    @overload
    def get(self, name: str, default: _T, /) -> str | _T: ...
    def get(self, name: str, default: Any = None, /) -> Any:
        return super().get(name.lower(), default)


_CHROME_VERSION = re.compile(r"Chrome/(\d+)\.")
_PLATFORMS = {"Windows NT": "Windows", "Macintosh": "macOS", "Android": "Android", "Linux": "Linux"}


class SeedFake(FakeService):
    """The strict checks shared by the five seed fakes."""

    # -- serving helpers -----------------------------------------------------------------------

    @property
    def origin(self) -> str:
        """The site root, as an Origin header names it (``http://localhost:PORT``)."""
        return self.base_url

    @property
    def authority(self) -> str:
        """``localhost:PORT``."""
        return self.base_url.split("://", 1)[-1]

    def add_catch_all(self, app: web.Application) -> None:
        """Route everything no real route took (unknown path or method) to a 404 violation."""
        app.router.add_route("*", "/{tail:.*}", self._unknown)

    async def _unknown(self, request: web.Request) -> web.StreamResponse:
        seen = await self.record(request)
        self.violations.append(f"unexpected request: {seen.method} {request.path_qs}")
        return web.json_response({"error": "not found"}, status=404)

    @staticmethod
    def json_error(
        status: int, payload: Any, headers: dict[str, str] | None = None
    ) -> web.Response:
        return web.json_response(payload, status=status, headers=headers)

    @staticmethod
    def cloudflare() -> web.Response:
        """A 403 Cloudflare managed-challenge page."""
        return web.Response(
            status=403,
            text=CLOUDFLARE_PAGE,
            content_type="text/html",
            headers={
                "Server": "cloudflare",
                "cf-mitigated": "challenge",
                "CF-RAY": "8a1b2c3d4e5f6a7b-FRA",
            },
        )

    @staticmethod
    async def open_sse(request: web.Request) -> SSEWriter:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        return SSEWriter(response)

    # -- recording -----------------------------------------------------------------------------

    async def record(self, request: web.Request) -> Seen:
        seen = await super().record(request)
        seen.headers = Headers(request.headers.items())
        names = [name.lower() for name in request.headers]
        repeated = sorted({name for name in names if names.count(name) > 1})
        self.expect(not repeated, f"{seen.path}: repeated headers {repeated}")
        return seen

    # -- checks --------------------------------------------------------------------------------

    def expect_absent(self, seen: Seen, name: str) -> None:
        self.expect(
            name not in seen.headers,
            f"{seen.path}: header {name} must be absent, got {seen.headers.get(name)!r}",
        )

    def expect_same(self, what: str, actual: Any, expected: Any) -> bool:
        ok = same_json(actual, expected)
        self.expect(ok, f"{what}: expected {expected!r}, got {actual!r}")
        return ok

    def expect_keys(self, what: str, obj: Any, keys: Iterable[str]) -> bool:
        """``obj`` is a JSON object with exactly ``keys``."""
        if not isinstance(obj, dict):
            self.violations.append(f"{what}: expected an object, got {obj!r}")
            return False
        wanted = set(keys)
        missing = sorted(wanted - obj.keys())
        extra = sorted(obj.keys() - wanted)
        self.expect(not missing and not extra, f"{what}: missing {missing}, unexpected {extra}")
        return not missing and not extra

    def expect_match(self, what: str, value: Any, pattern: re.Pattern[str]) -> bool:
        ok = isinstance(value, str) and pattern.fullmatch(value) is not None
        self.expect(ok, f"{what}: expected /{pattern.pattern}/, got {value!r}")
        return ok

    def expect_text(self, what: str, value: Any, expected: str | None) -> None:
        """A string; equal to ``expected`` when a test set one."""
        if expected is not None:
            self.expect_same(what, value, expected)
        else:
            self.expect(isinstance(value, str) and value != "", f"{what}: {value!r}")

    def expect_uuid4(self, what: str, value: Any) -> bool:
        try:
            parsed = uuid.UUID(value) if isinstance(value, str) else None
        except ValueError:
            parsed = None
        ok = (
            parsed is not None
            and str(parsed) == value
            and parsed.version == 4
            and parsed.variant == uuid.RFC_4122
        )
        self.expect(ok, f"{what}: expected a uuid4 string, got {value!r}")
        return ok

    def expect_fresh_timestamp(self, what: str, value: Any) -> int | None:
        """Unix seconds as a decimal string (or int) within :data:`CLOCK_SKEW` of now."""
        text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
        if not isinstance(text, str) or not re.fullmatch(r"[0-9]+", text):
            self.violations.append(f"{what}: expected unix seconds, got {value!r}")
            return None
        stamp = int(text)
        self.expect(
            abs(stamp - time.time()) <= CLOCK_SKEW, f"{what}: {stamp} is not within 300 s of now"
        )
        return stamp

    def expect_client_hints(self, seen: Seen) -> None:
        """Chrome's client hints, consistent with its user-agent."""
        agent = seen.headers.get("User-Agent", "")
        brands = seen.headers.get("sec-ch-ua")
        mobile = seen.headers.get("sec-ch-ua-mobile")
        platform = seen.headers.get("sec-ch-ua-platform")
        where = f"{seen.path} client hints"
        self.expect(
            brands is not None and ("Chromium" in brands or "Google Chrome" in brands),
            f"{where}: sec-ch-ua {brands!r}",
        )
        self.expect(mobile in ("?0", "?1"), f"{where}: sec-ch-ua-mobile {mobile!r}")
        self.expect(
            platform is not None and re.fullmatch(r'"[^"]+"', platform) is not None,
            f"{where}: sec-ch-ua-platform {platform!r}",
        )
        version = _CHROME_VERSION.search(agent)
        if version and brands:
            self.expect(
                f'v="{version.group(1)}"' in brands,
                f"{where}: sec-ch-ua {brands!r} does not name Chrome {version.group(1)} of the UA",
            )
        if platform:
            for marker, name in _PLATFORMS.items():
                if marker in agent:
                    self.expect(
                        platform == f'"{name}"',
                        f"{where}: platform {platform!r} but the user-agent says {name}",
                    )
                    break

    def json_body(self, seen: Seen) -> dict[str, Any] | None:
        """The JSON object body (sent as ``application/json``), else a violation."""
        content_type = seen.headers.get("Content-Type", "")
        self.expect(
            content_type.split(";")[0].strip() == "application/json",
            f"{seen.path}: content-type {content_type!r} is not application/json",
        )
        if isinstance(seen.json, dict):
            return seen.json
        self.violations.append(f"{seen.path}: body is not a JSON object: {seen.body[:200]!r}")
        return None

    def form_body(self, seen: Seen, keys: Iterable[str]) -> dict[str, str] | None:
        """The form-encoded body with exactly ``keys`` (each once), else a violation."""
        content_type = seen.headers.get("Content-Type", "")
        self.expect(
            content_type.split(";")[0].strip() == "application/x-www-form-urlencoded",
            f"{seen.path}: content-type {content_type!r} is not form-encoded",
        )
        try:
            pairs = parse_qsl(seen.body.decode(), keep_blank_values=True, strict_parsing=True)
        except (UnicodeDecodeError, ValueError):
            self.violations.append(f"{seen.path}: body is not a form: {seen.body[:200]!r}")
            return None
        names = [name for name, _ in pairs]
        repeated = sorted({name for name in names if names.count(name) > 1})
        self.expect(not repeated, f"{seen.path} form: repeated fields {repeated}")
        form = dict(pairs)
        return form if self.expect_keys(f"{seen.path} form", form, keys) else None


# -- GPTalk ---------------------------------------------------------------------------------------
