"""``hive serve node``: a node agent alone (no database, no JetStream setup).

It needs only a NATS URL and the seed of its NATS user (``node-<node>``):
it serves ``hive.node.<node>.*`` (the node verbs and the agent page relay)
and writes its heartbeat; everything else is the control half's, on the hub.
``hive node --join`` writes the settings it needs (``cmd_node.py``).
"""

from __future__ import annotations

from hyperhive.common.config import Settings
from hyperhive.common.errors import BadRequest, ConfigError
from hyperhive.common.names import check_node_name
from hyperhive.common.service import Runtime, hyperhive_version
from hyperhive.lifecycle import pagerelay
from hyperhive.lifecycle.backends import make_backend
from hyperhive.lifecycle.node import NodeAgent


async def start(rt: Runtime) -> None:
    """Watches what still runs here, serves the node verbs, beats."""
    backend = make_backend(rt.settings)
    rev = rt.settings.lifecycle.rev or hyperhive_version()
    node = NodeAgent(rt.settings, backend, rev, shared=False)
    await node.adopt()
    await rt.serve_node(node.name, node.endpoints())
    # the agent pages of this host, for the hub's dashboard (pagerelay.py)
    relay = await pagerelay.serve(rt.nc, rt.settings, node.name, responder=rt.responder)
    rt.stack.push_async_callback(relay.stop)
    rt.spawn(node.monitor(), "node-monitor")

    async def publish(subject: str, data: bytes) -> None:
        await rt.nc.publish(subject, data)

    rt.spawn(node.heartbeat_loop(publish), "node-heartbeat")


def check(settings: Settings) -> None:
    """A node agent's name is a subject token and a NATS user name.

    Raises:
        ConfigError: ``node.name`` is not a valid node name.
    """
    try:
        check_node_name(settings.node.name)
    except BadRequest as exc:
        raise ConfigError(f"node.name: {exc}") from None
