"""What request handlers share: config, database, secret box, metrics; one per app."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from backend.config import Config
from backend.control.hub import ControlHub
from backend.crypto import SecretBox
from backend.db import Database
from backend.errors import Unavailable
from backend.ingest import RateLimiter
from backend.metrics import Metrics
from backend.partitions import LogPartitions
from backend.pki.authority import CertificateAuthority


@dataclass
class Services:
    config: Config
    db: Database
    secrets: SecretBox
    metrics: Metrics = field(default_factory=Metrics)
    partitions: LogPartitions = field(default_factory=LogPartitions)
    rate_limiter: RateLimiter = field(init=False)
    # The control channel hub; None until it starts (and in tools that only need the DB).
    control: ControlHub | None = None
    # The gateways' client-certificate CA (backend.pki); loaded at start.
    authority: CertificateAuthority | None = None

    def __post_init__(self) -> None:
        self.rate_limiter = RateLimiter(self.config.ingest_rate_per_s, self.config.ingest_burst)

    @property
    def pool(self) -> Any:
        return self.db.pool

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        """A pooled connection; failing to get one is Unavailable (503), not a server bug."""
        acquiring = self.pool.acquire()
        try:
            conn = await acquiring.__aenter__()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise Unavailable("the database is not reachable; retry shortly") from exc
        try:
            yield conn
        finally:
            await acquiring.__aexit__(None, None, None)
