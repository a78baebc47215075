"""Dashboard benchmark: the live message flow under load.

Starts its own NATS and PostgreSQL (hyperhive.cli.embedded) and the broker,
lifecycle and dashboard as child processes (``hive serve <part>``; the
dashboard's memory is read from its process). Lifecycle runs agents whose
harness is ``sleep`` (no claude needed): they exist so the broker accepts
their sends, and their own NATS credentials are used to send.

Then ``--clients`` SSE clients (default 200, spread over ``--workers`` client
processes so that parsing does not starve the sender) follow
``/flow/stream`` while ``--rate`` messages/s (default 500) are sent through
the broker for ``--seconds``. Each message body carries its send time
(CLOCK_MONOTONIC is shared by every process on the machine), so each client
measures send → receipt itself.

Prints p50/p99/max of send → client receipt over every (message, client)
pair, the dashboard's own hop (JetStream push → client receipt), the share
of receipts that arrived, the dashboard's RSS and the CPU time it spent per
message (steadier than latency on a shared machine). Targets: send → client
p99 ≤ 100 ms, the dashboard's hop p99 ≤ 25 ms, RSS < 150 MB; each is printed
with its ratio to the target (≤ 1 meets it).

Then (unless ``--no-memory``) it runs ``bench/memory.py`` (a whole hive under
``hive up``, idle) and adds its figures: the idle RSS of each service (target
≤ 80 MB) and of an agent's harness (≤ 60 MB), so that this run prints every
dashboard and memory figure of issue 17. The last line is one JSON object.

Usage: python bench/dashboard.py [--clients 200] [--rate 500] [--seconds 20] [--no-memory]
"""

from __future__ import annotations

import argparse
import array
import asyncio
import json
import logging
import multiprocessing as mp
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

import psutil
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from hyperhive.cli.devstack import stop_harnesses
from hyperhive.cli.embedded import EmbeddedNats, EmbeddedPostgres, free_port, wait_port
from hyperhive.common import rpc, subjects
from hyperhive.common.config import NatsSettings, Settings, load_settings, settings_env
from hyperhive.common.errors import HiveError
from hyperhive.common.natsconn import connect
from hyperhive.common.paths import AgentPaths
from hyperhive.common.wire.base import Ping, Pong
from hyperhive.common.wire.broker import SendReply, SendRequest
from hyperhive.common.wire.lifecycle import AgentInfo, SpawnRequest

TARGET_P99_MS = 100.0
TARGET_HOP_P99_MS = 25.0
TARGET_RSS_MB = 150.0
SENDERS = ("bench0", "bench1", "bench2", "bench3")
MAX_IN_FLIGHT = 256
BODY = re.compile(rb'"body"\s*:\s*"bench (\d+) t=([0-9.]+)"')


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


# --- SSE client processes ------------------------------------------------------


class SSEClient(asyncio.Protocol):
    """One ``/flow/stream`` connection; records the latency of every bench message."""

    def __init__(
        self, request: bytes, seen: tuple[array.array, array.array], ready: asyncio.Future
    ) -> None:
        self.request = request
        self.numbers, self.times = seen
        self.ready = ready
        self.buffer = b""
        self.headers_done = False
        self.received = 0
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.buffer += data
        if not self.headers_done:
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            if not head.startswith(b"HTTP/1.1 200"):
                self.ready.set_exception(RuntimeError(head.split(b"\r\n")[0].decode()))
                return
            self.headers_done = True
            self.buffer = rest
            if not self.ready.done():
                self.ready.set_result(None)
        end = self.buffer.rfind(b"\n\n")
        if end < 0:
            return
        complete, self.buffer = self.buffer[: end + 2], self.buffer[end + 2 :]
        for match in BODY.finditer(complete):
            self.numbers.append(int(match.group(1)))
            self.times.append(now)
            self.received += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


async def _client_main(port: int, token: str, clients: int, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    seen = (array.array("q"), array.array("d"))  # message number, receipt time
    request = (
        f"GET /flow/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    ).encode()
    protocols: list[SSEClient] = []
    transports: list[asyncio.BaseTransport] = []
    readies = []
    for _ in range(clients):
        ready = loop.create_future()
        transport, proto = await loop.create_connection(
            lambda ready=ready: SSEClient(request, seen, ready), "127.0.0.1", port
        )
        protocols.append(proto)
        transports.append(transport)
        readies.append(ready)
    await asyncio.wait_for(asyncio.gather(*readies), 60)
    conn.send("ready")
    await loop.run_in_executor(None, conn.recv)  # "stop"
    for t in transports:
        t.close()
    conn.send((seen[0].tobytes(), seen[1].tobytes(), [p.received for p in protocols]))


def client_process(port: int, token: str, clients: int, conn: Connection) -> None:
    """Entry point of one client worker process."""
    asyncio.run(_client_main(port, token, clients, conn))


# --- the stack -----------------------------------------------------------------


class Stack:
    """NATS, Postgres and the broker, lifecycle and dashboard processes."""

    def __init__(self, root: Path, extra_env: dict[str, str]) -> None:
        self.root = root
        self.extra_env = extra_env
        os.chmod(root, 0o711)
        self.nats = EmbeddedNats(root / "nats", free_port())
        pg_root = root / "pg"
        pg_root.mkdir()
        os.chmod(pg_root, 0o711)
        self.pg = EmbeddedPostgres(pg_root / "data", free_port())
        self.dashboard_port = free_port()
        self.token = secrets.token_urlsafe(32)  # the dashboard's operator token
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.settings: Settings | None = None

    def start(self) -> Settings:
        self.nats.start()
        self.pg.start()
        self.settings = load_settings(
            {
                "HIVE_HOME": str(self.root / "home"),
                "HIVE_NATS_URL": self.nats.url,
                "HIVE_NATS_SEED_FILE": str(self.nats.service_seed),
                "HIVE_NATS_AUTH_FILE": str(self.nats.auth_file),
                "HIVE_NATS_RELOAD_PID_FILE": str(self.nats.pid_file),
                "HIVE_DATABASE_URL": self.pg.url,
                "HIVE_LIFECYCLE_HARNESS_COMMAND": "sleep 3600",
                "HIVE_LIFECYCLE_USE_BWRAP": "false",
                "HIVE_LIFECYCLE_MANAGER_PORT": str(free_port()),
                "HIVE_LIFECYCLE_PORT_BASE": "24100",
                "HIVE_LIFECYCLE_AUTO_UPDATE_INTERVAL_S": "3600",
                "HIVE_DASHBOARD_PORT": str(self.dashboard_port),
                "HIVE_DASHBOARD_TOKEN": self.token,
                **self.extra_env,
                "HIVE_LOG_LEVEL": "WARNING",
            },
            config_file=None,
        )
        return self.settings

    def serve(self, part: str) -> subprocess.Popen[bytes]:
        assert self.settings is not None
        env = dict(os.environ)
        env.update(settings_env(self.settings))
        with open(self.root / f"{part}.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "hyperhive.cli.main", "serve", part],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.procs[part] = proc
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs.values()):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self.settings is not None:
            stop_harnesses(self.settings.paths.agents_dir)
        self.pg.stop()
        self.nats.stop()


async def wait_service(nc: NATS, part: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await rpc.request(nc, subjects.admin(part, "ping"), Ping(), Pong, timeout=2)
            return
        except HiveError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def send_load(
    senders: list[tuple[str, NATS]], rate: float, seconds: float, sent_at: dict[int, float]
) -> tuple[int, int, float]:
    """Sends ``rate`` messages/s, open loop, noting each send time in ``sent_at``.

    Returns (sent ok, failed, elapsed).
    """
    in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
    ok = failed = 0
    tasks: set[asyncio.Task[None]] = set()

    async def one(i: int) -> None:
        nonlocal ok, failed
        name, nc = senders[i % len(senders)]
        to = senders[(i + 1) % len(senders)][0]
        try:
            sent_at[i] = t = time.monotonic()
            body = f"bench {i} t={t:.6f}"
            await rpc.request(
                nc, subjects.agent(name, "send"), SendRequest(to=to, body=body), SendReply
            )
            ok += 1
        except HiveError:
            failed += 1
        finally:
            in_flight.release()

    start = time.monotonic()
    n = 0
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(elapsed * rate) - n
        for _ in range(due):
            await in_flight.acquire()
            task = asyncio.create_task(one(n))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
        await asyncio.sleep(0.002)
    if tasks:
        await asyncio.wait(tasks)
    return ok, failed, time.monotonic() - start


def rss_mb(proc: psutil.Process) -> float:
    return proc.memory_info().rss / 2**20


async def run(args: argparse.Namespace, stack: Stack) -> dict[str, object]:
    settings = stack.start()
    for part in ("broker", "lifecycle", "dashboard"):
        stack.serve(part)
    nats = NatsSettings(url=stack.nats.url, connect_attempts=10, connect_backoff_s=0.2)
    operator = await connect(
        nats, name="bench", seed_file=str(stack.nats.operator_seed), inbox_prefix="_INBOX.operator"
    )
    senders: list[tuple[str, NATS]] = []
    try:
        for part in ("broker", "lifecycle", "dashboard"):
            await wait_service(operator, part)
        wait_port(stack.dashboard_port, 30, stack.procs["dashboard"], "dashboard")
        for name in SENDERS:
            await rpc.request(
                operator,
                subjects.admin("lifecycle", "spawn"),
                SpawnRequest(name=name),
                AgentInfo,
                timeout=60,
            )
            seed = AgentPaths.of(settings, name).nats_seed
            nc = await connect(
                nats, name=name, seed_file=str(seed), inbox_prefix=subjects.inbox_prefix(name)
            )
            senders.append((name, nc))

        dash = psutil.Process(stack.procs["dashboard"].pid)
        idle_rss = rss_mb(dash)
        print(f"dashboard idle RSS {idle_rss:.1f} MB", flush=True)

        ctx = mp.get_context("fork")
        workers = []
        per_worker = [args.clients // args.workers] * args.workers
        per_worker[0] += args.clients - sum(per_worker)
        for count in per_worker:
            parent, child = ctx.Pipe()
            p = ctx.Process(
                target=client_process, args=(stack.dashboard_port, stack.token, count, child)
            )
            p.start()
            workers.append((p, parent))
        loop = asyncio.get_running_loop()
        for _, conn in workers:
            assert await loop.run_in_executor(None, conn.recv) == "ready"
        connected_rss = rss_mb(dash)
        print(f"{args.clients} SSE clients connected; RSS {connected_rss:.1f} MB", flush=True)

        peak = connected_rss
        cpu_samples: list[float] = []
        dash.cpu_percent(None)
        # CPU of everything else in this run (one core = 100%): on a shared
        # machine it tells whether the dashboard or its neighbours set the pace
        others = {
            "broker": psutil.Process(stack.procs["broker"].pid),
            "clients": [psutil.Process(p.pid) for p, _ in workers],
            "bench": psutil.Process(),
        }
        for proc in (others["broker"], others["bench"], *others["clients"]):
            proc.cpu_percent(None)
        load_before = os.getloadavg()[0]
        cpu_before = dash.cpu_times()

        async def sample() -> None:
            nonlocal peak
            while True:
                await asyncio.sleep(0.5)
                peak = max(peak, rss_mb(dash))
                cpu_samples.append(dash.cpu_percent(None))

        sampler = asyncio.create_task(sample())
        # the same latency measured on HIVE_EVENTS itself, before the dashboard:
        # what the broker's commit → outbox → JetStream path costs
        event_at: dict[int, float] = {}

        async def on_event(msg: Msg) -> None:
            now = time.monotonic()
            match = BODY.search(msg.data)
            if match:
                event_at[int(match.group(1))] = now

        events_sub = await operator.subscribe(subjects.event(subjects.EV_MESSAGE_SENT), cb=on_event)
        # and as the dashboard gets it: a JetStream ordered consumer (stored, then pushed)
        pushed_at: dict[int, float] = {}

        async def on_pushed(msg: Msg) -> None:
            now = time.monotonic()
            match = BODY.search(msg.data)
            if match:
                pushed_at[int(match.group(1))] = now

        pushed_sub = await operator.jetstream().subscribe(
            subjects.event(subjects.EV_MESSAGE_SENT),
            stream=subjects.EVENTS_STREAM,
            cb=on_pushed,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.NEW,
        )
        print(f"sending {args.rate:g} msg/s for {args.seconds:g}s ...", flush=True)
        sent_at: dict[int, float] = {}
        ok, failed, elapsed = await send_load(senders, args.rate, args.seconds, sent_at)
        await asyncio.sleep(args.drain)  # let the last messages reach every client
        sampler.cancel()
        cpu_after = dash.cpu_times()
        dash_cpu_s = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
        cpu = {
            "dashboard": round(sum(cpu_samples) / len(cpu_samples), 1) if cpu_samples else None,
            "broker": round(others["broker"].cpu_percent(None), 1),
            "clients": round(sum(c.cpu_percent(None) for c in others["clients"]), 1),
            "bench_sender": round(others["bench"].cpu_percent(None), 1),
        }
        load_after = os.getloadavg()[0]
        await events_sub.unsubscribe()
        await pushed_sub.unsubscribe()
        final_rss = rss_mb(dash)
        peak = max(peak, final_rss)

        latencies: list[float] = []  # send -> client receipt
        hops: list[float] = []  # HIVE_EVENTS publish -> client receipt
        in_dashboard: list[float] = []  # JetStream push -> client receipt: the dashboard's share
        received: list[int] = []
        for p, conn in workers:
            conn.send("stop")
            raw_n, raw_t, counts = await loop.run_in_executor(None, conn.recv)
            numbers, times = array.array("q"), array.array("d")
            numbers.frombytes(raw_n)
            times.frombytes(raw_t)
            for n, t in zip(numbers, times, strict=True):
                if n in sent_at:
                    latencies.append((t - sent_at[n]) * 1000.0)
                if n in event_at:
                    hops.append((t - event_at[n]) * 1000.0)
                if n in pushed_at:
                    in_dashboard.append((t - pushed_at[n]) * 1000.0)
            received.extend(counts)
            p.join(10)
        event_latencies = [(event_at[n] - sent_at[n]) * 1000.0 for n in event_at if n in sent_at]
        js_push = [(pushed_at[n] - event_at[n]) * 1000.0 for n in pushed_at if n in event_at]
    finally:
        for _, nc in senders:
            await nc.close()
        await operator.close()

    expected = ok * args.clients

    def ratio(value: float | None, target: float) -> float | None:
        return round(value / target, 3) if value is not None else None

    hop_p99 = round(pct(in_dashboard, 99), 2) if in_dashboard else None
    p99 = round(pct(latencies, 99), 2) if latencies else None
    result: dict[str, object] = {
        "bench": "dashboard",
        "clients": args.clients,
        "rate_target": args.rate,
        "rate_achieved": round(ok / elapsed, 1),
        "sent": ok,
        "send_errors": failed,
        "receipts": len(latencies),
        "delivered_ratio": round(len(latencies) / expected, 4) if expected else 0.0,
        "min_client_receipts": min(received) if received else 0,
        "p50_ms": round(pct(latencies, 50), 2) if latencies else None,
        "p99_ms": p99,
        "p99_over_target": ratio(p99, TARGET_P99_MS),
        "max_ms": round(max(latencies), 2) if latencies else None,
        "event_p50_ms": round(pct(event_latencies, 50), 2) if event_latencies else None,
        "event_p99_ms": round(pct(event_latencies, 99), 2) if event_latencies else None,
        "event_to_client_p50_ms": round(pct(hops, 50), 2) if hops else None,
        "event_to_client_p99_ms": round(pct(hops, 99), 2) if hops else None,
        "jetstream_push_p50_ms": round(pct(js_push, 50), 2) if js_push else None,
        "jetstream_push_p99_ms": round(pct(js_push, 99), 2) if js_push else None,
        "dashboard_hop_p50_ms": round(pct(in_dashboard, 50), 2) if in_dashboard else None,
        "dashboard_hop_p99_ms": hop_p99,
        "dashboard_hop_p99_over_target": ratio(hop_p99, TARGET_HOP_P99_MS),
        "dashboard_rss_mb_idle": round(idle_rss, 1),
        "dashboard_rss_mb_peak": round(peak, 1),
        "dashboard_rss_over_target": ratio(peak, TARGET_RSS_MB),
        "dashboard_cpu_s": round(dash_cpu_s, 2),
        "dashboard_cpu_ms_per_msg": round(dash_cpu_s * 1000 / ok, 3) if ok else None,
        "cpu_pct": cpu,
        "machine_load_1m": [round(load_before, 2), round(load_after, 2)],
        "cpus": os.cpu_count(),
        "target_p99_ms": TARGET_P99_MS,
        "target_hop_p99_ms": TARGET_HOP_P99_MS,
        "target_rss_mb": TARGET_RSS_MB,
    }
    result["meets_targets"] = bool(
        p99 is not None
        and hop_p99 is not None
        and p99 <= TARGET_P99_MS
        and hop_p99 <= TARGET_HOP_P99_MS
        and peak < TARGET_RSS_MB
        and result["delivered_ratio"] == 1.0
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rate", type=float, default=500.0, help="messages per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=2, help="client processes")
    parser.add_argument("--drain", type=float, default=2.0, help="seconds after the last send")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    parser.add_argument(
        "--memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure every service's and a harness's idle RSS (bench/memory.py)",
    )
    parser.add_argument(
        "--coalesce-ms", type=float, default=None, help="dashboard.flow_coalesce_ms to run with"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # "nats disconnected" at close is expected
    root = Path(tempfile.mkdtemp(prefix="hive-bench-dash-"))
    extra = {}
    if args.coalesce_ms is not None:
        extra["HIVE_DASHBOARD_FLOW_COALESCE_MS"] = str(args.coalesce_ms)
    stack = Stack(root, extra)
    try:
        result = asyncio.run(run(args, stack))
    finally:
        stack.stop()
        if args.keep:
            print(f"logs kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(
        f"send -> SSE client receipt over {result['receipts']} receipts: "
        f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, max {result['max_ms']} ms "
        f"(target p99 <= {TARGET_P99_MS:g} ms)"
    )
    print(
        f"send -> message.sent on HIVE_EVENTS (before the dashboard): "
        f"p50 {result['event_p50_ms']} ms, p99 {result['event_p99_ms']} ms"
    )
    print(
        f"message.sent publish -> JetStream ordered-consumer push (NATS server): "
        f"p50 {result['jetstream_push_p50_ms']} ms, p99 {result['jetstream_push_p99_ms']} ms"
    )
    print(
        f"JetStream push -> SSE client receipt (the dashboard's own share): "
        f"p50 {result['dashboard_hop_p50_ms']} ms, p99 {result['dashboard_hop_p99_ms']} ms "
        f"(target p99 <= {TARGET_HOP_P99_MS:g} ms)"
    )
    print(
        f"sent {result['sent']} at {result['rate_achieved']} msg/s, "
        f"delivered {float(result['delivered_ratio']) * 100:.2f}% of (message, client) pairs"
    )
    print(
        f"dashboard RSS idle {result['dashboard_rss_mb_idle']} MB, "
        f"peak {result['dashboard_rss_mb_peak']} MB (target < {TARGET_RSS_MB:g} MB); "
        f"CPU {result['cpu_pct']}"  # type: ignore[index]
    )
    print(
        f"dashboard CPU {result['dashboard_cpu_s']} s while sending: "
        f"{result['dashboard_cpu_ms_per_msg']} ms per message to {result['clients']} clients"
    )
    print(
        f"machine load (1 min) before/after: {result['machine_load_1m']} on {result['cpus']} CPUs"
    )
    if args.memory:
        result.update(idle_memory())
        over = [result.get(f"{k}_idle_rss_mb_over_target") for k in ("service", "harness")]
        result["meets_targets"] = bool(
            result["meets_targets"] and all(isinstance(v, float) and v <= 1 for v in over)
        )
    print(json.dumps(result))
    return 0


def idle_memory() -> dict[str, object]:
    """bench/memory.py's figures (its own hive, started after this run's is
    gone), with their ratios to the targets; ``memory_error`` if it failed."""
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("memory.py"))],
        stdout=subprocess.PIPE,
        text=True,
        timeout=600,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    for line in lines[:-1]:
        print(line)
    try:
        figures = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        return {"memory_error": f"bench/memory.py printed no figures (exit {done.returncode})"}
    out: dict[str, object] = {
        "service_rss_mb_idle": figures.get("service_rss_mb"),
        "harness_rss_mb_idle": figures.get("harness_after_turn_rss_mb"),
    }
    for key, target in (("service_idle_rss_mb", 80.0), ("harness_idle_rss_mb", 60.0)):
        value = figures.get(key)
        out[key] = value
        out[f"{key}_over_target"] = round(value / target, 3) if isinstance(value, float) else None
    if "error" in figures:
        out["memory_error"] = figures["error"]
    print(
        f"idle RSS: services at most {out['service_idle_rss_mb']} MB (target <= 80 MB), "
        f"a harness {out['harness_idle_rss_mb']} MB (target <= 60 MB)"
    )
    return out


if __name__ == "__main__":
    sys.exit(main())
