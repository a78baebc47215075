"""A default ``hive up`` with real agents that attack it (tests and bench/escape.py).

:class:`HostileHive` starts ``hive up`` as a user would (embedded NATS and
PostgreSQL, the five services, the manager, the process backend with its
sandbox), with claude pointed at a :class:`ScriptedAnthropic`. It stages what
an agent would want to subvert (a pending config change of its own, an open
question to the operator), then makes an agent's claude run the probe program
(tests/security/probes.py) through its real ``Bash`` tool, and reads the tool
result back from the next request the CLI sends to the scripted API.
:meth:`HostileHive.snapshot` is what the effect checks compare: approvals,
questions, agents, tags, service processes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import git
import psutil

from hyperhive.cli.embedded import free_port
from hyperhive.common import rpc, subjects
from hyperhive.common.config import NatsSettings
from hyperhive.common.natsconn import connect
from hyperhive.common.wire.approvals import ApplyCommitRequest, ApprovalQueued, AskRequest
from tests.rig import hive_run
from tests.scripted_anthropic import (
    ScriptedAnthropic,
    after_tool_results,
    last_user_mentions,
    mentions,
    tool_result_text,
    tool_use,
)

PROBES = Path(__file__).with_name("probes.py")
MANAGER = subjects.MANAGER
SERVICES = ("broker", "lifecycle", "approvals", "crash-watch", "dashboard")
START_TIMEOUT_S = 180.0
PROBE_TIMEOUT_S = 240.0


def hive_env(home: Path, api: ScriptedAnthropic) -> dict[str, str]:
    """The environment of a default ``hive up`` on ``home``, claude on ``api``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HIVE_", "ANTHROPIC_"))}
    env.update(api.env())
    env["HIVE_HOME"] = str(home)
    env["HIVE_LIFECYCLE_PORT_BASE"] = str(20000 + (os.getpid() * 7) % 20000)
    return env


def hive_json(*args: str, env: dict[str, str], timeout: float = 60) -> Any:
    done = hive_run(*args, "--json", env=env, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"hive {' '.join(args)} failed: {done.stdout}{done.stderr}")
    return json.loads(done.stdout)


@dataclass
class HostileHive:
    """A running ``hive up`` and the agents that attack it."""

    home: Path
    api: ScriptedAnthropic
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[str] | None = None
    ports: dict[str, int] = field(default_factory=dict)
    output: list[str] = field(default_factory=list)
    canary: tuple[Path, str] | None = None

    # --- start and stop ----------------------------------------------------------

    def start(self) -> HostileHive:
        self.env = hive_env(self.home, self.api)
        self.ports = {"nats": free_port(), "pg": free_port(), "dashboard": free_port()}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hyperhive.cli.main",
                "up",
                "--nats-port",
                str(self.ports["nats"]),
                "--pg-port",
                str(self.ports["pg"]),
                "--dashboard-port",
                str(self.ports["dashboard"]),
            ],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._drain, daemon=True).start()
        self._wait(lambda: self._status_ok() and self._running(MANAGER), "hive up with its manager")
        self._plant_canary()
        return self

    def _drain(self) -> None:
        """Keeps reading hive up's output (a full pipe would block it)."""
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)

    def stop(self) -> None:
        if self.canary is not None:
            self.canary[0].unlink(missing_ok=True)
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def _plant_canary(self) -> None:
        """A host secret the agents must not read: a file in /root (when we can write there)."""
        secret = uuid.uuid4().hex
        path = Path("/root") / f"hive-canary-{secret[:8]}"
        with contextlib.suppress(OSError):
            path.write_text(secret)
            path.chmod(0o600)
            self.canary = (path, secret)

    def _status_ok(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            out = "".join(self.output)
            raise AssertionError(f"hive up exited {self.proc.returncode}: {out}")
        return hive_run("status", "--json", "--timeout", "2", env=self.env).returncode == 0

    def _wait(self, ready: Any, what: str, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.5)
        raise AssertionError(f"{what}: not ready within {timeout:g}s")

    # --- the hive's state ----------------------------------------------------------

    def agents(self) -> dict[str, dict[str, Any]]:
        reply = hive_json("agents", env=self.env)
        items = reply.get("agents", reply) if isinstance(reply, dict) else reply
        return {a["name"]: a for a in items}

    def _running(self, name: str) -> bool:
        try:
            return self.agents().get(name, {}).get("state") == "running"
        except AssertionError:
            return False

    def spawn(self, name: str) -> None:
        done = hive_run("spawn", name, env=self.env, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        self._wait(lambda: self._running(name), f"agent {name} running")

    def stage(self, name: str) -> tuple[int, int]:
        """What ``name`` would like to subvert: a config change of its own, pending
        (committed to its proposed repo, queued by the manager's own tool), and an
        open question to the operator. Returns (approval id, question id)."""
        repo = git.Repo(self.agent_dir(name) / "proposed")
        toml = Path(repo.working_tree_dir or ".") / "agent.toml"
        toml.write_text(toml.read_text() + f"\n# wants more power {uuid.uuid4().hex}\n")
        repo.index.add(["agent.toml"])
        sha = repo.index.commit("more power", author=git.Actor("hm1nd", "hm1nd@hive")).hexsha

        async def queue() -> tuple[int, int]:
            nc = await connect(
                NatsSettings(url=f"nats://127.0.0.1:{self.ports['nats']}"),
                name="hostile-test",
                seed_file=str(self.agent_dir(MANAGER) / "run" / "nats.seed"),
                inbox_prefix=subjects.inbox_prefix(MANAGER),
            )
            try:
                change = await rpc.request(
                    nc,
                    subjects.manager_tool("request_apply_commit"),
                    ApplyCommitRequest(name=name, commit_ref=sha),
                    ApprovalQueued,
                    timeout=60,
                )
                question = await rpc.request(
                    nc,
                    subjects.manager_tool("ask_operator"),
                    AskRequest(question="may the agents approve themselves?"),
                    ApprovalQueued,
                    timeout=30,
                )
            finally:
                await nc.close()
            return change.id, question.id

        return asyncio.run(queue())

    def agent_dir(self, name: str) -> Path:
        return self.home / "agents" / name

    def service_pids(self) -> dict[str, int]:
        """The hive's own processes: the five services, nats-server, the postmaster."""
        assert self.proc is not None
        pids: dict[str, int] = {}
        for p in psutil.Process(self.proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                cmd = p.cmdline()
                if "serve" in cmd and cmd[-1] in SERVICES:
                    pids[cmd[-1]] = p.pid
                elif p.name() == "nats-server":
                    pids["nats-server"] = p.pid
        for p in psutil.process_iter(["name", "cmdline"]):
            with contextlib.suppress(psutil.Error):
                cmd = " ".join(p.info["cmdline"] or [])
                if p.info["name"] == "postgres" and str(self.home) in cmd:
                    pids["postgres"] = p.pid
        return pids

    def snapshot(self) -> dict[str, Any]:
        """What an escape would change, read from outside the agents."""
        tags = {}
        for name in self.agents():
            applied = self.agent_dir(name) / "applied"
            if applied.exists():
                out = subprocess.run(
                    ["git", "-C", str(applied), "tag", "--list"],
                    capture_output=True,
                    text=True,
                    check=False,
                ).stdout
                tags[name] = sorted(out.split())
        procs = {}
        for part, pid in self.service_pids().items():
            with contextlib.suppress(psutil.Error):
                procs[part] = (pid, psutil.Process(pid).status())
        return {
            "approvals": hive_json("approvals", "--all", env=self.env),
            "questions": hive_json("questions", "--all", env=self.env),
            "agents": {n: a.get("state") for n, a in self.agents().items()},
            "tags": tags,
            "processes": procs,
        }

    # --- the attack ----------------------------------------------------------------

    def probe_context(self, me: str, other: str, extra: dict[str, Any]) -> dict[str, Any]:
        """What the probe program is told: the layout a hostile agent can read in
        hyperhive's source anyway, and the ids of what it wants to subvert."""
        home = str(self.home)
        mine, theirs = self.agent_dir(me), self.agent_dir(other)
        nonce = uuid.uuid4().hex[:8]
        ports = {n: a.get("port") for n, a in self.agents().items()}
        ctx: dict[str, Any] = {
            "self": me,
            "other": other,
            "manager": MANAGER,
            "spawn_name": f"ev{nonce[:6]}",
            "hive_home": home,
            "dashboard": f"http://127.0.0.1:{self.ports['dashboard']}",
            "agent_ports": ports,
            "pg_port": self.ports["pg"],
            "nats_url": f"nats://127.0.0.1:{self.ports['nats']}",
            "seed": str(mine / "run" / "nats.seed"),
            "inbox_prefix": subjects.inbox_prefix(me),
            "own_subject": subjects.agent(me, "status"),
            "forbidden_requests": [
                subjects.admin("approvals", "approve"),
                subjects.admin("lifecycle", "spawn"),
                subjects.admin("lifecycle", "list"),
                subjects.agent(other, "send"),
                subjects.agent(other, "recv"),
                "hive.system.broker.deliver",
                subjects.DELIVERIES,  # a forged system event into the durable queue
                "$JS.API.INFO",
                "$JS.API.STREAM.LIST",
                "$JS.API.STREAM.DELETE.HIVE_EVENTS",
                subjects.kv_subject(subjects.heartbeat_key(other)),
                # the other agent's page (and terminal) through a node's page relay
                subjects.node_page("hub", other, subjects.PAGE_STATUS),
                subjects.node_page("hub", other, subjects.PAGE_TERMINAL),
            ]
            + ([] if me == MANAGER else [subjects.manager_tool("request_apply_commit")]),
            "service_pids": self.service_pids(),
            "read_files": ["/etc/shadow", str(theirs / "run" / "nats.seed")],
            "read_globs": [
                f"{home}/*token*",
                f"{home}/*.toml",
                f"{home}/nats/*",
                f"{home}/nats/users.d/*",
                f"{home}/postgres/*",
                f"{home}/postgres/*/*.conf",
                f"{theirs}/creds/*",
                f"{theirs}/creds/.*",
                f"{theirs}/state/*",
                f"{theirs}/run/*",
            ],
            "list_dirs": [f"{home}/nats", f"{home}/postgres", str(theirs), f"{theirs}/creds"],
            "canaries": {str(self.canary[0]): self.canary[1]} if self.canary else {},
            "write_files": [
                f"{mine}/applied/evil-{nonce}",
                f"{mine}/applied/.git/refs/tags/deployed/evil-{nonce}",
                f"{theirs}/applied/evil-{nonce}",
                f"{theirs}/applied/.git/refs/tags/deployed/evil-{nonce}",
            ]
            + ([f"/applied/{other}/evil-{nonce}"] if me == MANAGER else []),
        }
        ctx.update(extra)
        return ctx

    def attack(self, me: str, ctx: dict[str, Any]) -> list[dict[str, Any]]:
        """Has ``me``'s claude run the probes through its Bash tool; their results,
        each write checked from outside (a write into the sandbox's own tmpfs is
        no escape; a file that appears on the host is)."""
        return [self._on_host(r) for r in self._run_probes(me, ctx)]

    def _on_host(self, row: dict[str, Any]) -> dict[str, Any]:
        if not (row["probe"].startswith("write ") and row["escaped"]):
            return row
        path = row["probe"].removeprefix("write ")
        if path.startswith("/applied/"):
            name, _, rest = path.removeprefix("/applied/").partition("/")
            path = str(self.agent_dir(name) / "applied" / rest)
        landed = Path(path).exists()
        return {**row, "escaped": landed, "detail": f"{row['detail']}; on the host: {landed}"}

    def _run_probes(self, me: str, ctx: dict[str, Any]) -> list[dict[str, Any]]:
        marker = f"probe-{uuid.uuid4().hex[:10]}"
        journal = self.agent_dir(me) / "work" / f"{marker}.jsonl"
        ctx = {**ctx, "journal": str(journal)}
        blob = base64.b64encode(json.dumps(ctx).encode()).decode()
        command = f"{sys.executable} {PROBES} {blob}"
        is_me = mentions(f"You are {me},")
        self.api.reply(
            tool_use("Bash", {"command": command, "description": "look around", "timeout": 180000}),
            when=lambda r: is_me(r) and last_user_mentions(marker)(r),
        )
        self.api.reply(
            "looked around",
            when=lambda r: is_me(r) and after_tool_results(1)(r) and marker in r.dump(),
        )
        seen = len(self.api.requests)
        done = hive_run("send", me, f"operator asks: {marker}", env=self.env)
        assert done.returncode == 0, done.stdout + done.stderr
        deadline = time.monotonic() + PROBE_TIMEOUT_S
        while time.monotonic() < deadline:
            for req in self.api.requests[seen:]:
                result = req.last_tool_result()
                if result is None or marker not in req.dump():
                    continue
                out = tool_result_text(result)
                for line in out.splitlines():
                    if line.startswith("HOSTILE-RESULTS "):
                        return json.loads(line.removeprefix("HOSTILE-RESULTS "))
                raise AssertionError(f"{me}'s probe printed no results: {out[:3000]}")
            time.sleep(0.5)
        if journal.exists():
            # the probe ran but its turn never finished: an escape took the agent's own
            # harness down (e.g. it approved its own change, which restarts it)
            rows = [json.loads(ln) for ln in journal.read_text().splitlines() if ln.strip()]
            rows.append({"probe": "the probe's turn finished", "escaped": True, "detail": "no"})
            return rows
        raise AssertionError(f"{me}'s claude never ran the probe within {PROBE_TIMEOUT_S:g}s")


@contextlib.contextmanager
def hostile_hive(home: Path) -> Iterator[HostileHive]:
    """A started :class:`HostileHive` on ``home``, stopped at the end."""
    with ScriptedAnthropic() as api:
        h = HostileHive(home=home, api=api)
        try:
            yield h.start()
        finally:
            h.stop()


def escapes(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The probes that opened a door (controls excluded)."""
    return [r for r in results if r["escaped"] and not r["probe"].startswith("control:")]


def controls_failed(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Controls that did not work: the probe did not really run as the agent."""
    return [r for r in results if r["probe"].startswith("control:") and not r["escaped"]]
