"""Tracing across agents (DESIGN §8): one send is one trace, from the caller
through the broker to the recipient's turn, and on through the MCP calls that
turn makes. The real claude CLI calls ``hive harness mcp``; broker, lifecycle
and both harnesses run in this process, their spans collected in memory."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from hyperhive.common import subjects
from hyperhive.common.natsconn import sync_subscriptions
from tests.harness.conftest import Stack, agent_name, running_harness, script_relay
from tests.rig import span_exporter
from tests.scripted_anthropic import (
    ScriptedAnthropic,
    after_tool_results,
    last_user_mentions,
    mentions,
    tool_use,
)

pytestmark = pytest.mark.claude


@pytest.fixture
def spans() -> InMemorySpanExporter:
    """Every span this process ends from now on."""
    return span_exporter()


@pytest.fixture
async def sends(service_nc: NATS) -> AsyncIterator[dict[str, list[Msg]]]:
    """A copy of every agent's send request (headers included), by agent."""
    seen: dict[str, list[Msg]] = {}

    async def on_msg(msg: Msg) -> None:
        seen.setdefault(subjects.parse_agent(msg.subject)[0], []).append(msg)

    sub = await service_nc.subscribe(subjects.agent_wildcard(subjects.AGENT_SEND), cb=on_msg)
    await sync_subscriptions(service_nc)
    yield seen
    await sub.unsubscribe()


def _traceparent(msg: Msg) -> tuple[str, str]:
    """(trace id, parent span id) of a NATS message's ``traceparent`` header."""
    value = (msg.headers or {}).get("traceparent", "")
    parts = value.split("-")
    assert len(parts) == 4, f"no traceparent on {msg.subject}: {msg.headers}"
    return parts[1], parts[2]


def _one(spans: InMemorySpanExporter, name: str) -> ReadableSpan:
    found = [s for s in spans.get_finished_spans() if s.name == name]
    assert len(found) == 1, [s.name for s in spans.get_finished_spans()]
    return found[0]


async def test_one_send_is_one_trace_through_both_turns(
    stack: Stack,
    api: ScriptedAnthropic,
    spans: InMemorySpanExporter,
    sends: dict[str, list[Msg]],
) -> None:
    a, b = agent_name("ta"), agent_name("tb")
    await stack.spawn(a)
    await stack.spawn(b)
    script_relay(api, a, b, prompt="pass it on", ping=f"traced ping from {a}", pong="traced pong")

    async with (
        running_harness(stack.harness_settings(a)) as ha,
        running_harness(stack.harness_settings(b)) as hb,
    ):
        with trace.get_tracer("test").start_as_current_span("operator sends") as root:
            await stack.send(a, f"pass it on to {b}")
        end_a = await ha.turn_end(1)
        end_b = await hb.turn_end(1)
        assert end_a["outcome"] == "ok" and end_b["outcome"] == "ok"
        start_a = ha.records("turn_start", 1)[0].event
        start_b = hb.records("turn_start", 1)[0].event
    trace_id = trace.format_trace_id(root.get_span_context().trace_id)

    # a's turn continues the operator's send, and the page's record says so
    turn_a = _one(spans, f"turn {a}")
    assert trace.format_trace_id(turn_a.context.trace_id) == trace_id
    assert turn_a.parent is not None and turn_a.parent.is_remote
    assert start_a["trace_id"] == trace_id
    # the MCP server's send (a subprocess of claude) is a child of a's turn
    (a_send,) = sends[a]
    tid, parent = _traceparent(a_send)
    assert tid == trace_id
    assert parent == trace.format_span_id(turn_a.context.span_id)
    # the broker handled it in the same trace ...
    handled = _one(spans, f"handle {a_send.subject}")
    assert trace.format_trace_id(handled.context.trace_id) == trace_id
    # ... and b's turn, woken by that message, continues it
    turn_b = _one(spans, f"turn {b}")
    assert trace.format_trace_id(turn_b.context.trace_id) == trace_id
    assert start_b["trace_id"] == trace_id
    (b_send,) = sends[b]
    assert _traceparent(b_send) == (trace_id, trace.format_span_id(turn_b.context.span_id))


async def test_an_operator_prompt_starts_its_own_trace(
    stack: Stack, api: ScriptedAnthropic, spans: InMemorySpanExporter, sends
) -> None:
    """No send behind it: the turn is a new trace, still handed to the MCP server."""
    name = agent_name("tp")
    await stack.spawn(name)
    mine = mentions(f"You are {name},")
    api.reply(
        tool_use("mcp__hyperhive__send", {"to": "operator", "body": "from a prompt"}),
        when=lambda r: mine(r) and last_user_mentions("say something")(r),
    )
    api.reply("said", when=after_tool_results(1, also=mine))
    async with running_harness(stack.harness_settings(name)) as h:
        await h.harness.operator_prompt("say something")
        assert (await h.turn_end(1))["outcome"] == "ok"
        start = h.records("turn_start", 1)[0].event
    turn = _one(spans, f"turn {name}")
    assert turn.parent is None  # a root span
    assert start["trace_id"] == trace.format_trace_id(turn.context.trace_id)
    (sent,) = sends[name]
    assert _traceparent(sent) == (
        start["trace_id"],
        trace.format_span_id(turn.context.span_id),
    )
