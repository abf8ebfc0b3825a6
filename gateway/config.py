"""The gateway's settings: one frozen Struct, read once from a TOML file, `TD_*` environment
variables and `--flags` (later sources win), and passed down explicitly.

A bad value stops start-up with one line naming the setting, how to set it and what it
accepts, e.g. `TD_BUFFER_OVERFLOW (--buffer-overflow): got 'x'; accepted: drop_oldest, reject`.

Secrets (the API key, the enrollment key) come only from the environment, a file named by
`TD_GATEWAY_API_KEY_FILE` / `TD_ENROLLMENT_KEY_FILE` (e.g. a container secret), or the TOML
file: never from `--flags`, which every user of the host can read in the process list.
"""

from __future__ import annotations

import argparse
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import msgspec.inspect as mi
from msgspec import Meta

from gateway.errors import ConfigError

GiB = 1024**3
MiB = 1024**2

Seconds = Annotated[float, Meta(gt=0, le=86_400)]
ListenAddress = Annotated[str, Meta(pattern=r"^(\[[0-9A-Fa-f:.]+\]|[^:\s\[\]]+):[0-9]{1,5}$")]
OptionalListenAddress = Annotated[
    str, Meta(pattern=r"^$|^(\[[0-9A-Fa-f:.]+\]|[^:\s\[\]]+):[0-9]{1,5}$")
]


class GatewayConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # Empty backend_url runs the gateway buffer-only: agents are served, nothing is uploaded.
    backend_url: str = ""
    api_key: str = ""
    listen: ListenAddress = "0.0.0.0:8080"
    data_dir: str = ".td-gateway"
    # Until the control channel delivers one, agents enrol with this key (it stays an override).
    enrollment_key: str = ""
    # Files holding the two secrets above (their contents, trailing newline stripped, win).
    api_key_file: str = ""
    enrollment_key_file: str = ""

    buffer_max_bytes: Annotated[int, Meta(ge=64 * 1024)] = GiB
    buffer_overflow: Literal["drop_oldest", "reject"] = "drop_oldest"
    # full: fsync at every commit, a 202 survives a power cut; normal: survives a crash only.
    durability: Literal["normal", "full"] = "full"
    # Dead letters' own space, apart from buffer_max_bytes (which never evicts them).
    dead_letter_max_bytes: Annotated[int, Meta(ge=64 * 1024)] = 64 * MiB
    max_request_bytes: Annotated[int, Meta(ge=1024, le=256 * MiB)] = 4 * MiB

    upload_max_logs: Annotated[int, Meta(ge=1, le=100_000)] = 5000
    upload_concurrency: Annotated[int, Meta(ge=1, le=16)] = 2
    upload_backoff_base_s: Seconds = 0.5
    upload_backoff_cap_s: Seconds = 30.0
    upload_timeout_s: Seconds = 60.0
    ca_bundle: str = ""

    tls_cert: str = ""
    tls_key: str = ""

    control: bool = True
    heartbeat_interval_s: Seconds = 15.0
    control_backoff_base_s: Seconds = 1.0
    control_backoff_cap_s: Seconds = 60.0

    # How often configured terminals are polled for health.
    device_poll_s: Seconds = 60.0
    # Where ZKTeco PUSH terminals reach the gateway (`/iclock/...`); empty: not served.
    zk_listen: OptionalListenAddress = ""
    # Where operators on site reach the local API (its own token); empty: not served.
    local_listen: OptionalListenAddress = ""

    log_level: Literal["debug", "info", "warning", "error"] = "info"

    def __post_init__(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError(
                "TD_TLS_CERT and TD_TLS_KEY (--tls-cert, --tls-key): set both or neither"
            )

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def listen_host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


# Names that do not follow TD_<FIELD> are spelled out; they are part of the external contract.
_ENV_NAMES = {
    "api_key": "TD_GATEWAY_API_KEY",
    "api_key_file": "TD_GATEWAY_API_KEY_FILE",
    "heartbeat_interval_s": "TD_HEARTBEAT_INTERVAL",
}
# Settings that are secrets, and the setting naming the file each may be read from.
SECRET_FILES = {"api_key": "api_key_file", "enrollment_key": "enrollment_key_file"}
_FIELDS: tuple[mi.Field, ...] = mi.type_info(GatewayConfig).fields  # type: ignore[attr-defined]
_SIZE = re.compile(r"^\s*([0-9]+)\s*([KMG]i?B?)?\s*$", re.IGNORECASE)
_SIZE_FACTORS = {"k": 1024, "m": MiB, "g": GiB}


def env_name(field: str) -> str:
    return _ENV_NAMES.get(field, "TD_" + field.upper())


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def load(
    argv: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> GatewayConfig:
    """Build the config from a TOML file, `environ` and `argv` (flags only), in that order."""
    values: dict[str, Any] = {}
    source = {}
    if config_file:
        for key, value in _read_toml(config_file).items():
            values[key] = value
            source[key] = f"{key} in {config_file}"
    for field in _FIELDS:
        if environ is not None and env_name(field.name) in environ:
            values[field.name] = environ[env_name(field.name)]
            source[field.name] = env_name(field.name)
    flags = parse_flags(argv)
    for key, value in flags.items():
        values[key] = value
        source[key] = flag_name(key)
    for field in _FIELDS:
        if field.name.endswith("_bytes") and isinstance(values.get(field.name), str):
            values[field.name] = _parse_size(values[field.name])
    for secret, file_setting in SECRET_FILES.items():
        path = values.get(file_setting)
        if path:
            if values.get(secret):
                raise ConfigError(
                    f"{env_name(secret)} and {env_name(file_setting)}: set one, not both"
                )
            values[secret] = _read_secret(str(path), env_name(file_setting))
    try:
        return msgspec.convert(values, GatewayConfig, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(_explain(exc, values)) from None


def parse_flags(argv: Sequence[str]) -> dict[str, str]:
    """The settings given as `--flags`; anything else in argv is an error, and so is a
    secret given as a flag."""
    for arg in argv:
        for secret in SECRET_FILES:
            if arg.split("=", 1)[0] == flag_name(secret):
                raise ConfigError(
                    f"{flag_name(secret)} is not accepted (a flag shows in the process list):"
                    f" set {env_name(secret)} or {env_name(SECRET_FILES[secret])}"
                )
    # No abbreviations: `--api-key` must never pass for `--api-key-file`.
    parser = argparse.ArgumentParser(prog="td-gateway run", add_help=False, allow_abbrev=False)
    for field in _FIELDS:
        if field.name not in SECRET_FILES:
            parser.add_argument(flag_name(field.name), dest=field.name, default=None)
    namespace, rest = parser.parse_known_args(list(argv))
    if rest:
        raise ConfigError(f"unknown argument {rest[0]!r}; see `td-gateway run --help`")
    return {key: value for key, value in vars(namespace).items() if value is not None}


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Declare every setting but the secrets as a flag on `parser`, for `--help`."""
    for field in _FIELDS:
        if field.name in SECRET_FILES:
            continue
        parser.add_argument(
            flag_name(field.name),
            dest=field.name,
            metavar=env_name(field.name),
            help=f"accepts {_accepted(field.type)}; default {field.default!r}",
        )


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: not valid TOML ({exc})") from None
    # A [gateway] table is accepted so one file can hold the settings of several services.
    table = data.get("gateway", data)
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [gateway] must be a table")
    return table


def _read_secret(path: str, setting: str) -> str:
    try:
        with open(path, encoding="utf-8") as file:
            value = file.read().rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{setting}: {path} is not UTF-8 text") from None
    if not value:
        raise ConfigError(f"{setting}: {path} is empty")
    return value


def _parse_size(text: str) -> int | str:
    match = _SIZE.match(text)
    if not match:
        return text  # left for msgspec to reject with the setting's name
    number, unit = match.groups()
    return int(number) * (_SIZE_FACTORS[unit[0].lower()] if unit else 1)


def _explain(exc: msgspec.ValidationError, values: Mapping[str, Any]) -> str:
    text = str(exc)
    unknown = re.match(r"Object contains unknown field `(.+)`", text)
    if unknown:
        names = ", ".join(field.name for field in _FIELDS)
        return f"unknown setting {unknown.group(1)!r}; accepted settings: {names}"
    at = re.search(r" - at `\$\.(\w+)`", text)
    if not at:
        return f"invalid configuration: {text}"
    name = at.group(1)
    field = next(field for field in _FIELDS if field.name == name)
    got = values.get(name)
    return f"{env_name(name)} ({flag_name(name)}): got {got!r}; accepted: {_accepted(field.type)}"


def _accepted(type_: mi.Type) -> str:
    match type_:
        case mi.LiteralType(values=values):
            return ", ".join(str(value) for value in values)
        case mi.IntType() | mi.FloatType():
            kind = "an integer" if isinstance(type_, mi.IntType) else "a number"
            bounds = [
                f"{op} {bound}"
                for op, bound in (
                    (">", type_.gt),
                    (">=", type_.ge),
                    ("<", type_.lt),
                    ("<=", type_.le),
                )
                if bound is not None
            ]
            return " ".join([kind, " and ".join(bounds)]).strip()
        case mi.BoolType():
            return "true, false"
        case mi.StrType(pattern=pattern) if pattern:
            return "host:port, e.g. 0.0.0.0:8080"
        case _:
            return "text"
