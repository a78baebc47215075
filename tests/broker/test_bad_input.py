"""Bad input on every broker subject: a clear error reply, and the broker keeps serving."""

from __future__ import annotations

import json

import pytest
from nats.aio.client import Client as NATS

from hyperhive.common import rpc, subjects
from hyperhive.common.wire.base import Ping, Pong
from tests.broker.conftest import Hive, recv, send, unique


async def raw(nc: NATS, subject: str, data: bytes) -> dict[str, object]:
    """The error of a raw request's reply (fails the test if the reply is not an error)."""
    msg = await nc.request(subject, data, timeout=30)
    reply = json.loads(msg.data)
    assert "error" in reply, f"expected an error reply on {subject}, got {reply}"
    error = reply["error"]
    assert isinstance(error, dict) and error["message"]
    return error


AGENT_CASES = [
    # (verb, payload, code, words in the message)
    ("send", b"{not json", "bad_request", "bad request"),
    ("send", b'{"to": 5, "body": []}', "bad_request", "Expected `str`"),
    ("send", b"{}", "bad_request", "missing required field"),
    ("send", b'{"to": "Bad Name!", "body": "x"}', "bad_request", "invalid recipient"),
    ("send", b'{"to": "system", "body": "x"}', "bad_request", "invalid recipient"),
    ("send", b'{"to": "nobody1", "body": "x"}', "not_found", "unknown recipient"),
    ("send", b'{"to": "operator", "body": ""}', "bad_request", "empty"),
    ("send", b'{"to": "operator", "body": "   "}', "bad_request", "empty"),
    ("send", b'{"to": "operator", "body": "a\\u0000b"}', "bad_request", "NUL"),
    ("send", b'{"to": "operator", "body": "\\ud800"}', "bad_request", "bad request"),
    ("send", b'{"to": "operator", "body": "x", "idempotency_key": ""}', "bad_request", "key"),
    ("recv", b"[1, 2]", "bad_request", "bad request"),
    ("recv", b'{"wait_ms": "soon"}', "bad_request", "Expected `int`"),
    ("recv", b'{"wait_ms": -5}', "bad_request", "wait_ms"),
    ("ack", b"", "bad_request", "missing required field"),
    ("ack", b'{"id": "one"}', "bad_request", "Expected `int`"),
    ("ack", b'{"id": 987654321}', "not_found", "no message"),
    ("status", b'{"id": 987654321}', "not_found", "no message"),
    ("status", b'{"id": null}', "bad_request", "Expected `int`"),
    ("turns", b'{"after_seq": -1}', "bad_request", "after_seq"),
    ("turns", b'{"limit": 0}', "bad_request", "limit"),
    ("stats", b'{"ts": "now"}', "bad_request", "Expected"),
    ("stats", b'{"ts": 1e300, "duration_ms": 1, "exit_code": 0}', "bad_request", "unix time"),
]


@pytest.fixture
async def caller(hive: Hive) -> tuple[str, NATS]:
    return await hive.spawn()


async def test_bad_agent_requests_get_clear_errors(hive: Hive, caller):
    name, nc = caller
    for verb, data, code, words in AGENT_CASES:
        error = await raw(nc, subjects.agent(name, verb), data)
        assert error["code"] == code, (verb, data, error)
        assert words.lower() in str(error["message"]).lower(), (verb, data, error)
    await _still_serving(hive, nc, name)


async def test_oversized_body_is_refused(hive: Hive, caller):
    name, nc = caller
    limit = hive.settings.broker.max_body_bytes
    body = json.dumps({"to": "operator", "body": "é" * (limit // 2 + 1)}).encode()
    error = await raw(nc, subjects.agent(name, "send"), body)
    assert error["code"] == "bad_request" and str(limit) in str(error["message"])
    at_limit = json.dumps({"to": "operator", "body": "x" * limit}).encode()
    ok = json.loads((await nc.request(subjects.agent(name, "send"), at_limit, timeout=30)).data)
    assert isinstance(ok.get("id"), int)


async def test_an_agent_cannot_ack_another_agents_message(hive: Hive, caller):
    name, nc = caller
    other, other_nc = await hive.spawn()
    sent = await send(nc, name, other, "not yours to ack")
    error = await raw(nc, subjects.agent(name, "ack"), json.dumps({"id": sent.id}).encode())
    assert error["code"] == "forbidden"
    got = await recv(other_nc, other)
    assert got.message is not None and got.message.id == sent.id  # still pending for its owner


SERVICE_CASES = [
    (subjects.system("broker", "deliver"), b"{", "bad_request"),
    (
        subjects.system("broker", "deliver"),
        b'{"to": "operator", "event": {"type": "Nope"}}',
        "bad_request",
    ),
    (
        subjects.system("broker", "deliver"),
        b'{"to": "x", "event": {"type": "ContainerCrash"}}',
        "bad_request",
    ),
    (subjects.admin("broker", "send"), b'{"to": "operator", "body": "x"}', "bad_request"),
    (subjects.admin("broker", "send"), b'{"to": "nobody2", "body": "x"}', "not_found"),
    (subjects.admin("broker", "messages"), b'{"limit": 0}', "bad_request"),
    (subjects.admin("broker", "messages"), b'{"agent": "../etc"}', "bad_request"),
    (subjects.admin("broker", "messages"), b'{"since": "yesterday"}', "bad_request"),
    (subjects.admin("broker", "inbox"), b"{}", "bad_request"),
    (subjects.admin("broker", "inbox"), b'{"agent": "NO"}', "bad_request"),
    (subjects.admin("broker", "status"), b'{"id": 987654321}', "not_found"),
    (subjects.admin("broker", "stats"), b'{"limit": -1}', "bad_request"),
    (subjects.admin("broker", "stats"), b'{"agent": 7}', "bad_request"),
]


async def test_bad_service_and_operator_requests_get_clear_errors(hive: Hive, caller):
    for subject, data, code in SERVICE_CASES:
        nc = hive.service if ".system." in subject else hive.operator
        error = await raw(nc, subject, data)
        assert error["code"] == code, (subject, data, error)
    name, nc = caller
    await _still_serving(hive, nc, name)


async def test_garbage_turn_stats_are_dropped(hive: Hive, caller):
    name, nc = caller
    await nc.publish(subjects.agent(name, subjects.AGENT_STATS), b"\xff\xfe garbage")
    await nc.flush()
    await _still_serving(hive, nc, name)


async def _still_serving(hive: Hive, nc: NATS, name: str) -> None:
    pong = await rpc.request(hive.operator, subjects.admin("broker", "ping"), Ping(), Pong)
    assert pong.database == "ok"
    sent = await send(nc, name, subjects.OPERATOR, f"still here {unique()}")
    assert sent.id > 0
