"""How ISAPI terminals say yes or no, and the readers every ISAPI document needs.

An answer is a ResponseStatus (XML, any namespace), a JSON status, or on 401 a userCheck
body; each failure maps to one DeviceError named by its cause. Parse errors become
DeviceError of kind PROTOCOL, so callers handle exactly one error type.
"""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET
from typing import Any

import msgspec

from gateway.devices.base import DeviceError, DeviceErrorKind

# statusCode 7 ("Reboot Required") is a success that asks for a reboot to take effect.
_OK_STATUS_CODES = (1, 7)


class IsapiStatus(msgspec.Struct, kw_only=True):
    status_code: int
    status_string: str = ""
    sub_status_code: str = ""
    error_code: int | None = None
    error_msg: str | None = None
    request_url: str | None = None


class UserCheck(msgspec.Struct, kw_only=True):
    locked: bool
    unlock_in_s: int | None = None
    retries_left: int | None = None


def protocol_error(what: str, detail: str) -> DeviceError:
    return DeviceError(
        DeviceErrorKind.PROTOCOL, f"{what}: the device sent an answer we cannot read ({detail})"
    )


# ---- generic readers ------------------------------------------------------------------------


def local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_xml(body: bytes, what: str) -> ET.Element:
    try:
        return ET.fromstring(body)
    except (ET.ParseError, LookupError, ValueError) as exc:  # LookupError: bad encoding
        raise protocol_error(what, f"invalid XML: {exc}") from None


def child_text(elem: ET.Element, name: str) -> str | None:
    """Text of the first descendant called `name`, whatever its namespace."""
    for node in elem.iter():
        if node is not elem and local_name(node.tag) == name:
            return (node.text or "").strip()
    return None


def as_list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def as_dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def parse_json(body: bytes, what: str) -> dict[str, Any]:
    try:
        value = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise protocol_error(what, f"invalid JSON: {exc}") from None
    except RecursionError:
        # msgspec bounds its recursion by the interpreter's limit; no terminal nests so deep.
        raise protocol_error(what, "JSON nested too deeply") from None
    if not isinstance(value, dict):
        raise protocol_error(what, "JSON is not an object")
    return value


def as_int(value: object, default: int | None = None) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            return int(text, 16) if text.lower().startswith("0x") else int(text)
        except ValueError:
            return default
    return default


def as_str(value: object) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


def parse_device_time(text: str) -> dt.datetime:
    """ISAPI timestamps; a few firmwares omit the offset, which we then read as UTC."""
    value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


# ---- status and errors ----------------------------------------------------------------------


def parse_status(body: bytes) -> IsapiStatus | None:
    """A ResponseStatus (XML) or JSON status; None when the body is neither."""
    text = body.lstrip()
    if text.startswith(b"{"):
        try:
            data = parse_json(text, "status")
        except DeviceError:
            return None
        code = as_int(data.get("statusCode"))
        if code is None:
            return None
        return IsapiStatus(
            status_code=code,
            status_string=str(data.get("statusString", "")),
            sub_status_code=str(data.get("subStatusCode", "")),
            error_code=as_int(data.get("errorCode")),
            error_msg=as_str(data.get("errorMsg")),
            request_url=as_str(data.get("requestURL")),
        )
    if text.startswith(b"<"):
        try:
            root = parse_xml(text, "status")
        except DeviceError:
            return None
        if local_name(root.tag) != "ResponseStatus":
            return None
        code = as_int(child_text(root, "statusCode"))
        if code is None:
            return None
        return IsapiStatus(
            status_code=code,
            status_string=child_text(root, "statusString") or "",
            sub_status_code=child_text(root, "subStatusCode") or "",
            error_code=as_int(child_text(root, "errorCode")),
            error_msg=as_str(child_text(root, "errorMsg")),
            request_url=as_str(child_text(root, "requestURL")),
        )
    return None


def parse_user_check(body: bytes) -> UserCheck | None:
    """The body of a 401: whether the account is locked and for how long."""
    if not body.lstrip().startswith(b"<"):
        return None
    try:
        root = parse_xml(body.lstrip(), "401")
    except DeviceError:
        return None
    if local_name(root.tag) != "userCheck":
        return None
    return UserCheck(
        locked=(child_text(root, "lockStatus") or "").lower() == "lock",
        unlock_in_s=as_int(child_text(root, "unlockTime")),
        retries_left=as_int(child_text(root, "retryLoginTime")),
    )


def auth_error(body: bytes, what: str) -> DeviceError:
    check = parse_user_check(body)
    if check is not None and check.locked:
        wait = f"retry after {check.unlock_in_s} s" if check.unlock_in_s else "retry later"
        return DeviceError(
            DeviceErrorKind.LOCKED,
            f"{what}: the device locked this login after repeated bad passwords; "
            f"even the right password fails until it unlocks ({wait})",
            http_status=401,
            unlock_in_s=check.unlock_in_s,
        )
    left = ""
    if check is not None and check.retries_left is not None:
        left = f" ({check.retries_left} attempts left before the device locks the login)"
    return DeviceError(
        DeviceErrorKind.AUTH_FAILED,
        f"{what}: authentication failed: wrong user name or password{left}; "
        "fix the device credentials",
        http_status=401,
        retries_left=check.retries_left if check else None,
    )


def error_for_response(http_status: int, body: bytes, what: str) -> DeviceError:
    """The DeviceError for a non-successful answer, named by its cause."""
    if http_status == 401:
        return auth_error(body, what)
    status = parse_status(body)
    if status is None:
        kind = {
            400: DeviceErrorKind.BAD_REQUEST,
            403: DeviceErrorKind.NOT_SUPPORTED,
            404: DeviceErrorKind.NOT_SUPPORTED,
            405: DeviceErrorKind.NOT_SUPPORTED,
            503: DeviceErrorKind.BUSY,
        }.get(http_status)
        if kind is None:
            kind = DeviceErrorKind.DEVICE_FAULT if http_status >= 500 else DeviceErrorKind.PROTOCOL
        return DeviceError(
            kind, f"{what}: the device answered HTTP {http_status}", http_status=http_status
        )
    detail = status.sub_status_code or status.status_string or "no detail"
    if status.error_code is not None:
        detail += f", errorCode 0x{status.error_code:08x}"
    if status.error_msg:
        detail += f", {status.error_msg}"
    kind, sentence = {
        2: (DeviceErrorKind.BUSY, "the device is busy; try again later"),
        3: (DeviceErrorKind.DEVICE_FAULT, "the device reported an internal error"),
        4: (DeviceErrorKind.NOT_SUPPORTED, "the device refused: operation not supported here"),
        5: (DeviceErrorKind.BAD_REQUEST, "the device could not parse the request"),
        6: (DeviceErrorKind.BAD_REQUEST, "the device rejected the request content"),
    }.get(status.status_code, (DeviceErrorKind.PROTOCOL, "unexpected device status"))
    return DeviceError(
        kind,
        f"{what}: {sentence} ({detail})",
        http_status=http_status,
        status_code=status.status_code,
        sub_status_code=status.sub_status_code or None,
        error_code=status.error_code,
    )


def check_ok(http_status: int, body: bytes, what: str) -> IsapiStatus | None:
    """Raise DeviceError unless the answer is a success; returns its status if it has one."""
    status = parse_status(body)
    if 200 <= http_status < 300 and (status is None or status.status_code in _OK_STATUS_CODES):
        return status
    raise error_for_response(http_status, body, what)
