"""The node agent: the backend half of lifecycle, one per host that runs agents.

It drives this host's containers through a :class:`Backend` and keeps the
agents' files that live here (``state``, ``creds``, ``work``, ``run`` and the
deployed tree in ``applied``), with no database: each request of the control
half carries what the operation needs (:mod:`hyperhive.common.wire.node`).
It watches the containers it runs, and tells the control half what it holds
in a heartbeat (``node.<node>`` in the state bucket) written every
``node.heartbeat_interval_s`` and at once when a container stops by itself,
so that crash-watch sees a crash on any node within its bound.

``hive serve lifecycle`` runs one in-process (``shared``: it shares the
control half's data dir, so the applied repo is the deployed tree and no tree
travels); ``hive serve node`` serves one alone over ``hive.node.<node>.*``
(:data:`hyperhive.common.endpoints.NODE`, :meth:`NodeAgent.endpoints`).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import io
import logging
import os
import tarfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

import msgspec

from hyperhive.common import endpoints as E
from hyperhive.common import notes as agent_notes
from hyperhive.common import subjects
from hyperhive.common.config import Settings
from hyperhive.common.endpoints import Endpoint
from hyperhive.common.errors import BadRequest, HiveError
from hyperhive.common.names import check_agent_name, check_node_name, is_agent_name
from hyperhive.common.nats_auth import write_seed
from hyperhive.common.paths import AgentPaths
from hyperhive.common.rpc import Call, Handler
from hyperhive.common.wire.base import Empty, Ok
from hyperhive.common.wire.lifecycle import LogsReply, NotesReply
from hyperhive.common.wire.node import (
    MAX_TREE_BYTES,
    NodeAgentRequest,
    NodeAgentSpec,
    NodeContainer,
    NodeDeployRequest,
    NodeDestroyReply,
    NodeDestroyRequest,
    NodeExit,
    NodeExposeRequest,
    NodeHeartbeat,
    NodeKeptReply,
    NodeKeptRequest,
    NodeKeptState,
    NodeListReply,
    NodeLogsRequest,
    NodeNotesRequest,
    NodeStateReply,
    NodeStopRequest,
)
from hyperhive.lifecycle import repos
from hyperhive.lifecycle.backends.base import MISSING, RUNNING, STOPPED, AgentSpec, Backend

log = logging.getLogger(__name__)

SPEC_FILE = "node.json"  # agents/<n>/node.json: what the node was told (adoption)
EXITS_KEPT = 16  # exits repeated in each heartbeat (a missed one is seen in the next)
MAX_LOG_LINES = 10_000

_spec_decoder = msgspec.json.Decoder(NodeAgentSpec)
_encoder = msgspec.json.Encoder()

Publish = Callable[[str, bytes], Awaitable[None]]


class NodeAgent:
    """One host's containers and the agents' files on it."""

    def __init__(
        self, settings: Settings, backend: Backend, revision: str, *, shared: bool
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.revision = revision
        self.shared = shared
        self.name = check_node_name(settings.node.name)
        self.started_at = time.time()
        self.watched: dict[str, AgentSpec] = {}  # containers it runs and watches
        self.exits: collections.deque[NodeExit] = collections.deque(maxlen=EXITS_KEPT)
        self._busy: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._kick = asyncio.Event()

    # --- helpers --------------------------------------------------------------

    def spec(self, agent: NodeAgentSpec) -> AgentSpec:
        name = check_agent_name(agent.name, allow_manager=True)
        return AgentSpec(
            name=name,
            port=agent.port,
            manager=agent.manager,
            paths=AgentPaths.of(self.settings, name),
            rev=agent.rev,
        )

    @contextmanager
    def _marked(self, name: str, op: str) -> Iterator[None]:
        self._busy[name] = op
        try:
            yield
        finally:
            self._busy.pop(name, None)

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _remember(self, spec: AgentSpec, agent: NodeAgentSpec) -> None:
        spec.paths.root.mkdir(parents=True, exist_ok=True)
        tmp = spec.paths.root / f".{SPEC_FILE}.tmp"
        tmp.write_bytes(_encoder.encode(agent))
        tmp.replace(spec.paths.root / SPEC_FILE)

    def _watch(self, spec: AgentSpec) -> None:
        self.watched[spec.name] = spec
        self._kick.set()

    def _unwatch(self, name: str) -> None:
        if self.watched.pop(name, None) is not None:
            self._kick.set()

    def _deploy_files(self, spec: AgentSpec, req: NodeDeployRequest, fresh: bool) -> None:
        """Puts the deployed tree and the NATS seed where the backend reads them."""
        paths = spec.paths
        if req.tree is not None:
            if self.shared:
                raise BadRequest("this node shares the hub's applied repo: send no tree")
            unpack_tree(req.tree, paths.applied)
        if req.seed:
            write_seed(paths.nats_seed, req.seed.encode())
        if fresh:
            paths.state.mkdir(parents=True, exist_ok=True)

    # --- verbs (hive.node.<node>.<verb>) ---------------------------------------

    async def create(self, req: NodeDeployRequest) -> NodeStateReply:
        """Builds the container from the tree (not started); a new life of
        the name on a separate node starts with clean run/work/creds dirs."""
        spec = self.spec(req.agent)
        async with self._lock(spec.name):
            with self._marked(spec.name, "create"):
                if not self.shared:
                    await asyncio.to_thread(_clear_runtime, spec.paths)
                    if req.fresh_state:
                        await asyncio.to_thread(repos.remove, spec.paths.state)
                await asyncio.to_thread(self._deploy_files, spec, req, True)
                await asyncio.to_thread(self._remember, spec, req.agent)
                await self.backend.create(spec)
                return NodeStateReply(state=STOPPED)

    async def start(self, req: NodeAgentRequest) -> NodeStateReply:
        """Starts it (a running one is left alone: this is also adoption)."""
        spec = self.spec(req.agent)
        async with self._lock(spec.name):
            with self._marked(spec.name, "start"):
                await asyncio.to_thread(self._remember, spec, req.agent)
                await self.backend.start(spec)
                self._watch(spec)
                return NodeStateReply(state=RUNNING)

    async def stop(self, req: NodeStopRequest) -> NodeStateReply:
        spec = self.spec(req.agent)
        async with self._lock(spec.name):
            with self._marked(spec.name, "stop"):
                self._unwatch(spec.name)
                await self.backend.stop(spec, kill=req.kill)
                return NodeStateReply(state=STOPPED)

    async def restart(self, req: NodeAgentRequest) -> NodeStateReply:
        spec = self.spec(req.agent)
        async with self._lock(spec.name):
            with self._marked(spec.name, "restart"):
                self._unwatch(spec.name)
                await self.backend.restart(spec)
                self._watch(spec)
                return NodeStateReply(state=RUNNING)

    async def update(self, req: NodeDeployRequest) -> NodeStateReply:
        """Rebuilds from the (new) tree; restarts it when ``running``."""
        spec = self.spec(req.agent)
        async with self._lock(spec.name):
            with self._marked(spec.name, "update"):
                await asyncio.to_thread(self._deploy_files, spec, req, False)
                await asyncio.to_thread(self._remember, spec, req.agent)
                if req.running:
                    self._unwatch(spec.name)
                await self.backend.update(spec, running=req.running)
                if req.running:
                    self._watch(spec)
                    return NodeStateReply(state=RUNNING)
                return NodeStateReply(state=await self.backend.state(spec))

    async def destroy(self, req: NodeDestroyRequest) -> NodeDestroyReply:
        spec = self.spec(req.agent)
        async with self._lock(spec.name):
            with self._marked(spec.name, "destroy"):
                self._unwatch(spec.name)
                if req.container:
                    await self.backend.destroy(spec)
                kept = await asyncio.to_thread(
                    remove_node_files, spec.paths, req.purge, self.shared
                )
                return NodeDestroyReply(kept_state=kept)

    async def state(self, req: NodeAgentRequest) -> NodeStateReply:
        spec = self.spec(req.agent)
        state = await self.backend.state(spec)
        if state == RUNNING:
            return NodeStateReply(state=state)
        exit_ = self.backend.last_exit(spec)
        return NodeStateReply(state=state, exit_code=exit_.code, detail=exit_.detail)

    async def logs(self, req: NodeLogsRequest) -> LogsReply:
        spec = self.spec(req.agent)
        lines = max(0, min(req.lines, MAX_LOG_LINES))
        return await self.backend.logs(spec, lines, req.after, req.after_cursor)

    async def expose(self, req: NodeExposeRequest) -> Ok:
        await self.backend.expose_to_manager(check_agent_name(req.name))
        return Ok()

    async def list(self, _req: Empty) -> NodeListReply:
        """Every container this node holds (its agents dir), running or not."""
        out = []
        for spec in await asyncio.to_thread(self._held):
            try:
                state = await self.backend.state(spec)
            except HiveError as exc:
                log.warning("cannot see %s's container: %s", spec.name, exc)
                continue
            if state != MISSING:
                out.append(NodeContainer(name=spec.name, state=state))
        return NodeListReply(node=self.name, containers=out)

    async def notes(self, req: NodeNotesRequest) -> NotesReply:
        """An agent's notes from its state dir here (live or kept), read as
        the agent's own dir: no symlink followed, bounded."""
        paths = self.spec(req.agent).paths
        return await asyncio.to_thread(
            agent_notes.read_notes, paths.state, req.agent.name, req.history, req.version
        )

    async def kept(self, req: NodeKeptRequest) -> NodeKeptReply:
        """The sizes of the asked-for state dirs this node holds."""

        def sizes() -> list[NodeKeptState]:
            out = []
            for name in req.names:
                state = AgentPaths.of(self.settings, check_agent_name(name)).state
                if state.is_dir():
                    out.append(NodeKeptState(name=name, bytes=dir_bytes(state)))
            return out

        return NodeKeptReply(node=self.name, kept=await asyncio.to_thread(sizes))

    def _held(self) -> list[AgentSpec]:
        root = self.settings.paths.agents_dir
        if not root.is_dir():
            return []
        specs = []
        for d in sorted(root.iterdir()):
            if not is_agent_name(d.name) or not d.is_dir():
                continue
            try:
                agent = _spec_decoder.decode((d / SPEC_FILE).read_bytes())
            except (OSError, msgspec.DecodeError):
                agent = NodeAgentSpec(name=d.name)  # from before node agents: ask the backend
            if agent.name == d.name:
                specs.append(self.spec(agent))
        return specs

    # --- watching -------------------------------------------------------------

    async def adopt(self) -> None:
        """At start: watch the containers that still run (nothing is started:
        the control half decides what should run)."""
        for spec in await asyncio.to_thread(self._held):
            try:
                if await self.backend.state(spec) == RUNNING:
                    self.watched[spec.name] = spec
                    log.info("adopted %s's running container", spec.name)
            except HiveError as exc:
                log.warning("cannot see %s's container: %s", spec.name, exc)

    async def monitor(self) -> None:
        """Notices a container that stopped by itself; the heartbeat goes at once."""
        while True:
            await asyncio.sleep(self.backend.poll_interval_s)
            for name, spec in list(self.watched.items()):
                if name in self._busy or self._lock(name).locked():
                    continue
                try:
                    if await self.backend.state(spec) == RUNNING:
                        continue
                except HiveError as exc:  # unknown is not stopped: no crash
                    log.warning("cannot see %s's container: %s", name, exc)
                    continue
                if self.watched.get(name) is not spec or name in self._busy:
                    continue  # an operation took it over meanwhile
                exit_ = self.backend.last_exit(spec)
                log.warning("%s's container stopped by itself: %s", name, exit_.detail)
                self.exits.append(
                    NodeExit(agent=name, at=time.time(), exit_code=exit_.code, detail=exit_.detail)
                )
                self._unwatch(name)

    def heartbeat(self) -> NodeHeartbeat:
        running = sorted(self.watched)
        try:
            load1 = os.getloadavg()[0]
        except OSError:
            load1 = 0.0
        return NodeHeartbeat(
            node=self.name,
            at=time.time(),
            agents=len(running),
            running=running,
            load1=round(load1, 2),
            revision=self.revision,
            backend=self.backend.name,
            started_at=self.started_at,
            exits=list(self.exits),
        )

    async def heartbeat_loop(self, publish: Publish) -> None:
        """Writes the heartbeat every interval, and at once after a change."""
        subject = subjects.kv_subject(subjects.node_key(self.name))
        interval = max(0.1, self.settings.node.heartbeat_interval_s)
        while True:
            self._kick.clear()
            try:
                await publish(subject, _encoder.encode(self.heartbeat()))
            except Exception as exc:  # NATS away: the next beat tries again
                log.warning("could not write the node heartbeat: %s", exc)
            try:
                await asyncio.wait_for(self._kick.wait(), interval)
            except TimeoutError:
                pass

    def endpoints(self) -> dict[Endpoint[Any, Any], Handler]:
        """The node verbs (``hive.node.<node>.<verb>``), each this agent's method."""
        return {endpoint: _served(getattr(self, verb)) for verb, endpoint in E.NODE.items()}


def _served(verb: Callable[[Any], Awaitable[msgspec.Struct]]) -> Handler:
    """A verb as a handler: the request's :class:`Call` is not its business
    (the node's own subject already says who it is for); its types stay the
    verb's, for :func:`~hyperhive.common.rpc.check_handler`."""

    @functools.wraps(verb)
    async def handler(req: Any, _call: Call) -> msgspec.Struct:
        return await verb(req)

    return handler


# --- the node's files --------------------------------------------------------


def _clear_runtime(paths: AgentPaths) -> None:
    """What a previous life of the name left on this node, its state aside."""
    for d in (paths.run, paths.workdir, paths.creds):
        repos.remove(d)
    repos.remove(paths.root / "flake")


def remove_node_files(paths: AgentPaths, purge: bool, shared: bool) -> bool:
    """Removes a destroyed agent's files on this node. Returns whether a
    state is kept (a state dir with nothing in it is none)."""
    if not purge:
        _clear_runtime(paths)
        if not shared:
            repos.remove(paths.applied)
            (paths.root / SPEC_FILE).unlink(missing_ok=True)
        if paths.state.is_dir() and any(paths.state.iterdir()):
            return True
    if shared:  # the repos are the control half's: it removes the rest
        for d in (paths.state, paths.run, paths.workdir, paths.creds, paths.root / "flake"):
            repos.remove(d)
        (paths.root / SPEC_FILE).unlink(missing_ok=True)
        return False
    repos.remove(paths.root)
    return False


def dir_bytes(root: Path) -> int:
    """Bytes in the files under ``root`` (symlinks not followed)."""
    total = 0
    for p in root.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
        except OSError:
            continue
    return total


def pack_tree(files: dict[str, bytes]) -> bytes:
    """A gzipped tar of ``files`` (path → bytes), as a deploy request carries."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for rel, data in sorted(files.items()):
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    out = buf.getvalue()
    if len(out) > MAX_TREE_BYTES:
        raise BadRequest(f"the deployed tree is {len(out)} bytes packed (limit {MAX_TREE_BYTES})")
    return out


def unpack_tree(data: bytes, target: Path) -> None:
    """Replaces ``target`` with the tree in ``data`` (regular files and dirs
    only, nothing outside it: tarfile's ``data`` filter)."""
    if len(data) > MAX_TREE_BYTES:
        raise BadRequest(f"deployed tree too large ({len(data)} bytes)")
    tmp = target.with_name(f".{target.name}.new")
    repos.remove(tmp)
    tmp.mkdir(parents=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar.getmembers():
                parts = PurePosixPath(member.name).parts
                if (
                    not (member.isreg() or member.isdir())
                    or not parts
                    or (parts[0] == "/" or ".." in parts)
                ):
                    raise tarfile.TarError(f"member {member.name!r} is not a file inside the tree")
            tar.extractall(tmp, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        repos.remove(tmp)
        raise BadRequest(f"bad deployed tree: {exc}") from None
    old = target.with_name(f".{target.name}.old")
    repos.remove(old)
    if target.exists():
        target.replace(old)
    tmp.replace(target)
    repos.remove(old)


__all__ = ["NodeAgent", "dir_bytes", "pack_tree", "remove_node_files", "unpack_tree"]
