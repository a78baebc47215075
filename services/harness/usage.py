"""What one claude run used: tokens, model calls and cost, from its ``result`` event.

The pinned CLI (2.1.330) reports two kinds of figures in ``result`` (checked
against the scripted API, see docs/operations.md):

- ``usage`` and ``num_turns``: this invocation's main loop only;
- ``total_cost_usd`` and ``modelUsage`` (per model, side models included):
  cumulative over the session, because ``--continue`` restores the session's
  cost state.

So a run's cost (and its side models' tokens) is the difference between its
session's cumulative figures and those the previous run of the same session
reported. :class:`UsageMeter` keeps the last snapshot per session (in the
harness's private dir, so a restart does not count a session twice) and
checks each difference against ``usage``: when the cumulative figures did not
carry over (a new session, or a CLI that stops restoring them) the run's own
figures are used as they are. A session continued by a harness that never
saw its earlier runs (the first turn after this was deployed, or a lost
private dir) is counted whole once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

KINDS = ("input", "output", "cache_read", "cache_creation")
_MODEL_USAGE_KEYS = {
    "input": "inputTokens",
    "output": "outputTokens",
    "cache_read": "cacheReadInputTokens",
    "cache_creation": "cacheCreationInputTokens",
}
_USAGE_KEYS = {
    "input": "input_tokens",
    "output": "output_tokens",
    "cache_read": "cache_read_input_tokens",
    "cache_creation": "cache_creation_input_tokens",
}
KEEP_SESSIONS = 16  # snapshots kept (the newest sessions)

# {model: {kind: tokens, "cost": usd}}
Snapshot = dict[str, dict[str, float]]


@dataclass(frozen=True)
class Usage:
    """Tokens, model calls and cost of one or more claude runs."""

    input_tokens: int = 0  # not read from or written to the prompt cache
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    model_calls: int = 0
    cost_usd: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_read_tokens=self.cache_read_tokens + other.cache_read_tokens,
            cache_creation_tokens=self.cache_creation_tokens + other.cache_creation_tokens,
            model_calls=self.model_calls + other.model_calls,
            cost_usd=self.cost_usd + other.cost_usd,
        )

    def fields(self) -> dict[str, Any]:
        """As :class:`~hyperhive.common.wire.broker.TurnStats` fields."""
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_creation_tokens": self.cache_creation_tokens,
            "model_calls": self.model_calls,
            "cost_usd": round(self.cost_usd, 6),
        }


def _num(value: object) -> float:
    """A count or amount from claude's JSON; anything else (absent, text, NaN) is 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value) if math.isfinite(value) and value >= 0 else 0.0


def snapshot(result: dict[str, Any]) -> Snapshot:
    """``modelUsage`` of a result event, per model (cost under ``cost``)."""
    out: Snapshot = {}
    per_model = result.get("modelUsage")
    if isinstance(per_model, dict):
        for model, u in per_model.items():
            if isinstance(u, dict):
                out[str(model)] = {k: _num(u.get(key)) for k, key in _MODEL_USAGE_KEYS.items()}
                out[str(model)]["cost"] = _num(u.get("costUSD"))
    return out


def _totals(snap: Snapshot) -> dict[str, float]:
    return {k: sum(m.get(k, 0.0) for m in snap.values()) for k in (*KINDS, "cost")}


def _minus(cur: Snapshot, prev: Snapshot) -> Snapshot | None:
    """``cur - prev`` per model and kind; None when any figure went down."""
    out: Snapshot = {}
    for model, figures in cur.items():
        before = prev.get(model, {})
        out[model] = {k: v - before.get(k, 0.0) for k, v in figures.items()}
    if any(model not in cur for model in prev):
        return None
    if any(v < -1e-9 for m in out.values() for v in m.values()):
        return None
    return out


class UsageMeter:
    """Turns each run's ``result`` event into what that run alone used."""

    def __init__(
        self,
        load: Callable[[], dict[str, Snapshot]],
        save: Callable[[dict[str, Snapshot]], None],
    ) -> None:
        self._load = load
        self._save = save

    def of(self, result: dict[str, Any] | None) -> Usage:
        """The usage of the run whose ``result`` event this is (call once per run)."""
        if not result:
            return Usage()  # killed or crashed before its result: nothing is known
        main = {k: _num((result.get("usage") or {}).get(key)) for k, key in _USAGE_KEYS.items()}
        calls = int(_num(result.get("num_turns")))
        cur = snapshot(result)
        if not cur:  # an older CLI without modelUsage: usage and total_cost_usd
            return _usage(main, calls, _num(result.get("total_cost_usd")))
        session = str(result.get("session_id") or "")
        snaps = self._load()
        prev = snaps.get(session) if session else None
        run = self._run_part(cur, prev, main)
        if session:
            snaps.pop(session, None)
            snaps[session] = cur
            while len(snaps) > KEEP_SESSIONS:
                snaps.pop(next(iter(snaps)))
            try:
                self._save(snaps)
            except OSError as exc:
                log.warning("usage snapshot not kept: %s", exc)
        totals = _totals(run)
        return _usage({k: totals[k] for k in KINDS}, calls, totals["cost"])

    @staticmethod
    def _run_part(cur: Snapshot, prev: Snapshot | None, main: dict[str, float]) -> Snapshot:
        """The part of the session's cumulative figures that this run added."""
        if prev is not None:
            delta = _minus(cur, prev)
            # a difference that holds at least this run's own main loop is this run
            if delta is not None and all(_totals(delta)[k] >= main[k] for k in KINDS):
                return delta
        return cur  # a new session, or figures that did not carry over: this run's own


def _usage(tokens: dict[str, float], calls: int, cost: float) -> Usage:
    return Usage(
        input_tokens=int(tokens["input"]),
        output_tokens=int(tokens["output"]),
        cache_read_tokens=int(tokens["cache_read"]),
        cache_creation_tokens=int(tokens["cache_creation"]),
        model_calls=calls,
        cost_usd=cost,
    )
