"""Where an agent's files live under the data dir (docs/architecture.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hyperhive.common.config import Settings


@dataclass(frozen=True, slots=True)
class AgentPaths:
    """``<agents dir>/<name>/{proposed,applied,state,creds,run}``."""

    root: Path

    @classmethod
    def of(cls, settings: Settings, name: str) -> AgentPaths:
        return cls(settings.paths.agents_dir / name)

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def proposed(self) -> Path:
        """The git repo the manager edits (``/agents/<name>/config`` for it)."""
        return self.root / "proposed"

    @property
    def applied(self) -> Path:
        """The host's git repo: ``main`` is what is deployed."""
        return self.root / "applied"

    @property
    def state(self) -> Path:
        """Durable notes (``/state``), kept across rebuilds and destroy."""
        return self.root / "state"

    @property
    def creds(self) -> Path:
        """Claude credentials (``/root/.claude``)."""
        return self.root / "creds"

    @property
    def run(self) -> Path:
        """NATS seed, pid file, logs, the page socket (``/run/hive``)."""
        return self.root / "run"

    @property
    def nats_seed(self) -> Path:
        return self.run / "nats.seed"

    @property
    def pid_file(self) -> Path:
        return self.run / "harness.pid"

    @property
    def log_file(self) -> Path:
        return self.run / "harness.log"

    @property
    def page_socket(self) -> Path:
        """The agent page's API (a unix socket; the dashboard proxies it)."""
        return self.run / "page.sock"

    @property
    def workdir(self) -> Path:
        """Where claude runs (its cwd)."""
        return self.root / "work"


def nats_dir(settings: Settings) -> Path:
    """The NATS auth dir (``users.d``, ``auth.conf``), beside the auth file."""
    if settings.nats.auth_file:
        return Path(settings.nats.auth_file).parent
    return Path(settings.paths.home) / "nats"
