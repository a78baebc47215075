"""Per-agent NATS credentials: issued at create, scoped, revoked at destroy."""

from __future__ import annotations

import nats
import nats.errors
import pytest

from hyperhive.common import endpoints, rpc, subjects
from hyperhive.common.errors import Forbidden
from hyperhive.common.natsconn import sync_subscriptions
from hyperhive.common.paths import AgentPaths
from hyperhive.common.wire.lifecycle import AgentInfo, AgentRequest
from tests import rig
from tests.lifecycle.conftest import lifecycle_settings
from tests.lifecycle.helpers import Operator, serving
from tests.rig import cleanup_agents


class AgentConn:
    """An agent's own NATS connection, recording errors and disconnects."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.disconnects = 0

    async def connect(self, url: str, seed: bytes, name: str) -> nats.NATS:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))

        async def on_disconnect() -> None:
            self.disconnects += 1

        self.nc = await nats.connect(
            url,
            nkeys_seed_str=seed.decode(),
            inbox_prefix=subjects.inbox_prefix(name),
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            allow_reconnect=False,
            connect_timeout=3,
        )
        return self.nc

    def violations(self) -> str:
        return "\n".join(e for e in self.errors if "permissions violation" in e.lower())


async def test_agent_credentials_are_scoped_and_revoked(
    nats_server, database_url, hive_home, operator_nc, service_nc
):
    settings = lifecycle_settings(
        nats_server, database_url, hive_home, HIVE_LIFECYCLE_MANAGER="hm1nd"
    )
    op = Operator(operator_nc)
    try:
        async with serving("lifecycle", settings, operator_nc):
            await op.spawn("ca")
            await op.spawn("cb")
            seeds = {
                n: AgentPaths.of(settings, n).nats_seed.read_bytes().strip()
                for n in ("ca", "cb", "hm1nd")
            }
            a, b = AgentConn(), AgentConn()
            nc_a = await a.connect(nats_server.url, seeds["ca"], "ca")
            nc_b = await b.connect(nats_server.url, seeds["cb"], "cb")

            # what the services see of the agents' publishes
            seen: list[str] = []

            async def on_msg(msg) -> None:  # type: ignore[no-untyped-def]
                seen.append(msg.subject)

            await service_nc.subscribe("hive.agent.>", cb=on_msg)
            await sync_subscriptions(service_nc)

            # a speaks as itself: allowed
            await nc_a.publish(subjects.agent("ca", "probe"), b"{}")
            await rig.eventually(lambda: "hive.agent.ca.probe" in seen, what="own subject")
            # a speaking as b or as the manager: refused by the server
            await nc_a.publish(subjects.agent("cb", "send"), b"{}")
            await nc_a.publish(subjects.manager_tool("kill"), b'{"name":"cb"}')
            await rig.eventually(
                lambda: a.violations().count("for publish") >= 2, what="pub denied"
            )
            assert "hive.agent.cb.send" in a.violations()
            assert "hive.agent.cb.send" not in seen
            assert "hive.agent.hm1nd.kill" not in seen

            # a reading b's replies or the whole hive: refused
            got: list[str] = []

            async def grab(msg) -> None:  # type: ignore[no-untyped-def]
                got.append(msg.subject)

            await nc_a.subscribe(f"{subjects.inbox_prefix('cb')}.>", cb=grab)
            await nc_a.subscribe("hive.>", cb=grab)
            await nc_a.subscribe("_INBOX.>", cb=grab)
            await rig.eventually(
                lambda: a.violations().count("for subscription") >= 3, what="sub denied"
            )
            await service_nc.publish(f"{subjects.inbox_prefix('cb')}.x", b"secret")
            await service_nc.publish(subjects.agent("cb", "events"), b"secret")
            await service_nc.flush()
            # b's own inbox still works: a request from b gets its reply
            await nc_b.publish(subjects.agent("cb", "probe"), b"{}")
            await rig.eventually(lambda: "hive.agent.cb.probe" in seen, what="b works")
            assert got == []

            # only the manager's subjects carry the manager tools
            mgr = AgentConn()
            nc_m = await mgr.connect(nats_server.url, seeds["hm1nd"], "hm1nd")
            killed = await rpc.request(
                nc_m, subjects.manager_tool("kill"), AgentRequest(name="cb"), AgentInfo, timeout=30
            )
            assert killed.state == "stopped"
            started = await rpc.request(
                nc_m,
                subjects.manager_tool("start"),
                AgentRequest(name="cb"),
                AgentInfo,
                timeout=30,
            )
            assert started.state == "running"
            with pytest.raises(Forbidden):
                await rpc.request(
                    nc_m, subjects.manager_tool("restart"), AgentRequest(name="hm1nd"), AgentInfo
                )
            # another agent calling a manager tool on its own subject hears why not
            for tool in [e.verb for e in endpoints.MANAGER_ENDPOINTS if e.service == "lifecycle"]:
                with pytest.raises(Forbidden, match=f"only the manager hm1nd may call {tool}"):
                    await rpc.request(
                        nc_a, subjects.agent("ca", tool), AgentRequest(name="cb"), AgentInfo
                    )
            assert (await op.list())["cb"].state == "running"

            # destroying a closes its connection and refuses its seed; b stays connected
            await op.destroy("ca")
            await rig.eventually(lambda: not nc_a.is_connected, what="a disconnected")
            with pytest.raises((nats.errors.Error, OSError, TimeoutError)):
                await AgentConn().connect(nats_server.url, seeds["ca"], "ca")
            assert nc_b.is_connected and b.disconnects == 0
            seen.clear()
            await nc_b.publish(subjects.agent("cb", "probe"), b"{}")
            await rig.eventually(lambda: "hive.agent.cb.probe" in seen, what="b still works")
            await nc_b.close()
            await nc_m.close()
            if nc_a.is_connected:
                await nc_a.close()
    finally:
        cleanup_agents(nats_server, settings.paths.agents_dir)
