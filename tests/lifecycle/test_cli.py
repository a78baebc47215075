"""The lifecycle verbs of the CLI end to end: ``hive agents``, ``spawn``,
``start|stop|restart|kill|update``, ``logs [-f]``, ``config``, ``destroy [--purge]``,
``kept``, ``purge``, ``drafts``."""

from __future__ import annotations

import asyncio
import json
import signal
import sys

from hyperhive.common.paths import AgentPaths
from tests import rig
from tests.lifecycle.conftest import lifecycle_settings
from tests.lifecycle.helpers import harness_pid, serving, wait_dead
from tests.rig import cleanup_agents


async def test_cli_agent_verbs(nats_server, database_url, hive_home, operator_nc):
    settings = lifecycle_settings(
        nats_server,
        database_url,
        hive_home,
        HIVE_LIFECYCLE_HARNESS_COMMAND="sh -c 'echo hello-from-harness; exec sleep 3600'",
    )
    operator = rig.operator_settings(settings, nats_server)
    try:
        async with serving("lifecycle", settings, operator_nc):
            code, out, _ = await rig.hive_cli(operator, "spawn", "clia", "--json")
            assert code == 0
            assert json.loads(out)["state"] == "running"

            code, out, _ = await rig.hive_cli(operator, "agents", "--json")
            assert code == 0
            agents = {a["name"]: a for a in json.loads(out)}
            assert agents["clia"]["kind"] == "agent"

            code, out, _ = await rig.hive_cli(operator, "agents")
            assert code == 0 and out.splitlines()[0].split()[:3] == ["NAME", "KIND", "STATE"]
            assert "clia" in out and "running" in out

            code, out, _ = await rig.hive_cli(operator, "logs", "clia", "-n", "5")
            assert code == 0 and "hello-from-harness" in out

            code, out, _ = await rig.hive_cli(operator, "config", "clia")
            assert code == 0 and "==> agent.toml <==" in out and "==> agent.nix <==" in out

            code, out, _ = await rig.hive_cli(operator, "stop", "clia", "--json")
            assert code == 0 and json.loads(out)["state"] == "stopped"
            code, out, _ = await rig.hive_cli(operator, "start", "clia")
            assert code == 0 and "running" in out

            (AgentPaths.of(settings, "clia").state / "notes.md").write_text("keep me")
            code, out, _ = await rig.hive_cli(operator, "destroy", "clia")
            assert code == 0 and "state kept" in out
            code, out, _ = await rig.hive_cli(operator, "kept", "--json")
            assert code == 0 and [k["name"] for k in json.loads(out)] == ["clia"]
            code, out, _ = await rig.hive_cli(operator, "purge", "clia")
            assert code == 0
            code, out, _ = await rig.hive_cli(operator, "kept", "--json")
            assert json.loads(out) == []
            code, out, _ = await rig.hive_cli(operator, "drafts", "--json")
            assert code == 0 and json.loads(out) == []

            # bad input: one clear line on stderr, exit 1
            # (the client's own "nats disconnected" log line may precede it)
            code, out, err = await rig.hive_cli(operator, "spawn", "Bad_Name")
            assert code == 1 and out == ""
            assert err.strip().splitlines()[-1].startswith("hive: invalid agent name 'Bad_Name'")
            code, _, err = await rig.hive_cli(operator, "stop", "ghost")
            assert code == 1
            assert err.strip().splitlines()[-1] == "hive: no agent named 'ghost'"
    finally:
        cleanup_agents(nats_server, settings.paths.agents_dir)


async def test_cli_restart_kill_update_follow_and_purge(
    nats_server, database_url, hive_home, operator_nc
):
    settings = lifecycle_settings(
        nats_server,
        database_url,
        hive_home,
        HIVE_LIFECYCLE_HARNESS_COMMAND=(
            "sh -c 'echo hello-from-harness; while [ ! -f more ]; do sleep 0.1; done; "
            "echo followed-line; exec sleep 3600'"
        ),
    )
    operator = rig.operator_settings(settings, nats_server)
    paths = AgentPaths.of(settings, "clib")

    async def verb(*args: str) -> dict:
        code, out, err = await rig.hive_cli(operator, *args, "clib", "--json")
        assert code == 0, err
        return json.loads(out)

    try:
        async with serving("lifecycle", settings, operator_nc):
            assert (await verb("spawn"))["state"] == "running"
            pid = harness_pid(settings, "clib")

            assert (await verb("restart"))["state"] == "running"
            await wait_dead(pid)
            pid = harness_pid(settings, "clib")

            info = await verb("update")
            assert info["state"] == "running" and info["rev"] == "test-rev-1"
            await wait_dead(pid)  # the process backend's update restarts the harness
            pid = harness_pid(settings, "clib")

            assert (await verb("kill"))["state"] == "stopped"
            await wait_dead(pid)
            assert (await verb("start"))["state"] == "running"

            # hive logs -f: prints the log, then what comes later, until Ctrl-C
            follow = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "hyperhive.cli.main",
                "logs",
                "clib",
                "-f",
                env=rig.cli_env(operator),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                await _line_with(follow, "hello-from-harness")
                (paths.workdir / "more").write_text("")
                await _line_with(follow, "followed-line")
                follow.send_signal(signal.SIGINT)
                assert await asyncio.wait_for(follow.wait(), 20) == 130
            finally:
                if follow.returncode is None:
                    follow.kill()
                    await follow.wait()

            pid = harness_pid(settings, "clib")
            (paths.state / "notes.md").write_text("to be purged")
            code, out, err = await rig.hive_cli(operator, "destroy", "clib", "--purge")
            assert code == 0, err
            assert out.strip() == "destroyed clib"
            await wait_dead(pid)
            assert not paths.root.exists()
            code, out, _ = await rig.hive_cli(operator, "kept", "--json")
            assert code == 0 and json.loads(out) == []
            code, out, _ = await rig.hive_cli(operator, "agents", "--json")
            assert "clib" not in {a["name"] for a in json.loads(out)}
    finally:
        cleanup_agents(nats_server, settings.paths.agents_dir)


async def _line_with(proc: asyncio.subprocess.Process, text: str, timeout: float = 20) -> str:
    """Reads ``proc``'s output until a line containing ``text``."""
    assert proc.stdout is not None
    seen: list[str] = []
    async with asyncio.timeout(timeout):
        while True:
            raw = await proc.stdout.readline()
            assert raw, f"output ended before {text!r}: {seen}"
            line = raw.decode(errors="replace").rstrip("\n")
            seen.append(line)
            if text in line:
                return line
