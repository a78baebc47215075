"""Fault bench: a seeded, Jepsen-style run against a real ``hive up``.

Starts ``hive up`` itself (in a temp ``HIVE_HOME``, free ports, a ``sleep``
for every harness: ``HIVE_LIFECYCLE_HARNESS_COMMAND``), spawns a few agents,
and drives them with harness-free consumers: one NATS connection per agent
with the credentials lifecycle issued it (``agents/<n>/run/nats.seed``, its
own inbox prefix), sending to its peers (each send with an idempotency key,
retried with the same key until answered) and receiving and acking its inbox.
The manager's inbox is consumed the same way, to count crash reports.
Every operation and its outcome goes into the client history.

Meanwhile a nemesis, seeded, hits one process at a time: the broker,
lifecycle, approvals, crash-watch, nats-server and the PostgreSQL postmaster,
each with SIGKILL or with SIGSTOP for a few seconds then SIGCONT, and crashes
an agent's harness on purpose (SIGKILL, then ``hive start`` once the crash
was reported). After each fault it waits for ``hive status`` to be all up
again and records how long that took.

Then the checker, over the history and the broker's final message history:
  lost           answered sends never received by their recipient
  duplicated     one idempotency key answered with two ids, one key stored as
                 two messages, or one id received as two different messages
  acked_lost     acked messages that the final history does not show acked
  crash_missed / crash_duplicated
                 agent crashes without exactly one ``ContainerCrash`` in the
                 manager's inbox
  healthy        ``hive status`` all up at the end
Redeliveries of an acked message are counted (``acked_redelivered``) but are
not a failure: delivery is at-least-once and a PostgreSQL crash may lose the
last acks (docs/architecture.md).

Usage: python bench/faults.py --seed 1 [--duration 150] [--agents 3] [--keep]
The last line printed is one JSON object:
``{"seed": …, "ops": …, "faults": …, "lost": 0, "duplicated": 0, …, "ok": true}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from nats.aio.client import Client as NATS

from hyperhive.cli.embedded import free_port
from hyperhive.cli.supervisor import pid_alive, postmaster_pid, read_state
from hyperhive.common import rpc, subjects
from hyperhive.common.config import NatsSettings
from hyperhive.common.natsconn import connect
from hyperhive.common.wire.base import Ok
from hyperhive.common.wire.broker import (
    AckRequest,
    RecvReply,
    RecvRequest,
    SendReply,
    SendRequest,
)
from hyperhive.common.wire.events import ContainerCrash

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.rig import hive_run  # the repo root is on the path now

MANAGER = "hm1nd"
SERVICES = ("broker", "lifecycle", "approvals", "crash-watch")
TARGETS = (*SERVICES, "nats-server", "postgres")
HEAL_LIMIT_S = 30.0  # a fault not healed within this is reported as unhealed
REQUEST_TIMEOUT_S = 5.0
SEND_ATTEMPTS = 40  # one send is retried (same key) at most this often
DRAIN_S = 60.0  # after the nemesis: how long answered sends may take to arrive


def log(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {line}", file=sys.stderr, flush=True)


# --- the hive under test ------------------------------------------------------------


@dataclass
class Hive:
    home: Path
    env: dict[str, str]
    nats_port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return hive_run(*args, env=self.env, timeout=timeout)

    async def acli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(self.cli, *args, timeout=timeout)

    def start(self) -> None:
        out = open(self.home.parent / "up.out", "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hyperhive.cli.main",
                "up",
                "--nats-port",
                str(self.nats_port),
                "--pg-port",
                str(free_port()),
                "--dashboard-port",
                str(free_port()),
            ],
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()

    def output(self) -> str:
        return (self.home.parent / "up.out").read_text(errors="replace")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    async def healthy(self) -> bool:
        done = await self.acli("status", "--json", "--timeout", "2", timeout=30)
        return done.returncode == 0

    async def wait_healthy(self, limit: float) -> float | None:
        """Seconds until ``hive status`` was all up (None: not within ``limit``)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < limit:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"hive up exited: {self.output()[-2000:]}")
            if await self.healthy():
                return time.monotonic() - t0
            await asyncio.sleep(0.3)
        return None

    async def agent_state(self, name: str) -> str:
        done = await self.acli("agents", "--json")
        if done.returncode != 0:
            return "?"
        for a in json.loads(done.stdout):
            if a["name"] == name:
                return str(a["state"])
        return "missing"

    async def wait_agent(self, name: str, limit: float = 60) -> None:
        deadline = time.monotonic() + limit
        seed = self.seed(name)
        while time.monotonic() < deadline:
            if seed.exists() and await self.agent_state(name) == "running":
                return
            await asyncio.sleep(0.5)
        raise RuntimeError(f"agent {name} never running")

    def seed(self, name: str) -> Path:
        return self.home / "agents" / name / "run" / "nats.seed"

    def harness_pid(self, name: str) -> int | None:
        try:
            return int((self.home / "agents" / name / "run" / "harness.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def pid_of(self, target: str) -> int | None:
        """The pid of a supervised process of this hive (as ``hive up`` records it
        in ``up.state.json``, else found among its children)."""
        parts = read_state(self.home)
        recorded = parts.get("nats" if target == "nats-server" else target, {}).get("pid")
        if isinstance(recorded, int) and pid_alive(recorded):
            return recorded
        if target == "postgres":
            return postmaster_pid((self.home / "postgres").resolve())
        assert self.proc is not None
        for p in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                cmd = " ".join(p.cmdline())
            except psutil.Error:
                continue
            if target == "nats-server" and "nats-server" in cmd:
                return p.pid
            if target in SERVICES and cmd.endswith(f"serve {target}"):
                return p.pid
        return None

    async def history(self, agent: str) -> list[dict[str, Any]]:
        done = await self.acli("messages", "--agent", agent, "--limit", "1000000", "--json")
        if done.returncode != 0:
            raise RuntimeError(f"history of {agent}: {done.stderr.strip()}")
        return list(json.loads(done.stdout))


def make_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIVE_")}
    env.update(
        HIVE_HOME=str(home),
        HIVE_LIFECYCLE_USE_BWRAP="false",
        # harness-free: lifecycle runs a process it can watch; the agents'
        # side is this bench's consumers
        HIVE_LIFECYCLE_HARNESS_COMMAND="sleep 3600",
        # a hand-out whose reply a fault swallowed comes back within the run
        HIVE_BROKER_VISIBILITY_TIMEOUT_S="5",
        HIVE_BROKER_HISTORY_LIMIT="1000000",
        HIVE_CRASHWATCH_POLL_INTERVAL_S="2",
    )
    return env


# --- the client history -------------------------------------------------------------


@dataclass
class History:
    ops: list[dict[str, Any]] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)

    def add(self, **op: Any) -> None:
        op["t"] = round(time.monotonic() - self.t0, 4)
        self.ops.append(op)


async def agent_nc(hive: Hive, name: str) -> NATS:
    return await connect(
        NatsSettings(url=hive.nats_url, connect_attempts=20, connect_backoff_s=0.2),
        name=f"faults-{name}",
        seed_file=str(hive.seed(name)),
        inbox_prefix=subjects.inbox_prefix(name),
    )


async def sender(
    nc: NATS, name: str, peers: list[str], rng: random.Random, h: History, stop: asyncio.Event
) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        key = f"{name}-{n}"
        to = rng.choice(peers)
        for attempt in range(1, SEND_ATTEMPTS + 1):
            try:
                reply = await rpc.request(
                    nc,
                    subjects.agent(name, "send"),
                    SendRequest(to=to, body=f"m {key}", idempotency_key=key),
                    SendReply,
                    timeout=REQUEST_TIMEOUT_S,
                )
            except Exception as exc:
                h.add(op="send", agent=name, to=to, key=key, ok=False, error=_err(exc))
                await asyncio.sleep(min(1.0, 0.1 * attempt))
                continue
            h.add(op="send", agent=name, to=to, key=key, ok=True, id=reply.id)
            break
        await asyncio.sleep(rng.uniform(0.05, 0.15))


async def consumer(nc: NATS, name: str, h: History, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            reply = await rpc.request(
                nc,
                subjects.agent(name, "recv"),
                RecvRequest(wait_ms=1000),
                RecvReply,
                timeout=REQUEST_TIMEOUT_S + 1,
            )
        except Exception as exc:
            h.add(op="recv", agent=name, ok=False, error=_err(exc))
            await asyncio.sleep(0.2)
            continue
        m = reply.message
        if m is None:
            continue
        crash = m.event.agent if isinstance(m.event, ContainerCrash) else None
        h.add(
            op="recv",
            agent=name,
            ok=True,
            id=m.id,
            sender=m.sender,
            body=m.body,
            redelivered=m.redelivered,
            crash=crash,
        )
        try:
            await rpc.request(
                nc, subjects.agent(name, "ack"), AckRequest(id=m.id), Ok, timeout=REQUEST_TIMEOUT_S
            )
        except Exception as exc:
            h.add(op="ack", agent=name, id=m.id, ok=False, error=_err(exc))
            continue
        h.add(op="ack", agent=name, id=m.id, ok=True)


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:120]}"


# --- the nemesis ----------------------------------------------------------------------


def schedule(rng: random.Random, count: int, agents: list[str]) -> list[tuple[str, str]]:
    """``count`` faults ``(target, how)``: every target in a seeded order, over
    and over, each hit by a seeded SIGKILL or SIGSTOP; two agent crashes
    placed at seeded positions."""
    plan: list[tuple[str, str]] = []
    while len(plan) < count:
        order = list(TARGETS)
        rng.shuffle(order)
        plan += [(t, rng.choice(["kill", "stop"])) for t in order]
    plan = plan[:count]
    for _ in range(2):
        plan.insert(rng.randrange(len(plan) + 1), (f"agent:{rng.choice(agents)}", "crash"))
    return plan


async def nemesis(
    hive: Hive,
    plan: list[tuple[str, str]],
    rng: random.Random,
    h: History,
    deadline: float,
    crashes: list[str],
) -> list[dict[str, Any]]:
    faults: list[dict[str, Any]] = []
    for target, how in plan:
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(rng.uniform(1.0, 3.0))
        fault: dict[str, Any] = {"target": target, "how": how}
        if how == "crash":
            name = target.split(":", 1)[1]
            pid = hive.harness_pid(name)
            if pid is None:
                continue
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            crashes.append(name)
            log(f"nemesis: crashed agent {name} (pid {pid})")
            h.add(op="fault", target=target, how=how, pid=pid)
            # bring it back once the manager was told (or lifecycle shows it down)
            t0 = time.monotonic()
            while time.monotonic() - t0 < HEAL_LIMIT_S:
                if await hive.agent_state(name) in ("failed", "stopped"):
                    break
                await asyncio.sleep(0.3)
            await asyncio.sleep(1.0)
            started = await hive.acli("start", name)
            fault["restart"] = started.returncode == 0
        else:
            pid = hive.pid_of(target)
            if pid is None:
                fault["skipped"] = "no process"
                faults.append(fault)
                continue
            fault["pid"] = pid
            h.add(op="fault", target=target, how=how, pid=pid)
            if how == "kill":
                log(f"nemesis: SIGKILL {target} (pid {pid})")
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            else:
                pause = rng.uniform(2.0, 5.0)
                fault["paused_s"] = round(pause, 2)
                log(f"nemesis: SIGSTOP {target} (pid {pid}) for {pause:.1f}s")
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGSTOP)
                await asyncio.sleep(pause)
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGCONT)
        await asyncio.sleep(0.5)  # let the supervisor notice before we ask
        healed = await hive.wait_healthy(HEAL_LIMIT_S)
        fault["heal_s"] = None if healed is None else round(healed + 0.5, 2)
        # healed means usable: lifecycle's registry (its PostgreSQL pool)
        # answers the first call, no service restart needed
        listed = await hive.acli("agents", "--json")
        fault["first_call_ok"] = listed.returncode == 0
        if listed.returncode != 0:
            fault["first_call_error"] = listed.stderr.strip()[-300:]
            log(f"nemesis: first call after healing failed: {fault['first_call_error']}")
        h.add(op="healed", target=target, s=fault["heal_s"])
        log(f"nemesis: {target} healed in {fault['heal_s']}s")
        faults.append(fault)
    return faults


# --- the checker ----------------------------------------------------------------------


def check(
    h: History,
    final: dict[str, list[dict[str, Any]]],
    crashes: list[str],
    agents: list[str],
) -> dict[str, Any]:
    answered: dict[str, set[int]] = defaultdict(set)  # key -> ids
    recipient: dict[str, str] = {}
    for op in h.ops:
        if op["op"] == "send":
            recipient[op["key"]] = op["to"]
            if op["ok"]:
                answered[op["key"]].add(op["id"])
    received: dict[int, set[tuple[str, str, str]]] = defaultdict(set)
    key_ids: dict[str, set[int]] = defaultdict(set)
    crash_reports: dict[str, set[int]] = defaultdict(set)
    acked: set[int] = set()
    acked_redelivered = 0
    for op in h.ops:
        if op["op"] == "recv" and op["ok"]:
            if op["id"] in acked:
                acked_redelivered += 1
            received[op["id"]].add((op["agent"], op["sender"], op["body"]))
            if op["body"].startswith("m "):
                key_ids[op["body"][2:]].add(op["id"])
            if op["agent"] == MANAGER and op.get("crash"):
                crash_reports[op["crash"]].add(op["id"])
        elif op["op"] == "ack" and op["ok"]:
            acked.add(op["id"])
    # the broker's own record: one key stored twice is a duplicate even if
    # only one of them was received
    for agent in agents:
        for m in final.get(agent, []):
            if m["recipient"] == agent and m["body"].startswith("m "):
                key_ids[m["body"][2:]].add(m["id"])
    dup_answers = [k for k, ids in answered.items() if len(ids) > 1]
    dup_stored = [k for k, ids in key_ids.items() if len(ids) > 1]
    dup_ids = [i for i, seen in received.items() if len(seen) > 1]
    lost = []
    for key, ids in answered.items():
        for i in ids:
            if not any(who == recipient[key] for who, _, _ in received.get(i, ())):
                lost.append(key)
    final_acked = {
        m["id"]
        for agent in (*agents, MANAGER)
        for m in final.get(agent, [])
        if m.get("acked_at") is not None
    }
    final_ids = {m["id"] for agent in (*agents, MANAGER) for m in final.get(agent, [])}
    acked_lost = sorted(i for i in acked if i not in final_ids or i not in final_acked)
    expected = Counter(crashes)
    reported = Counter({a: len(ids) for a, ids in crash_reports.items()})
    crash_missed = sum(max(0, expected[a] - reported[a]) for a in expected)
    crash_dup = sum(max(0, reported[a] - expected[a]) for a in reported)
    sends = [op for op in h.ops if op["op"] == "send"]
    return {
        "sends": len(answered),
        "send_attempts": len(sends),
        "send_errors": sum(1 for op in sends if not op["ok"]),
        "recvs": sum(1 for op in h.ops if op["op"] == "recv" and op["ok"]),
        "acks": len(acked),
        "redelivered": sum(1 for op in h.ops if op["op"] == "recv" and op.get("redelivered")),
        "lost": len(lost),
        "duplicated": len(dup_answers) + len(dup_stored) + len(dup_ids),
        "acked_lost": len(acked_lost),
        "acked_redelivered": acked_redelivered,
        "crashes": len(crashes),
        "crash_reports": sum(reported.values()),
        "crash_missed": crash_missed,
        "crash_duplicated": crash_dup,
        "_examples": {
            "lost": lost[:5],
            "dup_answers": dup_answers[:5],
            "dup_stored": dup_stored[:5],
            "dup_ids": dup_ids[:5],
            "acked_lost": acked_lost[:5],
        },
    }


# --- the run --------------------------------------------------------------------------


async def run(args: argparse.Namespace, result: dict[str, Any], hive: Hive) -> None:
    rng = random.Random(args.seed)
    agents = [f"f{i}" for i in range(1, args.agents + 1)]
    hive.start()
    if await hive.wait_healthy(120) is None:
        raise RuntimeError(f"hive never healthy: {hive.output()[-2000:]}")
    await hive.wait_agent(MANAGER)
    for name in agents:
        done = await hive.acli("spawn", name, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"spawn {name}: {done.stderr.strip()}")
    for name in (*agents, MANAGER):
        await hive.wait_agent(name)
    log(f"hive up with agents {agents}; nemesis for {args.duration:g}s")

    h = History()
    stop_send, stop_recv = asyncio.Event(), asyncio.Event()
    conns = {name: await agent_nc(hive, name) for name in (*agents, MANAGER)}
    tasks = [
        asyncio.create_task(
            sender(
                conns[n],
                n,
                [p for p in agents if p != n],
                random.Random(f"{args.seed}-{n}"),
                h,
                stop_send,
            )
        )
        for n in agents
    ]
    tasks += [asyncio.create_task(consumer(conns[n], n, h, stop_recv)) for n in conns]
    crashes: list[str] = []
    plan = schedule(rng, args.faults, agents)
    result["plan"] = [f"{how} {target}" for target, how in plan]
    try:
        faults = await nemesis(hive, plan, rng, h, time.monotonic() + args.duration, crashes)
        stop_send.set()
        await asyncio.wait(tasks[: len(agents)], timeout=SEND_ATTEMPTS * 2)
        # drain: every answered send (and every crash report) received
        t0 = time.monotonic()
        while time.monotonic() - t0 < DRAIN_S:
            interim = check(h, {}, crashes, agents)
            if interim["lost"] == 0 and interim["crash_missed"] == 0:
                break
            await asyncio.sleep(1.0)
        await asyncio.sleep(2.0)  # a last redelivery or duplicate shows up
    finally:
        stop_send.set()
        stop_recv.set()
        await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT_S * 3)
        for nc in conns.values():
            with contextlib.suppress(Exception):
                await nc.close()
    final = {name: await hive.history(name) for name in (*agents, MANAGER)}
    verdict = check(h, final, crashes, agents)
    healthy = await hive.healthy()
    heals = [f["heal_s"] for f in faults if "heal_s" in f]
    result.update(
        ops=len([op for op in h.ops if op["op"] in ("send", "recv", "ack")]),
        faults=len([f for f in faults if "skipped" not in f]),
        fault_kinds=dict(Counter(f"{f['how']} {f['target'].split(':')[0]}" for f in faults)),
        **{k: v for k, v in verdict.items() if not k.startswith("_")},
        unhealed=sum(1 for s in heals if s is None),
        first_call_errors=sum(1 for f in faults if f.get("first_call_ok") is False),
        first_call_errors_after=[
            f"{f['how']} {f['target']}" for f in faults if f.get("first_call_ok") is False
        ],
        max_heal_s=max((s for s in heals if s is not None), default=None),
        healthy=healthy,
        restarts=_restart_lines(hive.output()),
    )
    result["_examples"] = verdict["_examples"]
    if args.history:
        lines = "\n".join(json.dumps(op) for op in h.ops) + "\n"
        await asyncio.to_thread(Path(args.history).write_text, lines)


def _restart_lines(out: str) -> int:
    lines = out.splitlines()
    return sum(1 for line in lines if line.startswith("hive up: ") and "restarted" in line)


def main() -> int:
    # the consumers' reconnect warnings are expected here; the history has them
    logging.getLogger("hyperhive.common.natsconn").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration", type=float, default=150.0, help="seconds of faults (at most)")
    parser.add_argument("--faults", type=int, default=12, help="at most this many (plus 2 crashes)")
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--history", help="write the client history here (JSON lines)")
    parser.add_argument("--keep", action="store_true", help="keep HIVE_HOME (printed)")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="hive-faults-"))
    os.chmod(root, 0o711)  # the unprivileged PostgreSQL user must reach it
    home = root / "home"
    hive = Hive(home=home, env=make_env(home), nats_port=free_port())
    result: dict[str, Any] = {"seed": args.seed, "duration_s": args.duration}
    t0 = time.monotonic()
    try:
        asyncio.run(run(args, result, hive))
    except Exception as exc:
        traceback.print_exc()
        result["error"] = _err(exc)
    finally:
        code = hive.stop()
        result["up_exit"] = code
        result["wall_s"] = round(time.monotonic() - t0, 1)
        if args.keep:
            result["home"] = str(home)
        else:
            shutil.rmtree(root, ignore_errors=True)
    examples = result.pop("_examples", None)
    plan = result.pop("plan", None)
    if examples and any(examples.values()):
        log(f"examples: {json.dumps(examples)}")
    if plan:
        log(f"plan: {plan}")
    result["ok"] = (
        "error" not in result
        and result.get("lost") == 0
        and result.get("duplicated") == 0
        and result.get("acked_lost") == 0
        and result.get("crash_missed") == 0
        and result.get("crash_duplicated") == 0
        and result.get("unhealed") == 0
        and result.get("first_call_errors") == 0
        and bool(result.get("healthy"))
    )
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
