"""Secrets in what claude prints stay masked in the harness's records: the
live ring the agent page follows and HIVE_TURNS, which backfills it."""

from __future__ import annotations

import asyncio
import json

import msgspec
import nats.errors
import pytest

from hyperhive.common import subjects
from hyperhive.common.wire.broker import TurnEvent
from tests.harness.conftest import Stack, agent_name, running_harness
from tests.scripted_anthropic import ScriptedAnthropic, last_user_mentions

SECRET = "s3cr3t-value"
API_KEY = "sk-ant-api03-" + "Q" * 40


async def _stored_turn(stack: Stack, name: str, turn: int) -> list[TurnEvent]:
    """Every HIVE_TURNS record of ``name``'s ``turn``, up to its ``turn_end``."""
    js = stack.op.jetstream()
    sub = await js.subscribe(subjects.agent(name, "events"), ordered_consumer=True)
    found: list[TurnEvent] = []
    try:
        async with asyncio.timeout(30):
            while not any(r.type == "turn_end" for r in found):
                try:
                    msg = await sub.next_msg(timeout=1.0)
                except nats.errors.TimeoutError:
                    continue
                rec = msgspec.json.decode(msg.data, type=TurnEvent)
                if rec.turn == turn:
                    found.append(rec)
    finally:
        await sub.unsubscribe()
    return found


@pytest.mark.claude
async def test_secrets_in_claude_output_are_masked(stack: Stack, api: ScriptedAnthropic) -> None:
    """claude quotes an MCP server's env and an API key (as a tool printing
    ``agent.toml`` or ``env`` would): the records keep the keys, not the values."""
    name = agent_name("m")
    await stack.spawn(name)
    api.reply(
        f'the config says env = {{ EXTRA_TOKEN = "{SECRET}" }} and ANTHROPIC_API_KEY={API_KEY}',
        when=last_user_mentions("show me the config"),
    )
    async with running_harness(stack.harness_settings(name)) as h:
        await stack.send(name, "show me the config")
        await h.turn_end(1)
        ring = json.dumps([msgspec.to_builtins(r) for r in h.records()])
        texts = [
            blk["text"]
            for event in h.claude_events(1, "assistant")
            for blk in event["message"]["content"]
            if blk.get("type") == "text"
        ]
    assert texts and "EXTRA_TOKEN" in texts[0] and "ANTHROPIC_API_KEY" in texts[0]
    assert SECRET not in ring and API_KEY[14:] not in ring
    stored = json.dumps([msgspec.to_builtins(r) for r in await _stored_turn(stack, name, 1)])
    assert "EXTRA_TOKEN" in stored
    assert SECRET not in stored and API_KEY[14:] not in stored
