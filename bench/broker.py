"""Broker benchmark: latency, durable throughput, scaling, history and memory, in one run.

Starts its own NATS and PostgreSQL (hyperhive.cli.embedded), the broker as
child processes (``hive serve broker``, so their memory can be read) and a
raw nats-py echo responder as a child process too (the baseline the broker's
figures are divided by), then measures:

  (a) the raw nats-py request/reply round trip (p50/p99) and the raw
      throughput with ``--senders`` requests in flight; a one-row
      INSERT+commit on the same Postgres (p50/p99);
  (b) send → the recipient's waiting ``recv`` returning, p50/p99, and its
      ratio to (raw request/reply p50 + INSERT+commit p50); then the same
      across nodes (b'): the recipient placed on node ``node1`` (the
      registry says so) and running in a process of its own with its own
      connection, the sender on ``node2``. With the direct-to-hub bus
      (docs/multihost.md) an agent on another node takes the same NATS path
      as one on the hub, so (b') next to (b) is what placement adds: a
      separate process and connection, nothing on the wire;
  (c) durable sends: 32 concurrent senders to 32 agents, each send committed
      before its reply, and its ratio to the raw throughput of (a); then end
      to end, the same senders while the agents recv and ack, counted once
      acked, and its ratio to (c): (c') with a recv and an ack request per
      message, (c'') with each recv acking the message before (the target's
      figure);
  (e) with ``--brokers 1,2,4``: durable throughput per number of broker
      instances (one NATS queue group);
  (f) with 1,000,000 messages of history seeded with COPY (``--history``):
      (b) and (c) again, and their ratios to the empty-store figures;
  (d) the broker's idle RSS (before any load), its peak resident memory
      (VmHWM, and RSS sampled during the load), and its RSS after it.

Beside the raw and durable throughputs of (a) and (c) it prints the CPU each
part spent per message (``*_cpu_us_per_msg``: broker, PostgreSQL, nats-server,
this bench's clients, the echo responder, the whole machine). When every core
is busy, a throughput ratio is the inverse ratio of those machine figures.

Every target of issue 17 is a ratio measured in the same run: ``ratios``
holds them, ``targets`` the limits and ``targets_met`` the verdicts. The
memory of every service and of a harness, idle: ``bench/memory.py`` (run by
``bench/dashboard.py`` too).

Agents use their own NATS credentials, as in production. The agent registry
(lifecycle ``list``/``get``) is answered by a small responder here: starting
64 harnesses is not what this measures.

Usage: python bench/broker.py [--messages 2000] [--seconds 10] [--senders 32]
                              [--brokers 1,2,4] [--history 1000000] [--py-spy FILE]
The last line printed is always one JSON object with every figure measured
(and an ``error`` key if a phase failed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import psutil
from nats.aio.client import Client as NATS

from hyperhive.cli.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from hyperhive.common import nats_auth, rpc, subjects
from hyperhive.common.config import NatsSettings, load_settings, settings_env
from hyperhive.common.natsconn import connect
from hyperhive.common.rpc import Call, Responder
from hyperhive.common.wire.base import Ok, Ping, Pong
from hyperhive.common.wire.broker import (
    AckRequest,
    RecvReply,
    RecvRequest,
    SendReply,
    SendRequest,
)
from hyperhive.common.wire.lifecycle import AgentInfo, AgentRequest, AgentsReply, AgentsRequest

# issue 17: each target is a ratio of two figures of the same run (memory aside)
TARGETS = {
    # send -> waiting recv / (raw request/reply p50 + INSERT+commit p50)
    "send_recv_p50_vs_rr_plus_commit": ("<=", 2.5),
    "send_recv_p99_vs_rr_plus_commit": ("<=", 4.0),
    # durable sends / raw request/reply throughput, same requests in flight
    "throughput_vs_raw_rr": (">=", 0.5),
    # end to end (sent, received, acked) / durable sends
    "e2e_vs_throughput": (">=", 0.8),
    # with 1M messages of history / with an empty store
    "history_send_recv_p50_vs_empty": ("<=", 1.2),
    "history_throughput_vs_empty": (">=", 1 / 1.2),
    "broker_idle_rss_mb": ("<=", 80.0),
}


def targets_met(result: dict[str, object]) -> dict[str, bool | None]:
    """Each target: met, missed, or None when its figure was not measured."""
    ratios = result.get("ratios")
    ratios = ratios if isinstance(ratios, dict) else {}
    out: dict[str, bool | None] = {}
    for key, (op, limit) in TARGETS.items():
        value = ratios.get(key, result.get(key))
        if not isinstance(value, int | float):
            out[key] = None
        else:
            out[key] = value <= limit if op == "<=" else value >= limit
    return out


def ratio(num: object, den: object) -> float | None:
    """``num / den`` rounded, or None when either was not measured."""
    if not isinstance(num, int | float) or not isinstance(den, int | float) or den == 0:
        return None
    return round(num / den, 3)


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident set (VmHWM) so far, in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    except (OSError, ValueError, IndexError):
        pass
    return None


class RssSampler:
    """Samples a process's RSS in a thread; ``peak_mb`` is the highest seen."""

    def __init__(self, proc: psutil.Process, interval_s: float = 0.05) -> None:
        self._proc = proc
        self._interval = interval_s
        self._stop = threading.Event()
        self.peak_mb = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_mb = max(self.peak_mb, self._proc.memory_info().rss / 1e6)
            except psutil.Error:
                return
            self._stop.wait(self._interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class Stack:
    """NATS + Postgres + broker processes + a raw echo responder, all private to this run."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.nats = EmbeddedNats(root / "nats", free_port())
        pg_root = root / "pg"
        pg_root.mkdir()
        os.chmod(root, 0o711)
        os.chmod(pg_root, 0o711)
        self.pg = EmbeddedPostgres(pg_root / "data", free_port())
        self.brokers: list[subprocess.Popen[bytes]] = []
        self.echo: subprocess.Popen[bytes] | None = None
        self.seeds: dict[str, Path] = {}

    def start(self, agents: list[str]) -> None:
        self.nats.start()
        self.pg.start()
        for name in agents:
            seed = nats_auth.new_seed()
            path = self.nats.root / "agents" / f"{name}.seed"
            nats_auth.write_seed(path, seed)
            nats_auth.put_user(
                self.nats.root,
                nats_auth.NatsUser(
                    name=f"agent-{name}",
                    nkey=nats_auth.public_key(seed),
                    permissions=nats_auth.agent_permissions(name),
                ),
            )
            self.seeds[name] = path
        nats_auth.render_auth_file(self.nats.root, self.nats.auth_file)
        assert self.nats.proc is not None
        self.nats.proc.send_signal(1)  # SIGHUP: reload users

    def settings_env(self) -> dict[str, str]:
        settings = load_settings(
            {
                "HIVE_HOME": str(self.root / "home"),
                "HIVE_NATS_URL": self.nats.url,
                "HIVE_NATS_SEED_FILE": str(self.nats.service_seed),
                "HIVE_DATABASE_URL": self.pg.url,
                "HIVE_LOG_LEVEL": "WARNING",
            },
            config_file=None,
        )
        return settings_env(settings)

    def start_brokers(self, count: int, profile: str | None = None) -> None:
        """Starts ``count`` broker instances (after stopping any running)."""
        self.stop_brokers()
        env = dict(os.environ)
        env.update(self.settings_env())
        for i in range(count):
            log = open(self.root / f"broker-{i}.log", "ab")
            prefix = ["-m", "cProfile", "-o", profile] if profile and i == 0 else []
            self.brokers.append(
                subprocess.Popen(
                    [sys.executable, *prefix, "-m", "hyperhive.cli.main", "serve", "broker"],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            log.close()

    def stop_brokers(self) -> None:
        for proc in self.brokers:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.brokers:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.brokers = []

    def start_echo(self) -> None:
        """The raw nats-py responder (``--echo``) in a process of its own, as the broker is."""
        self.echo = subprocess.Popen(
            [sys.executable, __file__, "--echo", self.nats.url, str(self.nats.service_seed)],
            stdout=subprocess.PIPE,
        )
        assert self.echo.stdout is not None
        line = self.echo.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"echo responder did not start: {line!r}")

    def stop(self) -> None:
        self.stop_brokers()
        if self.echo is not None and self.echo.poll() is None:
            self.echo.kill()
            self.echo.wait(5)
        self.nats.stop()
        self.pg.stop()


ECHO_VERB = "echo"


async def echo_main(url: str, seed: str) -> None:
    """``--echo``: answers ``hive.agent.*.echo`` with the request's payload, until killed."""
    nc = await connect(NatsSettings(url=url, seed_file=seed), name="bench-echo")

    async def echo(msg) -> None:  # type: ignore[no-untyped-def]
        await msg.respond(msg.data)

    await nc.subscribe(subjects.agent_wildcard(ECHO_VERB), cb=echo)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()


async def wait_brokers(nc: NATS, count: int = 1, timeout: float = 60) -> list[int]:
    """Until ``count`` broker instances answer ping (distinct pids); returns the pids."""
    deadline = time.monotonic() + timeout
    pids: set[int] = set()
    while True:
        try:
            pong = await rpc.request(nc, subjects.admin("broker", "ping"), Ping(), Pong, timeout=1)
            pids.add(pong.pid)
            if len(pids) >= count:
                return sorted(pids)
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pids)} of {count} broker instances answered")


# (b'): where the registry says the cross-node pair runs (every other agent: the hub)
PLACED = {"s1": "node2", "r1": "node1"}


async def serve_registry(nc: NATS, names: list[str]) -> Responder:
    """Answers lifecycle list/get for the bench's agents (with their node)."""
    responder = Responder(nc, queue="bench-lifecycle")

    def info(name: str) -> AgentInfo:
        node = PLACED.get(name, subjects.HUB_NODE)
        return AgentInfo(name=name, kind="agent", state="running", port=0, node=node)

    async def list_(_req: AgentsRequest, _call: Call) -> AgentsReply:
        return AgentsReply(agents=[info(n) for n in names])

    async def get(req: AgentRequest, _call: Call) -> AgentInfo:
        return info(req.name)

    await responder.serve_subject(subjects.system("lifecycle", "list"), AgentsRequest, list_)
    await responder.serve_subject(subjects.system("lifecycle", "get"), AgentRequest, get)
    return responder


PAYLOAD = b'{"to":"x","body":"' + b"y" * 64 + b'"}'


async def raw_rtt(client: NATS, client_name: str, count: int) -> list[float]:
    """(a): plain nats-py request/reply against the echo process.

    The client is an agent connection, so the subject is one it may publish on.
    """
    subject = subjects.agent(client_name, ECHO_VERB)
    out: list[float] = []
    for _ in range(count + 200):
        t0 = time.perf_counter()
        await client.request(subject, PAYLOAD, timeout=5)
        out.append((time.perf_counter() - t0) * 1000)
    return out[200:]  # warm-up


async def raw_throughput(conns: dict[str, NATS], names: list[str], seconds: float) -> float:
    """(a): raw request/reply per second, one request in flight per connection."""
    stop_at = time.monotonic() + seconds
    done = [0]

    async def one(name: str) -> None:
        nc = conns[name]
        subject = subjects.agent(name, ECHO_VERB)
        while time.monotonic() < stop_at:
            await nc.request(subject, PAYLOAD, timeout=5)
            done[0] += 1

    t0 = time.monotonic()
    await asyncio.gather(*(one(n) for n in names))
    return done[0] / max(time.monotonic() - t0, seconds)


async def pg_commit(url: str, count: int) -> list[float]:
    """Baseline: one-row INSERT with a durable commit on the same Postgres."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS public.bench_commit (v text)")
        out: list[float] = []
        for _ in range(count):
            t0 = time.perf_counter()
            await conn.execute("INSERT INTO public.bench_commit (v) VALUES ('x')")
            out.append((time.perf_counter() - t0) * 1000)
        return out
    finally:
        await conn.close()


async def send_to_recv(sender: NATS, s_name: str, receiver: NATS, r_name: str, count: int):
    """(b): time from a send to the recipient's waiting recv returning."""
    send_subj = subjects.agent(s_name, subjects.AGENT_SEND)
    recv_subj = subjects.agent(r_name, subjects.AGENT_RECV)
    ack_subj = subjects.agent(r_name, subjects.AGENT_ACK)
    await drain_inbox(receiver, r_name)  # the agent's inbox starts empty
    out: list[float] = []
    sends: list[float] = []
    for i in range(count + 200):
        waiting = asyncio.ensure_future(
            rpc.request(receiver, recv_subj, RecvRequest(wait_ms=10_000), RecvReply, timeout=15)
        )
        await asyncio.sleep(0.002)  # let the recv reach the broker and wait
        t0 = time.perf_counter()
        await rpc.request(sender, send_subj, SendRequest(to=r_name, body=f"m{i}"), SendReply)
        sends.append((time.perf_counter() - t0) * 1000)
        reply = await waiting
        out.append((time.perf_counter() - t0) * 1000)
        assert reply.message is not None and reply.message.body == f"m{i}", reply
        await rpc.request(receiver, ack_subj, AckRequest(id=reply.message.id), Ok)
    return out[200:], sends[200:]


READY_VERB = "bench_ready"  # the node's recipient: "my recv is on its way"


async def node_recv_main(url: str, seed: str, name: str, count: int) -> None:
    """``--node-recv``: agent ``name`` on another node (this process). Takes
    ``count`` messages with waiting recvs; each body carries the send's start
    (CLOCK_MONOTONIC, one clock for every process of the machine). Prints the
    send -> recv latencies (ms) as one JSON list."""
    nc = await connect(
        NatsSettings(url=url, seed_file=seed),
        name=f"bench-node-{name}",
        inbox_prefix=subjects.inbox_prefix(name),
    )
    recv_subj = subjects.agent(name, subjects.AGENT_RECV)
    ack_subj = subjects.agent(name, subjects.AGENT_ACK)
    await drain_inbox(nc, name)
    out: list[float] = []
    for _ in range(count):
        waiting = asyncio.ensure_future(
            rpc.request(nc, recv_subj, RecvRequest(wait_ms=10_000), RecvReply, timeout=15)
        )
        await asyncio.sleep(0.002)  # let the recv reach the broker and wait, as in (b)
        await nc.publish(subjects.agent(name, READY_VERB), b"")
        reply = await waiting
        now = time.clock_gettime(time.CLOCK_MONOTONIC)
        assert reply.message is not None, reply
        out.append((now - float(reply.message.body.split()[1])) * 1000)
        await rpc.request(nc, ack_subj, AckRequest(id=reply.message.id), Ok)
    print(json.dumps(out), flush=True)
    await nc.close()


async def send_to_recv_across_nodes(
    stack: Stack, service: NATS, sender: NATS, s_name: str, r_name: str, count: int
) -> list[float]:
    """(b'): (b) with the recipient on another node: its own process and connection."""
    ready: asyncio.Queue[None] = asyncio.Queue()

    async def on_ready(_msg) -> None:  # type: ignore[no-untyped-def]
        ready.put_nowait(None)

    sub = await service.subscribe(subjects.agent(r_name, READY_VERB), cb=on_ready)
    await service.flush()
    total = count + 200
    argv = [sys.executable, __file__, "--node-recv", stack.nats.url]
    node = await asyncio.create_subprocess_exec(
        *argv, str(stack.seeds[r_name]), r_name, str(total), stdout=asyncio.subprocess.PIPE
    )
    try:
        send_subj = subjects.agent(s_name, subjects.AGENT_SEND)
        for i in range(total):
            await asyncio.wait_for(ready.get(), 30)
            t0 = time.clock_gettime(time.CLOCK_MONOTONIC)
            body = f"m{i} {t0!r}"
            await rpc.request(sender, send_subj, SendRequest(to=r_name, body=body), SendReply)
        out, _ = await asyncio.wait_for(node.communicate(), 60)
    finally:
        await sub.unsubscribe()
        if node.returncode is None:
            node.kill()
            await node.wait()
    return json.loads(out.decode().strip().splitlines()[-1])[200:]


async def throughput(
    conns: dict[str, NATS],
    pairs: list[tuple[str, str]],
    seconds: float,
    *,
    receive: bool,
    combined: bool = False,
):
    """(c) one sender per pair; (c') with ``receive``, a receiver (recv + ack) too,
    and with ``combined`` each recv acks the message before (``RecvRequest.ack``).

    Returns (acked/s, sent/s, acked, sent, errors): a message counts in the
    acked rate once its recipient acked it inside the window.
    """
    stop_at = time.monotonic() + seconds
    sent = [0] * len(pairs)
    acked = [0] * len(pairs)
    errors = [0]

    async def sender(i: int, s_name: str, r_name: str) -> None:
        nc = conns[s_name]
        subj = subjects.agent(s_name, subjects.AGENT_SEND)
        while time.monotonic() < stop_at:
            try:
                await rpc.request(nc, subj, SendRequest(to=r_name, body=f"t{sent[i]}"), SendReply)
                sent[i] += 1
            except Exception:
                errors[0] += 1

    async def receiver(i: int, r_name: str) -> None:
        nc = conns[r_name]
        recv_subj = subjects.agent(r_name, subjects.AGENT_RECV)
        ack_subj = subjects.agent(r_name, subjects.AGENT_ACK)
        to_ack: int | None = None  # combined: acked by the next recv
        while True:
            left_ms = int((stop_at - time.monotonic()) * 1000)
            if left_ms <= 0:
                break
            try:
                wait_ms = min(left_ms, 1000)
                req = (
                    RecvRequest(wait_ms=wait_ms, ack=to_ack)
                    if to_ack
                    else RecvRequest(wait_ms=wait_ms)
                )
                reply = await rpc.request(nc, recv_subj, req, RecvReply)
                if to_ack is not None:
                    to_ack = None
                    acked[i] += 1
                if reply.message is None:
                    continue
                if combined:
                    to_ack = reply.message.id
                    continue
                await rpc.request(nc, ack_subj, AckRequest(id=reply.message.id), Ok)
            except Exception:
                errors[0] += 1
                continue
            if time.monotonic() < stop_at:
                acked[i] += 1
        if to_ack is not None:
            await rpc.request(nc, ack_subj, AckRequest(id=to_ack), Ok)

    t0 = time.monotonic()
    receivers = [receiver(i, r) for i, (_s, r) in enumerate(pairs)] if receive else []
    await asyncio.gather(*(sender(i, s, r) for i, (s, r) in enumerate(pairs)), *receivers)
    elapsed = max(time.monotonic() - t0, seconds)
    return sum(acked) / elapsed, sum(sent) / elapsed, sum(acked), sum(sent), errors[0]


async def drain_inboxes(conns: dict[str, NATS], names: list[str]) -> int:
    """Acks everything pending for ``names`` (so that a phase starts from empty inboxes)."""
    return sum(await asyncio.gather(*(drain_inbox(conns[n], n) for n in names)))


async def drain_inbox(nc: NATS, name: str) -> int:
    """Receives and acks every message waiting for agent ``name``; how many."""
    recv_subj = subjects.agent(name, subjects.AGENT_RECV)
    ack_subj = subjects.agent(name, subjects.AGENT_ACK)
    count = 0
    while True:
        reply = await rpc.request(nc, recv_subj, RecvRequest(wait_ms=0), RecvReply)
        if reply.message is None:
            return count
        await rpc.request(nc, ack_subj, AckRequest(id=reply.message.id), Ok)
        count += 1


class CpuMeter:
    """CPU seconds of each part of the run (broker, Postgres, NATS, the bench's
    clients, the raw echo responder) and of the whole machine, between two reads.

    On a machine whose cores are all busy, throughput is set by the CPU every
    part spends per message, not by any one part: this shows where it goes.
    """

    def __init__(self, stack: Stack) -> None:
        self._stack = stack

    def _groups(self) -> dict[str, list[psutil.Process]]:
        groups: dict[str, list[psutil.Process]] = {
            "broker": [psutil.Process(p.pid) for p in self._stack.brokers],
            "bench_clients": [psutil.Process()],
        }
        if self._stack.nats.proc is not None:
            groups["nats_server"] = [psutil.Process(self._stack.nats.proc.pid)]
        if self._stack.echo is not None:
            groups["echo"] = [psutil.Process(self._stack.echo.pid)]
        with contextlib.suppress(OSError, ValueError, psutil.Error):
            pid = int((self._stack.pg.data_dir / "postmaster.pid").read_text().split()[0])
            master = psutil.Process(pid)
            groups["postgres"] = [master, *master.children()]
        return groups

    def read(self) -> dict[str, float]:
        """CPU seconds so far per part; ``machine``: busy seconds of all cores."""
        out = {name: cpu_s(procs) for name, procs in self._groups().items()}
        t = psutil.cpu_times()
        out["machine"] = (
            t.user + t.system + t.nice + getattr(t, "softirq", 0.0) + getattr(t, "irq", 0.0)
        )
        return out

    @staticmethod
    def per_message(
        before: dict[str, float], after: dict[str, float], count: int
    ) -> dict[str, int]:
        """Microseconds of CPU per message for each part between two reads.

        Parts whose processes came and went between the reads (Postgres
        backends) count only while they lived: a floor, not an exact figure.
        """
        return {
            k: round(max(after[k] - before.get(k, 0.0), 0.0) / max(count, 1) * 1e6) for k in after
        }


def cpu_s(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def py_spy(pid: int, seconds: float, out: str) -> subprocess.Popen[bytes] | None:
    """Samples the broker with py-spy (raw collapsed stacks) for ``seconds``."""
    exe = shutil.which("py-spy")
    if exe is None:
        print("py-spy not found: no profile", file=sys.stderr)
        return None
    return subprocess.Popen(
        [
            *(exe, "record", "--pid", str(pid), "--duration", str(int(seconds))),
            *("--rate", "200", "--format", "raw", "--output", out, "--nonblocking"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


SEED_COLUMNS = [
    "sender",
    "recipient",
    "body",
    "created_at",
    "delivered_at",
    "deliveries",
    "acked_at",
]


async def seed_history(url: str, count: int, names: list[str]) -> float:
    """Adds ``count`` acked messages of history between ``names`` with COPY.

    They are older than anything the bench sent (a month back, one a second
    per agent pair) and acked, as a hive's history is. Returns seconds taken.
    """
    t0 = time.monotonic()
    start = time.time() - 30 * 86400
    body = "x" * 120

    async def chunks():
        step = 50_000
        for base in range(0, count, step):
            lines = []
            for i in range(base, min(base + step, count)):
                ts = datetime.fromtimestamp(start + i * 0.001, UTC).isoformat()
                lines.append(
                    f"{names[i % len(names)]}\t{names[(i * 7 + 3) % len(names)]}\t{body} {i}\t"
                    f"{ts}\t{ts}\t1\t{ts}\n"
                )
            yield "".join(lines).encode()

    conn = await asyncpg.connect(url)
    try:
        await conn.copy_to_table(
            "messages", schema_name="broker", source=chunks(), columns=SEED_COLUMNS
        )
        # the steady state of a long history, not a bulk load being written
        # out: vacuumed and analyzed (as autovacuum would soon), and flushed
        # (else the checkpoint that 1M new rows trigger runs during (f))
        await conn.execute("VACUUM ANALYZE broker.messages")
        await conn.execute("CHECKPOINT")
        total = await conn.fetchval("SELECT count(*) FROM broker.messages")
    finally:
        await conn.close()
    took = time.monotonic() - t0
    print(f"(f) seeded {count:,} messages of history with COPY in {took:.1f}s ({total:,} rows)")
    return took


async def main() -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=2000, help="latency samples")
    parser.add_argument("--seconds", type=float, default=10.0, help="per throughput run")
    parser.add_argument("--senders", type=int, default=32)
    parser.add_argument(
        "--brokers", default="1", help="instance counts for (e), e.g. 1,2,4 (default: 1, no e)"
    )
    parser.add_argument(
        "--history", type=int, default=1_000_000, help="rows seeded for (f); 0: no (f)"
    )
    parser.add_argument("--only", choices=["latency", "throughput"], help="run one part")
    parser.add_argument("--profile", help="run the broker under cProfile, stats to this file")
    parser.add_argument("--py-spy", help="sample the broker during (c)+(c') into this raw file")
    parser.add_argument("--echo", nargs=2, metavar=("URL", "SEED"), help=argparse.SUPPRESS)
    parser.add_argument("--node-recv", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo:
        await echo_main(*args.echo)
        return {}
    if args.node_recv:
        url, seed, name, count = args.node_recv
        await node_recv_main(url, seed, name, int(count))
        return {}
    counts = [int(n) for n in args.brokers.split(",") if n.strip()]

    result: dict[str, object] = {"senders": args.senders}
    ratios: dict[str, float | None] = {}
    errors: list[str] = []

    def failed(phase: str, exc: BaseException) -> None:
        traceback.print_exc()
        errors.append(f"{phase}: {type(exc).__name__}: {exc}")

    senders = [f"s{i}" for i in range(args.senders)]
    receivers = [f"r{i}" for i in range(args.senders)]
    root = Path(tempfile.mkdtemp(prefix="hive-bench-"))
    stack = Stack(root)
    conns: dict[str, NATS] = {}
    service: NATS | None = None
    registry: Responder | None = None
    try:
        try:
            stack.start(senders + receivers)
            stack.start_echo()
            service = await connect(
                NatsSettings(url=stack.nats.url, seed_file=str(stack.nats.service_seed)),
                name="bench",
            )
            registry = await serve_registry(service, senders + receivers)
            stack.start_brokers(1, args.profile)
            await wait_brokers(service)
            proc = psutil.Process(stack.brokers[0].pid)
            for name in senders + receivers:
                conns[name] = await connect(
                    NatsSettings(url=stack.nats.url, connect_attempts=5, connect_backoff_s=0.2),
                    name=f"bench-{name}",
                    seed_file=str(stack.seeds[name]),
                    inbox_prefix=subjects.inbox_prefix(name),
                )
            await asyncio.sleep(1.0)
            idle = proc.memory_info().rss / 1e6
            print(f"(d) broker RSS idle (started, no load yet): {idle:.1f} MB")
            result["broker_idle_rss_mb"] = round(idle, 1)
        except Exception as exc:
            failed("setup", exc)
            return result

        sampler = RssSampler(proc)
        with sampler:
            if args.only in (None, "latency"):
                try:
                    await latency_phase(stack, conns, senders, receivers, args, result)
                    assert service is not None
                    await cross_node_phase(stack, service, conns, args, result)
                except Exception as exc:
                    failed("latency", exc)
            if args.only in (None, "throughput"):
                try:
                    await raw_throughput_phase(conns, senders, args, result, CpuMeter(stack))
                    spy = None
                    if args.py_spy:
                        spy = py_spy(proc.pid, 2 * args.seconds + 1, args.py_spy)
                    await throughput_phase(
                        [proc], conns, senders, receivers, args, result, meter=CpuMeter(stack)
                    )
                    if spy is not None:
                        spy.wait(30)
                        print(f"    py-spy profile of (c)+(c') in {args.py_spy}")
                except Exception as exc:
                    failed("throughput", exc)
        try:
            rss_mb = proc.memory_info().rss / 1e6
            hwm = peak_rss_mb(proc.pid)
            peak = max(hwm or 0.0, sampler.peak_mb)
            print(
                f"(d) broker RSS: peak {peak:.1f} MB (VmHWM {hwm or 0:.1f} MB, "
                f"sampled {sampler.peak_mb:.1f} MB), after the load {rss_mb:.1f} MB"
            )
            result.update(
                broker_peak_rss_mb=round(peak, 1),
                broker_rss_mb=round(rss_mb, 1),
                broker_vmhwm_mb=None if hwm is None else round(hwm, 1),
                broker_sampled_peak_rss_mb=round(sampler.peak_mb, 1),
            )
        except Exception as exc:
            failed("memory", exc)

        if args.history > 0 and args.only is None:
            try:
                await history_phase(stack, conns, senders, receivers, args, result)
            except Exception as exc:
                failed("history", exc)

        if counts != [1] and args.only in (None, "throughput"):
            try:
                await brokers_phase(stack, service, conns, senders, receivers, args, counts, result)
            except Exception as exc:
                failed("brokers", exc)
        return result
    finally:
        for nc in conns.values():
            with contextlib.suppress(Exception):
                await nc.close()
        if registry is not None:
            with contextlib.suppress(Exception):
                await registry.stop(1.0)
        if service is not None:
            with contextlib.suppress(Exception):
                await service.close()
        try:
            stack.stop()  # a clean stop: the profile (if any) is written
        except Exception as exc:
            failed("stop", exc)
        shutil.rmtree(root, ignore_errors=True)
        if not args.echo and not args.node_recv:
            finish(result, ratios)
            if errors:
                result["error"] = "; ".join(errors)


def finish(result: dict[str, object], ratios: dict[str, float | None]) -> None:
    """The issue's ratios, each next to the figures it divides, and the verdicts."""
    base = None
    if isinstance(result.get("rtt_p50_ms"), float) and isinstance(
        result.get("pg_commit_p50_ms"), float
    ):
        base = round(result["rtt_p50_ms"] + result["pg_commit_p50_ms"], 3)  # type: ignore[operator]
    result["rr_plus_commit_p50_ms"] = base
    ratios["send_recv_p50_vs_rr_plus_commit"] = ratio(result.get("send_recv_p50_ms"), base)
    ratios["send_recv_p99_vs_rr_plus_commit"] = ratio(result.get("send_recv_p99_ms"), base)
    ratios["throughput_vs_raw_rr"] = ratio(
        result.get("throughput_msg_s"), result.get("raw_rr_throughput_msg_s")
    )
    ratios["e2e_vs_throughput"] = ratio(
        result.get("e2e_throughput_msg_s"), result.get("throughput_msg_s")
    )
    ratios["e2e_separate_ack_vs_throughput"] = ratio(
        result.get("e2e_separate_ack_throughput_msg_s"), result.get("throughput_msg_s")
    )
    ratios["cross_node_send_recv_p50_vs_same_host"] = ratio(
        result.get("cross_node_send_recv_p50_ms"), result.get("send_recv_p50_ms")
    )
    ratios["cross_node_send_recv_p99_vs_same_host"] = ratio(
        result.get("cross_node_send_recv_p99_ms"), result.get("send_recv_p99_ms")
    )
    ratios["history_send_recv_p50_vs_empty"] = ratio(
        result.get("history_send_recv_p50_ms"), result.get("send_recv_p50_ms")
    )
    ratios["history_throughput_vs_empty"] = ratio(
        result.get("history_throughput_msg_s"), result.get("throughput_msg_s")
    )
    result["ratios"] = ratios
    result["targets"] = {k: f"{op} {limit:.3g}" for k, (op, limit) in TARGETS.items()}
    result["targets_met"] = targets_met(result)


async def latency_phase(
    stack: Stack,
    conns: dict[str, NATS],
    senders: list[str],
    receivers: list[str],
    args: argparse.Namespace,
    result: dict[str, object],
    prefix: str = "",
) -> None:
    """(a) and (b); with ``prefix`` (``history_``) only (b)."""
    if not prefix:
        rtt = await raw_rtt(conns[senders[0]], senders[0], args.messages)
        rtt_p50, rtt_p99 = pct(rtt, 50), pct(rtt, 99)
        print(f"(a) nats-py request/reply RTT: p50 {rtt_p50:.3f} ms, p99 {rtt_p99:.3f} ms")
        result.update(rtt_p50_ms=round(rtt_p50, 3), rtt_p99_ms=round(rtt_p99, 3))
        commit = await pg_commit(stack.pg.url, 1000)
        print(
            f"    baseline Postgres INSERT+commit: p50 {pct(commit, 50):.3f} ms, "
            f"p99 {pct(commit, 99):.3f} ms (a send needs one)"
        )
        result.update(
            pg_commit_p50_ms=round(pct(commit, 50), 3),
            pg_commit_p99_ms=round(pct(commit, 99), 3),
        )
    lat, sends = await send_to_recv(
        conns[senders[0]], senders[0], conns[receivers[0]], receivers[0], args.messages
    )
    lat_p50, lat_p99 = pct(lat, 50), pct(lat, 99)
    base = result["rtt_p50_ms"] + result["pg_commit_p50_ms"]  # type: ignore[operator]
    print(
        f"({'f' if prefix else 'b'}) send -> waiting recv{' (history)' if prefix else ''}: "
        f"p50 {lat_p50:.3f} ms, p99 {lat_p99:.3f} ms, "
        f"mean {statistics.fmean(lat):.3f} ms over {len(lat)} messages"
    )
    print(
        f"    (the send's own reply, committed: p50 {pct(sends, 50):.3f} ms, "
        f"p99 {pct(sends, 99):.3f} ms)"
    )
    print(
        f"    ratio to (raw rr p50 + commit p50 = {base:.3f} ms): "
        f"p50 {lat_p50 / base:.2f}x (<= 2.5), p99 {lat_p99 / base:.2f}x (<= 4)"
    )
    result.update(
        {
            f"{prefix}send_recv_p50_ms": round(lat_p50, 3),
            f"{prefix}send_recv_p99_ms": round(lat_p99, 3),
            f"{prefix}send_reply_p50_ms": round(pct(sends, 50), 3),
            f"{prefix}send_reply_p99_ms": round(pct(sends, 99), 3),
        }
    )
    if not prefix:
        result["messages"] = len(lat)


async def cross_node_phase(
    stack: Stack,
    service: NATS,
    conns: dict[str, NATS],
    args: argparse.Namespace,
    result: dict[str, object],
) -> None:
    """(b'): send -> waiting recv with sender and recipient on different nodes."""
    (s_name, s_node), (r_name, r_node) = PLACED.items()
    lat = await send_to_recv_across_nodes(
        stack, service, conns[s_name], s_name, r_name, args.messages
    )
    p50, p99 = pct(lat, 50), pct(lat, 99)
    print(
        f"(b') send -> waiting recv across nodes ({s_name}@{s_node} -> {r_name}@{r_node}, "
        f"the recipient in its own process): p50 {p50:.3f} ms, p99 {p99:.3f} ms "
        f"(same host, (b): p50 {result.get('send_recv_p50_ms')} ms, "
        f"p99 {result.get('send_recv_p99_ms')} ms)"
    )
    result.update(
        cross_node_send_recv_p50_ms=round(p50, 3),
        cross_node_send_recv_p99_ms=round(p99, 3),
        cross_node_messages=len(lat),
        cross_node_note=(
            "nodes connect to the hub's NATS directly (docs/multihost.md): an agent on "
            "another node takes the same NATS path as one on the hub, so this figure, "
            "beside send_recv_*_ms of the same run, measures placement overhead (the "
            "recipient in a process and connection of its own, the registry placing it "
            "on node1 and the sender on node2), not a network hop"
        ),
    )


async def raw_throughput_phase(
    conns: dict[str, NATS],
    senders: list[str],
    args: argparse.Namespace,
    result: dict[str, object],
    meter: CpuMeter | None = None,
) -> None:
    cpu0 = meter.read() if meter else {}
    rate = await raw_throughput(conns, senders, args.seconds)
    print(f"(a) raw nats-py request/reply: {rate:,.0f} req/s with {len(senders)} in flight")
    result["raw_rr_throughput_msg_s"] = round(rate, 1)
    if meter:
        per = meter.per_message(cpu0, meter.read(), round(rate * args.seconds))
        print(f"    CPU per request, us: {per}")
        result["raw_rr_cpu_us_per_req"] = per


async def throughput_phase(
    procs: list[psutil.Process],
    conns: dict[str, NATS],
    senders: list[str],
    receivers: list[str],
    args: argparse.Namespace,
    result: dict[str, object],
    *,
    prefix: str = "",
    end_to_end: bool = True,
    separate_ack: bool = True,
    meter: CpuMeter | None = None,
) -> None:
    """(c), then (c') and (c'') when ``end_to_end``; with ``meter``, each part's
    CPU per message too."""
    pairs = list(zip(senders, receivers, strict=True))
    runs = [("", False, False)]
    if end_to_end and separate_ack:
        runs.append(("e2e_separate_ack_", True, False))
    if end_to_end and "ack" in RecvRequest.__struct_fields__:  # not in older brokers
        runs.append(("e2e_", True, True))
    for key, receive, combined in runs:
        await drain_inboxes(conns, receivers)
        cpu0 = cpu_s(procs)
        parts0 = meter.read() if meter else {}
        rate, send_rate, acked, sent, errors = await throughput(
            conns, pairs, args.seconds, receive=receive, combined=combined
        )
        b_cpu = (cpu_s(procs) - cpu0) / args.seconds
        per_part = (
            meter.per_message(parts0, meter.read(), acked if receive else sent) if meter else {}
        )
        if receive:
            how = "recv acking the one before" if combined else "recv, then ack"
            label = "c''" if combined else "c'"
            print(
                f"({label}) end to end (sent, committed, received, "
                f"acked; {how}): {rate:,.0f} msg/s ({acked} acked in {args.seconds:g}s; sends "
                f"meanwhile {send_rate:,.0f}/s; {errors} errors)"
            )
            result.update(
                {
                    f"{prefix}{key}throughput_msg_s": round(rate, 1),
                    f"{prefix}{key}send_rate_msg_s": round(send_rate, 1),
                    f"{prefix}{key}acked": acked,
                    f"{prefix}{key}errors": errors,
                    f"{prefix}{key}broker_cpu": round(b_cpu, 2),
                    # less moved by other load than rates are: the broker's own
                    # CPU time per message acked
                    f"{prefix}{key}broker_cpu_us_per_msg": round(b_cpu / max(rate, 1e-9) * 1e6),
                }
            )
        else:
            print(
                f"({'f' if prefix == 'history_' else 'c'}) durable sends: {send_rate:,.0f} msg/s "
                f"({sent} committed in {args.seconds:g}s; {args.senders} senders -> "
                f"{args.senders} agents; {errors} errors)"
            )
            result.update(
                {
                    f"{prefix}throughput_msg_s": round(send_rate, 1),
                    f"{prefix}throughput_sent": sent,
                    f"{prefix}throughput_errors": errors,
                    f"{prefix}throughput_broker_cpu": round(b_cpu, 2),
                    f"{prefix}throughput_broker_cpu_us_per_msg": round(
                        b_cpu / max(send_rate, 1e-9) * 1e6
                    ),
                }
            )
        per = b_cpu / max(rate if receive else send_rate, 1e-9) * 1e6
        print(f"    CPU: broker {b_cpu:.0%} of a core, {per:,.0f} us per message")
        if per_part:
            print(f"    CPU per message of each part, us: {per_part}")
            result[f"{prefix}{key or 'throughput_'}cpu_us_per_msg"] = per_part


async def history_phase(
    stack: Stack,
    conns: dict[str, NATS],
    senders: list[str],
    receivers: list[str],
    args: argparse.Namespace,
    result: dict[str, object],
) -> None:
    """(f): (b) and (c) again with ``--history`` messages already stored."""
    await drain_inboxes(conns, receivers)
    took = await seed_history(stack.pg.url, args.history, senders + receivers)
    result.update(history_rows=args.history, history_seed_s=round(took, 1))
    await latency_phase(stack, conns, senders, receivers, args, result, prefix="history_")
    procs = [psutil.Process(p.pid) for p in stack.brokers]
    await throughput_phase(
        procs, conns, senders, receivers, args, result, prefix="history_", end_to_end=False
    )


async def brokers_phase(
    stack: Stack,
    service: NATS,
    conns: dict[str, NATS],
    senders: list[str],
    receivers: list[str],
    args: argparse.Namespace,
    counts: list[int],
    result: dict[str, object],
) -> None:
    """(e): durable sends and end to end with 1, 2, 4... broker instances."""
    per_count: dict[str, dict[str, object]] = {}
    for n in counts:
        await drain_inboxes(conns, receivers)
        stack.start_brokers(n)
        await wait_brokers(service, n)
        procs = [psutil.Process(p.pid) for p in stack.brokers]
        figures: dict[str, object] = {}
        print(f"(e) {n} broker instance(s):")
        await throughput_phase(procs, conns, senders, receivers, args, figures, separate_ack=False)
        per_count[str(n)] = {
            "throughput_msg_s": figures["throughput_msg_s"],  # type: ignore[dict-item]
            "e2e_throughput_msg_s": figures.get("e2e_throughput_msg_s"),  # type: ignore[dict-item]
            "broker_cpu": figures["throughput_broker_cpu"],  # type: ignore[dict-item]
        }
    result["brokers_throughput"] = per_count


def run() -> int:
    result: dict[str, object] = {}
    try:
        result = asyncio.run(main())
    except SystemExit:  # --help, or a bad argument: argparse has said why
        raise
    except BaseException as exc:  # even Ctrl-C or a crash: the JSON line comes last
        traceback.print_exc()
        result.setdefault("error", f"{type(exc).__name__}: {exc}")
        result.setdefault("targets_met", targets_met(result))
    if "--echo" in sys.argv or "--node-recv" in sys.argv:
        return 0
    print(json.dumps(result), flush=True)
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(run())
