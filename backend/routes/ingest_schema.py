"""OpenAPI description of the ingest body, which the handler decodes itself (see ingest.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import msgspec
from litestar.openapi.spec import OpenAPIMediaType, Operation, RequestBody, Schema

from protocol.uplink import UplinkBatch

_REF = "#/components/schemas/{name}"
(_BATCH,), UPLINK_COMPONENTS = msgspec.json.schema_components([UplinkBatch], ref_template=_REF)


def uplink_components() -> dict[str, Schema]:
    """JSON Schemas of the uplink batch and the log kinds, for the OpenAPI components."""
    # Plain JSON Schema dicts: Litestar serialises them as they are.
    return cast(dict[str, Schema], UPLINK_COMPONENTS)


@dataclass
class IngestOperation(Operation):
    def __post_init__(self) -> None:
        schema = cast(Any, _BATCH)
        self.request_body = RequestBody(
            required=True,
            description="An UplinkBatch; JSON, or msgpack with Content-Type application/msgpack",
            content={
                "application/json": OpenAPIMediaType(schema=schema),
                "application/msgpack": OpenAPIMediaType(schema=schema),
            },
        )
