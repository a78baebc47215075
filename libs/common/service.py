"""Runs every hyperhive process: the services and the harness.

:data:`PARTS` is the one table of what ``hive serve <part>`` and ``hive
harness serve|mcp`` start (the CLI imports no service module itself).
:func:`serve_main` is the one entry point: logging, tracing, the event loop,
SIGTERM/SIGINT (:func:`stop_on_signals`), one grace period
(:data:`GRACE_S`) for in-flight work, background tasks and the NATS drain,
and one clear line when it cannot run.

A service module exposes ``async def start(rt: Runtime) -> None`` that
registers its handlers on ``rt.responder`` and pushes its own cleanups onto
``rt.stack``, and may expose ``def check(settings) -> None``, run before
anything is connected, that raises ``ConfigError`` for settings it cannot
run with. The runner owns everything else: NATS, JetStream streams, the
state bucket, the Postgres pool and migrations, the outbox relay, the
``hive.admin.<part>.ping`` handler, and the graceful stop.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import inspect
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import uvloop
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from hyperhive.common import endpoints, subjects
from hyperhive.common.config import Settings
from hyperhive.common.endpoints import Endpoint
from hyperhive.common.errors import ConfigError, HiveError
from hyperhive.common.jetstream import ensure_state_bucket, ensure_streams
from hyperhive.common.logs import setup_logging
from hyperhive.common.natsconn import connect, sync_subscriptions
from hyperhive.common.rpc import Call, Handler, Responder
from hyperhive.common.telemetry import setup_tracing
from hyperhive.common.wire.base import Ping, Pong

if TYPE_CHECKING:
    import asyncpg

    from hyperhive.common.outbox import OutboxRelay

log = logging.getLogger(__name__)

# What a stopping process gives in-flight requests, a running turn, its
# background tasks and the NATS drain, each. Under lifecycle.stop_timeout_s
# (10 s), after which a harness is killed.
GRACE_S = 5.0


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    part: str  # as in ``hive serve <part>`` and ``hive.admin.<part>.*``
    module: str  # a service: has ``async def start(rt)``
    schema: str | None = None  # its Postgres schema; None: no database
    # its pooled connections hold no session state (see db.create_pool)
    keep_session: bool = False
    # not a service: the module's own ``async def run(settings)`` (or, for a
    # program with its own loop, ``def run(settings)``)
    program: bool = False
    command: str = ""  # how the operator starts it; "": ``hive serve <part>``
    # uvloop: the same asyncio API with a faster loop (nats-py's protocol
    # parsing and the per-request tasks are the broker's hot path); the
    # harness's subprocesses and terminal PTYs run on asyncio's own
    uvloop: bool = True
    # a hub service: sets up the streams and the state bucket, answers
    # ``hive.admin.<part>.ping`` and ``nats micro``; a node agent (False) only
    # needs (and may only subscribe to) its own subjects
    hub: bool = True

    @property
    def started_by(self) -> str:
        return self.command or f"hive serve {self.part}"

    def log_name(self, settings: Settings) -> str:
        """The name its log lines carry (a harness: its agent's)."""
        if self.part == "harness":
            return f"harness-{settings.harness.agent or '?'}"
        return self.part


PARTS: dict[str, ServiceSpec] = {
    s.part: s
    for s in (
        ServiceSpec("broker", "hyperhive.broker.service", "broker", keep_session=True),
        ServiceSpec("lifecycle", "hyperhive.lifecycle.service", "lifecycle"),
        ServiceSpec("approvals", "hyperhive.approvals.service", "approvals"),
        ServiceSpec("crash-watch", "hyperhive.crashwatch.service"),
        ServiceSpec("dashboard", "hyperhive.dashboard.service"),
        # inside an agent's container: the turn loop and page; the stdio MCP server
        ServiceSpec(
            "harness",
            "hyperhive.harness.serve",
            program=True,
            command="hive harness serve",
            uvloop=False,
        ),
        ServiceSpec(
            "harness-mcp", "hyperhive.harness.mcp_server", program=True, command="hive harness mcp"
        ),
        # ``hive serve node``: a node agent alone, on a host that runs agents
        ServiceSpec(subjects.NODE_SERVICE, "hyperhive.lifecycle.nodeservice", hub=False),
    )
}
SPECS: dict[str, ServiceSpec] = {p: s for p, s in PARTS.items() if not s.program}
assert tuple(p for p in SPECS if p != subjects.NODE_SERVICE) == subjects.SERVICES


def hyperhive_version() -> str:
    try:
        return version("hyperhive")
    except PackageNotFoundError:
        return "0+unknown"


@dataclass
class Runtime:
    """What a running service is given."""

    part: str
    settings: Settings
    nc: NATS
    js: JetStreamContext
    kv: KeyValue | None  # None for a node agent (no state bucket set up)
    responder: Responder
    stack: AsyncExitStack
    stop: asyncio.Event
    pool: asyncpg.Pool | None = None
    outbox: OutboxRelay | None = None
    started_at: float = field(default_factory=time.time)
    background: set[asyncio.Task[None]] = field(default_factory=set)

    async def serve_all(self, handlers: Mapping[Endpoint[Any, Any], Handler]) -> None:
        """Serves this service's endpoints, each with its handler.

        Raises:
            TypeError: an endpoint of this service has no handler, a handler
                serves another service's endpoint, or its types are not the
                endpoint's: the service does not start.
        """
        await self._serve(self.part, handlers)

    async def serve_node(self, node: str, handlers: Mapping[Endpoint[Any, Any], Handler]) -> None:
        """Serves the node verbs as node agent ``node`` (``hive.node.<node>.*``):
        ``hive serve node``, and lifecycle for the hub's in-process one.

        Raises: as :meth:`serve_all`.
        """
        await self._serve(subjects.NODE_SERVICE, handlers, node=node)

    async def _serve(
        self, service: str, handlers: Mapping[Endpoint[Any, Any], Handler], node: str = ""
    ) -> None:
        mine = set(endpoints.served_by(service)) - {endpoints.PING.get(service)}
        missing = [e.pattern for e in endpoints.ENDPOINTS if e in mine and e not in handlers]
        foreign = [e.pattern for e in handlers if e not in mine]
        if missing or foreign:
            raise TypeError(f"{service}: no handler for {missing}; not its own: {foreign}")
        for endpoint, handler in handlers.items():
            await self.responder.serve(endpoint, handler, node=node)

    def spawn(self, coro: Awaitable[None], name: str) -> asyncio.Task[None]:
        """Runs a background loop that is cancelled when the service stops."""
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self.background.add(task)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task[None]) -> None:
        self.background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s died", task.get_name(), exc_info=task.exception())


async def run(
    part: str,
    settings: Settings,
    *,
    ready: Callable[[Runtime], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Runs service ``part`` until ``stop`` is set (SIGTERM/SIGINT set it too).

    Raises:
        ConfigError: unknown part, or a setting the service cannot run with.
        Unavailable: NATS or Postgres unreachable after the configured retries.
    """
    spec = SPECS.get(part)
    if spec is None:
        raise ConfigError(f"unknown service {part!r}; one of: {', '.join(SPECS)}")
    module = importlib.import_module(spec.module)
    check = getattr(module, "check", None)
    if check is not None:
        check(settings)  # a setting it cannot run with: one line, nothing started
    stop = stop_on_signals(stop)
    async with AsyncExitStack() as stack:
        nc = await connect(settings.nats, name=f"hive-{part}")
        stack.push_async_callback(drain, nc)
        js = nc.jetstream()
        kv = None
        if spec.hub:
            await ensure_streams(js)
            kv = await ensure_state_bucket(js)
        pool = outbox = None
        if spec.schema:
            # imported here: a process without a database (a harness, a node
            # agent) does not carry asyncpg (issue 17's memory target)
            from hyperhive.common.db import create_pool, migrate
            from hyperhive.common.outbox import OutboxRelay

            pool = await create_pool(settings.database, spec.schema, keep_session=spec.keep_session)
            stack.push_async_callback(pool.close)
            await migrate(pool, spec.module.rsplit(".", 1)[0])
            outbox = OutboxRelay(pool, js)
            outbox.start()
            stack.push_async_callback(outbox.stop)
        responder = Responder(nc, queue=f"hive-{part}")
        rt = Runtime(
            part=part,
            settings=settings,
            nc=nc,
            js=js,
            kv=kv,
            responder=responder,
            stack=stack,
            stop=stop,
            pool=pool,
            outbox=outbox,
        )
        stack.push_async_callback(_cancel_background, rt)

        async def ping(_req: Ping, _call: Call) -> Pong:
            return Pong(
                service=part,
                version=hyperhive_version(),
                pid=os.getpid(),
                started_at=rt.started_at,
                database=await _database_status(pool),
                in_flight=responder.in_flight,
            )

        if spec.hub:
            await responder.serve(endpoints.PING[part], ping)
        await module.start(rt)
        unserved = [e.pattern for e in endpoints.served_by(part) if e not in responder.endpoints]
        if unserved:  # a service that forgot rt.serve_all for what the registry says it serves
            raise TypeError(f"{part} does not serve {unserved}")
        if spec.hub:  # a node user may subscribe to its own subjects only, not $SRV
            from hyperhive.common.discovery import Discovery

            discovery = Discovery(nc, responder, part, hyperhive_version(), f"hyperhive {part}")
            await discovery.start()  # `nats micro ls|info|stats`
            stack.push_async_callback(discovery.stop)
        await sync_subscriptions(nc)  # live on the server before "ready"
        log.info("serving", extra={"service": part})
        # What is alive now (modules, handlers, pools) lives as long as the
        # process: out of the collector's sight, a full collection walks only
        # what requests allocate (fewer long pauses in the p99 of a send)
        gc.freeze()
        if ready:
            ready(rt)
        await stop.wait()
        log.info("stopping", extra={"service": part, "in_flight": responder.in_flight})
        await responder.stop(GRACE_S)


async def _database_status(pool: asyncpg.Pool | None) -> str:
    if pool is None:
        return ""
    try:
        async with asyncio.timeout(2):
            await pool.fetchval("SELECT 1")
        return "ok"
    except Exception as exc:
        return f"error: {str(exc) or type(exc).__name__}"


async def _cancel_background(rt: Runtime) -> None:
    for task in list(rt.background):
        task.cancel()
    if rt.background:
        await asyncio.wait(set(rt.background), timeout=GRACE_S)


def stop_on_signals(stop: asyncio.Event | None = None, *, handle: bool = True) -> asyncio.Event:
    """``stop`` (a new Event if None), set by SIGTERM and SIGINT when ``handle``.

    Outside the main thread (in-process tests) no handler can be installed:
    the caller sets ``stop``.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT) if handle else ():
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
    return stop


async def drain(nc: NATS) -> None:
    """Drains ``nc`` within :data:`GRACE_S`, else closes it."""
    try:
        await asyncio.wait_for(nc.drain(), timeout=GRACE_S)
    except Exception:
        await nc.close()


def serve_main(part: str, settings: Settings) -> int:
    """``hive serve <part>`` and ``hive harness serve|mcp``: runs ``part`` of
    :data:`PARTS` until SIGTERM/SIGINT; exit code 0 on a clean stop, 1 with
    one line if it cannot run."""
    spec = PARTS.get(part)
    if spec is None:
        print(f"hive serve {part}: unknown; one of: {', '.join(SPECS)}", file=sys.stderr)
        return 1
    try:
        if spec.program:
            entry = importlib.import_module(spec.module).run
            if not inspect.iscoroutinefunction(entry):
                entry(settings)  # runs its own loop (the MCP server, on stdio)
                return 0
        setup_logging(settings.log, spec.log_name(settings))
        setup_tracing(settings.telemetry, part)
        main = entry(settings) if spec.program else run(part, settings)
        if spec.uvloop:
            uvloop.run(main)
        else:
            asyncio.run(main)
    except HiveError as exc:
        print(f"{spec.started_by}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0
