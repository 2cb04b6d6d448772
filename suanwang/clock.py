"""Time as the platform counts it: milliseconds since the epoch, UTC."""

from __future__ import annotations

import time
from typing import Any

HOUR_MS = 3_600_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def epoch_ms(value: Any) -> Any:
    """Milliseconds since the epoch from an Avro timestamp (datetime when decoded, int when built here)."""
    if value is None or isinstance(value, int):
        return value
    return int(value.timestamp() * 1000)
