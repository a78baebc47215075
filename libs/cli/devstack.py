"""``hive up``: the whole hive on one machine with embedded NATS and Postgres.

Starts (unless given URLs) a private nats-server and PostgreSQL under
``$HIVE_HOME``, writes ``$HIVE_HOME/up.toml`` so that CLI commands find the
stack, creates the operator token (``$HIVE_HOME/operator-token``, 0600) at
the first start and tells only the dashboard where it is, runs the five
services as supervised child processes, prints the dashboard's login URL,
and on Ctrl-C or SIGTERM stops the services, the agents' harnesses, and the
servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import nats.errors

from hyperhive.cli import operator_token as ot
from hyperhive.cli import supervisor, waiting
from hyperhive.cli.embedded import EmbeddedNats, EmbeddedPostgres, check_port_free
from hyperhive.common import db, subjects
from hyperhive.common.config import UP_FILE, Settings, load_settings, settings_env
from hyperhive.common.errors import ConfigError, HiveError, Unavailable
from hyperhive.common.hostuser import isolation_gaps, runtime_paths, system_user, unreachable
from hyperhive.common.natsconn import connect

DEFAULT_NATS_PORT = 4222
DEFAULT_NATS_HOST = "127.0.0.1"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
DEFAULT_PG_PORT = 5433
STOP_GRACE_S = 8.0
JETSTREAM_PROBE_S = 2.0


@dataclass
class UpOptions:
    home: Path
    nats_url: str | None = None
    nats_seed: str | None = None
    database_url: str | None = None
    nats_port: int = DEFAULT_NATS_PORT
    # where the embedded NATS listens; nodes on other machines connect to it
    nats_host: str = DEFAULT_NATS_HOST
    pg_port: int = DEFAULT_PG_PORT
    dashboard_port: int | None = None
    dashboard_host: str | None = None
    no_agents: bool = False  # do not start the manager agent
    brokers: int = 1  # broker instances (one NATS queue group)

    def instances(self, part: str) -> list[str]:
        """The child names of ``part``: ``broker``, ``broker-2``, ... for the brokers."""
        count = self.brokers if part == "broker" else 1
        return [part] + [f"{part}-{i}" for i in range(2, count + 1)]


@dataclass
class DevStack:
    opts: UpOptions
    nats: EmbeddedNats | None = None
    pg: EmbeddedPostgres | None = None
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    watch: supervisor.Supervisor | None = None
    envs: dict[str, dict[str, str]] = field(default_factory=dict)
    stopping: bool = False

    def check_home(self) -> None:
        home = self.opts.home
        try:
            home.mkdir(parents=True, exist_ok=True)
            probe = home / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(f"HIVE_HOME {home} is not writable: {exc.strerror}") from None

    def dashboard_address(self, settings: Settings) -> tuple[str, int]:
        """Where the dashboard will listen: the flags, else the settings (:7000)."""
        host = self.opts.dashboard_host or settings.dashboard.host
        port = self.opts.dashboard_port
        return host, settings.dashboard.port if port is None else port

    def preflight(self, settings: Settings) -> None:
        """Checks, before anything starts, what would make the services fail:
        a port already taken, a NATS or PostgreSQL URL that does not answer.

        Raises:
            ConfigError: a port is taken or a URL is malformed.
            Unavailable: a given server cannot be reached (after the retries
                of the NATS and database settings).
        """
        host, port = self.dashboard_address(settings)
        check_port_free(port, "the dashboard", host)
        self._check_agents_reachable(settings)
        if not self.opts.nats_url:
            check_port_free(self.opts.nats_port, "NATS", self.opts.nats_host)
        if self.opts.nats_url:
            asyncio.run(self._probe_nats(settings, self.opts.nats_url))
        if self.opts.database_url:
            asyncio.run(
                db.probe(msgspec.structs.replace(settings.database, url=self.opts.database_url))
            )

    def _check_agents_reachable(self, settings: Settings) -> None:
        """As root without a sandbox, the agent user must reach what the
        default harness runs from and the agents' dirs (nothing binds them).

        Raises:
            ConfigError: one of them is behind a dir closed to that user.
        """
        lc = settings.lifecycle
        sandboxed = lc.use_bwrap and shutil.which("bwrap")
        if os.geteuid() != 0 or not lc.agent_user or sandboxed or lc.backend != "process":
            return
        needed = [self.opts.home / "agents"]
        if not lc.harness_command:
            argv = [sys.executable, "-m", "hyperhive.cli.main", "harness", "serve"]
            needed += runtime_paths(argv, settings.harness.claude_bin or "")
        reason = unreachable(system_user(lc.agent_user), needed)
        if reason:
            raise ConfigError(reason)

    async def _probe_nats(self, settings: Settings, url: str) -> None:
        """Connects as the services will (their seed) and asks for JetStream."""
        nats_settings = msgspec.structs.replace(
            settings.nats, url=url, seed_file=self.opts.nats_seed or "", inbox_prefix=""
        )
        nc = await connect(nats_settings, name="hive-up-probe")
        try:
            await nc.jetstream(timeout=JETSTREAM_PROBE_S).account_info()
        except (nats.errors.Error, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise Unavailable(f"NATS at {url} has no usable JetStream: {reason}") from None
        finally:
            await nc.close()

    def start_servers(self) -> tuple[str, str, str, str]:
        """Starts what is embedded. Returns (nats url, service seed, operator seed, db url)."""
        home = self.opts.home
        if self.opts.nats_url:
            seed = self.opts.nats_seed or ""
            nats_url, service_seed, operator_seed = self.opts.nats_url, seed, seed
        else:
            self.nats = EmbeddedNats(home / "nats", self.opts.nats_port, self.opts.nats_host)
            self.nats.start()
            nats_url = self.nats.url
            service_seed = str(self.nats.service_seed)
            operator_seed = str(self.nats.operator_seed)
        if self.opts.database_url:
            db_url = self.opts.database_url
        else:
            self.pg = EmbeddedPostgres(home / "postgres", self.opts.pg_port)
            self.pg.start()
            db_url = self.pg.url
        return nats_url, service_seed, operator_seed, db_url

    def write_up_file(self, nats_url: str, operator_seed: str) -> None:
        """``up.toml``: how CLI commands reach this stack (as the operator)."""
        lines = ["# written by `hive up`; CLI commands read it", "[nats]"]
        lines.append(f'url = "{nats_url}"')
        if operator_seed:
            lines.append(f'seed_file = "{operator_seed}"')
        lines.append(f'inbox_prefix = "{subjects.operator_inbox_prefix()}"')
        if self.opts.dashboard_port is not None or self.opts.dashboard_host:
            lines.append("[dashboard]")
            if self.opts.dashboard_port is not None:
                lines.append(f"port = {self.opts.dashboard_port}")
            if self.opts.dashboard_host:
                lines.append(f'host = "{self.opts.dashboard_host}"')
        (self.opts.home / UP_FILE).write_text("\n".join(lines) + "\n")

    def service_env(
        self, settings: Settings, nats_url: str, seed: str, db_url: str
    ) -> dict[str, str]:
        env = dict(os.environ)
        env.update(settings_env(settings))
        env.update(
            {
                "HIVE_HOME": str(self.opts.home),
                "HIVE_NATS_URL": nats_url,
                "HIVE_NATS_SEED_FILE": seed,
                "HIVE_NATS_INBOX_PREFIX": "",
                "HIVE_DATABASE_URL": db_url,
            }
        )
        if self.nats is not None:
            env["HIVE_NATS_AUTH_FILE"] = str(self.nats.auth_file)
            env["HIVE_NATS_RELOAD_PID_FILE"] = str(self.nats.pid_file)
        if self.opts.no_agents:
            env["HIVE_LIFECYCLE_MANAGER"] = ""
        return env

    def operator_token(self, settings: Settings) -> tuple[dict[str, str], str, Path | None]:
        """The dashboard's operator token: the configured one, else
        ``$HIVE_HOME/operator-token`` (created now at the first start).

        Returns:
            The dashboard's extra environment, the token ("" only with
            ``dashboard.insecure_no_token`` and none configured), its file.

        Raises:
            ConfigError: the token file cannot be created or read.
        """
        ds = settings.dashboard
        if ds.token.strip():
            return {}, ds.token.strip(), None
        if ds.token_file:
            path = Path(ds.token_file)
            return {}, ot.read_token_file(path), path
        if ds.insecure_no_token:
            return {}, "", None
        path, _created = ot.ensure_token(self.opts.home)
        return {"HIVE_DASHBOARD_TOKEN_FILE": str(path)}, ot.read_token_file(path), path

    def part_env(self, part: str, env: dict[str, str], dashboard: dict[str, str]) -> dict[str, str]:
        """A service's environment: only the dashboard learns of the operator token."""
        if part == "dashboard":
            return {**env, **dashboard}
        return {k: v for k, v in env.items() if k != "HIVE_DASHBOARD_TOKEN"}

    def spawn(self, part: str, env: dict[str, str], name: str | None = None) -> None:
        """Starts service ``part`` as child ``name`` (its log: ``logs/<name>.log``)."""
        name = name or part
        self.envs[name] = env
        log_dir = self.opts.home / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / f"{name}.log", "ab") as log:
            self.children[name] = subprocess.Popen(
                [sys.executable, "-m", "hyperhive.cli.main", "serve", part],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # own process group: a terminal's Ctrl-C reaches us only, and
                # we stop the services in order
                start_new_session=True,
            )

    def supervise_all(self, settings: Settings, env: dict[str, str]) -> None:
        """Puts the embedded servers and the services under :mod:`supervisor`."""
        self.watch = supervisor.Supervisor(self.opts.home, supervisor.RestartPolicy.of(settings.up))
        if self.nats is not None:
            self.watch.add(supervisor.nats_part(self.nats))
        if self.pg is not None:
            self.watch.add(supervisor.postgres_part(self.pg))
        for part in self.children:  # each child by its name (broker-2, ...)
            self.watch.add(
                supervisor.process_part(
                    part,
                    get=lambda p=part: self.children.get(p),
                    start=lambda p=part: self.spawn(_part_of(p), self.envs[p], p),
                    log=self.opts.home / "logs" / f"{part}.log",
                )
            )

    def supervise(self) -> None:
        """Restarts what exited (like ``Restart=on-failure``), with backoff.

        Raises:
            supervisor.GaveUp: NATS or PostgreSQL cannot be brought back.
        """
        if self.watch is not None and not self.stopping:
            self.watch.check()

    def stop(self) -> None:
        self.stopping = True
        for proc in self.children.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in self.children.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self.children:
            # only a stack that ran services has harnesses of its own: a
            # `hive up` that failed its checks must not stop another's agents
            stop_harnesses(self.opts.home / "agents")
        if self.nats is not None:
            self.nats.stop()
        if self.pg is not None:
            self.pg.stop()
        if self.watch is not None:
            self.watch.forget()


def _part_of(name: str) -> str:
    """The service of child ``name`` (``broker-2`` → ``broker``)."""
    part, _, n = name.rpartition("-")
    return part if n.isdigit() and part in subjects.SERVICES else name


def _gone(pid: int) -> bool:
    """True when the process is gone or a zombie (reaped here if it is our child)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def stop_harnesses(agents_dir: Path, timeout: float = 5.0) -> None:
    """Stops every agent harness (its process group) the process backend left
    running: SIGTERM, then SIGKILL for what is left after ``timeout``."""
    pids: list[int] = []
    for pid_file in agents_dir.glob("*/run/harness.pid"):
        try:
            pid = int(pid_file.read_text().split()[0])
            os.killpg(pid, signal.SIGTERM)
            pids.append(pid)
        except (OSError, ValueError, IndexError):
            continue
    deadline = time.monotonic() + timeout
    for pid in pids:
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        # the group may hold more than the harness (claude, a shell)
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
        _gone(pid)


def up(opts: UpOptions) -> int:
    stack = DevStack(opts)
    stopped = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stopped
        stopped = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack.check_home()
        os.environ["HIVE_HOME"] = str(opts.home)
        settings = load_settings()
        stack.preflight(settings)
        dashboard_env, token, token_file = stack.operator_token(settings)
        nats_url, service_seed, operator_seed, db_url = stack.start_servers()
        stack.write_up_file(nats_url, operator_seed)
        env = stack.service_env(settings, nats_url, service_seed, db_url)
        host, port = stack.dashboard_address(settings)
        env["HIVE_DASHBOARD_HOST"] = host
        env["HIVE_DASHBOARD_PORT"] = str(port)
        if not stopped:  # else Ctrl-C came while the servers were starting
            for part in subjects.SERVICES:
                for name in opts.instances(part):
                    stack.spawn(part, stack.part_env(part, env, dashboard_env), name)
            stack.supervise_all(settings, env)
            base = ot.base_url(settings.dashboard, host, port)
            print(f"hyperhive is up (HIVE_HOME={opts.home})", flush=True)
            # the one place the token is shown (as Jupyter shows its ?token= URL)
            print(f"  dashboard  {ot.login_url(base, token) if token else base}", flush=True)
            if token_file is not None:
                print(f"  token      {token_file} (`hive dashboard-url` prints the URL again)")
            elif not token:
                print("  WARNING    the dashboard has NO operator token (insecure_no_token)")
            if settings.lifecycle.manager:
                # agent pages are the dashboard's (a unix socket per harness, no port)
                page = f"{base.rstrip('/')}/agents/{settings.lifecycle.manager}/"
                print(f"  manager    {page}", flush=True)
            print(f"  nats       {nats_url}", flush=True)
            if stack.nats is not None and opts.nats_host not in LOOPBACK:
                # docs/multihost.md: other machines join with a token
                listen = f"{opts.nats_host}:{opts.nats_port}"
                print(f"  nodes      NATS on {listen}; `hive join-token` to add one", flush=True)
            print("  logs       " + str(opts.home / "logs"), flush=True)
            for gap in isolation_gaps(settings):
                print(f"  warning    {gap}", flush=True)
            print("Ctrl-C stops everything.", flush=True)
            waiting.report_when_ready()  # "  waiting    N approvals, M questions"
        while not stopped:
            time.sleep(0.2)
            stack.supervise()
    except HiveError as exc:
        stack.stop()
        # after the teardown, whose clients may log a lost connection: the
        # reason the hive stopped is the last line the operator reads
        print(f"hive up: {exc}", file=sys.stderr, flush=True)
        return 1
    print("hive up: stopping", flush=True)
    stack.stop()
    return 0
