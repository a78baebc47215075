"""``hive setup-nats``: the NATS auth dir of a host install (NixOS ``hive-setup``);
``hive setup-token``: the operator token file of a host install.

The NixOS module runs this as root before nats-server starts: it creates the
services' and the operator's nkey seeds, their users in ``users.d/`` and the
``auth.conf`` that nats-server includes. It is idempotent: existing seeds and
every other user (the agents lifecycle added) are kept, and ``auth.conf`` is
rendered again from ``users.d/``.
"""

from __future__ import annotations

import argparse
import grp
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from hyperhive.cli import operator_token
from hyperhive.cli.client import print_json
from hyperhive.common import nats_auth
from hyperhive.common.errors import ConfigError

SERVICE_SEED = "service.seed"
OPERATOR_SEED = "operator.seed"
AUTH_FILE = "auth.conf"


@dataclass(frozen=True, slots=True)
class NatsDir:
    """What ``setup_nats_dir`` wrote."""

    dir: str
    service_seed: str
    operator_seed: str
    auth_file: str
    users: list[str]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``hive setup-nats``."""
    p = sub.add_parser(
        "setup-nats",
        help="create the NATS seeds, base users and auth.conf of a host install",
    )
    p.add_argument("--dir", required=True, help="the NATS auth dir (HIVE_NATS_AUTH_FILE's dir)")
    p.add_argument(
        "--group",
        default=None,
        help="group that may read the seeds (the services' user group); default: owner only",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_setup_nats)

    p = sub.add_parser(
        "setup-token",
        help="create the dashboard's operator token file (0600) if it is missing",
    )
    p.add_argument("--file", required=True, help="where the token is kept (root's, mode 0600)")
    p.set_defaults(func=_setup_token)


def _share_with_group(path: Path, gid: int) -> None:
    """Seed readable by its owner (root) and the services' group, nobody else."""
    os.chown(path, -1, gid)
    os.chmod(path, 0o640)


def setup_nats_dir(root: Path, group: str | None = None) -> NatsDir:
    """Ensures seeds, the service and operator users, and ``auth.conf`` under ``root``.

    Args:
        root: the NATS auth dir; ``users.d/`` and ``auth.conf`` live here.
        group: if set, the seeds become readable by this group (mode 0640).

    Raises:
        KeyError: ``group`` does not exist.
    """
    gid = grp.getgrnam(group).gr_gid if group else None
    root.mkdir(parents=True, exist_ok=True)
    # nats-server runs as its own user and must read auth.conf (public keys
    # only); the seeds inside stay closed by their own file modes.
    os.chmod(root, 0o755)
    service_seed = root / SERVICE_SEED
    operator_seed = root / OPERATOR_SEED
    service = nats_auth.load_or_create_seed(service_seed)
    operator = nats_auth.load_or_create_seed(operator_seed)
    if gid is not None:
        _share_with_group(service_seed, gid)
        _share_with_group(operator_seed, gid)
    nats_auth.put_user(
        root,
        nats_auth.NatsUser(name=nats_auth.SERVICE_USER, nkey=nats_auth.public_key(service)),
    )
    nats_auth.put_user(
        root,
        nats_auth.NatsUser(
            name=nats_auth.OPERATOR_USER,
            nkey=nats_auth.public_key(operator),
            permissions=nats_auth.operator_permissions(),
        ),
    )
    os.chmod(nats_auth.users_dir(root), 0o755)
    auth_file = nats_auth.render_auth_file(root, root / AUTH_FILE)
    os.chmod(auth_file, 0o644)
    return NatsDir(
        dir=str(root),
        service_seed=str(service_seed),
        operator_seed=str(operator_seed),
        auth_file=str(auth_file),
        users=[u.name for u in nats_auth.list_users(root)],
    )


def _setup_nats(args: argparse.Namespace) -> int:
    try:
        result = setup_nats_dir(Path(args.dir).absolute(), args.group)
    except KeyError:
        print(f"hive setup-nats: no such group: {args.group}")
        return 1
    except OSError as exc:
        print(f"hive setup-nats: {exc}")
        return 1
    if args.json:
        print_json(asdict(result))
    else:
        print(f"{result.auth_file}: {len(result.users)} users ({', '.join(result.users)})")
    return 0


def _setup_token(args: argparse.Namespace) -> int:
    """Creates the token file once; never prints the token (``hive dashboard-url`` does)."""
    try:
        path, created = operator_token.ensure_token_file(Path(args.file).absolute())
    except ConfigError as exc:
        print(f"hive setup-token: {exc}")
        return 1
    print(f"{path}: {'created' if created else 'kept'} (mode 0600)")
    return 0
