"""Pure parts of the broker: group commit batching and system event rendering."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from hyperhive.broker.batching import GroupCommit
from hyperhive.broker.handlers import stats_rows
from hyperhive.broker.render import render_event
from hyperhive.common.errors import BadRequest, Internal, Unavailable
from hyperhive.common.wire.broker import TurnStats
from hyperhive.common.wire.events import (
    AgentStuck,
    ApprovalResolved,
    ContainerCrash,
    OperatorAnswered,
    SpawnResolved,
)


async def test_concurrent_submissions_share_batches_and_keep_their_results():
    batches: list[list[int]] = []

    async def run(items: Sequence[int]) -> list[int]:
        batches.append(list(items))
        await asyncio.sleep(0.01)  # a commit in flight: later submissions queue up
        return [i * 10 for i in items]

    gc: GroupCommit[int, int] = GroupCommit(run, workers=1)
    gc.start()
    try:
        results = await asyncio.gather(*(gc.submit(i) for i in range(20)))
    finally:
        await gc.stop()
    assert results == [i * 10 for i in range(20)]
    assert sorted(i for b in batches for i in b) == list(range(20))
    assert len(batches) < 20  # shared


async def test_a_service_error_fails_the_batch_and_a_bad_item_fails_alone():
    async def run(items: Sequence[int]) -> list[int]:
        if 0 in items:
            raise Unavailable("database unavailable")
        if 13 in items:
            raise ValueError("this item cannot be stored")
        return list(items)

    gc: GroupCommit[int, int] = GroupCommit(run, workers=1)
    gc.start()
    try:
        with pytest.raises(Unavailable):
            await gc.submit(0)
        results = await asyncio.gather(
            *(gc.submit(i) for i in (11, 12, 13, 14)), return_exceptions=True
        )
    finally:
        await gc.stop()
    assert results[:2] == [11, 12] and results[3] == 14
    assert isinstance(results[2], Internal)


@pytest.mark.parametrize(
    ("event", "text"),
    [
        (ContainerCrash(agent="w1", exit_code=137), "container of w1 crashed (exit code 137)"),
        (
            AgentStuck(agent="w1", reason="heartbeat", detail="last beat 90s ago"),
            "agent w1 looks stuck: its heartbeat stopped: last beat 90s ago",
        ),
        (
            AgentStuck(agent="w1", reason="login_needed", detail="Invalid API key"),
            "agent w1 looks stuck: the API refused its credentials (login needed): Invalid API key",
        ),
        (
            ApprovalResolved(
                approval_id=3,
                agent="w1",
                state="failed",
                tag="failed/3",
                note="build error",
                sha="a" * 40,
            ),
            "approval #3 for w1: failed (commit aaaaaaaaaaaa), tag failed/3: build error",
        ),
        (
            SpawnResolved(approval_id=4, agent="w2", state="denied", note="not now"),
            "spawn approval #4 for w2: denied: not now",
        ),
        (
            OperatorAnswered(question_id=5, question="Which?\nPick one", answer=["a", "b"]),
            "operator answered question #5 (Which? Pick one): a, b",
        ),
    ],
)
def test_system_events_read_as_one_line(event, text):
    assert render_event(event) == text


def test_turn_stats_with_an_unknown_recipient_kind_are_refused() -> None:
    base = {"ts": 1_800_000_000.0, "duration_ms": 1.0, "exit_code": 0}
    rows = dict(stats_rows(TurnStats(**base, messages_sent_to={"manager": 2})))
    assert rows["sent_to.manager"] == 2
    with pytest.raises(BadRequest, match="messages_sent_to keys"):
        stats_rows(TurnStats(**base, messages_sent_to={"everyone": 1}))
