"""The OpenAI error shape: what a failed request answers, and which status a failure of
the turn gets (a client retries 429 and 5xx: only what may pass when tried again gets one)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from chatcli.errors import (
    ChatcliError,
    MissingAuthError,
    ModelNotSupportedError,
    ProviderError,
    ProviderTimeoutError,
    ResponseStatusError,
    UsageError,
    one_line,
)


class ApiError(Exception):
    """An answer in the OpenAI error shape: ``{"error": {message, type, param, code}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> web.Response:
        return web.json_response(self.body(), status=self.status)


def api_error_from(exc: BaseException) -> ApiError:
    """The answer for a failure of the turn (or of its preflight)."""
    message = one_line(str(exc)) or type(exc).__name__
    if isinstance(exc, ApiError):
        return exc
    # Statuses a client retries (429, 5xx) only for what may pass when tried again.
    if isinstance(exc, MissingAuthError):
        return ApiError(400, message, kind="upstream_error", code="upstream_auth")
    if isinstance(exc, ModelNotSupportedError):
        return ApiError(404, message, param="model", code="model_not_found")
    if isinstance(exc, ResponseStatusError):
        code = f"upstream_{exc.status}"
        if exc.status == 429:
            return ApiError(429, message, kind="rate_limit_error", code=code)
        if exc.status == 404:  # (most often a model the service does not have)
            return ApiError(404, message, kind="upstream_error", code=code)
        if 400 <= exc.status < 500 and exc.status not in (408, 409):
            return ApiError(400, message, kind="upstream_error", code=code)  # (it would again)
        return ApiError(502, message, kind="upstream_error", code=code)
    if isinstance(exc, ProviderTimeoutError):
        return ApiError(504, message, kind="upstream_error", code="upstream_timeout")
    if isinstance(exc, ProviderError):
        return ApiError(502, message, kind="upstream_error", code="upstream_failed")
    if isinstance(exc, UsageError):
        return ApiError(400, message)
    if isinstance(exc, ChatcliError):
        return ApiError(500, message, kind="server_error")
    return ApiError(500, "internal error (see the server's log)", kind="server_error")
