"""What tracing costs on the gateway's agent post path. Prints one JSON object.

Two measurements in one run:

- `process`: `td-gateway run` with tracing off (no OTEL_EXPORTER_OTLP_ENDPOINT) against the
  same with tracing on, exporting every span over OTLP/HTTP to a sink in this process (a real
  HTTP server that decodes and counts them). The load is bench/gateway_ingest.py's generator
  (100-log JSON posts over 64 keep-alive connections, its own process). Rounds alternate
  off, on, off, on... so both see the same neighbours; `on_vs_off` is the median of the
  per-round throughput ratios. Durability `normal` (no fsync), so the figure is not hidden
  behind the disk.
- `per_post`: the instrumentation a post runs (its server span, the buffer commit span, the
  span context packed for the buffer row), timed in this process: off (no SDK installed:
  gateway/tracing.py's shared do-nothing span), the same calls on the API's no-op tracer
  (`noop_tracer`, the usual way to be off, for comparison), and on (the SDK with a batch
  exporter to the sink), each against the same loop without the instrumentation (the code
  before tracing). `off_share_of_post` relates the off cost to the time one post takes at
  the throughput of the `process` measurement.

Measured on a shared machine, the figures move with the neighbours' load: read the ratios.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opentelemetry.trace import SpanKind

from gateway import tracing
from tests.support.otlp import running_collector

ROUNDS = 4
GATEWAY = str(Path(sys.executable).with_name("td-gateway"))
LOAD = str(Path(__file__).resolve().with_name("gateway_ingest.py"))
LOGS_PER_POST = 100
CALLS = 200_000
FLAGS = ("--log-level", "warning", "--durability", "normal")
HEADERS = {"authorization": "Bearer x", "content-type": "application/json"}


# ---- per post, in this process ---------------------------------------------------------------


def _without_tracing() -> None:
    pass


def _instrumented_post() -> None:
    # The calls gateway/api.py and gateway/buffer.py make for one post, nothing else.
    with tracing.span(
        "POST /v1/logs", context=tracing.extract(HEADERS), kind=SpanKind.SERVER
    ) as span:
        tracing.current_packed()
        with tracing.span("buffer.commit", attributes={"td.logs": 100}):
            pass
        span.set_attribute("http.response.status_code", 202)


def _on_the_noop_tracer() -> None:
    with tracing.tracer.start_as_current_span(
        "POST /v1/logs", context=tracing.extract(HEADERS), kind=SpanKind.SERVER
    ) as span:
        tracing.current_packed()
        with tracing.tracer.start_as_current_span("buffer.commit", attributes={"td.logs": 100}):
            pass
        span.set_attribute("http.response.status_code", 202)


def _ns_per_call(function: Any, calls: int) -> float:
    best = min(timeit.repeat(function, number=calls, repeat=5))
    return best / calls * 1e9


def per_post(sink_url: str) -> dict[str, float]:
    baseline = _ns_per_call(_without_tracing, CALLS)
    assert not tracing.enabled()
    off = _ns_per_call(_instrumented_post, CALLS)
    noop = _ns_per_call(_on_the_noop_tracer, CALLS // 10)
    # The exporter reads its endpoint from the environment when it is built.
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink_url
    assert tracing.configure()
    on = _ns_per_call(_instrumented_post, CALLS // 10)
    tracing.shutdown()
    return {
        "baseline_ns": round(baseline, 1),
        "off_extra_ns": round(off - baseline, 1),
        "noop_tracer_extra_ns": round(noop - baseline, 1),
        "on_extra_ns": round(on - baseline, 1),
    }


# ---- whole processes -------------------------------------------------------------------------


def _start_gateway(data: Path, sink_url: str | None) -> tuple[subprocess.Popen[bytes], str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")} | {
        "TD_BACKEND_URL": "",
        "TD_ENROLLMENT_KEY": "bench",
    }
    if sink_url is not None:
        env |= {"OTEL_EXPORTER_OTLP_ENDPOINT": sink_url, "OTEL_BSP_SCHEDULE_DELAY": "200"}
    data.mkdir(parents=True)
    process = subprocess.Popen(
        [GATEWAY, "run", "--listen", "127.0.0.1:0", "--data-dir", str(data), *FLAGS],
        env=env,
    )
    address = data / "gateway.addr"
    deadline = time.monotonic() + 30
    while not address.exists() or not address.read_text().strip():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"td-gateway did not start (exit {process.poll()})")
        time.sleep(0.05)
    return process, "http://" + address.read_text().strip()


def _register(url: str) -> str:
    token: str = httpx.post(
        url + "/v1/agents/register",
        json={"agent_uid": "bench", "hostname": "bench"},
        headers={"X-Enrollment-Key": "bench"},
    ).json()["token"]
    return token


def _load(url: str, token: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, LOAD, "--load", url, "--token", token],
        capture_output=True,
        check=True,
        timeout=120,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def whole_process(sink_url: str, root: Path) -> dict[str, Any]:
    off, off_url = _start_gateway(root / "off", None)
    on, on_url = _start_gateway(root / "on", sink_url)
    try:
        tokens = {off_url: _register(off_url), on_url: _register(on_url)}
        rounds: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for i in range(ROUNDS):
            # Alternating which goes first, so neither always meets a warmer machine.
            if i % 2:
                on_run = _load(on_url, tokens[on_url])
                rounds.append((_load(off_url, tokens[off_url]), on_run))
            else:
                rounds.append((_load(off_url, tokens[off_url]), _load(on_url, tokens[on_url])))
    finally:
        _stop(off)
        _stop(on)
    ratios = [b["logs_per_s"] / a["logs_per_s"] for a, b in rounds]
    middle = sorted(range(ROUNDS), key=lambda i: ratios[i])[ROUNDS // 2]
    off_run, on_run = rounds[middle]
    return {
        "rounds": ROUNDS,
        "off_logs_per_s": round(off_run["logs_per_s"]),
        "on_logs_per_s": round(on_run["logs_per_s"]),
        "on_vs_off": round(statistics.median(ratios), 3),
        "round_ratios": [round(r, 3) for r in ratios],
        "off_p99_ms": round(off_run["p99_ms"], 1),
        "on_p99_ms": round(on_run["p99_ms"], 1),
        "non_202": sum(
            n
            for pair in rounds
            for run in pair
            for code, n in run["statuses"].items()
            if code != "202"
        ),
    }


def main() -> None:
    with running_collector(keep=False) as sink, tempfile.TemporaryDirectory() as root:
        process = whole_process(sink.url, Path(root))
        # Spans still queued in the gateway are exported at its exit; count after it.
        process["spans_exported_by_on"] = sink.received
        micro = per_post(sink.url)
    # The CPU one post costs the gateway, from the off rounds (two cores, so an upper bound).
    post_ns = 1e9 / (process["off_logs_per_s"] / LOGS_PER_POST)
    print(
        json.dumps(
            {
                "machine": "shared 2-core host; figures are noisy, compare the ratios",
                "process": process,
                "per_post": micro
                | {"off_share_of_post": round(micro["off_extra_ns"] / post_ns, 5)},
            }
        )
    )


if __name__ == "__main__":
    main()
