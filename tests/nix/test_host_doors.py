"""The module's host-level doors (docs/operations.md, threat model), from its rendered settings.

PostgreSQL: peer auth over /run/postgresql for the services, and no TCP
session for the hyperhive database or role (reject lines first in
pg_hba.conf; a host line that trusts TCP fails evaluation). Agents:
user-namespaced containers by default in the module and in lifecycle's own
setting, and an evaluation-time assertion where dataDir's filesystem cannot
do id-mapped mounts.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from hyperhive.common import config
from tests.nix.nixeval import HERE, eval_file, needs_nix

pytestmark = needs_nix

FLAKE_REF = '"path:/nix/store/standin-hyperhive-source"'


def host(host_config: str = "{ }", **overrides: str) -> dict[str, Any]:
    body = " ".join(f"{k} = {v};" for k, v in {"flakeRef": FLAKE_REF, **overrides}.items())
    return eval_file(HERE / "eval-module.nix", overrides=f"{{ {body} }}", hostConfig=host_config)[
        "config"
    ]


def failed(cfg: dict[str, Any]) -> list[str]:
    return [a["message"] for a in cfg["assertions"] if not a["assertion"]]


def hba(cfg: dict[str, Any]) -> list[list[str]]:
    text = cfg["services"]["postgresql"]["authentication"]
    return [line.split() for line in text.splitlines() if line.strip()]


def first_match(rules: list[list[str]], database: str, role: str, client: str) -> list[str]:
    """The pg_hba.conf rule PostgreSQL applies to a TCP connection (first match)."""
    for rule in rules:
        kind, db, user = rule[:3]
        if not kind.startswith("host"):
            continue
        if db not in ("all", database) or user not in ("all", role):
            continue
        if ipaddress.ip_address(client) in ipaddress.ip_network(rule[3], strict=False):
            return rule
    return []


@pytest.fixture(scope="module")
def module() -> dict[str, Any]:
    return host()


def test_postgres_gives_tcp_no_session(module: dict[str, Any]):
    rules = hba(module)
    assert rules[0] == ["local", "hyperhive", "hyperhive", "peer", "map=hyperhive"]
    for client in ("127.0.0.1", "::1", "10.233.1.2", "fe80::1"):
        for database, role in (
            ("hyperhive", "hyperhive"),
            ("hyperhive", "postgres"),
            ("postgres", "hyperhive"),
        ):
            assert first_match(rules, database, role, client)[-1] == "reject", (
                database,
                role,
                client,
            )
    assert not [r for r in rules if r[0].startswith("host") and r[-1] == "trust"]
    url = module["systemd"]["services"]["hive-broker"]["environment"]["HIVE_DATABASE_URL"]
    assert url == "postgresql://hyperhive@/hyperhive?host=/run/postgresql"
    ident = [line.split() for line in module["services"]["postgresql"]["identMap"].splitlines()]
    assert [i for i in ident if i] == [
        ["hyperhive", "root", "hyperhive"],
        ["hyperhive", "hyperhive", "hyperhive"],
    ]
    assert not failed(module)


def test_a_host_line_that_trusts_tcp_fails_evaluation():
    cfg = host(
        '{ services.postgresql.authentication = "local all all peer\\n'
        'host all all 127.0.0.1/32 trust\\n"; }'
    )
    messages = failed(cfg)
    assert len(messages) == 1 and "trusts TCP clients" in messages[0]
    assert "host all all 127.0.0.1/32 trust" in messages[0]
    fine = host(
        '{ services.postgresql.authentication = "local all all trust\\n'
        'host all all 127.0.0.1/32 scram-sha-256\\n"; }'
    )
    assert not failed(fine)


def test_containers_are_user_namespaced_by_default(module: dict[str, Any]):
    assert config.LifecycleSettings().nixos_private_users is True
    env = module["systemd"]["services"]["hive-lifecycle"]["environment"]
    assert env["HIVE_LIFECYCLE_NIXOS_PRIVATE_USERS"] == "true"


@pytest.mark.parametrize(
    ("fs", "ok"),
    [
        ("ext4", True),
        ("xfs", True),
        ("btrfs", True),
        ("nfs4", False),
        ("vfat", False),
        ("zfs", False),
    ],
)
def test_private_users_on_a_filesystem_without_idmap_fails_evaluation(fs: str, ok: bool):
    filesystems = (
        '{ fileSystems."/" = { fsType = "ext4"; }; '
        f'fileSystems."/var/lib" = {{ fsType = "{fs}"; }}; '
        'fileSystems."/var/lib2" = { fsType = "vfat"; }; }'
    )
    messages = failed(host(filesystems))
    if ok:
        assert not messages
    else:
        assert len(messages) == 1, messages
        assert f"on a {fs}" in messages[0] and "mounted at /var/lib" in messages[0]
        assert "privateUsers = false" in messages[0]
        assert not failed(host(filesystems, privateUsers="false"))


def test_zfs_from_2_2_does_idmap():
    filesystems = '{ fileSystems."/" = { fsType = "zfs"; }; boot.zfs.package.version = "2.2.4"; }'
    assert not failed(host(filesystems))
