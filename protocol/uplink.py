"""Gateway -> backend log batches (`POST /v2/ingest/logs`).

Logs travel grouped by the agent that sent them: every log in a group carries that group's
`agent_uid`. Grouping is what lets the gateway splice the msgpack bytes it buffered straight
into a batch (`msgspec.Raw`) instead of decoding and re-encoding every log.
"""

from __future__ import annotations

import uuid
from typing import Annotated

import msgspec
from msgspec import Meta

from protocol.agent import AgentUid, Log, UtcDatetime


class AgentLogs(msgspec.Struct, kw_only=True):
    agent_uid: AgentUid
    logs: list[Log]
    # The gateway's id for the agent (see protocol.control.AgentSeen.agent_id); None for
    # terminals and for agents the gateway no longer knows.
    agent_id: Annotated[str, Meta(max_length=64)] | None = None


class UplinkBatch(msgspec.Struct, kw_only=True):
    batch_id: uuid.UUID
    gateway_id: str
    created_at: UtcDatetime
    groups: Annotated[list[AgentLogs], Meta(max_length=100_000)]

    def log_count(self) -> int:
        return sum(len(group.logs) for group in self.groups)


class IngestResponse(msgspec.Struct, kw_only=True, omit_defaults=True):
    accepted: int
    duplicates: int = 0
    duplicate: bool = False
