"""The operator's message commands, run as ``hive …`` processes against the broker."""

from __future__ import annotations

import asyncio
import json
import signal
import sys

import pytest

from hyperhive.cli.cmd_messages import parse_since
from hyperhive.common.errors import BadRequest
from tests import rig
from tests.broker.conftest import Hive, ack, recv, send

TIMEOUT = 60


def _env(hive: Hive) -> dict[str, str]:
    return rig.cli_env(rig.operator_settings(hive.settings, hive.nats))


async def hive_cli(hive: Hive, *args: str) -> tuple[int, str, str]:
    return await rig.hive_cli(
        rig.operator_settings(hive.settings, hive.nats), *args, timeout=TIMEOUT
    )


async def test_send_inbox_messages_and_status(hive: Hive):
    a, na = await hive.spawn()
    code, out, err = await hive_cli(hive, "send", a, "hello", "from", "the", "cli", "--json")
    assert code == 0, err
    message_id = json.loads(out)["id"]

    code, out, _ = await hive_cli(hive, "inbox", a, "--json")
    assert code == 0
    assert [(m["id"], m["sender"], m["body"]) for m in json.loads(out)] == [
        (message_id, "operator", "hello from the cli")
    ]
    code, out, _ = await hive_cli(hive, "inbox", a)
    assert code == 0 and "hello from the cli" in out and "committed" in out

    got = await recv(na, a)
    assert got.message is not None and got.message.id == message_id
    await ack(na, a, message_id)
    reply = await send(na, a, "operator", "thanks, operator")

    code, out, _ = await hive_cli(hive, "messages", "--agent", a, "--since", "1h", "--json")
    assert code == 0
    history = json.loads(out)
    assert [(m["id"], m["state"]) for m in history] == [
        (message_id, "acked"),
        (reply.id, "committed"),
    ]
    code, out, _ = await hive_cli(hive, "messages", "--agent", a, "--limit", "1")
    assert code == 0 and "thanks, operator" in out and "hello from the cli" not in out

    code, out, _ = await hive_cli(hive, "message-status", str(message_id), "--json")
    assert code == 0
    status = json.loads(out)
    assert (status["state"], status["deliveries"], status["recipient"]) == ("acked", 1, a)
    code, out, _ = await hive_cli(hive, "message-status", str(message_id))
    assert code == 0 and f"operator -> {a}: acked" in out


def _last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


async def test_errors_are_one_clear_line(hive: Hive):
    code, out, err = await hive_cli(hive, "send", "nobody9", "hi")
    assert code == 1 and out == ""
    assert _last_line(err) == "hive: unknown recipient 'nobody9': no such agent"
    code, _, err = await hive_cli(hive, "message-status", "987654321")
    assert code == 1 and _last_line(err) == "hive: no message with id 987654321"
    code, _, err = await hive_cli(hive, "messages", "--since", "yesterday")
    assert code == 1 and "--since 'yesterday'" in err


async def test_tail_follows_messages_until_interrupted(hive: Hive):
    a, na = await hive.spawn()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hyperhive.cli.main",
        "tail",
        "--agent",
        a,
        env=_env(hive),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(TIMEOUT):
            assert proc.stderr is not None and proc.stdout is not None
            assert b"following messages" in await proc.stderr.readline()
            sent = await send(na, a, "operator", "watch this")
            line = (await proc.stdout.readline()).decode()
            assert f"#{sent.id} {a} -> operator  sent: watch this" in line
            proc.send_signal(signal.SIGINT)
            assert await proc.wait() == 130
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_since_takes_unix_time_iso_time_and_ages():
    assert parse_since("1700000000") == 1_700_000_000.0
    assert parse_since("10m", now=1000.0) == 400.0
    assert parse_since("2h", now=10_000.0) == 2800.0
    assert parse_since("2026-01-02T03:04:05+00:00") == 1767323045.0
    with pytest.raises(BadRequest):
        parse_since("last week")
