"""A service that is down (or hangs) shows as down in its own section only."""

from __future__ import annotations

import re
import socket

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from hyperhive.cli.embedded import EmbeddedNats
from hyperhive.common import subjects
from hyperhive.common.config import Settings
from hyperhive.common.errors import ConfigError
from tests import rig
from tests.dashboard.conftest import csrf_session, logged_in, running_stack, stack_settings


def section(page: str, name: str) -> str:
    """The body of one section of the page."""
    match = re.search(
        rf'<div id="body-{name}" class="sec-body"[^>]*>(.*?)</section>', page, re.DOTALL
    )
    assert match, f"no section {name}"
    return match.group(1)


async def test_lifecycle_and_broker_down_approvals_up(
    nats_server: EmbeddedNats, database_url: str, hive_home
) -> None:
    settings = stack_settings(nats_server, database_url, hive_home)
    async with (
        running_stack(nats_server, settings, ("approvals", "dashboard")) as stack,
        logged_in(stack, 30) as client,
    ):
        r = await client.get("/")
        assert r.status_code == 200
        page = r.text
        for name in ("containers", "nodes", "kept", "drafts"):
            assert 'data-down="lifecycle"' in section(page, name), name
        assert 'data-down="broker"' in section(page, "telemetry")
        for name in ("approvals", "questions"):
            assert "is down" not in section(page, name), name
        assert "No approvals waiting" in section(page, "approvals")
        assert re.search(r'svc-down" data-service="lifecycle"', page)
        assert re.search(r'svc-up" data-service="approvals"', page)

        # a section refreshed on its own says the same
        r = await client.get("/section/containers")
        assert r.status_code == 200 and 'data-down="lifecycle"' in r.text
        # an action on the down service fails cleanly with 503
        token = await csrf_session(client)
        r = await client.post(
            "/agents/spawn",
            data={"name": "nolife"},
            headers={"X-CSRF-Token": token, "Accept": "application/json"},
        )
        assert r.status_code == 503
        assert r.json()["ok"] is False and "lifecycle" in r.json()["message"]
        # panels too
        r = await client.get("/agents/hm1nd/inbox")
        assert r.status_code == 200 and "broker is down" in r.text


async def test_a_hanging_service_times_out_into_down(
    nats_server: EmbeddedNats, database_url: str, hive_home, service_nc: NATS
) -> None:
    """Something takes lifecycle's subjects but never answers: the page still renders."""
    seen: list[str] = []

    async def swallow(msg: Msg) -> None:
        seen.append(msg.subject)  # and never reply

    sub = await service_nc.subscribe("hive.admin.lifecycle.*", cb=swallow)
    settings: Settings = stack_settings(
        nats_server, database_url, hive_home, HIVE_DASHBOARD_SECTION_TIMEOUT_S="0.5"
    )
    try:
        async with (
            running_stack(nats_server, settings, ("dashboard",)) as stack,
            logged_in(stack, 30) as client,
        ):
            r = await client.get("/")
            assert r.status_code == 200
            body = section(r.text, "containers")
            assert 'data-down="lifecycle"' in body
            assert "no reply" in body
            assert subjects.admin("lifecycle", "list") in seen
    finally:
        await sub.unsubscribe()


async def test_a_taken_port_is_one_clear_error(
    nats_server: EmbeddedNats, database_url: str, hive_home
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = stack_settings(
            nats_server, database_url, hive_home, HIVE_DASHBOARD_PORT=str(port)
        )
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            async with rig.running_service("dashboard", settings):
                pass


async def test_dashboard_as_the_operator_answers_its_ping(
    nats_server: EmbeddedNats, database_url: str, hive_home
) -> None:
    """Under NixOS the dashboard connects with the operator's credentials, not
    the services': `hive status` must still see it answer."""
    settings = rig.operator_settings(
        stack_settings(nats_server, database_url, hive_home), nats_server
    )
    async with rig.running_service("dashboard", settings):
        operator = await rig.connect_as(nats_server, nats_server.operator_seed, "_INBOX.operator")
        try:
            reply = await operator.request(subjects.admin("dashboard", "ping"), b"{}", timeout=5)
        finally:
            await operator.close()
    assert b"error" not in reply.data, reply.data
