"""Settings: defaults, file, environment, and one clear line for bad values."""

import pytest

from hyperhive.common.config import load_settings, settings_env
from hyperhive.common.errors import ConfigError


def test_defaults_are_documented_values(tmp_path):
    s = load_settings({"HIVE_HOME": str(tmp_path)})
    assert s.paths.home == str(tmp_path)
    assert s.broker.max_body_bytes == 64 * 1024
    assert s.dashboard.host == "127.0.0.1"
    assert s.dashboard.port == 7000
    assert s.telemetry.exporter == "none"


def test_file_then_environment_precedence(tmp_path):
    cfg = tmp_path / "hive.toml"
    cfg.write_text("[broker]\nmax_body_bytes = 10\n[dashboard]\nport = 7100\n")
    s = load_settings({"HIVE_HOME": str(tmp_path), "HIVE_DASHBOARD_PORT": "7200"})
    assert s.broker.max_body_bytes == 10  # from $HIVE_HOME/hive.toml
    assert s.dashboard.port == 7200  # environment wins


def test_settings_survive_the_trip_through_a_child_environment(tmp_path):
    s = load_settings({"HIVE_HOME": str(tmp_path), "HIVE_LIFECYCLE_USE_BWRAP": "false"})
    assert load_settings(settings_env(s)) == s


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"HIVE_BROKER_MAX_BODY_BYTES": "lots"}, "broker.max_body_bytes"),
        ({"HIVE_CONFIG": "/nonexistent/hive.toml"}, "cannot read config file"),
    ],
)
def test_bad_setting_is_one_clear_error(tmp_path, env, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_settings({"HIVE_HOME": str(tmp_path), **env})


def test_unknown_key_in_file_is_refused(tmp_path):
    cfg = tmp_path / "x.toml"
    cfg.write_text("[broker]\nmax_body = 1\n")
    with pytest.raises(ConfigError, match="max_body"):
        load_settings({"HIVE_HOME": str(tmp_path)}, config_file=cfg)


def test_malformed_toml_names_the_file(tmp_path):
    cfg = tmp_path / "x.toml"
    cfg.write_text("[broker\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings({"HIVE_HOME": str(tmp_path)}, config_file=cfg)


def test_the_manager_setting_is_on_or_off_never_another_name(tmp_path):
    # the name is the constant everywhere (approvals, the harness, the
    # dashboard); the setting only says whether lifecycle creates it
    home = {"HIVE_HOME": str(tmp_path)}
    assert load_settings(home).lifecycle.manager == "hm1nd"
    assert load_settings({**home, "HIVE_LIFECYCLE_MANAGER": ""}).lifecycle.manager == ""
    with pytest.raises(ConfigError, match=r"lifecycle\.manager"):
        load_settings({**home, "HIVE_LIFECYCLE_MANAGER": "boss"})
