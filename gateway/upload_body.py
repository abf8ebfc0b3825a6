"""How buffered rows become upload bodies: a whole batch, with the rows' msgpack spliced in
as stored, or a range of its logs as a batch of its own (when a refused batch is split)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from gateway.buffer_store import Claim, unpack
from protocol import codec
from protocol.agent import Log
from protocol.uplink import AgentLogs, UplinkBatch

_log_list = msgspec.msgpack.Decoder(list[Log])


# The same wire shape as protocol.uplink.UplinkBatch, with each group's logs spliced in as
# the msgpack bytes already stored in the buffer: no decoding and re-encoding per log.
class _RawAgentLogs(msgspec.Struct, kw_only=True):
    agent_uid: str
    logs: msgspec.Raw
    agent_id: str | None = None


class _RawUplinkBatch(msgspec.Struct, kw_only=True):
    batch_id: uuid.UUID
    gateway_id: str
    created_at: dt.datetime
    groups: list[_RawAgentLogs]


AgentIdOf = Callable[[str], str | None]


def _no_agent_id(agent_uid: str) -> str | None:
    return None


def encode_batch(claim: Claim, gateway_id: str, agent_id_of: AgentIdOf = _no_agent_id) -> bytes:
    """The msgpack body of an UplinkBatch for `claim` (not yet compressed); each group
    carries the gateway's id for its agent (`agent_id_of(agent_uid)`)."""
    batch = _RawUplinkBatch(
        batch_id=claim.batch_id,
        gateway_id=gateway_id,
        created_at=claim.created_at,
        groups=[
            _RawAgentLogs(
                agent_uid=uid, logs=msgspec.Raw(unpack(packed)), agent_id=agent_id_of(uid)
            )
            for uid, packed in claim.groups
        ],
    )
    return codec.msgpack_encoder.encode(batch)


def part_id(batch_id: uuid.UUID, start: int, stop: int) -> uuid.UUID:
    """The id of the logs [start, stop) of a batch (in group order), the same on every resend."""
    return uuid.uuid5(batch_id, f"{start}:{stop}")


@dataclass(frozen=True)
class Entry:
    group: int
    agent_uid: str
    log: Log


def entries_of(claim: Claim) -> list[Entry]:
    """Every log of `claim` in order, with the group (row) it came from."""
    return [
        Entry(index, uid, item)
        for index, (uid, packed) in enumerate(claim.groups)
        for item in _log_list.decode(unpack(packed))
    ]


def encode_part(
    claim: Claim,
    gateway_id: str,
    entries: list[Entry],
    start: int,
    stop: int,
    agent_id_of: AgentIdOf = _no_agent_id,
) -> bytes:
    """The msgpack body of the logs [start, stop) of `claim` as a batch of their own."""
    groups: list[AgentLogs] = []
    previous = -1
    for entry in entries[start:stop]:
        if entry.group != previous:
            groups.append(
                AgentLogs(agent_uid=entry.agent_uid, logs=[], agent_id=agent_id_of(entry.agent_uid))
            )
            previous = entry.group
        groups[-1].logs.append(entry.log)
    batch = UplinkBatch(
        batch_id=part_id(claim.batch_id, start, stop),
        gateway_id=gateway_id,
        created_at=claim.created_at,
        groups=groups,
    )
    return codec.msgpack_encoder.encode(batch)
