"""docs/subjects.md is generated from the catalog and must be current."""

import asyncio
from contextlib import AsyncExitStack

import pytest

from hyperhive.common import catalog, endpoints, rpc, service, subjects, wire
from tests import rig
from tests.dashboard.conftest import stack_settings
from tests.rig import REPO


def test_subjects_doc_is_current():
    current = (REPO / "docs" / "subjects.md").read_text()
    assert current == catalog.render_markdown(), (
        "docs/subjects.md is stale: python -m hyperhive.common.catalog > docs/subjects.md"
    )


def test_every_manager_tool_and_service_is_in_the_catalog():
    listed = {e.subject for e in catalog.CATALOG}
    assert len(endpoints.MANAGER_TOOLS) == 9
    for tool in endpoints.MANAGER_TOOLS:
        assert subjects.manager_tool(tool) in listed
    for part in subjects.SERVICES:
        assert subjects.admin(part, "ping") in listed


def test_a_handler_with_the_wrong_types_is_refused():
    async def right(req: wire.AgentRequest, call: rpc.Call) -> wire.AgentInfo:
        raise NotImplementedError

    async def wrong_request(req: wire.Empty, call: rpc.Call) -> wire.AgentInfo:
        raise NotImplementedError

    async def wrong_reply(req: wire.AgentRequest, call: rpc.Call) -> wire.Ok:
        raise NotImplementedError

    async def no_reply(req: wire.AgentRequest, call: rpc.Call) -> None:
        raise NotImplementedError

    rpc.check_handler(endpoints.KILL, right)
    rpc.check_handler(endpoints.PURGE, no_reply)  # Ok reply: None means ``{"ok": true}``
    for handler in (wrong_request, wrong_reply, no_reply):
        with pytest.raises(TypeError):
            rpc.check_handler(endpoints.KILL, handler)


def _runtime(part: str, nc, settings) -> service.Runtime:
    return service.Runtime(
        part=part,
        settings=settings,
        nc=nc,
        js=nc.jetstream(),
        kv=None,
        responder=rpc.Responder(nc, queue="t"),
        stack=AsyncExitStack(),
        stop=asyncio.Event(),
    )


async def test_a_service_missing_an_endpoint_does_not_start(service_nc, settings):
    rt = _runtime("crash-watch", service_nc, settings)
    with pytest.raises(TypeError, match="no handler"):
        await rt.serve_all({})
    with pytest.raises(TypeError, match="not its own"):
        await rt.serve_all({endpoints.WATCH_STATUS: _status, endpoints.KILL: _kill})
    assert rt.responder.served == []


async def test_a_node_agent_serves_every_node_verb_on_its_own_subject(service_nc, settings):
    rt = _runtime(subjects.NODE_SERVICE, service_nc, settings)
    state = endpoints.NODE["state"]
    assert state.subject(node="n1") == "hive.node.n1.state"
    assert state.pattern == "hive.node.<node>.state"
    with pytest.raises(TypeError, match="no handler"):
        await rt.serve_node("n1", {state: _state})
    with pytest.raises(TypeError, match="not its own"):
        await rt.serve_node("n1", {**_all_node_verbs(), endpoints.KILL: _kill})
    assert rt.responder.served == []
    await rt.serve_node("n1", _all_node_verbs())
    assert sorted(rt.responder.served) == sorted(f"hive.node.n1.{v}" for v in endpoints.NODE)
    await rt.responder.stop()


def _all_node_verbs() -> dict:
    """Every node verb, each with a handler of its endpoint's types."""

    def handler(endpoint):
        async def verb(req, call: rpc.Call):
            raise NotImplementedError

        verb.__annotations__ = {"req": endpoint.request, "return": endpoint.reply}
        return verb

    return {e: handler(e) for e in endpoints.NODE.values()}


async def _state(req: wire.NodeAgentRequest, call: rpc.Call) -> wire.NodeStateReply:
    raise NotImplementedError


async def _status(req: wire.Empty, call: rpc.Call) -> wire.WatchStatus:
    raise NotImplementedError


async def _kill(req: wire.AgentRequest, call: rpc.Call) -> wire.AgentInfo:
    raise NotImplementedError


async def test_the_catalog_lists_exactly_what_the_services_serve(
    nats_server, database_url, hive_home
):
    # every service run for real; what their responders subscribed to is
    # compared with the catalog's request subjects, both ways
    settings = stack_settings(nats_server, database_url, hive_home)
    served: set[str] = set()
    async with AsyncExitStack() as stack:
        stack.callback(rig.cleanup_agents, nats_server, settings.paths.agents_dir)
        for part in subjects.SERVICES:
            rt = await stack.enter_async_context(rig.running_service(part, settings))
            served.update(_as_listed(s) for s in rt.responder.served)
    listed = {e.subject for e in catalog.CATALOG}
    # a node's page relay is the node agent's (tests/harness/test_relay.py checks it)
    requests = {
        e.subject
        for e in catalog.CATALOG
        if e.kind == "request" and e.handler != catalog.PAGE_RELAY
    }
    assert served - listed == set(), "served but not in the catalog"
    assert requests - served == set(), "in the catalog but served by nobody"


def _as_listed(subject: str) -> str:
    """A served pattern as the catalog writes it (``<n>`` for any agent; the
    manager tools, served for every agent so others hear why not, under hm1nd)."""
    parts = subject.split(".")
    if parts[:2] == ["hive", "node"]:  # the hub's own node agent, named by settings
        parts[2] = "<node>"
    if parts[:2] == ["hive", "agent"] and parts[2] == "*":
        parts[2] = subjects.MANAGER if parts[3] in endpoints.MANAGER_TOOLS else "<n>"
    return ".".join(parts)
