"""What request handlers share: config, database, secret box, metrics; one per app."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from backend.config import Config
from backend.crypto import SecretBox
from backend.db import Database
from backend.ingest import RateLimiter
from backend.metrics import Metrics
from backend.partitions import LogPartitions


@dataclass
class Services:
    config: Config
    db: Database
    secrets: SecretBox
    metrics: Metrics = field(default_factory=Metrics)
    partitions: LogPartitions = field(default_factory=LogPartitions)
    rate_limiter: RateLimiter = field(init=False)
    # The control channel hub (backend.control); None until it starts.
    control: Any = None

    def __post_init__(self) -> None:
        self.rate_limiter = RateLimiter(self.config.ingest_rate_per_s, self.config.ingest_burst)

    @property
    def pool(self) -> Any:
        return self.db.pool
