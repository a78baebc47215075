"""UsageMeter: a run's own usage from result events whose cost and modelUsage
are cumulative over a continued session (the CLI's behaviour, checked end to
end in test_usage.py)."""

from __future__ import annotations

from typing import Any

import pytest

from hyperhive.harness.usage import Usage, UsageMeter


def result(
    session: str,
    run: tuple[int, int, int, int],
    cumulative: dict[str, tuple[int, int, int, int, float]],
    calls: int = 1,
) -> dict[str, Any]:
    """A ``result`` event: ``usage`` of this run, ``modelUsage`` of the session."""
    i, o, r, w = run
    return {
        "type": "result",
        "session_id": session,
        "num_turns": calls,
        "usage": {
            "input_tokens": i,
            "output_tokens": o,
            "cache_read_input_tokens": r,
            "cache_creation_input_tokens": w,
        },
        "total_cost_usd": sum(c[4] for c in cumulative.values()),
        "modelUsage": {
            m: {
                "inputTokens": c[0],
                "outputTokens": c[1],
                "cacheReadInputTokens": c[2],
                "cacheCreationInputTokens": c[3],
                "costUSD": c[4],
            }
            for m, c in cumulative.items()
        },
    }


class Store:
    def __init__(self) -> None:
        self.doc: dict[str, Any] = {}

    def meter(self) -> UsageMeter:
        return UsageMeter(lambda: dict(self.doc), self.save)

    def save(self, doc: dict[str, Any]) -> None:
        self.doc = dict(doc)


def test_a_continued_session_counts_only_what_each_run_added() -> None:
    store = Store()
    meter = store.meter()
    first = meter.of(result("s1", (1000, 10, 0, 50), {"opus": (1000, 10, 0, 50, 0.5)}, calls=2))
    assert first == Usage(
        input_tokens=1000, output_tokens=10, cache_creation_tokens=50, model_calls=2, cost_usd=0.5
    )
    # the next run of the session: cumulative figures, and a side model
    second = meter.of(
        result(
            "s1", (20, 2, 900, 0), {"opus": (1020, 12, 900, 50, 0.6), "haiku": (5, 5, 0, 0, 0.01)}
        )
    )
    assert (second.input_tokens, second.output_tokens, second.cache_read_tokens) == (25, 7, 900)
    assert second.cost_usd == pytest.approx(0.11)
    # a restarted harness (a new meter, the same store) knows where the session was
    third = store.meter().of(
        result("s1", (3, 3, 0, 0), {"opus": (1023, 15, 900, 50, 0.63), "haiku": (5, 5, 0, 0, 0.01)})
    )
    assert (third.input_tokens, third.cost_usd) == (3, pytest.approx(0.03))
    assert sum((first, second, third), Usage()).cost_usd == pytest.approx(0.64)


def test_figures_that_did_not_carry_over_are_the_runs_own() -> None:
    meter = Store().meter()
    meter.of(result("s1", (1000, 10, 0, 0), {"opus": (1000, 10, 0, 0, 0.5)}))
    # a new session, then the same session reporting only its own run (no restore)
    fresh = meter.of(result("s2", (7, 7, 0, 0), {"opus": (7, 7, 0, 0, 0.002)}))
    assert (fresh.input_tokens, fresh.cost_usd) == (7, 0.002)
    own = meter.of(result("s1", (2000, 20, 0, 0), {"opus": (2000, 20, 0, 0, 1.0)}))
    # 2000 - 1000 would be less than this run's own 2000: not a difference
    assert (own.input_tokens, own.cost_usd) == (2000, 1.0)


def test_no_result_or_an_old_cli() -> None:
    meter = Store().meter()
    assert meter.of(None) == Usage()
    old = {"usage": {"input_tokens": 5, "output_tokens": 6}, "total_cost_usd": 0.1, "num_turns": 1}
    assert meter.of(old) == Usage(input_tokens=5, output_tokens=6, model_calls=1, cost_usd=0.1)
    junk = {"usage": {"input_tokens": "many"}, "total_cost_usd": float("nan"), "modelUsage": 3}
    assert meter.of(junk) == Usage()
