"""The process backend under bubblewrap: an agent sees only its own files."""

from __future__ import annotations

import shutil

import pytest

from hyperhive.common.paths import AgentPaths
from tests import rig
from tests.lifecycle.conftest import lifecycle_settings
from tests.lifecycle.helpers import Operator, serving
from tests.rig import cleanup_agents

PROBE = (
    'sh -c \'for f in "$PROBE_SERVICE_SEED" "$PROBE_OTHER_SEED" "$PROBE_OTHER_STATE" '
    '"$HIVE_NATS_SEED_FILE" "$HIVE_HARNESS_CONFIG_DIR/agent.toml"; do '
    'if cat "$f" >/dev/null 2>&1; then echo "readable $f"; else echo "hidden $f"; fi; done; '
    'if touch "$HIVE_HARNESS_STATE_DIR/w" 2>/dev/null; then echo state-writable; fi; '
    'if touch "$HIVE_HARNESS_CONFIG_DIR/w" 2>/dev/null; then echo config-writable; fi; '
    "echo probe-done; exec sleep 3600'"
)


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bwrap not installed")
async def test_agent_under_bwrap_sees_only_its_own_dirs(
    nats_server, database_url, hive_home, operator_nc, monkeypatch
):
    settings = lifecycle_settings(
        nats_server,
        database_url,
        hive_home,
        HIVE_LIFECYCLE_USE_BWRAP="true",
        HIVE_LIFECYCLE_HARNESS_COMMAND=PROBE,
    )
    other = AgentPaths.of(settings, "other")
    monkeypatch.setenv("PROBE_SERVICE_SEED", str(nats_server.service_seed))
    monkeypatch.setenv("PROBE_OTHER_SEED", str(other.nats_seed))
    monkeypatch.setenv("PROBE_OTHER_STATE", str(other.state / "notes.md"))
    op = Operator(operator_nc)
    try:
        async with serving("lifecycle", settings, operator_nc):
            await op.spawn("other")
            (other.state / "notes.md").write_text("private")
            await op.spawn("boxed")
            log = AgentPaths.of(settings, "boxed").log_file
            await rig.eventually(lambda: "probe-done" in log.read_text(), what="probe")
            out = log.read_text()
            boxed = AgentPaths.of(settings, "boxed")
            assert f"hidden {nats_server.service_seed}" in out
            assert f"hidden {other.nats_seed}" in out
            assert f"hidden {other.state / 'notes.md'}" in out
            assert f"readable {boxed.nats_seed}" in out
            assert f"readable {boxed.applied / 'agent.toml'}" in out
            assert "state-writable" in out
            assert "config-writable" not in out  # the deployed config is read-only
    finally:
        cleanup_agents(nats_server, settings.paths.agents_dir)
