"""Temporary test-local stand-ins for lifecycle and broker (until the real ones serve)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from nats.aio.client import Client as NATS

from hyperhive.common import subjects
from hyperhive.common.config import Settings
from hyperhive.common.errors import BackendFailed, Conflict, NotFound
from hyperhive.common.paths import AgentPaths
from hyperhive.common.rpc import Call, Responder
from hyperhive.common.wire.base import Empty
from hyperhive.common.wire.broker import DeliverRequest, SendReply
from hyperhive.common.wire.lifecycle import (
    AgentInfo,
    AgentRequest,
    ApplyReply,
    ApplyRequest,
    CreateRequest,
    DraftInfo,
    DraftRequest,
    DraftsReply,
    SpawnRequest,
)


@dataclass
class StandIns:
    settings: Settings
    agents: dict[str, AgentInfo] = field(default_factory=dict)
    delivered: list[DeliverRequest] = field(default_factory=list)
    apply_delay: float = 0.0

    def _check(self, name: str) -> str | None:
        path = AgentPaths.of(self.settings, name).applied / "agent.toml"
        if not path.exists():
            return None
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            return str(exc)
        if "model" in data and not isinstance(data["model"], str):
            return "config check failed: model must be a string"
        return None

    async def get(self, req: AgentRequest, _c: Call) -> AgentInfo:
        if req.name not in self.agents:
            raise NotFound(f"unknown agent {req.name}")
        return self.agents[req.name]

    async def drafts(self, _req: Empty, _c: Call) -> DraftsReply:
        return DraftsReply(
            drafts=[DraftInfo(name=a.name) for a in self.agents.values() if a.state == "draft"]
        )

    async def draft(self, req: DraftRequest, _c: Call) -> DraftInfo:
        from hyperhive.lifecycle import agentconf, repos

        if req.name in self.agents:
            raise Conflict("exists")
        p = AgentPaths.of(self.settings, req.name)
        head = repos.init_with_files(p.proposed, agentconf.default_files(), "initial")
        repos.init_empty(p.applied)
        p.state.mkdir(parents=True, exist_ok=True)
        self.agents[req.name] = AgentInfo(name=req.name, kind="agent", state="draft", port=0)
        return DraftInfo(name=req.name, head=head, created_at=time.time())

    async def apply(self, req: ApplyRequest, _c: Call) -> ApplyReply:
        if self.apply_delay:
            await asyncio.sleep(self.apply_delay)
        err = self._check(req.name)
        return ApplyReply(ok=err is None, error=err or "")

    async def create(self, req: CreateRequest, _c: Call) -> AgentInfo:
        from hyperhive.lifecycle import agentconf, repos

        p = AgentPaths.of(self.settings, req.name)
        if req.sha is None:
            if not repos.exists(p.proposed):
                repos.init_with_files(p.proposed, agentconf.default_files(), "initial")
            repos.deploy_default(p.applied, p.proposed)
        else:
            err = self._check(req.name)
            if err:
                raise BackendFailed(err)
        info = AgentInfo(name=req.name, kind="agent", state="running", port=8100)
        self.agents[req.name] = info
        return info

    async def spawn(self, req: SpawnRequest, c: Call) -> AgentInfo:
        return await self.create(CreateRequest(name=req.name), c)

    async def deliver(self, req: DeliverRequest, _c: Call) -> SendReply:
        self.delivered.append(req)
        return SendReply(id=len(self.delivered), ts=time.time())


@contextlib.asynccontextmanager
async def standins(nc: NATS, settings: Settings) -> AsyncIterator[StandIns]:
    s = StandIns(settings)
    r = Responder(nc, queue="standin")

    def lc(verb: str) -> str:
        return subjects.system("lifecycle", verb)

    await r.serve(lc("get"), AgentRequest, s.get)
    await r.serve(lc("drafts"), Empty, s.drafts)
    await r.serve(lc("draft"), DraftRequest, s.draft)
    await r.serve(lc("apply"), ApplyRequest, s.apply)
    await r.serve(lc("create"), CreateRequest, s.create)
    await r.serve(subjects.admin("lifecycle", "spawn"), SpawnRequest, s.spawn)
    await r.serve(subjects.system("broker", "deliver"), DeliverRequest, s.deliver)
    await nc.flush()
    try:
        yield s
    finally:
        await r.stop(1)
