"""The scripted Anthropic API on its own: the shapes claude relies on, and the
strictness of the real API (what it refuses, what a model can call, faults)."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from tests.scripted_anthropic import (
    Fault,
    ScriptedAnthropic,
    Usage,
    check_request,
    last_user_mentions,
    tool_use,
)

SCHEMA = {
    "type": "object",
    "properties": {"to": {"type": "string"}, "body": {"type": "string"}},
    "required": ["to", "body"],
}
SEND = {"name": "mcp__hyperhive__send", "description": "send", "input_schema": SCHEMA}
DEFERRED = {**SEND, "name": "mcp__other__send", "defer_loading": True}


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "text", "text": text}]}


def _body(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": "m1", "max_tokens": 1024, "messages": list(messages), **extra}


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
            tool_use("mcp__hyperhive__send", {"to": "b", "body": "a longer body"}, id="toolu_1"),
            when=last_user_mentions("stream me"),
            usage=Usage(
                input_tokens=7,
                output_tokens=11,
                cache_creation_input_tokens=13,
                cache_read_input_tokens=17,
            ),
        )
        api.error(400, "prompt is too long: 9 > 1", when=last_user_mentions("too long"))
        user = _user("stream me")
        async with httpx.AsyncClient(base_url=api.url, timeout=10) as c:
            r = await c.post("/v1/messages?beta=true", json=_body(user, stream=True, tools=[SEND]))
            assert r.status_code == 200 and r.headers["content-type"] == "text/event-stream"
            events = _events(r.text)
            kinds = [k for k, _ in events]
            assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
            start = events[0][1]["message"]
            assert start["usage"] == {
                "input_tokens": 7,
                "cache_creation_input_tokens": 13,
                "cache_read_input_tokens": 17,
                "output_tokens": 1,
            }
            starts = [d["content_block"] for k, d in events if k == "content_block_start"]
            assert [b["type"] for b in starts] == ["text", "tool_use"]
            assert starts[1]["input"] == {} and starts[1]["name"] == "mcp__hyperhive__send"
            deltas = [d for k, d in events if k == "content_block_delta"]
            said = "".join(d["delta"].get("text", "") for d in deltas)
            assert said == "thinking aloud"
            partial = [d["delta"]["partial_json"] for d in deltas if d["index"] == 1]
            assert len(partial) > 1  # the input arrives in pieces, as from the real API
            assert json.loads("".join(partial)) == {"to": "b", "body": "a longer body"}
            assert kinds.count("content_block_stop") == 2
            stop = next(d for k, d in events if k == "message_delta")
            assert stop["delta"]["stop_reason"] == "tool_use"
            assert stop["usage"]["output_tokens"] == 11
            assert stop["usage"]["cache_read_input_tokens"] == 17

            # an unscripted request (a title, a summary) gets the default, not a hang
            r = await c.post("/v1/messages", json=_body(user, model="m2"))
            msg = r.json()
            assert msg["content"] == [{"type": "text", "text": "fallback"}]
            assert msg["model"] == "m2" and msg["stop_reason"] == "end_turn"
            assert set(msg["usage"]) == {
                "input_tokens",
                "output_tokens",
                "cache_creation_input_tokens",
                "cache_read_input_tokens",
            }

            r = await c.post("/v1/messages/count_tokens", json={"messages": [user]})
            assert r.json()["input_tokens"] > 0

            r = await c.post("/v1/messages", json=_body(_user("too long"), stream=True))
            assert r.status_code == 400
            assert r.json()["error"]["message"].startswith("prompt is too long")

            assert (await c.post("/v1/other", json={})).status_code == 404
        assert [r.last_user_text() for r in api.requests] == ["stream me", "stream me", "too long"]
        assert api.requests[0].model == "m1"
        assert not api.pending()
        api.check()


_USE = {"type": "tool_use", "id": "toolu_a", "name": "t", "input": {}}
_RESULT = {"type": "tool_result", "tool_use_id": "toolu_a", "content": "r"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"max_tokens": 5, "messages": [_user("x")]}, "model: Field required"),
        ({"model": "m", "messages": [_user("x")]}, "max_tokens: Field required"),
        (_body(_user("x"), max_tokens=0), "max_tokens: Input should be greater than or equal"),
        (_body(_user("x"), max_tokens="9"), "max_tokens: Input should be a valid integer"),
        ({"model": "m", "max_tokens": 5}, "messages: Field required"),
        (_body({"role": "assistant", "content": "hi"}), 'first message must use the "user"'),
        (_body(_user("a"), _user("b")), 'found multiple "user" roles in a row'),
        (_body({"role": "robot", "content": "x"}), "messages.0.role: Input should be"),
        (_body({"role": "user", "content": ""}), "must have non-empty content"),
        (_body({"role": "user", "content": [{"type": "video"}]}), "Input tag 'video'"),
        (
            _body(_user("x"), {"role": "assistant", "content": [_USE]}, _user("no result")),
            "messages.1: `tool_use` ids were found without `tool_result` blocks "
            "immediately after: toolu_a",
        ),
        (
            _body(
                _user("x"),
                {"role": "assistant", "content": "hi"},
                {"role": "user", "content": [_RESULT]},
            ),
            "unexpected `tool_use_id` found in `tool_result` blocks: toolu_a",
        ),
        (
            _body(
                _user("x"),
                {"role": "assistant", "content": [_USE]},
                {"role": "user", "content": [{"type": "text", "text": "t"}, _RESULT]},
            ),
            "`tool_result` blocks must come first",
        ),
        (_body(_user("x"), tools=[{"name": "t"}]), "tools.0.custom.input_schema: Field required"),
        (_body(_user("x"), tools=[SEND, SEND]), "Tool names must be unique"),
        (_body(_user("x"), tools=[{**SEND, "name": "a b"}]), "tools.0.custom.name"),
    ],
)
async def test_refuses_what_the_real_api_refuses(body: dict[str, Any], message: str) -> None:
    assert message in check_request(body)
    with ScriptedAnthropic() as api:
        async with httpx.AsyncClient(base_url=api.url, timeout=10) as c:
            r = await c.post("/v1/messages?beta=true", json={**body, "stream": True})
        assert r.status_code == 400
        doc = r.json()
        assert doc["type"] == "error" and doc["error"]["type"] == "invalid_request_error"
        assert message in doc["error"]["message"]
        with pytest.raises(AssertionError, match="refused what the real one would"):
            api.check()


def test_accepts_what_the_cli_sends() -> None:
    """A tool round trip with the ``system`` messages the CLI appends."""
    system = {"role": "system", "content": [{"type": "text", "text": "reminder"}]}
    body = _body(
        _user("x"),
        system,
        {"role": "assistant", "content": [{"type": "text", "text": "t"}, _USE]},
        {"role": "user", "content": [_RESULT, {"type": "text", "text": "more"}]},
        system,
        tools=[SEND, DEFERRED],
    )
    assert check_request(body) == ""


@pytest.mark.parametrize(
    ("tools", "call", "message"),
    [
        ([SEND], ("mcp__hyperhive__recv", {}), "'mcp__hyperhive__recv', which this request "),
        ([], ("mcp__hyperhive__send", {"to": "b", "body": "x"}), "offered: (none)"),
        ([SEND, DEFERRED], ("mcp__other__send", {}), "(in the request, deferred)"),
        ([SEND], ("mcp__hyperhive__send", ["b"]), "with a non-object input"),
    ],
)
async def test_the_model_calls_only_offered_tools(
    tools: list[dict[str, Any]], call: tuple[str, dict[str, Any]], message: str
) -> None:
    with ScriptedAnthropic() as api:
        api.reply(tool_use(*call))
        async with httpx.AsyncClient(base_url=api.url, timeout=10) as c:
            r = await c.post("/v1/messages", json=_body(_user("go"), stream=True, tools=tools))
        assert r.status_code == 400
        assert message in r.json()["error"]["message"]
        assert call[0] in api.problems[0]
        if tools and "non-object" not in message:
            assert "offered: mcp__hyperhive__send" in api.problems[0]
        with pytest.raises(AssertionError, match=call[0]):
            api.check()


async def test_a_deferred_tool_is_offered_once_tool_search_loaded_it() -> None:
    with ScriptedAnthropic() as api:
        api.reply(tool_use("mcp__other__send", {"to": "b", "body": "x"}))
        found = {"type": "tool_reference", "tool_name": "mcp__other__send"}
        search = {**_USE, "name": "ToolSearch"}
        body = _body(
            _user("x"),
            {"role": "assistant", "content": [search]},
            {"role": "user", "content": [{**_RESULT, "content": [found]}]},
            stream=True,
            tools=[SEND, DEFERRED],
        )
        async with httpx.AsyncClient(base_url=api.url, timeout=10) as c:
            r = await c.post("/v1/messages", json=body)
        assert r.status_code == 200, r.text
        api.check()


@pytest.mark.parametrize(
    ("fault", "status", "error_type"),
    [
        (Fault.rate_limited(retry_after=20), 429, "rate_limit_error"),
        (Fault.overloaded(), 529, "overloaded_error"),
        (Fault.server_error(), 500, "api_error"),
        (Fault.unauthorized(), 401, "authentication_error"),
    ],
)
async def test_api_errors(fault: Fault, status: int, error_type: str) -> None:
    with ScriptedAnthropic() as api:
        api.fault(fault)
        async with httpx.AsyncClient(base_url=api.url, timeout=10) as c:
            r = await c.post("/v1/messages", json=_body(_user("x"), stream=True))
            assert r.status_code == status
            assert r.json() == {"type": "error", "error": {"type": error_type, "message": ANY}}
            assert r.headers.get("retry-after") == ("20" if status == 429 else None)
            # one answer only: the next request is served
            assert (await c.post("/v1/messages", json=_body(_user("x")))).status_code == 200


async def test_outage_until_ended() -> None:
    with ScriptedAnthropic() as api:
        api.reply("after the outage")
        api.outage(Fault.overloaded())
        async with httpx.AsyncClient(base_url=api.url, timeout=10) as c:
            for _ in range(3):
                r = await c.post("/v1/messages", json=_body(_user("x")))
                assert r.status_code == 529
            api.end_outage()
            r = await c.post("/v1/messages", json=_body(_user("x")))
        assert r.json()["content"][0]["text"] == "after the outage"
        assert [q.status for q in api.requests] == [529, 529, 529, 200]


async def test_a_stream_closed_midway_and_a_slow_first_byte() -> None:
    with ScriptedAnthropic() as api:
        api.fault(Fault.dropped(), "a reply long enough to be cut")
        api.fault(Fault.slow(1.0), "late")
        async with httpx.AsyncClient(base_url=api.url, timeout=10) as c:
            seen: list[str] = []
            with pytest.raises(httpx.HTTPError):
                async with c.stream(
                    "POST", "/v1/messages", json=_body(_user("x"), stream=True)
                ) as r:
                    assert r.status_code == 200
                    async for line in r.aiter_lines():
                        seen.append(line)
            assert any("message_start" in line for line in seen)
            assert not any("message_stop" in line for line in seen)

            t0 = time.monotonic()
            r = await c.post("/v1/messages", json=_body(_user("x")))
            assert time.monotonic() - t0 >= 1.0
            assert r.json()["content"][0]["text"] == "late"


class _Any:
    def __eq__(self, other: object) -> bool:
        return True


ANY = _Any()
