"""``hive agents|spawn|stop|start|logs|config|destroy|kept|purge|drafts`` end to end."""

from __future__ import annotations

import json

from hyperhive.common.paths import AgentPaths
from tests import rig
from tests.lifecycle.conftest import lifecycle_settings
from tests.lifecycle.helpers import serving
from tests.rig import cleanup_agents


async def test_cli_agent_verbs(nats_server, database_url, hive_home, operator_nc):
    settings = lifecycle_settings(
        nats_server,
        database_url,
        hive_home,
        HIVE_LIFECYCLE_HARNESS_COMMAND="sh -c 'echo hello-from-harness; exec sleep 3600'",
    )
    operator = rig.operator_settings(settings, nats_server)
    try:
        async with serving("lifecycle", settings, operator_nc):
            code, out, _ = await rig.hive_cli(operator, "spawn", "clia", "--json")
            assert code == 0
            assert json.loads(out)["state"] == "running"

            code, out, _ = await rig.hive_cli(operator, "agents", "--json")
            assert code == 0
            agents = {a["name"]: a for a in json.loads(out)}
            assert agents["clia"]["kind"] == "agent"

            code, out, _ = await rig.hive_cli(operator, "agents")
            assert code == 0 and out.splitlines()[0].split()[:3] == ["NAME", "KIND", "STATE"]
            assert "clia" in out and "running" in out

            code, out, _ = await rig.hive_cli(operator, "logs", "clia", "-n", "5")
            assert code == 0 and "hello-from-harness" in out

            code, out, _ = await rig.hive_cli(operator, "config", "clia")
            assert code == 0 and "==> agent.toml <==" in out and "==> agent.nix <==" in out

            code, out, _ = await rig.hive_cli(operator, "stop", "clia", "--json")
            assert code == 0 and json.loads(out)["state"] == "stopped"
            code, out, _ = await rig.hive_cli(operator, "start", "clia")
            assert code == 0 and "running" in out

            (AgentPaths.of(settings, "clia").state / "notes.md").write_text("keep me")
            code, out, _ = await rig.hive_cli(operator, "destroy", "clia")
            assert code == 0 and "state kept" in out
            code, out, _ = await rig.hive_cli(operator, "kept", "--json")
            assert code == 0 and [k["name"] for k in json.loads(out)] == ["clia"]
            code, out, _ = await rig.hive_cli(operator, "purge", "clia")
            assert code == 0
            code, out, _ = await rig.hive_cli(operator, "kept", "--json")
            assert json.loads(out) == []
            code, out, _ = await rig.hive_cli(operator, "drafts", "--json")
            assert code == 0 and json.loads(out) == []

            # bad input: one clear line on stderr, exit 1
            # (the client's own "nats disconnected" log line may precede it)
            code, out, err = await rig.hive_cli(operator, "spawn", "Bad_Name")
            assert code == 1 and out == ""
            assert err.strip().splitlines()[-1].startswith("hive: invalid agent name 'Bad_Name'")
            code, _, err = await rig.hive_cli(operator, "stop", "ghost")
            assert code == 1
            assert err.strip().splitlines()[-1] == "hive: no agent named 'ghost'"
    finally:
        cleanup_agents(nats_server, settings.paths.agents_dir)
