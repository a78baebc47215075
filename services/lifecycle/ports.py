"""Stable web ports: the manager on a fixed port, others hashed into a range."""

from __future__ import annotations

import hashlib
from collections.abc import Collection

from hyperhive.common.errors import Conflict


def preferred_port(name: str, base: int, count: int) -> int:
    """The port ``name`` hashes to (stable across runs and machines)."""
    digest = hashlib.sha256(name.encode()).digest()
    return base + int.from_bytes(digest[:4], "big") % count


def pick_port(name: str, used: Collection[int], base: int, count: int) -> int:
    """The first free port from ``name``'s preferred one, wrapping in the range.

    Raises:
        Conflict: every port of the range is taken.
    """
    start = preferred_port(name, base, count) - base
    for i in range(count):
        port = base + (start + i) % count
        if port not in used:
            return port
    raise Conflict(f"no free agent port in {base}-{base + count - 1}")
