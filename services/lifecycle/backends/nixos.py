"""The nixos backend: one ``nixos-container`` per agent (production).

Per agent, lifecycle renders a flake (``agents/<n>/flake/flake.nix``) that
imports the agent's ``agent.nix`` from its applied repo and hyperhive's
``nix/harness-base.nix``, pinned to the running hyperhive revision, and drives
``nixos-container create/start/stop/terminate/update/destroy`` with it. The
bind mounts of docs/architecture.md go into the container's
``EXTRA_NSPAWN_FLAGS``: credentials → ``/root/.claude``, state → ``/state``,
the run dir (NATS seed, the page socket) → ``/run/hive``. The harness binds
its page's API there (``/run/hive/page.sock``, no TCP port), so the dashboard
reaches it at the host path ``agents/<n>/run/page.sock``; no other container
has that bind. Lifecycle writes only the seed there, never through a
symlink. The manager gets, per agent,
its proposed repo at ``/agents/<n>/config``, its state at ``/agents/<n>/state``
and its applied repo read-only at ``/applied/<n>`` — never another agent's
credentials or NATS seed. Containers share the host's network
(``PRIVATE_NETWORK=0``): NATS listens on the host's 127.0.0.1 only; the
agent pages listen on no port at all. Logs
come from ``journalctl -M``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

from hyperhive.common.config import Settings
from hyperhive.common.errors import BackendFailed, BadRequest, ConfigError
from hyperhive.common.paths import AgentPaths
from hyperhive.common.wire.lifecycle import LogsReply
from hyperhive.lifecycle import agentconf
from hyperhive.lifecycle.backends.base import (
    MISSING,
    RUNNING,
    STOPPED,
    AgentSpec,
    Backend,
    command_failed,
    manager_binds,
    manager_view_agents,
    run_command,
    run_output,
)

log = logging.getLogger(__name__)

FLAKE_TEMPLATE = "flake.nix.in"
_SHA = re.compile(r"^[0-9a-f]{40}$")
_CURSOR = re.compile(r"^[A-Za-z0-9=;_-]+$")
_SAFE_PATH = re.compile(r"^[A-Za-z0-9/._+-]+$")
CURSOR_PREFIX = "-- cursor: "


def nix_string(value: str) -> str:
    """``value`` escaped for the inside of a double-quoted Nix string."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${")


def pinned_url(flake_ref: str, rev: str) -> str:
    """``flake_ref`` pinned to ``rev`` when that is a git commit (else as given)."""
    if not _SHA.match(rev) or "rev=" in flake_ref:
        return flake_ref
    return f"{flake_ref}{'&' if '?' in flake_ref else '?'}rev={rev}"


def container_name(spec: AgentSpec) -> str:
    """``h-<name>``, the manager by its own name (nixos-container allows 11 chars)."""
    return spec.name if spec.manager else f"h-{spec.name}"


def flake_dir(spec: AgentSpec) -> Path:
    return spec.paths.root / "flake"


def render_flake(spec: AgentSpec, settings: Settings) -> str:
    """The per-agent ``flake.nix``."""
    values = {
        "NAME": spec.name,
        "CONTAINER": container_name(spec),
        "HYPERHIVE_URL": pinned_url(settings.lifecycle.flake_ref, spec.rev),
        "AGENT_URL": f"path:{spec.paths.applied}",
        "SYSTEM": settings.lifecycle.nixos_system,
        "PORT": str(int(spec.port)),
        "MANAGER": "true" if spec.manager else "false",
        "NATS_URL": settings.nats.url,
        "REV": spec.rev,
    }
    text = agentconf.template(FLAKE_TEMPLATE)
    for key, value in values.items():
        text = text.replace(f"@{key}@", nix_string(value))
    return text


class NixosBackend(Backend):
    name = "nixos"
    poll_interval_s = 5.0

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        if not settings.lifecycle.flake_ref:
            raise ConfigError("lifecycle.flake_ref must name the hyperhive flake (nixos backend)")
        for path in (settings.paths.agents_dir, Path(settings.lifecycle.nixos_conf_dir)):
            if not _SAFE_PATH.match(str(path)):
                raise ConfigError(f"path {path} has characters nixos-container cannot take")
        self._bin = settings.lifecycle.nixos_container

    async def _nc(self, *args: str, timeout: float = 1800.0) -> str:
        return await run_command(
            [self._bin, *args], timeout=timeout, what=f"nixos-container {args[0]}"
        )

    def _flake_ref(self, spec: AgentSpec) -> str:
        return f"path:{flake_dir(spec)}#{container_name(spec)}"

    async def _render(self, spec: AgentSpec) -> None:
        await asyncio.to_thread(agentconf.validate, spec.paths.applied)
        d = flake_dir(spec)
        d.mkdir(parents=True, exist_ok=True)
        (d / "flake.nix").write_text(render_flake(spec, self.settings))
        for sub in (spec.paths.state, spec.paths.creds, spec.paths.run):
            sub.mkdir(parents=True, exist_ok=True)

    def nspawn_flags(self, spec: AgentSpec) -> list[str]:
        """The bind mounts (and private users) for ``EXTRA_NSPAWN_FLAGS``."""
        idmap = ":idmap" if self.settings.lifecycle.nixos_private_users else ""
        p = spec.paths
        flags = [
            f"--bind={p.creds}:/root/.claude{idmap}",
            f"--bind={p.state}:/state{idmap}",
            # writable: the harness binds its page socket in it
            f"--bind={p.run}:/run/hive{idmap}",
        ]
        if spec.manager:
            for name in manager_view_agents(self.settings, spec.name):
                for src, dst, ro in manager_binds(AgentPaths.of(self.settings, name)):
                    flags.append(f"--bind{'-ro' if ro else ''}={src}:{dst}{idmap}")
        if idmap:
            flags.insert(0, "--private-users=pick")
        return flags

    async def expose_to_manager(self, name: str) -> None:
        """Binds a new agent's dirs into the running manager (``machinectl bind``)
        and records them in its config, so they survive its next start."""
        manager = self.settings.lifecycle.manager
        if not manager or name == manager:
            return
        conf = self._conf_path(manager)
        if not conf.exists():
            return  # the manager's container is not created yet
        spec = AgentSpec(
            name=manager,
            port=0,
            manager=True,
            paths=AgentPaths(self.settings.paths.agents_dir / manager),
        )
        await asyncio.to_thread(self._write_conf, spec)
        if await self.state(spec) != RUNNING:
            return
        for src, dst, ro in manager_binds(AgentPaths.of(self.settings, name)):
            args = ["bind", "--mkdir", *(["--read-only"] if ro else []), manager, str(src), dst]
            try:
                await run_command([self.settings.lifecycle.machinectl, *args], timeout=60)
            except BackendFailed as exc:
                # the binds are in the manager's config: its next start has them
                log.warning("machinectl bind for %s failed: %s", name, exc)

    def _conf_path(self, container: str) -> Path:
        return Path(self.settings.lifecycle.nixos_conf_dir) / f"{container}.conf"

    def _write_conf(self, spec: AgentSpec) -> None:
        conf = self._conf_path(container_name(spec))
        lines = conf.read_text().splitlines() if conf.exists() else []
        managed = ("EXTRA_NSPAWN_FLAGS=", "PRIVATE_NETWORK=", "HOST_ADDRESS=", "LOCAL_ADDRESS=")
        lines = [ln for ln in lines if not ln.startswith(managed)]
        # host network: NATS is on the host's loopback
        lines.append("PRIVATE_NETWORK=0")
        lines.append(f'EXTRA_NSPAWN_FLAGS="{" ".join(self.nspawn_flags(spec))}"')
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text("\n".join(lines) + "\n")

    async def create(self, spec: AgentSpec) -> None:
        await self._render(spec)
        if await self.state(spec) == MISSING:
            await self._nc("create", container_name(spec), "--flake", self._flake_ref(spec))
        else:
            await self._nc("update", container_name(spec), "--flake", self._flake_ref(spec))
        await asyncio.to_thread(self._write_conf, spec)

    async def start(self, spec: AgentSpec) -> None:
        await self._nc("start", container_name(spec), timeout=300)

    async def stop(self, spec: AgentSpec, *, kill: bool = False) -> None:
        verb = "terminate" if kill else "stop"
        await self._nc(verb, container_name(spec), timeout=300)

    async def destroy(self, spec: AgentSpec) -> None:
        if await self.state(spec) != MISSING:
            await self._nc("destroy", container_name(spec), timeout=300)

    async def update(self, spec: AgentSpec, *, running: bool) -> None:
        await self._render(spec)
        await self._nc("update", container_name(spec), "--flake", self._flake_ref(spec))
        await asyncio.to_thread(self._write_conf, spec)

    async def state(self, spec: AgentSpec) -> str:
        """``nixos-container status``: ``up``, ``down``, or ``gone`` and an error
        for a container it does not know (no conf file) — that is ``missing``.

        Raises:
            BackendFailed: any other failure (a timeout, systemd unreachable):
                the state is unknown, which is not a stopped container.
        """
        name = container_name(spec)
        label = "nixos-container status"
        code, out = await run_output([self._bin, "status", name], timeout=60, what=label)
        answer = out.strip()
        if code == 0 and answer in ("up", "down"):
            return RUNNING if answer == "up" else STOPPED
        lines = [line.strip() for line in out.splitlines()]
        if code != 0 and ("gone" in lines or f"‘{name}’ does not exist" in out):
            return MISSING
        if code == 0:
            raise BackendFailed(f"{label}: unexpected answer {answer[:200]!r}")
        raise command_failed(label, code, out)

    async def logs(
        self, spec: AgentSpec, lines: int, after: int | None, after_cursor: str
    ) -> LogsReply:
        argv = [
            self.settings.lifecycle.journalctl,
            "-M",
            container_name(spec),
            "--no-pager",
            "-o",
            "short-iso",
            "--show-cursor",
        ]
        if after_cursor:
            if not _CURSOR.match(after_cursor):
                raise BadRequest("malformed journal cursor")
            argv.append(f"--after-cursor={after_cursor}")
        else:
            argv += ["-n", str(max(0, lines))]
        out = await run_command(argv, timeout=60, what="journalctl")
        result: list[str] = []
        cursor = after_cursor
        for line in out.splitlines():
            if line.startswith(CURSOR_PREFIX):
                cursor = line[len(CURSOR_PREFIX) :].strip()
            elif line.strip() != "-- No entries --":
                result.append(line)
        return LogsReply(lines=result, journal_cursor=cursor)
