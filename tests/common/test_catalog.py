"""docs/subjects.md is generated from the catalog and must be current."""

from contextlib import AsyncExitStack

from hyperhive.common import catalog, subjects
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
    for tool in subjects.MANAGER_TOOLS:
        assert subjects.manager_tool(tool) in listed
    for part in subjects.SERVICES:
        assert subjects.admin(part, "ping") in listed


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
        parts[2] = subjects.MANAGER if parts[3] in subjects.MANAGER_TOOLS else "<n>"
    return ".".join(parts)
