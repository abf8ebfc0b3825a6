"""The agent-facing HTTP API, a plain ASGI app (see gateway/http_io.py for why).

POST /v1/agents/register   X-Enrollment-Key   -> {"agent_id", "token", "policy"}
                           (+ Bearer token to re-register a uid already registered)
POST /v1/logs              Bearer token       -> 202 {"accepted": n} after commit
GET  /v1/policy            Bearer token       -> policy + ETag; If-None-Match; ?wait=S
GET  /health, /metrics, /schema
"""

from __future__ import annotations

import datetime as dt
import hmac
import urllib.parse
from collections.abc import Callable, Mapping

import structlog
import trio
from opentelemetry.trace import SpanKind

from gateway import openapi, tracing
from gateway.buffer import Buffer
from gateway.config import GatewayConfig
from gateway.errors import (
    AgentRevoked,
    BufferFull,
    BufferTooLarge,
    IdentityTaken,
    StorageError,
    StorageFull,
)
from gateway.health import Health
from gateway.http_io import (
    ClientGone,
    HttpError,
    Receive,
    Scope,
    Send,
    header_map,
    read_body,
    respond,
    respond_error,
    respond_json,
)
from gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gateway.metrics import Metrics
from gateway.state import Agent, State, etag
from protocol import codec, storable
from protocol.agent import AGENT_LOG_KINDS, LogsResponse, RegisterResponse, reserved_uid_prefix

log = structlog.get_logger("gateway.api")

# Register bodies are tiny; anything bigger is not an agent.
REGISTER_MAX_BYTES = 16 * 1024
MAX_POLICY_WAIT_S = 300.0

_UNAUTHORIZED = HttpError(
    401,
    "unauthorized",
    "missing or invalid bearer token; register the agent again at POST /v1/agents/register",
    {"WWW-Authenticate": "Bearer"},
)


class AgentApi:
    """The ASGI application. `health` builds the /health document on demand."""

    def __init__(
        self,
        config: GatewayConfig,
        buffer: Buffer,
        state: State,
        metrics: Metrics,
        health: Callable[[], Health],
    ) -> None:
        self._config = config
        self._buffer = buffer
        self._state = state
        self._metrics = metrics
        self._health = health
        self._schema = openapi.document()
        self._routes = {
            ("POST", "/v1/logs"): self._post_logs,
            ("POST", "/v1/agents/register"): self._register,
            ("GET", "/v1/policy"): self._get_policy,
            ("GET", "/health"): self._get_health,
            ("GET", "/metrics"): self._get_metrics,
            ("GET", "/schema"): self._get_schema,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope["path"]
        handler = self._routes.get((scope["method"], path))
        status = 500
        try:
            if handler is None:
                known = any(route_path == path for _, route_path in self._routes)
                if known:
                    raise HttpError(405, "method_not_allowed", f"{scope['method']} {path}")
                raise HttpError(404, "not_found", f"no route {path}")
            status = await handler(scope, receive, send)
        except HttpError as exc:
            status = exc.status
            await respond_error(send, exc)
        except ClientGone:
            status = 499
        except StorageError as exc:
            # The gateway's own storage failed (a full disk, most often), not the request:
            # 503 + Retry-After has agents keep the logs and try again later.
            log.error("storage_error", path=path, error=str(exc))
            code = "storage_full" if isinstance(exc, StorageFull) else "storage_error"
            retry_after = exc.retry_after_s if isinstance(exc, StorageFull) else 10
            status = 503
            await respond_error(
                send, HttpError(503, code, str(exc), {"Retry-After": str(retry_after)})
            )
        except Exception:
            # A bug, not the client's data: still an answer with a body, never a dropped one.
            status = 500
            log.exception("unhandled_error", path=path)
            await respond_error(
                send, HttpError(500, "internal_error", "the gateway failed; the error is logged")
            )
        finally:
            route = path if handler is not None else "other"
            self._metrics.count_request(route, status)

    # ---- agents ----------------------------------------------------------------------------

    def _authenticate(self, headers: Mapping[str, str]) -> Agent:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        agent = None
        if scheme.lower() == "bearer":
            agent = self._state.authenticate(token.strip())
        # An agent registered under a reserved uid by an older version cannot speak either.
        if agent is None or reserved_uid_prefix(agent.agent_uid) is not None:
            raise _UNAUTHORIZED
        return agent

    def _enrollment_key(self) -> str:
        return self._config.enrollment_key or self._state.setting("enrollment_key") or ""

    async def _register(self, scope: Scope, receive: Receive, send: Send) -> int:
        headers = header_map(scope)
        expected = self._enrollment_key()
        if not expected:
            raise HttpError(
                503,
                "enrollment_unavailable",
                "this gateway has no enrollment key yet: set TD_ENROLLMENT_KEY or let it"
                " connect to the backend",
                {"Retry-After": "30"},
            )
        given = headers.get("x-enrollment-key", "")
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise HttpError(
                401, "invalid_enrollment_key", "the X-Enrollment-Key header is missing or wrong"
            )
        body = await read_body(receive, headers, REGISTER_MAX_BYTES)
        try:
            request = codec.register_request.decode(body, headers.get("content-type"))
        except codec.ProtocolError as exc:
            raise HttpError(400, "invalid_body", str(exc)) from None
        prefix = reserved_uid_prefix(request.agent_uid)
        if prefix is not None:
            raise HttpError(
                400,
                "invalid_body",
                f"$.agent_uid: the prefix {prefix!r} is reserved for the gateway's own"
                " sources; choose an agent_uid that does not start with it",
            )
        scheme, _, presented = headers.get("authorization", "").partition(" ")
        try:
            agent, token = await self._state.register(
                request, presented.strip() if scheme.lower() == "bearer" else ""
            )
        except AgentRevoked:
            raise HttpError(
                403,
                "agent_revoked",
                f"agent_uid {request.agent_uid!r} was revoked by an operator; it can register"
                " again after an operator resets it (POST /v2/agents/{id}/reset)",
            ) from None
        except IdentityTaken:
            raise HttpError(
                409,
                "agent_uid_taken",
                f"agent_uid {request.agent_uid!r} is already registered on this gateway;"
                " re-register with that agent's current token (Authorization: Bearer), or ask"
                " an operator to reset it (POST /v2/agents/{id}/reset)",
            ) from None
        log.info("agent_registered", agent_id=agent.agent_id, agent_uid=agent.agent_uid)
        policy = self._state.policy_for(agent.agent_uid)
        answer = RegisterResponse(agent_id=agent.agent_id, token=token, policy=policy)
        await respond_json(send, 200, answer)
        return 200

    async def _post_logs(self, scope: Scope, receive: Receive, send: Send) -> int:
        headers = header_map(scope)
        with tracing.span(
            "POST /v1/logs", context=tracing.extract(headers), kind=SpanKind.SERVER
        ) as span:
            try:
                status = await self._accept_logs(headers, receive, send)
            except HttpError as exc:
                span.set_attribute("http.response.status_code", exc.status)
                raise
            span.set_attribute("http.response.status_code", status)
            return status

    async def _accept_logs(self, headers: Mapping[str, str], receive: Receive, send: Send) -> int:
        agent = self._authenticate(headers)
        body = await read_body(receive, headers, self._config.max_request_bytes)
        try:
            request = codec.logs_request.decode(body, headers.get("content-type"))
            storable.check_agent_logs(request.logs, dt.datetime.now(dt.UTC))
        except codec.ProtocolError as exc:
            detail = str(exc)
            if exc.path.endswith(".kind"):
                detail += f"; an agent may send {', '.join(AGENT_LOG_KINDS)}"
            raise HttpError(400, "invalid_body", detail) from None
        n_logs = len(request.logs)
        if n_logs:
            payload = codec.msgpack_encoder.encode(request.logs)
            try:
                await self._buffer.append_encoded(agent.agent_uid, n_logs, payload)
            except BufferFull as exc:
                self._metrics.logs_rejected.inc(n_logs)
                raise HttpError(
                    503, "buffer_full", str(exc), {"Retry-After": str(exc.retry_after_s)}
                ) from None
            except BufferTooLarge as exc:
                raise HttpError(413, "too_large", str(exc)) from None
            self._metrics.logs_accepted.inc(n_logs)
        await respond_json(send, 202, LogsResponse(accepted=n_logs))
        return 202

    async def _get_policy(self, scope: Scope, receive: Receive, send: Send) -> int:
        headers = header_map(scope)
        agent = self._authenticate(headers)
        query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
        wait_s = _wait_seconds(query.get("wait", ["0"])[-1])
        known = headers.get("if-none-match", "").strip()
        policy = self._state.policy_for(agent.agent_uid)
        if wait_s and known == etag(policy):
            with self._metrics.policy_long_polls.track_inprogress(), trio.move_on_after(wait_s):
                while known == etag(policy):
                    # No await between reading the policy and taking the event: no lost wake-up.
                    await self._state.policy_change_event().wait()
                    policy = self._state.policy_for(agent.agent_uid)
        tag = etag(policy)
        if known == tag:
            await respond(send, 304, b"", [(b"etag", tag.encode())])
            return 304
        await respond_json(send, 200, policy, {"ETag": tag, "Cache-Control": "no-cache"})
        return 200

    # ---- operators -------------------------------------------------------------------------

    async def _get_health(self, scope: Scope, receive: Receive, send: Send) -> int:
        await respond_json(send, 200, self._health())
        return 200

    async def _get_metrics(self, scope: Scope, receive: Receive, send: Send) -> int:
        body = self._metrics.render()
        await respond(send, 200, body, [(b"content-type", METRICS_CONTENT_TYPE.encode())])
        return 200

    async def _get_schema(self, scope: Scope, receive: Receive, send: Send) -> int:
        await respond(send, 200, self._schema)
        return 200


def _wait_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise HttpError(
            400, "invalid_query", f"wait must be a number of seconds, got {text!r}"
        ) from None
    if not 0 <= value <= MAX_POLICY_WAIT_S:
        raise HttpError(
            400, "invalid_query", f"wait must be between 0 and {MAX_POLICY_WAIT_S:g} seconds"
        )
    return value


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
