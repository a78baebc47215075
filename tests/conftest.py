"""Session-wide servers and per-test settings (see ``tests/rig.py``)."""

from __future__ import annotations

import asyncio
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from hyperhive.cli.embedded import EmbeddedNats, EmbeddedPostgres
from hyperhive.common.config import Settings
from tests import rig


@pytest.fixture(scope="session")
def nats_server() -> Iterator[EmbeddedNats]:
    with rig.nats_server() as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_deliveries(request: pytest.FixtureRequest) -> None:
    """A test with a database of its own is a new hive on the session's NATS:
    system events an earlier hive left in ``HIVE_DELIVERIES`` are not for it."""
    if {"nats_server", "database_url"} <= set(request.fixturenames):
        server = request.getfixturevalue("nats_server")
        # its own loop in a thread: the tests' event loop is not running here
        thread = threading.Thread(target=asyncio.run, args=(rig.reset_deliveries(server),))
        thread.start()
        thread.join(30)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[EmbeddedPostgres]:
    with rig.postgres_server() as server:
        yield server


@pytest.fixture
async def database_url(postgres_server: EmbeddedPostgres) -> str:
    """A fresh database for this test."""
    return await rig.create_database(postgres_server.url)


@pytest.fixture
def hive_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    return home


@pytest.fixture
def settings(nats_server: EmbeddedNats, database_url: str, hive_home: Path) -> Settings:
    """Service settings for this test: its own database and data dir."""
    return rig.make_settings(nats_server, database_url, hive_home)


@pytest.fixture
def operator_settings(settings: Settings, nats_server: EmbeddedNats) -> Settings:
    return rig.operator_settings(settings, nats_server)


@pytest.fixture
async def service_nc(nats_server: EmbeddedNats) -> AsyncIterator[NATS]:
    """A NATS connection with the services' credentials."""
    nc = await rig.connect_as(nats_server, nats_server.service_seed)
    yield nc
    await nc.close()


@pytest.fixture
async def operator_nc(nats_server: EmbeddedNats) -> AsyncIterator[NATS]:
    """A NATS connection with the operator's credentials."""
    nc = await rig.connect_as(nats_server, nats_server.operator_seed, "_INBOX.operator")
    yield nc
    await nc.close()


@pytest.fixture
def victim() -> Iterator[subprocess.Popen[bytes]]:
    """A process of the host's root, as the services are: no agent may signal it."""
    proc = subprocess.Popen(["sleep", "600"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()
