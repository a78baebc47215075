"""Bad input on every broker subject: a clear error reply, and the broker keeps serving."""

from __future__ import annotations

import json

import pytest
from nats.aio.client import Client as NATS

from hyperhive.common import catalog, rpc, subjects
from hyperhive.common.wire.base import Ping, Pong
from hyperhive.common.wire.broker import StatPoint, StatsReply, StatsRequest
from tests import rig
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
    ("recv", b'{"ack": 0}', "bad_request", ">= 1"),
    ("recv", b'{"ack": 987654321}', "not_found", "no message"),
    ("ack", b"", "bad_request", "missing required field"),
    ("ack", b'{"id": "one"}', "bad_request", "Expected `int`"),
    ("ack", b'{"id": 987654321}', "not_found", "no message"),
    # out of range: refused when decoded, never an error from Postgres
    ("ack", b'{"id": 9223372036854775808}', "bad_request", "<= 9223372036854775807"),
    ("ack", b'{"id": 18446744073709551616}', "bad_request", "<= 9223372036854775807"),
    ("ack", b'{"id": -9223372036854775809}', "bad_request", ">= 1"),
    ("ack", b'{"id": 0}', "bad_request", ">= 1"),
    ("status", b'{"id": 9223372036854775808}', "bad_request", "<= 9223372036854775807"),
    ("status", b'{"id": -1}', "bad_request", ">= 1"),
    ("status", b'{"id": 987654321}', "not_found", "no message"),
    ("status", b'{"id": null}', "bad_request", "Expected `int`"),
    ("turns", b'{"after_seq": -1}', "bad_request", "after_seq"),
    ("turns", b'{"limit": 0}', "bad_request", "limit"),
    ("turns", b'{"after_seq": 18446744073709551616}', "bad_request", "after_seq"),
    ("stats", b'{"ts": "now"}', "bad_request", "Expected"),
    ("stats", b'{"ts": 1e300, "duration_ms": 1, "exit_code": 0}', "bad_request", "unix time"),
    ("stats", b'{"ts": 1, "duration_ms": 1, "exit_code": 0, "kind": "nap"}', "bad_request", "kind"),
    (
        "stats",
        b'{"ts": 1, "duration_ms": 1, "exit_code": 0, "cost_usd": -2}',
        "bad_request",
        ">= 0",
    ),
    (
        "stats",
        b'{"ts": 1, "duration_ms": 1, "exit_code": 0, "model_calls": -1}',
        "bad_request",
        ">= 0",
    ),
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
    (subjects.admin("broker", "messages"), b'{"since": 1e300}', "bad_request"),
    (subjects.admin("broker", "messages"), b'{"since": -1e300}', "bad_request"),
    (subjects.admin("broker", "messages"), b'{"since": 9223372036854775808}', "bad_request"),
    (subjects.admin("broker", "messages"), b'{"limit": 9223372036854775808}', "ok"),
    (subjects.admin("broker", "inbox"), b"{}", "bad_request"),
    (subjects.admin("broker", "prune"), b"{}", "bad_request"),
    (subjects.admin("broker", "prune"), b'{"before": "yesterday"}', "bad_request"),
    (subjects.admin("broker", "prune"), b'{"before": 1e300}', "bad_request"),
    (subjects.admin("broker", "prune"), b'{"before": -1}', "bad_request"),
    (subjects.admin("broker", "prune"), b'{"before": 99999999999}', "bad_request"),
    (subjects.admin("broker", "inbox"), b'{"agent": "NO"}', "bad_request"),
    (subjects.admin("broker", "status"), b'{"id": 987654321}', "not_found"),
    (subjects.admin("broker", "status"), b'{"id": 9223372036854775808}', "bad_request"),
    (subjects.admin("broker", "stats"), b'{"limit": -1}', "bad_request"),
    (subjects.admin("broker", "stats"), b'{"agent": 7}', "bad_request"),
    (subjects.admin("broker", "stats"), b'{"since": 1e300}', "bad_request"),
    (subjects.admin("broker", "stats"), b'{"since": -5}', "bad_request"),
    (subjects.admin("broker", "usage"), b'{"agent": "../etc"}', "bad_request"),
    (subjects.admin("broker", "usage"), b'{"agent": 7}', "bad_request"),
    (subjects.admin("broker", "usage"), b'{"since": 1e300}', "bad_request"),
    (subjects.admin("broker", "usage"), b'{"since": -5}', "bad_request"),
    (subjects.admin("broker", "usage"), b'{"agent": "nobody3"}', "ok"),
]


async def test_bad_service_and_operator_requests_get_clear_errors(hive: Hive, caller):
    for subject, data, code in SERVICE_CASES:
        nc = hive.service if ".system." in subject else hive.operator
        if code == "ok":  # in range: capped, not refused
            reply = json.loads((await nc.request(subject, data, timeout=30)).data)
            assert "error" not in reply, (subject, data, reply)
            continue
        error = await raw(nc, subject, data)
        assert error["code"] == code, (subject, data, error)
    name, nc = caller
    await _still_serving(hive, nc, name)


MALFORMED = [b"{", b"[]", b"null", b"1", b'"text"', b"\xff\xfe", b'{"a": 1} trailing']


def broker_subjects(agent: str) -> list[str]:
    """Every subject the broker answers, from the catalog (agent subjects as ``agent``)."""
    return [
        e.subject.replace("<n>", agent)
        for e in catalog.CATALOG
        if e.handler == "broker" and e.request is not None and e.subject != subjects.BROKER_WAKE
    ]


async def test_malformed_json_on_every_broker_subject_is_a_bad_request(hive: Hive, caller):
    name, nc = caller
    listed = broker_subjects(name)
    agent_verbs = ("send", "recv", "ack", "status", "turns", "stats")
    admin_verbs = ("send", "messages", "inbox", "status", "stats", "prune", "ping")
    expected = {subjects.agent(name, v) for v in agent_verbs}
    expected |= {subjects.admin("broker", v) for v in admin_verbs}
    expected.add(subjects.system("broker", "deliver"))
    assert expected <= set(listed), sorted(expected - set(listed))
    for subject in listed:
        if subject.startswith("hive.agent."):
            conn = nc
        elif subject.startswith("hive.system."):
            conn = hive.service
        else:
            conn = hive.operator
        for data in MALFORMED:
            error = await raw(conn, subject, data)
            assert error["code"] == "bad_request", (subject, data, error)
            assert "bad request" in str(error["message"]), (subject, data, error)
    await _still_serving(hive, nc, name)


async def test_oversized_operator_message_is_refused(hive: Hive, caller):
    name, _nc = caller
    limit = hive.settings.broker.max_body_bytes
    subject = subjects.admin("broker", "send")
    too_big = json.dumps({"to": name, "body": "x" * (limit + 1)}).encode()
    error = await raw(hive.operator, subject, too_big)
    assert error["code"] == "bad_request" and str(limit) in str(error["message"])
    at_limit = json.dumps({"to": name, "body": "y" * limit}).encode()
    ok = json.loads((await hive.operator.request(subject, at_limit, timeout=30)).data)
    assert isinstance(ok.get("id"), int), ok


GARBAGE_STATS = [
    b"\xff\xfe garbage",
    b"{",
    b'{"ts": "yesterday", "duration_ms": 1, "exit_code": 0}',  # wrong type
    b'{"ts": -5, "duration_ms": 1, "exit_code": 0}',  # not a unix time
    b'{"ts": 1700000000, "duration_ms": 1, "exit_code": 0, "input_tokens": -3}',
    b'{"ts": 1700000000, "duration_ms": 1, "exit_code": 0, "tool_calls": {"": 1}}',
]


async def test_garbage_turn_stats_are_dropped(hive: Hive, caller):
    name, nc = caller
    subject = subjects.agent(name, subjects.AGENT_STATS)
    for data in GARBAGE_STATS:
        await nc.publish(subject, data)
    # then one good record: once it is stored, everything before it was handled
    good = {"ts": 1_700_000_123.0, "duration_ms": 5.0, "exit_code": 0}
    await nc.publish(subject, json.dumps(good).encode())
    await nc.flush()

    async def stored() -> list[StatPoint] | None:
        reply = await rpc.request(
            hive.operator, subjects.admin("broker", "stats"), StatsRequest(agent=name), StatsReply
        )
        return reply.points or None

    points = await rig.eventually(stored, what="the good stats stored")
    assert {p.ts for p in points} == {good["ts"]}, points  # none of the garbage
    assert {p.agent for p in points} == {name}
    await _still_serving(hive, nc, name)


async def test_garbage_wakes_between_instances_are_ignored(hive: Hive, caller):
    name, nc = caller
    for data in (b"{", b'{"origin": 5}', b'{"origin": "x", "recipients": "all"}', b"\xff"):
        await hive.service.publish(subjects.BROKER_WAKE, data)
    await hive.service.flush()
    await _still_serving(hive, nc, name)


async def _still_serving(hive: Hive, nc: NATS, name: str) -> None:
    pong = await rpc.request(hive.operator, subjects.admin("broker", "ping"), Ping(), Pong)
    assert pong.database == "ok"
    sent = await send(nc, name, subjects.OPERATOR, f"still here {unique()}")
    assert sent.id > 0
