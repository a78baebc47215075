"""Times as an operator types them (``--since``, ``?since=``)."""

from __future__ import annotations

import re
import time
from datetime import datetime

from hyperhive.common.errors import BadRequest

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(value: str, now: float | None = None) -> float:
    """``1700000000``, ``2026-01-02T03:04``, or an age (``90s``, ``10m``, ``2h``, ``1d``).

    Raises:
        BadRequest: none of those.
    """
    now = time.time() if now is None else now
    value = value.strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", value)
    if m:
        return now - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise BadRequest(
            f"--since {value!r}: use unix time, ISO time (2026-01-02T03:04) or an age (10m, 2h)"
        ) from None
