from __future__ import annotations

from pathlib import Path

import pytest

from gateway import config
from gateway.errors import ConfigError


def test_defaults_follow_the_contract() -> None:
    loaded = config.load([], {})
    assert loaded.listen == "0.0.0.0:8080"
    assert loaded.buffer_overflow == "drop_oldest"
    assert loaded.buffer_max_bytes == 1024**3
    assert loaded.max_request_bytes == 4 * 1024**2
    assert loaded.upload_max_logs == 5000
    assert loaded.upload_concurrency == 2


def test_flags_beat_environment_which_beats_the_file(tmp_path: Path) -> None:
    file = tmp_path / "gateway.toml"
    file.write_text(
        '[gateway]\nbackend_url = "http://file"\nlisten = "127.0.0.1:1"\ndurability = "full"\n'
    )
    env = {"TD_BACKEND_URL": "http://env", "TD_LISTEN": "127.0.0.1:2", "TD_GATEWAY_API_KEY": "k"}
    loaded = config.load(["--listen", "127.0.0.1:3"], env, str(file))
    assert loaded.backend_url == "http://env"
    assert loaded.listen == "127.0.0.1:3"
    assert loaded.durability == "full"
    assert loaded.api_key == "k"


def test_sizes_accept_units() -> None:
    loaded = config.load(["--buffer-max-bytes", "64MiB"], {"TD_MAX_REQUEST_BYTES": "2M"})
    assert loaded.buffer_max_bytes == 64 * 1024**2
    assert loaded.max_request_bytes == 2 * 1024**2


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (
            ["--buffer-overflow", "ring"],
            {},
            "TD_BUFFER_OVERFLOW (--buffer-overflow): got 'ring'; accepted: drop_oldest, reject",
        ),
        ([], {"TD_DURABILITY": "extra"}, "TD_DURABILITY (--durability): got 'extra'; accepted"),
        ([], {"TD_UPLOAD_CONCURRENCY": "0"}, "an integer >= 1 and <= 16"),
        (["--listen", "8080"], {}, "TD_LISTEN (--listen): got '8080'; accepted: host:port"),
        (["--bufer-max-bytes", "1"], {}, "unknown argument '--bufer-max-bytes'"),
        (["--tls-cert", "cert.pem"], {}, "set both or neither"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_setting(
    argv: list[str], env: dict[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        config.load(argv, env)
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message


def test_an_unknown_key_in_the_file_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "gateway.toml"
    file.write_text("buffer_max_byte = 10\n")
    with pytest.raises(ConfigError, match="unknown setting 'buffer_max_byte'"):
        config.load([], {}, str(file))


@pytest.mark.parametrize(
    "argv",
    [
        ["--api-key", "s3cr3t"],
        ["--api-key=s3cr3t"],
        ["--enrollment-key", "s3cr3t"],
        ["--enrollment-key=s3cr3t"],
    ],
)
def test_secrets_are_not_flags(argv: list[str]) -> None:
    with pytest.raises(ConfigError, match="process list") as refused:
        config.load(argv, {})
    assert "_FILE" in str(refused.value)
    assert "s3cr3t" not in str(refused.value)


def test_secrets_come_from_files(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("api-from-file\n")
    (tmp_path / "enrol").write_text("enrol-from-file")
    loaded = config.load(
        ["--enrollment-key-file", str(tmp_path / "enrol")],
        {"TD_GATEWAY_API_KEY_FILE": str(tmp_path / "key")},
    )
    assert loaded.api_key == "api-from-file"
    assert loaded.enrollment_key == "enrol-from-file"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TD_GATEWAY_API_KEY": "k", "TD_GATEWAY_API_KEY_FILE": "x"}, "not both"),
        ({"TD_GATEWAY_API_KEY_FILE": "/nonexistent/key"}, "cannot read"),
    ],
)
def test_a_secret_file_that_cannot_be_used_is_one_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as refused:
        config.load([], env)
    assert "TD_GATEWAY_API_KEY" in str(refused.value)
