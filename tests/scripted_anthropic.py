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

It is as strict as the real API, so a test cannot pass on leniency:
- a request the real API refuses (:func:`check_request`: model, ``max_tokens``,
  roles, content block types, a ``tool_result`` for every ``tool_use`` of the
  previous assistant turn, tool definitions) gets the real API's 400
  ``invalid_request_error``;
- a scripted ``tool_use`` of a tool the request did not offer with a schema
  (or with an input that is not an object) is not sent: the API answers 400 and
  :meth:`ScriptedAnthropic.check` (run by the ``api`` fixture at teardown)
  fails the test naming the tool and what was offered.
Both are kept in :attr:`ScriptedAnthropic.problems`.

Faults (:class:`Fault`: 429 with ``retry-after``, 529, 500, 401, a stream
closed midway, a first byte only after a delay) are answered once
(:meth:`ScriptedAnthropic.fault`) or to every request until
:meth:`ScriptedAnthropic.end_outage` (:meth:`ScriptedAnthropic.outage`).

The server runs in a thread, so it works the same from sync and async tests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "Block",
    "Fault",
    "Reply",
    "Request",
    "ScriptedAnthropic",
    "Usage",
    "after_tool_results",
    "check_request",
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
    """A ``tool_use`` block calling ``name`` with ``input`` (a JSON object)."""
    return Block(kind="tool_use", name=name, input=input, id=id or f"toolu_{next(_ids):08d}")


@dataclass(frozen=True)
class Usage:
    """The token counts one answer reports (``message_start`` and ``message_delta``).

    ``output_tokens`` None: estimated from the content.
    """

    input_tokens: int = 100
    output_tokens: int | None = None
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    def doc(self, output_tokens: int) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "output_tokens": output_tokens,
        }


@dataclass(frozen=True)
class Fault:
    """An answer that is not the model's: an API error or a broken connection.

    ``status`` > 0 answers that HTTP status with the real API's error body
    (and ``retry-after`` when set); ``disconnect`` starts a 200 stream and
    closes the connection midway; ``first_byte_s`` waits that long before the
    first byte of whatever comes next (an error, or the scripted content).
    """

    status: int = 0
    error_type: str = ""
    message: str = ""
    retry_after: float | None = None
    disconnect: bool = False
    first_byte_s: float = 0.0

    @property
    def label(self) -> str:
        if self.status:
            return f"{self.status} {self.error_type}"
        return "disconnect" if self.disconnect else f"first byte after {self.first_byte_s:g} s"

    @classmethod
    def rate_limited(cls, retry_after: float = 20) -> Fault:
        return cls(
            status=429,
            error_type="rate_limit_error",
            message="This request would exceed the rate limit for your organization.",
            retry_after=retry_after,
        )

    @classmethod
    def overloaded(cls) -> Fault:
        return cls(status=529, error_type="overloaded_error", message="Overloaded")

    @classmethod
    def server_error(cls) -> Fault:
        return cls(status=500, error_type="api_error", message="Internal server error")

    @classmethod
    def unauthorized(cls) -> Fault:
        return cls(status=401, error_type="authentication_error", message="invalid x-api-key")

    @classmethod
    def dropped(cls) -> Fault:
        return cls(disconnect=True)

    @classmethod
    def slow(cls, first_byte_s: float) -> Fault:
        return cls(first_byte_s=first_byte_s)


@dataclass
class Reply:
    """One scripted answer to one ``/v1/messages`` request.

    ``error`` (an HTTP status, error type and message) answers with an API
    error instead of content; ``fault`` with a :class:`Fault`. ``hold`` keeps
    the stream open after the first text delta until :meth:`release` is
    called or the client goes away (a "long turn"). ``delay_s`` waits before
    answering. ``usage`` is what the answer reports. ``stop`` overrides the stop reason
    (e.g. ``max_tokens``).
    """

    blocks: list[Block | Callable[[Request], Block]]
    when: Callable[[Request], bool] | None = None
    error: tuple[int, str, str] | None = None  # (status, error type, message)
    fault: Fault | None = None
    hold: bool = False
    delay_s: float = 0.0
    usage: Usage = field(default_factory=Usage)
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
    status: int = 200  # what the server answered
    refused: str = ""  # why it answered 400 (a request or a script the real API refuses)

    @property
    def is_messages(self) -> bool:
        return self.method == "POST" and self.path.split("?")[0].rstrip("/") == "/v1/messages"

    @property
    def model(self) -> str:
        return str(self.body.get("model", "")) if isinstance(self.body, dict) else ""

    @property
    def tool_names(self) -> list[str]:
        """Names of the tools in the request (deferred ones included)."""
        if not isinstance(self.body, dict):
            return []
        return [str(t.get("name")) for t in self.body.get("tools") or [] if isinstance(t, dict)]

    @property
    def offered(self) -> dict[str, dict[str, Any]]:
        """The tools the model can call: name → input schema.

        A tool with ``defer_loading`` is not offered until a ``tool_reference``
        block in the conversation (a tool search result) loads it.
        """
        if not isinstance(self.body, dict):
            return {}
        loaded = {
            str(b.get("tool_name"))
            for b in _walk_blocks(self.messages)
            if b.get("type") == "tool_reference"
        }
        out = {}
        for t in self.body.get("tools") or []:
            if not isinstance(t, dict) or not isinstance(t.get("input_schema"), dict):
                continue
            if t.get("defer_loading") and t.get("name") not in loaded:
                continue
            out[str(t.get("name"))] = t["input_schema"]
        return out

    def tool(self, name: str) -> dict[str, Any] | None:
        """The definition of a tool in the request."""
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


def _walk_blocks(messages: list[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    """Every content block of the messages, nested ones (in tool results) too."""
    stack: list[Any] = [m.get("content") for m in messages]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            yield item
            stack.append(item.get("content"))


# --- what the real API refuses -------------------------------------------------

# content block types a request's messages may carry (the Messages API's tags)
BLOCK_TYPES = frozenset(
    {
        "text",
        "image",
        "document",
        "search_result",
        "thinking",
        "redacted_thinking",
        "tool_use",
        "tool_result",
        "server_tool_use",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "code_execution_tool_result",
        "bash_code_execution_tool_result",
        "text_editor_code_execution_tool_result",
        "tool_search_tool_result",
        "mcp_tool_use",
        "mcp_tool_result",
        "container_upload",
        "tool_reference",
        "compaction",
    }
)
ROLES = ("user", "assistant", "system")
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")


def check_request(body: Any) -> str:
    """Why the real Messages API would refuse this request body ("" if it would not).

    The messages are the real API's ``invalid_request_error`` texts. ``system``
    messages (which the CLI appends) are allowed and do not count for the
    alternation of ``user`` and ``assistant``.
    """
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    for key in ("model", "max_tokens", "messages"):
        if key not in body:
            return f"{key}: Field required"
    if not isinstance(body["model"], str) or not body["model"]:
        return "model: String should have at least 1 character"
    max_tokens = body["max_tokens"]
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        return "max_tokens: Input should be a valid integer"
    if max_tokens < 1:
        return "max_tokens: Input should be greater than or equal to 1"
    messages = body["messages"]
    if not isinstance(messages, list):
        return "messages: Input should be a valid list"
    problem = _check_tools(body.get("tools"))
    if problem:
        return problem
    prev_role, prev_uses, prev_at = "", set[str](), -1
    for i, m in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(m, dict):
            return f"{where}: Input should be a valid dictionary"
        role = m.get("role")
        if role not in ROLES:
            return f"{where}.role: Input should be 'user', 'assistant' or 'system'"
        content = m.get("content")
        blocks: list[Any]
        if isinstance(content, str):
            if not content and not (role == "assistant" and i == len(messages) - 1):
                return (
                    f"{where}: all messages must have non-empty content except for "
                    "the optional final assistant message"
                )
            blocks = []
        elif isinstance(content, list):
            if not content and not (role == "assistant" and i == len(messages) - 1):
                return (
                    f"{where}: all messages must have non-empty content except for "
                    "the optional final assistant message"
                )
            blocks = content
        else:
            return f"{where}.content: Input should be a valid string or list"
        for j, b in enumerate(blocks):
            kind = b.get("type") if isinstance(b, dict) else None
            if kind not in BLOCK_TYPES:
                return (
                    f"{where}.content.{j}.type: Input tag {kind!r} found using 'type' "
                    "does not match any of the expected tags"
                )
        if role == "system":
            continue
        if not prev_role and role != "user":
            return 'messages: first message must use the "user" role'
        if role == prev_role:
            return (
                f'messages: roles must alternate between "user" and "assistant", '
                f'but found multiple "{role}" roles in a row'
            )
        results = [b for b in blocks if b.get("type") == "tool_result"]
        result_ids = [str(b.get("tool_use_id")) for b in results]
        if role == "user":
            missing = [u for u in sorted(prev_uses) if u not in result_ids]
            if missing:
                return (
                    f"messages.{prev_at}: `tool_use` ids were found without `tool_result` "
                    f"blocks immediately after: {', '.join(missing)}. Each `tool_use` block "
                    "must have a corresponding `tool_result` block in the next message."
                )
            unexpected = [r for r in result_ids if r not in prev_uses]
            if unexpected:
                return (
                    f"{where}.content.0: unexpected `tool_use_id` found in `tool_result` "
                    f"blocks: {', '.join(unexpected)}. Each `tool_result` block must have "
                    "a corresponding `tool_use` block in the previous message."
                )
            if results and blocks[: len(results)] != results:
                return (
                    f"{where}: `tool_result` blocks must come first in the content of a "
                    "user message that answers tool uses"
                )
        elif results:
            return f"{where}: `tool_result` blocks can only be in user messages"
        uses = [b for b in blocks if b.get("type") == "tool_use"] if role == "assistant" else []
        for b in uses:
            if not isinstance(b.get("input"), dict):
                return f"{where}: tool_use.input: Input should be a valid dictionary"
        prev_role, prev_uses, prev_at = role, {str(b.get("id")) for b in uses}, i
    if prev_uses:
        return (
            f"messages.{prev_at}: `tool_use` ids were found without `tool_result` blocks "
            f"immediately after: {', '.join(sorted(prev_uses))}. Each `tool_use` block must "
            "have a corresponding `tool_result` block in the next message."
        )
    return ""


def _check_tools(tools: Any) -> str:
    if tools is None:
        return ""
    if not isinstance(tools, list):
        return "tools: Input should be a valid list"
    seen: set[str] = set()
    for i, t in enumerate(tools):
        if not isinstance(t, dict):
            return f"tools.{i}: Input should be a valid dictionary"
        name = t.get("name")
        if not isinstance(name, str) or not TOOL_NAME.match(name):
            return f"tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'"
        if name in seen:
            return "tools: Tool names must be unique."
        seen.add(name)
        if t.get("type") in (None, "custom"):
            schema = t.get("input_schema")
            if not isinstance(schema, dict):
                return f"tools.{i}.custom.input_schema: Field required"
            if schema.get("type") != "object":
                return f"tools.{i}.custom.input_schema.type: Input should be 'object'"
    return ""


def check_tool_calls(blocks: Iterable[Block], req: Request) -> str:
    """Why a scripted answer's ``tool_use`` blocks could not come from a real
    model given this request ("" if they could): a tool not offered with a
    schema, or an input that is not an object. An input the schema refuses
    can come from a real model (the API does not check it): it passes."""
    offered = req.offered
    for b in blocks:
        if b.kind != "tool_use":
            continue
        if b.name not in offered:
            deferred = " (in the request, deferred)" if b.name in req.tool_names else ""
            return (
                f"the script calls tool {b.name!r}{deferred}, which this request did not "
                f"offer with a schema; offered: {', '.join(sorted(offered)) or '(none)'}"
            )
        if not isinstance(b.input, dict):
            return f"the script calls tool {b.name!r} with a non-object input {b.input!r}"
    return ""


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
        self._problems: list[str] = []
        self._outage: Fault | None = None
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
        usage: Usage | dict[str, int] | None = None,
        stop: str | None = None,
    ) -> Reply:
        """Queues one assistant message (``usage``, ``stop``: see :class:`Reply`).

        Strings become text blocks; a callable is called with the request when
        the reply is used (e.g. to quote an id from the last tool result).
        """
        items = [text(b) if isinstance(b, str) else b for b in blocks] or [text(self.default_text)]
        if isinstance(usage, dict):
            usage = Usage(**usage)
        r = Reply(
            blocks=items, when=when, hold=hold, delay_s=delay_s, usage=usage or Usage(), stop=stop
        )
        return self._queued(r)

    def error(
        self,
        status: int,
        message: str,
        error_type: str = "invalid_request_error",
        *,
        when: Callable[[Request], bool] | None = None,
    ) -> Reply:
        """Queues an API error answer (e.g. 400 ``prompt is too long``)."""
        return self._queued(Reply(blocks=[], when=when, error=(status, error_type, message)))

    def fault(
        self,
        fault: Fault,
        *blocks: Block | str | Callable[[Request], Block],
        when: Callable[[Request], bool] | None = None,
    ) -> Reply:
        """Queues one faulty answer. A slow first byte (``Fault.slow``) still
        answers ``blocks`` (the default text when none) once it comes."""
        items = [text(b) if isinstance(b, str) else b for b in blocks] or [text(self.default_text)]
        return self._queued(Reply(blocks=items, when=when, fault=fault))

    def outage(self, fault: Fault) -> None:
        """Answers every ``/v1/messages`` request with ``fault`` (scripted
        replies wait) until :meth:`end_outage`."""
        with self._lock:
            self._outage = fault

    def end_outage(self) -> None:
        with self._lock:
            self._outage = None

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

    @property
    def problems(self) -> list[str]:
        """Requests the real API would refuse, and scripted tool calls a real
        model could not make (each answered with a 400)."""
        with self._lock:
            return list(self._problems)

    def check(self) -> None:
        """Fails (AssertionError) when the CLI sent a request the real API
        refuses or the script called a tool it was not offered."""
        problems = self.problems
        if problems:
            raise AssertionError(
                "the scripted API refused what the real one would:\n- " + "\n- ".join(problems)
            )

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
    def _queued(self, r: Reply) -> Reply:
        with self._lock:
            self._queue.append(r)
        return r

    def _record(self, req: Request) -> None:
        with self._lock:
            self._requests.append(req)

    def _refuse(self, req: Request, why: str) -> None:
        req.refused = why
        with self._lock:
            self._problems.append(f"request {len(self._requests)}: {why}")

    def _take(self, req: Request) -> Reply | None:
        with self._lock:
            if self._outage is not None:
                return Reply(blocks=[text(self.default_text)], fault=self._outage)
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
        try:
            self._messages(req)
        except (BrokenPipeError, ConnectionResetError):
            req.disconnected = True

    def _messages(self, req: Request) -> None:
        why = check_request(req.body)
        if why:
            self.api._refuse(req, why)
            self._json(400, _err("invalid_request_error", why), req)
            return
        reply = self.api._take(req)
        req.reply = reply
        if reply is None:
            reply = Reply(blocks=[text(self.api.default_text)])
        reply = reply.resolved(req)
        if reply.delay_s:
            time.sleep(reply.delay_s)
        fault = reply.fault
        if fault and fault.first_byte_s:
            time.sleep(fault.first_byte_s)
        if fault and fault.status:
            headers = {}
            if fault.retry_after is not None:
                headers["retry-after"] = f"{fault.retry_after:g}"
            self._json(fault.status, _err(fault.error_type, fault.message), req, headers)
            return
        if reply.error:
            status, etype, message = reply.error
            self._json(status, _err(etype, message), req)
            return
        why = check_tool_calls([b for b in reply.blocks if isinstance(b, Block)], req)
        if why:
            self.api._refuse(req, why)
            self._json(400, _err("invalid_request_error", why), req)
            return
        model = req.model or self.api.model
        if fault and fault.disconnect:
            req.disconnected = True
        if isinstance(req.body, dict) and req.body.get("stream"):
            self._stream(reply, model, drop=bool(fault and fault.disconnect))
        elif fault and fault.disconnect:
            self._drop()
        else:
            self._json(200, _message(reply, model), req)

    def _json(
        self,
        status: int,
        doc: Any,
        req: Request | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if req is not None:
            req.status = status
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("request-id", f"req_{next(_ids)}")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _event(self, kind: str, data: dict[str, Any]) -> None:
        chunk = f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()
        self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        self.wfile.flush()

    def _drop(self) -> None:
        """Closes the connection at once, without a clean end (a reset)."""
        self.close_connection = True
        self.wfile.flush()
        self.connection.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
        )
        self.connection.shutdown(socket.SHUT_RDWR)

    def _stream(self, reply: Reply, model: str, *, drop: bool = False) -> None:
        """The real API's event sequence; ``drop``: the connection closes after
        the first content delta."""
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("request-id", f"req_{next(_ids)}")
        self.end_headers()
        msg = _message(reply, model)
        start = dict(msg, content=[], stop_reason=None)
        start["usage"] = reply.usage.doc(output_tokens=1)
        self._event("message_start", {"type": "message_start", "message": start})
        for i, block in enumerate(reply.blocks):
            assert isinstance(block, Block)
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
                    if drop:
                        self._drop()
                        return
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
                for piece in _pieces(json.dumps(block.input)):
                    self._event(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": i,
                            "delta": {"type": "input_json_delta", "partial_json": piece},
                        },
                    )
                    if drop:
                        self._drop()
                        return
            self._event("content_block_stop", {"type": "content_block_stop", "index": i})
        self._event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
                "usage": msg["usage"],
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
        assert isinstance(b, Block)
        if b.kind == "text":
            content.append({"type": "text", "text": b.text})
        else:
            content.append({"type": "tool_use", "id": b.id, "name": b.name, "input": b.input})
    out_tokens = reply.usage.output_tokens
    if out_tokens is None:
        out_tokens = sum(len(json.dumps(c)) // 4 + 1 for c in content)
    return {
        "id": f"msg_{next(_ids):08d}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reply.stop_reason,
        "stop_sequence": None,
        "usage": reply.usage.doc(output_tokens=out_tokens),
    }


def _err(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}
