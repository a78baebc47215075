"""``hive join-token`` (on the hub) and ``hive node`` (on a machine that
joins it or has joined it). docs/multihost.md describes the exchange."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import sys
import time
from pathlib import Path

import nats
import nats.errors

from hyperhive.cli import client
from hyperhive.common import config, nats_auth, rpc, subjects
from hyperhive.common import endpoints as E
from hyperhive.common.config import load_settings
from hyperhive.common.errors import ConfigError, HiveError, Unavailable
from hyperhive.common.names import check_node_name
from hyperhive.common.service import hyperhive_version
from hyperhive.common.wire.join import (
    JoinReply,
    JoinRequest,
    JoinToken,
    JoinTokenRequest,
    join_proof,
)

# where ``hive node --join`` keeps the node agent's seed, under $HIVE_HOME
NODE_SEED_FILE = "node.seed"
CONFIG_FILE = "hive.toml"
JOIN_TIMEOUT_S = 30.0
# the hub removes a spent token's user 2 s after its answer (join.JOIN_USER_LINGER_S)
SPENT_WAIT_S = 10.0
SPENT_SETTLE_S = 0.2  # after the token is refused: the reload has just finished


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "join-token",
        help="a one-time token that lets a new machine join this hive as a node",
    )
    p.add_argument("--ttl", type=float, default=600.0, help="seconds the token stays valid (600)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_join_token)

    p = sub.add_parser(
        "node",
        help="run this machine's node agent; with --join, first join a hub",
    )
    p.add_argument("--join", metavar="HUB_URL", help="the hub's NATS URL (nats://host:4222)")
    p.add_argument("--token", help="the token `hive join-token` printed on the hub")
    p.add_argument("--name", help="this node's name (default: the host name, shortened)")
    p.add_argument("--home", help="data dir (default: $HIVE_HOME or ~/.local/share/hyperhive)")
    p.add_argument(
        "--join-only", action="store_true", help="join and exit; `hive node` serves later"
    )
    p.set_defaults(func=_node)


def _join_token(args: argparse.Namespace) -> int:
    settings = load_settings()

    async def run() -> JoinToken:
        # not client.call: its masking would hide the token, which is the point
        nc = await client.operator_nats(settings)
        try:
            return await rpc.call(
                nc,
                E.JOIN_TOKEN,
                JoinTokenRequest(ttl_s=args.ttl),
                timeout=settings.nats.request_timeout_s,
            )
        finally:
            await nc.close()

    try:
        token = asyncio.run(run())
    except HiveError as exc:
        print(f"hive join-token: {exc}", file=sys.stderr)
        return 1
    if args.json:
        shown = {"token": token.token, "user": token.user, "expires_at": token.expires_at}
        print(json.dumps(shown))
        return 0
    left = max(0, int(token.expires_at - time.time()))
    print(f"join token (valid {left}s, usable once; keep it secret):")
    print(f"  {token.token}")
    print("on the new machine:")
    print(f"  hive node --join {settings.nats.url} --token {token.token}")
    print("(use an address of this hub that the machine reaches)")
    return 0


def default_node_name() -> str:
    """The host name as a node name (agent-name rules), else ``node``."""
    name = "".join(c for c in socket.gethostname().split(".")[0].lower() if c.isalnum() or c == "-")
    name = name.lstrip("0123456789-")[:9].rstrip("-")
    return name or "node"


def _node(args: argparse.Namespace) -> int:
    home = Path(args.home or os.environ.get("HIVE_HOME") or config.default_home()).expanduser()
    home = home.absolute()
    os.environ["HIVE_HOME"] = str(home)
    if args.join:
        if not args.token:
            print("hive node: --join needs --token", file=sys.stderr)
            return 2
        try:
            reply = join(home, args.join, args.token, args.name or default_node_name())
        except (HiveError, OSError) as exc:
            print(f"hive node: {exc}", file=sys.stderr)
            return 1
        print(f"joined the hive at {args.join} as node {reply.node} (HIVE_HOME={home})", flush=True)
        if args.join_only:
            return 0
    elif not (home / NODE_SEED_FILE).exists():
        print(f"hive node: {home} has not joined a hive: use --join URL --token T", file=sys.stderr)
        return 1
    return serve_node()


def serve_node() -> int:
    """Runs the node agent (``hive serve node``) in this process's place."""
    argv = [sys.executable, "-m", "hyperhive.cli.main", "serve", subjects_node_part()]
    sys.stdout.flush()
    os.execv(sys.executable, argv)
    return 1  # not reached


def subjects_node_part() -> str:
    return subjects.NODE_SERVICE


def join(home: Path, hub_url: str, token: str, name: str) -> JoinReply:
    """Joins the hub at ``hub_url`` as node ``name``: makes ``home``, the node
    agent's seed (it never leaves this machine), spends ``token`` and writes
    ``home/hive.toml`` for ``hive serve node``.

    Raises:
        ConfigError: a bad token or name, or a ``hive.toml`` already there.
        HiveError: the hub refused (its reason) or did not answer.
    """
    check_node_name(name)
    try:
        token_seed = token.strip().encode()
        token_key = nats_auth.public_key(token_seed)
    except Exception:  # nkeys raises its own errors for a malformed seed
        raise ConfigError("the token is not a join token (a seed, SU...)") from None
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    config_file = home / CONFIG_FILE
    if config_file.exists():
        raise ConfigError(f"{config_file} exists: this machine is set up already")
    seed_file = home / NODE_SEED_FILE
    node_seed = nats_auth.load_or_create_seed(seed_file)
    node_key = nats_auth.public_key(node_seed)
    req = JoinRequest(
        name=name,
        node_key=node_key,
        token_key=token_key,
        signature=base64.b64encode(
            nats_auth.sign(token_seed, join_proof(name, node_key, token_key))
        ).decode(),
        hostname=socket.gethostname(),
        revision=hyperhive_version(),
    )
    reply = asyncio.run(_exchange(hub_url, token_seed, token_key, req))
    asyncio.run(_until_accepted(hub_url, node_seed, reply.inbox_prefix))
    asyncio.run(_until_spent(hub_url, token_seed))
    write_node_config(config_file, hub_url, seed_file, reply)
    return reply


async def _exchange(hub_url: str, token_seed: bytes, token_key: str, req: JoinRequest) -> JoinReply:
    try:
        nc = await nats.connect(
            hub_url,
            nkeys_seed_str=token_seed.decode(),
            inbox_prefix=subjects.inbox_prefix(nats_auth.join_user_name(token_key)),
            allow_reconnect=False,
            max_reconnect_attempts=0,
            connect_timeout=10,
            error_cb=_quiet,
        )
    except nats.errors.Error as exc:
        # an authorization violation: a token the hub does not know (any more)
        raise Unavailable(f"the hub at {hub_url} refused the token: {exc}") from None
    except (OSError, TimeoutError) as exc:
        raise Unavailable(f"cannot reach the hub at {hub_url}: {exc}") from None
    try:
        return await rpc.call(nc, E.JOIN, req, timeout=JOIN_TIMEOUT_S)
    finally:
        await nc.close()


async def _until_accepted(hub_url: str, seed: bytes, inbox_prefix: str) -> None:
    """Waits until the hub accepts the node's own seed (its reload is live).

    Raises:
        Unavailable: still refused after :data:`JOIN_TIMEOUT_S`.
    """
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while True:
        try:
            nc = await nats.connect(
                hub_url,
                nkeys_seed_str=seed.decode(),
                inbox_prefix=inbox_prefix,
                allow_reconnect=False,
                max_reconnect_attempts=0,
                connect_timeout=5,
                error_cb=_quiet,
            )
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            if time.monotonic() > deadline:
                raise Unavailable(f"the hub does not accept this node's key: {exc}") from None
            await asyncio.sleep(0.1)
            continue
        await nc.close()
        return


async def _until_spent(hub_url: str, token_seed: bytes) -> None:
    """Waits until the hub no longer accepts the token (it removes the token's
    user a moment after the answer, with a reload of its NATS server).

    The node agent connects next: a connection that registers while
    nats-server swaps its users can keep stale permissions (seen: a node
    agent whose replies were refused as "permissions violation for publish
    to _INBOX...", so the hub's requests to it timed out). Best effort: after
    :data:`SPENT_WAIT_S` the node agent starts anyway.
    """
    deadline = time.monotonic() + SPENT_WAIT_S
    while time.monotonic() < deadline:
        try:
            nc = await nats.connect(
                hub_url,
                nkeys_seed_str=token_seed.decode(),
                allow_reconnect=False,
                max_reconnect_attempts=0,
                connect_timeout=5,
                error_cb=_quiet,
            )
        except nats.errors.Error:
            await asyncio.sleep(SPENT_SETTLE_S)  # refused: the reload is live
            return
        except (OSError, TimeoutError):
            pass  # the hub is not reachable this moment: try again
        else:
            await nc.close()
        await asyncio.sleep(0.1)


async def _quiet(_exc: Exception) -> None:
    """The hub drops the token's user soon after the answer: not an error."""


def write_node_config(path: Path, hub_url: str, seed_file: Path, reply: JoinReply) -> None:
    """``hive.toml`` of a node: the hub's NATS, the node's seed and inbox, its name."""
    lines = [
        f"# written by `hive node --join` ({time.strftime('%Y-%m-%d %H:%M:%S')})",
        "[nats]",
        f"url = {json.dumps(hub_url)}",
        f"seed_file = {json.dumps(str(seed_file))}",
        f"inbox_prefix = {json.dumps(reply.inbox_prefix)}",
    ]
    lines += ["[node]", f"name = {json.dumps(reply.node)}"]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
