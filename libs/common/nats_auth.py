"""NATS users and their permissions (docs/architecture.md).

Every user authenticates with an nkey: the server's auth file holds only
public keys, each process holds its own seed file. Users live as one JSON file
each in ``<nats dir>/users.d/``; :func:`render_auth_file` turns the directory
into the ``authorization`` block that ``nats.conf`` includes, and
:func:`reload_server` makes a running server re-read it without dropping
anyone else's connection.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
import signal
import subprocess
import threading
from pathlib import Path

import msgspec
import nacl.exceptions
import nacl.signing
import nkeys

from hyperhive.common import subjects
from hyperhive.common.config import NatsSettings
from hyperhive.common.errors import BadRequest, ConfigError, Unavailable
from hyperhive.common.names import check_agent_name, check_node_name

SERVICE_USER = "service"
OPERATOR_USER = subjects.OPERATOR


class Permissions(msgspec.Struct, kw_only=True):
    publish: list[str] | None = None  # None: anything
    subscribe: list[str] | None = None
    # may publish one reply to each request it received (nats-server's
    # ``allow_responses``), whatever the reply subject
    allow_responses: bool = False


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


def agent_user(name: str, public_key: str) -> NatsUser:
    """Agent ``name``'s NATS user for a public key its node made.

    On a node the agent's seed is created by the node agent and never leaves
    that host; the control half installs this user on the hub (``put_user``,
    ``render_auth_file``, ``reload_server``) when the node reports the key.
    """
    check_agent_name(name, allow_manager=True)
    return NatsUser(
        name=f"agent-{name}", nkey=check_public_key(public_key), permissions=agent_permissions(name)
    )


def node_user_name(node: str) -> str:
    """The NATS user of node agent ``node`` (``node-<node>``)."""
    return f"node-{node}"


def node_inbox_prefix(node: str) -> str:
    """``_INBOX.node-<node>``: where node agent ``node`` gets its replies."""
    return subjects.inbox_prefix(node_user_name(node))


def node_permissions(node: str) -> Permissions:
    """A node agent on the hub: it hears only requests addressed to its node
    (``hive.node.<node>.>``, the page relay included) and its own replies,
    answers them (one reply per request), and writes only its heartbeat
    key. It cannot speak as an agent, the operator or a service; a stolen
    node credential reaches nothing but that node's own requests.
    """
    check_node_name(node)
    return Permissions(
        publish=[subjects.kv_subject(f"node.{node}")],
        subscribe=[f"{subjects.ROOT}.node.{node}.>", f"{node_inbox_prefix(node)}.>"],
        allow_responses=True,
    )


def node_user(node: str, public_key: str) -> NatsUser:
    """Node ``node``'s NATS user for the public key it sent when joining."""
    return NatsUser(
        name=node_user_name(node),
        nkey=check_public_key(public_key),
        permissions=node_permissions(node),
    )


def join_user_name(token_public_key: str) -> str:
    """The one-time NATS user of a join token (``join-<first 12 of its key>``)."""
    return f"join-{check_public_key(token_public_key)[1:13].lower()}"


def join_permissions(token_public_key: str) -> Permissions:
    """A join token's user may only ask to join, and hear its own answer."""
    return Permissions(
        publish=[subjects.system("nodes", "join")],
        subscribe=[f"{subjects.inbox_prefix(join_user_name(token_public_key))}.>"],
    )


def check_public_key(public_key: str) -> str:
    """Returns ``public_key`` if it is a user nkey (``U...``).

    Raises:
        BadRequest: anything else (a seed, another key type, garbage).
    """
    if _raw_public_key(public_key) is None:
        raise BadRequest("not a NATS user public key")
    return public_key


def _raw_public_key(public_key: object) -> bytes | None:
    """The 32 key bytes of a user public key, None if it is not one (nkeys-py
    has no decoder for public keys: base32 of prefix, key, crc16)."""
    if not isinstance(public_key, str) or len(public_key) != 56:
        return None
    try:
        raw = base64.b32decode(public_key)
    except (binascii.Error, ValueError):
        return None
    body, crc = raw[:-2], int.from_bytes(raw[-2:], "little")
    if body[0] != nkeys.PREFIX_BYTE_USER or nkeys.crc16(bytearray(body)) != crc:
        return None
    return bytes(body[1:])


def sign(seed: bytes, data: bytes) -> bytes:
    """``data`` signed with a user seed (ed25519)."""
    return bytes(nkeys.from_seed(bytearray(seed)).sign(data))


def verify(public_key: str, data: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is ``data`` signed by the seed of ``public_key``."""
    raw = _raw_public_key(public_key)
    if raw is None:
        return False
    try:
        nacl.signing.VerifyKey(raw).verify(data, signature)
    except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
        return False
    return True


def operator_permissions() -> Permissions:
    """The human operator: the admin surface, the event log, JetStream reads,
    and the agent pages on every node (the dashboard's page relay calls), service
    discovery.

    The dashboard runs with these credentials under NixOS, so it may also
    answer its own ping (``hive status``) and the discovery requests every
    part answers (``nats micro ls``); nothing else is served as operator.
    """
    return Permissions(
        publish=[
            subjects.ADMIN_ALL,
            subjects.NODE_PAGE_ALL,
            subjects.JS_API_ALL,
            subjects.JS_ACK_ALL,
            subjects.JS_FLOW_CONTROL_ALL,
            subjects.MICRO_ALL,
        ],
        subscribe=[
            subjects.inbox_all(OPERATOR_USER),
            subjects.admin("dashboard", "ping"),
            subjects.MICRO_ALL,
            subjects.EVENTS_ALL,
            subjects.AGENT_EVENTS_ALL,
        ],
        allow_responses=True,  # the ping's reply
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


# users.d is changed by several parts of one process (agent credentials, node
# joins): a render reads the dir and writes the file as one step, or a slower
# render could write an older view last
_render_lock = threading.Lock()


def render_auth_file(nats_dir: Path, auth_file: Path | None = None) -> Path:
    """Writes ``auth.conf`` from ``users.d`` (atomically). Returns its path."""
    with _render_lock:
        return _render(nats_dir, auth_file)


def _render(nats_dir: Path, auth_file: Path | None) -> Path:
    entries = []
    for user in list_users(nats_dir):
        entry: dict[str, object] = {"nkey": user.nkey}
        perms: dict[str, object] = {}
        if user.permissions.publish is not None:
            perms["publish"] = {"allow": user.permissions.publish}
        if user.permissions.subscribe is not None:
            perms["subscribe"] = {"allow": user.permissions.subscribe}
        if user.permissions.allow_responses:
            perms["allow_responses"] = True
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
