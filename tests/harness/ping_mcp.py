"""A stdio MCP server with one tool, ``ping`` → ``pong``: an agent.toml
``[mcp_servers.*]`` entry for tests (``python -m tests.harness.ping_mcp`` or
this file's path)."""

from mcp.server.mcpserver import MCPServer

server = MCPServer("ping")


@server.tool()
def ping() -> str:
    """Answers pong."""
    return "pong"


if __name__ == "__main__":
    server.run()
