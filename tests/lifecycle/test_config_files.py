"""The default agent config, its checks, and the port hash."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyperhive.common.errors import BackendFailed, Conflict
from hyperhive.lifecycle import agentconf, ports

REPO = Path(__file__).resolve().parents[2]


def test_default_agent_nix_is_the_nix_dirs_copy():
    # lifecycle ships a copy (the nix dir is not a Python package); they must not drift
    assert agentconf.template("agent.nix") == (REPO / "nix" / "agent.nix").read_text()


def test_default_agent_toml_is_valid():
    assert agentconf.check_toml(agentconf.template("agent.toml")) == []


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("model = 1", "model must be a string"),
        ("prompt = []", "prompt must be a string"),
        ('allowed_tools = "Bash"', "allowed_tools must be a list of strings"),
        ("allowed_tools = [1]", "allowed_tools must be a list of strings"),
        ('allowed_tools = ["Bash(a,b)"]', "hold no comma"),
        ('allowed_tools = [" "]', "must be non-empty"),
        ("mcp_servers = 3", "mcp_servers must be a table"),
        ("[mcp_servers.x]\nargs = []", "mcp_servers.x.command must be a non-empty string"),
        ('[mcp_servers.x]\ncommand = "c"\nargs = "a"', "mcp_servers.x.args must be a list"),
        ('[mcp_servers.x]\ncommand = "c"\nenv = { A = 1 }', "mcp_servers.x.env must be a table"),
        ('[mcp_servers.x]\ncommand = "c"\nextra = 1', "mcp_servers.x: unknown keys extra"),
        (
            '[mcp_servers.x]\ncommand = "c"\ndefer_tools = "yes"',
            "mcp_servers.x.defer_tools must be true or false",
        ),
        ('[mcp_servers.hyperhive]\ncommand = "c"', "'hyperhive' is reserved"),
        ("colour = 'red'", "unknown keys: colour"),
        ("model = ", "not valid TOML"),
    ],
)
def test_agent_toml_problems_are_named(text: str, problem: str):
    problems = agentconf.check_toml(text)
    assert any(problem in p for p in problems), problems


def test_an_mcp_server_may_ask_for_deferred_tools():
    text = '[mcp_servers.x]\ncommand = "c"\ndefer_tools = true'
    assert agentconf.check_toml(text) == []


def test_validate_reports_every_problem(tmp_path: Path):
    (tmp_path / "agent.toml").write_text("model = 1\nbogus = 2\n")
    with pytest.raises(BackendFailed) as err:
        agentconf.validate(tmp_path)
    message = str(err.value)
    assert "agent.nix is missing" in message
    assert "model must be a string" in message
    assert "unknown keys: bogus" in message
    (tmp_path / "agent.nix").write_text("{ ... }: { }\n")
    (tmp_path / "agent.toml").write_text('model = "m"\n')
    agentconf.validate(tmp_path)  # valid: no error


def test_ports_are_stable_and_collisions_move_on():
    p = ports.preferred_port("alice", 8100, 900)
    assert 8100 <= p < 9000
    assert ports.preferred_port("alice", 8100, 900) == p
    assert ports.pick_port("alice", {p}, 8100, 900) == (p + 1 if p < 8999 else 8100)
    assert ports.pick_port("alice", set(range(8100, 9000)) - {8100}, 8100, 900) == 8100
    with pytest.raises(Conflict):
        ports.pick_port("alice", set(range(8100, 9000)), 8100, 900)
