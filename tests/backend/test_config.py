from __future__ import annotations

import pytest

from backend.config import ConfigError, load_config


def test_settings_come_from_td_variables() -> None:
    config = load_config({"TD_INGEST_MAX_BYTES": "1024", "TD_HEARTBEAT_INTERVAL": "0.5"})
    assert config.ingest_max_bytes == 1024
    assert config.heartbeat_interval == 0.5
    assert config.gateway_offline_after_s == 1.5


def test_log_level_is_spelled_like_the_gateways_too() -> None:
    # One TD_LOG_LEVEL for a host running both services: the gateway takes lower case.
    assert load_config({"TD_LOG_LEVEL": "debug"}).log_level == "DEBUG"
    assert load_config({"TD_LOG_LEVEL": "WARNING"}).log_level == "WARNING"


@pytest.mark.parametrize(
    ("variable", "value"),
    [("TD_LOG_LEVEL", "loud"), ("TD_INGEST_MAX_BYTES", "-1"), ("TD_HEARTBEAT_INTERVAL", "x")],
)
def test_a_bad_value_names_its_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({variable: value})
    assert str(info.value).startswith(f"{variable}: ")
