"""The NixOS module defines one unit per service, from the Python side's list.

``hyperhive.common.subjects.SERVICES`` is the source of truth; nix/services.nix
mirrors it and nix/module.nix builds its units from that file alone. A
service added on one side without the other fails here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from hyperhive.cli.main import build_parser
from hyperhive.common import config, subjects
from tests.nix.nixeval import HERE, REPO, eval_file, needs_nix

pytestmark = needs_nix

BASE_UNITS = {"hive-setup", "nats"}  # not services: the auth setup and NATS itself
FLAKE_REF = '"path:/nix/store/standin-hyperhive-source"'


def host(**overrides: str) -> dict[str, Any]:
    """The host config the module produces (overrides are Nix expressions)."""
    body = " ".join(f"{k} = {v};" for k, v in {"flakeRef": FLAKE_REF, **overrides}.items())
    return eval_file(HERE / "eval-module.nix", overrides=f"{{ {body} }}")


@pytest.fixture(scope="module")
def module() -> dict[str, Any]:
    return host()


@pytest.fixture(scope="module")
def units(module: dict[str, Any]) -> dict[str, Any]:
    return module["config"]["systemd"]["services"]


def test_services_nix_mirrors_subjects_services() -> None:
    entries = eval_file(REPO / "nix" / "services.nix")
    assert [e["part"] for e in entries] == list(subjects.SERVICES)
    for e in entries:
        assert e["name"] == f"hive-{e['part']}"


def test_module_defines_exactly_one_unit_per_service(units: dict[str, Any]) -> None:
    service_units = set(units) - BASE_UNITS
    assert service_units == {f"hive-{part}" for part in subjects.SERVICES}


def test_module_builds_its_units_from_services_nix(tmp_path: Path) -> None:
    """No unit is spelled out by hand in module.nix: the list is the only
    source. A copy of nix/ whose services.nix drops one service and adds
    another gets exactly the units of that list."""
    entries = eval_file(REPO / "nix" / "services.nix")
    edited = [e for e in entries if e["part"] != "crash-watch"]
    edited.append(
        {"part": "extra", "name": "hive-extra", "description": "an extra", "privileged": False}
    )
    shutil.copytree(REPO / "nix", tmp_path / "nix")
    (tmp_path / "nix" / "services.nix").write_text(nix_list(edited))
    got = host_in(tmp_path / "nix")["config"]["systemd"]["services"]
    assert set(got) - BASE_UNITS == {e["name"] for e in edited}
    assert got["hive-extra"]["serviceConfig"]["ExecStart"].endswith("serve extra")


def host_in(nix_dir: Path) -> dict[str, Any]:
    """The host config of the module in ``nix_dir`` with its defaults."""
    return eval_file(
        HERE / "eval-module.nix", overrides=f"{{ flakeRef = {FLAKE_REF}; }}", nixDir=str(nix_dir)
    )


def nix_list(entries: list[dict[str, Any]]) -> str:
    """``entries`` (strings and booleans) as a Nix list of attribute sets."""

    def value(v: object) -> str:
        return ("true" if v else "false") if isinstance(v, bool) else json.dumps(v)

    items = " ".join(
        "{ " + " ".join(f"{k} = {value(v)};" for k, v in e.items()) + " }" for e in entries
    )
    return f"[ {items} ]\n"


def test_each_unit_runs_hive_serve_part(units: dict[str, Any]) -> None:
    parser = build_parser()
    for part in subjects.SERVICES:
        exec_start = units[f"hive-{part}"]["serviceConfig"]["ExecStart"]
        binary, *argv = exec_start.split()
        assert binary.endswith("/bin/hive")
        assert argv == ["serve", part]
        # the command the unit runs is one the CLI accepts
        assert parser.parse_args(argv).part == part


def test_units_order_after_nats_postgres_and_restart_on_failure(units: dict[str, Any]) -> None:
    for part in subjects.SERVICES:
        unit = units[f"hive-{part}"]
        for dep in ("nats.service", "postgresql.service", "hive-setup.service"):
            assert dep in unit["after"], (part, dep)
            assert dep in unit["requires"], (part, dep)
        assert unit["serviceConfig"]["Restart"] == "on-failure"
        assert unit["wantedBy"] == ["multi-user.target"]


def test_units_are_hardened(units: dict[str, Any]) -> None:
    for part in subjects.SERVICES:
        sc = units[f"hive-{part}"]["serviceConfig"]
        assert sc["NoNewPrivileges"] is True, part
        assert sc["ProtectSystem"] == "strict", part
        assert "/var/lib/hyperhive" in sc["ReadWritePaths"], part
        assert sc["PrivateTmp"] is True, part
        assert sc["ProtectHome"] is True, part
        assert sc["RestrictSUIDSGID"] is True, part
        assert sc["LockPersonality"] is True, part
        assert sc["ProtectKernelModules"] is True, part


def test_root_only_for_lifecycle_and_the_repo_writer(units: dict[str, Any]) -> None:
    privileged = {e["part"] for e in eval_file(REPO / "nix" / "services.nix") if e["privileged"]}
    assert privileged == {"lifecycle", "approvals"}
    for part in subjects.SERVICES:
        sc = units[f"hive-{part}"]["serviceConfig"]
        if part == "lifecycle":
            # nixos-container writes these
            assert sc["User"] == "root"
            assert "CapabilityBoundingSet" not in sc
            for path in (
                "/etc/nixos-containers",
                "/var/lib/nixos-containers",
                "/nix/var/nix/profiles",
                "/nix/var/nix/gcroots",
            ):
                assert path in sc["ReadWritePaths"]
        elif part == "approvals":
            # root-owned repos, but not a single capability
            assert sc["User"] == "root"
            assert sc["CapabilityBoundingSet"] == ""
        else:
            assert sc["User"] == "hyperhive", part
            assert sc["CapabilityBoundingSet"] == "", part


def test_environment_names_real_settings(units: dict[str, Any]) -> None:
    """Every HIVE_<GROUP>_<FIELD> the units get is a setting hyperhive reads."""
    known = {"HIVE_HOME"}
    for group in config.GROUPS:
        cls = config.Settings.__annotations__[group]
        cls = getattr(config, cls) if isinstance(cls, str) else cls
        known |= {f"HIVE_{group.upper()}_{f.upper()}" for f in cls.__struct_fields__}
    for name, unit in units.items():
        if name in BASE_UNITS:
            continue
        unknown = {k for k in unit["environment"] if k.startswith("HIVE_")} - known
        assert not unknown, (name, unknown)


def test_services_get_the_host_wiring(units: dict[str, Any]) -> None:
    env = units["hive-broker"]["environment"]
    assert env["HIVE_HOME"] == "/var/lib/hyperhive"
    assert env["HIVE_NATS_URL"] == "nats://127.0.0.1:4222"
    assert env["HIVE_NATS_SEED_FILE"] == "/var/lib/hyperhive/nats/service.seed"
    assert env["HIVE_NATS_AUTH_FILE"] == "/var/lib/hyperhive/nats/auth.conf"
    assert env["HIVE_NATS_RELOAD_COMMAND"].endswith("/bin/systemctl reload nats.service")
    assert env["HIVE_DATABASE_URL"] == "postgresql://hyperhive@/hyperhive?host=/run/postgresql"
    assert env["HIVE_LIFECYCLE_BACKEND"] == "nixos"
    assert env["HIVE_LIFECYCLE_FLAKE_REF"] == "path:/nix/store/standin-hyperhive-source"
    assert env["HIVE_CRASHWATCH_POLL_INTERVAL_S"] == "10"
    assert env["HIVE_DASHBOARD_HOST"] == "127.0.0.1"
    assert env["HIVE_DASHBOARD_PORT"] == "7000"


def test_dashboard_connects_as_the_operator(units: dict[str, Any]) -> None:
    env = units["hive-dashboard"]["environment"]
    assert env["HIVE_NATS_SEED_FILE"] == "/var/lib/hyperhive/nats/operator.seed"
    assert env["HIVE_NATS_INBOX_PREFIX"] == "_INBOX.operator"


def test_without_operator_token_file_one_is_generated_and_passed_as_a_credential(
    units: dict[str, Any],
) -> None:
    """Issue 13: the dashboard always requires the token. hive-setup (root)
    makes a root-only file under the data dir once; the dashboard gets it as
    the systemd credential it reads from $CREDENTIALS_DIRECTORY."""
    generated = "/var/lib/hyperhive/operator-token"
    setup = units["hive-setup"]["serviceConfig"]
    (post,) = setup["ExecStartPost"]
    binary, *argv = post.split()
    assert binary.endswith("/bin/hive") and argv == ["setup-token", "--file", generated]
    assert build_parser().parse_args(argv).file == generated  # a verb the CLI has
    assert "User" not in setup  # root: the file is root's, mode 0600
    assert generated.startswith(setup["ReadWritePaths"][0] + "/")
    dash = units["hive-dashboard"]
    assert dash["serviceConfig"]["LoadCredential"] == f"operator-token:{generated}"
    assert dash["serviceConfig"]["User"] == "hyperhive"  # reads the credential, not the file
    # the dashboard reads $CREDENTIALS_DIRECTORY/operator-token, no setting needed
    assert "HIVE_DASHBOARD_TOKEN_FILE" not in dash["environment"]
    assert "HIVE_DASHBOARD_INSECURE_NO_TOKEN" not in dash["environment"]
    assert {"hive-setup.service"} <= set(dash["requires"]) & set(dash["after"])
    # no other unit gets the token
    for name, unit in units.items():
        if name != "hive-dashboard":
            assert "LoadCredential" not in unit.get("serviceConfig", {}), name
    # `sudo hive dashboard-url` finds it (the stand-in writeText keeps no text)
    cli_toml = (REPO / "nix" / "module.nix").read_text().split("cliConfig = ", 1)[1]
    assert 'token_file = "${operatorToken}"' in cli_toml.split("'';", 1)[0]


def test_options_reach_the_units() -> None:
    module = host(
        operatorTokenFile='"/run/secrets/hive-token"',
        dataDir='"/srv/hive"',
        manager='""',
        pollInterval="3",
        logLevel='"DEBUG"',
        extraEnvironment='{ HIVE_TELEMETRY_EXPORTER = "otlp"; }',
    )
    units = module["config"]["systemd"]["services"]
    dash = units["hive-dashboard"]
    assert dash["serviceConfig"]["LoadCredential"] == "operator-token:/run/secrets/hive-token"
    assert units["hive-setup"]["serviceConfig"]["ExecStartPost"] == []  # nothing generated
    for part in subjects.SERVICES:
        env = units[f"hive-{part}"]["environment"]
        assert env["HIVE_HOME"] == "/srv/hive"
        assert env["HIVE_LIFECYCLE_MANAGER"] == ""
        assert env["HIVE_CRASHWATCH_POLL_INTERVAL_S"] == "3"
        assert env["HIVE_LOG_LEVEL"] == "DEBUG"
        assert env["HIVE_TELEMETRY_EXPORTER"] == "otlp"
        assert "/srv/hive" in units[f"hive-{part}"]["serviceConfig"]["ReadWritePaths"]
    rules = module["config"]["systemd"]["tmpfiles"]["rules"]
    assert "d /srv/hive/nats 0755 root root -" in rules
    # the dashboard (group hyperhive) passes through to the agents' page sockets
    assert "d /srv/hive/agents 0710 root hyperhive -" in rules


def test_nats_and_postgres_are_set_up(module: dict[str, Any], units: dict[str, Any]) -> None:
    cfg = module["config"]
    nats = cfg["services"]["nats"]
    assert nats["enable"] and nats["jetstream"]
    assert nats["settings"]["host"] == "127.0.0.1"
    # the auth file comes first: seeds, users, auth.conf
    assert units["hive-setup"]["serviceConfig"]["ExecStart"].endswith(
        "/bin/hive setup-nats --dir /var/lib/hyperhive/nats --group hyperhive"
    )
    assert units["nats"]["requires"] == ["hive-setup.service"]
    pg = cfg["services"]["postgresql"]
    assert pg["ensureDatabases"] == ["hyperhive"]
    assert pg["ensureUsers"] == [{"name": "hyperhive", "ensureDBOwnership": True}]
    assert "peer map=hyperhive" in pg["authentication"]
    ident = [line.split() for line in pg["identMap"].splitlines() if line.strip()]
    assert ident == [["hyperhive", "root", "hyperhive"], ["hyperhive", "hyperhive", "hyperhive"]]


def test_assertions_hold_by_default_and_catch_bad_values(module: dict[str, Any]) -> None:
    assert all(a["assertion"] for a in module["config"]["assertions"])
    bad = host(flakeRef='""', operatorTokenFile='"relative/token"')
    failed = [a["message"] for a in bad["config"]["assertions"] if not a["assertion"]]
    assert any("flakeRef" in m for m in failed)
    assert any("operatorTokenFile" in m for m in failed)


def test_the_original_option_names_still_work(module: dict[str, Any]) -> None:
    aliases = {tuple(a) for a in module["aliases"]}
    assert ("services", "hive-c0re", "enable") in aliases
    assert ("services", "hive-c0re", "dashboard", "port") in aliases


def test_broker_instances_are_units_of_their_own() -> None:
    """``broker.instances = 3``: hive-broker, hive-broker-2, hive-broker-3, alike."""
    units = host(broker="{ instances = 3; }")["config"]["systemd"]["services"]
    brokers = sorted(u for u in units if u.startswith("hive-broker"))
    assert brokers == ["hive-broker", "hive-broker-2", "hive-broker-3"]
    first = units["hive-broker"]
    for name in brokers[1:]:
        unit = units[name]
        assert unit["serviceConfig"]["ExecStart"] == first["serviceConfig"]["ExecStart"]
        assert unit["serviceConfig"]["SyslogIdentifier"] == name
        assert unit["environment"] == first["environment"]
        assert unit["requires"] == first["requires"]
