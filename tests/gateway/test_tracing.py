"""Span contexts kept with the logs they came with, across the buffer and the wire."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import apsw
import msgspec
import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from gateway import tracing
from gateway.buffer import BUFFER_FILE
from gateway.buffer_store import unpack
from protocol import codec
from protocol.control import Command, CommandResult, CommandStatus
from tests.gateway.helpers import make_logs
from tests.gateway.test_buffer import LogList, open_buffer

POST_A = SpanContext(0xA1, 0xA2, is_remote=False, trace_flags=TraceFlags(1))
POST_B = SpanContext(0xB1, 0xB2, is_remote=False, trace_flags=TraceFlags(0))


def in_span(span_context: SpanContext) -> trace.Span:
    return NonRecordingSpan(span_context)


@pytest.mark.trio
async def test_an_upload_batch_links_to_every_post_whose_logs_it_holds(tmp_path: Path) -> None:
    async with open_buffer(tmp_path) as buffer:
        with trace.use_span(in_span(POST_A)):
            await buffer.append("agent-a", make_logs(2))
        with trace.use_span(in_span(POST_B)):
            await buffer.append("agent-b", make_logs(3))
            await buffer.append("agent-b", make_logs(1))  # the same post's context twice
        await buffer.append("agent-c", make_logs(1))  # no span: nothing to link
        claim = await buffer.claim(max_logs=100)
    assert claim is not None and claim.n_logs == 7
    stored = [tracing.unpack(packed) for packed in claim.trace_contexts]
    assert [(c.trace_id, c.span_id, c.trace_flags) if c else None for c in stored] == [
        (0xA1, 0xA2, 1),
        (0xB1, 0xB2, 0),
        (0xB1, 0xB2, 0),
        None,
    ]
    links, unlinked = tracing.links_to(claim.trace_contexts)
    assert [(link.context.trace_id, link.context.span_id) for link in links] == [
        (0xA1, 0xA2),
        (0xB1, 0xB2),
    ]
    assert unlinked == 0


def test_links_stop_at_the_limit_and_count_the_rest() -> None:
    packed = [
        bytes(15) + i.to_bytes(1, "big") + i.to_bytes(8, "big") + b"\x01" for i in range(1, 201)
    ]
    links, unlinked = tracing.links_to(packed)
    assert len(links) == tracing.MAX_LINKS and unlinked == 200 - tracing.MAX_LINKS


def test_stored_contexts_that_are_not_span_contexts_are_ignored() -> None:
    assert tracing.unpack(None) is None
    assert tracing.unpack(b"short") is None
    assert tracing.unpack(bytes(tracing.PACKED_SIZE)) is None  # all-zero ids are invalid


@pytest.mark.trio
async def test_a_buffer_file_from_before_tracing_gains_the_column_and_keeps_its_rows(
    tmp_path: Path,
) -> None:
    logs = make_logs(4)
    async with open_buffer(tmp_path) as buffer:
        await buffer.append("agent-old", logs)
    # The file as an earlier gateway left it: `rows` without the column.
    conn = apsw.Connection(str(tmp_path / BUFFER_FILE))
    conn.execute("ALTER TABLE rows DROP COLUMN trace_context")
    conn.close()

    async with open_buffer(tmp_path) as buffer:
        with trace.use_span(in_span(POST_A)):
            await buffer.append("agent-new", make_logs(1))
        claim = await buffer.claim(max_logs=100)
    assert claim is not None
    assert [uid for uid, _ in claim.groups] == ["agent-old", "agent-new"]
    assert LogList.decode(unpack(claim.groups[0][1])) == logs
    assert claim.trace_contexts[0] is None
    assert tracing.unpack(claim.trace_contexts[1]) == SpanContext(
        0xA1, 0xA2, is_remote=True, trace_flags=TraceFlags(1)
    )


def test_commands_and_results_carry_a_traceparent_and_old_peers_still_decode() -> None:
    expires = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    old_command = msgspec.json.encode(
        {
            "type": "command",
            "id": str(uuid.uuid4()),
            "target": "gateway",
            "command_type": "ping",
            "expires_at": expires.isoformat(),
        }
    )
    decoded = codec.backend_message.decode(old_command, codec.JSON)
    assert isinstance(decoded, Command) and decoded.traceparent == ""

    value = f"00-{'ab' * 16}-{'cd' * 8}-01"
    result = CommandResult(command_id=uuid.uuid4(), status=CommandStatus.SUCCESS, traceparent=value)
    again = codec.gateway_message.decode(msgspec.json.encode(result), codec.JSON)
    assert isinstance(again, CommandResult) and again.traceparent == value

    too_long = msgspec.json.encode({**msgspec.to_builtins(result), "traceparent": "x" * 300})
    with pytest.raises(codec.ProtocolError, match="traceparent"):
        codec.gateway_message.decode(too_long, codec.JSON)


def test_log_lines_name_the_span_they_were_written_in() -> None:
    with trace.use_span(in_span(POST_A)):
        inside = tracing.add_trace_ids(None, "info", {"event": "upload"})
    outside = tracing.add_trace_ids(None, "info", {"event": "upload"})
    assert inside == {
        "event": "upload",
        "trace_id": f"{0xA1:032x}",
        "span_id": f"{0xA2:016x}",
    }
    assert outside == {"event": "upload"}


def test_tracing_is_off_without_an_endpoint() -> None:
    assert tracing.configure({}) is False
    assert tracing.configure({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}) is False
    assert not tracing.enabled()
    assert tracing.traceparent() == "" and tracing.extract({"traceparent": "00-x"}) is None
