"""Lifecycle fixtures: settings with a harmless harness, and cleanup.

The real harness is its own area; here the harness command is a plain
long-running process (``sleep``), which is all the process backend needs to
start, watch, stop and adopt.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hyperhive.cli.embedded import EmbeddedNats, free_port
from hyperhive.common.config import Settings
from tests import rig

SLEEP = "sleep 3600"


def lifecycle_settings(
    nats: EmbeddedNats, database_url: str, home: Path, **overrides: str
) -> Settings:
    """Settings for a lifecycle under test: no manager unless asked, free ports."""
    env = {
        "HIVE_LIFECYCLE_HARNESS_COMMAND": SLEEP,
        "HIVE_LIFECYCLE_MANAGER": "",
        "HIVE_LIFECYCLE_MANAGER_PORT": str(free_port()),
        "HIVE_LIFECYCLE_PORT_BASE": "20100",
        "HIVE_LIFECYCLE_PORT_COUNT": "900",
        "HIVE_LIFECYCLE_START_GRACE_S": "0.3",
        "HIVE_LIFECYCLE_STOP_TIMEOUT_S": "5",
        "HIVE_LIFECYCLE_MONITOR_INTERVAL_S": "0.2",
        "HIVE_LIFECYCLE_AUTO_UPDATE_INTERVAL_S": "3600",
        "HIVE_LIFECYCLE_REV": "test-rev-1",
        "HIVE_LIFECYCLE_OP_WAIT_S": "30",
    }
    env.update(overrides)
    return rig.make_settings(nats, database_url, home, **env)


@pytest.fixture
def lc_settings(
    nats_server: EmbeddedNats, database_url: str, hive_home: Path
) -> Iterator[Settings]:
    settings = lifecycle_settings(nats_server, database_url, hive_home)
    yield settings
    rig.cleanup_agents(nats_server, settings.paths.agents_dir)
