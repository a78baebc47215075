"""The nixos backend against a recording stand-in ``nixos-container``.

The stand-in checks the arguments it gets (verb, container name, flake
reference), records each call, and keeps a fake container state, so the
backend runs its whole create/start/stop/update/destroy cycle and its error
path here, where real containers cannot run. The rendered flake must parse.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hyperhive.common import rpc, subjects
from hyperhive.common.config import LifecycleSettings, PathSettings, Settings
from hyperhive.common.errors import BackendFailed
from hyperhive.common.paths import AgentPaths
from hyperhive.common.wire.lifecycle import AgentInfo, LogsReply, LogsRequest
from hyperhive.lifecycle import creds
from hyperhive.lifecycle.backends.base import AgentSpec
from hyperhive.lifecycle.backends.nixos import nix_string, pinned_url, render_flake
from tests import rig
from tests.lifecycle.conftest import lifecycle_settings
from tests.lifecycle.helpers import Events, Operator, serving
from tests.nix.nixeval import needs_nix, run
from tests.rig import cleanup_agents

REV = "0123456789abcdef0123456789abcdef01234567"

STAND_IN = r'''#!/usr/bin/env python3
"""A recording stand-in for nixos-container: checks arguments, keeps state."""
import json, os, re, sys
from pathlib import Path

root = Path(os.environ["FAKE_NC_DIR"])
calls = root / "calls.jsonl"
state = root / "state.json"
args = sys.argv[1:]
with calls.open("a") as f:
    f.write(json.dumps(args) + "\n")
containers = json.loads(state.read_text()) if state.exists() else {}
verbs = {"create", "start", "stop", "terminate", "destroy", "update", "status"}
if not args or args[0] not in verbs:
    sys.exit(f"stand-in: unexpected verb {args[:1]}")
verb, name, rest = args[0], args[1] if len(args) > 1 else "", args[2:]
if not re.fullmatch(r"(h-[a-z][a-z0-9-]{0,8}|hm1nd)", name):
    sys.exit(f"stand-in: bad container name {name!r}")
if verb in ("create", "update"):
    if rest[:1] != ["--flake"] or len(rest) != 2:
        sys.exit(f"stand-in: {verb} needs --flake REF, got {rest}")
    flake, _, attr = rest[1].partition("#")
    if not flake.startswith("path:") or attr != name:
        sys.exit(f"stand-in: bad flake ref {rest[1]}")
    text = (Path(flake[5:]) / "flake.nix").read_text()
    if "/nix/harness-base.nix" not in text:
        sys.exit("stand-in: the flake does not import harness-base.nix")
    agent_nix = (Path(flake[5:]).parent / "applied" / "agent.nix").read_text()
    if name == "h-nixfail" or "FAIL_BUILD" in agent_nix:
        sys.exit("error: builder for '/nix/store/xyz-agent.drv' failed: FAIL_BUILD marker")
elif rest:
    sys.exit(f"stand-in: unexpected arguments {rest}")
# a marker file fail-<verb>-<container> makes that verb fail; with "down" in
# it, the container goes down first (a stop that timed out after stopping)
fail = root / f"fail-{verb}-{name}"
if fail.exists():
    if fail.read_text().strip() == "down" and name in containers:
        containers[name] = "down"
        state.write_text(json.dumps(containers))
    sys.exit(f"stand-in: {verb} of {name} failed: FAIL_MARKER {verb}")
if verb == "create":
    if name in containers:
        sys.exit(f"stand-in: {name} exists")
    containers[name] = "down"
    conf = Path(os.environ["FAKE_NC_CONF"]) / f"{name}.conf"
    conf.write_text("PRIVATE_NETWORK=0\nHOST_ADDRESS=\n")
elif name not in containers:  # as nixos-container does without a conf file
    if verb == "destroy":
        sys.exit(0)
    if verb == "status":
        print("gone", flush=True)
    sys.exit(f"nixos-container: container \u2018{name}\u2019 does not exist")
elif verb == "status":
    print(containers[name])
    sys.exit(0)  # reads only: never writes the state a concurrent call changes
elif verb == "start":
    containers[name] = "up"
elif verb in ("stop", "terminate"):
    containers[name] = "down"
elif verb == "destroy":
    del containers[name]
    (Path(os.environ["FAKE_NC_CONF"]) / f"{name}.conf").unlink()
state.write_text(json.dumps(containers))
'''

MACHINECTL = r"""#!/bin/sh
echo "$@" >> "$FAKE_NC_DIR/machinectl.args"
"""

JOURNALCTL = r"""#!/bin/sh
echo "$@" >> "$FAKE_NC_DIR/journalctl.args"
echo "2026-01-01T00:00:00+0000 h-nix hive-harness[1]: turn 1 done"
echo "-- cursor: s=abc;i=1"
"""


@pytest.fixture
def stand_in(tmp_path, monkeypatch) -> Path:  # type: ignore[no-untyped-def]
    d = tmp_path / "fake-nc"
    conf = tmp_path / "nixos-containers"
    d.mkdir()
    conf.mkdir()
    for name, text in (
        ("nixos-container", STAND_IN),
        ("journalctl", JOURNALCTL),
        ("machinectl", MACHINECTL),
    ):
        (d / name).write_text(text)
        (d / name).chmod(0o755)
    monkeypatch.setenv("FAKE_NC_DIR", str(d))
    monkeypatch.setenv("FAKE_NC_CONF", str(conf))
    monkeypatch.setenv("PATH", f"{d}:{__import__('os').environ['PATH']}")
    return d


def calls(d: Path) -> list[list[str]]:
    return [json.loads(line) for line in (d / "calls.jsonl").read_text().splitlines()]


def nixos_settings(nats_server, database_url, hive_home, tmp_path, **env: str) -> Settings:  # type: ignore[no-untyped-def]
    return lifecycle_settings(
        nats_server,
        database_url,
        hive_home,
        HIVE_LIFECYCLE_BACKEND="nixos",
        HIVE_LIFECYCLE_FLAKE_REF="git+https://example.org/hyperhive",
        HIVE_LIFECYCLE_REV=REV,
        HIVE_LIFECYCLE_NIXOS_CONF_DIR=str(tmp_path / "nixos-containers"),
        **env,
    )


async def test_nixos_backend_drives_nixos_container(
    stand_in, nats_server, database_url, hive_home, operator_nc, tmp_path
):
    settings = nixos_settings(
        nats_server, database_url, hive_home, tmp_path, HIVE_LIFECYCLE_MANAGER="hm1nd"
    )
    op = Operator(operator_nc)
    try:
        async with serving("lifecycle", settings, operator_nc):
            info = await op.spawn("nix")
            assert info.state == "running" and info.backend == "nixos"
            paths = AgentPaths.of(settings, "nix")
            flake = (paths.root / "flake" / "flake.nix").read_text()
            ref = f"path:{paths.root / 'flake'}#h-nix"
            assert ["create", "h-nix", "--flake", ref] in calls(stand_in)
            assert ["start", "h-nix"] in calls(stand_in)
            assert [
                "create",
                "hm1nd",
                "--flake",
                f"path:{AgentPaths.of(settings, 'hm1nd').root / 'flake'}#hm1nd",
            ] in calls(stand_in)

            # the flake pins hyperhive, imports harness-base.nix and the agent's agent.nix
            assert f'hyperhive.url = "git+https://example.org/hyperhive?rev={REV}";' in flake
            assert '"${hyperhive}/nix/harness-base.nix"' in flake
            assert '"${agent}/agent.nix"' in flake
            assert f'url = "path:{paths.applied}";' in flake
            assert 'name = "nix";' in flake and f"port = {info.port};" in flake
            assert "manager = false;" in flake
            # what test_rendered_flakes_parse checks with nix-instantiate
            spec = AgentSpec(name="nix", port=info.port, manager=False, paths=paths, rev=REV)
            assert flake == render_flake(spec, settings)

            # bind mounts in the container's conf
            conf = (tmp_path / "nixos-containers" / "h-nix.conf").read_text()
            assert "PRIVATE_NETWORK=0" in conf  # what nixos-container wrote stays
            assert f"--bind={paths.creds}:/root/.claude" in conf
            assert f"--bind={paths.state}:/state" in conf
            # writable: the harness binds /run/hive/page.sock (the dashboard's way in)
            assert f"--bind={paths.run}:/run/hive" in conf
            assert ":/agents" not in conf
            # the manager sees the agent's config and state, its applied repo
            # read-only, and never its credentials or NATS seed
            mconf = (tmp_path / "nixos-containers" / "hm1nd.conf").read_text()
            assert f"--bind={paths.proposed}:/agents/nix/config" in mconf
            assert f"--bind={paths.state}:/agents/nix/state" in mconf
            assert f"--bind-ro={paths.applied}:/applied/nix" in mconf
            assert str(paths.creds) not in mconf and str(paths.run) not in mconf
            assert f"--bind={settings.paths.agents_dir}:/agents" not in mconf
            assert "PRIVATE_NETWORK=0" in mconf and "HOST_ADDRESS" not in mconf
            # ... at once, in the running manager, without restarting it
            binds = (stand_in / "machinectl.args").read_text().splitlines()
            assert f"bind --mkdir hm1nd {paths.proposed} /agents/nix/config" in binds
            assert f"bind --mkdir --read-only hm1nd {paths.applied} /applied/nix" in binds

            assert (await op.verb("stop", "nix")).state == "stopped"
            assert ["stop", "h-nix"] in calls(stand_in)
            assert (await op.verb("kill", "nix")).state == "stopped"
            assert ["terminate", "h-nix"] in calls(stand_in)
            assert (await op.verb("start", "nix")).state == "running"
            assert (await op.verb("update", "nix")).state == "running"
            assert ["update", "h-nix", "--flake", ref] in calls(stand_in)

            logs = await rpc.request(
                operator_nc,
                subjects.admin("lifecycle", "logs"),
                LogsRequest(name="nix", lines=5),
                LogsReply,
            )
            assert logs.lines == ["2026-01-01T00:00:00+0000 h-nix hive-harness[1]: turn 1 done"]
            assert logs.journal_cursor == "s=abc;i=1"
            args = (stand_in / "journalctl.args").read_text()
            assert "-M h-nix" in args and "-n 5" in args
            await rpc.request(
                operator_nc,
                subjects.admin("lifecycle", "logs"),
                LogsRequest(name="nix", after_cursor=logs.journal_cursor),
                LogsReply,
            )
            assert "--after-cursor=s=abc;i=1" in (stand_in / "journalctl.args").read_text()

            # a build that fails: its output in the error, the old container kept
            (paths.applied / "agent.nix").write_text("# FAIL_BUILD\n{ ... }: { }\n")
            with pytest.raises(BackendFailed, match="FAIL_BUILD marker"):
                await op.verb("update", "nix")
            assert (await op.list())["nix"].state == "running"

            await op.destroy("nix")
            assert ["destroy", "h-nix"] in calls(stand_in)
            assert "nix" not in await op.list()

            # a create whose build fails: its output in the error, no agent left
            with pytest.raises(BackendFailed, match="FAIL_BUILD marker") as err:
                await op.spawn("nixfail")
            assert "nixos-container create failed" in str(err.value)
            assert "nixfail" not in await op.list()
            assert not AgentPaths.of(settings, "nixfail").proposed.exists()
    finally:
        cleanup_agents(nats_server, settings.paths.agents_dir)


def fake_state(d: Path, container: str) -> str | None:
    """The stand-in's state of ``container``: up, down, or None (no container)."""
    path = d / "state.json"
    return json.loads(path.read_text()).get(container) if path.exists() else None


async def test_failing_nixos_container_leaves_registry_consistent(
    stand_in, nats_server, database_url, hive_home, operator_nc, service_nc, tmp_path
):
    """start, stop, kill, restart, destroy failing: the command's output in a
    clear error, the registry saying what the container is left in, and no
    transition that crash-watch would take for a crash."""
    settings = nixos_settings(nats_server, database_url, hive_home, tmp_path)
    op = Operator(operator_nc)
    events = await Events().start(service_nc)

    def fail(verb: str, name: str, how: str = "") -> Path:
        marker = stand_in / f"fail-{verb}-h-{name}"
        marker.write_text(how)
        return marker

    async def state_of(name: str) -> AgentInfo:
        return (await op.list())[name]

    async def fails_at_start(verb: str, name: str) -> None:
        """``verb`` with a failing start: the agent is failed, with the output."""
        marker = fail("start", name)
        with pytest.raises(BackendFailed, match="FAIL_MARKER start"):
            await op.verb(verb, name)
        info = await state_of(name)
        assert info.state == "failed" and "FAIL_MARKER start" in info.error
        marker.unlink()

    try:
        async with serving("lifecycle", settings, operator_nc):
            # a create whose start fails: nothing left of the agent or its container
            marker = fail("start", "nfs")
            with pytest.raises(BackendFailed, match="FAIL_MARKER start") as err:
                await op.spawn("nfs")
            assert "nixos-container start failed" in str(err.value)
            assert "nfs" not in await op.list()
            assert ["destroy", "h-nfs"] in calls(stand_in)
            assert fake_state(stand_in, "h-nfs") is None
            assert not creds.has_user(settings, "nfs")
            marker.unlink()

            await op.spawn("nf")
            # start fails: the container stays down; the agent is failed, with the output
            await op.verb("stop", "nf")
            await fails_at_start("start", "nf")
            info = await op.verb("start", "nf")
            assert info.state == "running" and info.error == ""

            # stop fails and the container still runs: running, with the output
            for verb, marker_verb in (("stop", "stop"), ("kill", "terminate")):
                marker = fail(marker_verb, "nf")
                with pytest.raises(BackendFailed, match=f"FAIL_MARKER {marker_verb}") as err:
                    await op.verb(verb, "nf")
                assert f"nixos-container {marker_verb} failed" in str(err.value)
                info = await state_of("nf")
                assert info.state == "running" and f"FAIL_MARKER {marker_verb}" in info.error
                assert fake_state(stand_in, "h-nf") == "up"
                marker.unlink()

            # stop fails after the container went down: failed, flagged Stopping
            marker = fail("stop", "nf", "down")
            with pytest.raises(BackendFailed, match="FAIL_MARKER stop"):
                await op.verb("stop", "nf")
            assert (await state_of("nf")).state == "failed"
            assert fake_state(stand_in, "h-nf") == "down"
            marker.unlink()
            assert (await op.verb("start", "nf")).state == "running"

            # restart: the stop works, the start fails: failed, flagged Restarting
            await fails_at_start("restart", "nf")
            assert (await op.verb("start", "nf")).state == "running"

            # destroy fails: the agent, its container and its credentials stay
            marker = fail("destroy", "nf")
            with pytest.raises(BackendFailed, match="FAIL_MARKER destroy") as err:
                await op.destroy("nf")
            assert "nixos-container destroy failed" in str(err.value)
            info = await state_of("nf")
            assert info.state == "running" and "FAIL_MARKER destroy" in info.error
            assert fake_state(stand_in, "h-nf") == "up"
            assert creds.has_user(settings, "nf")
            assert AgentPaths.of(settings, "nf").applied.is_dir()
            marker.unlink()
            await op.destroy("nf")
            assert "nf" not in await op.list() and fake_state(stand_in, "h-nf") is None

            # the status command failing is no stopped container: nothing recorded
            await op.spawn("nst")
            marker = fail("status", "nst")
            seen = calls(stand_in).count(["status", "h-nst"])
            await rig.eventually(
                lambda: calls(stand_in).count(["status", "h-nst"]) >= seen + 2,
                timeout=30,
                what="the monitor looked twice",
            )
            assert (await state_of("nst")).state == "running"
            marker.unlink()
            await op.verb("stop", "nst")

            # every event: running -> down only with a flag (no false crash)
            await rig.eventually(
                lambda: ("running", "stopped", "Stopping") in events.states("nst"),
                what="last event",
            )
            for name in ("nf", "nst"):
                for previous, state, flag in events.states(name):
                    if previous == "running" and state in ("stopped", "failed"):
                        assert flag, (name, events.states(name))
            assert ("running", "failed", "Stopping") in events.states("nf")
            assert ("running", "failed", "Restarting") in events.states("nf")
            assert events.states("nst").count(("running", "stopped", "Stopping")) == 1
            assert [s for _, s, _ in events.states("nst")] == ["creating", "running", "stopped"]
    finally:
        await events.stop()
        cleanup_agents(nats_server, settings.paths.agents_dir)


@needs_nix
def test_rendered_flakes_parse(tmp_path):
    settings = Settings(
        lifecycle=LifecycleSettings(
            backend="nixos", flake_ref="git+https://example.org/hyperhive?ref=main"
        ),
        paths=PathSettings(home=str(tmp_path)),
    )
    for name, port, manager in (("nix", 8123, False), ("hm1nd", 8000, True)):
        spec = AgentSpec(
            name=name, port=port, manager=manager, paths=AgentPaths.of(settings, name), rev=REV
        )
        path = tmp_path / f"{name}.flake.nix"
        path.write_text(render_flake(spec, settings))
        proc = run(["--parse", str(path)])
        assert proc.returncode == 0, proc.stderr
    # the check can fail: a broken render does not parse
    path.write_text(render_flake(spec, settings).replace("};", "", 1))
    assert run(["--parse", str(path)]).returncode != 0


def test_harness_base_is_where_the_flake_imports_it():
    repo = Path(__file__).resolve().parents[2]
    assert (repo / "nix" / "harness-base.nix").is_file()


def test_nix_strings_cannot_break_out():
    assert nix_string('a"b${c}\\') == 'a\\"b\\${c}\\\\'
    assert pinned_url("git+https://x/y", REV) == f"git+https://x/y?rev={REV}"
    assert pinned_url("git+https://x/y?ref=main", REV) == f"git+https://x/y?ref=main&rev={REV}"
    assert pinned_url("path:/src", "0.1.0") == "path:/src"  # a version is no git commit
