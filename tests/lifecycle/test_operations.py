"""Lifecycle operations that can go wrong: concurrency, failed builds, restarts."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal

import git
import pytest

from hyperhive.common import rpc, subjects
from hyperhive.common.errors import BackendFailed, Conflict, HiveError
from hyperhive.common.paths import AgentPaths
from hyperhive.common.wire.base import Empty
from hyperhive.common.wire.lifecycle import (
    AgentInfo,
    ApplyReply,
    ApplyRequest,
    CreateRequest,
    DraftInfo,
    DraftRequest,
    DraftsReply,
    LogsReply,
    LogsRequest,
)
from hyperhive.lifecycle import creds
from tests import rig
from tests.lifecycle.conftest import lifecycle_settings
from tests.lifecycle.helpers import Events, Operator, harness_pid, pid_alive, serving, wait_dead
from tests.rig import cleanup_agents


async def test_concurrent_operations_never_interleave(lc_settings, operator_nc, service_nc):
    events = await Events().start(service_nc)
    op = Operator(operator_nc)
    async with serving("lifecycle", lc_settings, operator_nc):
        await op.spawn("conc")
        verbs = ["stop", "start", "restart", "kill", "start", "restart", "stop", "start"] * 2
        results = await asyncio.gather(*(op.verb(v, "conc") for v in verbs), return_exceptions=True)
        for r in results:
            assert isinstance(r, AgentInfo | HiveError), r
        # each event continues from the one before: no operation saw another's middle
        final = (await op.list())["conc"]
        await rig.eventually(
            lambda: any(
                e.data["seq"] == final.state_seq for e in events.of("conc", subjects.EV_AGENT_STATE)
            ),
            what="last event",
        )
        states = events.of("conc", subjects.EV_AGENT_STATE)
        seqs = [e.data["seq"] for e in states]
        assert seqs == sorted(seqs)
        for before, after in itertools.pairwise(states):
            assert after.data["previous"] == before.data["state"], (before.data, after.data)
        # the registry agrees with the process table
        pid_file = AgentPaths.of(lc_settings, "conc").pid_file
        if final.state == "running":
            assert pid_alive(harness_pid(lc_settings, "conc"))
        else:
            assert final.state == "stopped" and not pid_file.exists()
        # only one harness process for the agent, whatever the order was
        assert _harness_count(lc_settings, "conc") == (1 if final.state == "running" else 0)
    await events.stop()


def _harness_count(settings, name: str) -> int:  # type: ignore[no-untyped-def]
    import psutil

    workdir = str(AgentPaths.of(settings, name).workdir)
    count = 0
    for p in psutil.process_iter(["cwd", "cmdline", "status"]):
        try:
            if p.info["cwd"] == workdir and p.info["status"] != psutil.STATUS_ZOMBIE:
                count += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return count


async def test_second_operation_gets_conflict_when_busy_too_long(
    nats_server, database_url, hive_home, operator_nc
):
    # a harness that ignores SIGTERM makes ``stop`` take the whole stop timeout
    settings = lifecycle_settings(
        nats_server,
        database_url,
        hive_home,
        HIVE_LIFECYCLE_HARNESS_COMMAND="sh -c 'trap \"\" TERM; while :; do sleep 0.2; done'",
        HIVE_LIFECYCLE_STOP_TIMEOUT_S="4",
        HIVE_LIFECYCLE_OP_WAIT_S="0.5",
    )
    op = Operator(operator_nc)
    try:
        async with serving("lifecycle", settings, operator_nc):
            await op.spawn("slow")
            stopping = asyncio.create_task(op.verb("stop", "slow"))
            await rig.eventually(lambda: _busy(op, "slow"), what="stop under way", timeout=10)
            with pytest.raises(Conflict, match="busy"):
                await op.verb("start", "slow")
            info = await stopping
            assert info.state == "stopped"  # SIGKILL after the timeout
    finally:
        cleanup_agents(nats_server, settings.paths.agents_dir)


async def _busy(op: Operator, name: str) -> bool:
    return (await op.list())[name].flag == "Stopping"


async def test_failing_harness_command_leaves_registry_consistent(
    nats_server, database_url, hive_home, operator_nc
):
    settings = lifecycle_settings(
        nats_server,
        database_url,
        hive_home,
        HIVE_LIFECYCLE_HARNESS_COMMAND="sh -c 'echo harness-boom-output >&2; exit 3'",
    )
    op = Operator(operator_nc)
    try:
        async with serving("lifecycle", settings, operator_nc):
            with pytest.raises(BackendFailed) as err:
                await op.spawn("boom")
            assert "harness-boom-output" in str(err.value)
            assert "exit code 3" in str(err.value)
            assert "boom" not in await op.list()
            assert not creds.has_user(settings, "boom")
            paths = AgentPaths.of(settings, "boom")
            assert not paths.proposed.exists() and not paths.nats_seed.exists()
            listed = await op.list(include_destroyed=True)
            assert listed["boom"].state == "destroyed"
            assert "harness-boom-output" in listed["boom"].error
            # its state dir was empty: no kept state (as after a destroy)
            assert not listed["boom"].kept_state and not paths.root.exists()
            assert "boom" not in await op.kept()

            # a state kept from an earlier life survives a failed create, and is listed
            paths.state.mkdir(parents=True)
            (paths.state / "notes.md").write_text("old notes")
            with pytest.raises(BackendFailed, match="harness-boom-output"):
                await op.spawn("boom")
            assert (paths.state / "notes.md").read_text() == "old notes"
            assert (await op.list(include_destroyed=True))["boom"].kept_state
            assert (await op.kept())["boom"] == len("old notes")
    finally:
        cleanup_agents(nats_server, settings.paths.agents_dir)

    # a command that does not exist at all
    settings2 = lifecycle_settings(
        nats_server,
        database_url,
        hive_home,
        HIVE_LIFECYCLE_HARNESS_COMMAND="/nonexistent/harness serve",
    )
    try:
        async with serving("lifecycle", settings2, operator_nc):
            with pytest.raises(BackendFailed, match="/nonexistent/harness"):
                await op.spawn("boom2")
            assert "boom2" not in await op.list()
    finally:
        cleanup_agents(nats_server, settings2.paths.agents_dir)


async def test_apply_validates_before_restarting(lc_settings, operator_nc, service_nc):
    op = Operator(operator_nc)
    async with serving("lifecycle", lc_settings, operator_nc):
        await op.spawn("conf")
        paths = AgentPaths.of(lc_settings, "conf")
        pid = harness_pid(lc_settings, "conf")
        good = (paths.applied / "agent.toml").read_text()

        async def apply() -> ApplyReply:
            return await rpc.request(
                service_nc,
                subjects.system("lifecycle", "apply"),
                ApplyRequest(name="conf"),
                ApplyReply,
                timeout=30,
            )

        # approvals moved the working tree to a broken config
        (paths.applied / "agent.toml").write_text('model = 5\nallowed_tools = "Bash"\nbogus = 1\n')
        reply = await apply()
        assert not reply.ok
        assert "model must be a string" in reply.error
        assert "allowed_tools must be a list of strings" in reply.error
        assert "unknown keys: bogus" in reply.error
        assert harness_pid(lc_settings, "conf") == pid and pid_alive(pid)  # untouched
        assert (await op.list())["conf"].state == "running"

        (paths.applied / "agent.toml").write_text("not = [valid toml")
        reply = await apply()
        assert not reply.ok and "not valid TOML" in reply.error

        # a good config restarts the harness
        (paths.applied / "agent.toml").write_text(
            good + '\n[mcp_servers.extra]\ncommand = "extra-mcp"\nargs = ["-v"]\n'
        )
        reply = await apply()
        assert reply.ok, reply.error
        assert harness_pid(lc_settings, "conf") != pid
        await wait_dead(pid)

        # the update verb reports a bad config as a failed build
        (paths.applied / "agent.nix").unlink()
        with pytest.raises(BackendFailed, match=r"agent\.nix is missing"):
            await op.verb("update", "conf")
        assert (await op.list())["conf"].state == "running"


async def test_restart_of_lifecycle_adopts_running_harnesses(lc_settings, operator_nc):
    op = Operator(operator_nc)
    async with serving("lifecycle", lc_settings, operator_nc):
        await op.spawn("adopt")
        await op.spawn("dead")
        pid = harness_pid(lc_settings, "adopt")
        dead_pid = harness_pid(lc_settings, "dead")
    assert pid_alive(pid)  # harnesses survive lifecycle stopping
    os.kill(dead_pid, signal.SIGKILL)  # dies while lifecycle is down
    await wait_dead(dead_pid)
    async with serving("lifecycle", lc_settings, operator_nc):
        agents = await op.list()
        assert agents["adopt"].state == "running"
        assert harness_pid(lc_settings, "adopt") == pid  # adopted, not restarted
        assert _harness_count(lc_settings, "adopt") == 1
        # the one that died is started again, since it should be running
        assert agents["dead"].state == "running"
        assert harness_pid(lc_settings, "dead") != dead_pid
        # the adopted harness is still watched and controlled
        await op.verb("stop", "adopt")
        await wait_dead(pid)


async def test_auto_update_rebuilds_stale_agents(nats_server, database_url, hive_home, operator_nc):
    old = lifecycle_settings(nats_server, database_url, hive_home, HIVE_LIFECYCLE_REV="rev-old")
    new = lifecycle_settings(nats_server, database_url, hive_home, HIVE_LIFECYCLE_REV="rev-new")
    op = Operator(operator_nc)
    try:
        async with serving("lifecycle", old, operator_nc):
            await op.spawn("stale")
            pid = harness_pid(old, "stale")
        async with serving("lifecycle", new, operator_nc):
            info = await rig.eventually(
                lambda: _rev_is(op, "stale", "rev-new"), what="rebuilt", timeout=20
            )
            assert not info.stale
            assert harness_pid(new, "stale") != pid
            await wait_dead(pid)
    finally:
        cleanup_agents(nats_server, new.paths.agents_dir)


async def test_a_destroyed_manager_comes_back_at_the_next_auto_update_pass(
    nats_server, database_url, hive_home, operator_nc
):
    settings = lifecycle_settings(
        nats_server,
        database_url,
        hive_home,
        HIVE_LIFECYCLE_MANAGER="hm1nd",
        HIVE_LIFECYCLE_AUTO_UPDATE_INTERVAL_S="1",
    )
    op = Operator(operator_nc)
    try:
        async with serving("lifecycle", settings, operator_nc):
            first = (await op.list())["hm1nd"]
            assert first.state == "running" and first.kind == "manager"
            pid = harness_pid(settings, "hm1nd")
            paths = AgentPaths.of(settings, "hm1nd")
            (paths.state / "notes.md").write_text("manager notes")
            await op.destroy("hm1nd")  # the operator may do this
            await wait_dead(pid)
            again = await rig.eventually(
                lambda: _running_since(op, "hm1nd", first.state_seq), what="manager back"
            )
            assert again.kind == "manager" and again.port == settings.lifecycle.manager_port
            assert harness_pid(settings, "hm1nd") != pid
            assert (paths.state / "notes.md").read_text() == "manager notes"  # kept state
    finally:
        cleanup_agents(nats_server, settings.paths.agents_dir)


async def _running_since(op: Operator, name: str, seq: int) -> AgentInfo | None:
    info = (await op.list()).get(name)
    return info if info is not None and info.state == "running" and info.state_seq > seq else None


async def _rev_is(op: Operator, name: str, rev: str) -> AgentInfo | None:
    info = (await op.list())[name]
    return info if info.rev == rev else None


async def test_draft_then_create_from_commit(lc_settings, operator_nc, service_nc):
    events = await Events().start(service_nc)
    op = Operator(operator_nc)
    async with serving("lifecycle", lc_settings, operator_nc):
        draft = await rpc.request(
            service_nc,
            subjects.system("lifecycle", "draft"),
            DraftRequest(name="drafty"),
            DraftInfo,
        )
        paths = AgentPaths.of(lc_settings, "drafty")
        assert draft.head == git.Repo(paths.proposed).head.commit.hexsha
        applied = git.Repo(paths.applied)
        assert not applied.head.is_valid()  # no commits yet
        assert paths.state.is_dir()
        assert "drafty" not in await op.list()  # drafts are not agents yet
        drafts = await rpc.request(
            operator_nc, subjects.admin("lifecycle", "drafts"), Empty(), DraftsReply
        )
        assert [d.name for d in drafts.drafts] == ["drafty"]
        with pytest.raises(Conflict, match="draft"):
            await op.verb("start", "drafty")
        with pytest.raises(Conflict):
            await rpc.request(
                service_nc,
                subjects.system("lifecycle", "draft"),
                DraftRequest(name="drafty"),
                DraftInfo,
            )

        # the manager commits a config; approvals fetches and checks it out
        proposed = git.Repo(paths.proposed)
        (paths.proposed / "agent.toml").write_text('model = "claude-test"\n')
        proposed.index.add(["agent.toml"])
        sha = proposed.index.commit("drafty: model").hexsha
        applied.git.fetch(str(paths.proposed), sha)
        applied.git.checkout(sha)

        info = await rpc.request(
            service_nc,
            subjects.system("lifecycle", "create"),
            CreateRequest(name="drafty", sha=sha),
            AgentInfo,
            timeout=30,
        )
        assert info.state == "running"
        assert (paths.applied / "agent.toml").read_text() == 'model = "claude-test"\n'
        assert not applied.heads  # main is approvals' to create after success
        drafts = await rpc.request(
            operator_nc, subjects.admin("lifecycle", "drafts"), Empty(), DraftsReply
        )
        assert drafts.drafts == []
        await rig.eventually(lambda: events.of("drafty", subjects.EV_AGENT_DRAFT), what="draft ev")

        # a failing build of a draft leaves the draft as it was
        await rpc.request(
            service_nc,
            subjects.system("lifecycle", "draft"),
            DraftRequest(name="drafty2"),
            DraftInfo,
        )
        p2 = AgentPaths.of(lc_settings, "drafty2")
        a2 = git.Repo(p2.applied)
        pr2 = git.Repo(p2.proposed)
        (p2.proposed / "agent.toml").write_text("model = 1\n")
        pr2.index.add(["agent.toml"])
        bad = pr2.index.commit("bad").hexsha
        a2.git.fetch(str(p2.proposed), bad)
        a2.git.checkout(bad)
        with pytest.raises(BackendFailed, match="model must be a string"):
            await rpc.request(
                service_nc,
                subjects.system("lifecycle", "create"),
                CreateRequest(name="drafty2", sha=bad),
                AgentInfo,
                timeout=30,
            )
        drafts = await rpc.request(
            operator_nc, subjects.admin("lifecycle", "drafts"), Empty(), DraftsReply
        )
        assert [d.name for d in drafts.drafts] == ["drafty2"]
        assert p2.proposed.is_dir() and not creds.has_user(lc_settings, "drafty2")
    await events.stop()


async def test_ports_are_distinct_and_exhaustion_is_clear(
    nats_server, database_url, hive_home, operator_nc
):
    settings = lifecycle_settings(
        nats_server, database_url, hive_home, HIVE_LIFECYCLE_PORT_COUNT="2"
    )
    op = Operator(operator_nc)
    try:
        async with serving("lifecycle", settings, operator_nc):
            a = await op.spawn("pa")
            b = await op.spawn("pb")
            assert {a.port, b.port} == {20100, 20101}
            with pytest.raises(Conflict, match="no free agent port"):
                await op.spawn("pc")
            assert "pc" not in await op.list()
            await op.destroy("pa")
            c = await op.spawn("pc")  # the freed port is reused
            assert c.port == a.port
    finally:
        cleanup_agents(nats_server, settings.paths.agents_dir)


async def test_logs_tail_and_follow(nats_server, database_url, hive_home, operator_nc):
    settings = lifecycle_settings(
        nats_server,
        database_url,
        hive_home,
        HIVE_LIFECYCLE_HARNESS_COMMAND=(
            "sh -c 'for i in 1 2 3 4 5; do echo line-$i; done; "
            "while [ ! -f more ]; do sleep 0.1; done; echo line-6; exec sleep 3600'"
        ),
    )
    op = Operator(operator_nc)

    async def logs(**kw: object) -> LogsReply:
        return await rpc.request(
            operator_nc,
            subjects.admin("lifecycle", "logs"),
            LogsRequest(name="logger", **kw),
            LogsReply,
        )

    try:
        async with serving("lifecycle", settings, operator_nc):
            await op.spawn("logger")
            tail = await rig.eventually(lambda: _has(logs(lines=3), "line-5"), what="log lines")
            assert tail.lines == ["line-3", "line-4", "line-5"]
            (AgentPaths.of(settings, "logger").workdir / "more").write_text("")
            more = await rig.eventually(
                lambda: _has(logs(after=tail.cursor), "line-6"), what="followed line"
            )
            assert more.lines == ["line-6"]
            assert (await logs(after=more.cursor)).lines == []
    finally:
        cleanup_agents(nats_server, settings.paths.agents_dir)


async def _has(reply_coro, text: str) -> LogsReply | None:  # type: ignore[no-untyped-def]
    reply = await reply_coro
    return reply if text in reply.lines else None
