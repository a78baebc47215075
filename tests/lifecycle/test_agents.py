"""Lifecycle under the process backend: the registry, files, states, events."""

from __future__ import annotations

import os
import signal
import stat

import git
import pytest

from hyperhive.common import rpc, subjects
from hyperhive.common.errors import BadRequest, Conflict, NotFound
from hyperhive.common.paths import AgentPaths
from hyperhive.common.wire.base import Ok
from hyperhive.common.wire.lifecycle import AgentInfo, AgentRequest, ConfigReply
from hyperhive.lifecycle import agentconf, ports
from tests import rig
from tests.lifecycle.conftest import lifecycle_settings
from tests.lifecycle.helpers import Events, Operator, harness_pid, pid_alive, serving, wait_dead
from tests.rig import cleanup_agents


async def test_spawn_provisions_files_repos_port_and_events(lc_settings, operator_nc, service_nc):
    events = await Events().start(service_nc)
    op = Operator(operator_nc)
    async with serving("lifecycle", lc_settings, operator_nc):
        info = await op.spawn("alpha")
        assert info.state == "running"
        assert info.kind == "agent"
        assert info.port == ports.pick_port("alpha", set(), 20100, 900)
        assert info.rev == "test-rev-1" and not info.stale

        paths = AgentPaths.of(lc_settings, "alpha")
        for d in (paths.state, paths.creds, paths.run, paths.workdir):
            assert d.is_dir()
        assert paths.nats_seed.read_bytes().startswith(b"SU")
        assert pid_alive(harness_pid(lc_settings, "alpha"))

        proposed = git.Repo(paths.proposed)
        applied = git.Repo(paths.applied)
        assert proposed.head.commit.hexsha == applied.commit("main").hexsha
        assert len(list(proposed.iter_commits())) == 1
        assert (paths.applied / "agent.nix").read_text() == agentconf.template("agent.nix")
        assert (paths.applied / "agent.toml").read_text() == agentconf.template("agent.toml")

        config = await rpc.request(
            operator_nc,
            subjects.admin("lifecycle", "config"),
            AgentRequest(name="alpha"),
            ConfigReply,
        )
        assert config.sha == applied.commit("main").hexsha
        assert set(config.files) == {"agent.nix", "agent.toml"}

        listed = await op.list()
        assert listed["alpha"].state == "running"

        await rig.eventually(lambda: events.of("alpha", subjects.EV_AGENT_CREATED), what="created")
        await rig.eventually(
            lambda: ("creating", "running", None) in events.states("alpha"), what="running event"
        )
    await events.stop()


async def test_harness_environment_contract(
    nats_server, database_url, hive_home, operator_nc, monkeypatch
):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-operator")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("CLAUDE_CODE_OAUTH_TOKEN", "oauth-test-operator")
    monkeypatch.setenv("HIVE_DATABASE_URL", "postgresql://secret")
    settings = lifecycle_settings(
        nats_server,
        database_url,
        hive_home,
        HIVE_LIFECYCLE_HARNESS_COMMAND="sh -c 'env > env.txt; exec sleep 3600'",
        HIVE_LIFECYCLE_MANAGER="hm1nd",
    )
    op = Operator(operator_nc)
    try:
        async with serving("lifecycle", settings, operator_nc):
            await op.spawn("envy")
            paths = AgentPaths.of(settings, "envy")
            env_file = paths.workdir / "env.txt"
            await rig.eventually(lambda: env_file.exists() and env_file.read_text(), what="env")
            env = dict(
                line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line
            )
            assert env["HIVE_HARNESS_AGENT"] == "envy"
            # the page is a unix socket lifecycle bound and passed in; no TCP port
            assert env["HIVE_HARNESS_SOCKET"] == str(paths.page_socket)
            assert int(env["HIVE_HARNESS_SOCKET_FD"]) >= 3
            assert "HIVE_HARNESS_PORT" not in env and "HIVE_HARNESS_HOST" not in env
            assert stat.S_ISSOCK(paths.page_socket.lstat().st_mode)
            assert env["HIVE_HARNESS_CONFIG_DIR"] == str(paths.applied)
            assert env["HIVE_HARNESS_STATE_DIR"] == str(paths.state)
            assert env["HIVE_HARNESS_CREDS_DIR"] == str(paths.creds)
            assert env["HIVE_HARNESS_WORKDIR"] == str(paths.workdir)
            assert env["HIVE_NATS_SEED_FILE"] == str(paths.nats_seed)
            assert env["HIVE_NATS_INBOX_PREFIX"] == "_INBOX.envy"
            assert env["HIVE_NATS_URL"] == nats_server.url
            assert env["HIVE_HARNESS_CLAUDE_BIN"].endswith("claude")
            assert env["ANTHROPIC_API_KEY"] == "sk-test-operator"
            assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:9"
            assert env["CLAUDE_CODE_OAUTH_TOKEN"] == "oauth-test-operator"
            assert "HIVE_HARNESS_AGENTS_DIR" not in env
            # nothing of the services' own environment (their seed, the database)
            assert "HIVE_DATABASE_URL" not in env
            assert str(nats_server.service_seed) not in env_file.read_text()

            # claude's sessions in the credentials dir are not a login: the key stays
            (paths.creds / "projects").mkdir(exist_ok=True)
            await op.verb("restart", "envy")
            await rig.eventually(
                lambda: "sk-test-operator" in env_file.read_text(), what="key after restart"
            )
            assert "CLAUDE_CODE_OAUTH_TOKEN=oauth-test-operator" in env_file.read_text()
            # an agent with its own credentials does not get the operator's key
            (paths.creds / ".credentials.json").write_text("{}")
            await op.verb("restart", "envy")
            await rig.eventually(
                lambda: "ANTHROPIC_API_KEY" not in env_file.read_text(), what="no key"
            )
            assert "CLAUDE_CODE_OAUTH_TOKEN" not in env_file.read_text()
            assert "oauth-test-operator" not in env_file.read_text()
            assert "ANTHROPIC_BASE_URL" not in env_file.read_text()

            # the manager was created at start, on its port, with its view of
            # the agents (no bwrap here: the container layout as symlinks)
            mgr = await rig.eventually(lambda: _manager_env(settings), what="manager env")
            mgr_paths = AgentPaths.of(settings, "hm1nd")
            assert mgr["HIVE_HARNESS_SOCKET"] == str(mgr_paths.page_socket)
            view = AgentPaths.of(settings, "hm1nd").root / "view"
            assert mgr["HIVE_HARNESS_VIEW_DIR"] == str(view)
            assert "HIVE_HARNESS_AGENTS_DIR" not in mgr
            assert (await op.list())["hm1nd"].kind == "manager"
    finally:
        cleanup_agents(nats_server, settings.paths.agents_dir)


async def test_configured_claude_beats_the_one_on_path(
    nats_server, database_url, hive_home, operator_nc, monkeypatch, tmp_path
):
    on_path = tmp_path / "bin" / "claude"
    configured = tmp_path / "opt" / "claude"
    for exe in (on_path, configured):
        exe.parent.mkdir()
        exe.write_text("#!/bin/sh\nexit 0\n")
        exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{on_path.parent}:{os.environ['PATH']}")
    command = "sh -c 'env > env.txt; exec sleep 3600'"
    plain = lifecycle_settings(
        nats_server, database_url, hive_home, HIVE_LIFECYCLE_HARNESS_COMMAND=command
    )
    assert plain.harness.claude_bin == ""
    op = Operator(operator_nc)
    env_file = AgentPaths.of(plain, "clau").workdir / "env.txt"

    async def claude_bin() -> str | None:
        if not env_file.exists():
            return None
        env = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
        return env.get("HIVE_HARNESS_CLAUDE_BIN")

    try:
        async with serving("lifecycle", plain, operator_nc):
            await op.spawn("clau")
            assert await rig.eventually(claude_bin, what="env") == str(on_path)  # PATH's
        env_file.unlink()
        given = lifecycle_settings(
            nats_server,
            database_url,
            hive_home,
            HIVE_LIFECYCLE_HARNESS_COMMAND=command,
            HIVE_HARNESS_CLAUDE_BIN=str(configured),
        )
        async with serving("lifecycle", given, operator_nc):
            await op.verb("restart", "clau")
            assert await rig.eventually(claude_bin, what="env") == str(configured)
    finally:
        cleanup_agents(nats_server, plain.paths.agents_dir)


def _manager_env(settings) -> dict[str, str] | None:  # type: ignore[no-untyped-def]
    f = AgentPaths.of(settings, "hm1nd").workdir / "env.txt"
    if not f.exists() or "HIVE_HARNESS_VIEW_DIR" not in f.read_text():
        return None
    return dict(line.split("=", 1) for line in f.read_text().splitlines() if "=" in line)


async def test_stop_start_restart_kill_with_flags(lc_settings, operator_nc, service_nc):
    events = await Events().start(service_nc)
    op = Operator(operator_nc)
    async with serving("lifecycle", lc_settings, operator_nc):
        await op.spawn("beta")
        pid = harness_pid(lc_settings, "beta")
        stopped = await op.verb("stop", "beta")
        assert stopped.state == "stopped"
        await wait_dead(pid)
        assert not AgentPaths.of(lc_settings, "beta").pid_file.exists()

        started = await op.verb("start", "beta")
        assert started.state == "running"
        pid2 = harness_pid(lc_settings, "beta")
        assert pid2 != pid and pid_alive(pid2)

        restarted = await op.verb("restart", "beta")
        assert restarted.state == "running"
        pid3 = harness_pid(lc_settings, "beta")
        assert pid3 != pid2
        await wait_dead(pid2)

        killed = await op.verb("kill", "beta")
        assert killed.state == "stopped"
        await wait_dead(pid3)

        await rig.eventually(lambda: len(events.states("beta")) >= 6, what="events")
        assert events.states("beta") == [
            (None, "creating", None),
            ("creating", "running", None),
            ("running", "stopped", "Stopping"),
            ("stopped", "running", None),
            ("running", "running", "Restarting"),
            ("running", "stopped", "Stopping"),
        ]
        seqs = [e.data["seq"] for e in events.of("beta", subjects.EV_AGENT_STATE)]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    await events.stop()


async def test_rebuilding_and_destroying_flags_in_events(lc_settings, operator_nc, service_nc):
    events = await Events().start(service_nc)
    op = Operator(operator_nc)
    async with serving("lifecycle", lc_settings, operator_nc):
        await op.spawn("theta")
        assert (await op.verb("update", "theta")).state == "running"
        await op.verb("stop", "theta")
        assert (await op.verb("update", "theta")).state == "stopped"  # rebuilt, not started
        await op.verb("start", "theta")
        await op.destroy("theta")
        await rig.eventually(lambda: len(events.states("theta")) >= 7, what="events")
        assert events.states("theta") == [
            (None, "creating", None),
            ("creating", "running", None),
            ("running", "running", "Rebuilding"),
            ("running", "stopped", "Stopping"),
            ("stopped", "stopped", "Rebuilding"),
            ("stopped", "running", None),
            ("running", "destroyed", "Destroying"),
        ]
    await events.stop()


async def test_harness_death_is_noticed_and_published(lc_settings, operator_nc, service_nc):
    events = await Events().start(service_nc)
    op = Operator(operator_nc)
    async with serving("lifecycle", lc_settings, operator_nc):
        await op.spawn("gamma")
        pid = harness_pid(lc_settings, "gamma")
        os.kill(pid, signal.SIGKILL)
        crash = await rig.eventually(
            lambda: [
                e
                for e in events.of("gamma", subjects.EV_AGENT_STATE)
                if e.data["state"] == "stopped"
            ],
            timeout=10,
            what="stopped event",
        )
        assert crash[0].data["previous"] == "running"
        assert crash[0].data["flag"] is None
        assert crash[0].data["exit_code"] == -signal.SIGKILL
        assert "SIGKILL" in crash[0].data["detail"]
        info = (await op.list())["gamma"]
        assert info.state == "stopped"
        assert "SIGKILL" in info.error
        # it can be started again
        assert (await op.verb("start", "gamma")).state == "running"
    await events.stop()


async def test_destroy_keeps_state_reuse_and_purge(lc_settings, operator_nc, service_nc):
    events = await Events().start(service_nc)
    op = Operator(operator_nc)
    async with serving("lifecycle", lc_settings, operator_nc):
        await op.spawn("delta")
        paths = AgentPaths.of(lc_settings, "delta")
        (paths.state / "notes.md").write_text("remember me")
        pid = harness_pid(lc_settings, "delta")

        await op.destroy("delta")
        await wait_dead(pid)
        assert "delta" not in await op.list()
        assert (await op.list(include_destroyed=True))["delta"].state == "destroyed"
        assert not paths.proposed.exists() and not paths.applied.exists()
        assert not paths.nats_seed.exists()
        assert (paths.state / "notes.md").read_text() == "remember me"
        assert (await op.kept())["delta"] == len("remember me")
        with pytest.raises(NotFound):
            await op.verb("stop", "delta")

        # a new spawn of the name reuses the kept state
        await op.spawn("delta")
        assert (paths.state / "notes.md").read_text() == "remember me"
        assert "delta" not in await op.kept()

        # destroy again, then purge the kept state
        await op.destroy("delta")
        assert "delta" in await op.kept()
        await op.spawn("epsilon")
        with pytest.raises(Conflict, match="not destroyed"):
            await rpc.request(
                operator_nc, subjects.admin("lifecycle", "purge"), AgentRequest(name="epsilon"), Ok
            )
        await rpc.request(
            operator_nc, subjects.admin("lifecycle", "purge"), AgentRequest(name="delta"), Ok
        )
        assert not paths.root.exists()
        assert "delta" not in await op.kept()

        # spawn with reuse_state=False starts from an empty state dir
        await op.spawn("delta")
        (paths.state / "x").write_text("x")
        await op.destroy("delta")
        await op.spawn("delta", reuse_state=False)
        assert not (paths.state / "x").exists()

        # destroy --purge removes everything at once
        await op.destroy("delta", purge=True)
        assert not paths.root.exists()
        await rig.eventually(lambda: events.of("delta", subjects.EV_AGENT_PURGED), what="purged")
        await rig.eventually(
            lambda: len(events.of("delta", subjects.EV_AGENT_DESTROYED)) == 4, what="destroyed"
        )
    await events.stop()


async def test_an_empty_state_dir_is_no_kept_state(lc_settings, operator_nc):
    op = Operator(operator_nc)
    async with serving("lifecycle", lc_settings, operator_nc):
        await op.spawn("empty")
        paths = AgentPaths.of(lc_settings, "empty")
        assert paths.state.is_dir() and not any(paths.state.iterdir())
        await op.destroy("empty")
        assert "empty" not in await op.kept()
        assert not (await op.list(include_destroyed=True))["empty"].kept_state
        assert not paths.root.exists()  # nothing left of it
        # a state dir with something in it is kept, even an empty sub-dir
        await op.spawn("empty")
        (paths.state / "sub").mkdir()
        await op.destroy("empty")
        assert "empty" in await op.kept()
        assert (await op.list(include_destroyed=True))["empty"].kept_state
        assert paths.state.is_dir() and not paths.proposed.exists()


async def test_bad_names_and_unknown_agents(lc_settings, operator_nc, service_nc):
    op = Operator(operator_nc)
    async with serving("lifecycle", lc_settings, operator_nc):
        for bad in ("", "A", "1abc", "toolongname", "a.b", "a b", "../x", "hive", "system"):
            with pytest.raises(BadRequest):
                await op.spawn(bad)
        with pytest.raises(BadRequest, match="reserved"):
            await op.spawn("operator")
        with pytest.raises(BadRequest, match="reserved"):  # no manager configured here
            await op.spawn("hm1nd")
        for verb in ("start", "stop", "restart", "kill", "update", "config"):
            with pytest.raises(NotFound):
                await op.verb(verb, "nobody")
        with pytest.raises(NotFound):
            await op.destroy("nobody")
        with pytest.raises(NotFound):
            await rpc.request(
                service_nc,
                subjects.system("lifecycle", "get"),
                AgentRequest(name="nobody"),
                AgentInfo,
            )
        with pytest.raises(BadRequest):  # malformed payload
            msg = await operator_nc.request(
                subjects.admin("lifecycle", "spawn"), b'{"name": 5}', timeout=10
            )
            rpc.decode_reply(msg.data, AgentInfo)
