"""The test rig: private NATS and PostgreSQL servers, settings, services.

Servers start once per pytest run on free ports in temp dirs; each test gets
its own database and data dir, so tests never see each other's rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import asyncpg
from nats.aio.client import Client as NATS
from nats.js.errors import NoKeysError, NotFoundError
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from hyperhive.cli.devstack import stop_harnesses
from hyperhive.cli.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from hyperhive.common import nats_auth, subjects
from hyperhive.common.config import Settings, load_settings, settings_env
from hyperhive.common.jetstream import ensure_state_bucket, ensure_streams
from hyperhive.common.natsconn import connect
from hyperhive.common.paths import AgentPaths
from hyperhive.common.service import Runtime, run

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def shared_tempdir(prefix: str) -> Path:
    """A temp dir that the unprivileged PostgreSQL user can reach."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(path, 0o711)
    return path


@contextlib.contextmanager
def nats_server() -> Iterator[EmbeddedNats]:
    root = Path(tempfile.mkdtemp(prefix="hive-nats-"))
    server = EmbeddedNats(root, free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def postgres_server() -> Iterator[EmbeddedPostgres]:
    root = shared_tempdir("hive-pg-")
    server = EmbeddedPostgres(root / "data", free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def database_url(url: str, database: str) -> str:
    """``url`` naming ``database`` instead (its host, socket dir and port kept)."""
    return urllib.parse.urlsplit(url)._replace(path=f"/{database}").geturl()


async def create_database(admin_url: str) -> str:
    """A fresh empty database on the test server. Returns its URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(database_url(admin_url, "postgres"))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return database_url(admin_url, name)


def make_settings(nats: EmbeddedNats, database_url: str, home: Path, **overrides: str) -> Settings:
    """Settings for services under test (service credentials)."""
    env = {
        "HIVE_HOME": str(home),
        "HIVE_NATS_URL": nats.url,
        "HIVE_NATS_SEED_FILE": str(nats.service_seed),
        "HIVE_NATS_AUTH_FILE": str(nats.auth_file),
        "HIVE_NATS_RELOAD_PID_FILE": str(nats.pid_file),
        "HIVE_NATS_CONNECT_ATTEMPTS": "2",
        "HIVE_NATS_CONNECT_BACKOFF_S": "0.2",
        "HIVE_DATABASE_URL": database_url,
        "HIVE_DATABASE_CONNECT_ATTEMPTS": "2",
        "HIVE_DATABASE_CONNECT_BACKOFF_S": "0.2",
        "HIVE_LIFECYCLE_USE_BWRAP": "false",
        # harnesses as the test's own uid; tests/lifecycle/test_host_doors.py
        # runs them as the agent user
        "HIVE_LIFECYCLE_AGENT_USER": "",
        "HIVE_LOG_LEVEL": "INFO",
    }
    env.update(overrides)
    return load_settings(env, config_file=None)


def operator_settings(settings: Settings, nats: EmbeddedNats) -> Settings:
    """The same settings with the operator's NATS credentials (as the CLI has)."""
    env = settings_env(settings)
    env["HIVE_NATS_SEED_FILE"] = str(nats.operator_seed)
    env["HIVE_NATS_INBOX_PREFIX"] = "_INBOX.operator"
    return load_settings(env, config_file=None)


def add_agent_user(nats: EmbeddedNats, name: str) -> Path:
    """Issues NATS credentials for an agent (as lifecycle does). Returns the seed file."""
    return _add_user(
        nats, f"agent-{name}", nats_auth.agent_permissions(name), nats.root / "agents" / name
    )


def add_node_user(nats: EmbeddedNats, node: str) -> Path:
    """NATS credentials of node agent ``node`` (its own verbs and heartbeat
    only), as a node that joined the hub has. Returns the seed file."""
    return _add_user(
        nats,
        nats_auth.node_user_name(node),
        nats_auth.node_permissions(node),
        nats.root / "nodes" / node,
    )


def _add_user(
    nats: EmbeddedNats, user: str, permissions: nats_auth.Permissions, stem: Path
) -> Path:
    seed = nats_auth.new_seed()
    path = stem.with_suffix(".seed")
    nats_auth.write_seed(path, seed)
    nats_auth.put_user(
        nats.root,
        nats_auth.NatsUser(name=user, nkey=nats_auth.public_key(seed), permissions=permissions),
    )
    nats_auth.render_auth_file(nats.root, nats.auth_file)
    reload_nats(nats)
    return path


def reload_nats(nats: EmbeddedNats, timeout: float = 10.0) -> None:
    """SIGHUP, then wait until the server logged the reload.

    A connection that registers while nats-server swaps its users can end up
    in a stale account, so nobody should connect before the reload is done.
    """
    log = nats.root / "nats.log"
    marker = "Reloaded server configuration"
    before = log.read_text(errors="replace").count(marker)
    assert nats.proc is not None
    nats.proc.send_signal(1)
    deadline = time.monotonic() + timeout
    while log.read_text(errors="replace").count(marker) <= before:
        assert time.monotonic() < deadline, "nats-server did not reload"
        time.sleep(0.02)
    time.sleep(0.1)  # the log line comes just before the accounts are swapped


async def connect_as(nats: EmbeddedNats, seed: Path, inbox_prefix: str = "") -> NATS:
    from hyperhive.common.config import NatsSettings

    return await connect(
        NatsSettings(url=nats.url, connect_attempts=3, connect_backoff_s=0.2),
        name="test",
        seed_file=str(seed),
        inbox_prefix=inbox_prefix,
    )


async def reset_deliveries(nats: EmbeddedNats) -> None:
    """A new ``HIVE_DELIVERIES`` for a new hive on a shared NATS: the old one's
    records and its duplicate window go (its keys, e.g. ``crash:crashy:3``,
    repeat from hive to hive, and JetStream would drop them as duplicates).
    So do the node heartbeats an earlier hive's nodes left in the state
    bucket: fresh ones would look like up nodes, and placement would put the
    new hive's agents on them."""
    nc = await connect_as(nats, nats.service_seed)
    js = nc.jetstream()
    try:
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(subjects.DELIVERIES_STREAM)
        await ensure_streams(js)
        kv = await ensure_state_bucket(js)
        try:
            keys = await kv.keys()
        except NoKeysError:
            keys = []
        for key in keys:
            if fnmatch.fnmatchcase(key, subjects.NODE_KEYS):
                await kv.purge(key)
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def agent_connection(
    nats: EmbeddedNats, settings: Settings, name: str
) -> AsyncIterator[NATS]:
    """Connected as agent ``name`` with the NATS credentials lifecycle issued it
    (its seed and its own inbox prefix), closed at the end."""
    seed = AgentPaths.of(settings, name).nats_seed
    nc = await connect_as(nats, seed, subjects.inbox_prefix(name))
    try:
        yield nc
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def running_service(part: str, settings: Settings) -> AsyncIterator[Runtime]:
    """Runs a service in this event loop until the block ends."""
    stop = asyncio.Event()
    ready: asyncio.Future[Runtime] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run(part, settings, ready=ready.set_result, stop=stop))
    done, _ = await asyncio.wait({task, ready}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # raises what stopped it
    if not done:
        task.cancel()
        raise TimeoutError(f"{part} did not start within 30s")
    try:
        yield ready.result()
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=20)


@dataclass
class ServiceProcess:
    """A service run as ``hive serve <part>`` in a child process."""

    part: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self, sig: int = 15, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_service_process(part: str, settings: Settings, log_dir: Path) -> ServiceProcess:
    env = dict(os.environ)
    env.update(settings_env(settings))
    log = log_dir / f"{part}-{uuid.uuid4().hex[:6]}.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hyperhive.cli.main", "serve", part],
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    return ServiceProcess(part, proc, log)


async def eventually(
    check: Callable[[], Awaitable[T | None]] | Callable[[], T | None],
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Polls ``check`` until it returns something truthy, within ``timeout``."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result  # type: ignore[return-value]
        except AssertionError as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s (last: {last})")
        await asyncio.sleep(interval)


async def table_exists(url: str, name: str) -> bool:
    """Whether the database at ``url`` has a table ``name`` (probes that must not make one)."""
    conn = await asyncpg.connect(url)
    try:
        return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name))
    finally:
        await conn.close()


def pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie (read from /proc: no reaping here)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def cleanup_agents(nats: EmbeddedNats, agents_dir: Path) -> None:
    """Stops the harnesses a stack started and removes their NATS users."""
    stop_harnesses(agents_dir, timeout=10.0)
    if not agents_dir.is_dir():
        return
    for d in agents_dir.iterdir():
        nats_auth.remove_user(nats.root, f"agent-{d.name}")
    nats_auth.render_auth_file(nats.root, nats.auth_file)
    reload_nats(nats)


def cli_env(settings: Settings) -> dict[str, str]:
    """This environment without any HIVE_* of its own, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIVE_")}
    env.update(settings_env(settings))
    return env


def hive_run(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Runs ``hive <args>`` with ``env`` in a child process and waits for it;
    its output as text, whatever its exit code (``hive_cli`` is the async one)."""
    return subprocess.run(
        [sys.executable, "-m", "hyperhive.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


async def hive_cli(settings: Settings, *args: str, timeout: float = 120.0) -> tuple[int, str, str]:
    """Runs ``hive <args>`` in a child process; returns (exit code, stdout, stderr).

    Async, because the services under test usually run in this event loop.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hyperhive.cli.main",
        *args,
        env=cli_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def hive_exe() -> str:
    """The installed ``hive`` executable of this environment (its console script)."""
    exe = Path(sys.executable).parent / "hive"
    found = str(exe) if exe.is_file() else shutil.which("hive")
    assert found, "no hive executable installed"
    return found


async def hive_exe_cli(
    settings: Settings,
    *args: str,
    stdin: bytes | None = None,
    stdout: int = asyncio.subprocess.PIPE,
    timeout: float = 120.0,
) -> tuple[int, str, str]:
    """Runs the installed ``hive`` executable (as an operator types it), with
    ``stdin`` as its input; returns (exit code, stdout, stderr). ``stdout``
    may be a file descriptor (e.g. a pipe whose reader is gone)."""
    proc = await asyncio.create_subprocess_exec(
        hive_exe(),
        *args,
        env=cli_env(settings),
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=stdout,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate(stdin)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, (out or b"").decode(), err.decode()


def span_exporter() -> InMemorySpanExporter:
    """Every span this process ends from now on, kept in memory (the SDK's
    TracerProvider is installed the first time, as an entry point would)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def parse_traceparent(value: str) -> tuple[int, int]:
    """``(trace_id, span_id)`` of a W3C ``traceparent`` (``00-<trace>-<span>-<flags>``)."""
    version, trace_id, span_id, _flags = value.split("-")
    assert version == "00" and len(trace_id) == 32 and len(span_id) == 16, value
    return int(trace_id, 16), int(span_id, 16)
