"""The host's NATS wiring, end to end with a real nats-server.

``hive setup-nats`` (what the module's ``hive-setup`` unit runs) creates the
seeds, base users and auth file; nats-server runs the config that
nix/nats-conf.nix renders for the module (the settings plus an include of the
auth file, climbing out of the store directory); lifecycle's way of adding
an agent (a user file, a new auth.conf, a reload) then works without a
restart.
"""

from __future__ import annotations

import asyncio
import grp
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from hyperhive.cli.embedded import free_port, nats_server_binary, wait_port
from hyperhive.common import nats_auth, subjects
from hyperhive.common.config import NatsSettings
from hyperhive.common.errors import Unavailable
from hyperhive.common.natsconn import connect
from tests import rig
from tests.nix.nixeval import REPO, eval_expr, needs_nix, nix_str

pytestmark = needs_nix


@dataclass
class HostNats:
    url: str
    nats_dir: Path
    pid_file: Path


def setup_nats(nats_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``hive setup-nats`` as the unit runs it."""
    return subprocess.run(
        [sys.executable, "-m", "hyperhive.cli.main", "setup-nats", "--dir", str(nats_dir), *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )


def render_conf(settings: dict[str, object], auth_file: Path, conf_dir: Path) -> str:
    return eval_expr(
        f"import {REPO}/nix/nats-conf.nix {{"
        f" settings = builtins.fromJSON {nix_str(json.dumps(settings))};"
        f" authFile = {nix_str(str(auth_file))};"
        f" confDir = {nix_str(str(conf_dir))}; }}"
    )


@pytest.fixture
def host_nats(tmp_path: Path) -> Iterator[HostNats]:
    nats_dir = tmp_path / "var" / "lib" / "hyperhive" / "nats"
    group = grp.getgrgid(os.getgid()).gr_name
    done = setup_nats(nats_dir, "--group", group)
    assert done.returncode == 0, done.stdout + done.stderr
    # the config lives elsewhere, like the Nix store, and includes auth.conf
    store = tmp_path / "store"
    store.mkdir()
    port = free_port()
    pid_file = tmp_path / "nats.pid"
    settings = {
        "server_name": "nats",
        "host": "127.0.0.1",
        "port": port,
        "pid_file": str(pid_file),
        "jetstream": {"store_dir": str(tmp_path / "jetstream")},
    }
    conf = store / "hyperhive-nats.conf"
    conf.write_text(render_conf(settings, nats_dir / "auth.conf", store))
    proc = subprocess.Popen(
        [nats_server_binary(), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_port(port, 30, proc, "nats-server")
        yield HostNats(url=f"nats://127.0.0.1:{port}", nats_dir=nats_dir, pid_file=pid_file)
    finally:
        proc.terminate()
        proc.wait(10)


async def connect_with(host: HostNats, seed: Path | None, prefix: str = "") -> NATS:
    return await connect(
        NatsSettings(url=host.url, connect_attempts=1),
        name="test",
        seed_file=str(seed) if seed else "",
        inbox_prefix=prefix,
    )


def test_setup_writes_seeds_users_and_auth_file(tmp_path: Path) -> None:
    nats_dir = tmp_path / "nats"
    group = grp.getgrgid(os.getgid())
    done = setup_nats(nats_dir, "--group", group.gr_name, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert sorted(report["users"]) == ["operator", "service"]
    for seed in ("service.seed", "operator.seed"):
        st = (nats_dir / seed).stat()
        assert stat.S_IMODE(st.st_mode) == 0o640  # owner and the services' group only
        assert st.st_gid == group.gr_gid
        assert (nats_dir / seed).read_bytes().startswith(b"SU")
    # nats-server (another user) must read the auth file: public keys only
    assert stat.S_IMODE((nats_dir / "auth.conf").stat().st_mode) == 0o644
    auth = (nats_dir / "auth.conf").read_text()
    for seed in ("service.seed", "operator.seed"):
        assert (nats_dir / seed).read_text().strip() not in auth


def test_setup_is_idempotent_and_keeps_other_users(tmp_path: Path) -> None:
    nats_dir = tmp_path / "nats"
    assert setup_nats(nats_dir).returncode == 0
    seed_before = (nats_dir / "service.seed").read_bytes()
    agent_seed = nats_auth.new_seed()
    nats_auth.put_user(
        nats_dir,
        nats_auth.NatsUser(
            name="ag1",
            nkey=nats_auth.public_key(agent_seed),
            permissions=nats_auth.agent_permissions("ag1"),
        ),
    )
    assert setup_nats(nats_dir).returncode == 0
    assert (nats_dir / "service.seed").read_bytes() == seed_before
    assert nats_auth.public_key(agent_seed) in (nats_dir / "auth.conf").read_text()


def test_setup_refuses_an_unknown_group(tmp_path: Path) -> None:
    done = setup_nats(tmp_path / "nats", "--group", "no-such-group-hh")
    assert done.returncode == 1
    assert "no such group" in done.stdout


async def test_module_config_serves_the_setup_users(host_nats: HostNats) -> None:
    # no credentials, no entry
    with pytest.raises(Unavailable):
        await connect_with(host_nats, None)

    service = await connect_with(host_nats, host_nats.nats_dir / "service.seed")
    operator = await connect_with(
        host_nats, host_nats.nats_dir / "operator.seed", subjects.inbox_prefix("operator")
    )
    try:
        seen: list[str] = []

        async def note(msg: Msg) -> None:
            seen.append(msg.subject)

        await service.subscribe("hive.>", cb=note)

        # nats-py's flush() may overtake a SUB still in its buffer (its PING
        # goes first), so prove the subscription live by a round trip
        async def subscribed() -> bool:
            await service.publish("hive.test.probe", b"")
            return "hive.test.probe" in seen

        await rig.eventually(subscribed, timeout=10, interval=0.1, what="subscription")
        # the operator may not speak as an agent; messages from one client
        # arrive in order, so once the allowed one is in, the other never will
        await operator.publish(subjects.agent("ag2", "send"), b"{}")
        await operator.publish(subjects.admin("broker", "ping"), b"{}")
        await rig.eventually(
            lambda: subjects.admin("broker", "ping") in seen,
            timeout=10,
            what="the operator's allowed publish",
        )
        assert subjects.agent("ag2", "send") not in seen
    finally:
        await operator.close()
        await service.close()


async def test_an_agent_added_like_lifecycle_does_is_let_in_after_reload(
    host_nats: HostNats, tmp_path: Path
) -> None:
    seed = nats_auth.new_seed()
    seed_file = tmp_path / "ag3.seed"
    nats_auth.write_seed(seed_file, seed)
    with pytest.raises(Unavailable):
        await connect_with(host_nats, seed_file, subjects.inbox_prefix("ag3"))

    nats_auth.put_user(
        host_nats.nats_dir,
        nats_auth.NatsUser(
            name="ag3",
            nkey=nats_auth.public_key(seed),
            permissions=nats_auth.agent_permissions("ag3"),
        ),
    )
    nats_auth.render_auth_file(host_nats.nats_dir, host_nats.nats_dir / "auth.conf")
    await asyncio.to_thread(
        nats_auth.reload_server, NatsSettings(reload_pid_file=str(host_nats.pid_file))
    )

    async def agent_gets_in() -> bool:
        try:
            nc = await connect_with(host_nats, seed_file, subjects.inbox_prefix("ag3"))
        except Unavailable:
            return False
        await nc.close()
        return True

    await rig.eventually(agent_gets_in, timeout=20, interval=0.2, what="agent login after reload")
