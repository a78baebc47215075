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
    data = rpc.encode(wire.DeliverRequest(to="hm1nd", event=wire.AgentStuck(agent="a", reason="x")))
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
