"""One trace per journey, seen by an OTLP collector: a real `td-backend serve` and a real
`td-gateway run` export to a collector in this process (OTEL_EXPORTER_OTLP_ENDPOINT).

A log: the agent's post at the gateway (continuing the agent's own traceparent) and its
buffer commit; the upload that carries it, a trace of its own LINKED to the post; the
backend's ingest, continuing the upload's trace from the `traceparent` header, and its
database write. A command: the API call, its delivery over the control channel, the
gateway's run and the terminal call, and the result back at the backend, all one trace.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet

from tests.devices.test_e2e_devices import add_device, run_command, running_devsim
from tests.devices.test_e2e_devices import start_gateway as start_device_gateway
from tests.gateway.e2e import health, poll, register, start_gateway, stored_ids
from tests.gateway.helpers import logs_json, make_logs
from tests.support.backend import running_backend
from tests.support.otlp import Collector, ReceivedSpan, running_collector

pytestmark = pytest.mark.slow
AGENT_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
AGENT_SPAN_ID = "00f067aa0ba902b7"
SPAN_KIND_SERVER, SPAN_KIND_CLIENT = 2, 3


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[Collector]:
    """A collector both processes export to (they inherit this environment)."""
    with running_collector() as running:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", running.url)
        # Spans leave within a tenth of a second instead of the default five.
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
        yield running


def wait_for_span(
    collector: Collector, what: str, match: Callable[[ReceivedSpan], bool]
) -> ReceivedSpan:
    found: list[ReceivedSpan] = []

    def arrived() -> bool:
        found[:] = [span for span in collector.spans() if match(span)]
        return bool(found)

    poll(arrived, 30, what)
    assert len(found) == 1, f"{what}: {found}"
    return found[0]


def log_lines(text: str) -> list[dict[str, object]]:
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def test_a_log_from_agent_post_to_database_row_is_one_linked_trace(
    tmp_path: Path, database_url: str, collector: Collector
) -> None:
    with running_backend(tmp_path, database_url) as backend:
        gateway, enrollment_key = start_gateway(tmp_path, backend)
        try:
            logs = make_logs(3)
            with httpx.Client(base_url=gateway.url, timeout=30) as agent:
                token = register(agent, enrollment_key)
                posted = agent.post(
                    "/v1/logs",
                    content=logs_json(logs),
                    headers={
                        "Authorization": f"Bearer {token}",
                        "Content-Type": "application/json",
                        "traceparent": f"00-{AGENT_TRACE_ID}-{AGENT_SPAN_ID}-01",
                    },
                )
                assert posted.status_code == 202, posted.text
            poll(lambda: health(gateway)["queue_depth"] == 0, 60, "the upload")
            assert {str(log.id) for log in logs} <= set(stored_ids(database_url))

            post = wait_for_span(
                collector,
                "the agent's post",
                lambda s: s.service == "td-gateway" and s.name == "POST /v1/logs",
            )
            # The gateway continues the trace the agent started.
            assert (post.trace_id, post.parent_span_id) == (AGENT_TRACE_ID, AGENT_SPAN_ID)
            assert post.kind == SPAN_KIND_SERVER
            assert post.attributes["http.response.status_code"] == 202
            commit = wait_for_span(
                collector, "the buffer commit", lambda s: s.name == "buffer.commit"
            )
            assert (commit.trace_id, commit.parent_span_id) == (post.trace_id, post.span_id)

            upload = wait_for_span(
                collector,
                "the upload carrying the post",
                lambda s: s.name == "upload" and (post.trace_id, post.span_id) in s.links,
            )
            # A batch holds many posts: its own trace, linked to each of them.
            assert upload.service == "td-gateway" and upload.kind == SPAN_KIND_CLIENT
            assert upload.trace_id != post.trace_id and upload.parent_span_id == ""
            assert upload.attributes["td.logs"] == 3

            ingest = wait_for_span(
                collector,
                "the backend's ingest of the upload",
                lambda s: (
                    s.service == "td-backend"
                    and s.parent_span_id == upload.span_id
                    and s.attributes.get("http.response.status_code") == 200
                ),
            )
            assert ingest.name == "POST /v2/ingest/logs"
            assert ingest.trace_id == upload.trace_id and ingest.kind == SPAN_KIND_SERVER
            write = wait_for_span(
                collector, "the database write", lambda s: s.parent_span_id == ingest.span_id
            )
            assert write.name == "db.write" and write.trace_id == upload.trace_id
            assert write.attributes["td.accepted"] == 3
        finally:
            assert gateway.stop() == 0

    # The log lines of each step name the span they were written in.
    uploaded = [
        line
        for line in log_lines(gateway.log_text())
        if line.get("event") == "upload" and line.get("span_id") == upload.span_id
    ]
    assert [line["trace_id"] for line in uploaded] == [upload.trace_id]
    ingested = [
        line
        for line in log_lines(backend.log_path.read_text())
        if line.get("event") == "batch ingested" and line.get("trace_id") == upload.trace_id
    ]
    assert [line["span_id"] for line in ingested] == [ingest.span_id]


def test_a_command_crosses_backend_gateway_terminal_and_back_in_one_trace(
    tmp_path: Path, database_url: str, collector: Collector
) -> None:
    with running_backend(tmp_path, database_url) as backend, running_devsim() as port:
        gateway_id, api_key, _ = backend.create_gateway("site")
        gateway = start_device_gateway(backend, tmp_path / "gw", api_key)
        try:
            with backend.admin() as admin:
                device_id = add_device(admin, gateway_id, port)
                answer = run_command(admin, device_id, "get_info")
                assert answer["status"] == "SUCCESS", answer
            command_id = answer["id"]

            def of_command(name: str) -> Callable[[ReceivedSpan], bool]:
                return lambda s: s.name == name and s.attributes.get("td.command.id") == command_id

            deliver = wait_for_span(collector, "the delivery", of_command("command.deliver"))
            created = wait_for_span(
                collector, "the API call", lambda s: s.span_id == deliver.parent_span_id
            )
            assert created.service == "td-backend" and created.kind == SPAN_KIND_SERVER
            assert created.name == "POST /v2/devices/{device_id}/commands"
            assert created.trace_id == deliver.trace_id

            run = wait_for_span(collector, "the gateway's run", of_command("command.run"))
            assert run.service == "td-gateway"
            assert (run.trace_id, run.parent_span_id) == (deliver.trace_id, deliver.span_id)
            terminal = wait_for_span(
                collector, "the terminal call", lambda s: s.name == "device.command"
            )
            assert (terminal.trace_id, terminal.parent_span_id) == (run.trace_id, run.span_id)
            assert terminal.attributes["td.device.id"] == device_id
            assert terminal.attributes["td.command.status"] == "SUCCESS"

            back = wait_for_span(collector, "the result's arrival", of_command("command.result"))
            assert back.service == "td-backend"
            assert (back.trace_id, back.parent_span_id) == (run.trace_id, run.span_id)
            assert back.attributes["td.command.status"] == "SUCCESS"
        finally:
            gateway.stop()


def test_a_command_created_on_one_instance_is_delivered_in_its_trace_by_another(
    tmp_path: Path, database_url: str, collector: Collector
) -> None:
    # The gateway holds its socket on instance b; the operator calls instance a. Only the
    # NOTIFY links them, so the delivery's parent proves the context travelled with it.
    shared = {"TD_SECRET_KEY": Fernet.generate_key().decode()}
    with (
        running_backend(tmp_path / "a", database_url, env=shared) as a,
        running_backend(tmp_path / "b", database_url, env=shared) as b,
    ):
        gateway_id, api_key, _ = a.create_gateway("site")
        gateway = start_device_gateway(b, tmp_path / "gw", api_key)
        try:
            with a.admin() as admin:
                created = admin.post(f"/v2/gateways/{gateway_id}/commands", json={"type": "ping"})
                assert created.status_code == 202, created.text
                command_id = created.json()["id"]
                path = f"/v2/gateways/{gateway_id}/commands/{command_id}"
                poll(
                    lambda: admin.get(path, params={"wait": 5}).json()["status"] == "SUCCESS",
                    60,
                    "the ping's result",
                )

            def of_command(name: str) -> Callable[[ReceivedSpan], bool]:
                return lambda s: s.name == name and s.attributes.get("td.command.id") == command_id

            deliver = wait_for_span(collector, "the delivery", of_command("command.deliver"))
            api_call = wait_for_span(
                collector, "the API call", lambda s: s.span_id == deliver.parent_span_id
            )
            assert api_call.name == "POST /v2/gateways/{gateway_id}/commands"
            run = wait_for_span(collector, "the gateway's run", of_command("command.run"))
            assert (run.trace_id, run.parent_span_id) == (api_call.trace_id, deliver.span_id)
            back = wait_for_span(collector, "the result's arrival", of_command("command.result"))
            assert (back.trace_id, back.parent_span_id) == (api_call.trace_id, run.span_id)
        finally:
            gateway.stop()
