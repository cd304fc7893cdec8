"""What answers cost: token counts, speed, and money where the user gave prices.

No price table ships with chatcli (prices change): ``[providers.NAME.prices]`` in config.toml
gives them per model, per million tokens (``"gpt-4o-mini" = { input = 0.15, output = 0.6 }``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any, Final

from chatcli.errors import UsageError

#: ``--since 7d``: a number and a unit.
_SPAN: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def since(span: str | None, *, now: float | None = None) -> float | None:
    """The Unix time ``span`` (``30m``, ``12h``, ``7d``, ``2w``) before now; ``None``: all time."""
    if span is None:
        return None
    match = _SPAN.match(span)
    if match is None:
        raise UsageError(f"--since {span!r}: give a number and a unit, like 30m, 12h, 7d or 2w")
    seconds = float(match.group(1)) * _SECONDS[match.group(2)]
    return (time.time() if now is None else now) - seconds


def price(
    providers: Mapping[str, Mapping[str, Any]], provider: str, model: str
) -> tuple[float, float] | None:
    """The (input, output) price per million tokens the config gives for this model."""
    for name, table in providers.items():
        if name.strip().lower() != provider.strip().lower():
            continue
        given = table.get("prices", {}).get(model)
        if given is not None:
            return float(given.get("input", 0.0)), float(given.get("output", 0.0))
    return None


def cost(
    providers: Mapping[str, Mapping[str, Any]],
    provider: str,
    model: str,
    input_tokens: int | None,
    output_tokens: int | None,
) -> float | None:
    """What the tokens cost at the configured prices; ``None`` when no price is configured."""
    prices = price(providers, provider, model)
    if prices is None or input_tokens is None or output_tokens is None:
        return None
    return (input_tokens * prices[0] + output_tokens * prices[1]) / 1_000_000


#: Shortest stretch from the first piece to the end that a speed is given for: an answer that
#: came whole (--no-stream) or in a blink has no meaningful rate.
MIN_STREAMING: Final = 0.1


def speed(output_tokens: int | None, first_token: float | None, total: float) -> float | None:
    """Tokens per second of the answer, from its first piece to its end."""
    if not output_tokens or first_token is None or total - first_token < MIN_STREAMING:
        return None
    return output_tokens / (total - first_token)
