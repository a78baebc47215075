"""API faults against the real claude CLI and a real hive (docs/turn-loop.md).

A transient fault (429, 529, 500, a stream closed midway, a first byte later
than claude's timeout) that outlasts claude's own retries does not consume
the message: the harness backs off, shows it, keeps later messages waiting in
the inbox and runs the same message once the API answers, once. Refused
credentials stop the agent's turns until new ones are stored, with one
system event in the manager's inbox.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from hyperhive.cli.embedded import EmbeddedNats
from hyperhive.common import rpc, subjects
from hyperhive.common.jetstream import ensure_state_bucket
from hyperhive.common.wire.base import Ok
from hyperhive.common.wire.broker import AckRequest, RecvReply, RecvRequest
from hyperhive.common.wire.events import AgentStuck
from hyperhive.harness import creds
from hyperhive.harness.loop import LOGIN, RETRYING
from tests import rig
from tests.harness.conftest import (
    Running,
    Stack,
    agent_name,
    running_harness,
    running_stack,
    stack_settings,
)
from tests.scripted_anthropic import Fault, Reply, ScriptedAnthropic, last_user_mentions

pytestmark = [pytest.mark.claude, pytest.mark.slow]

# claude retries once by itself; the harness then waits 1-2 s (more for retry-after)
FAST_RETRY = {
    "HIVE_HARNESS_API_RETRIES": "1",
    "HIVE_HARNESS_API_BACKOFF_S": "1",
    "HIVE_HARNESS_API_BACKOFF_MAX_S": "2",
}


def _ends(h: Running, message_id: int | None = None) -> list[dict[str, Any]]:
    return [
        e.event
        for e in h.records("turn_end")
        if message_id is None or e.event["message_id"] == message_id
    ]


def _ran_once(api: ScriptedAnthropic, reply: Reply, needle: str) -> None:
    """``reply`` answered one request, and no request for ``needle`` came after it
    (the message's turn was not run again after it succeeded)."""
    used = [r for r in api.requests if r.reply is reply]
    assert len(used) == 1, used
    later = [r for r in api.requests if r.ts > used[0].ts and needle in r.last_user_text()]
    assert not later, [r.last_user_text()[:80] for r in later]


async def _ran_ok(h: Running, message_id: int) -> dict[str, Any] | None:
    ok = [e for e in _ends(h, message_id) if e["outcome"] == "ok"]
    return ok[0] if ok else None


@pytest.mark.parametrize(
    "fault",
    [
        Fault.rate_limited(retry_after=3),
        Fault.overloaded(),
        Fault.server_error(),
        Fault.dropped(),
        Fault.slow(4),  # later than claude's timeout (API_TIMEOUT_MS below)
    ],
    ids=lambda f: f.label.replace(" ", "-"),
)
async def test_a_transient_fault_keeps_the_message_until_the_api_answers(
    stack: Stack, api: ScriptedAnthropic, fault: Fault, monkeypatch: pytest.MonkeyPatch
) -> None:
    if fault.first_byte_s:
        monkeypatch.setenv("API_TIMEOUT_MS", "1500")  # claude inherits the harness's env
    name = agent_name("f")
    await stack.spawn(name)
    api.outage(fault)
    async with running_harness(stack.harness_settings(name, **FAST_RETRY)) as h:
        first = await stack.send(name, "first task: survive the outage")
        end = await h.turn_end(1)
        assert end["outcome"] == "api_unavailable", end
        assert end["message_id"] == first.id and not end["acked"]
        assert "stats" in end

        # the badge and the tail say so
        retry = (await rig.eventually(lambda: h.records("api_retry"), what="api_retry"))[0]
        assert retry.event["attempt"] == 1 and retry.event["error"]
        if fault.retry_after:  # honoured, though longer than the back-off's cap
            assert retry.event["delay_s"] >= fault.retry_after
        else:
            assert 0.5 <= retry.event["delay_s"] <= 2
        states = [r.event for r in h.records("state")]
        waiting = [s for s in states if s["state"] == RETRYING]
        assert waiting and waiting[0]["retry_at"] and waiting[0]["api_error"]

        # later messages wait in the inbox, the first one is not acked
        second = await stack.send(name, "second task: wait your turn")
        await rig.eventually(lambda: len(_ends(h)) >= 2, timeout=60, what="a second attempt")
        assert all(e["outcome"] == "api_unavailable" for e in _ends(h))
        assert {e["message_id"] for e in _ends(h)} == {first.id}
        assert (await stack.status(first.id)).state != "acked"
        assert (await stack.status(second.id)).state == "committed"

        # the API answers again: the same message runs once, then the next one
        done = api.reply("done with the first", when=last_user_mentions("first task"))
        api.reply("done with the second", when=last_user_mentions("second task"))
        api.end_outage()
        await rig.eventually(lambda: _ran_ok(h, second.id), timeout=90, what="second ran")
        ok_first = [e for e in _ends(h, first.id) if e["outcome"] == "ok"]
        assert len(ok_first) == 1 and ok_first[0]["acked"]
        assert _ends(h)[-2:] == [ok_first[0], await _ran_ok(h, second.id)]
        assert (await stack.status(first.id)).state == "acked"
        assert (await stack.status(second.id)).state == "acked"
        _ran_once(api, done, "first task")  # not run twice after success
        assert h.harness.state == "idle" and h.harness.retry_at is None


async def test_a_slow_first_byte_within_the_timeout_is_a_long_turn(
    stack: Stack, api: ScriptedAnthropic
) -> None:
    name = agent_name("s")
    await stack.spawn(name)
    api.fault(Fault.slow(3), "late but fine", when=last_user_mentions("patience"))
    async with running_harness(stack.harness_settings(name, **FAST_RETRY)) as h:
        sent = await stack.send(name, "patience please")
        end = await h.turn_end(1)
        assert end["outcome"] == "ok" and end["acked"], end
        assert end["stats"]["duration_ms"] >= 3000
        assert not h.records("api_retry")
        assert (await stack.status(sent.id)).state == "acked"


async def test_cancel_gives_up_a_message_waiting_for_the_api(
    stack: Stack, api: ScriptedAnthropic
) -> None:
    name = agent_name("c")
    await stack.spawn(name)
    api.outage(Fault.overloaded())
    settings = stack.harness_settings(
        name,
        **{
            **FAST_RETRY,
            "HIVE_HARNESS_API_BACKOFF_S": "60",
            "HIVE_HARNESS_API_BACKOFF_MAX_S": "60",
        },
    )
    async with running_harness(settings) as h:
        sent = await stack.send(name, "doomed task: give it up")
        await h.turn_end(1)
        await rig.eventually(lambda: h.harness.state == RETRYING, what="waiting")
        assert await h.harness.cancel()
        await rig.eventually(lambda: h.harness.state == "idle", what="given up")
        assert (await stack.status(sent.id)).state == "acked"
        # the next turn's prompt tells claude about the message it gave up
        api.end_outage()
        api.reply("noted", when=last_user_mentions("next task"))
        await stack.send(name, "next task")
        end = await h.turn_end(2)
        assert end["outcome"] == "ok"
        prompt = api.matching(last_user_mentions("next task"))[0].last_user_text()
        assert "doomed task: give it up" in prompt and "cancelled by the operator" in prompt


@pytest.fixture
async def hive_with_manager(
    nats_server: EmbeddedNats, database_url: str, hive_home: Path, api: ScriptedAnthropic
) -> Any:
    """broker, lifecycle (with an idle hm1nd) and crash-watch."""
    settings = stack_settings(
        nats_server,
        database_url,
        hive_home,
        HIVE_LIFECYCLE_MANAGER="hm1nd",
        HIVE_CRASHWATCH_POLL_INTERVAL_S="0.5",
    )
    async with running_stack(nats_server, settings, ("broker", "lifecycle", "crash-watch")) as s:
        yield s


async def test_refused_credentials_stop_turns_until_new_ones(
    hive_with_manager: Stack, api: ScriptedAnthropic, service_nc: Any
) -> None:
    stack = hive_with_manager
    name = agent_name("l")
    await stack.spawn(name)
    api.outage(Fault.unauthorized())
    async with (
        running_harness(stack.harness_settings(name, **FAST_RETRY)) as h,
        rig.agent_connection(stack.nats, stack.settings, subjects.MANAGER) as manager,
    ):
        first = await stack.send(name, "first task: needs a login")
        end = await h.turn_end(1)
        assert end["outcome"] == "login_needed" and not end["acked"], end
        await rig.eventually(lambda: h.harness.state == LOGIN, what="login needed")
        status = h.harness.status()
        assert status["login_needed"] is True and status["state"] == LOGIN
        [record] = h.records("login_needed")
        assert "API key" in record.event["error"]

        # one system event in the manager's inbox (crash-watch reads the heartbeat)
        kv = await ensure_state_bucket(service_nc.jetstream())
        beat = (await kv.get(subjects.heartbeat_key(name))).value or b""
        assert b'"login_needed":"' in beat
        events = await _manager_events(manager, until=1)
        assert [(e.agent, e.reason) for e in events] == [(name, "login_needed")]

        # no hot loop: nothing more is asked of the API, later messages wait
        asked = len(api.requests)
        second = await stack.send(name, "second task: after the login")
        await asyncio.sleep(3)  # longer than the loop's look at the credentials
        assert len(api.requests) == asked and h.harness.turn == 1
        assert (await stack.status(second.id)).state == "committed"
        assert await _manager_events(manager, until=0, wait_ms=500) == []  # still one

        # the operator stores credentials (what the page's form does): the same
        # message runs, once, then the next one
        api.end_outage()
        done = api.reply("logged in, done", when=last_user_mentions("first task"))
        api.reply("second done", when=last_user_mentions("second task"))
        creds.store(h.harness.cfg.creds_dir, "api_key", "sk-ant-operator-new")
        h.harness.credentials_changed()
        await rig.eventually(lambda: _ran_ok(h, second.id), timeout=60, what="second ran")
        assert [e["outcome"] for e in _ends(h, first.id)] == ["login_needed", "ok"]
        assert (await stack.status(first.id)).state == "acked"
        _ran_once(api, done, "first task")
        assert h.harness.status()["login_needed"] is False


async def _manager_events(
    manager: Any, *, until: int, wait_ms: int = 1000, timeout: float = 30
) -> list[AgentStuck]:
    """The manager's inbox drained (acked) until ``until`` system events came and
    a long poll of ``wait_ms`` brought nothing more."""
    got: list[AgentStuck] = []
    async with asyncio.timeout(timeout):
        while True:
            reply = await rpc.request(
                manager,
                subjects.agent(subjects.MANAGER, subjects.AGENT_RECV),
                RecvRequest(wait_ms=wait_ms),
                RecvReply,
                timeout=wait_ms / 1000 + 10,
            )
            msg = reply.message
            if msg is None:
                if len(got) >= until:
                    return got
                continue
            await rpc.request(
                manager,
                subjects.agent(subjects.MANAGER, subjects.AGENT_ACK),
                AckRequest(id=msg.id),
                Ok,
            )
            if isinstance(msg.event, AgentStuck):
                got.append(msg.event)


async def test_a_request_the_api_refuses_is_a_failed_turn_as_before(
    stack: Stack, api: ScriptedAnthropic
) -> None:
    """A 400 is not an outage: the turn fails and the message is acked, as for
    any failed turn (test_controls: it is shown again in the next prompt);
    no back-off, no retry."""
    name = agent_name("r")
    await stack.spawn(name)
    # every request (claude tries a refused request again in another form)
    api.outage(Fault(status=400, error_type="invalid_request_error", message="refused: no"))
    async with running_harness(stack.harness_settings(name, **FAST_RETRY)) as h:
        sent = await stack.send(name, "refused task")
        end = await h.turn_end(1)
        assert end["outcome"] == "failed" and end["acked"], end
        assert "refused: no" in end["error"]
        assert (await stack.status(sent.id)).state == "acked"
        assert not h.records("api_retry") and h.harness.state == "idle"
