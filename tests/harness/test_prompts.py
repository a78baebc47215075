"""The system prompts document what the agent can do: every MCP tool the
``hyperhive`` server offers that agent and every system event the services can
put in an inbox is named in the prompt it gets. Adding a tool or an event type
without documenting it fails here."""

from __future__ import annotations

import os
import re
import sys
import typing
from pathlib import Path

import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from hyperhive.common import endpoints, subjects
from hyperhive.common.config import load_settings
from hyperhive.common.wire.events import SYSTEM_EVENT_TYPES, SystemEvent
from hyperhive.harness.config import HarnessConfig
from hyperhive.harness.prompt import system_prompt

PLAIN = "worker1"


async def offered_tools(agent: str, home: Path) -> set[str]:
    """The tools ``hive harness mcp`` registers for ``agent``, asked over MCP itself.

    Listing tools needs no NATS: the server connects on the first tool call.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIVE_")}
    env.update({"HIVE_HARNESS_AGENT": agent, "HIVE_HOME": str(home)})
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "hyperhive.cli.main", "harness", "mcp"], env=env
    )
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            result = await session.list_tools()
    return {t.name for t in result.tools}


def prompt_for(agent: str, home: Path) -> str:
    settings = load_settings({"HIVE_HOME": str(home), "HIVE_HARNESS_AGENT": agent}, None)
    root = home / "agents" / agent
    cfg = HarnessConfig(
        agent=agent,
        workdir=root / "work",
        state_dir=root / "state",
        creds_dir=root / "creds",
        config_dir=None,
        agents_dir=None,
        claude_bin="claude",
        settings=settings,
    )
    return system_prompt(cfg)


def named(name: str, text: str) -> bool:
    """``name`` appears as code (`` `name` `` or `` `name(…)` ``) in the prompt."""
    return re.search(rf"`{re.escape(name)}[`(]", text) is not None


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prompts-home")


async def test_manager_prompt_names_every_tool_it_is_offered(home: Path) -> None:
    tools = await offered_tools(subjects.MANAGER, home)
    # the registry really is the manager's full set (a sanity check of the lister)
    assert set(endpoints.MANAGER_TOOLS) < tools and "send" in tools
    text = prompt_for(subjects.MANAGER, home)
    missing = sorted(t for t in tools if not named(t, text))
    assert not missing, f"manager prompt does not document tools: {missing}"


async def test_agent_prompt_names_its_tools_and_no_manager_tool(home: Path) -> None:
    tools = await offered_tools(PLAIN, home)
    assert tools and not tools & set(endpoints.MANAGER_TOOLS)
    text = prompt_for(PLAIN, home)
    missing = sorted(t for t in tools if not named(t, text))
    assert not missing, f"agent prompt does not document tools: {missing}"
    told = sorted(t for t in endpoints.MANAGER_TOOLS if named(t, text))
    assert not told, f"a plain agent's prompt presents manager tools: {told}"


def test_every_system_event_type_is_in_both_prompts(home: Path) -> None:
    # the tuple the services use and the wire union must agree
    assert set(typing.get_args(SystemEvent)) == set(SYSTEM_EVENT_TYPES)
    for agent in (subjects.MANAGER, PLAIN):
        text = prompt_for(agent, home)
        missing = [t.__name__ for t in SYSTEM_EVENT_TYPES if not named(t.__name__, text)]
        assert not missing, f"{agent}'s prompt does not explain system events: {missing}"


def test_prompts_point_at_the_notes_file(home: Path) -> None:
    for agent in (subjects.MANAGER, PLAIN):
        text = prompt_for(agent, home)
        assert str(home / "agents" / agent / "state" / "notes.md") in text
        leftover = re.findall(r"\{[a-z_]+\}", text)
        assert not leftover, f"unfilled placeholders in {agent}'s prompt: {leftover}"
