"""``hive up`` heals itself: its NATS and PostgreSQL are restarted when they die
(issue 19), and a server that cannot be brought back stops the hive cleanly."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from hyperhive.common import rpc, subjects
from hyperhive.common.config import NatsSettings
from hyperhive.common.natsconn import connect
from hyperhive.common.wire.base import Ok
from hyperhive.common.wire.broker import AckRequest, RecvReply, RecvRequest
from tests.cli.test_up import (
    _procs_of,
    _start_up,
    _still_alive,
    _stop_up,
    _up_env,
    _wait_manager_harness,
    _wait_status,
)
from tests.rig import hive_run, shared_tempdir

pytestmark = pytest.mark.slow


@pytest.fixture
def home() -> Iterator[Path]:
    """A HIVE_HOME the unprivileged PostgreSQL user can reach, removed afterwards."""
    root = shared_tempdir("hive-heal-")
    yield root / "home"
    shutil.rmtree(root, ignore_errors=True)


HEAL_BOUND_S = 15.0  # issue 19: everything up again within 15 s
MANAGER = "hm1nd"


def _nats_pid(up: subprocess.Popen[str]) -> int:
    (pid,) = [
        p.pid
        for p in psutil.Process(up.pid).children(recursive=True)
        if "nats-server" in " ".join(p.cmdline())
    ]
    return pid


def _postmaster_pid(home: Path) -> int:
    """The postmaster of ``home``'s cluster (its command line names the data dir)."""
    needle = str(home.resolve())
    found = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if p.info["cmdline"]
        and "postgres" in p.info["cmdline"][0]
        and "-D" in p.info["cmdline"]
        and needle in " ".join(p.info["cmdline"])
    ]
    assert len(found) == 1, found
    return found[0]


def _send(env: dict[str, str], body: str) -> int:
    sent = hive_run("send", MANAGER, body, "--json", env=env)
    assert sent.returncode == 0, sent.stderr
    return int(json.loads(sent.stdout)["id"])


def _wait_healed(
    env: dict[str, str], up: subprocess.Popen[str], part: str, t0: float, restarts: int = 1
) -> dict:
    """Waits until ``hive status`` is all up with ``part`` restarted ``restarts``
    times; within :data:`HEAL_BOUND_S` of ``t0``."""
    last = None
    while time.monotonic() < t0 + HEAL_BOUND_S:
        assert up.poll() is None, f"hive up exited: {up.stdout.read() if up.stdout else ''}"
        last = hive_run("status", "--json", "--timeout", "1", env=env, timeout=30)
        if last.returncode == 0:
            report = json.loads(last.stdout)
            if report[part].get("restarts", 0) == restarts:
                return report
        time.sleep(0.25)
    raise AssertionError(f"not healed within {HEAL_BOUND_S}s: {last.stdout if last else ''}")


async def _receive_as_manager(home: Path, nats_url: str, wanted: set[int]) -> set[int]:
    """Receives (and acks) the manager's messages with its own credentials until
    every id in ``wanted`` came. Returns the ids received."""
    seed = home / "agents" / MANAGER / "run" / "nats.seed"
    nc = await connect(
        NatsSettings(url=nats_url, connect_attempts=3, connect_backoff_s=0.2),
        name="test-manager",
        seed_file=str(seed),
        inbox_prefix=subjects.inbox_prefix(MANAGER),
    )
    got: set[int] = set()
    try:
        deadline = time.monotonic() + 30
        while not wanted <= got and time.monotonic() < deadline:
            reply = await rpc.request(
                nc,
                subjects.agent(MANAGER, "recv"),
                RecvRequest(wait_ms=2000),
                RecvReply,
                timeout=10,
            )
            if reply.message is None:
                continue
            got.add(reply.message.id)
            await rpc.request(
                nc, subjects.agent(MANAGER, "ack"), AckRequest(id=reply.message.id), Ok
            )
    finally:
        await nc.close()
    return got


def _kill_and_heal(home: Path, part: str, how: signal.Signals = signal.SIGKILL) -> None:
    """``how`` (SIGKILL, or SIGSTOP for 3 s then SIGCONT) to ``part``'s server; the
    hive is all up again within 15 s and a message sent before and one sent after
    are both delivered to the manager."""
    env = _up_env(home)
    up, ports = _start_up(home, env)
    restarts = 1 if how == signal.SIGKILL else 0
    try:
        _wait_status(env, up)
        _wait_manager_harness(env, up, home)
        before = _send(env, f"before the {part} {how.name}")
        victim = _nats_pid(up) if part == "nats" else _postmaster_pid(home)
        t0 = time.monotonic()
        os.kill(victim, how)
        if how == signal.SIGSTOP:
            time.sleep(3)
            os.kill(victim, signal.SIGCONT)
        report = _wait_healed(env, up, part, t0, restarts)
        now = _nats_pid(up) if part == "nats" else _postmaster_pid(home)
        state = json.loads((home / "up.state.json").read_text())
        assert state["parts"][part]["pid"] == now, state
        if restarts:
            assert now != victim
            assert report[part]["last_exit"], report
            table = hive_run("status", env=env)
            assert "restarted 1x" in table.stdout, table.stdout
        after = _send(env, f"after the {part} {how.name}")
        url = f"nats://127.0.0.1:{ports[0]}"
        got = asyncio.run(_receive_as_manager(home, url, {before, after}))
        assert {before, after} <= got
    finally:
        code, out = _stop_up(up)
    assert code == 0, out
    lines = [line for line in out.splitlines() if line.startswith(f"hive up: {part} ")]
    if restarts:
        assert len(lines) == 1 and "restarted" in lines[0], out
        assert lines[0] in (home / "logs" / "up.log").read_text()
    else:
        assert lines == [], out  # a stopped server is not restarted
    assert not _procs_of(home), f"left behind: {_procs_of(home)}"


def test_killed_nats_server_is_restarted_and_nothing_is_lost(home):
    _kill_and_heal(home, "nats")


def test_killed_postmaster_is_restarted_and_nothing_is_lost(home):
    _kill_and_heal(home, "postgres")


@pytest.mark.parametrize("part", ["nats", "postgres"])
def test_stopped_server_is_waited_for_and_nothing_is_lost(home, part):
    _kill_and_heal(home, part, signal.SIGSTOP)


def test_restart_cap_reached_stops_the_hive_with_one_line(home):
    env = _up_env(home)
    env["HIVE_UP_RESTART_LIMIT"] = "1"
    up, _ = _start_up(home, env)
    watched: list[psutil.Process] = []
    try:
        _wait_status(env, up)
        _wait_manager_harness(env, up, home)
        watched = psutil.Process(up.pid).children(recursive=True)
        watched.append(psutil.Process(_postmaster_pid(home)))
        os.kill(_nats_pid(up), signal.SIGKILL)
        _wait_healed(env, up, "nats", time.monotonic())
        os.kill(_nats_pid(up), signal.SIGKILL)
        out, _ = up.communicate(timeout=60)
    finally:
        if up.poll() is None:
            _stop_up(up)
    assert up.returncode == 1, out
    lines = out.strip().splitlines()
    prefix = "hive up: nats cannot be kept up (1 restarts within 60s; last: killed by SIGKILL)"
    assert lines[-1].startswith(prefix), out
    assert lines[-1].endswith("nats.log, then run `hive up` again"), out
    gave_up = [line for line in lines if "cannot be kept up" in line]
    assert gave_up == [lines[-1]], out
    deadline = time.monotonic() + 10
    while _still_alive(watched) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _still_alive(watched), [(p.pid, p.cmdline()) for p in _still_alive(watched)]
    assert not _procs_of(home), f"left behind: {_procs_of(home)}"
    assert not (home / "up.state.json").exists()


def test_damaged_postgres_data_dir_stops_the_hive_with_one_line(home):
    env = _up_env(home)
    env["HIVE_UP_RESTART_LIMIT"] = "2"
    up, _ = _start_up(home, env)
    try:
        _wait_status(env, up)
        data_dir = (home / "postgres").resolve()
        postmaster = _postmaster_pid(home)
        # the control file gone: no start can succeed
        (data_dir / "global" / "pg_control").unlink()
        os.kill(postmaster, signal.SIGKILL)
        out, _ = up.communicate(timeout=90)
    finally:
        if up.poll() is None:
            _stop_up(up)
    assert up.returncode == 1, out
    lines = out.strip().splitlines()
    last = lines[-1]
    assert last.startswith("hive up: postgres cannot be kept up (2 restarts within 60s"), out
    assert "last: failed to restart: PostgreSQL did not start" in last
    assert "postgres.log" in last and "restore" in last and "run `hive up` again" in last
    assert [line for line in lines if "cannot be kept up" in line] == [last]
    deadline = time.monotonic() + 10
    while _procs_of(home) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _procs_of(home), f"left behind: {_procs_of(home)}"
