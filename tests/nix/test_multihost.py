"""services.hyperhive.role: a hub (the default) or a node (docs/multihost.md).

Evaluated with the stand-ins of standin.nix; nix/tests/multihost.nix boots a
hub and a node where nixpkgs is at hand.
"""

from __future__ import annotations

from typing import Any

import pytest

from hyperhive.common import config
from tests.nix.nixeval import REPO, needs_nix, run
from tests.nix.test_units import host

pytestmark = needs_nix

NODE = {
    "role": '"node"',
    "node": '{ name = "gpu1"; hubAddress = "tls://hub.example:4222"; '
    'credentialsFile = "/var/lib/hyperhive/node.seed"; }',
}


@pytest.fixture(scope="module")
def node() -> dict[str, Any]:
    return host(**NODE)


def known_settings() -> set[str]:
    known = {"HIVE_HOME"}
    for group in config.GROUPS:
        cls = config.Settings.__annotations__[group]
        cls = getattr(config, cls) if isinstance(cls, str) else cls
        known |= {f"HIVE_{group.upper()}_{f.upper()}" for f in cls.__struct_fields__}
    return known


def test_a_hub_is_the_default_and_a_single_host_hive() -> None:
    hub = host()
    units = hub["config"]["systemd"]["services"]
    assert "hive-lifecycle" in units and "nats" in units and "hive-node" not in units
    assert hub["config"]["services"]["postgresql"]["enable"] is True
    assert hub["config"]["networking"]["firewall"]["allowedTCPPorts"] == []
    opened = host(openNatsFirewall="true")["config"]["networking"]["firewall"]
    assert opened["allowedTCPPorts"] == [4222]


def test_a_node_runs_the_node_agent_only(node: dict[str, Any]) -> None:
    cfg = node["config"]
    assert set(cfg["systemd"]["services"]) == {"hive-node"}
    assert "nats" not in cfg.get("services", {})
    assert "postgresql" not in cfg.get("services", {})
    assert all(a["assertion"] for a in cfg["assertions"])
    unit = cfg["systemd"]["services"]["hive-node"]
    assert unit["serviceConfig"]["ExecStart"].endswith("/bin/hive serve node")
    assert unit["serviceConfig"]["LoadCredential"] == "node-seed:/var/lib/hyperhive/node.seed"
    assert unit["unitConfig"]["ConditionPathExists"] == "/var/lib/hyperhive/node.seed"
    assert cfg["systemd"]["paths"]["hive-node"]["pathConfig"]["PathExists"] == (
        "/var/lib/hyperhive/node.seed"
    )
    env = unit["environment"]
    assert env["HIVE_NATS_URL"] == "tls://hub.example:4222"
    assert env["HIVE_NATS_SEED_FILE"] == "%d/node-seed"
    assert env["HIVE_NATS_INBOX_PREFIX"] == "_INBOX.node-gpu1"
    assert env["HIVE_NODE_NAME"] == "gpu1"
    assert env["HIVE_LIFECYCLE_BACKEND"] == "nixos"
    assert "HIVE_DATABASE_URL" not in env and "HIVE_NATS_AUTH_FILE" not in env
    unknown = {k for k in env if k.startswith("HIVE_")} - known_settings()
    assert unknown == set()


def test_a_node_needs_the_hubs_address_and_its_seed() -> None:
    bad = host(role='"node"', node='{ name = "n1"; hubAddress = null; credentialsFile = "x"; }')
    failed = [a["message"] for a in bad["config"]["assertions"] if not a["assertion"]]
    assert any("hubAddress" in m for m in failed)
    assert any("credentialsFile" in m for m in failed)


def test_the_multihost_vm_test_parses() -> None:
    proc = run(["--parse", str(REPO / "nix" / "tests" / "multihost.nix")])
    assert proc.returncode == 0, proc.stderr
