"""The names of the stdio MCP server ``hyperhive`` and of the tools it offers.

Apart from :mod:`hyperhive.harness.mcp_server` so that the harness, which
only writes claude's MCP config, does not import the MCP SDK (tens of MB).
"""

from __future__ import annotations

from hyperhive.common import endpoints, subjects

SERVER_NAME = "hyperhive"
TRACEPARENT_ENV = "TRACEPARENT"  # the turn's trace context, set by the harness
BASE_TOOLS = ("send", "recv", "message_status")


def tool_names(agent: str) -> tuple[str, ...]:
    """The tools the hyperhive server offers ``agent``."""
    return BASE_TOOLS + (endpoints.MANAGER_TOOLS if agent == subjects.MANAGER else ())
