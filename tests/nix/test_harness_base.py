"""The container side: nix/harness-base.nix as lifecycle's per-agent flake uses it.

The flake is rendered by lifecycle's nixos backend itself and evaluated with
stand-in inputs: the hyperhive input is this repository, so the rendered
``"${hyperhive}/nix/harness-base.nix"`` must name the file this repository
ships, and the options the flake sets must be options that file declares.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hyperhive.cli.main import build_parser
from hyperhive.common import subjects
from hyperhive.common.config import LifecycleSettings, PathSettings, Settings
from hyperhive.common.paths import AgentPaths
from hyperhive.lifecycle.backends.base import AgentSpec
from hyperhive.lifecycle.backends.nixos import container_name, render_flake
from tests.nix.nixeval import HERE, REPO, eval_expr, needs_nix, nix_str

pytestmark = needs_nix

# What the harness needs from its environment (the contract of the process
# backend, with the container's paths).
CONTRACT = {
    "HIVE_HARNESS_AGENT",
    "HIVE_HARNESS_SOCKET",
    "HIVE_HARNESS_WORKDIR",
    "HIVE_HARNESS_STATE_DIR",
    "HIVE_HARNESS_CREDS_DIR",
    "HIVE_HARNESS_CLAUDE_BIN",
    "HIVE_NATS_URL",
    "HIVE_NATS_SEED_FILE",
    "HIVE_NATS_INBOX_PREFIX",
    "HIVE_HOME",
}


def rendered(tmp_path: Path, name: str, port: int, manager: bool) -> dict[str, Any]:
    """Lifecycle's flake for ``name``, its module list and the container it yields."""
    settings = Settings(
        lifecycle=LifecycleSettings(backend="nixos", flake_ref="path:/nix/store/hh-source"),
        paths=PathSettings(home=str(tmp_path)),
    )
    spec = AgentSpec(
        name=name,
        port=port,
        manager=manager,
        paths=AgentPaths.of(settings, name),
        rev="0" * 40,
    )
    flake = tmp_path / name / "flake.nix"
    flake.parent.mkdir(parents=True)
    flake.write_text(render_flake(spec, settings))
    attr = container_name(spec)
    return eval_expr(
        f"""
let
  s = import {HERE}/standin.nix;
  flake = import {flake};
  out = flake.outputs {{
    hyperhive = {{ outPath = {nix_str(str(REPO))}; }};
    nixpkgs = {{ lib.nixosSystem = args: args; }};
    agent = {{ outPath = "/nix/store/standin-applied"; }};
  }};
  system = out.nixosConfigurations.{nix_str(attr)};
  inline = builtins.elemAt system.modules 2;
  base = import (builtins.elemAt system.modules 0) {{
    inherit config;
    inherit (s) lib pkgs;
  }};
  config.hyperhive.agent = s.defaultsOf base.options.hyperhive.agent // inline.hyperhive.agent;
in {{
  modules = map (m: if builtins.isAttrs m then "inline" else toString m) system.modules;
  inlineOptions = builtins.attrNames inline.hyperhive.agent;
  baseOptions = builtins.attrNames base.options.hyperhive.agent;
  config = builtins.removeAttrs base.config [ "nixpkgs" ];
}}"""
    )


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return rendered(tmp_path_factory.mktemp("agent"), "ag1", 8123, manager=False)


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return rendered(tmp_path_factory.mktemp("manager"), subjects.MANAGER, 8000, manager=True)


def test_rendered_flake_imports_the_shipped_harness_base(agent: dict[str, Any]) -> None:
    base, agent_nix, inline = agent["modules"]
    assert base == str(REPO / "nix" / "harness-base.nix")
    assert Path(base).is_file()
    assert agent_nix == "/nix/store/standin-applied/agent.nix"
    assert inline == "inline"


def test_rendered_flake_sets_only_declared_options(agent: dict[str, Any]) -> None:
    assert set(agent["inlineOptions"]) <= set(agent["baseOptions"])


def harness(container: dict[str, Any]) -> dict[str, Any]:
    return container["config"]["systemd"]["services"]["hive-harness"]


def test_harness_unit_gets_the_contract_environment(agent: dict[str, Any]) -> None:
    unit = harness(agent)
    env = unit["environment"]
    assert env.keys() >= CONTRACT
    assert env["HIVE_HARNESS_AGENT"] == "ag1"
    assert env["HIVE_HARNESS_SOCKET"] == "/run/hive/page.sock"  # no TCP port
    assert "HIVE_HARNESS_PORT" not in env and "HIVE_HARNESS_HOST" not in env
    assert env["HIVE_NATS_INBOX_PREFIX"] == subjects.inbox_prefix("ag1")
    # the bind mounts of docs/architecture.md
    assert env["HIVE_HARNESS_CREDS_DIR"] == "/root/.claude"
    assert env["HIVE_HARNESS_STATE_DIR"] == "/state"
    assert env["HIVE_NATS_SEED_FILE"] == "/run/hive/nats.seed"
    assert env["HIVE_HARNESS_CLAUDE_BIN"].endswith("/bin/claude")
    assert "HIVE_HARNESS_AGENTS_DIR" not in env
    assert unit["unitConfig"]["RequiresMountsFor"] == ["/root/.claude", "/state", "/run/hive"]
    argv = unit["serviceConfig"]["ExecStart"].split()
    assert argv[0].endswith("/bin/hive")
    assert build_parser().parse_args(argv[1:]).harness_command == "serve"


def test_manager_also_gets_the_agents_dir(manager: dict[str, Any]) -> None:
    unit = harness(manager)
    # the container layout, which the manager's prompt names by default
    assert "HIVE_HARNESS_AGENTS_DIR" not in unit["environment"]
    assert "/agents" in unit["unitConfig"]["RequiresMountsFor"]
    assert "/applied" in unit["unitConfig"]["RequiresMountsFor"]
    assert manager["config"]["networking"]["hostName"] == subjects.MANAGER


def test_container_shares_the_host_network_safely(agent: dict[str, Any]) -> None:
    net = agent["config"]["networking"]
    assert agent["config"]["boot"]["isContainer"] is True
    assert net["hostName"] == "h-ag1"
    # its own firewall would replace the host's rules
    assert net["firewall"]["enable"] is False


def test_only_claude_code_is_allowed_unfree() -> None:
    allowed = eval_expr(
        f"""
let
  s = import {HERE}/standin.nix;
  m = import {REPO}/nix/harness-base.nix {{
    config.hyperhive.agent = {{ name = "x"; port = 1; manager = false; }};
    inherit (s) lib pkgs;
  }};
in builtins.filter (n: m.config.nixpkgs.config.allowUnfreePredicate {{ pname = n; }})
  [ "claude-code" "vscode" "slack" "claude-code-unwrapped" ]"""
    )
    assert allowed == ["claude-code"]


def test_default_agent_config_matches_lifecycles_template() -> None:
    """nix/agent.nix is what lifecycle copies into a new agent's proposed repo."""
    shipped = (REPO / "nix" / "agent.nix").read_text()
    template = (REPO / "services" / "lifecycle" / "templates" / "agent.nix").read_text()
    assert shipped == template
