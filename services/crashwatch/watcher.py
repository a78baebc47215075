"""Crash and stuck detection (docs/architecture.md: crash-watch).

Two sources feed one view of every agent's state: a poll of lifecycle's
registry every ``crashwatch.poll_interval_s`` and lifecycle's ``agent.state``
events as they happen. Each carries the agent's state sequence number, so an
older poll reply never overrides a newer event. A change ``running`` →
``stopped``/``failed`` with no transient flag (in the event, or in the KV
bucket) is a crash: the manager gets one ``ContainerCrash`` through the
durable delivery path (:mod:`hyperhive.common.delivery`). A KV flag older
than ``flag_max_age_s`` was left by a lifecycle that died mid-operation and
hides nothing. The first poll only seeds the view.

Stuck: an agent that runs but whose harness heartbeat (``heartbeat.<n>`` in
the KV bucket) is older than ``heartbeat_timeout_s``, whose heartbeat says the
API refused its credentials (``login_needed``), or whose current turn began
more than ``turn_limit_s`` ago, gets one ``AgentStuck`` per episode.
Nothing is stopped automatically: the manager decides.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass

import msgspec
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from hyperhive.common import delivery, rpc, subjects
from hyperhive.common import endpoints as E
from hyperhive.common.config import Settings
from hyperhive.common.errors import HiveError
from hyperhive.common.outbox import make_event
from hyperhive.common.wire.events import (
    AgentStateChanged,
    AgentStuck,
    ContainerCrash,
    CrashDetected,
    HiveEvent,
    StuckDetected,
    SystemEvent,
    encode_event,
    event_data,
)
from hyperhive.common.wire.lifecycle import (
    AgentInfo,
    AgentsRequest,
    Heartbeat,
    TransientFlag,
    WatchStatus,
)
from hyperhive.common.wire.states import DOWN_STATES, RUNNING, AgentFlag, AgentState, StuckReason

log = logging.getLogger(__name__)

HEARTBEAT_SKEW_S = 5.0  # a heartbeat this much older than the start still counts


@dataclass(slots=True)
class Seen:
    state: AgentState
    seq: int


_flag_decoder = msgspec.json.Decoder(TransientFlag)
_hb_decoder = msgspec.json.Decoder(Heartbeat)


class CrashWatch:
    def __init__(self, settings: Settings, nc: NATS, js: JetStreamContext, kv: KeyValue) -> None:
        self.settings = settings
        self.nc = nc
        self.js = js
        self.kv = kv
        self.manager = settings.lifecycle.manager
        self.known: dict[str, Seen] = {}
        self.seeded = False
        self.stuck: dict[str, StuckReason] = {}  # name → reason of the open episode
        self.reported = 0  # events reported since start
        self.polls = 0  # polls completed since start
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()  # one observation at a time

    # --- inputs ---------------------------------------------------------------

    async def poll_once(self) -> None:
        """One look at every agent: seeds, detects crashes a missed event hid, stuck."""
        reply = await rpc.call(
            self.nc,
            E.SYS_AGENTS,
            AgentsRequest(),
            timeout=self.settings.nats.request_timeout_s,
        )
        names = {a.name for a in reply.agents}
        async with self._lock:
            for info in reply.agents:
                flag = info.state_flag or info.flag
                await self._observe(info.name, info.state, info.state_seq, flag, None, info.error)
            for gone in set(self.known) - names:
                self.known.pop(gone, None)
                self.stuck.pop(gone, None)
            if not self.seeded:
                log.info("first poll: seeded with %d agents, nothing reported", len(names))
            self.seeded = True
        await self.check_stuck(reply.agents)
        self.polls += 1

    async def on_event(self, _seq: int, ev: HiveEvent) -> None:
        """An ``agent.state`` event from lifecycle."""
        data = event_data(ev)
        if ev.agent is None or not isinstance(data, AgentStateChanged):
            return
        code = data.exit_code if isinstance(data.exit_code, int) else None
        async with self._lock:
            await self._observe(ev.agent, data.state, data.seq, data.flag, code, data.detail or "")

    async def _observe(
        self,
        name: str,
        state: AgentState,
        seq: int,
        flag: AgentFlag | None,
        exit_code: int | None,
        detail: str,
    ) -> None:
        prev = self.known.get(name)
        if prev is not None and seq <= prev.seq:
            return  # older news than what we know
        self.known[name] = Seen(state, seq)
        if state != RUNNING:
            self.stuck.pop(name, None)
        if not self.seeded or prev is None:
            return
        if prev.state == RUNNING and state in DOWN_STATES and not flag:
            if await self._flag_set(name):
                return
            self._report(
                name,
                ContainerCrash(
                    agent=name, detail=detail or f"container {state}", exit_code=exit_code
                ),
                key=f"crash:{name}:{seq}",
                kind=subjects.EV_CRASH,
            )

    async def _flag_set(self, name: str) -> bool:
        """An operation on ``name`` is under way (a recent flag in the KV bucket)."""
        try:
            entry = await self.kv.get(subjects.flag_key(name))
        except Exception:  # missing or deleted key: no operation under way
            return False
        if not entry.value:
            return False
        try:
            flag = _flag_decoder.decode(entry.value)
        except msgspec.DecodeError:
            return True  # a bare flag name from an older lifecycle
        age = time.time() - flag.since
        if age > self.settings.crashwatch.flag_max_age_s:
            log.warning(
                "ignoring %s's flag %s: set %.0fs ago, longer than any operation",
                name,
                flag.flag,
                age,
            )
            return False
        return True

    # --- stuck ----------------------------------------------------------------

    async def _heartbeat(self, name: str) -> Heartbeat | None:
        try:
            entry = await self.kv.get(subjects.heartbeat_key(name))
        except Exception:
            return None
        if not entry.value:
            return None
        try:  # extra fields of a newer harness are ignored
            return _hb_decoder.decode(entry.value)
        except msgspec.DecodeError as exc:
            log.warning("%s's heartbeat is malformed: %s", name, exc)
            return None

    async def check_stuck(self, agents: list[AgentInfo]) -> None:
        cw = self.settings.crashwatch
        now = time.time()
        for info in agents:
            # an agent on a lost node is out of reach, not stuck: the manager
            # got one NodeLost naming it instead
            if info.state != RUNNING or info.flag or info.node_state == "lost":
                self.stuck.pop(info.name, None)
                continue
            hb = await self._heartbeat(info.name)
            found: AgentStuck | None = None
            if hb is not None and hb.ts >= info.state_since - HEARTBEAT_SKEW_S:
                if now - hb.ts > cw.heartbeat_timeout_s:
                    found = AgentStuck(
                        agent=info.name,
                        reason="heartbeat",
                        since=hb.ts,
                        detail=f"last harness heartbeat {now - hb.ts:.0f}s ago "
                        f"(limit {cw.heartbeat_timeout_s:g}s)",
                    )
                elif hb.login_needed:
                    found = AgentStuck(
                        agent=info.name,
                        reason="login_needed",
                        since=hb.ts,
                        detail=hb.login_needed,
                    )
                elif hb.turn_started and now - hb.turn_started > cw.turn_limit_s:
                    found = AgentStuck(
                        agent=info.name,
                        reason="turn_too_long",
                        since=hb.turn_started,
                        detail=f"turn running for {now - hb.turn_started:.0f}s "
                        f"(limit {cw.turn_limit_s:g}s)",
                    )
            elif info.state_since and now - info.state_since > cw.heartbeat_timeout_s:
                found = AgentStuck(
                    agent=info.name,
                    reason="heartbeat",
                    since=info.state_since,
                    detail="no harness heartbeat since it started "
                    f"{now - info.state_since:.0f}s ago",
                )
            if found is None:
                self.stuck.pop(info.name, None)
            elif self.stuck.get(info.name) != found.reason:
                self.stuck[info.name] = found.reason
                self._report(
                    info.name,
                    found,
                    key=f"stuck:{info.name}:{found.reason}:{int(found.since)}",
                    kind=subjects.EV_STUCK,
                )

    # --- outputs --------------------------------------------------------------

    def _report(self, name: str, event: SystemEvent, *, key: str, kind: str) -> None:
        log.warning("%s: %s", kind, msgspec.json.encode(event).decode())
        self.reported += 1
        task = asyncio.create_task(self._deliver(name, event, key, kind))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, name: str, event: SystemEvent, key: str, kind: str) -> None:
        record = make_event(_record_data(event), agent=name)
        try:
            await self.js.publish(
                subjects.event(kind),
                encode_event(record),
                headers={"Nats-Msg-Id": key or uuid.uuid4().hex},
            )
        except Exception as exc:
            log.warning("could not record %s for %s: %s", kind, name, exc)
        if not self.manager:
            return
        # the manager cannot act on its own crash: tell the operator instead
        to = subjects.OPERATOR if name == self.manager else self.manager
        # retried until JetStream holds it; from there the broker takes it
        # whenever it runs (however long it was away)
        await delivery.submit_until_stored(self.js, to, event, key)
        log.info("%s about %s stored for %s", kind, name, to)

    def status(self) -> WatchStatus:
        return WatchStatus(
            seeded=self.seeded,
            agents={n: s.state for n, s in self.known.items()},
            stuck=dict(self.stuck),
            reported=self.reported,
            polls=self.polls,
        )

    async def run(self) -> None:
        """The poll loop."""
        interval = self.settings.crashwatch.poll_interval_s
        while True:
            try:
                await self.poll_once()
            except HiveError as exc:
                log.warning("cannot poll lifecycle: %s", exc)
            await asyncio.sleep(max(0.1, interval))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=2)


def _record_data(event: SystemEvent) -> CrashDetected | StuckDetected:
    """The HIVE_EVENTS data of a crash or stuck report: the event the inbox gets."""
    match event:
        case ContainerCrash():
            return CrashDetected(event=event)
        case AgentStuck():
            return StuckDetected(event=event)
    raise TypeError(f"crash-watch reports no {type(event).__name__}")
