"""The scripted Anthropic API on its own: the shapes claude relies on."""

from __future__ import annotations

import json

import httpx

from tests.scripted_anthropic import ScriptedAnthropic, last_user_mentions, tool_use


def _events(body: str) -> list[tuple[str, dict]]:
    out = []
    for chunk in body.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in chunk.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


async def test_streaming_non_streaming_count_tokens_and_errors() -> None:
    with ScriptedAnthropic(default_text="fallback") as api:
        api.reply(
            "thinking aloud",
            tool_use("mcp__x__y", {"a": 1}, id="toolu_1"),
            when=last_user_mentions("stream me"),
        )
        api.error(400, "prompt is too long: 9 > 1", when=last_user_mentions("too long"))
        user = {"role": "user", "content": [{"type": "text", "text": "stream me"}]}
        async with httpx.AsyncClient(base_url=api.url, timeout=10) as c:
            r = await c.post(
                "/v1/messages?beta=true", json={"model": "m1", "stream": True, "messages": [user]}
            )
            assert r.status_code == 200 and r.headers["content-type"] == "text/event-stream"
            events = _events(r.text)
            kinds = [k for k, _ in events]
            assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
            starts = [d["content_block"] for k, d in events if k == "content_block_start"]
            assert [b["type"] for b in starts] == ["text", "tool_use"]
            deltas = "".join(
                d["delta"].get("text", "") for k, d in events if k == "content_block_delta"
            )
            assert deltas == "thinking aloud"
            stop = next(d for k, d in events if k == "message_delta")
            assert stop["delta"]["stop_reason"] == "tool_use"

            # an unscripted request (a title, a summary) gets the default, not a hang
            r = await c.post("/v1/messages", json={"model": "m2", "messages": [user]})
            msg = r.json()
            assert msg["content"] == [{"type": "text", "text": "fallback"}]
            assert msg["model"] == "m2" and msg["stop_reason"] == "end_turn"

            r = await c.post("/v1/messages/count_tokens", json={"messages": [user]})
            assert r.json()["input_tokens"] > 0

            too_long = {"role": "user", "content": "too long"}
            r = await c.post("/v1/messages", json={"stream": True, "messages": [too_long]})
            assert r.status_code == 400
            assert r.json()["error"]["message"].startswith("prompt is too long")

            assert (await c.post("/v1/other", json={})).status_code == 404
        assert [r.last_user_text() for r in api.requests] == ["stream me", "stream me", "too long"]
        assert api.requests[0].model == "m1"
        assert not api.pending()
