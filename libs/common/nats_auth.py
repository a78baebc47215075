"""NATS users and their permissions (DESIGN.md section 2).

Every user authenticates with an nkey: the server's auth file holds only
public keys, each process holds its own seed file. Users live as one JSON file
each in ``<nats dir>/users.d/``; :func:`render_auth_file` turns the directory
into the ``authorization`` block that ``nats.conf`` includes, and
:func:`reload_server` makes a running server re-read it without dropping
anyone else's connection.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
from pathlib import Path

import msgspec
import nkeys

from hyperhive.common import subjects
from hyperhive.common.config import NatsSettings
from hyperhive.common.errors import ConfigError, Unavailable

SERVICE_USER = "service"
OPERATOR_USER = subjects.OPERATOR


class Permissions(msgspec.Struct, kw_only=True):
    publish: list[str] | None = None  # None: anything
    subscribe: list[str] | None = None


class NatsUser(msgspec.Struct, kw_only=True):
    name: str
    nkey: str  # public key (U...)
    permissions: Permissions = msgspec.field(default_factory=Permissions)


def new_seed() -> bytes:
    """A fresh user nkey seed (``SU...``)."""
    return nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER)


def public_key(seed: bytes) -> str:
    return nkeys.from_seed(bytearray(seed)).public_key.decode()


def write_seed(path: Path, seed: bytes) -> None:
    """Writes a seed file readable by its owner only, never through a symlink
    (an agent's run dir is writable from its container under the nixos backend).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(seed + b"\n")


def load_or_create_seed(path: Path) -> bytes:
    if path.exists():
        return path.read_bytes().strip()
    seed = new_seed()
    write_seed(path, seed)
    return seed


def agent_permissions(name: str) -> Permissions:
    """An agent speaks only as itself and reads only its own replies."""
    return Permissions(
        publish=[
            subjects.agent_all(name),
            subjects.kv_subject(subjects.heartbeat_key(name)),
        ],
        subscribe=[subjects.inbox_all(name)],
    )


def operator_permissions() -> Permissions:
    """The human operator: the admin surface, the event log, JetStream reads,
    service discovery."""
    return Permissions(
        publish=[
            subjects.ADMIN_ALL,
            subjects.JS_API_ALL,
            subjects.JS_ACK_ALL,
            subjects.JS_FLOW_CONTROL_ALL,
            subjects.MICRO_ALL,
        ],
        subscribe=[
            subjects.inbox_all(OPERATOR_USER),
            subjects.EVENTS_ALL,
            subjects.AGENT_EVENTS_ALL,
        ],
    )


def users_dir(nats_dir: Path) -> Path:
    return nats_dir / "users.d"


def put_user(nats_dir: Path, user: NatsUser) -> None:
    d = users_dir(nats_dir)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{user.name}.json.tmp"
    tmp.write_bytes(msgspec.json.encode(user))
    tmp.replace(d / f"{user.name}.json")


def remove_user(nats_dir: Path, name: str) -> None:
    (users_dir(nats_dir) / f"{name}.json").unlink(missing_ok=True)


def list_users(nats_dir: Path) -> list[NatsUser]:
    d = users_dir(nats_dir)
    if not d.is_dir():
        return []
    dec = msgspec.json.Decoder(NatsUser)
    return [dec.decode(p.read_bytes()) for p in sorted(d.glob("*.json"))]


def render_auth_file(nats_dir: Path, auth_file: Path | None = None) -> Path:
    """Writes ``auth.conf`` from ``users.d`` (atomically). Returns its path."""
    entries = []
    for user in list_users(nats_dir):
        entry: dict[str, object] = {"nkey": user.nkey}
        perms: dict[str, object] = {}
        if user.permissions.publish is not None:
            perms["publish"] = {"allow": user.permissions.publish}
        if user.permissions.subscribe is not None:
            perms["subscribe"] = {"allow": user.permissions.subscribe}
        if perms:
            entry["permissions"] = perms
        entries.append(entry)
    target = auth_file or nats_dir / "auth.conf"
    tmp = target.with_suffix(".tmp")
    tmp.write_text("authorization: " + json.dumps({"users": entries}, indent=2) + "\n")
    tmp.replace(target)
    return target


def reload_server(settings: NatsSettings) -> None:
    """Makes nats-server re-read its config (SIGHUP or the configured command).

    Raises:
        Unavailable: the server could not be signalled.
    """
    if settings.reload_command:
        proc = subprocess.run(
            settings.reload_command, shell=True, capture_output=True, text=True, timeout=30
        )
        if proc.returncode != 0:
            raise Unavailable(f"NATS reload command failed: {proc.stderr.strip()[:500]}")
        return
    if not settings.reload_pid_file:
        raise ConfigError("nats.reload_pid_file or nats.reload_command must be set")
    try:
        pid = int(Path(settings.reload_pid_file).read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError) as exc:
        raise Unavailable(f"cannot signal nats-server to reload: {exc}") from None
