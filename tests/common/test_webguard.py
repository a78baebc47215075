"""The web guard's opt-out policy at the ASGI level: without an operator
token (``loopback_actions_only``), state-changing requests and WebSockets
are refused from a non-loopback client, before the app sees them."""

from __future__ import annotations

from typing import Any

import pytest

from hyperhive.common.webguard import CSRF_COOKIE, Guard, Policy, Security, from_loopback

POLICY = Policy(
    session_cookie="s",
    session_label=b"test",
    content_security_policy=b"default-src 'self'",
    websockets=True,
    loopback_actions_only=True,
)


class Recorder:
    """The app behind the guard: records that it was reached."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls.append(scope["type"])
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})


async def _run(scope: dict[str, Any], first: dict[str, Any]) -> tuple[Recorder, list[Any]]:
    app = Recorder()
    security = Security("", POLICY.session_label)
    guard = Guard(app, security, POLICY, lambda csrf, error: b"login")
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return first

    async def send(message: Any) -> None:
        sent.append(message)

    nonce = "ab" * 8
    scope.setdefault("headers", [])
    scope["headers"] += [
        (b"host", b"127.0.0.1:7000"),
        (b"origin", b"http://127.0.0.1:7000"),
        (b"cookie", f"{CSRF_COOKIE}={nonce}".encode()),
        (b"x-csrf-token", security.csrf_token(nonce).encode()),
    ]
    scope["query_string"] = f"csrf={security.csrf_token(nonce)}".encode()
    await guard(scope, receive, send)
    return app, sent


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.1", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("192.0.2.2", False),
        ("10.0.0.5", False),
        ("fd00::2", False),
        ("::ffff:10.0.0.5", False),
        ("not-an-address", False),
    ],
)
def test_loopback_addresses(address: str, loopback: bool) -> None:
    assert from_loopback({"client": (address, 1234)}) is loopback  # type: ignore[typeddict-item]
    assert from_loopback({"client": None}) is False  # type: ignore[typeddict-item]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_an_action_from_outside_is_refused_before_the_app(method: str) -> None:
    scope = {"type": "http", "method": method, "path": "/approvals/1/approve"}
    app, sent = await _run({**scope, "client": ("192.0.2.2", 5)}, {"type": "http.request"})
    assert app.calls == []
    assert sent[0]["status"] == 403 and b"non-loopback" in sent[1]["body"]
    app, sent = await _run({**scope, "client": ("127.0.0.1", 5)}, {"type": "http.request"})
    assert app.calls == ["http"] and sent[0]["status"] == 200


async def test_reading_from_outside_is_open_under_the_opt_out() -> None:
    scope = {"type": "http", "method": "GET", "path": "/", "client": ("192.0.2.2", 5)}
    app, sent = await _run(scope, {"type": "http.request"})
    assert app.calls == ["http"] and sent[0]["status"] == 200


async def test_a_websocket_from_outside_is_refused() -> None:
    scope = {"type": "websocket", "path": "/ws"}
    connect = {"type": "websocket.connect"}
    app, sent = await _run({**scope, "client": ("192.0.2.2", 5)}, connect)
    assert app.calls == []
    assert sent == [
        {
            "type": "websocket.close",
            "code": 1008,
            "reason": "refused from a non-loopback address (no operator token)",
        }
    ]
    app, sent = await _run({**scope, "client": ("127.0.0.1", 5)}, connect)
    assert app.calls == ["websocket"]


@pytest.mark.parametrize(
    ("content_type", "sets_cookie"),
    [
        (b"text/html; charset=utf-8", True),
        (b"application/json", False),
        (b"text/event-stream", False),
    ],
)
async def test_only_a_page_hands_out_a_new_csrf_nonce(
    content_type: bytes, sets_cookie: bool
) -> None:
    """Without a CSRF cookie, only an HTML page (whose forms carry the token of
    the new nonce) sets one: a fetch or stream answered meanwhile must not
    replace the nonce a login form was rendered with."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", content_type)],
            }
        )
        await send({"type": "http.response.body", "body": b"x"})

    guard = Guard(app, Security("", POLICY.session_label), POLICY, lambda csrf, error: b"login")
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/section/status",
        "client": ("127.0.0.1", 5000),
        "headers": [(b"host", b"127.0.0.1:7000")],
        "query_string": b"",
    }
    await guard(scope, receive, send)
    set_cookies = [v for k, v in sent[0]["headers"] if k == b"set-cookie"]
    assert any(v.startswith(CSRF_COOKIE.encode() + b"=") for v in set_cookies) is sets_cookie
