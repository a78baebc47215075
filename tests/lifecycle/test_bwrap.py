"""The process backend under bubblewrap: an agent sees only its own files."""

from __future__ import annotations

import itertools
import os
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from hyperhive.approvals import gitops
from hyperhive.common import rpc, subjects
from hyperhive.common.config import Settings, load_settings
from hyperhive.common.paths import AgentPaths
from hyperhive.common.wire.approvals import (
    ApplyCommitRequest,
    ApprovalIdRequest,
    ApprovalInfo,
    ApprovalQueued,
    SpawnCommitRequest,
    SpawnToolRequest,
)
from hyperhive.common.wire.lifecycle import DraftInfo, DraftRequest
from hyperhive.harness import config as harness_config
from hyperhive.harness.prompt import system_prompt
from hyperhive.lifecycle.backends.base import AgentSpec
from hyperhive.lifecycle.backends.process import ProcessBackend
from tests import rig
from tests.lifecycle.conftest import lifecycle_settings
from tests.lifecycle.helpers import Operator, serving
from tests.rig import cleanup_agents

PROBE = (
    'sh -c \'for f in "$PROBE_SERVICE_SEED" "$PROBE_OTHER_SEED" "$PROBE_OTHER_STATE" '
    '"$HIVE_NATS_SEED_FILE" "$HIVE_HARNESS_CONFIG_DIR/agent.toml"; do '
    'if cat "$f" >/dev/null 2>&1; then echo "readable $f"; else echo "hidden $f"; fi; done; '
    'if touch "$HIVE_HARNESS_STATE_DIR/w" 2>/dev/null; then echo state-writable; fi; '
    'if touch "$HIVE_HARNESS_CONFIG_DIR/w" 2>/dev/null; then echo config-writable; fi; '
    "echo probe-done; exec sleep 3600'"
)


# as root: harnesses as root (capabilities dropped), or as the agent user
AGENT_USERS = pytest.mark.parametrize(
    "agent_user", ["", *(["hyperhive-agent"] if os.geteuid() == 0 else [])]
)


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bwrap not installed")
@AGENT_USERS
async def test_agent_under_bwrap_sees_only_its_own_dirs(
    nats_server, database_url, hive_home, operator_nc, monkeypatch, agent_user
):
    settings = lifecycle_settings(
        nats_server,
        database_url,
        hive_home,
        HIVE_LIFECYCLE_USE_BWRAP="true",
        HIVE_LIFECYCLE_HARNESS_COMMAND=PROBE,
        HIVE_LIFECYCLE_AGENT_USER=agent_user,
    )
    other = AgentPaths.of(settings, "other")
    monkeypatch.setenv("PROBE_SERVICE_SEED", str(nats_server.service_seed))
    monkeypatch.setenv("PROBE_OTHER_SEED", str(other.nats_seed))
    monkeypatch.setenv("PROBE_OTHER_STATE", str(other.state / "notes.md"))
    op = Operator(operator_nc)
    try:
        async with serving("lifecycle", settings, operator_nc):
            await op.spawn("other")
            (other.state / "notes.md").write_text("private")
            await op.spawn("boxed")
            log = AgentPaths.of(settings, "boxed").log_file
            await rig.eventually(lambda: "probe-done" in log.read_text(), what="probe")
            out = log.read_text()
            boxed = AgentPaths.of(settings, "boxed")
            assert f"hidden {nats_server.service_seed}" in out
            assert f"hidden {other.nats_seed}" in out
            assert f"hidden {other.state / 'notes.md'}" in out
            assert f"readable {boxed.nats_seed}" in out
            assert f"readable {boxed.applied / 'agent.toml'}" in out
            assert "state-writable" in out
            assert "config-writable" not in out  # the deployed config is read-only
    finally:
        cleanup_agents(nats_server, settings.paths.agents_dir)


# --- the manager's view of the other agents ------------------------------------

# A harness that runs the scripts a test drops into its state dir
# (probe-<n>.sh → probe-<n>.done with the output and the exit code): a way to
# run commands inside a running sandbox, with the sandbox's binds as they are.
RUNNER = (
    'sh -c \'while :; do for f in "$HIVE_HARNESS_STATE_DIR"/probe-*.sh; do '
    '[ -e "$f" ] || continue; sh "$f" >"$f.out" 2>&1; echo "rc=$?" >>"$f.out"; '
    'mv "$f.out" "${f%.sh}.done"; rm -f "$f"; done; sleep 0.1; done\''
)
_probes = itertools.count()
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bwrap not installed")


async def in_sandbox(state_dir: Path, script: str) -> tuple[int, str]:
    """Runs ``script`` inside the running harness whose state dir this is."""
    n = next(_probes)
    tmp = state_dir / f".probe-{n}.tmp"
    tmp.write_text(script)
    tmp.rename(state_dir / f"probe-{n}.sh")
    done = state_dir / f"probe-{n}.done"
    await rig.eventually(done.exists, timeout=30, what=f"probe {n} ran")
    out, _, rc = done.read_text().rpartition("rc=")
    return int(rc), out


def git_in_box(*args: str) -> str:
    return shlex.join(["git", "-c", "user.name=hm1nd", "-c", "user.email=hm1nd@hive", *args])


async def assert_mirror(box: Path, name: str, settings: Settings, deployed: int, toml: str) -> None:
    """What the issue asks of the manager's view of agent ``name``."""
    p = AgentPaths.of(settings, name)
    rc, out = await in_sandbox(
        box, git_in_box("-C", f"/applied/{name}", "show", f"deployed/{deployed}:agent.toml")
    )
    assert (rc, out) == (0, toml), out
    rc, out = await in_sandbox(
        box, git_in_box("-C", f"/applied/{name}", "log", "--format=%H", "main")
    )
    assert rc == 0 and out.split()[0] == gitops.main_sha(p.applied), out
    # the mirror is read-only: no file, no tag, no moved main
    for write in (
        f"touch /applied/{name}/agent.toml",
        git_in_box("-C", f"/applied/{name}", "tag", "sneaky"),
        git_in_box("-C", f"/applied/{name}", "update-ref", "refs/heads/main", "HEAD~0"),
    ):
        rc, out = await in_sandbox(box, write)
        # as the agent user, the files' modes refuse it before the read-only mount
        refused = "Read-only file system" in out or "Permission denied" in out
        assert rc != 0 and refused, (write, out)
    assert not gitops.tag_sha(p.applied, "sneaky")
    # config and state are the agent's real dirs, writable
    script = f"echo hi > /agents/{name}/state/from-manager && ls /agents/{name}/config"
    rc, out = await in_sandbox(box, script)
    assert rc == 0 and "agent.toml" in out, out
    assert (p.state / "from-manager").read_text() == "hi\n"
    # never the agent's credentials or NATS seed, by any path
    (p.creds / "secret").write_text("login")
    for path in (
        p.creds / "secret",
        p.nats_seed,
        f"/.hive-agents/agents/{name}/creds/secret",
        f"/.hive-agents/agents/{name}/run/nats.seed",
    ):
        rc, out = await in_sandbox(box, f"cat {path}")
        assert rc != 0 and "login" not in out, (path, out)
    for escape in (
        "ls /.hive-agents",
        "chmod 755 /.hive-agents",
        "umount /.hive-agents",
        f"unshare -Urm cat /.hive-agents/agents/{name}/creds/secret",
    ):
        rc, out = await in_sandbox(box, escape)
        assert rc != 0, (escape, out)
    # its own PID namespace: no /proc/<pid>/root of a host process
    rc, out = await in_sandbox(box, f"test -e /proc/{os.getpid()}/root")
    assert rc != 0


@needs_bwrap
@AGENT_USERS
async def test_manager_sandbox_has_the_container_layout(
    nats_server, database_url, hive_home, operator_nc, service_nc, agent_user
):
    settings = lifecycle_settings(
        nats_server,
        database_url,
        hive_home,
        HIVE_LIFECYCLE_AGENT_USER=agent_user,
        HIVE_LIFECYCLE_USE_BWRAP="true",
        HIVE_LIFECYCLE_MANAGER=subjects.MANAGER,
        HIVE_LIFECYCLE_HARNESS_COMMAND=RUNNER,
        HIVE_APPROVALS_NOTIFY_RETRY_S="0.5",
    )
    box = AgentPaths.of(settings, subjects.MANAGER).state
    op = Operator(operator_nc)
    try:
        async with (
            serving("lifecycle", settings, operator_nc),
            rig.running_service("broker", settings),
            rig.running_service("approvals", settings),
        ):
            # created after the manager started: bound into its running sandbox
            await op.spawn("alice")
            async with rig.agent_connection(nats_server, settings, subjects.MANAGER) as manager:
                # the manager edits and commits in /agents/alice/config
                toml = 'model = "from-the-box"\n'
                rc, out = await in_sandbox(
                    box,
                    f"cd /agents/alice/config && printf '{toml}' > agent.toml && "
                    + git_in_box("commit", "-qam", "from the sandbox")
                    + " && git rev-parse HEAD",
                )
                assert rc == 0, out
                sha = out.split()[-1]
                q = await rpc.request(
                    manager,
                    subjects.manager_tool("request_apply_commit"),
                    ApplyCommitRequest(name="alice", commit_ref=sha),
                    ApprovalQueued,
                )
                assert q.fetched_sha == sha
                info = await approve(operator_nc, q.id)
                assert info.state == "deployed", info
                await assert_mirror(box, "alice", settings, q.id, toml)

                # two-step spawn: the draft shows at once (the manager is mid-turn)
                await rpc.request(
                    manager,
                    subjects.manager_tool("request_spawn_draft"),
                    SpawnToolRequest(name="bob"),
                    DraftInfo,
                    timeout=60,
                )
                rc, out = await in_sandbox(
                    box,
                    "echo 'you keep the docs' > /agents/bob/state/notes.md && "
                    f"cd /agents/bob/config && printf '{toml}' > agent.toml && "
                    + git_in_box("commit", "-qam", "bob")
                    + " && git rev-parse HEAD",
                )
                assert rc == 0, out
                q = await rpc.request(
                    manager,
                    subjects.manager_tool("request_spawn_commit"),
                    SpawnCommitRequest(name="bob", commit_ref=out.split()[-1]),
                    ApprovalQueued,
                )
                info = await approve(operator_nc, q.id)
                assert info.state == "deployed", info
                bob = AgentPaths.of(settings, "bob")
                assert (bob.state / "notes.md").read_text() == "you keep the docs\n"
                await assert_mirror(box, "bob", settings, q.id, toml)

            # a restarted manager gets the same view from its start binds
            await op.verb("restart", subjects.MANAGER)
            await assert_mirror(box, "alice", settings, 1, toml)
            await assert_mirror(box, "bob", settings, q.id, toml)
            rc, out = await in_sandbox(box, "ls /agents /applied")
            assert out.split() == ["/agents:", "alice", "bob", "/applied:", "alice", "bob"], out
    finally:
        cleanup_agents(nats_server, settings.paths.agents_dir)


def same_file(a: str | Path, b: str | Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


async def approve(nc, approval_id: int) -> ApprovalInfo:  # type: ignore[no-untyped-def]
    return await rpc.request(
        nc,
        subjects.admin("approvals", "approve"),
        ApprovalIdRequest(id=approval_id),
        ApprovalInfo,
        timeout=60,
    )


async def test_manager_without_bwrap_gets_the_layout_as_symlinks(
    nats_server, database_url, hive_home, operator_nc, service_nc
):
    """No sandbox, no isolation, but the manager is told paths that exist."""
    settings = lifecycle_settings(
        nats_server, database_url, hive_home, HIVE_LIFECYCLE_MANAGER=subjects.MANAGER
    )
    op = Operator(operator_nc)
    mpaths = AgentPaths.of(settings, subjects.MANAGER)
    view = mpaths.root / "view"
    try:
        async with serving("lifecycle", settings, operator_nc):
            await op.spawn("alice")  # after the manager started
            await rpc.request(
                service_nc,
                subjects.system("lifecycle", "draft"),
                DraftRequest(name="bob"),
                DraftInfo,
                timeout=60,
            )
            env = ProcessBackend(settings).environment(
                AgentSpec(name=subjects.MANAGER, port=1, manager=True, paths=mpaths)
            )
            assert "HIVE_HARNESS_AGENTS_DIR" not in env
            prompt = system_prompt(harness_config.resolve(load_settings(env, config_file=None)))
            shown = {
                f"{view}/agents/<name>/config": "proposed",
                f"{view}/agents/<name>/state": "state",
                f"{view}/applied/<name>": "applied",
            }
            for template, real in shown.items():
                assert template in prompt, (template, prompt)
                for name in ("alice", "bob"):
                    path = template.replace("<name>", name)
                    target = settings.paths.agents_dir / name / real
                    assert same_file(path, target), (path, target)
            assert f"git -C {view}/applied/<name> show deployed/<id>" in prompt
            assert not (view / "agents" / "alice" / "creds").exists()

            # a destroyed agent's links go at the manager's next start
            await op.destroy("alice")
            await op.verb("restart", subjects.MANAGER)
            assert sorted(p.name for p in (view / "applied").iterdir()) == ["bob"]
    finally:
        cleanup_agents(nats_server, settings.paths.agents_dir)


GRACEFUL = (
    'sh -c \'trap "sleep 0.5; echo graceful-exit; exit 0" TERM; echo ready; '
    "while :; do sleep 0.1; done'"
)


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bwrap not installed")
async def test_stop_under_bwrap_lets_the_harness_finish_its_graceful_stop(
    nats_server, database_url, hive_home, operator_nc
):
    # bwrap forwards no signal: stop must reach the harness inside, and wait
    # for it, instead of taking the outer bwrap's end for the harness's
    settings = lifecycle_settings(
        nats_server,
        database_url,
        hive_home,
        HIVE_LIFECYCLE_USE_BWRAP="true",
        HIVE_LIFECYCLE_HARNESS_COMMAND=GRACEFUL,
    )
    op = Operator(operator_nc)
    try:
        async with serving("lifecycle", settings, operator_nc):
            await op.spawn("gentle")
            log = AgentPaths.of(settings, "gentle").log_file
            await rig.eventually(lambda: "ready" in log.read_text(), what="harness ready")
            await op.verb("stop", "gentle")
            assert "graceful-exit" in log.read_text()
    finally:
        cleanup_agents(nats_server, settings.paths.agents_dir)


# --- the agent pages' sockets -----------------------------------------------------

# connects to each socket given; prints "connected <path>" or "refused <path> <errno>"
CONNECT = (
    "import socket, sys\n"
    "for p in sys.argv[1:]:\n"
    "    s = socket.socket(socket.AF_UNIX)\n"
    "    try:\n"
    "        s.connect(p)\n"
    "        print('connected', p)\n"
    "    except OSError as e:\n"
    "        print('refused', p, e.errno)\n"
)


@needs_bwrap
async def test_each_agent_reaches_only_its_own_page_socket(
    nats_server, database_url, hive_home, operator_nc
):
    """An agent (and the manager, which sees other agents' config and state)
    can neither see nor connect to another agent's page socket, by its host
    path or through the manager's /agents view; its own works."""
    settings = lifecycle_settings(
        nats_server,
        database_url,
        hive_home,
        HIVE_LIFECYCLE_USE_BWRAP="true",
        HIVE_LIFECYCLE_MANAGER=subjects.MANAGER,
        HIVE_LIFECYCLE_HARNESS_COMMAND=RUNNER,
    )
    op = Operator(operator_nc)
    try:
        async with serving("lifecycle", settings, operator_nc):
            await op.spawn("alice")
            await op.spawn("bob")
            paths = {n: AgentPaths.of(settings, n) for n in ("alice", "bob", subjects.MANAGER)}
            for p in paths.values():  # lifecycle bound them on the host: they are there
                await rig.eventually(p.page_socket.is_socket, what=f"{p.name}'s page socket")
            for prober in ("alice", subjects.MANAGER):
                own = paths[prober].page_socket
                others = [p.page_socket for n, p in paths.items() if n != prober]
                box = paths[prober].state
                argv = [shlex.quote(str(s)) for s in (own, *others, "/agents/bob/run/page.sock")]
                rc, out = await in_sandbox(
                    box, f"{shlex.quote(sys.executable)} -c {shlex.quote(CONNECT)} {' '.join(argv)}"
                )
                assert rc == 0 and f"connected {own}" in out, out
                for other in others:
                    assert f"refused {other}" in out and f"connected {other}" not in out, out
                    rc, listing = await in_sandbox(box, f"ls -la {shlex.quote(str(other.parent))}")
                    assert rc != 0 or "page.sock" not in listing, listing
                # the whole data dir, as the sandbox sees it: one page socket, its own
                home = shlex.quote(settings.paths.home)
                rc, found = await in_sandbox(box, f"find {home} -name page.sock 2>/dev/null; true")
                assert found.split() == [str(own)], found
            # the manager sees bob's config and state, never his run dir
            rc, out = await in_sandbox(paths[subjects.MANAGER].state, "ls -a /agents/bob")
            assert rc == 0 and set(out.split()) == {".", "..", "config", "state"}, out
    finally:
        cleanup_agents(nats_server, settings.paths.agents_dir)
