"""Request/reply over NATS with typed payloads and one error shape.

Callers use :func:`request`; services answer with a :class:`Responder`, which
runs each request in its own task (a long-poll must not block the next
request), turns every ``HiveError`` into an error reply, and lets in-flight
handlers finish on shutdown.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, get_type_hints

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from opentelemetry import trace

from hyperhive.common import actor, retry, subjects
from hyperhive.common.endpoints import Endpoint
from hyperhive.common.errors import (
    BadRequest,
    Forbidden,
    HiveError,
    Internal,
    RequestTimeout,
    Unavailable,
    from_code,
)
from hyperhive.common.telemetry import extract_context, inject_headers, span
from hyperhive.common.wire.base import ErrorInfo, ErrorReply, Ok

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

T = TypeVar("T", bound=msgspec.Struct)
R = TypeVar("R", bound=msgspec.Struct)

_encoder = msgspec.json.Encoder()
DEFAULT_TIMEOUT_S = 10.0


class _ErrorProbe(msgspec.Struct):
    # ``object``: some replies carry a plain-string ``error`` field of their own
    # (a build error), which is not an error reply
    error: object = None


_probe = msgspec.json.Decoder(_ErrorProbe)
_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}


def encode(value: msgspec.Struct | None) -> bytes:
    """JSON bytes of a wire value (``{}`` for ``None``)."""
    return b"{}" if value is None else _encoder.encode(value)


def decoder(kind: type[T]) -> msgspec.json.Decoder[T]:
    """A cached decoder for ``kind`` (built once, not per message)."""
    dec = _decoders.get(kind)
    if dec is None:
        dec = _decoders[kind] = msgspec.json.Decoder(kind)
    return dec


def decode_reply(data: bytes, kind: type[T]) -> T:
    """Decodes a reply, raising the ``HiveError`` an error reply carries."""
    try:
        probe = _probe.decode(data)
    except msgspec.DecodeError as exc:
        raise Internal(f"malformed reply: {exc}") from None
    err = probe.error
    if isinstance(err, dict) and isinstance(err.get("code"), str):
        raise from_code(err["code"], str(err.get("message", "")))
    try:
        return decoder(kind).decode(data)
    except msgspec.DecodeError as exc:
        raise Internal(f"reply does not match {kind.__name__}: {exc}") from None


async def request(
    nc: NATS,
    subject: str,
    payload: msgspec.Struct | None,
    reply: type[T],
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> T:
    """Sends a request and waits for its typed reply.

    Raises:
        RequestTimeout: no reply within ``timeout`` seconds.
        Unavailable: nobody serves ``subject`` or the connection is down.
        HiveError: the service replied with an error (its subclass by code).
    """
    with span(tracer, f"request {subject}", kind=trace.SpanKind.PRODUCER) as current:
        try:
            msg = await _request_once(nc, subject, encode(payload), timeout)
        except nats.errors.NoRespondersError:
            raise Unavailable(f"no service answers {subject}") from None
        except nats.errors.TimeoutError:
            raise RequestTimeout(f"no reply on {subject} within {timeout:g}s") from None
        except (
            nats.errors.ConnectionClosedError,
            nats.errors.ConnectionReconnectingError,
            nats.errors.StaleConnectionError,
            nats.errors.OutboundBufferLimitError,
        ) as exc:
            raise Unavailable(f"NATS connection not usable for {subject}: {exc}") from None
        try:
            return decode_reply(msg.data, reply)
        except HiveError as exc:
            current.set_attribute("hive.error", exc.code)
            raise


async def call(
    nc: NATS,
    endpoint: Endpoint[Any, T],
    payload: msgspec.Struct,
    *,
    agent: str = "",
    node: str = "",
    timeout: float = DEFAULT_TIMEOUT_S,
) -> T:
    """Calls ``endpoint`` (as ``agent`` for an agent endpoint, on node agent
    ``node`` for a node endpoint) for its typed reply.

    Raises: as :func:`request`.
    """
    if not isinstance(payload, endpoint.request):
        raise TypeError(f"{endpoint.pattern} takes {endpoint.request.__name__}")
    assert endpoint.reply is not None, f"{endpoint.pattern} is published to, not called"
    subject = endpoint.subject(agent, node=node)
    return await request(nc, subject, payload, endpoint.reply, timeout=timeout)


async def _request_once(nc: NATS, subject: str, data: bytes, timeout: float) -> Msg:
    # nats-server can report "no responders" for a few milliseconds after a
    # subscriber appeared on another connection (seen with 2.15): retry briefly
    # before calling a service unavailable.
    return await retry.retry(
        lambda: nc.request(subject, data, timeout=timeout, headers=inject_headers(actor.headers())),
        retry.NO_RESPONDERS,
        on=(nats.errors.NoRespondersError,),
        tries=retry.NO_RESPONDERS_TRIES,
    )


async def publish(nc: NATS, subject: str, payload: msgspec.Struct) -> None:
    """Publishes a wire value with the current trace context in its headers."""
    await nc.publish(subject, encode(payload), headers=inject_headers())


@dataclass(frozen=True, slots=True)
class Call:
    """What a handler knows about the request besides its payload."""

    subject: str
    headers: dict[str, str]

    @property
    def agent(self) -> str:
        """The calling agent, from ``hive.agent.<n>.<verb>``."""
        return subjects.parse_agent(self.subject)[0]

    @property
    def verb(self) -> str:
        return self.subject.rsplit(".", 1)[-1]


Handler = Callable[[Any, Call], Awaitable[msgspec.Struct | None]]


def manager_only(handler: Handler) -> Handler:
    """``handler`` for a manager tool served on every agent's subject
    (``hive.agent.*.<tool>``): anyone but the manager hears ``Forbidden``
    (rather than "no responders")."""

    async def guarded(req: Any, call: Call) -> msgspec.Struct | None:
        if call.agent != subjects.MANAGER:
            raise Forbidden(f"only the manager {subjects.MANAGER} may call {call.verb}")
        return await handler(req, call)

    return guarded


def check_handler(endpoint: Endpoint[Any, Any], handler: Handler) -> None:
    """Raises ``TypeError`` when ``handler``'s annotations disagree with ``endpoint``.

    The request parameter must be annotated with the endpoint's request type;
    the return with its reply type (``None`` allowed for an ``Ok`` reply or a
    published subject, whose handlers answer nothing).
    """
    name = getattr(handler, "__qualname__", repr(handler))
    try:
        hints = get_type_hints(handler)
    except Exception as exc:
        raise TypeError(f"{name}: annotations unreadable: {exc}") from None
    params = [p for p in inspect.signature(handler).parameters.values()]
    if not params:
        raise TypeError(f"{name} takes no request")
    got = hints.get(params[0].name)
    if got is not endpoint.request:
        raise TypeError(
            f"{name} serves {endpoint.pattern}: takes {got!r}, "
            f"the endpoint's request is {endpoint.request.__name__}"
        )
    returned = hints.get("return", inspect.Parameter.empty)
    allowed: set[object] = {endpoint.reply}
    if endpoint.reply is None or endpoint.reply is Ok:
        allowed |= {type(None), None}
    if endpoint.reply is not None:
        allowed.add(endpoint.reply | None)
    if returned not in allowed:
        reply = "nothing" if endpoint.reply is None else endpoint.reply.__name__
        raise TypeError(f"{name} serves {endpoint.pattern}: returns {returned!r}, not {reply}")


def _database_down(exc: BaseException) -> bool:
    """``db.is_connection_error``, without importing asyncpg (15 MB) into a
    process that has no database: there, no error comes from it."""
    if "hyperhive.common.db" not in sys.modules:
        return isinstance(exc, ConnectionError)
    from hyperhive.common.db import is_connection_error

    return is_connection_error(exc)


def error_reply(exc: HiveError) -> bytes:
    return _encoder.encode(ErrorReply(error=ErrorInfo(code=exc.code, message=exc.message)))


@dataclass(slots=True)
class Counts:
    """What one served subject has handled (``nats micro stats`` shows it)."""

    name: str  # the endpoint's name in discovery (``admin-send``)
    subject: str
    requests: int = 0
    errors: int = 0  # error replies, of any code
    processing_ns: int = 0
    last_error: str = ""


class Responder:
    """Serves request subjects for one service, one task per request."""

    def __init__(self, nc: NATS, queue: str) -> None:
        self._nc = nc
        self.queue = queue
        self._subs: list[Subscription] = []
        self.counts: list[Counts] = []
        self.endpoints: list[Endpoint[Any, Any]] = []  # served through :meth:`serve`
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    async def serve(
        self, endpoint: Endpoint[Any, Any], handler: Handler, *, node: str = ""
    ) -> None:
        """Serves ``endpoint`` with ``handler`` (a node endpoint: as node ``node``).

        Raises:
            TypeError: the handler's annotated types are not the endpoint's
                (so a wrong handler fails when the service starts).
        """
        check_handler(endpoint, handler)
        if endpoint.caller == "manager":
            handler = manager_only(handler)
        name = f"{endpoint.family}-{endpoint.verb}"
        subject = endpoint.subject(node=node) if endpoint.family == "node" else endpoint.served_on
        await self.serve_subject(subject, endpoint.request, handler, name=name)
        self.endpoints.append(endpoint)

    async def serve_subject(
        self, subject: str, request_type: type[T], handler: Handler, *, name: str = ""
    ) -> None:
        """Answers ``subject`` (wildcards allowed) with ``handler``.

        The handler gets the decoded request and a :class:`Call`; it returns
        the reply Struct (``None`` means ``{"ok": true}``) or raises a
        ``HiveError``. Anything else becomes an ``internal`` error reply and
        is logged: the service keeps serving.
        """
        dec = decoder(request_type)
        counts = Counts(name=name or subject.replace(".", "-").replace("*", "any"), subject=subject)
        self.counts.append(counts)

        async def on_msg(msg: Msg) -> None:
            if self._closing:
                return
            task = asyncio.create_task(self._run(msg, dec, handler, counts))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        self._subs.append(await self._nc.subscribe(subject, queue=self.queue, cb=on_msg))

    @property
    def served(self) -> list[str]:
        """The subjects (patterns as subscribed) this responder answers."""
        return [sub.subject for sub in self._subs]

    async def _run(
        self, msg: Msg, dec: msgspec.json.Decoder[Any], handler: Handler, counts: Counts
    ) -> None:
        started = time.perf_counter_ns()
        headers = dict(msg.headers or {})
        ctx = extract_context(headers)
        with span(tracer, f"handle {msg.subject}", parent=ctx, kind=trace.SpanKind.CONSUMER):
            try:
                try:
                    req = dec.decode(msg.data or b"{}")
                except msgspec.DecodeError as exc:
                    raise BadRequest(f"bad request on {msg.subject}: {exc}") from None
                with actor.acting_as(actor.of_request(msg.subject, headers)):
                    result = await handler(req, Call(subject=msg.subject, headers=headers))
                data = b'{"ok":true}' if result is None else _encoder.encode(result)
            except HiveError as exc:
                data = error_reply(exc)
                counts.errors += 1
                counts.last_error = f"{exc.code}: {exc.message}"
            except Exception as exc:
                if _database_down(exc):
                    # PostgreSQL down or restarting: the caller may retry
                    reason = (str(exc) or type(exc).__name__).splitlines()[0]
                    log.warning("database unavailable for %s: %s", msg.subject, reason)
                    err: HiveError = Unavailable(
                        f"database unavailable, {msg.subject} not done: {reason}"
                    )
                else:
                    log.exception("handler failed", extra={"subject": msg.subject})
                    err = Internal(f"internal error handling {msg.subject}")
                data = error_reply(err)
                counts.errors += 1
                counts.last_error = f"{err.code}: {err.message}"
        counts.requests += 1
        counts.processing_ns += time.perf_counter_ns() - started
        if msg.reply:
            try:
                await msg.respond(data)
            except Exception as exc:  # connection gone: the caller will time out
                log.warning("could not reply on %s: %s", msg.subject, exc)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stops taking requests and waits up to ``grace_s`` for running ones."""
        self._closing = True
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception:  # connection already closed
                pass
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
            for task in pending:
                task.cancel()
