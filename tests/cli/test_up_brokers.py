"""``hive up --brokers N``: N broker processes serve together."""

from __future__ import annotations

import subprocess
import sys
import time

from tests.cli.test_up import (
    _fast_retries,
    _procs_of,
    _stop_up,
    _up_env,
    _wait_status,
    up_on_given_servers,
)


def _brokers(home) -> list[int]:  # type: ignore[no-untyped-def]
    return sorted(
        p.pid for p in _procs_of(home) if (p.info["cmdline"] or [])[-2:] == ["serve", "broker"]
    )


def test_up_starts_the_brokers_asked_for(nats_server, database_url, tmp_path):
    home = tmp_path / "home"
    env = _fast_retries(_up_env(home))
    proc = up_on_given_servers(env, nats_server, database_url, "--brokers", "3")
    try:
        assert _wait_status(env, proc)["services"]["broker"]["up"] is True
        deadline = time.monotonic() + 30
        while len(_brokers(home)) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(_brokers(home)) == 3
        logs = sorted(p.name for p in (home / "logs").glob("broker*.log"))
        assert logs == ["broker-2.log", "broker-3.log", "broker.log"]
    finally:
        code, out = _stop_up(proc)
    assert code == 0, out
    assert not _procs_of(home), f"left behind: {_procs_of(home)}"


def test_brokers_must_be_a_count(tmp_path):
    env = _up_env(tmp_path / "home")
    for bad in ("0", "x", "65"):
        result = subprocess.run(
            [sys.executable, "-m", "hyperhive.cli.main", "up", "--brokers", bad],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2 and "number of instances" in result.stderr, result.stderr
