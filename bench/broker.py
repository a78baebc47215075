"""Broker benchmark: latency, durable throughput and memory, in one run.

Starts its own NATS and PostgreSQL (hyperhive.cli.embedded) and the broker as
a child process (``hive serve broker``, so its memory can be read), then
measures:

  (a) the raw nats-py request/reply round trip on the same server;
  (b) send → the recipient's waiting ``recv`` returning, p50/p99;
  (c) sustained durable throughput: 32 concurrent senders to 32 agents, each
      send committed to Postgres before its reply (the issue's figure and
      target); then (c') the same senders while the 32 agents recv and ack
      meanwhile, counted once acked (end to end, reported without a target);
  (d) the broker's peak resident memory (VmHWM, and RSS sampled during the
      load), and its RSS after it.

Each figure is compared with the issue's targets (p50 < 3 ms, p99 < 15 ms,
>= 3,000 msg/s, < 120 MB) in ``targets_met``.

Agents use their own NATS credentials, as in production. The agent registry
(lifecycle ``list``/``get``) is answered by a small responder here: starting
64 harnesses is not what this measures.

Usage: python bench/broker.py [--messages 5000] [--seconds 10] [--senders 32]
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

TARGETS = {
    "send_recv_p50_ms": ("<", 3.0),
    "send_recv_p99_ms": ("<", 15.0),
    "throughput_msg_s": (">=", 3000.0),
    "broker_peak_rss_mb": ("<", 120.0),
}


def targets_met(result: dict[str, object]) -> dict[str, bool | None]:
    """Each target: met, missed, or None when its figure was not measured."""
    out: dict[str, bool | None] = {}
    for key, (op, limit) in TARGETS.items():
        value = result.get(key)
        if not isinstance(value, int | float):
            out[key] = None
        else:
            out[key] = value < limit if op == "<" else value >= limit
    return out


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
    """NATS + Postgres + the broker process, all private to this run."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.nats = EmbeddedNats(root / "nats", free_port())
        pg_root = root / "pg"
        pg_root.mkdir()
        os.chmod(root, 0o711)
        os.chmod(pg_root, 0o711)
        self.pg = EmbeddedPostgres(pg_root / "data", free_port())
        self.broker: subprocess.Popen[bytes] | None = None
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

    def start_broker(self, profile: str | None = None) -> None:
        env = dict(os.environ)
        env.update(self.settings_env())
        log = open(self.root / "broker.log", "wb")
        prefix = ["-m", "cProfile", "-o", profile] if profile else []
        self.broker = subprocess.Popen(
            [sys.executable, *prefix, "-m", "hyperhive.cli.main", "serve", "broker"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def stop(self) -> None:
        if self.broker is not None and self.broker.poll() is None:
            self.broker.terminate()
            try:
                self.broker.wait(15)
            except subprocess.TimeoutExpired:
                self.broker.kill()
        self.nats.stop()
        self.pg.stop()


async def wait_broker(nc: NATS, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await rpc.request(nc, subjects.admin("broker", "ping"), Ping(), Pong, timeout=1)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def serve_registry(nc: NATS, names: list[str]) -> Responder:
    """Answers lifecycle list/get for the bench's agents."""
    responder = Responder(nc, queue="bench-lifecycle")

    def info(name: str) -> AgentInfo:
        return AgentInfo(name=name, kind="agent", state="running", port=0)

    async def list_(_req: AgentsRequest, _call: Call) -> AgentsReply:
        return AgentsReply(agents=[info(n) for n in names])

    async def get(req: AgentRequest, _call: Call) -> AgentInfo:
        return info(req.name)

    await responder.serve(subjects.system("lifecycle", "list"), AgentsRequest, list_)
    await responder.serve(subjects.system("lifecycle", "get"), AgentRequest, get)
    return responder


async def raw_rtt(nc: NATS, client: NATS, client_name: str, count: int) -> list[float]:
    """(a): plain nats-py request/reply, responder and client on the same server.

    The client is an agent connection, so the subject is one it may publish on.
    """
    subject = subjects.agent(client_name, "echo")

    async def echo(msg) -> None:  # type: ignore[no-untyped-def]
        await msg.respond(msg.data)

    sub = await nc.subscribe(subject, cb=echo)
    await nc.flush()
    payload = b'{"to":"x","body":"' + b"y" * 64 + b'"}'
    out: list[float] = []
    for _ in range(count + 200):
        t0 = time.perf_counter()
        await client.request(subject, payload, timeout=5)
        out.append((time.perf_counter() - t0) * 1000)
    await sub.unsubscribe()
    return out[200:]  # warm-up


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


async def throughput(
    conns: dict[str, NATS], pairs: list[tuple[str, str]], seconds: float, *, receive: bool
):
    """(c) one sender per pair; (c') with ``receive``, a receiver (recv + ack) too.

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
        while True:
            left_ms = int((stop_at - time.monotonic()) * 1000)
            if left_ms <= 0:
                return
            try:
                reply = await rpc.request(
                    nc, recv_subj, RecvRequest(wait_ms=min(left_ms, 1000)), RecvReply
                )
                if reply.message is None:
                    continue
                await rpc.request(nc, ack_subj, AckRequest(id=reply.message.id), Ok)
            except Exception:
                errors[0] += 1
                continue
            if time.monotonic() < stop_at:
                acked[i] += 1

    t0 = time.monotonic()
    receivers = [receiver(i, r) for i, (_s, r) in enumerate(pairs)] if receive else []
    await asyncio.gather(*(sender(i, s, r) for i, (s, r) in enumerate(pairs)), *receivers)
    elapsed = max(time.monotonic() - t0, seconds)
    return sum(acked) / elapsed, sum(sent) / elapsed, sum(acked), sum(sent), errors[0]


async def main() -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--senders", type=int, default=32)
    parser.add_argument("--only", choices=["latency", "throughput"], help="run one part")
    parser.add_argument("--profile", help="run the broker under cProfile, stats to this file")
    args = parser.parse_args()

    result: dict[str, object] = {"senders": args.senders}
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
            service = await connect(
                NatsSettings(url=stack.nats.url, seed_file=str(stack.nats.service_seed)),
                name="bench",
            )
            registry = await serve_registry(service, senders + receivers)
            stack.start_broker(args.profile)
            await wait_broker(service)
            assert stack.broker is not None
            proc = psutil.Process(stack.broker.pid)
            for name in senders + receivers:
                conns[name] = await connect(
                    NatsSettings(url=stack.nats.url, connect_attempts=5, connect_backoff_s=0.2),
                    name=f"bench-{name}",
                    seed_file=str(stack.seeds[name]),
                    inbox_prefix=subjects.inbox_prefix(name),
                )
        except Exception as exc:
            failed("setup", exc)
            return result

        sampler = RssSampler(proc)
        with sampler:
            if args.only in (None, "latency"):
                try:
                    await latency_phase(stack, service, conns, senders, receivers, args, result)
                except Exception as exc:
                    failed("latency", exc)
            if args.only in (None, "throughput"):
                try:
                    await throughput_phase(proc, conns, senders, receivers, args, result)
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
        result["targets"] = {k: f"{op} {limit:g}" for k, (op, limit) in TARGETS.items()}
        result["targets_met"] = targets_met(result)
        if errors:
            result["error"] = "; ".join(errors)


async def latency_phase(
    stack: Stack,
    service: NATS,
    conns: dict[str, NATS],
    senders: list[str],
    receivers: list[str],
    args: argparse.Namespace,
    result: dict[str, object],
) -> None:
    """(a) and (b)."""
    rtt = await raw_rtt(service, conns[senders[0]], senders[0], args.messages)
    rtt_p50, rtt_p99 = pct(rtt, 50), pct(rtt, 99)
    print(f"(a) nats-py request/reply RTT: p50 {rtt_p50:.3f} ms, p99 {rtt_p99:.3f} ms")
    result.update(rtt_p50_ms=round(rtt_p50, 3), rtt_p99_ms=round(rtt_p99, 3))
    commit = await pg_commit(stack.pg.url, 1000)
    print(
        f"    baseline Postgres INSERT+commit: p50 {pct(commit, 50):.3f} ms, "
        f"p99 {pct(commit, 99):.3f} ms (a send needs one)"
    )
    result.update(
        pg_commit_p50_ms=round(pct(commit, 50), 3), pg_commit_p99_ms=round(pct(commit, 99), 3)
    )
    lat, sends = await send_to_recv(
        conns[senders[0]], senders[0], conns[receivers[0]], receivers[0], args.messages
    )
    lat_p50, lat_p99 = pct(lat, 50), pct(lat, 99)
    print(
        f"(b) send -> waiting recv: p50 {lat_p50:.3f} ms, p99 {lat_p99:.3f} ms, "
        f"mean {statistics.fmean(lat):.3f} ms over {len(lat)} messages"
    )
    print(
        f"    (the send's own reply, committed: p50 {pct(sends, 50):.3f} ms, "
        f"p99 {pct(sends, 99):.3f} ms)"
    )
    print(f"    ratio (b)/(a): p50 {lat_p50 / rtt_p50:.1f}x, p99 {lat_p99 / rtt_p99:.1f}x")
    result.update(
        send_recv_p50_ms=round(lat_p50, 3),
        send_recv_p99_ms=round(lat_p99, 3),
        ratio_p50=round(lat_p50 / rtt_p50, 2),
        ratio_p99=round(lat_p99 / rtt_p99, 2),
        send_reply_p50_ms=round(pct(sends, 50), 3),
        send_reply_p99_ms=round(pct(sends, 99), 3),
        messages=len(lat),
    )


async def throughput_phase(
    proc: psutil.Process,
    conns: dict[str, NATS],
    senders: list[str],
    receivers: list[str],
    args: argparse.Namespace,
    result: dict[str, object],
) -> None:
    """(c), then (c')."""
    pairs = list(zip(senders, receivers, strict=True))
    for receive in (False, True):
        cpu0 = proc.cpu_times()
        me = psutil.Process()
        me0 = me.cpu_times()
        rate, send_rate, acked, sent, errors = await throughput(
            conns, pairs, args.seconds, receive=receive
        )
        if receive:
            print(
                f"(c') end to end (sent, committed, received, acked): {rate:,.0f} msg/s "
                f"({acked} acked in {args.seconds:g}s; sends meanwhile {send_rate:,.0f}/s; "
                f"{errors} errors)"
            )
            result.update(
                e2e_throughput_msg_s=round(rate, 1),
                e2e_send_rate_msg_s=round(send_rate, 1),
                e2e_acked=acked,
                e2e_errors=errors,
            )
        else:
            print(
                f"(c) durable sends: {send_rate:,.0f} msg/s ({sent} committed in "
                f"{args.seconds:g}s; {args.senders} senders -> {args.senders} agents; "
                f"{errors} errors)"
            )
            result.update(
                throughput_msg_s=round(send_rate, 1), throughput_sent=sent, throughput_errors=errors
            )
        cpu1 = proc.cpu_times()
        me1 = me.cpu_times()
        b_cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
        c_cpu = (me1.user + me1.system) - (me0.user + me0.system)
        print(
            f"    CPU: broker {b_cpu / args.seconds:.0%} of a core, "
            f"bench clients {c_cpu / args.seconds:.0%}"
        )


def run() -> int:
    result: dict[str, object] = {}
    try:
        result = asyncio.run(main())
    except BaseException as exc:  # even Ctrl-C or a crash: the JSON line comes last
        traceback.print_exc()
        result.setdefault("error", f"{type(exc).__name__}: {exc}")
        result.setdefault("targets_met", targets_met(result))
    print(json.dumps(result), flush=True)
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(run())
