"""The observability kit speaks the project's own metric names: every `td_*` series that an
alert rule or a dashboard panel reads is exported by a running backend or gateway."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
import yaml

from tests.gateway.e2e import health, poll, post_logs, register, start_gateway
from tests.gateway.helpers import make_logs
from tests.support.backend import running_backend

pytestmark = pytest.mark.slow
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
METRIC_NAME = re.compile(r"\btd_[a-z_]+\b")
METRICS_TOKEN = "observability-test-token"
# The failure modes issue 16 added, each with the series its rule reads.
LIFECYCLE_RULES = {
    "TDGatewayDeadLettersWaiting": "td_fleet_gateway_dead_letters",
    "TDArchiveFailing": "td_archive_failures_total",
    "TDArchiveStale": "td_archive_last_success_timestamp_seconds",
    "TDRetentionNotRunning": "td_retention_last_run_timestamp_seconds",
    "TDAttendanceRecomputeLagging": "td_attendance_oldest_dirty_age_seconds",
}


def referenced_names() -> set[str]:
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    expressions = [rule["expr"] for group in alerts["groups"] for rule in group["rules"]]
    dashboard = json.loads((DEPLOY / "grafana" / "td-dashboard.json").read_text())
    expressions += [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    return {name for expr in expressions for name in METRIC_NAME.findall(expr)}


def rules() -> dict[str, str]:
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return {rule["alert"]: rule["expr"] for group in alerts["groups"] for rule in group["rules"]}


def sample(metrics_text: str, name: str) -> float:
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics_text.splitlines()
        if line.startswith((f"{name} ", f"{name}{{"))
    ]
    assert len(values) == 1, f"{name}: {values}"
    return values[0]


def test_every_new_failure_mode_has_a_rule_reading_its_series() -> None:
    found = rules()
    for alert, series in LIFECYCLE_RULES.items():
        assert alert in found, f"no rule {alert}"
        assert series in found[alert], f"{alert} does not read {series}: {found[alert]}"


def exported_names(metrics_text: str) -> set[str]:
    return {
        re.split(r"[{\s]", line, maxsplit=1)[0]
        for line in metrics_text.splitlines()
        if line and not line.startswith("#")
    }


def test_prometheus_scrapes_the_backend_with_the_metrics_token() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    backend_job = next(job for job in config["scrape_configs"] if job["job_name"] == "td-backend")
    assert backend_job["authorization"]["type"] == "Bearer"
    assert backend_job["authorization"]["credentials_file"]


def test_alerts_and_dashboard_read_only_exported_metrics(tmp_path: Path, database_url: str) -> None:
    env = {"TD_HEARTBEAT_INTERVAL": "0.5", "TD_METRICS_TOKEN": METRICS_TOKEN}
    with running_backend(tmp_path, database_url, env=env) as backend:
        gateway, enrollment_key = start_gateway(tmp_path, backend, "--heartbeat-interval-s", "0.5")
        try:
            with httpx.Client(base_url=gateway.url, timeout=30) as agent:
                token = register(agent, enrollment_key)
                assert post_logs(agent, token, make_logs(10)).status_code == 202
            poll(lambda: health(gateway)["queue_depth"] == 0, 60, "the upload")
            poll(lambda: health(gateway)["control_connected"] is True, 30, "control channel")

            def backend_metrics() -> str:
                # As deploy/prometheus/prometheus.yml scrapes: with the metrics token.
                auth = {"Authorization": f"Bearer {METRICS_TOKEN}"}
                return httpx.get(f"{backend.url}/metrics", headers=auth, timeout=10).text

            poll(lambda: "td_fleet_gateway_up{" in backend_metrics(), 30, "fleet figures")
            scraped = backend_metrics()
            exported = exported_names(scraped)
            # Without the token, no series names an organisation's gateways.
            public = httpx.get(f"{backend.url}/metrics", timeout=10).text
            assert "td_fleet_gateway" not in public and "gateway_id=" not in public
            exported |= exported_names(httpx.get(f"{gateway.url}/metrics", timeout=10).text)
        finally:
            assert gateway.stop() == 0
    referenced = referenced_names()
    assert referenced, "no metric names found in the kit"
    assert referenced <= exported, f"not exported: {sorted(referenced - exported)}"
    # What the new rules read says what happened: maintenance ran at start-up, the engine
    # keeps up, nothing failed to archive.
    assert sample(scraped, "td_retention_last_run_timestamp_seconds") > 0
    assert sample(scraped, "td_attendance_oldest_dirty_age_seconds") < 900
    assert sample(scraped, "td_archive_failures_total") == 0
