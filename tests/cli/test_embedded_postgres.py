"""The embedded PostgreSQL is for the services only (docs/operations.md, threat model).

No TCP listener, a pg_hba.conf of local lines only, and a socket in a 0700
dir of the cluster's user: another uid finds no door, neither over TCP nor
through the socket.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import subprocess
from pathlib import Path

import asyncpg
import pytest

from hyperhive.cli.embedded import MAX_SOCKET_PATH, EmbeddedPostgres
from tests import rig

NOBODY = 65534


async def _fetch(url: str, query: str) -> object:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(query)
    finally:
        await conn.close()


async def test_no_tcp_listener_and_local_lines_only(postgres_server: EmbeddedPostgres):
    url = postgres_server.url
    [[listen]] = await _fetch(url, "SHOW listen_addresses")
    assert listen == ""
    rules = await _fetch(url, "SELECT type, auth_method, error FROM pg_hba_file_rules")
    assert [(r["type"], r["error"]) for r in rules] == [("local", None)]


def test_socket_dir_is_closed_to_other_uids(postgres_server: EmbeddedPostgres):
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", postgres_server.port)) != 0
    # nothing listens on the cluster's port number, on any address
    listening = Path("/proc/net/tcp").read_text() + Path("/proc/net/tcp6").read_text()
    assert f":{postgres_server.port:04X} " not in listening
    st = os.stat(postgres_server.socket_dir)
    assert stat.S_IMODE(st.st_mode) == 0o700
    sock = postgres_server.socket_dir / f".s.PGSQL.{postgres_server.port}"
    assert stat.S_IMODE(os.stat(sock).st_mode) & 0o077 == 0
    if os.geteuid() != 0:
        return
    # as the cluster's user, psql gets a session; as another uid it gets none
    assert postgres_server.user is not None
    psql = postgres_server.psql()
    ok = postgres_server._run([*psql, "-tAc", "SELECT 42"])
    assert ok.stdout.strip() == "42", ok.stderr
    for argv in (psql, [*psql[:2], "127.0.0.1", *psql[3:]]):
        other = subprocess.run(
            [*argv, "-tAc", "SELECT 42"],
            user=NOBODY,
            group=NOBODY,
            extra_groups=[],
            capture_output=True,
            text=True,
            cwd="/",
            timeout=30,
        )
        assert other.returncode != 0 and "42" not in other.stdout, other
        assert "Permission denied" in other.stderr or "Connection refused" in other.stderr


@pytest.mark.parametrize("depth", [1, 12])
def test_socket_path_always_fits(tmp_path: Path, depth: int):
    """A data dir too deep for a socket path puts the socket in a short private dir."""
    root = rig.shared_tempdir("hive-pg-long-")
    data = root.joinpath(*(["d" * 9] * depth), "data")
    pg = EmbeddedPostgres(data, 54321)
    assert len(f"{pg.socket_dir}/.s.PGSQL.54321.lock") <= MAX_SOCKET_PATH
    if depth == 1:
        assert pg.socket_dir == pg.data_dir.absolute()
    assert f"host={pg.socket_dir}" in pg.url and "127.0.0.1" not in pg.url


def test_url_names_database_over_the_socket(postgres_server: EmbeddedPostgres):
    db = asyncio.run(rig.create_database(postgres_server.url))
    assert db.startswith("postgresql://hyperhive@/t_") and f"port={postgres_server.port}" in db
