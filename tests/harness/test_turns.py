"""One harness, its turns: wake prompt, claude events, ack, stats, heartbeat.

The real claude CLI runs against the scripted Anthropic API; broker and
lifecycle are the real services; the harness runs in this process.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client as NATS

from hyperhive.common import endpoints, rpc, subjects
from hyperhive.common.jetstream import ensure_state_bucket
from hyperhive.common.wire.broker import (
    DeliverRequest,
    RecvReply,
    RecvRequest,
    SendReply,
    TurnEvent,
)
from hyperhive.common.wire.events import ContainerCrash
from hyperhive.harness.prompt import prompt_digest, system_prompt
from tests import rig
from tests.harness.conftest import (
    Stack,
    agent_name,
    assert_offers_hyperhive_tools,
    running_harness,
    running_stack,
    stack_settings,
)
from tests.scripted_anthropic import (
    Block,
    Request,
    ScriptedAnthropic,
    after_tool_results,
    last_user_mentions,
    mentions,
    tool_result_text,
    tool_use,
)

pytestmark = pytest.mark.claude


async def test_message_becomes_a_turn(stack: Stack, api: ScriptedAnthropic, service_nc) -> None:
    name = agent_name("t")
    await stack.spawn(name)
    api.reply("hello operator, on it", when=last_user_mentions("first task"))
    async with running_harness(stack.harness_settings(name)) as h:
        sent = await stack.send(name, "first task: say hello")
        end = await h.turn_end(1)
        assert end["outcome"] == "ok", end
        assert end["acked"] and end["message_id"] == sent.id

        # the wake prompt names the sender, the message and the notes file
        req = api.requests[-1]
        prompt = req.last_user_text()
        assert f"message #{sent.id} from operator" in prompt
        assert "first task: say hello" in prompt
        assert str(h.harness.cfg.notes_path) in prompt
        # the system prompt addition says who the agent is
        assert f"You are {name}" in req.system_text()
        # and the model was offered the agent's tools up front, with schemas
        for r in api.requests:
            assert_offers_hyperhive_tools(r, name)
        assert set(req.offered["mcp__hyperhive__send"]["required"]) == {"to", "body"}

        # every stream-json event was published; the MCP server connected
        init = h.claude_events(1, "system")[0]
        assert {"name": "hyperhive", "status": "connected"}.items() <= init["mcp_servers"][
            0
        ].items()
        assert "mcp__hyperhive__send" in init["tools"]
        assert "mcp__hyperhive__request_spawn" not in init["tools"]  # not a manager
        texts = [
            b["text"]
            for e in h.claude_events(1, "assistant")
            for b in e["message"]["content"]
            if b["type"] == "text"
        ]
        assert texts == ["hello operator, on it"]
        assert h.claude_events(1, "result")[0]["is_error"] is False

        # acked at the broker, stats stored
        assert (await stack.status(sent.id)).state == "acked"
        points = await rig.eventually(
            lambda: _stat_keys(stack, name), timeout=15, what="stats rows"
        )
        assert {"duration_ms", "exit_code", "input_tokens", "output_tokens", "cost_usd"} <= points

        # the heartbeat is in the KV bucket
        kv = await ensure_state_bucket(service_nc.jetstream())
        entry = await kv.get(subjects.heartbeat_key(name))
        beat = json.loads(entry.value)
        assert beat["ts"] > 0 and "turn_started" in beat

        # and the turn's records are in HIVE_TURNS, in order, as the page showed them
        stored = await _turn_records(service_nc, name, until_type="turn_end")
        ours = [r for r in stored if r.turn == 1]
        assert ours[0].type == "turn_start" and ours[-1].type == "turn_end"
        assert [r.event for r in ours if r.type == "claude"] == h.claude_events(1)
        assert ours[-1].event["message_id"] == sent.id


async def _turn_records(nc: NATS, name: str, until_type: str) -> list[TurnEvent]:
    """The agent's records in the HIVE_TURNS stream, oldest first, up to the
    first of type ``until_type``."""
    js = nc.jetstream()
    sub = await js.subscribe(
        subjects.agent(name, subjects.AGENT_EVENTS),
        stream=subjects.TURNS_STREAM,
        ordered_consumer=True,
    )
    out: list[TurnEvent] = []
    try:
        async with asyncio.timeout(15):
            while not out or out[-1].type != until_type:
                msg = await sub.next_msg(timeout=15)
                out.append(msgspec.json.decode(msg.data, type=TurnEvent))
    finally:
        await sub.unsubscribe()
    return out


async def _stat_keys(stack: Stack, name: str) -> set[str] | None:
    reply = await stack.stats(name)
    keys = {p.key for p in reply.points}
    return keys or None


async def test_tool_calls_and_bad_input(stack: Stack, api: ScriptedAnthropic) -> None:
    """claude's MCP calls: send, message_status, recv; then a send to nobody and
    wrong argument types (a real model can send an input its schema refuses):
    each error is a clear tool error and the harness goes on. The manager
    tools are not offered, so the model cannot call them."""
    name, peer = agent_name("u"), agent_name("v")
    await stack.spawn(name)
    await stack.spawn(peer)
    mine = mentions(f"You are {name}")

    def status_of_sent(req: Request) -> Block:
        sent_id = json.loads(tool_result_text(req.tool_results()[0]))["id"]
        return tool_use("mcp__hyperhive__message_status", {"id": sent_id})

    script = [
        tool_use("mcp__hyperhive__send", {"to": peer, "body": "hi peer"}),
        status_of_sent,
        tool_use("mcp__hyperhive__recv", {"wait_seconds": 1}),
        tool_use("mcp__hyperhive__send", {"to": "nobody9", "body": "x"}),
        tool_use("mcp__hyperhive__send", {"to": 5, "body": ["not", "text"]}),
        "done with tools",
    ]
    api.reply(script[0], when=last_user_mentions("start tools"))
    for i, step in enumerate(script[1:], start=1):
        api.reply(step, when=after_tool_results(i, also=mine))
    async with running_harness(stack.harness_settings(name)) as h:
        await stack.send(name, "start tools")
        extra = await stack.send(name, "an extra note, picked up with recv")
        end = await h.turn_end(1)
        assert end["outcome"] == "ok", end
        results = [
            b
            for e in h.claude_events(1, "user")
            for b in e["message"]["content"]
            if isinstance(b, dict) and b.get("type") == "tool_result"
        ]
        assert len(results) == 5
        ok, status, received, unknown, types = results
        assert not ok.get("is_error")
        sent_id = json.loads(tool_result_text(ok))["id"]
        receipt = json.loads(tool_result_text(status))
        assert receipt["id"] == sent_id and receipt["recipient"] == peer
        assert receipt["state"] == "committed"  # the peer has not taken it yet
        got = json.loads(tool_result_text(received))
        assert (got["id"], got["from"]) == (extra.id, "operator")
        assert got["body"] == "an extra note, picked up with recv"
        assert (await stack.status(extra.id)).state == "acked"  # recv acks at once
        assert unknown.get("is_error")
        assert "not_found" in tool_result_text(unknown) and "nobody9" in tool_result_text(unknown)
        assert types.get("is_error") and "validation error" in tool_result_text(types)
        for req in api.matching(mine):
            assert not {f"mcp__hyperhive__{t}" for t in endpoints.MANAGER_TOOLS} & set(req.offered)
        # the peer got the good one
        inbox = await stack.inbox(peer)
        assert [m.body for m in inbox.messages] == ["hi peer"]
        stats = end["stats"]
        assert stats["messages_sent"] == 1 and stats["messages_received"] == 2
        assert stats["messages_sent_to"] == {"peer": 1}  # failed sends are not counted
        assert stats["tool_calls"]["mcp__hyperhive__send"] == 3

        # the harness keeps running: the next message is a normal turn
        api.reply("still here", when=last_user_mentions("are you there"))
        await stack.send(name, "are you there")
        end2 = await h.turn_end(2)
        assert end2["outcome"] == "ok"


@pytest.fixture
async def quick_redelivery(
    nats_server, database_url, hive_home, api: ScriptedAnthropic
) -> AsyncIterator[Stack]:
    settings = stack_settings(
        nats_server, database_url, hive_home, HIVE_BROKER_VISIBILITY_TIMEOUT_S="1"
    )
    async with running_stack(nats_server, settings) as s:
        yield s


async def test_wake_prompt_says_redelivered_and_names_system_events(
    quick_redelivery: Stack, api: ScriptedAnthropic, service_nc
) -> None:
    stack = quick_redelivery
    name = agent_name("d")
    await stack.spawn(name)
    # an earlier harness took the message and died before acking it
    async with rig.agent_connection(stack.nats, stack.settings, name) as nc:
        sent = await stack.send(name, "half-done work")
        got = await rpc.request(
            nc, subjects.agent(name, "recv"), RecvRequest(wait_ms=2000), RecvReply, timeout=10
        )
        assert got.message is not None and got.message.id == sent.id
    async with running_harness(stack.harness_settings(name)) as h:
        end = await h.turn_end(1)
        assert end["outcome"] == "ok" and end["message_id"] == sent.id
        start = h.records("turn_start", 1)[0].event
        assert start["redelivered"] is True
        assert "This is a redelivery" in api.requests[-1].last_user_text()

        # a system event from a service: the prompt names its type
        await rpc.request(
            service_nc,
            subjects.system("broker", "deliver"),
            DeliverRequest(to=name, event=ContainerCrash(agent="peer1", detail="exit 1")),
            SendReply,
        )
        end = await h.turn_end(2)
        assert end["outcome"] == "ok"
        prompt = api.requests[-1].last_user_text()
        assert "from system (system event ContainerCrash)" in prompt


async def test_the_prompt_of_the_conversation_is_kept_across_restarts(
    stack: Stack, api: ScriptedAnthropic
) -> None:
    """The digest of the conversation's system prompt lives in the state dir: a
    state dir without one (kept before the harness kept it) continues the
    conversation and takes its prompt as it is; a later change of agent.toml's
    ``prompt`` then starts a new conversation."""
    name = agent_name("k")
    await stack.spawn(name)
    settings = stack.harness_settings(name)

    def asked(task: str) -> Request:
        return [r for r in api.requests if last_user_mentions(task)(r)][-1]

    async with running_harness(settings) as h:
        await stack.send(name, "alpha task")
        assert (await h.turn_end(1))["outcome"] == "ok"
        kept = h.harness.cfg.harness_dir / "conversation_prompt"
        assert kept.read_text().strip() == prompt_digest(system_prompt(h.harness.cfg))
    kept.unlink()  # a state dir from before the digest was kept

    async with running_harness(settings) as h:
        await stack.send(name, "beta task")
        assert (await h.turn_end(2))["outcome"] == "ok"
        assert not h.records("new_conversation")
        assert any("alpha task" in t for t in asked("beta task").user_texts())
        before = kept.read_text().strip()
        assert before == prompt_digest(system_prompt(h.harness.cfg))

    toml = Path(settings.harness.config_dir) / "agent.toml"
    toml.write_text(toml.read_text().replace('prompt = ""', 'prompt = "PROMPT-MARK-K2"'))
    async with running_harness(settings) as h:
        await stack.send(name, "gamma task")
        assert (await h.turn_end(3))["outcome"] == "ok"
        said = [r.event for r in h.records("new_conversation")]
        now = prompt_digest(system_prompt(h.harness.cfg))
        assert [(e["reason"], e["previous_digest"], e["prompt_digest"]) for e in said] == [
            ("prompt_changed", before, now)
        ]
        req = asked("gamma task")
        assert "PROMPT-MARK-K2" in req.system_text()
        earlier = [t for t in req.user_texts() if "alpha task" in t or "beta task" in t]
        assert not earlier, req.user_texts()
        assert kept.read_text().strip() == now
