"""`make fuzz`: hostile input against real servers and every decoder; prints one JSON object.

1. Starts `td-backend serve` (embedded PostgreSQL in a temporary directory) and a
   `td-gateway run` enrolled in it, with an organisation, a gateway key and an agent token.
2. schemathesis over both OpenAPI documents — the backend's `/schema` (admin API with the
   admin token, ingest with the gateway key) and the gateway's agent API `/schema`
   (registration with the enrollment key, the rest with the agent token) — in positive and
   negative generation, with the `not_a_server_error` and response-schema checks.
3. hypothesis over every protocol decoder (JSON and msgpack, including bodies nested
   thousands deep, integers past 64 bits and NUL in every string) and the ISAPI parsers:
   each may only refuse with its own error (ProtocolError, DeviceError).

Exit status 1 when anything failed. `--examples N` per operation and per target.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

BIN = Path(sys.executable).parent
START_DEADLINE_S = 90.0
MAX_REPORTED = 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def child_env(own: dict[str, str]) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("TD_")}, **own}


def wait_for(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url}: the server exited; see {log}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {START_DEADLINE_S:g} s; see {log}")


@contextlib.contextmanager
def running_stack(data_dir: Path) -> Iterator[dict[str, str]]:
    """Backend and gateway on free ports; yields the URLs and credentials."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(name: str, command: list[str], env: dict[str, str]) -> tuple[Any, Path]:
        log = data_dir / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                command, env=child_env(env), stdout=out, stderr=out, start_new_session=True
            )
        processes.append(process)
        return process, log

    backend_port = free_port()
    backend_url = f"http://127.0.0.1:{backend_port}"
    backend_env = {"TD_DATA_DIR": str(data_dir / "backend"), "TD_LOG_FORMAT": "json"}
    try:
        process, log = start(
            "backend",
            [str(BIN / "td-backend"), "serve", "--host", "127.0.0.1", "--port", str(backend_port)],
            backend_env,
        )
        wait_for(f"{backend_url}/ready", process, log)
        org = json.loads(
            subprocess.run(
                [str(BIN / "td-backend"), "create-org", "fuzz"],
                env=child_env(backend_env),
                check=True,
                capture_output=True,
            ).stdout
        )
        admin = {"Authorization": f"Bearer {org['admin_token']}"}
        created = httpx.post(
            f"{backend_url}/v2/gateways", json={"name": "fuzz"}, headers=admin, timeout=30
        ).raise_for_status()
        gateway = created.json()
        gateway_port = free_port()
        gateway_url = f"http://127.0.0.1:{gateway_port}"
        process, log = start(
            "gateway",
            [str(BIN / "td-gateway"), "run"],
            {
                "TD_BACKEND_URL": backend_url,
                "TD_GATEWAY_API_KEY": gateway["api_key"],
                "TD_ENROLLMENT_KEY": gateway["enrollment_key"],
                "TD_LISTEN": f"127.0.0.1:{gateway_port}",
                "TD_DATA_DIR": str(data_dir / "gateway"),
            },
        )
        wait_for(f"{gateway_url}/health", process, log)
        registered = httpx.post(
            f"{gateway_url}/v1/agents/register",
            json={"agent_uid": "fuzz-pc", "hostname": "FUZZ-PC"},
            headers={"X-Enrollment-Key": gateway["enrollment_key"]},
            timeout=30,
        ).raise_for_status()
        # Uploads are fuzzed as a gateway that never enrolled: the running one holds a client
        # certificate, so its unsigned batches would be refused before they are read.
        uploader = httpx.post(
            f"{backend_url}/v2/gateways", json={"name": "uploads"}, headers=admin, timeout=30
        ).raise_for_status()
        upload_key = uploader.json()["api_key"]
        path_ids = provision_targets(backend_url, admin, upload_key)
        yield {
            "path_ids": path_ids,
            "backend_url": backend_url,
            "gateway_url": gateway_url,
            "admin_token": org["admin_token"],
            "api_key": upload_key,
            "enrollment_key": gateway["enrollment_key"],
            "agent_token": registered.json()["token"],
        }
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def provision_targets(backend_url: str, admin: dict[str, str], api_key: str) -> dict[str, str]:
    """Ids that exist, so generated requests reach past the 404 of an unknown id. Their
    gateway is not the running one: fuzzing may disable it or rotate its key."""
    with httpx.Client(base_url=backend_url, headers=admin, timeout=30) as client:
        victim = client.post("/v2/gateways", json={"name": "target"}).raise_for_status().json()
        policy = client.post("/v2/policies", json={"name": "p", "body": {}}).raise_for_status()
        device = client.post(
            "/v2/devices",
            json={"gateway_id": victim["id"], "vendor": "hikvision", "name": "d",
                  "host": "127.0.0.1", "port": 9, "username": "u", "password": "p"},
        ).raise_for_status()  # fmt: skip
        command = client.post(
            f"/v2/gateways/{victim['id']}/commands", json={"type": "ping"}
        ).raise_for_status()
        now = dt.datetime.now(dt.UTC).isoformat()
        client.post(
            "/v2/ingest/logs",
            headers={"X-API-Key": api_key},
            json={"batch_id": str(uuid.uuid4()), "gateway_id": "", "created_at": now,
                  "groups": [{"agent_uid": "seen-pc", "logs": [
                      {"kind": "idle", "id": str(uuid.uuid4()), "ts": now, "duration_ms": 1}]}]},
        ).raise_for_status()  # fmt: skip
        agent = client.get("/v2/agents").raise_for_status().json()["items"][0]
    return {
        "gateway_id": victim["id"],
        "policy_id": policy.json()["id"],
        "device_id": device.json()["id"],
        "command_id": command.json()["id"],
        "agent_id": agent["id"],
    }


# ---- schemathesis over the OpenAPI documents ------------------------------------------------


def fuzz_api(
    schema_url: str,
    base_url: str,
    headers_for: Callable[[str, str], dict[str, str]],
    examples: int,
    path_ids: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Every operation of the document, positive and negative cases; failures by check."""
    import schemathesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation import GenerationMode
    from schemathesis.specs.openapi.checks import response_schema_conformance

    schema = schemathesis.openapi.from_url(schema_url)
    checks = [not_a_server_error, response_schema_conformance]
    calls = 0
    statuses: dict[str, int] = {}
    failures: list[dict[str, Any]] = []
    operations = 0

    def fuzz_operation(
        operation: Any, mode: Any, headers: dict[str, str], ids: dict[str, str] | None
    ) -> None:
        label = f"{operation.method.upper()} {operation.path}"
        strategy = operation.as_strategy(generation_mode=mode, path_parameters=ids)

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def run(case: Any) -> None:
            case.headers = {**(case.headers or {}), **headers}
            response = case.call(base_url=base_url, timeout=60)
            check(case, response, checks, mode.value)
            if mode is GenerationMode.POSITIVE and isinstance(case.body, dict):
                # Schemas say little about depth, width of integers or NUL; a valid body
                # with each of those pushed in must still be refused, not fail the server.
                request = case.as_transport_kwargs(base_url=base_url)
                for variant, content in hostile_variants(case.body).items():
                    hostile(label, request, variant, content)

        def hostile(label: str, request: dict[str, Any], variant: str, content: bytes) -> None:
            nonlocal calls
            headers = {**(request.get("headers") or {}), "Content-Type": "application/json"}
            headers.pop("Content-Length", None)
            response = httpx.request(
                request["method"], request["url"], params=request.get("params"),
                headers=headers, content=content, timeout=60,
            )  # fmt: skip
            calls += 1
            key = str(response.status_code)
            statuses[key] = statuses.get(key, 0) + 1
            problem = None
            if response.status_code >= 500:
                problem = "server error"
            elif response.status_code >= 400:
                try:
                    body = response.json()
                    if set(body) != {"error", "detail"}:
                        problem = "an error body without exactly error and detail"
                except ValueError:
                    problem = "an error body that is not JSON"
            if problem is not None:
                failures.append(
                    {"operation": label, "mode": f"hostile:{variant}", "status": key,
                     "failure": problem, "body": response.text[:300]}
                )  # fmt: skip

        def check(case: Any, response: Any, with_checks: list[Any], how: str) -> None:
            nonlocal calls
            calls += 1
            key = str(response.status_code)
            statuses[key] = statuses.get(key, 0) + 1
            try:
                case.validate_response(response, checks=with_checks)
            except Exception as exc:
                failures.append(
                    {
                        "operation": label,
                        "mode": how,
                        "status": response.status_code,
                        "failure": _first_line(exc),
                        "reproduce": case.as_curl_command(base_url=base_url)[:2000],
                        "body": response.text[:300],
                    }
                )

        try:
            run()
        except Unsatisfiable:
            pass  # nothing to negate: the operation takes no parameters and no body
        except Exception as exc:  # hypothesis itself gave up
            failures.append(
                {
                    "operation": label,
                    "mode": mode.value,
                    "failure": f"generation: {_first_line(exc)}",
                }
            )

    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        headers = headers_for(operation.method.upper(), operation.path)
        names = {p.name for p in operation.path_parameters}
        known = {name: value for name, value in (path_ids or {}).items() if name in names}
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz_operation(operation, mode, headers, None)
            if names and set(known) == names:
                fuzz_operation(operation, mode, headers, known)
    return {
        "operations": operations,
        "calls": calls,
        "statuses": dict(sorted(statuses.items())),
        "server_errors": sum(1 for f in failures if str(f.get("status", "")).startswith("5")),
        "failures": len(failures),
        "examples": failures[:MAX_REPORTED],
    }


def hostile_variants(body: dict[str, Any]) -> dict[str, bytes]:
    """`body` with NUL in every string, every integer past 64 bits, and nested 3,000 deep."""

    def replace(value: Any, leaf: Callable[[Any], Any]) -> Any:
        if isinstance(value, dict):
            return {key: replace(item, leaf) for key, item in value.items()}
        if isinstance(value, list):
            return [replace(item, leaf) for item in value]
        return leaf(value)

    def nul(value: Any) -> Any:
        return value + "\x00" if isinstance(value, str) else value

    def wide(value: Any) -> Any:
        return 2**70 if isinstance(value, int) and not isinstance(value, bool) else value

    valid = json.dumps(body).encode()
    deep = b"[" * 3000 + b"]" * 3000
    return {
        "nul": json.dumps(replace(body, nul)).encode(),
        "int": json.dumps(replace(body, wide)).encode(),
        "deep": valid[:-1] + (b", " if body else b"") + b'"nested": ' + deep + b"}",
    }


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}"


# ---- hypothesis over the decoders -----------------------------------------------------------

# Any character a UTF-8 body can carry (NUL included); lone surrogates cannot be encoded.
_chars = st.characters(exclude_categories=("Cs",))
_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(_chars, max_size=20)
    | st.sampled_from(["\x00", "a\x00b", "2026-12-01T00:00:00Z", "0001-01-01T00:00:00Z"])
)
json_values = st.recursive(
    _leaf,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(_chars, max_size=8), inner, max_size=4)
    ),
    max_leaves=25,
)


def _nested(depth: int, leaf: bytes = b"0") -> bytes:
    return b"[" * depth + leaf + b"]" * depth


def _mutated_message(template: dict[str, Any]) -> Any:
    """A valid-looking message with one field replaced by something hostile."""
    field = st.sampled_from(sorted(template))
    return st.builds(
        lambda name, value: {**template, name: value}, field, json_values | st.just({"a": 2**70})
    )


def fuzz_decoders(examples: int) -> dict[str, Any]:
    """Each protocol decoder, with JSON and msgpack, may only raise ProtocolError."""
    from protocol import codec, storable
    from protocol.agent import LogsRequest
    from protocol.codec import ProtocolError

    now = "2026-12-01T00:00:00Z"
    log = {
        "kind": "active_window",
        "id": str(uuid.uuid4()),
        "ts": now,
        "app": "a",
        "duration_ms": 1,
    }
    templates: dict[str, dict[str, Any]] = {
        "logs_request": {"logs": [log]},
        "register_request": {"agent_uid": "pc", "hostname": "PC"},
        "policy_body": {"idle_threshold_s": 60, "blocked_apps": ["x"]},
        "uplink_batch": {
            "batch_id": str(uuid.uuid4()),
            "gateway_id": "g",
            "created_at": now,
            "groups": [{"agent_uid": "pc", "logs": [log]}],
        },
        "gateway_message": {
            "type": "command_result",
            "command_id": str(uuid.uuid4()),
            "status": "SUCCESS",
            "result": {"a": 1},
        },
        "backend_message": {
            "type": "command",
            "id": str(uuid.uuid4()),
            "target": "gateway",
            "command_type": "ping",
            "expires_at": now,
        },
    }
    crashes: list[dict[str, str]] = []
    cases = 0

    def attempt(name: str, decoder: Any, body: bytes, as_msgpack: bool) -> None:
        nonlocal cases
        cases += 1
        try:
            decoded = decoder.decode_msgpack(body) if as_msgpack else decoder.decode_json(body)
            if isinstance(decoded, LogsRequest):
                # What a decoder accepts must also survive the storable-log rule.
                now = dt.datetime.now(dt.UTC)
                storable.make_storable(decoded.logs, "$.logs", now, storable.AGENT_WINDOW)
            codec.json_encoder.encode(decoded)
            codec.msgpack_encoder.encode(decoded)
        except ProtocolError:
            pass
        except Exception as exc:
            crashes.append(
                {
                    "decoder": name,
                    "format": "msgpack" if as_msgpack else "json",
                    "error": _first_line(exc),
                    "body": body[:200].decode("latin-1"),
                    "trace": traceback.format_exc(limit=3)[-400:],
                }
            )

    def fuzz_decoder(name: str, template: dict[str, Any]) -> None:
        decoder = getattr(codec, name)
        hostile = st.one_of(
            _mutated_message(template),
            json_values,
            st.integers(1, 900).map(lambda d: {**template, "extra": json.loads(_nested(d))}),
        )

        @settings(max_examples=examples, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(value=hostile, raw=st.binary(max_size=64), depth=st.integers(500, 5000))
        def run(value: Any, raw: bytes, depth: int) -> None:
            text = json.dumps(value).encode()
            attempt(name, decoder, text, as_msgpack=False)
            attempt(name, decoder, raw, as_msgpack=False)
            attempt(name, decoder, raw, as_msgpack=True)
            attempt(name, decoder, text[:-1] + b',"deep":' + _nested(depth) + b"}", False)
            attempt(name, decoder, b"\x91" * depth + b"\x90", as_msgpack=True)
            with contextlib.suppress(OverflowError):
                attempt(name, decoder, msgspec.msgpack.encode(value), as_msgpack=True)

        run()

    for name, template in templates.items():
        fuzz_decoder(name, template)
    return {"cases": cases, "crashes": len(crashes), "examples": crashes[:MAX_REPORTED]}


def fuzz_isapi(examples: int) -> dict[str, Any]:
    """Each ISAPI parser may only raise DeviceError, whatever the terminal sends."""
    from gateway.devices import isapi, isapi_status
    from gateway.devices.base import DeviceError

    parsers: dict[str, Callable[[bytes], Any]] = {
        "parse_device_info": isapi.parse_device_info,
        "parse_device_status": isapi.parse_device_status,
        "parse_work_status": isapi.parse_work_status,
        "parse_time": isapi.parse_time,
        "parse_event_page": isapi.parse_event_page,
        "parse_user_page": isapi.parse_user_page,
        "parse_status": isapi_status.parse_status,
        "parse_user_check": isapi_status.parse_user_check,
        "check_ok": lambda body: isapi_status.check_ok(400, body, "fuzz"),
    }
    keys = st.sampled_from(
        ["AcsEvent", "InfoList", "serialNo", "time", "employeeNo", "UserInfoSearch", "UserInfo",
         "AcsWorkStatus", "doorStatus", "responseStatusStrg", "numOfMatches", "totalMatches",
         "statusCode", "subStatusCode", "errorMsg", "major", "minor", "cardNo", "Valid"]
    )  # fmt: skip
    shaped = st.recursive(
        json_values,
        lambda inner: st.dictionaries(keys, inner, max_size=5) | st.lists(inner, max_size=3),
        max_leaves=30,
    )
    tags = st.sampled_from(
        ["DeviceInfo", "serialNumber", "model", "firmwareVersion", "DeviceStatus", "Time",
         "localTime", "timeZone", "ResponseStatus", "statusCode", "subStatusCode", "cpuList"]
    )  # fmt: skip
    xml = st.recursive(
        st.text(_chars, max_size=30).map(lambda t: t.replace("&", "&amp;").replace("<", "&lt;")),
        lambda inner: (
            st.builds(lambda tag, body: f"<{tag}>{body}</{tag}>", tags, inner)
            | st.lists(inner, max_size=3).map("".join)
        ),
        max_leaves=15,
    )
    crashes: list[dict[str, str]] = []
    cases = 0

    def fuzz_parser(name: str, parse: Callable[[bytes], Any]) -> None:
        @settings(max_examples=examples, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(body=st.one_of(
            shaped.map(msgspec.json.encode),
            xml.map(lambda x: f'<?xml version="1.0"?>{x}'.encode()),
            st.binary(max_size=200),
            st.integers(100, 5000).map(_nested),
        ))  # fmt: skip
        def run(body: bytes) -> None:
            nonlocal cases
            cases += 1
            try:
                parse(body)
            except DeviceError:
                pass
            except Exception as exc:
                crashes.append(
                    {
                        "parser": name,
                        "error": _first_line(exc),
                        "body": body[:200].decode("latin-1"),
                    }
                )

        run()

    for name, parse in parsers.items():
        fuzz_parser(name, parse)
    return {"cases": cases, "crashes": len(crashes), "examples": crashes[:MAX_REPORTED]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=50, help="examples per operation/target")
    args = parser.parse_args()
    started = time.monotonic()
    # Hypothesis prints seeds and notes on stdout; the one JSON object must be all it holds.
    with contextlib.redirect_stdout(sys.stderr):
        report = fuzz_everything(args.examples)
    report["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


def fuzz_everything(examples: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="td-fuzz-") as tmp:
        data_dir = Path(tmp)
        with running_stack(data_dir) as stack:
            admin = {"Authorization": f"Bearer {stack['admin_token']}"}

            def backend_headers(method: str, path: str) -> dict[str, str]:
                if path.startswith("/v2/ingest"):
                    return {"X-API-Key": stack["api_key"]}
                return admin

            def gateway_headers(method: str, path: str) -> dict[str, str]:
                if path == "/v1/agents/register":
                    return {"X-Enrollment-Key": stack["enrollment_key"]}
                return {"Authorization": f"Bearer {stack['agent_token']}"}

            backend = fuzz_api(
                f"{stack['backend_url']}/schema/openapi.json",
                stack["backend_url"],
                backend_headers,
                examples,
                stack["path_ids"],  # type: ignore[arg-type]
            )
            gateway = fuzz_api(
                f"{stack['gateway_url']}/schema",
                stack["gateway_url"],
                gateway_headers,
                examples,
            )
            logs = {
                name: _tail(data_dir / f"{name}.log")
                for name in ("backend", "gateway")
                if backend["server_errors"] or gateway["server_errors"]
            }
    decoders = fuzz_decoders(examples)
    isapi = fuzz_isapi(examples)
    ok = not (backend["failures"] or gateway["failures"] or decoders["crashes"] or isapi["crashes"])
    return {
        "ok": ok,
        "examples_per_target": examples,
        "backend_api": backend,
        "gateway_api": gateway,
        "protocol_decoders": decoders,
        "isapi_parsers": isapi,
        **({"server_logs": logs} if logs else {}),
    }


def _tail(path: Path, lines: int = 30) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except FileNotFoundError:
        return []


if __name__ == "__main__":
    sys.exit(main())
