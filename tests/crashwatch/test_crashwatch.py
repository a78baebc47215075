"""Crash-watch with real lifecycle (process backend) and broker services.

The manager's inbox is read the way its harness reads it: ``recv`` with the
manager's own NATS credentials (issued by lifecycle).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
import pytest
from nats.js.errors import KeyValueError

from hyperhive.cli.devstack import stop_harnesses
from hyperhive.common import rpc, subjects
from hyperhive.common.config import Settings
from hyperhive.common.jetstream import ensure_state_bucket
from hyperhive.common.wire.base import Empty, Ok
from hyperhive.common.wire.broker import (
    AckRequest,
    AdminSendRequest,
    Message,
    RecvReply,
    RecvRequest,
    SendReply,
)
from hyperhive.common.wire.events import AgentStuck, ContainerCrash
from hyperhive.common.wire.lifecycle import Heartbeat, TransientFlag, WatchStatus
from hyperhive.crashwatch.watcher import CrashWatch
from hyperhive.harness.config import find_claude
from tests import rig
from tests.lifecycle.conftest import lifecycle_settings
from tests.lifecycle.helpers import Operator, harness_pid, serving, wait_dead
from tests.rig import cleanup_agents
from tests.scripted_anthropic import ScriptedAnthropic


@asynccontextmanager
async def hive(nats_server, database_url, hive_home, operator_nc, **env: str) -> AsyncIterator:  # type: ignore[no-untyped-def]
    """lifecycle (with hm1nd), broker and crash-watch, in that order.

    crash-watch polls every 0.5 s unless ``env`` says otherwise (``""``: its default).
    """
    env.setdefault("HIVE_CRASHWATCH_POLL_INTERVAL_S", "0.5")
    if not env["HIVE_CRASHWATCH_POLL_INTERVAL_S"]:
        del env["HIVE_CRASHWATCH_POLL_INTERVAL_S"]
    settings = lifecycle_settings(
        nats_server, database_url, hive_home, HIVE_LIFECYCLE_MANAGER="hm1nd", **env
    )
    try:
        async with (
            serving("lifecycle", settings, operator_nc),
            serving("broker", settings, operator_nc),
            serving("crash-watch", settings, operator_nc),
        ):
            async with rig.agent_connection(nats_server, settings, "hm1nd") as manager:
                yield settings, manager
    finally:
        cleanup_agents(nats_server, settings.paths.agents_dir)


async def watch_status(nc) -> WatchStatus:  # type: ignore[no-untyped-def]
    return await rpc.request(nc, subjects.admin("crash-watch", "status"), Empty(), WatchStatus)


async def watching(nc, *names: str) -> WatchStatus | None:  # type: ignore[no-untyped-def]
    st = await watch_status(nc)
    ok = st.seeded and all(st.agents.get(n) == "running" for n in names)
    return st if ok else None


async def recv(manager, wait_ms: int) -> Message | None:  # type: ignore[no-untyped-def]
    """The manager's next message, waiting up to ``wait_ms`` for one (not acked)."""
    reply = await rpc.request(
        manager,
        subjects.agent("hm1nd", "recv"),
        RecvRequest(wait_ms=wait_ms),
        RecvReply,
        timeout=wait_ms / 1000 + 10,
    )
    return reply.message


async def ack(manager, msg: Message) -> None:  # type: ignore[no-untyped-def]
    await rpc.request(manager, subjects.agent("hm1nd", "ack"), AckRequest(id=msg.id), Ok)


async def drain_inbox(manager, wait_ms: int) -> list[Message]:  # type: ignore[no-untyped-def]
    """Every message the manager gets within ``wait_ms`` of quiet, acked."""
    got: list[Message] = []
    while (msg := await recv(manager, wait_ms)) is not None:
        got.append(msg)
        await ack(manager, msg)
    return got


async def polled_after(nc, polls: int) -> WatchStatus | None:  # type: ignore[no-untyped-def]
    """crash-watch's status once it has completed a poll after ``polls``."""
    st = await watch_status(nc)
    return st if st.polls > polls else None


@pytest.mark.slow
async def test_sigkill_gives_one_crash_within_2s_and_stop_gives_none(
    nats_server, database_url, hive_home, operator_nc
):
    """The issue's test, at the default intervals: crash-watch polls every 10 s,
    so the crash reaches the manager through lifecycle's state event."""
    defaults = Settings()
    async with hive(
        nats_server,
        database_url,
        hive_home,
        operator_nc,
        HIVE_CRASHWATCH_POLL_INTERVAL_S="",
        HIVE_LIFECYCLE_MONITOR_INTERVAL_S=str(defaults.lifecycle.monitor_interval_s),
    ) as (settings, manager):
        assert settings.crashwatch.poll_interval_s == defaults.crashwatch.poll_interval_s == 10
        op = Operator(operator_nc)
        await op.spawn("crashy")
        await op.spawn("calm")
        seen = await rig.eventually(lambda: watching(operator_nc, "crashy", "calm"), what="seen")
        # kill right after a poll: the next one is 10 s away
        polled = await rig.eventually(
            lambda: polled_after(operator_nc, seen.polls), timeout=20, what="a poll"
        )

        pid = harness_pid(settings, "crashy")
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        msg = await recv(manager, wait_ms=5000)
        elapsed = time.monotonic() - killed
        assert msg is not None, "no ContainerCrash within 5 s"
        assert elapsed < 2.0, f"the ContainerCrash came {elapsed:.2f}s after the SIGKILL"
        assert (await watch_status(operator_nc)).polls == polled.polls  # the event did it
        assert msg.sender == "system"
        assert isinstance(msg.event, ContainerCrash)
        assert msg.event.agent == "crashy"
        assert msg.event.exit_code == -signal.SIGKILL
        assert "crashy" in msg.body
        await ack(manager, msg)

        # the same agent again, stopped with `hive stop`: no crash
        assert (await op.verb("start", "crashy")).state == "running"
        await rig.eventually(lambda: watching(operator_nc, "crashy"), what="crashy back")
        pid = harness_pid(settings, "crashy")
        code, _, err = await rig.hive_cli(
            rig.operator_settings(settings, nats_server), "stop", "crashy"
        )
        assert code == 0, err
        await wait_dead(pid)
        # and a deliberate stop, kill, restart, destroy of another is none either
        calm_pid = harness_pid(settings, "calm")
        await op.verb("stop", "calm")
        await wait_dead(calm_pid)
        await op.verb("start", "calm")
        await op.verb("restart", "calm")
        await op.verb("kill", "calm")
        await op.destroy("calm")
        # crash-watch has seen all of it, by event and by a later poll
        done = await watch_status(operator_nc)
        final = await rig.eventually(
            lambda: _settled(operator_nc, done.polls), timeout=25, what="crash-watch saw it all"
        )
        assert final.reported == 1
        assert await drain_inbox(manager, wait_ms=1500) == []


BROKER_OUTAGE_S = 60.0  # far beyond any in-memory retry (crash-watch's gave up after ~16 s)


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_crash_during_a_broker_outage_arrives_once_after(
    nats_server, database_url, hive_home, operator_nc
):
    """The broker is stopped for 60 s and an agent crashes meanwhile: the
    ContainerCrash waits in HIVE_DELIVERIES and reaches the manager exactly
    once after the broker is back."""
    settings = lifecycle_settings(
        nats_server,
        database_url,
        hive_home,
        HIVE_LIFECYCLE_MANAGER="hm1nd",
        HIVE_CRASHWATCH_POLL_INTERVAL_S="0.5",
        # the harnesses here send no heartbeat: only the crash is news
        HIVE_CRASHWATCH_HEARTBEAT_TIMEOUT_S="3600",
    )
    op = Operator(operator_nc)
    try:
        async with (
            serving("lifecycle", settings, operator_nc),
            serving("crash-watch", settings, operator_nc),
            rig.agent_connection(nats_server, settings, "hm1nd") as manager,
        ):
            async with serving("broker", settings, operator_nc):
                await op.spawn("crashy")
                seen = await rig.eventually(lambda: watching(operator_nc, "crashy"), what="seen")
                assert await drain_inbox(manager, wait_ms=500) == []
            stopped = time.monotonic()
            os.kill(harness_pid(settings, "crashy"), signal.SIGKILL)
            await rig.eventually(
                lambda: _reported_more(operator_nc, seen.reported), timeout=20, what="crash seen"
            )
            # the outage itself is what this test is about: it must last
            await asyncio.sleep(max(0.0, BROKER_OUTAGE_S - (time.monotonic() - stopped)))
            async with serving("broker", settings, operator_nc):
                got = await drain_until(manager, lambda ms: len(ms) >= 1, timeout=60)
                assert [type(m.event).__name__ for m in got] == ["ContainerCrash"]
                assert got[0].event.agent == "crashy" and got[0].sender == "system"
                assert got[0].event.exit_code == -signal.SIGKILL
                # nothing more: not a second copy from a retry, not a late one
                assert await drain_inbox(manager, wait_ms=3000) == []
                assert (await watch_status(operator_nc)).reported == seen.reported + 1
    finally:
        cleanup_agents(nats_server, settings.paths.agents_dir)


async def _reported_more(nc, before: int) -> bool:  # type: ignore[no-untyped-def]
    return (await watch_status(nc)).reported > before


async def _settled(nc, polls: int) -> WatchStatus | None:  # type: ignore[no-untyped-def]
    st = await polled_after(nc, polls)
    if st is None or st.agents.get("crashy") != "stopped" or "calm" in st.agents:
        return None
    return st


@pytest.mark.slow
async def test_first_poll_only_seeds(nats_server, database_url, hive_home, operator_nc):
    """Agents that stopped or crashed before crash-watch started are no news."""
    settings = lifecycle_settings(
        nats_server,
        database_url,
        hive_home,
        HIVE_LIFECYCLE_MANAGER="hm1nd",
        HIVE_CRASHWATCH_POLL_INTERVAL_S="1",
    )
    op = Operator(operator_nc)
    try:
        async with (
            serving("lifecycle", settings, operator_nc),
            serving("broker", settings, operator_nc),
        ):
            await op.spawn("crashed")
            await op.spawn("stopped")
            await op.spawn("up")
            os.kill(harness_pid(settings, "crashed"), signal.SIGKILL)
            await op.verb("stop", "stopped")
            await rig.eventually(lambda: _state_is(op, "crashed", "stopped"), what="crash recorded")
            assert not (await op.list())["crashed"].flag
            async with rig.agent_connection(nats_server, settings, "hm1nd") as manager:
                async with serving("crash-watch", settings, operator_nc):
                    # the first poll seeds, the second is the first that could report
                    st = await rig.eventually(
                        lambda: polled_after(operator_nc, 1), timeout=20, what="two polls"
                    )
                    assert st.seeded
                    assert st.agents == {
                        "hm1nd": "running",
                        "crashed": "stopped",
                        "stopped": "stopped",
                        "up": "running",
                    }
                    assert st.reported == 0
                    assert await drain_inbox(manager, wait_ms=1500) == []
                    assert (await watch_status(operator_nc)).reported == 0
    finally:
        cleanup_agents(nats_server, settings.paths.agents_dir)


async def _state_is(op: Operator, name: str, state: str) -> bool:
    return (await op.list())[name].state == state


@pytest.mark.slow
async def test_stuck_agent_gets_one_event_per_episode(
    nats_server, database_url, hive_home, operator_nc, service_nc
):
    async with hive(
        nats_server,
        database_url,
        hive_home,
        operator_nc,
        HIVE_CRASHWATCH_HEARTBEAT_TIMEOUT_S="4",
        HIVE_CRASHWATCH_TURN_LIMIT_S="3",
    ) as (_settings, manager):
        op = Operator(operator_nc)
        kv = await service_nc.jetstream().key_value(subjects.STATE_BUCKET)
        key = subjects.heartbeat_key("stuck")
        beat: dict[str, float | None] = {"turn_started": None}

        async def heartbeat() -> None:  # what the harness does while a turn runs
            while True:
                value = {"ts": time.time(), "turn_started": beat["turn_started"]}
                await kv.put(key, json.dumps(value).encode())
                await asyncio.sleep(0.3)

        beat["turn_started"] = time.time() - 60  # a turn that began long ago
        await op.spawn("stuck")
        beating = asyncio.create_task(heartbeat())
        try:
            got = await drain_until(manager, lambda ms: len(ms) >= 1)
            assert [(m.event.agent, m.event.reason) for m in got] == [("stuck", "turn_too_long")]
            assert isinstance(got[0].event, AgentStuck) and "turn running" in got[0].event.detail
            # the episode goes on for several polls: no second event
            await rig.eventually(
                lambda: _stuck_is(operator_nc, "stuck", "turn_too_long"), what="episode"
            )
            # the turn ends: the episode ends
            beat["turn_started"] = None
            await rig.eventually(lambda: _stuck_is(operator_nc, "stuck", None), what="recovered")
        finally:
            beating.cancel()
        # the heartbeat stops while the container runs: a new episode
        got = await drain_until(manager, lambda ms: len(ms) >= 1)
        assert [(m.event.agent, m.event.reason) for m in got] == [("stuck", "heartbeat")]
        # (a duplicate of the first episode would have come before this one)
        assert await drain_inbox(manager, wait_ms=1500) == []
        assert (await op.list())["stuck"].state == "running"  # nothing is killed


async def _stuck_is(nc, name: str, reason: str | None) -> bool:  # type: ignore[no-untyped-def]
    return (await watch_status(nc)).stuck.get(name) == reason


async def drain_until(manager, done, timeout: float = 30) -> list[Message]:  # type: ignore[no-untyped-def]
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while not done(got):
        assert time.monotonic() < deadline, f"inbox has only {got}"
        got += await drain_inbox(manager, wait_ms=1000)
    return got


@pytest.mark.slow
async def test_leftover_and_old_flags_hide_no_crash(
    nats_server, database_url, hive_home, operator_nc, service_nc
):
    """A lifecycle that dies mid-operation leaves ``flag.<n>`` behind: the next
    lifecycle deletes it at start, and crash-watch ignores a flag older than
    ``flag_max_age_s``; a recent flag still marks an operation under way."""
    settings = lifecycle_settings(
        nats_server,
        database_url,
        hive_home,
        HIVE_LIFECYCLE_MANAGER="hm1nd",
        HIVE_CRASHWATCH_POLL_INTERVAL_S="0.5",
        HIVE_CRASHWATCH_FLAG_MAX_AGE_S="30",
    )
    kv = await ensure_state_bucket(service_nc.jetstream())
    op = Operator(operator_nc)

    async def put_flag(name: str, age: float) -> None:
        flag = TransientFlag(flag="Stopping", since=time.time() - age)
        await kv.put(subjects.flag_key(name), msgspec.json.encode(flag))

    async def crash_of(manager, name: str) -> ContainerCrash:  # type: ignore[no-untyped-def]
        pid = harness_pid(settings, name)
        os.kill(pid, signal.SIGKILL)
        got = await drain_until(manager, lambda ms: len(ms) >= 1)
        assert len(got) == 1 and isinstance(got[0].event, ContainerCrash), got
        assert got[0].event.agent == name
        return got[0].event

    try:
        async with serving("lifecycle", settings, operator_nc):
            await op.spawn("left")
        # lifecycle is gone as if it died while stopping "left": the flag stays
        await put_flag("left", age=0)
        async with (
            serving("lifecycle", settings, operator_nc),
            serving("broker", settings, operator_nc),
            serving("crash-watch", settings, operator_nc),
        ):
            with pytest.raises(KeyValueError):  # deleted at start
                await kv.get(subjects.flag_key("left"))
            async with rig.agent_connection(nats_server, settings, "hm1nd") as manager:
                await op.spawn("old")
                await op.spawn("fresh")
                await rig.eventually(
                    lambda: watching(operator_nc, "left", "old", "fresh"), what="seeded"
                )
                await crash_of(manager, "left")

                await put_flag("old", age=120)  # older than the limit: ignored
                await crash_of(manager, "old")

                # a recent flag is an operation under way: no crash
                await put_flag("fresh", age=0)
                os.kill(harness_pid(settings, "fresh"), signal.SIGKILL)
                await rig.eventually(
                    lambda: _state_seen(operator_nc, "fresh", "stopped"), what="fresh seen down"
                )
                assert await drain_inbox(manager, wait_ms=1500) == []
                assert (await watch_status(operator_nc)).reported == 2
                await kv.delete(subjects.flag_key("fresh"))
    finally:
        cleanup_agents(nats_server, settings.paths.agents_dir)


async def _state_seen(nc, name: str, state: str) -> bool:  # type: ignore[no-untyped-def]
    return (await watch_status(nc)).agents.get(name) == state


@pytest.mark.slow
@pytest.mark.claude
async def test_real_harness_heartbeat_marks_a_running_turn(
    nats_server, database_url, hive_home, operator_nc, service_nc, monkeypatch
):
    """``hive harness serve`` under the process backend, the real claude CLI
    against the scripted API: while a turn runs, the harness's ``Heartbeat``
    has ``turn_started`` set (and crash-watch reads it: the turn runs past the
    limit); when the turn ends it is cleared again."""
    api = ScriptedAnthropic().start()
    for key, value in api.env().items():
        monkeypatch.setenv(key, value)
    settings = lifecycle_settings(
        nats_server,
        database_url,
        hive_home,
        HIVE_LIFECYCLE_HARNESS_COMMAND="",  # the real harness
        HIVE_HARNESS_CLAUDE_BIN=find_claude(""),
        HIVE_HARNESS_HEARTBEAT_INTERVAL_S="0.3",
        HIVE_HARNESS_RECV_WAIT_S="2",
        HIVE_CRASHWATCH_POLL_INTERVAL_S="0.5",
        HIVE_CRASHWATCH_TURN_LIMIT_S="2",
        HIVE_CRASHWATCH_HEARTBEAT_TIMEOUT_S="60",
    )
    kv = await ensure_state_bucket(service_nc.jetstream())
    decoder = msgspec.json.Decoder(Heartbeat)

    async def beat() -> Heartbeat | None:
        try:
            entry = await kv.get(subjects.heartbeat_key("beat"))
        except KeyValueError:
            return None
        return decoder.decode(entry.value) if entry.value else None

    async def beat_where(check) -> Heartbeat | None:  # type: ignore[no-untyped-def]
        hb = await beat()
        return hb if hb is not None and check(hb) else None

    try:
        async with (
            serving("lifecycle", settings, operator_nc),
            serving("broker", settings, operator_nc),
            serving("crash-watch", settings, operator_nc),
        ):
            started = time.time()
            await Operator(operator_nc).spawn("beat")
            idle = await rig.eventually(
                lambda: beat_where(lambda hb: hb.ts > started), timeout=60, what="heartbeat"
            )
            assert idle.turn_started is None

            held = api.reply("thinking for a long time", hold=True)
            sent = time.time()
            await rpc.request(
                operator_nc,
                subjects.admin("broker", "send"),
                AdminSendRequest(to="beat", body="take your time"),
                SendReply,
            )
            busy = await rig.eventually(
                lambda: beat_where(lambda hb: hb.turn_started is not None),
                timeout=60,
                what="heartbeat of a running turn",
            )
            assert busy.turn_started is not None
            assert sent - 1 <= busy.turn_started <= busy.ts
            await rig.eventually(
                lambda: _stuck_is(operator_nc, "beat", "turn_too_long"),
                timeout=30,
                what="crash-watch sees the long turn",
            )
            held.release()
            done = await rig.eventually(
                lambda: beat_where(lambda hb: hb.turn_started is None and hb.ts > busy.ts),
                timeout=60,
                what="heartbeat after the turn",
            )
            assert done.turn_started is None
            await rig.eventually(
                lambda: _stuck_is(operator_nc, "beat", None), timeout=30, what="episode over"
            )
    finally:
        api.stop()
        await asyncio.to_thread(stop_harnesses, settings.paths.agents_dir, 10.0)
        cleanup_agents(nats_server, settings.paths.agents_dir)
    api.check()  # nothing the real API would refuse


async def test_a_poll_alone_tells_a_stop_from_a_crash(
    nats_server, database_url, hive_home, operator_nc, service_nc
):
    """crash-watch's polls without lifecycle's events (as when an event is
    missed or arrives after the poll): the registry says which flag brought an
    agent down, so a deliberate stop is still no crash and a SIGKILL is one."""
    lc_settings = lifecycle_settings(nats_server, database_url, hive_home)
    op = Operator(operator_nc)
    js = service_nc.jetstream()
    watch = CrashWatch(lc_settings, service_nc, js, await ensure_state_bucket(js))
    try:
        async with serving("lifecycle", lc_settings, operator_nc):
            await op.spawn("pstop")
            await op.spawn("pkill")
            await watch.poll_once()  # seeds
            assert watch.status().agents == {"pstop": "running", "pkill": "running"}

            await op.verb("stop", "pstop")
            info = (await op.list())["pstop"]
            assert info.flag is None and info.state_flag == "Stopping"
            await watch.poll_once()
            assert watch.status().agents["pstop"] == "stopped"
            assert watch.reported == 0

            os.kill(harness_pid(lc_settings, "pkill"), signal.SIGKILL)
            await rig.eventually(lambda: _state_is(op, "pkill", "stopped"), what="crash recorded")
            assert (await op.list())["pkill"].state_flag is None
            await watch.poll_once()
            assert watch.reported == 1
            # started again: the flag of the new state is none, and nothing is reported
            await op.verb("start", "pstop")
            await watch.poll_once()
            assert (await op.list())["pstop"].state_flag is None
            assert watch.reported == 1
    finally:
        await watch.close()
        cleanup_agents(nats_server, lc_settings.paths.agents_dir)
