"""``hive up`` says what waits for the operator once the hive answers."""

from __future__ import annotations

import asyncio
import subprocess
import time

from hyperhive.cli.waiting import LABEL, describe
from hyperhive.common import rpc, subjects
from hyperhive.common.config import NatsSettings
from hyperhive.common.natsconn import connect
from hyperhive.common.wire.approvals import ApprovalQueued, AskRequest
from tests.cli.test_up import (
    _printed_lines,
    _start_up,
    _stop_up,
    _up_env,
    _wait_manager_harness,
)
from tests.rig import shared_tempdir


def _waiting_line(proc: subprocess.Popen[str], timeout: float = 90) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        assert line, "hive up stopped printing"
        if line.startswith(LABEL):
            return line.removeprefix(LABEL).rstrip("\n")
    raise AssertionError("no waiting line")


async def _ask(nats_url: str, seed: str, question: str) -> None:
    nc = await connect(
        NatsSettings(url=nats_url),
        name="test-manager",
        seed_file=seed,
        inbox_prefix=subjects.inbox_prefix(subjects.MANAGER),
    )
    try:
        await rpc.request(
            nc,
            subjects.manager_tool("ask_operator"),
            AskRequest(question=question),
            ApprovalQueued,
        )
    finally:
        await nc.close()


def test_up_prints_what_waits(tmp_path) -> None:
    home = shared_tempdir("hive-up-") / "home"
    env = _up_env(home)
    proc, ports = _start_up(home, env)
    try:
        _printed_lines(proc)
        assert _waiting_line(proc) == describe(0, 0)
        _wait_manager_harness(env, proc, home)
        seed = home / "agents" / subjects.MANAGER / "run" / "nats.seed"  # AgentPaths.nats_seed
        asyncio.run(_ask(f"nats://127.0.0.1:{ports[0]}", str(seed), "Keep going tonight?"))
    finally:
        code, _out = _stop_up(proc)
    assert code == 0
    proc, ports = _start_up(home, env)  # the same HIVE_HOME: the question still waits
    try:
        _printed_lines(proc)
        assert _waiting_line(proc) == describe(0, 1)
        assert describe(0, 1).startswith("0 approvals, 1 question (")
    finally:
        _stop_up(proc)
