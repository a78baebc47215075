"""Host-level doors, from inside a real agent sandbox (docs/operations.md, threat model).

A harness that runs probe scripts (``RUNNER`` of test_bwrap) stands in for
the agent's tools: each probe runs as the harness runs, with its uid, its
sandbox and its binds. Every probe checks the effect too: the secret's text
is not in the output, the table was not created, the process still lives.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyperhive.approvals import gitops
from hyperhive.cli.embedded import EmbeddedNats, EmbeddedPostgres
from hyperhive.common import rpc, subjects
from hyperhive.common.errors import HiveError
from hyperhive.common.paths import AgentPaths
from hyperhive.common.wire.approvals import ApplyCommitRequest, ApprovalQueued
from hyperhive.lifecycle.backends.base import AgentSpec
from hyperhive.lifecycle.backends.process import ProcessBackend
from tests import rig
from tests.lifecycle.conftest import lifecycle_settings
from tests.lifecycle.helpers import Operator, serving
from tests.lifecycle.test_bwrap import RUNNER, approve, git_in_box, in_sandbox
from tests.rig import cleanup_agents

AGENT_USER = "hyperhive-agent"
NOBODY = 65534  # a normal user, in the test of hive up as one
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="the agent user needs root")
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bwrap not installed")
needs_psql = pytest.mark.skipif(shutil.which("psql") is None, reason="psql not installed")


def _root_file() -> Path | None:
    """A regular file in the host's /root that root can read, if there is one."""
    for entry in sorted(Path("/root").iterdir()):
        if entry.is_file() and not entry.is_symlink() and entry.stat().st_size:
            return entry
    return None


async def _probe_database(box: Path, pg: EmbeddedPostgres, database_url: str) -> None:
    """No session over TCP or the socket, the socket's dir unseen; no table made."""
    sql = "CREATE TABLE escaped (x int)"
    for host in ("127.0.0.1", "localhost", str(pg.socket_dir)):
        rc, out = await in_sandbox(
            box, f"psql -h {host} -p {pg.port} -U hyperhive -d postgres -w -c '{sql}'"
        )
        assert rc != 0 and "CREATE TABLE" not in out, (host, out)
    rc, out = await in_sandbox(box, f"ls -a {pg.socket_dir}")
    assert rc != 0 and ".s.PGSQL" not in out, out
    for url in (pg.url, database_url):
        assert not await rig.table_exists(url, "escaped")


async def _probe_host_secrets(box: Path) -> None:
    rc, out = await in_sandbox(box, "id -u")
    assert rc == 0 and int(out) == pwd.getpwnam(AGENT_USER).pw_uid != 0, out
    rc, out = await in_sandbox(box, "cat /etc/shadow")
    assert rc != 0 and "root:" not in out, out
    secret = _root_file()
    if secret is not None:
        rc, out = await in_sandbox(box, f"cat {secret}")
        assert rc != 0, out
    rc, out = await in_sandbox(box, "touch /root/escaped")
    assert rc != 0 and not _exists("/root/escaped"), out


async def _probe_signals(box: Path, victim: subprocess.Popen[bytes]) -> None:
    for sig in ("KILL", "TERM", "STOP"):
        rc, out = await in_sandbox(box, f"kill -{sig} {victim.pid}; kill -{sig} -{victim.pid}")
        assert rc != 0, out
    assert victim.poll() is None
    assert _proc_state(victim.pid) != "T"  # not stopped either


def _exists(path: str) -> bool:
    return os.path.lexists(path)


def _proc_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@as_root
@needs_bwrap
@needs_psql
async def test_agent_sandbox_closes_the_host_doors(
    nats_server: EmbeddedNats,
    postgres_server: EmbeddedPostgres,
    database_url: str,
    hive_home: Path,
    operator_nc,
    victim,
):
    settings = lifecycle_settings(
        nats_server,
        database_url,
        hive_home,
        HIVE_LIFECYCLE_USE_BWRAP="true",
        HIVE_LIFECYCLE_AGENT_USER=AGENT_USER,
        HIVE_LIFECYCLE_HARNESS_COMMAND=RUNNER,
    )
    op = Operator(operator_nc)
    other = AgentPaths.of(settings, "other")
    boxed = AgentPaths.of(settings, "boxed")
    box = boxed.state
    try:
        async with serving("lifecycle", settings, operator_nc):
            await op.spawn("other")
            (other.state / "notes.md").write_text("other's private notes")
            (other.creds / ".credentials.json").write_text("other's login")
            await op.spawn("boxed")
            await _probe_host_secrets(box)

            # the operator's and the services' seeds, other agents' files
            secrets = {
                nats_server.operator_seed: nats_server.operator_seed.read_text(),
                nats_server.service_seed: nats_server.service_seed.read_text(),
                other.nats_seed: other.nats_seed.read_text(),
                other.state / "notes.md": "other's private notes",
                other.creds / ".credentials.json": "other's login",
            }
            for path, text in secrets.items():
                rc, out = await in_sandbox(box, f"cat {path}")
                assert rc != 0 and text.strip() not in out, (path, out)
            for d in (other.run, other.creds, other.state, settings.paths.agents_dir):
                rc, out = await in_sandbox(box, f"ls -A {d}")
                assert "nats.seed" not in out and "notes.md" not in out, (d, out)
                assert "other" not in out.split(), (d, out)

            # its own: readable seed, writable state, files the agent user's
            rc, out = await in_sandbox(box, f"cat {boxed.nats_seed} && touch {box}/mine")
            assert rc == 0 and boxed.nats_seed.read_text().strip() in out, out
            assert (box / "mine").stat().st_uid == pwd.getpwnam(AGENT_USER).pw_uid

            await _probe_database(box, postgres_server, database_url)
            await _probe_signals(box, victim)
    finally:
        cleanup_agents(nats_server, settings.paths.agents_dir)


@as_root
@needs_psql
async def test_without_bwrap_the_harness_still_drops_root(
    nats_server: EmbeddedNats,
    postgres_server: EmbeddedPostgres,
    database_url: str,
    operator_nc,
    victim,
):
    """No sandbox: the uid alone keeps host secrets, the services' seeds, the
    database and the services' processes closed (other agents are not: they
    share the uid, as the hive up warning says)."""
    home = rig.shared_tempdir("hive-doors-")  # the agent user can pass it
    settings = lifecycle_settings(
        nats_server,
        database_url,
        home,
        HIVE_LIFECYCLE_AGENT_USER=AGENT_USER,
        HIVE_LIFECYCLE_HARNESS_COMMAND=RUNNER,
    )
    op = Operator(operator_nc)
    box = AgentPaths.of(settings, "bare").state
    try:
        async with serving("lifecycle", settings, operator_nc):
            await op.spawn("bare")
            await _probe_host_secrets(box)
            for seed in (nats_server.operator_seed, nats_server.service_seed):
                rc, out = await in_sandbox(box, f"cat {seed}")
                assert rc != 0 and seed.read_text().strip() not in out, out
            await _probe_database(box, postgres_server, database_url)
            await _probe_signals(box, victim)
    finally:
        cleanup_agents(nats_server, settings.paths.agents_dir)
        shutil.rmtree(home, ignore_errors=True)


@as_root
async def test_without_bwrap_an_unreachable_harness_is_one_line(
    nats_server: EmbeddedNats, database_url: str, tmp_path: Path, operator_nc
):
    """pytest's tmp dir is 0700 root: the agent user cannot reach a home there."""
    settings = lifecycle_settings(
        nats_server,
        database_url,
        tmp_path / "home",
        HIVE_LIFECYCLE_AGENT_USER=AGENT_USER,
        HIVE_LIFECYCLE_HARNESS_COMMAND=RUNNER,
    )
    try:
        async with serving("lifecycle", settings, operator_nc):
            with pytest.raises(HiveError) as failed:
                await Operator(operator_nc).spawn("far")
    finally:
        cleanup_agents(nats_server, settings.paths.agents_dir)
    message = str(failed.value)
    assert f"the harness runs as {AGENT_USER} and cannot reach" in message
    assert "install bubblewrap" in message


@pytest.fixture
def tmp_venv() -> Iterator[Path]:
    """A venv under the host's /tmp whose packages are this one's."""
    root = Path(tempfile.mkdtemp(prefix="hive-venv-", dir="/tmp"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    ours = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (Path(site) / "hive-dev.pth").write_text(f"import site; site.addsitedir({ours[0]!r})\n")
    yield venv
    shutil.rmtree(root, ignore_errors=True)


@needs_bwrap
async def test_harness_runs_from_a_venv_under_tmp(
    nats_server: EmbeddedNats, database_url: str, hive_home: Path, operator_nc, tmp_venv: Path
):
    """The sandbox's /tmp is a fresh tmpfs: the venv and a claude installed
    under /tmp (an npm tree: .bin/claude, a symlink into its package) are
    bound back, read-only."""
    package = tmp_venv.parent / "node_modules" / "@anthropic-ai" / "claude-code"
    package.mkdir(parents=True)
    (package / "cli.sh").write_text("#!/bin/sh\necho claude-ok\n")
    (package / "cli.sh").chmod(0o755)
    claude = tmp_venv.parent / "node_modules" / ".bin" / "claude"
    claude.parent.mkdir()
    claude.symlink_to("../@anthropic-ai/claude-code/cli.sh")
    script = (
        "import os, subprocess, sys, time, hyperhive.harness, msgspec; "
        "claude = subprocess.run([os.environ['HIVE_HARNESS_CLAUDE_BIN']], capture_output=True); "
        "print(claude.stdout.decode().strip(), flush=True); "
        "print('venv-ok', os.getuid(), sys.prefix, flush=True); time.sleep(3600)"
    )
    settings = lifecycle_settings(
        nats_server,
        database_url,
        hive_home,
        HIVE_LIFECYCLE_USE_BWRAP="true",
        HIVE_LIFECYCLE_AGENT_USER=AGENT_USER if os.geteuid() == 0 else "",
        HIVE_LIFECYCLE_HARNESS_COMMAND=f'{tmp_venv}/bin/python -c "{script}"',
        HIVE_LIFECYCLE_START_GRACE_S="1.5",
        HIVE_HARNESS_CLAUDE_BIN=str(claude),
    )
    log = AgentPaths.of(settings, "venv").log_file
    try:
        async with serving("lifecycle", settings, operator_nc):
            info = await Operator(operator_nc).spawn("venv")
            assert info.state == "running"
            await rig.eventually(lambda: "venv-ok" in log.read_text(), what="harness runs")
    finally:
        cleanup_agents(nats_server, settings.paths.agents_dir)
    assert "claude-ok" in log.read_text().splitlines()
    line = next(x for x in log.read_text().splitlines() if x.startswith("venv-ok"))
    _, uid, prefix = line.split()
    assert prefix == str(tmp_venv)
    if os.geteuid() == 0:
        assert int(uid) == pwd.getpwnam(AGENT_USER).pw_uid


@as_root
@needs_bwrap
async def test_manager_commits_but_cannot_plant_commands_for_roots_git(
    nats_server: EmbeddedNats, database_url: str, hive_home: Path, operator_nc, tmp_path: Path
):
    """The manager (the agent user) edits a proposed repo that lifecycle and
    approvals (root) run git in: its commits go through, while .git/config,
    .git/hooks and .git/commondir (which could name a config of its own, with
    core.fsmonitor = <command>) stay root's."""
    marker = tmp_path / "ran-as-root"
    settings = lifecycle_settings(
        nats_server,
        database_url,
        hive_home,
        HIVE_LIFECYCLE_USE_BWRAP="true",
        HIVE_LIFECYCLE_AGENT_USER=AGENT_USER,
        HIVE_LIFECYCLE_MANAGER=subjects.MANAGER,
        HIVE_LIFECYCLE_HARNESS_COMMAND=RUNNER,
        HIVE_APPROVALS_NOTIFY_RETRY_S="0.5",
    )
    box = AgentPaths.of(settings, subjects.MANAGER).state
    alice = AgentPaths.of(settings, "alice")
    repo = "/agents/alice/config"
    try:
        async with (
            serving("lifecycle", settings, operator_nc),
            rig.running_service("broker", settings),
            rig.running_service("approvals", settings),
        ):
            await Operator(operator_nc).spawn("alice")
            config_before = (alice.proposed / ".git" / "config").read_bytes()
            await in_sandbox(box, f"mkdir -p {box}/evil && cp -r {repo}/.git/* {box}/evil/")
            (box / "evil-config").write_text(f"[core]\n\tfsmonitor = touch {marker}\n")
            for attempt in (
                git_in_box("-C", repo, "config", "core.fsmonitor", f"touch {marker}"),
                f"echo '[core] fsmonitor = touch {marker}' >> {repo}/.git/config",
                f"mv {repo}/.git/config {repo}/.git/config.old",
                f"rm -f {repo}/.git/config",
                f"echo {box}/evil > {repo}/.git/commondir",
                f"rm -f {repo}/.git/commondir",
                f"mv {repo}/.git/commondir {repo}/.git/c.old",
                f"touch {repo}/.git/hooks/post-merge",
                f"mv {repo}/.git {repo}/git.old",
            ):
                rc, out = await in_sandbox(box, attempt)
                assert rc != 0, (attempt, out)
            assert (alice.proposed / ".git" / "config").read_bytes() == config_before
            assert (alice.proposed / ".git" / "commondir").read_text() == ".\n"
            assert (alice.proposed / ".git" / "commondir").stat().st_uid == 0
            assert not (alice.proposed / ".git" / "hooks" / "post-merge").exists()

            # its commit goes through; root's git reads it and deploys it
            rc, out = await in_sandbox(
                box,
                f"cd {repo} && printf 'model = \"m\"\\n' > agent.toml && "
                + git_in_box("commit", "-qam", "from the manager")
                + " && git status --short && git rev-parse HEAD",
            )
            assert rc == 0, out
            sha = out.split()[-1]
            assert gitops.resolve_commit(alice.proposed, sha) == sha
            async with rig.agent_connection(nats_server, settings, subjects.MANAGER) as nc:
                q = await rpc.request(
                    nc,
                    subjects.manager_tool("request_apply_commit"),
                    ApplyCommitRequest(name="alice", commit_ref=sha),
                    ApprovalQueued,
                )
            assert (await approve(operator_nc, q.id)).state == "deployed"
            assert not marker.exists()
    finally:
        cleanup_agents(nats_server, settings.paths.agents_dir)


@as_root
@needs_bwrap
def test_as_a_normal_user_the_sandbox_hides_hive_home_from_the_same_uid():
    """``hive up`` as a normal user: services and agents share that uid, so the
    sandbox alone hides $HIVE_HOME. The process backend's own bwrap argv,
    run by an unprivileged uid that owns the whole $HIVE_HOME (as a user's
    hive up does), with a probe as the harness."""
    root = rig.shared_tempdir("hive-user-")
    home = root / "home"
    probe = (
        'for f in "$@"; do if cat "$f" >/dev/null 2>&1; then echo "read $f"; '
        'else echo "hidden $f"; fi; done; ls -a "$HIVE_HOME"; echo probe-end'
    )
    settings = rig.make_settings(
        _StandInNats(home / "nats"),
        f"postgresql://hyperhive@/hyperhive?host={home / 'postgres'}&port=5433",
        home,
        HIVE_LIFECYCLE_USE_BWRAP="true",
        HIVE_LIFECYCLE_HARNESS_COMMAND=f"sh -c '{probe}' probe",
    )
    boxed, other = (AgentPaths.of(settings, n) for n in ("boxed", "other"))
    secrets = {
        home / "nats" / "service.seed": "SUSERVICESEED",
        home / "nats" / "operator.seed": "SUOPERATORSEED",
        home / "dashboard-token": "operator-token",
        home / "postgres" / ".s.PGSQL.5433": "socket",
        other.nats_seed: "SUOTHERSEED",
        other.creds / ".credentials.json": "other-login",
        other.state / "notes.md": "other-notes",
        boxed.nats_seed: "SUBOXEDSEED",
    }
    try:
        for path, text in secrets.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        for d in (boxed.state, boxed.creds, boxed.workdir, boxed.applied):
            d.mkdir(parents=True, exist_ok=True)
        subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(home)], check=True)
        backend = ProcessBackend(settings)
        spec = AgentSpec(name="boxed", port=1, manager=False, paths=boxed)
        argv = backend.command(spec)
        assert "setpriv" not in " ".join(argv)  # no agent user: the same uid
        done = subprocess.run(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", *argv]
            + [str(p) for p in secrets],
            env=backend.environment(spec),
            capture_output=True,
            text=True,
            timeout=60,
        )
        out = done.stdout
        assert "probe-end" in out, (done.stdout, done.stderr)
        for path, text in secrets.items():
            if path == boxed.nats_seed:
                assert f"read {path}" in out
            else:
                assert f"hidden {path}" in out and text not in out, (path, out)
        # $HIVE_HOME is an empty tmpfs: only the mount points of what is hidden
        # (empty tmpfs again) or bound back show
        listed = [w for w in out.split("probe-end")[0].splitlines() if " " not in w]
        assert set(listed) <= {".", "..", "agents", "nats"}, out
    finally:
        shutil.rmtree(root, ignore_errors=True)


class _StandInNats(EmbeddedNats):
    """An EmbeddedNats that is never started: only its paths are used."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, 4222)
