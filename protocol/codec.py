"""Module-level encoders and decoders, and the one error every bad message becomes.

Decoders are built once per type (msgspec's fastest path); `ProtocolError` names the field
that is wrong as a path, e.g. `$.logs[3].ts: Expected `datetime`, got `int``.
"""

from __future__ import annotations

import hashlib
from typing import Any, Generic, TypeVar

import msgspec

from protocol.agent import LogsRequest, PolicyBody, RegisterRequest
from protocol.control import BackendMessage, GatewayMessage
from protocol.uplink import UplinkBatch

T = TypeVar("T")

MSGPACK = "application/msgpack"
JSON = "application/json"

json_encoder = msgspec.json.Encoder()
msgpack_encoder = msgspec.msgpack.Encoder()
# Sorted keys make the encoding canonical: equal bodies give equal bytes.
_canonical_encoder = msgspec.msgpack.Encoder(order="sorted")


class ProtocolError(ValueError):
    """A message that does not match the protocol; `path` points at the offending field."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason

    @classmethod
    def from_msgspec(cls, exc: msgspec.DecodeError) -> ProtocolError:
        text = str(exc)
        reason, sep, where = text.rpartition(" - at `")
        if sep:
            return cls(where.rstrip("`"), reason)
        return cls("$", text)


def _too_deep() -> ProtocolError:
    # msgspec guards its recursion with the interpreter's limit, so a body nested ~1,000
    # deep (even in a field the type ignores) ends as RecursionError, not a crash.
    return ProtocolError("$", "nested too deeply; no message of this protocol nests like that")


def is_msgpack(content_type: str | None) -> bool:
    """True for `application/msgpack` (and the older `x-msgpack`); anything else is JSON."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media in (MSGPACK, "application/x-msgpack", "application/vnd.msgpack")


class Codec(Generic[T]):
    """A JSON and a msgpack decoder for one type, built once."""

    def __init__(self, type_: type[T] | Any) -> None:
        self._json = msgspec.json.Decoder(type_)
        self._msgpack = msgspec.msgpack.Decoder(type_)

    def decode_json(self, data: bytes | bytearray | memoryview | str) -> T:
        try:
            return self._json.decode(data)  # type: ignore[no-any-return]
        except msgspec.DecodeError as exc:
            raise ProtocolError.from_msgspec(exc) from None
        except RecursionError:
            raise _too_deep() from None

    def decode_msgpack(self, data: bytes | bytearray | memoryview) -> T:
        try:
            return self._msgpack.decode(data)  # type: ignore[no-any-return]
        except msgspec.DecodeError as exc:
            raise ProtocolError.from_msgspec(exc) from None
        except RecursionError:
            raise _too_deep() from None

    def decode(self, data: bytes, content_type: str | None) -> T:
        if is_msgpack(content_type):
            return self.decode_msgpack(data)
        return self.decode_json(data)


logs_request = Codec[LogsRequest](LogsRequest)
register_request = Codec[RegisterRequest](RegisterRequest)
policy_body = Codec[PolicyBody](PolicyBody)
uplink_batch = Codec[UplinkBatch](UplinkBatch)
gateway_message = Codec[GatewayMessage](GatewayMessage)
backend_message = Codec[BackendMessage](BackendMessage)


def encode(obj: Any, content_type: str | None = JSON) -> bytes:
    if is_msgpack(content_type):
        return msgpack_encoder.encode(obj)
    return json_encoder.encode(obj)


def policy_checksum(body: PolicyBody) -> str:
    """sha256 of the canonical (sorted-key msgpack) encoding of the body, in hex."""
    return hashlib.sha256(_canonical_encoder.encode(body)).hexdigest()


def convert_policy_body(raw: Any) -> PolicyBody:
    """Validate a decoded JSON object (e.g. from a request) as a policy body."""
    try:
        return msgspec.convert(raw, PolicyBody)
    except msgspec.ValidationError as exc:
        raise ProtocolError.from_msgspec(exc) from None
    except RecursionError:
        raise _too_deep() from None
