"""The backend's settings: one frozen struct, read once from `TD_*` environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

PositiveFloat = Annotated[float, Meta(gt=0)]
PositiveInt = Annotated[int, Meta(gt=0)]


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # None: run the embedded PostgreSQL under <data_dir>/pgdata.
    database_url: str | None = None
    data_dir: str = ".td"
    # A Fernet key (urlsafe base64 of 32 bytes); None: use or create <data_dir>/secret.key.
    secret_key: str | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"
    # The longest any log is kept in the database: the bound on every organisation's
    # retention per kind (backend.lifecycle.retention); whole months past it are archived
    # and dropped.
    log_retention_days: PositiveInt = 1095
    snapshot_retention_days: PositiveInt = 14
    # Where expired logs are archived before they are deleted: a local directory or any
    # fsspec URL (s3://bucket/prefix, memory://…); None: <data_dir>/archive.
    archive_url: str | None = None
    # A month `td-backend archive restore` brought back stays in the database this long
    # before maintenance archives it again.
    archive_restore_hold_days: PositiveInt = 7
    ingest_max_bytes: PositiveInt = 16 * 1024 * 1024
    # Per gateway token bucket for ingest: sustained batches per second and burst size.
    ingest_rate_per_s: PositiveFloat = 50.0
    ingest_burst: PositiveInt = 200
    db_pool_size: PositiveInt = 10
    # Control channel timing; tests shrink these to run fast.
    heartbeat_interval: PositiveFloat = 15.0
    gateway_offline_after_missed: PositiveInt = 3
    agent_offline_after: PositiveFloat = 120.0
    command_expires_in_s: PositiveFloat = 300.0
    # How often the housekeeping task runs (partitions, retention, expiry, offline marking).
    maintenance_interval: PositiveFloat = 3600.0
    expiry_check_interval: PositiveFloat = 1.0
    instance_name: str = ""
    # Bearer token for the per-organisation series of /metrics (td_fleet_gateway_*, which
    # name every organisation's gateways); None: /metrics serves process-level series only.
    metrics_token: str | None = None
    # Keep attendance's derived tables at ingest (off only to measure what it costs).
    attendance_at_ingest: bool = True
    # How often the attendance engine recomputes the employee-days marked dirty.
    attendance_interval: PositiveFloat = 1.0
    # Gateways' client certificates (backend.pki, docs/gateway-mtls.md): their lifetime; the
    # window around this clock a signed batch's timestamp must fall in.
    client_certificate_lifetime_s: PositiveFloat = 30 * 86400.0
    batch_signature_window_s: PositiveFloat = 300.0
    # Addresses (comma-separated, CIDR allowed) of the proxies whose X-Client-Certificate
    # header is believed; from any other address the header is ignored.
    trusted_proxies: str = ""
    # Direct topology: `serve` terminates TLS itself (hypercorn) and asks gateways for their
    # client certificate. PEM files; both or neither.
    tls_cert_file: str | None = None
    tls_key_file: str | None = None

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser()

    @property
    def gateway_offline_after_s(self) -> float:
        return self.heartbeat_interval * self.gateway_offline_after_missed


class ConfigError(ValueError):
    """A `TD_*` variable has a value the backend cannot use; the message names it."""


def load_config(environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
    """Build the config from `TD_<FIELD>` variables (e.g. `TD_DATABASE_URL`), then overrides."""
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    for field in Config.__struct_fields__:
        value = env.get(f"TD_{field.upper()}")
        if value is not None and value != "":
            raw[field] = value
    # TD_LOG_LEVEL is shared with the gateway, which spells it in lower case.
    if isinstance(raw.get("log_level"), str):
        raw["log_level"] = raw["log_level"].upper()
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return msgspec.convert(raw, Config, strict=False)
    except msgspec.ValidationError as exc:
        text = str(exc)
        reason, _, where = text.rpartition(" - at `$.")
        if where:
            name = "TD_" + where.rstrip("`").upper()
            raise ConfigError(f"{name}: {reason}") from None
        raise ConfigError(text) from None
