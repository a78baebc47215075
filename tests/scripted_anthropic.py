"""A scripted stand-in for the Anthropic Messages API, for driving the real claude CLI.

A test queues what the model "says", turn by turn, and points the claude CLI
at :attr:`ScriptedAnthropic.url` with ``ANTHROPIC_BASE_URL``::

    with ScriptedAnthropic() as api:
        api.reply(tool_use("mcp__hyperhive__send", {"to": "b", "body": "hi"}))
        api.reply(text("sent it"), when=has_tool_result())
        ... run claude ...
        assert api.requests[0].last_user_text() == ...

Every ``POST /v1/messages`` (streaming or not) takes the first queued reply
whose ``when`` predicate matches (FIFO among matches); with none queued it
answers with :attr:`default_text`, so auxiliary requests (titles, summaries
for ``/compact``, quota probes) never hang a test. ``/v1/messages/count_tokens``
answers a token estimate. Each request is recorded for assertions.

The server runs in a thread, so it works the same from sync and async tests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "Block",
    "Reply",
    "Request",
    "ScriptedAnthropic",
    "after_tool_results",
    "has_tool_result",
    "is_compaction",
    "last_user_mentions",
    "mentions",
    "text",
    "tool_result_text",
    "tool_use",
]


# --- what the model says -----------------------------------------------------


@dataclass(frozen=True)
class Block:
    """One content block of a scripted assistant message."""

    kind: str  # "text" | "tool_use"
    text: str = ""
    name: str = ""
    input: Any = None
    id: str = ""


_ids = itertools.count(1)


def text(value: str) -> Block:
    """A text block."""
    return Block(kind="text", text=value)


def tool_use(name: str, input: Any, id: str | None = None) -> Block:
    """A ``tool_use`` block calling ``name`` with ``input`` (any JSON value)."""
    return Block(kind="tool_use", name=name, input=input, id=id or f"toolu_{next(_ids):08d}")


@dataclass
class Reply:
    """One scripted answer to one ``/v1/messages`` request.

    ``error`` (an HTTP status and message) answers with an API error instead
    of content. ``hold`` keeps the stream open after the first text delta
    until :meth:`release` is called or the client goes away (a "long turn").
    ``delay_s`` waits before answering. ``usage`` sets the token counts the
    answer reports (``input_tokens``, ``output_tokens``,
    ``cache_creation_input_tokens``, ``cache_read_input_tokens``; the rest
    default); ``stop`` overrides the stop reason (e.g. ``max_tokens``).
    """

    blocks: list[Block | Callable[[Request], Block]]
    when: Callable[[Request], bool] | None = None
    error: tuple[int, str, str] | None = None  # (status, error type, message)
    hold: bool = False
    delay_s: float = 0.0
    usage: dict[str, int] | None = None
    stop: str | None = None
    released: threading.Event = field(default_factory=threading.Event)
    used_by: Request | None = None

    def release(self) -> None:
        """Lets a held reply finish."""
        self.released.set()

    @property
    def stop_reason(self) -> str:
        if self.stop:
            return self.stop
        kinds = [b.kind for b in self.blocks if isinstance(b, Block)]
        return "tool_use" if "tool_use" in kinds else "end_turn"

    def resolved(self, req: Request) -> Reply:
        """This reply with its callable blocks computed from ``req``."""
        blocks: list[Block | Callable[[Request], Block]] = [
            b(req) if callable(b) else b for b in self.blocks
        ]
        return dataclasses.replace(self, blocks=blocks)


# --- what claude sent --------------------------------------------------------


@dataclass
class Request:
    """One recorded HTTP request."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    ts: float = field(default_factory=time.time)
    reply: Reply | None = None
    disconnected: bool = False  # the client hung up before the reply ended

    @property
    def is_messages(self) -> bool:
        return self.method == "POST" and self.path.split("?")[0].rstrip("/") == "/v1/messages"

    @property
    def model(self) -> str:
        return str(self.body.get("model", "")) if isinstance(self.body, dict) else ""

    @property
    def tool_names(self) -> list[str]:
        """Names of the tools offered to the model."""
        if not isinstance(self.body, dict):
            return []
        return [str(t.get("name")) for t in self.body.get("tools") or [] if isinstance(t, dict)]

    def tool(self, name: str) -> dict[str, Any] | None:
        """The definition of an offered tool."""
        if not isinstance(self.body, dict):
            return None
        for t in self.body.get("tools") or []:
            if isinstance(t, dict) and t.get("name") == name:
                return t
        return None

    @property
    def messages(self) -> list[dict[str, Any]]:
        if not isinstance(self.body, dict):
            return []
        return [m for m in self.body.get("messages") or [] if isinstance(m, dict)]

    def system_text(self) -> str:
        """The system prompt as one string."""
        if not isinstance(self.body, dict):
            return ""
        return _text_of(self.body.get("system"))

    def last_user_text(self) -> str:
        """Text of the last user message (tool results excluded)."""
        for m in reversed(self.messages):
            if m.get("role") == "user":
                return _text_of(m.get("content"), include_tool_results=False)
        return ""

    def user_texts(self) -> list[str]:
        return [_text_of(m.get("content"), False) for m in self.messages if m.get("role") == "user"]

    def tool_results(self) -> list[dict[str, Any]]:
        """Every ``tool_result`` block in the conversation, oldest first."""
        out = []
        for m in self.messages:
            content = m.get("content")
            if isinstance(content, list):
                out.extend(
                    b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"
                )
        return out

    def last_user_message(self) -> dict[str, Any]:
        """The last message with role ``user`` (the CLI may append ``system`` ones)."""
        for m in reversed(self.messages):
            if m.get("role") == "user":
                return m
        return {}

    def last_tool_result(self) -> dict[str, Any] | None:
        """The ``tool_result`` of the last user message, if it has one."""
        content = self.last_user_message().get("content")
        if isinstance(content, list):
            for b in reversed(content):
                if isinstance(b, dict) and b.get("type") == "tool_result":
                    return b
        return None

    def dump(self) -> str:
        return json.dumps(self.body) if not isinstance(self.body, str) else self.body


def tool_result_text(block: dict[str, Any]) -> str:
    """The text of a ``tool_result`` block."""
    return _text_of(block.get("content"))


def _text_of(content: Any, include_tool_results: bool = True) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for b in content if isinstance(content, list) else [content]:
        if not isinstance(b, dict):
            continue
        if b.get("type") == "text":
            parts.append(str(b.get("text", "")))
        elif b.get("type") == "tool_result" and include_tool_results:
            parts.append(_text_of(b.get("content")))
    return "\n".join(parts)


# --- predicates for Reply.when -------------------------------------------------


def mentions(*needles: str) -> Callable[[Request], bool]:
    """Matches a request whose body contains every needle (anywhere, e.g. the
    workdir path in the system prompt names the agent)."""

    def check(req: Request) -> bool:
        dumped = req.dump()
        return all(n in dumped for n in needles)

    return check


def last_user_mentions(*needles: str) -> Callable[[Request], bool]:
    """Matches when the last user message (not a tool result) contains every needle."""

    def check(req: Request) -> bool:
        if req.last_tool_result() is not None:
            return False
        txt = req.last_user_text()
        return all(n in txt for n in needles)

    return check


def has_tool_result(containing: str = "", *, also: Callable[[Request], bool] | None = None):
    """Matches a request whose last message carries a tool result (containing
    ``containing``), i.e. the follow-up after a scripted ``tool_use``."""

    def check(req: Request) -> bool:
        result = req.last_tool_result()
        if result is None or containing not in tool_result_text(result):
            return False
        return also(req) if also else True

    return check


def is_compaction(req: Request) -> bool:
    """A summarisation request of claude's ``/compact`` (or auto-compaction)."""
    return "<summary>" in req.last_user_text()


def after_tool_results(n: int, *, also: Callable[[Request], bool] | None = None):
    """Matches the follow-up after the ``n``-th tool result of a conversation."""

    def check(req: Request) -> bool:
        if req.last_tool_result() is None or len(req.tool_results()) != n:
            return False
        return also(req) if also else True

    return check


# --- the server ----------------------------------------------------------------


class ScriptedAnthropic:
    """A local server speaking the Anthropic Messages API from a script."""

    def __init__(self, default_text: str = "ok", model: str = "claude-scripted") -> None:
        self.default_text = default_text
        self.model = model
        self._queue: list[Reply] = []
        self._lock = threading.Lock()
        self._requests: list[Request] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # lifecycle
    def start(self) -> ScriptedAnthropic:
        handler = type("Handler", (_Handler,), {"api": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="scripted-anthropic", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            for r in self._queue:
                r.release()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> ScriptedAnthropic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The value for ``ANTHROPIC_BASE_URL``."""
        assert self._server is not None, "not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def env(self) -> dict[str, str]:
        """Environment that points the claude CLI here and nowhere else."""
        return {
            "ANTHROPIC_BASE_URL": self.url,
            "ANTHROPIC_API_KEY": "sk-scripted-test",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        }

    # the script
    def reply(
        self,
        *blocks: Block | str | Callable[[Request], Block],
        when: Callable[[Request], bool] | None = None,
        hold: bool = False,
        delay_s: float = 0.0,
        usage: dict[str, int] | None = None,
        stop: str | None = None,
    ) -> Reply:
        """Queues one assistant message (``usage``, ``stop``: see :class:`Reply`).

        Strings become text blocks; a callable is called with the request when
        the reply is used (e.g. to quote an id from the last tool result).
        """
        items = [text(b) if isinstance(b, str) else b for b in blocks] or [text(self.default_text)]
        r = Reply(blocks=items, when=when, hold=hold, delay_s=delay_s, usage=usage, stop=stop)
        with self._lock:
            self._queue.append(r)
        return r

    def error(
        self,
        status: int,
        message: str,
        error_type: str = "invalid_request_error",
        *,
        when: Callable[[Request], bool] | None = None,
    ) -> Reply:
        """Queues an API error answer (e.g. 400 ``prompt is too long``)."""
        r = Reply(blocks=[], when=when, error=(status, error_type, message))
        with self._lock:
            self._queue.append(r)
        return r

    def pending(self) -> list[Reply]:
        """Replies queued and not used yet."""
        with self._lock:
            return list(self._queue)

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()

    # what happened
    @property
    def all_requests(self) -> list[Request]:
        with self._lock:
            return list(self._requests)

    @property
    def requests(self) -> list[Request]:
        """The ``/v1/messages`` requests, oldest first."""
        return [r for r in self.all_requests if r.is_messages]

    def matching(self, pred: Callable[[Request], bool]) -> list[Request]:
        return [r for r in self.requests if pred(r)]

    async def wait_for_request(
        self, pred: Callable[[Request], bool] | None = None, timeout: float = 30.0
    ) -> Request:
        """Waits (without blocking the event loop) for a matching request."""
        deadline = time.monotonic() + timeout
        while True:
            for r in self.requests:
                if pred is None or pred(r):
                    return r
            if time.monotonic() > deadline:
                seen = [r.last_user_text()[:80] for r in self.requests]
                raise AssertionError(f"no matching request within {timeout}s; seen: {seen}")
            await asyncio.sleep(0.05)

    # used by the handler
    def _record(self, req: Request) -> None:
        with self._lock:
            self._requests.append(req)

    def _take(self, req: Request) -> Reply | None:
        with self._lock:
            for i, r in enumerate(self._queue):
                try:
                    ok = r.when is None or r.when(req)
                except Exception:
                    ok = False
                if ok:
                    del self._queue[i]
                    r.used_by = req
                    return r
        return None


class _Handler(BaseHTTPRequestHandler):
    api: ScriptedAnthropic
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _read_body(self) -> Any:
        n = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            return raw.decode(errors="replace")

    def do_GET(self) -> None:
        self.api._record(Request("GET", self.path, dict(self.headers), None))
        self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": "no"}})

    def do_HEAD(self) -> None:
        self.api._record(Request("HEAD", self.path, dict(self.headers), None))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        body = self._read_body()
        req = Request("POST", self.path, dict(self.headers), body)
        self.api._record(req)
        path = self.path.split("?")[0].rstrip("/")
        if path == "/v1/messages/count_tokens":
            self._json(200, {"input_tokens": max(1, len(req.dump()) // 4)})
            return
        if path != "/v1/messages":
            self._json(404, _err("not_found_error", f"no route {path}"))
            return
        reply = self.api._take(req)
        req.reply = reply
        if reply is None:
            reply = Reply(blocks=[text(self.api.default_text)])
        reply = reply.resolved(req)
        if reply.delay_s:
            time.sleep(reply.delay_s)
        if reply.error:
            status, etype, message = reply.error
            self._json(status, _err(etype, message))
            return
        model = req.model or self.api.model
        stream = isinstance(body, dict) and bool(body.get("stream"))
        try:
            if stream:
                self._stream(reply, model)
            else:
                self._json(200, _message(reply, model))
        except (BrokenPipeError, ConnectionResetError):
            req.disconnected = True

    def _json(self, status: int, doc: Any) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("request-id", f"req_{next(_ids)}")
        self.end_headers()
        self.wfile.write(data)

    def _event(self, kind: str, data: dict[str, Any]) -> None:
        chunk = f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()
        self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        self.wfile.flush()

    def _stream(self, reply: Reply, model: str) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("request-id", f"req_{next(_ids)}")
        self.end_headers()
        msg = _message(reply, model)
        start = dict(msg, content=[], stop_reason=None)
        start["usage"] = dict(msg["usage"], output_tokens=1)
        self._event("message_start", {"type": "message_start", "message": start})
        for i, block in enumerate(reply.blocks):
            if block.kind == "text":
                self._event(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": i,
                        "content_block": {"type": "text", "text": ""},
                    },
                )
                for piece in _pieces(block.text):
                    self._event(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": i,
                            "delta": {"type": "text_delta", "text": piece},
                        },
                    )
                    if reply.hold:
                        self._hold(reply)
            else:
                self._event(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": i,
                        "content_block": {
                            "type": "tool_use",
                            "id": block.id,
                            "name": block.name,
                            "input": {},
                        },
                    },
                )
                self._event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": i,
                        "delta": {
                            "type": "input_json_delta",
                            "partial_json": json.dumps(block.input),
                        },
                    },
                )
            self._event("content_block_stop", {"type": "content_block_stop", "index": i})
        self._event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": msg["usage"]["output_tokens"]},
            },
        )
        self._event("message_stop", {"type": "message_stop"})
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _hold(self, reply: Reply) -> None:
        """Keeps the stream open (with pings, which notice a hung-up client)."""
        reply.hold = False  # only once per reply
        while not reply.released.wait(0.2):
            if self.api._stopping.is_set():
                return
            self._event("ping", {"type": "ping"})


def _pieces(value: str) -> Iterable[str]:
    """Splits text into a few deltas, as a real stream would."""
    if len(value) <= 8:
        yield value
        return
    step = max(8, len(value) // 3)
    for i in range(0, len(value), step):
        yield value[i : i + step]


def _message(reply: Reply, model: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    for b in reply.blocks:
        if b.kind == "text":
            content.append({"type": "text", "text": b.text})
        else:
            content.append({"type": "tool_use", "id": b.id, "name": b.name, "input": b.input})
    out_tokens = sum(len(json.dumps(c)) // 4 + 1 for c in content)
    return {
        "id": f"msg_{next(_ids):08d}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reply.stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": 100,
            "output_tokens": out_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            **(reply.usage or {}),
        },
    }


def _err(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}
