"""``nats micro ls|info|stats`` for hyperhive's services.

Each service instance answers the NATS micro protocol's discovery requests
(``$SRV.PING|INFO|STATS``, optionally ``.<name>`` and ``.<name>.<id>``) with
what its :class:`~hyperhive.common.rpc.Responder` serves and has counted.

The requests themselves stay on the Responder rather than on nats-py's
``nats.micro.Service``: that one runs a handler inline in its subscription's
callback, which nats-py awaits one message at a time, so one ``recv``
long-poll would hold every other request of its endpoint; and it signals
errors in headers, where hyperhive's contract is the JSON body
``{"error": {"code", "message"}}``. The queue group (one per service, so N
broker instances share the work) is what each endpoint reports.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.micro.service import (
    EndpointInfo,
    EndpointStats,
    ServiceInfo,
    ServicePing,
    ServiceStats,
    ServiceVerb,
    control_subject,
)
from nats.nuid import NUID

from hyperhive.common.rpc import Responder

VERBS = (ServiceVerb.PING, ServiceVerb.INFO, ServiceVerb.STATS)


class Discovery:
    """Answers discovery requests for one service instance."""

    def __init__(
        self, nc: NATS, responder: Responder, name: str, version: str, description: str = ""
    ) -> None:
        self._nc = nc
        self._responder = responder
        self.name = name
        self.id = NUID().next().decode()
        self.version = version
        self.description = description
        self.started = datetime.now(UTC).replace(tzinfo=None)
        self._subs: list[Subscription] = []

    async def start(self) -> None:
        for verb in VERBS:
            answer = self._answer(verb)
            for subject in (
                control_subject(verb),
                control_subject(verb, self.name),
                control_subject(verb, self.name, self.id),
            ):
                self._subs.append(await self._nc.subscribe(subject, cb=answer))

    async def stop(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):  # connection already closed
                await sub.unsubscribe()

    def _answer(self, verb: ServiceVerb) -> Callable[[Msg], Awaitable[None]]:
        async def answer(msg: Msg) -> None:
            if msg.reply:
                await msg.respond(json.dumps(self.describe(verb)).encode())

        return answer

    def describe(self, verb: ServiceVerb) -> dict[str, object]:
        """The ``verb`` response, as ``nats micro`` expects it."""
        queue = self._responder.queue
        counts = self._responder.counts
        match verb:
            case ServiceVerb.PING:
                return ServicePing(id=self.id, name=self.name, version=self.version).to_dict()
            case ServiceVerb.INFO:
                return ServiceInfo(
                    id=self.id,
                    name=self.name,
                    version=self.version,
                    description=self.description,
                    endpoints=[EndpointInfo(c.name, c.subject, queue) for c in counts],
                ).to_dict()
            case _:
                return ServiceStats(
                    id=self.id,
                    name=self.name,
                    version=self.version,
                    started=self.started,
                    endpoints=[
                        EndpointStats(
                            name=c.name,
                            subject=c.subject,
                            queue_group=queue,
                            num_requests=c.requests,
                            num_errors=c.errors,
                            processing_time=c.processing_ns,
                            average_processing_time=c.processing_ns // max(c.requests, 1),
                            last_error=c.last_error,
                        )
                        for c in counts
                    ],
                ).to_dict()
