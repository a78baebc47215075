"""Settings: documented defaults, an optional TOML file, ``HIVE_*`` variables.

Loaded once at start and passed down explicitly. Precedence, lowest first:
the defaults below, ``$HIVE_HOME/up.toml`` (written by ``hive up``), the file
named by ``HIVE_CONFIG`` (else ``$HIVE_HOME/hive.toml`` if it exists), then
environment variables named ``HIVE_<GROUP>_<FIELD>`` (``HIVE_NATS_URL``, ...).
``HIVE_HOME`` itself sets ``paths.home``. A bad value stops the program
with one clear line (``ConfigError``).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from hyperhive.common.errors import ConfigError
from hyperhive.common.subjects import MANAGER

# Written by ``hive up`` in ``$HIVE_HOME``: where its NATS is and the operator's
# seed, so that CLI commands find the running dev stack. Lowest precedence.
UP_FILE = "up.toml"


def default_home() -> str:
    """``$HIVE_HOME``, else ``~/.local/share/hyperhive``."""
    env = os.environ.get("HIVE_HOME")
    if env:
        return env
    return str(Path.home() / ".local" / "share" / "hyperhive")


class NatsSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    url: str = "nats://127.0.0.1:4222"
    # nkey seed file of this process's NATS user; empty: connect without auth
    seed_file: str = ""
    # inbox prefix for replies (agents must use ``_INBOX.<name>``)
    inbox_prefix: str = ""
    connect_attempts: int = 5  # before a service gives up at start
    connect_backoff_s: float = 0.5  # first retry delay, doubled each time
    request_timeout_s: float = 10.0
    # how lifecycle makes nats-server re-read the auth file: a pid file to
    # send SIGHUP to, or a shell command (NixOS: ``systemctl reload nats``)
    auth_file: str = ""
    reload_pid_file: str = ""
    reload_command: str = ""


class DatabaseSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    url: str = "postgresql://hyperhive@/hyperhive?host=/run/postgresql"
    pool_min: int = 1
    pool_max: int = 8
    connect_attempts: int = 5
    connect_backoff_s: float = 0.5


class PathSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    home: str = msgspec.field(default_factory=default_home)
    # per-agent dirs (agents/<n>/{proposed,applied,state,creds,run}); empty:
    # ``<home>/agents``
    agents: str = ""

    @property
    def agents_dir(self) -> Path:
        return Path(self.agents) if self.agents else Path(self.home) / "agents"


class BrokerSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    max_body_bytes: int = 64 * 1024
    # a handed-out message not acked within this is handed out again; long
    # enough for a claude turn
    visibility_timeout_s: float = 900.0
    max_wait_ms: int = 60_000  # cap on recv long-poll
    history_limit: int = 1000
    # history retention: acked messages older than this many days are deleted
    # (hourly); 0 keeps everything. Pending messages are never deleted.
    retention_days: float = 0.0
    retention_interval_s: float = 3600.0


class LifecycleSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    backend: str = "process"  # process | nixos
    # whether lifecycle creates the manager (and crash-watch reports to it):
    # its name, or "" for no manager. The name is the constant
    # ``subjects.MANAGER`` everywhere (approvals, the harness, the dashboard
    # use it); another name stops the program with one clear line.
    manager: Literal[MANAGER, ""] = MANAGER
    auto_update_interval_s: float = 300.0
    # process backend: the harness command and the claude CLI it runs
    harness_command: str = ""  # empty: ``<python> -m hyperhive.cli.main harness serve``
    use_bwrap: bool = True
    # process backend run as root: every harness runs as this unprivileged
    # system user (created on first use), never as root. Empty keeps them
    # root, with a warning at every start (the tests' rig does, not hive up)
    agent_user: str = "hyperhive-agent"
    # nixos backend
    nixos_container: str = "nixos-container"
    machinectl: str = "machinectl"  # adds binds to a running manager container
    flake_ref: str = ""  # hyperhive flake the per-agent flakes pin
    rev: str = ""  # empty: the installed package's version
    # registry ports: the manager's, and the range other agents are hashed
    # into (kept in the registry; nothing listens on them: an agent page is a
    # unix socket in its run dir, served to the operator by the dashboard)
    manager_port: int = 8000
    port_base: int = 8100
    port_count: int = 900
    # process backend: a harness that exits within this after start is a failed start
    start_grace_s: float = 0.5
    stop_timeout_s: float = 10.0  # SIGTERM → SIGKILL
    monitor_interval_s: float = 0.5  # how often harness liveness is checked
    # a second operation on a busy agent waits this long, then gets Conflict
    op_wait_s: float = 60.0
    # nixos backend: journald reader, nixos-container's conf dir, the system
    journalctl: str = "journalctl"
    nixos_conf_dir: str = "/etc/nixos-containers"
    nixos_system: str = "x86_64-linux"
    # --private-users=pick with id-mapped binds: a container's root is an
    # unprivileged uid on the host (needs a filesystem with id-mapped mounts)
    nixos_private_users: bool = True


class NodeSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """This host as a node of the hive (docs/architecture.md "Beyond one host")."""

    # the node agent's name (agent-name rules); ``hive serve lifecycle`` runs
    # the node of this name in-process, ``hive serve node`` serves it alone
    name: str = "hub"
    # how often the node agent writes its heartbeat (``node.<name>`` in KV)
    heartbeat_interval_s: float = 2.0
    # control half: a node whose heartbeat is this old is lost (NodeLost)
    lost_after_s: float = 10.0
    # how long the control half waits for a node agent's reply to a quick
    # verb (state, list, logs); builds use lifecycle's own timeouts
    request_timeout_s: float = 10.0
    # the longest a build or start on a node may take (a nixos-container build)
    build_timeout_s: float = 1800.0


class ApprovalsSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # how long an approve waits for lifecycle's build (apply / create); a
    # nixos-container update can take many minutes
    build_timeout_s: float = 1800.0
    # how often undelivered outcomes are retried into the manager's inbox
    notify_retry_s: float = 5.0


class NotifySettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # where the approvals service POSTs one JSON document per decision that
    # waits for the operator (an approval or a question), e.g. an ntfy topic
    # or a chat bot's webhook (``HIVE_NOTIFY_URL``); empty: nothing is sent
    url: str = ""
    # json: the document as the body; ntfy: the message as the body and
    # ntfy's Title, Click, Tags headers (https://ntfy.sh/<topic> works as is)
    format: str = "json"
    # the dashboard's address as the operator opens it, for the link in each
    # notification (e.g. ``https://hive.example:7000``); empty: no link
    dashboard_url: str = ""
    timeout_s: float = 10.0  # one POST
    # a failed POST (connection refused, timeout, not 2xx) is retried after
    # backoff_s, doubled each time up to backoff_max_s, at most max_attempts
    backoff_s: float = 2.0
    backoff_max_s: float = 300.0
    max_attempts: int = 10
    sweep_s: float = 5.0  # how often new decisions are looked for without a kick


class CrashWatchSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    poll_interval_s: float = 10.0
    heartbeat_timeout_s: float = 60.0
    turn_limit_s: float = 1800.0
    # a transient flag older than this is one a dead lifecycle left: ignored
    # (longer than any operation: a nixos-container build may take 30 min)
    flag_max_age_s: float = 3600.0


class DashboardSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 7000
    # the operator token every page, action and SSE stream requires (the
    # token itself, or a file holding it; ``hive up`` writes
    # ``$HIVE_HOME/operator-token``). Neither set: the dashboard reads
    # ``$CREDENTIALS_DIRECTORY/operator-token`` (systemd's LoadCredential),
    # else refuses to start.
    token: str = ""
    token_file: str = ""
    # who the token stands for in the record of each operator decision
    token_label: str = "operator"
    # run without a token (loudly logged): every page is open, and every
    # operator action (POST, WebSocket) is refused unless it comes from a
    # loopback address. Agents on this host are loopback clients too.
    insecure_no_token: bool = False
    # per-section read timeout: a service that does not answer within it is
    # shown as down in its section while the rest of the page renders
    section_timeout_s: float = 2.0
    # operator actions (spawn, approve, ...) may build a container: longer
    action_timeout_s: float = 180.0
    # HIVE_EVENTS records replayed at start to backfill the message flow
    flow_backfill_events: int = 2000
    flow_ring: int = 1000  # flow items kept in memory for new SSE clients
    # SSE clients are woken at most this often; batching keeps 200 clients cheap
    flow_coalesce_ms: float = 10.0
    sse_ping_s: float = 15.0  # keep-alive comment on idle SSE streams
    logs_poll_s: float = 1.0  # how often a followed log is re-read
    # Host names the dashboard answers to besides localhost and its bind
    # address (comma-separated; "*": any). Refusing other names stops DNS
    # rebinding from turning a web page into a same-origin client.
    allowed_hosts: str = ""


class HarnessSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    agent: str = ""
    # the agent page's API: a unix socket (``<run dir>/page.sock``), no TCP
    # port; reached by the operator through the dashboard only
    socket: str = ""
    # an inherited listening socket on that path (the process backend binds
    # it on the host and passes it: the agent's run dir is read-only to it)
    socket_fd: int = -1
    claude_bin: str = ""  # empty: ``claude`` on PATH, else the repo's pinned one
    workdir: str = ""
    state_dir: str = ""
    creds_dir: str = ""
    config_dir: str = ""  # the agent's deployed config (agent.toml)
    model: str = ""
    notes_compact_bytes: int = 32 * 1024
    # notes compaction: longest a compaction session may run (then the notes stay as they are)
    notes_compact_timeout_s: float = 300.0
    # notes compaction: an answer smaller than this fraction of the notes is refused
    # as implausible (a useless or truncated answer, not a compaction)
    notes_compact_min_ratio: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.1
    # the agent page's terminal (a login shell in the agent's workdir, behind
    # the dashboard's operator login)
    terminal: bool = True
    heartbeat_interval_s: float = 5.0
    # manager only: the agents dir (<n>/proposed, <n>/applied, <n>/state)
    agents_dir: str = ""
    # manager only: the dir holding agents/<n>/{config,state} and applied/<n>
    # when they are not at / (the process backend without bwrap: symlinks)
    view_dir: str = ""
    # how long one recv long-poll of the turn loop waits for a message (a
    # stopping harness waits for its last poll, so keep it well under
    # lifecycle.stop_timeout_s)
    recv_wait_s: float = 5.0
    # API faults (docs/turn-loop.md): how often claude itself retries one
    # failed request (CLAUDE_CODE_MAX_RETRIES), then the harness's back-off
    # before running the same turn again: first delay and cap, jittered
    api_retries: int = 2
    api_backoff_s: float = 10.0
    api_backoff_max_s: float = 300.0


class UpSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``hive up``'s supervision of the embedded servers and the services."""

    # a part restarted this many times within the window is not restarted
    # again (a server: the hive stops, saying so)
    restart_limit: int = 5
    restart_window_s: float = 60.0
    # the first restart in the window is immediate; then this, doubling, up to 5 s
    restart_backoff_s: float = 0.5


class TelemetrySettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    exporter: str = "none"  # none | console | otlp
    otlp_endpoint: str = ""
    service_namespace: str = "hyperhive"


class LogSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    level: str = "INFO"
    format: str = "text"  # text | json


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    nats: NatsSettings = msgspec.field(default_factory=NatsSettings)
    database: DatabaseSettings = msgspec.field(default_factory=DatabaseSettings)
    paths: PathSettings = msgspec.field(default_factory=PathSettings)
    broker: BrokerSettings = msgspec.field(default_factory=BrokerSettings)
    lifecycle: LifecycleSettings = msgspec.field(default_factory=LifecycleSettings)
    node: NodeSettings = msgspec.field(default_factory=NodeSettings)
    crashwatch: CrashWatchSettings = msgspec.field(default_factory=CrashWatchSettings)
    approvals: ApprovalsSettings = msgspec.field(default_factory=ApprovalsSettings)
    notify: NotifySettings = msgspec.field(default_factory=NotifySettings)
    dashboard: DashboardSettings = msgspec.field(default_factory=DashboardSettings)
    harness: HarnessSettings = msgspec.field(default_factory=HarnessSettings)
    up: UpSettings = msgspec.field(default_factory=UpSettings)
    telemetry: TelemetrySettings = msgspec.field(default_factory=TelemetrySettings)
    log: LogSettings = msgspec.field(default_factory=LogSettings)


GROUPS: tuple[str, ...] = tuple(Settings.__struct_fields__)


def _env_overrides(environ: dict[str, str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for group in GROUPS:
        group_type = Settings.__annotations__[group]
        cls = globals()[group_type] if isinstance(group_type, str) else group_type
        for field in cls.__struct_fields__:
            name = f"HIVE_{group.upper()}_{field.upper()}"
            if name in environ:
                out.setdefault(group, {})[field] = environ[name]
    if "HIVE_HOME" in environ:
        out.setdefault("paths", {}).setdefault("home", environ["HIVE_HOME"])
    return out


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def load_settings(
    environ: dict[str, str] | None = None, config_file: str | Path | None = None
) -> Settings:
    """Reads the settings once.

    Raises:
        ConfigError: the file cannot be read or a value has the wrong type.
    """
    env = dict(os.environ if environ is None else environ)
    home = Path(env.get("HIVE_HOME") or default_home())
    data: dict[str, Any] = {}
    up_file = home / UP_FILE
    if up_file.is_file():
        data = _read_toml(up_file)
    path = config_file or env.get("HIVE_CONFIG")
    if not path:
        candidate = home / "hive.toml"
        path = candidate if candidate.is_file() else None
    if path:
        data = _merge(data, _read_toml(Path(path)))
    data = _merge(data, _env_overrides(env))
    try:
        return msgspec.convert(data, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"bad setting: {exc}") from None


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as ``HIVE_*`` variables, to hand down to a child process."""
    env: dict[str, str] = {"HIVE_HOME": settings.paths.home}
    for group in GROUPS:
        values = msgspec.to_builtins(getattr(settings, group))
        for field, value in values.items():
            if isinstance(value, bool):
                value = "true" if value else "false"
            env[f"HIVE_{group.upper()}_{field.upper()}"] = str(value)
    return env
