"""Host doors, probed by a real agent: claude's own Bash tool, under the
process backend's default as root (bwrap, the agent user), the real harness
and claude CLI against the scripted Anthropic API.

The scripted model asks for one Bash command that tries every door and
prints one line per door; the test reads the tool result claude sent back
and checks the effects on the host (no table made, the process still runs).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from hyperhive.cli.embedded import EmbeddedNats, EmbeddedPostgres
from hyperhive.common.paths import AgentPaths
from tests.harness.conftest import Stack, agent_name, running_stack, stack_settings
from tests.scripted_anthropic import (
    ScriptedAnthropic,
    after_tool_results,
    last_user_mentions,
    mentions,
    tool_result_text,
    tool_use,
)

AGENT_USER = "hyperhive-agent"
pytestmark = [
    pytest.mark.claude,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the agent user needs root"),
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bwrap not installed"),
    pytest.mark.skipif(shutil.which("psql") is None, reason="psql not installed"),
]


@pytest.fixture
async def sandboxed(
    nats_server: EmbeddedNats, database_url: str, hive_home: Path, api: ScriptedAnthropic
) -> AsyncIterator[Stack]:
    """broker + lifecycle, the real harness under bwrap as the agent user."""
    settings = stack_settings(
        nats_server,
        database_url,
        hive_home,
        harness_command="",
        HIVE_LIFECYCLE_USE_BWRAP="true",
        HIVE_LIFECYCLE_AGENT_USER=AGENT_USER,
    )
    async with running_stack(nats_server, settings) as s:
        yield s


@pytest.fixture
def victim() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "600"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def _door(label: str, command: str) -> str:
    """``label=open`` if ``command`` succeeds, else ``label=closed``."""
    return f"if {command} >/dev/null 2>&1; then echo {label}=open; else echo {label}=closed; fi"


async def _has_table(url: str, name: str) -> bool:
    conn = await asyncpg.connect(url)
    try:
        return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name))
    finally:
        await conn.close()


async def test_claude_bash_finds_every_host_door_closed(
    sandboxed: Stack,
    api: ScriptedAnthropic,
    nats_server: EmbeddedNats,
    postgres_server: EmbeddedPostgres,
    database_url: str,
    victim: subprocess.Popen[bytes],
) -> None:
    other, prober = agent_name("o"), agent_name("p")
    await sandboxed.spawn(other)
    theirs = AgentPaths.of(sandboxed.settings, other)
    (theirs.creds / ".credentials.json").write_text("other-login-secret")
    await sandboxed.spawn(prober)

    pg = postgres_server
    psql = f"psql -p {pg.port} -U hyperhive -d postgres -w -c 'CREATE TABLE escaped_e2e (x int)'"
    doors = {
        "shadow": "cat /etc/shadow",
        "root": "ls /root/.bashrc /root/.profile /root/.ssh",
        "operator-seed": f"cat {nats_server.operator_seed}",
        "service-seed": f"cat {nats_server.service_seed}",
        "other-seed": f"cat {theirs.nats_seed}",
        "other-creds": f"cat {theirs.creds / '.credentials.json'}",
        "other-state": f"ls {theirs.state}",
        "psql-tcp": f"{psql} -h 127.0.0.1",
        "psql-socket": f"{psql} -h {pg.socket_dir}",
        "socket-dir": f"ls {pg.socket_dir}",
        "kill": f"kill -KILL {victim.pid}",
    }
    probe = "; ".join(
        ["echo uid=$(id -u)", *(_door(k, v) for k, v in doors.items()), "echo probe-end"]
    )
    mine = mentions(f"You are {prober},")
    api.reply(
        tool_use("Bash", {"command": probe, "description": "probe the host"}),
        when=lambda r: mine(r) and last_user_mentions("probe the host")(r),
    )
    api.reply("probed", when=after_tool_results(1, also=mine))
    await sandboxed.send(prober, "probe the host")
    req = await api.wait_for_request(after_tool_results(1, also=mine), timeout=180)
    result = req.last_tool_result()
    assert result is not None and not result.get("is_error"), result
    out = tool_result_text(result)
    assert "probe-end" in out, out
    lines = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    assert int(lines["uid"]) == pwd.getpwnam(AGENT_USER).pw_uid != 0, out
    for door in doors:
        assert lines[door] == "closed", (door, out)
    # the effects: nothing of it happened
    assert "other-login-secret" not in out
    assert nats_server.service_seed.read_text().strip() not in out
    assert victim.poll() is None
    for url in (pg.url, database_url):
        assert not await _has_table(url, "escaped_e2e")
