"""A dashboard run without a token by explicit opt-out
(``dashboard.insecure_no_token``): it says so loudly, pages are open, and
every operator action from a non-loopback address is refused.

A module of its own: its lifecycle must be the only one on this module's
NATS server (the token tests' stack runs another).
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import httpx
import pytest

from hyperhive.cli.embedded import EmbeddedNats
from tests.dashboard.conftest import (
    approval,
    commit_config,
    csrf_session,
    request_apply_commit,
    running_stack,
    set_prompt,
    spawn_agent,
    stack_settings,
    unique_name,
)


def _outside_address() -> str | None:
    """This host's address on a non-loopback interface (None: there is none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: only the route is looked up
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if ipaddress.ip_address(address).is_loopback else address


async def test_opt_out_warns_and_refuses_actions_from_a_non_loopback_address(
    nats_server: EmbeddedNats,
    database_url: str,
    hive_home: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    outside = _outside_address()
    if outside is None:
        pytest.skip("no non-loopback interface to connect from")
    settings = stack_settings(
        nats_server,
        database_url,
        hive_home,
        HIVE_DASHBOARD_TOKEN_FILE="",
        HIVE_DASHBOARD_INSECURE_NO_TOKEN="true",
        HIVE_DASHBOARD_HOST="0.0.0.0",
    )
    async with running_stack(nats_server, settings) as stack:
        assert any("INSECURE" in r.getMessage() for r in caplog.records)
        name = await spawn_agent(stack, "op")
        sha = await commit_config(settings, name, set_prompt("from outside"), "outside")
        approval_id = await request_apply_commit(stack, name, sha)
        port = settings.dashboard.port
        async with httpx.AsyncClient(base_url=f"http://{outside}:{port}", timeout=30) as far:
            csrf = await csrf_session(far)  # reading is open without a token
            for path in (f"/approvals/{approval_id}/approve", "/agents/spawn"):
                r = await far.post(path, data={"_csrf": csrf, "name": unique_name("op")})
                assert r.status_code == 403 and "non-loopback" in r.text, (path, r.text)
        assert (await approval(stack, approval_id)).state == "pending"
        # the same action from loopback goes through, attributed to its address
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as near:
            csrf = await csrf_session(near)
            r = await near.post(
                f"/approvals/{approval_id}/approve",
                headers={"X-CSRF-Token": csrf, "Accept": "application/json"},
            )
            assert r.status_code == 200 and r.json()["ok"], r.text
        row = await approval(stack, approval_id)
        assert row.state == "deployed", row.error
        assert row.decided_by == "operator via dashboard (no token, from 127.0.0.1)"
