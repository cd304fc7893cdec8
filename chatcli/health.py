"""``chatcli providers --check``: ask providers a tiny question in parallel and time the answers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from chatcli.config import Settings
from chatcli.core import ChatMessage
from chatcli.errors import ChatcliError
from chatcli.providers import Registry
from chatcli.render import NullRenderer
from chatcli.turn import Turn, TurnRequest, run_turn

PROMPT = "Reply with the single word: ok"


@dataclass(frozen=True, slots=True)
class CheckResult:
    provider: str
    ok: bool
    model: str | None
    first_token: float | None
    total: float
    error: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "ok": self.ok,
            "model": self.model,
            "first_token_s": round(self.first_token, 3) if self.first_token is not None else None,
            "total_s": round(self.total, 3),
            "error": self.error,
        }


def configured(settings: Settings, registry: Registry) -> list[str]:
    """The providers this installation is set up to use: the default and its fallbacks, those
    defined or tuned in config.toml, API providers whose key is set, and web providers whose
    cookies are stored."""
    from chatcli.chat import default_provider_name

    names: list[str] = []
    default = default_provider_name(settings)  # the offline model when nothing is chosen
    if default:
        names.append(registry.get(default).name)
    names += [registry.get(n).name for n in settings.fallback]
    names += [registry.get(n).name for n in settings.providers]
    for name in registry.names():
        facts = registry.create(name).describe()
        if facts.get("key_env") and facts.get("key_set"):
            names.append(facts["name"])
        if facts.get("cookies_stored"):
            names.append(facts["name"])
    return list(dict.fromkeys(names))


async def check(names: Iterable[str], registry: Registry, *, timeout: float) -> list[CheckResult]:
    """Ask each provider :data:`PROMPT` at once; one result per provider, in order."""

    async def one(name: str) -> CheckResult:
        request = TurnRequest(
            provider=name,
            messages=(ChatMessage.text("user", PROMPT),),
            timeout=timeout,
            retries=0,
        )
        turn = Turn(provider=name)
        started = time.monotonic()
        try:
            await run_turn(request, registry, NullRenderer(), turn=turn)
            error = None
        except ChatcliError as exc:
            error = str(exc)
        total = time.monotonic() - started
        first = turn.first_piece_at - started if turn.first_piece_at is not None else None
        return CheckResult(name, error is None, turn.model or None, first, total, error)

    return list(await asyncio.gather(*(one(name) for name in names)))
