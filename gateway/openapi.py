"""The OpenAPI document of the agent API, served at /schema for agent (C#) client authors.

Schemas come from the protocol Structs themselves, so the document cannot drift from the
decoders that enforce it.
"""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.health import Health
from gateway.http_io import ErrorBody
from protocol.agent import AgentPolicy, LogsRequest, LogsResponse, RegisterRequest, RegisterResponse

_REF = "#/components/schemas/{name}"


def _ref(struct: type[Any]) -> dict[str, str]:
    return {"$ref": _REF.format(name=struct.__name__)}


def _body(struct: type[Any]) -> dict[str, Any]:
    schema = {"schema": _ref(struct)}
    return {"content": {"application/json": schema, "application/msgpack": schema}}


def _answer(description: str, struct: type[Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description}
    if struct is not None:
        answer["content"] = {"application/json": {"schema": _ref(struct)}}
    return answer


def _errors(*codes: int) -> dict[str, Any]:
    meaning = {
        400: "Invalid body; `detail` names the field, e.g. `$.logs[3].ts: ...`",
        401: "Missing or invalid credentials",
        403: "The agent_uid was revoked by an operator; it registers again after a reset",
        409: "The agent_uid is registered: re-register with its current token (Bearer)"
        " or after an operator's reset",
        413: "Body larger than the gateway accepts (also after gzip inflation)",
        415: "Unsupported Content-Encoding",
        503: (
            "Buffer full (reject mode), the gateway's disk full (storage_full), or no"
            " enrollment key yet; see Retry-After"
        ),
    }
    return {str(code): _answer(meaning[code], ErrorBody) for code in codes}


_BEARER: list[dict[str, list[str]]] = [{"bearer": []}]


def document() -> bytes:
    """The OpenAPI 3.1 document as JSON bytes (built once at start)."""
    _, components = msgspec.json.schema_components(
        [
            LogsRequest,
            LogsResponse,
            RegisterRequest,
            RegisterResponse,
            AgentPolicy,
            Health,
            ErrorBody,
        ],
        ref_template=_REF,
    )
    paths = {
        "/v1/agents/register": {
            "post": {
                "summary": "Register an agent, or re-register it with its current token;"
                " returns a new token",
                "parameters": [
                    {
                        "name": "X-Enrollment-Key",
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "Authorization",
                        "in": "header",
                        "required": False,
                        "description": "Bearer <current token>, to register an agent_uid again",
                        "schema": {"type": "string"},
                    },
                ],
                "requestBody": {"required": True, **_body(RegisterRequest)},
                "responses": {
                    "200": _answer("Registered", RegisterResponse),
                    **_errors(400, 401, 403, 409, 413, 503),
                },
            }
        },
        "/v1/logs": {
            "post": {
                "summary": "Send up to 1000 logs; 202 only once they are stored durably",
                "security": _BEARER,
                "parameters": [
                    {
                        "name": "Content-Encoding",
                        "in": "header",
                        "required": False,
                        "schema": {"enum": ["gzip", "identity"]},
                    }
                ],
                "requestBody": {"required": True, **_body(LogsRequest)},
                "responses": {
                    "202": _answer("Stored", LogsResponse),
                    **_errors(400, 401, 413, 415, 503),
                },
            }
        },
        "/v1/policy": {
            "get": {
                "summary": "The agent's policy; long-polls with ?wait=S and If-None-Match",
                "security": _BEARER,
                "parameters": [
                    {
                        "name": "wait",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "number", "minimum": 0, "maximum": 300},
                    },
                    {
                        "name": "If-None-Match",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": _answer("The policy, with an ETag", AgentPolicy),
                    "304": _answer("Unchanged"),
                    **_errors(400, 401),
                },
            }
        },
        "/health": {
            "get": {
                "summary": "Buffer and uplink figures",
                "responses": {"200": _answer("Health", Health)},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (text)",
                "responses": {"200": _answer("Metrics")},
            }
        },
    }
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "TD gateway agent API", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
    return msgspec.json.encode(doc)
