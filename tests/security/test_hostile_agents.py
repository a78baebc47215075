"""Hostile agents: real agents of a default ``hive up`` attack every door.

Each agent's real claude CLI, driven by the scripted API, runs the probe
program (probes.py) through its own ``Bash`` tool inside its sandbox: the
dashboard (read, and approve/deny/answer/spawn/destroy with a scraped CSRF
token), other agents' and the manager's pages, tails and terminals (old TCP
ports, page sockets, the dashboard's proxy), PostgreSQL over TCP and any
socket it can find, NATS with its own seed (admin subjects, other agents'
subjects, ``$JS.API``, another agent's heartbeat, ``hive.>``/``_INBOX.>``),
the operator's and services' seeds and token, other agents' creds/run/state,
``/etc/shadow`` and a secret in ``/root``, signals to the hive's processes,
writes to applied repos and their tags. Every probe must fail, and the
hive's state read from outside must be what it was.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.rig import shared_tempdir
from tests.security.hostile import (
    MANAGER,
    PROBES,
    HostileHive,
    controls_failed,
    escapes,
    hostile_hive,
)

pytestmark = [pytest.mark.slow, pytest.mark.claude]


@pytest.fixture(scope="module")
def hive() -> Iterator[tuple[HostileHive, dict[str, Any]]]:
    """One hive: agents ``x`` (the attacker) and ``y`` (its victim), a pending
    config change of x's and an open question."""
    with hostile_hive(shared_tempdir("hostile-") / "home") as h:
        tag = f"{os.getpid() % 100}"
        x, y = f"x{tag}", f"y{tag}"
        h.spawn(x)
        h.spawn(y)
        approval, question = h.stage(x)
        yield h, {"x": x, "y": y, "approval": approval, "question": question}


def _assert_unchanged(h: HostileHive, staged: dict[str, Any], before: dict[str, Any]) -> None:
    after = h.snapshot()
    pending = {a["id"]: a["state"] for a in after["approvals"]}
    assert pending[staged["approval"]] == "pending", after["approvals"]
    question = next(q for q in after["questions"] if q["id"] == staged["question"])
    assert not question.get("answer"), question
    assert after["agents"] == before["agents"], "an agent was spawned, stopped or destroyed"
    assert after["tags"] == before["tags"], "a tag appeared in an applied repo"
    for part, (pid, status) in before["processes"].items():
        assert after["processes"].get(part) == (pid, status), f"{part} was signalled"


def _report(results: list[dict[str, Any]]) -> str:
    return "\n".join(f"  {r['probe']}: {r['detail']}" for r in results)


@pytest.mark.parametrize("attacker", ["agent", "manager"])
def test_an_agent_opens_no_door(hive: tuple[HostileHive, dict[str, Any]], attacker: str) -> None:
    h, staged = hive
    me, other = (staged["x"], staged["y"]) if attacker == "agent" else (MANAGER, staged["x"])
    before = h.snapshot()
    ctx = h.probe_context(
        me, other, {"approval_id": staged["approval"], "question_id": staged["question"]}
    )
    results = h.attack(me, ctx)
    assert not controls_failed(results), "the probe did not run as the agent:\n" + _report(
        controls_failed(results)
    )
    assert len(results) > 60, f"only {len(results)} probes ran:\n{_report(results)}"
    opened = escapes(results)
    assert not opened, f"{me} escaped through {len(opened)} door(s):\n{_report(opened)}"
    _assert_unchanged(h, staged, before)
    assert ctx["spawn_name"] not in h.agents()


def test_the_probes_see_an_open_door(hive: tuple[HostileHive, dict[str, Any]]) -> None:
    """The same probes, run by the test itself (trusted, on the host, unsandboxed),
    find the doors open: so an agent's 'all closed' is the sandbox's doing and
    not a probe that cannot see."""
    h, staged = hive
    ctx = h.probe_context(staged["x"], staged["y"], {"approval_id": 0, "question_id": 0})
    ctx["write_files"] = []
    blob = base64.b64encode(json.dumps(ctx).encode()).decode()
    out = subprocess.run(
        [sys.executable, str(PROBES), blob], capture_output=True, text=True, timeout=180
    ).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("HOSTILE-RESULTS "))
    opened = {r["probe"] for r in escapes(json.loads(line.removeprefix("HOSTILE-RESULTS ")))}
    home = ctx["hive_home"]
    if os.getuid() == 0:
        assert "read /etc/shadow" in opened
        assert "runs as uid 0 on the host" in opened
    assert f"read {home}/nats/operator.seed" in opened, sorted(opened)
    assert f"read {ctx['read_files'][1]}" in opened, sorted(opened)
    assert any(p.startswith("signal broker") for p in opened), sorted(opened)
