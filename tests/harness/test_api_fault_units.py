"""How a claude run's end is classified, and the back-off after a transient fault."""

from __future__ import annotations

from typing import Any

import pytest

from hyperhive.harness.claude import AUTH, TRANSIENT, RunResult, _account
from hyperhive.harness.loop import MAX_RETRY_AFTER_S, backoff_s


def _api_error(status: int | None, text: str = "API Error") -> dict[str, Any]:
    return {
        "type": "result",
        "is_error": True,
        "terminal_reason": "api_error",
        "api_error_status": status,
        "result": text,
    }


@pytest.mark.parametrize(
    ("result", "fault"),
    [
        (_api_error(429), TRANSIENT),
        (_api_error(529), TRANSIENT),
        (_api_error(500), TRANSIENT),
        (_api_error(408), TRANSIENT),
        (_api_error(None, "API Error: Connection dropped (ECONNRESET)"), TRANSIENT),
        (_api_error(None, "Request timed out."), TRANSIENT),
        (_api_error(401, "Invalid API key · Fix external API key"), AUTH),
        (_api_error(403), AUTH),
        (_api_error(None, "Not logged in · Please run /login"), AUTH),
        (_api_error(400, "prompt is too long"), ""),
        (_api_error(413), ""),
        ({"type": "result", "is_error": True, "terminal_reason": "max_turns"}, ""),
        ({"type": "result", "is_error": False, "terminal_reason": "completed"}, ""),
        (None, ""),
    ],
)
def test_api_fault_of_a_run(result: dict[str, Any] | None, fault: str) -> None:
    assert RunResult(exit_code=1 if result else 0, result=result).api_fault == fault


def test_a_cancelled_run_is_no_api_fault() -> None:
    assert RunResult(exit_code=1, cancelled=True, result=_api_error(529)).api_fault == ""


def test_the_longest_retry_delay_claude_chose_is_kept() -> None:
    res = RunResult(exit_code=0)
    for event in (
        {"type": "system", "subtype": "api_retry", "retry_delay_ms": 2405},
        {"type": "system", "subtype": "api_retry", "retry_delay_ms": 600},
        {"type": "system", "subtype": "api_retry"},  # no delay: ignored
    ):
        _account(event, res, {})
    assert res.retry_delay_s == pytest.approx(2.405)


@pytest.mark.parametrize(
    ("attempt", "hint", "low", "high"),
    [
        (1, 0, 5, 10),  # base 10 s, jittered down to half
        (2, 0, 10, 20),
        (3, 0, 20, 40),
        (10, 0, 150, 300),  # capped
        (1, 20, 20, 20),  # retry-after wins over a shorter back-off
        (10, 600, 600, 600),  # and over the cap
        (1, 10 * MAX_RETRY_AFTER_S, MAX_RETRY_AFTER_S, MAX_RETRY_AFTER_S),  # not believed
    ],
)
def test_backoff_is_bounded_jittered_and_honours_retry_after(
    attempt: int, hint: float, low: float, high: float
) -> None:
    waits = [backoff_s(attempt, 10, 300, hint) for _ in range(200)]
    assert low <= min(waits) and max(waits) <= high
    if low < high:
        assert len(set(waits)) > 100  # jittered
