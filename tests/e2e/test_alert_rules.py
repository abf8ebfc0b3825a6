"""The alert rules, evaluated by Prometheus's own `promtool` against synthetic series: each
new failure mode fires when it should, after its `for`, and stays quiet when all is well.

tests/e2e/test_observability.py checks that the series the rules read are exported; this
checks what the rules make of them.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
GATEWAY = {"org_id": "o1", "gateway_id": "g1", "gateway": "front"}


def _labels(labels: dict[str, str]) -> str:
    return "{" + ", ".join(f'{key}="{value}"' for key, value in labels.items()) + "}"


# (alert, input series {series: values} one value per LONG_STEP (per minute for the
# attendance rule, whose `for` is 10 minutes), eval time, fires?, labels, template values)
LONG_STEP = "4m"  # under Prometheus's 5 m look-back, so the series never go stale
CASES: list[tuple[str, dict[str, str], str, bool, dict[str, str], dict[str, str]]] = [
    # A month that failed to archive, on one of two instances.
    (
        "TDArchiveFailing",
        {
            'td_archive_failures_total{instance="a"}': "0 0 1 1 1",
            'td_archive_failures_total{instance="b"}': "0 0 0 0 0",
        },
        "12m",
        True,
        {},
        {},
    ),
    ("TDArchiveFailing", {'td_archive_failures_total{instance="a"}': "0x10"}, "10m", False, {}, {}),
    # The last success (at t=60 s) is over two days old on every instance.
    (
        "TDArchiveStale",
        {"td_archive_last_success_timestamp_seconds": "60x1100"},
        "4400m",
        True,
        {},
        {},
    ),
    # One instance keeps succeeding: the fleet is fine.
    (
        "TDArchiveStale",
        {
            'td_archive_last_success_timestamp_seconds{instance="a"}': "60x1100",
            'td_archive_last_success_timestamp_seconds{instance="b"}': "60+240x1100",
        },
        "4400m",
        False,
        {},
        {},
    ),
    # No success since the instances started: TDArchiveFailing's case, not this one.
    (
        "TDArchiveStale",
        {"td_archive_last_success_timestamp_seconds": "0x1100"},
        "4400m",
        False,
        {},
        {},
    ),
    (
        "TDRetentionNotRunning",
        {"td_retention_last_run_timestamp_seconds": "60x105"},
        "7h",
        True,
        {},
        {},
    ),
    (
        "TDRetentionNotRunning",
        {"td_retention_last_run_timestamp_seconds": "60+240x105"},
        "7h",
        False,
        {},
        {},
    ),
    # Over 15 minutes behind for 10 minutes (1,000 s).
    (
        "TDAttendanceRecomputeLagging",
        {"td_attendance_oldest_dirty_age_seconds": "0 0 1000x30"},
        "20m",
        True,
        {},
        {"$value | humanizeDuration": "16m 40s"},
    ),
    # Behind, but not for long enough yet.
    (
        "TDAttendanceRecomputeLagging",
        {"td_attendance_oldest_dirty_age_seconds": "0 0 1000x30"},
        "8m",
        False,
        {},
        {},
    ),
    (
        "TDGatewayDeadLettersWaiting",
        {f"td_fleet_gateway_dead_letters{_labels(GATEWAY)}": "3x375"},
        "1500m",
        True,
        GATEWAY,
        {"$labels.gateway": "front", "$value": "3"},
    ),
    # Replayed within the day.
    (
        "TDGatewayDeadLettersWaiting",
        {f"td_fleet_gateway_dead_letters{_labels(GATEWAY)}": "3x150 0x225"},
        "1500m",
        False,
        GATEWAY,
        {},
    ),
]


def _rendered(text: str, values: dict[str, str]) -> str:
    for expression, value in values.items():
        text = text.replace("{{ " + expression + " }}", value)
    assert "{{" not in text, f"a template this test does not fill: {text}"
    return text


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: run scripts/system-deps.sh (Debian package prometheus)"
    return found


def test_the_rules_are_valid_promql() -> None:
    checked = subprocess.run(
        [promtool(), "check", "rules", str(DEPLOY / "alerts.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_each_new_failure_mode_fires_when_it_should_and_only_then(tmp_path: Path) -> None:
    rules = {
        rule["alert"]: rule
        for group in yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    }
    tests: list[dict[str, Any]] = []
    for alert, series, eval_time, fires, labels, values in CASES:
        rule = rules[alert]
        expected = []
        if fires:
            expected.append(
                {
                    "exp_labels": {**labels, **rule["labels"]},
                    "exp_annotations": {
                        key: _rendered(text, values) for key, text in rule["annotations"].items()
                    },
                }
            )
        tests.append(
            {
                "interval": "1m" if alert == "TDAttendanceRecomputeLagging" else LONG_STEP,
                "input_series": [{"series": name, "values": v} for name, v in series.items()],
                "alert_rule_test": [
                    {"eval_time": eval_time, "alertname": alert, "exp_alerts": expected}
                ],
            }
        )
    shutil.copy(DEPLOY / "alerts.yml", tmp_path / "alerts.yml")
    unit = tmp_path / "alerts_test.yml"
    unit.write_text(
        yaml.safe_dump({"rule_files": ["alerts.yml"], "evaluation_interval": "2m", "tests": tests})
    )
    ran = subprocess.run(
        [promtool(), "test", "rules", str(unit)], capture_output=True, text=True, check=False
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
