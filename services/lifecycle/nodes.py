"""The control half's view of the nodes: heartbeats, exits, lost and back.

Every node agent writes a :class:`NodeHeartbeat` to ``node.<node>`` in the
state bucket every ``node.heartbeat_interval_s`` and at once when one of its
containers stops by itself. This module watches those keys:

- a container exit in a heartbeat is recorded at once (:meth:`Lifecycle.notice_exit`),
  and so is a row ``running`` on the node that its heartbeat no longer lists,
  so crash-watch sees a crash on any node as fast as on the hub;
- a node first heard of is recorded (``node.joined``); a node first heard of
  since this control half started, or back after being lost, has its
  containers matched to the registry (adoption, :meth:`Lifecycle.reconcile_node`);
- a node silent for ``node.lost_after_s`` is ``lost``: one ``node.lost``
  event and one ``NodeLost`` system event to the manager naming its agents;
  their messages wait in the broker. When it writes again: adoption, then
  ``node.back`` and ``NodeBack``.

Silence is measured on this host's clock from when each heartbeat arrived,
so the nodes' clocks do not matter. A heartbeat already in the bucket when
the control half starts counts for nothing: a node is placed on only once
it has spoken since (a node the table calls up gets ``lost_after_s`` to).
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from hyperhive.common import delivery, subjects
from hyperhive.common.errors import HiveError
from hyperhive.common.outbox import make_event
from hyperhive.common.wire.events import (
    NodeBack,
    NodeBackEvent,
    NodeJoinedEvent,
    NodeLost,
    NodeLostEvent,
    SystemEvent,
)
from hyperhive.common.wire.join import JoinRequest
from hyperhive.common.wire.node import NodeHeartbeat, NodeInfo
from hyperhive.lifecycle import store
from hyperhive.lifecycle.core import Lifecycle

log = logging.getLogger(__name__)

MISSED_EXIT_MARGIN_S = 1.0  # a row newer than the heartbeat's view is not judged by it
_hb_decoder = msgspec.json.Decoder(NodeHeartbeat)


class Nodes:
    """Follows the nodes' heartbeats for one control half."""

    def __init__(self, lc: Lifecycle, nc: NATS, kv: KeyValue) -> None:
        self.lc = lc
        self.reg = lc.reg
        self.nc = nc
        self.kv = kv
        self.local = lc.local.node
        self.lost_after_s = lc.settings.node.lost_after_s
        self.heard: dict[str, float] = {}  # node → monotonic time of its last heartbeat
        self.live: set[str] = set()  # nodes heard from since this control half started
        self.beats: dict[str, NodeHeartbeat] = {}
        self.reconciled: set[str] = {self.local}  # matched to the registry since start
        self._exits_done: dict[str, float] = {}  # node → newest exit handled
        self._tasks: set[asyncio.Task[None]] = set()
        self._reconciling: set[str] = set()

    async def load(self) -> None:
        """At start: what the table says, with a fresh grace period for each up node."""
        now = time.monotonic()
        for row in await store.list_nodes(self.reg.pool):
            if row.state == store.NODE_LOST:
                self.reg.lost_nodes.add(row.name)
            else:
                self.heard[row.name] = now
        self._refresh_up()

    def _refresh_up(self) -> None:
        now = time.monotonic()
        up = {
            n
            for n, t in self.heard.items()
            if n in self.live and now - t < self.lost_after_s and n not in self.reg.lost_nodes
        }
        up.add(self.local)
        self.lc.up_nodes = up

    # --- heartbeats -----------------------------------------------------------

    async def watch(self) -> None:
        """Follows ``node.*`` in the state bucket (the current values first)."""
        while True:
            try:
                watcher = await self.kv.watch(subjects.NODE_KEYS)
                replay = True
                async for entry in watcher:
                    if entry is None:  # the current values are all delivered
                        replay = False
                        continue
                    if not entry.value:
                        continue
                    try:
                        hb = _hb_decoder.decode(entry.value)
                    except msgspec.DecodeError as exc:
                        log.warning("malformed heartbeat on %s: %s", entry.key, exc)
                        continue
                    if entry.key != subjects.node_key(hb.node):
                        log.warning("heartbeat of %s on %s: ignored", hb.node, entry.key)
                        continue
                    await self.on_heartbeat(hb, replay=replay)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("node heartbeat watch failed; watching again")
                await asyncio.sleep(1.0)

    async def on_heartbeat(self, hb: NodeHeartbeat, *, replay: bool = False) -> None:
        node = hb.node
        if replay:  # what it said before this control half started: only its
            # exits are old news; it counts once it speaks again (within an interval)
            self._exits_done[node] = max((e.at for e in hb.exits), default=0.0)
            self.beats.setdefault(node, hb)
            return
        self.heard[node] = time.monotonic()
        self.live.add(node)
        self.beats[node] = hb
        _, previous = await store.node_seen(self.reg.pool, node, hb.revision, hb.backend)
        if previous is None:
            log.info("node %s joined (revision %s)", node, hb.revision)
            await self.reg.emit(
                self.reg.pool,
                [make_event(NodeJoinedEvent(node=node, revision=hb.revision))],
            )
        back = previous == store.NODE_LOST or node in self.reg.lost_nodes
        self._refresh_up()
        if (back or node not in self.reconciled) and node not in self._reconciling:
            self._reconciling.add(node)
            self._spawn(self._adopt(node, back), f"adopt-{node}")
            return  # its exits and rows are matched by the adoption
        if node in self._reconciling:
            return
        done = self._exits_done.get(node, 0.0)
        for exit_ in hb.exits:
            if exit_.at > done:
                self._spawn(self.lc.notice_exit(node, exit_.agent, exit_), f"exit-{exit_.agent}")
        self._exits_done[node] = max([done, *(e.at for e in hb.exits)])
        await self._missed_exits(hb, time.time())

    async def _missed_exits(self, hb: NodeHeartbeat, received: float) -> None:
        """Rows ``running`` on the node that its heartbeat no longer lists
        (judged by when it arrived here: the node's clock may be off)."""
        running = set(hb.running)
        for row in await store.agents_on(self.reg.pool, hb.node):
            if row.state != store.RUNNING or row.name in running:
                continue
            if row.state_since > received - MISSED_EXIT_MARGIN_S or self.reg.locked(row.name):
                continue  # newer than what the heartbeat saw, or an operation runs
            self._spawn(self.lc.notice_exit(hb.node, row.name, None), f"exit-{row.name}")

    async def _adopt(self, node: str, back: bool) -> None:
        try:
            held = await self.lc.link(node).list()
            adopted, restarted = await self.lc.reconcile_node(node, held)
        except HiveError as exc:
            log.warning("could not adopt the containers of node %s: %s", node, exc)
            return
        finally:
            self._reconciling.discard(node)
        self.reconciled.add(node)
        if not back:
            return
        self.reg.lost_nodes.discard(node)
        self._refresh_up()
        names = [r.name for r in await store.agents_on(self.reg.pool, node)]
        log.warning("node %s is back: adopted %s, restarted %s", node, adopted, restarted)
        await self.reg.emit(
            self.reg.pool,
            [
                make_event(
                    NodeBackEvent(node=node, agents=names, adopted=adopted, restarted=restarted)
                )
            ],
        )
        at = self.beats[node].at if node in self.beats else time.time()
        event = NodeBack(node=node, agents=names, restarted=restarted)
        self._spawn(self._deliver(event, f"node-back:{node}:{int(at)}"), f"deliver-back-{node}")

    async def register_join(self, req: JoinRequest) -> None:
        """A machine joins as node ``req.name`` (the join handler, before its
        NATS user exists): its row and ``node.joined``; its heartbeat is
        expected within ``lost_after_s`` from now."""
        await store.node_joined(self.reg.pool, req.name, req.node_key)
        self.heard[req.name] = time.monotonic()
        self.reg.lost_nodes.discard(req.name)
        await self.reg.emit(
            self.reg.pool,
            [make_event(NodeJoinedEvent(node=req.name, hostname=req.hostname))],
        )

    # --- silence --------------------------------------------------------------

    async def watch_silence(self) -> None:
        """Marks a node lost when its heartbeat is ``node.lost_after_s`` late."""
        while True:
            await asyncio.sleep(max(0.1, min(1.0, self.lost_after_s / 4)))
            try:
                await self.check_silence()
            except Exception:
                log.exception("checking the nodes' heartbeats failed")

    async def check_silence(self) -> None:
        now = time.monotonic()
        for node, heard in list(self.heard.items()):
            if node == self.local or node in self.reg.lost_nodes:
                continue
            silent = now - heard
            if silent < self.lost_after_s:
                continue
            self.reg.lost_nodes.add(node)
            self.reconciled.discard(node)
            self._refresh_up()
            if not await store.node_lost(self.reg.pool, node):
                continue  # another control half reported it
            names = [r.name for r in await store.agents_on(self.reg.pool, node)]
            log.warning("node %s is lost (silent %.0fs); its agents: %s", node, silent, names)
            await self.reg.emit(
                self.reg.pool,
                [make_event(NodeLostEvent(node=node, agents=names, silent_s=round(silent, 1)))],
            )
            last = self.beats.get(node)
            key = f"node-lost:{node}:{int(last.at) if last else 0}"
            event = NodeLost(node=node, agents=names, silent_s=round(silent, 1))
            self._spawn(self._deliver(event, key), f"deliver-lost-{node}")

    async def _deliver(self, event: SystemEvent, key: str) -> None:
        """Into the manager's inbox, through the durable delivery path
        (:mod:`hyperhive.common.delivery`; the key makes it once)."""
        if not self.lc.manager:
            return
        await delivery.submit_until_stored(self.nc.jetstream(), self.lc.manager, event, key)

    # --- hive nodes -----------------------------------------------------------

    async def infos(self) -> list[NodeInfo]:
        rows = await store.list_nodes(self.reg.pool)
        live = await store.live_per_node(self.reg.pool)
        out = []
        for row in rows:
            hb = self.beats.get(row.name)
            lost = row.name in self.reg.lost_nodes or row.state == store.NODE_LOST
            out.append(
                NodeInfo(
                    name=row.name,
                    state=store.NODE_LOST if lost else store.NODE_UP,
                    agents=live.get(row.name, 0),
                    running=hb.agents if hb else 0,
                    load1=hb.load1 if hb else 0.0,
                    revision=row.revision,
                    backend=row.backend,
                    joined_at=row.joined_at,
                    last_seen=row.last_seen,
                )
            )
        return out

    # --- tasks ----------------------------------------------------------------

    def _spawn(self, coro: object, name: str) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if isinstance(exc, HiveError):
                log.warning("%s: %s", task.get_name(), exc)
            else:
                log.error("%s failed", task.get_name(), exc_info=exc)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=2)


__all__ = ["Nodes"]
