"""``hive up`` as root on its defaults: agents never run as root on the host.

With bwrap the manager's harness runs sandboxed as the agent user and
``hive up`` warns of nothing; without it the harness still runs as the agent
user and ``hive up`` says, once, what isolation is missing.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import time
from pathlib import Path

import psutil
import pytest

from tests.cli.test_up import (
    _assert_refused,
    _start_up,
    _stop_up,
    _up_args,
    _up_env,
    _wait_manager_harness,
)
from tests.rig import hive_run, shared_tempdir

AGENT_USER = "hyperhive-agent"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the agent user needs root"),
]


def _defaults(home: Path, **env: str) -> dict[str, str]:
    """``hive up``'s environment with lifecycle's defaults (no rig opt-outs)."""
    out = _up_env(home)
    for key in ("HIVE_LIFECYCLE_USE_BWRAP", "HIVE_LIFECYCLE_AGENT_USER"):
        out.pop(key, None)
    out.update(env)
    return out


def _uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


def _harness_processes(pid: int, marker: str) -> list[psutil.Process]:
    """The processes under ``pid`` (itself included) whose command has ``marker``,
    bwrap's and setpriv's aside."""
    root = psutil.Process(pid)
    found = []
    for p in [root, *root.children(recursive=True)]:
        try:
            cmd = p.cmdline()
        except psutil.NoSuchProcess:
            continue
        if cmd and marker in " ".join(cmd) and not cmd[0].endswith(("bwrap", "setpriv")):
            found.append(p)
    return found


def _wait_harness(pid: int, marker: str) -> list[psutil.Process]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = _harness_processes(pid, marker)
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"no {marker!r} process under {pid}")


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bwrap not installed")
def test_up_runs_the_real_manager_harness_as_the_agent_user(tmp_path: Path):
    """The default harness command and a HIVE_HOME under a 0700 dir (pytest's)."""
    home = tmp_path / "home"
    env = _defaults(home)
    env.pop("HIVE_LIFECYCLE_HARNESS_COMMAND")
    proc, ports = _start_up(home, env)
    try:
        pid = _wait_manager_harness(env, proc, home)
        harness = _wait_harness(pid, "harness serve")
        agent = pwd.getpwnam(AGENT_USER).pw_uid
        assert {_uid(p.pid) for p in harness} == {agent}, [p.cmdline() for p in harness]
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", int(ports[1]))) != 0, "PostgreSQL on TCP"
    finally:
        code, out = _stop_up(proc)
    assert code == 0, out
    assert "warning" not in out, out


def test_up_without_bwrap_still_drops_root_and_says_what_is_missing():
    home = shared_tempdir("hive-up-doors-") / "home"  # the agent user can pass it
    env = _defaults(home, HIVE_LIFECYCLE_USE_BWRAP="false")
    proc, _ports = _start_up(home, env)
    try:
        pid = _wait_manager_harness(env, proc, home)
        assert _uid(pid) == pwd.getpwnam(AGENT_USER).pw_uid
    finally:
        code, out = _stop_up(proc)
    assert code == 0, out
    warnings = [line for line in out.splitlines() if line.lstrip().startswith("warning")]
    assert warnings == [
        "  warning    agents run without a sandbox (use_bwrap is off): they share one uid, "
        "so each can read the others' files and signal their processes"
    ], out


def test_up_without_bwrap_refuses_a_home_the_agent_user_cannot_reach(tmp_path: Path):
    """pytest's tmp dir is 0700 root's: no harness there could start."""
    home = tmp_path / "home"
    env = _defaults(home, HIVE_LIFECYCLE_USE_BWRAP="false")
    result = hive_run(*_up_args(), env=env)
    closed = next(p for p in reversed(home.parents) if not p.stat().st_mode & 0o001)
    line = (
        f"hive up: the harness runs as {AGENT_USER} and cannot reach {home / 'agents'}: "
        f"{closed} is closed to it; install bubblewrap (the sandbox binds what it needs) "
        "or move it where that user can read it"
    )
    _assert_refused(result, line, home)
