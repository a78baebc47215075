"""Crash-watch wiring: the poll loop and the ``agent.state`` follower."""

from __future__ import annotations

from hyperhive.common import endpoints as E
from hyperhive.common import follow, subjects
from hyperhive.common.rpc import Call
from hyperhive.common.service import Runtime
from hyperhive.common.wire.base import Empty
from hyperhive.common.wire.lifecycle import WatchStatus
from hyperhive.crashwatch.watcher import CrashWatch


async def start(rt: Runtime) -> None:
    """Follows lifecycle's state events and polls its registry."""
    assert rt.kv is not None
    watch = CrashWatch(rt.settings, rt.nc, rt.js, rt.kv)
    follower = await follow.start_following(
        rt.js, watch.on_event, [subjects.event(subjects.EV_AGENT_STATE)], name="agent-state"
    )
    rt.stack.push_async_callback(watch.close)
    rt.stack.callback(follower.cancel)
    rt.spawn(watch.run(), "crash-watch-poll")

    async def status(_req: Empty, _call: Call) -> WatchStatus:
        return watch.status()

    await rt.serve_all({E.WATCH_STATUS: status})
