"""Wire types: JSON round trips, the error shape, schema evolution rules."""

import msgspec
import pytest

from hyperhive.common import errors, rpc, wire


@pytest.mark.parametrize(
    "value",
    [
        wire.SendRequest(to="b", body="hi", idempotency_key="k1"),
        wire.RecvReply(
            message=wire.Message(
                id=1,
                sender="system",
                recipient="hm1nd",
                body="crash",
                ts=1.5,
                event=wire.ContainerCrash(agent="a", detail="exit 9"),
            )
        ),
        wire.ApprovalInfo(id=3, kind="ApplyCommit", agent="a", state="pending"),
        wire.AgentsReply(
            agents=[wire.AgentInfo(name="a", kind="agent", state="running", port=8100)]
        ),
        wire.TurnStats(ts=1.0, duration_ms=2.0, exit_code=0, tool_calls={"send": 2}),
        wire.DeliverRequest(to="hm1nd", event=wire.OperatorAnswered(question_id=1, question="q")),
    ],
)
def test_round_trip(value):
    data = rpc.encode(value)
    assert rpc.decode_reply(data, type(value)) == value


def test_system_events_are_tagged_by_type():
    stuck = wire.AgentStuck(agent="a", reason="heartbeat")
    data = rpc.encode(wire.DeliverRequest(to="hm1nd", event=stuck))
    assert b'"type":"AgentStuck"' in data
    decoded = rpc.decode_reply(data, wire.DeliverRequest)
    assert isinstance(decoded.event, wire.AgentStuck)


def test_readers_ignore_unknown_fields_and_fill_defaults():
    decoded = rpc.decode_reply(b'{"to":"b","body":"x","future_field":[1,2]}', wire.SendRequest)
    assert decoded == wire.SendRequest(to="b", body="x")


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        ("bad_request", errors.BadRequest),
        ("not_found", errors.NotFound),
        ("conflict", errors.Conflict),
        ("forbidden", errors.Forbidden),
        ("unavailable", errors.Unavailable),
        ("timeout", errors.RequestTimeout),
        ("something_new", errors.Internal),
    ],
)
def test_error_reply_becomes_matching_exception(code, cls):
    data = msgspec.json.encode({"error": {"code": code, "message": "the reason"}})
    with pytest.raises(cls, match="the reason"):
        rpc.decode_reply(data, wire.SendReply)


def test_timeout_is_also_a_builtin_timeout():
    assert issubclass(errors.RequestTimeout, TimeoutError)
    assert issubclass(errors.BadRequest, ValueError)


def test_reply_of_the_wrong_shape_is_an_internal_error():
    with pytest.raises(errors.Internal, match="SendReply"):
        rpc.decode_reply(b'{"id":"not-an-int","ts":1}', wire.SendReply)


# --- states are types -----------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "payload", "field"),
    [
        (wire.AgentInfo, {"name": "a", "kind": "agent", "state": "sleeping", "port": 1}, "state"),
        (wire.AgentInfo, {"name": "a", "kind": "boss", "state": "running", "port": 1}, "kind"),
        (wire.ApprovalInfo, {"id": 1, "kind": "Spawn", "agent": "a", "state": "done"}, "state"),
        (wire.ApprovalsRequest, {"state": "everything"}, "state"),
        (wire.TransientFlag, {"flag": "Pausing"}, "flag"),
        (wire.AgentStuck, {"agent": "a", "reason": "bored"}, "reason"),
        (wire.ApprovalResolved, {"approval_id": 1, "agent": "a", "state": "pending"}, "state"),
        (
            wire.HistoryItem,
            {"id": 1, "sender": "a", "recipient": "b", "body": "", "ts": 0, "state": "lost"},
            "state",
        ),
    ],
)
def test_a_state_outside_its_machine_is_refused(kind, payload, field):
    with pytest.raises(msgspec.ValidationError, match=field):
        msgspec.json.decode(msgspec.json.encode(payload), type=kind)


def test_states_keep_their_json_strings():
    info = wire.AgentInfo(name="a", kind="manager", state="running", port=1, flag="Restarting")
    assert msgspec.json.decode(rpc.encode(info))["state"] == "running"
    assert wire.AGENT_STATES == {"draft", "creating", "running", "stopped", "failed", "destroyed"}
    assert wire.APPROVAL_STATES == {"pending", "approved", "deployed", "failed", "denied"}
    assert wire.MESSAGE_STATES == {"committed", "handed_out", "acked"}
    assert wire.APPROVAL_ENDS < wire.APPROVAL_STATES and wire.DOWN_STATES < wire.AGENT_STATES


# --- HIVE_EVENTS: one typed data per kind ------------------------------------------


def test_every_event_kind_has_one_data_type():
    from hyperhive.common import subjects

    kinds = {v for k, v in vars(subjects).items() if k.startswith("EV_")}
    assert set(wire.EVENT_DATA_TYPES) == kinds


def test_typed_event_data_keeps_the_records_json_shape():
    from hyperhive.common.outbox import make_event

    typed = make_event(
        wire.AgentStateChanged(state="stopped", previous="running", seq=4), agent="a"
    )
    loose = make_event(
        "agent.state", agent="a", state="stopped", previous="running", flag=None, seq=4
    )
    assert (typed.kind, typed.agent, typed.data) == (loose.kind, loose.agent, loose.data)
    # absent unless the container stopped by itself: readers tell the two apart
    assert "exit_code" not in typed.data and "detail" not in typed.data
    back = wire.event_data(wire.decode_event(wire.encode_event(typed)))
    assert back == wire.AgentStateChanged(state="stopped", previous="running", seq=4)

    approval = wire.ApprovalResolvedEvent(id=3, kind="Spawn", state="denied", note="no")
    record = make_event(approval, agent="b")
    assert record.kind == "approval.resolved" and record.data["kind"] == "Spawn"
    assert "_kind" not in record.data and wire.event_data(record) == approval


def test_a_publisher_cannot_write_a_record_its_kind_does_not_allow():
    from hyperhive.common.outbox import make_event

    with pytest.raises(msgspec.ValidationError, match="state"):
        make_event("agent.state", agent="a", state="sleeping", previous=None, flag=None, seq=1)
    with pytest.raises(TypeError):
        make_event(wire.AgentPurged(), agent="a", extra=1)


def test_readers_skip_unknown_kinds_and_old_crash_records():
    unknown = wire.HiveEvent(kind="future.thing", ts=1.0, data={"x": 1})
    assert wire.event_data(unknown) is None
    # crash-watch's records before typed events left the agent to the envelope
    old = wire.HiveEvent(
        kind="crash.detected",
        ts=1.0,
        agent="w",
        data={"event": {"type": "ContainerCrash", "detail": "exit 1", "exit_code": 1}},
    )
    assert wire.event_data(old) == wire.CrashDetected(
        event=wire.ContainerCrash(agent="w", detail="exit 1", exit_code=1)
    )
