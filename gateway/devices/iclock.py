"""ZKTeco PUSH ("iclock") bodies and answers without I/O.

The terminal is the HTTP client: it shakes hands (`GET /iclock/cdata?options=all`), uploads
tables (`POST /iclock/cdata?table=ATTLOG|OPERLOG`), polls for commands (`GET
/iclock/getrequest`) and reports their results (`POST /iclock/devicecmd`). Bodies are lines
of TAB-separated fields. Everything here treats the bytes as hostile: every size, count and
field is bounded, and a bad line is skipped and counted, never raised past the caller.
"""

from __future__ import annotations

import datetime as dt
import re
import urllib.parse
from typing import Generic, TypeVar

import msgspec

MAX_QUERY_BYTES = 2048
MAX_QUERY_PARAMS = 32
MAX_BODY_BYTES = 2 * 1024 * 1024
MAX_RECORDS = 20_000
MAX_LINE_BYTES = 4096
MAX_FIELDS = 32
MAX_FIELD_CHARS = 256
MAX_RESULTS = 1000

SERIAL_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Terminals take command ids of at most 16 alphanumerics.
COMMAND_ID_PATTERN = re.compile(r"^[A-Za-z0-9]{1,16}$")
_PIN_PATTERN = re.compile(r"^[A-Za-z0-9]{1,24}$")
_CARD_PATTERN = re.compile(r"^[0-9A-Za-z]{0,32}$")
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


class IclockError(ValueError):
    """A request we cannot use at all; the message names the part that is wrong."""


class AttLogRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One punch: `time` is the terminal's local wall-clock time, without a zone."""

    pin: str
    time: dt.datetime
    status: int
    verify: int
    work_code: str = "0"


class UserLine(msgspec.Struct, frozen=True, kw_only=True):
    pin: str
    name: str = ""
    card: str = ""
    privilege: int = 0


class OperLog(msgspec.Struct, kw_only=True):
    operations: int = 0
    users: list[UserLine] = msgspec.field(default_factory=list)
    others: int = 0


class CommandReturn(msgspec.Struct, frozen=True, kw_only=True):
    command_id: str
    code: int
    command: str = ""


T = TypeVar("T")


class Parsed(msgspec.Struct, Generic[T], kw_only=True):
    records: list[T]
    bad_lines: int = 0


# ---- query strings ------------------------------------------------------------------------


def parse_query(raw: bytes) -> dict[str, str]:
    """Query parameters, names folded to lower case (firmware spells `SN`, `sn`, `Sn`)."""
    if len(raw) > MAX_QUERY_BYTES:
        raise IclockError(f"the query string is longer than {MAX_QUERY_BYTES} bytes")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise IclockError("the query string is not ASCII") from None
    try:
        pairs = urllib.parse.parse_qsl(
            text, keep_blank_values=True, max_num_fields=MAX_QUERY_PARAMS, errors="strict"
        )
    except (ValueError, UnicodeDecodeError):
        raise IclockError(
            f"the query string has more than {MAX_QUERY_PARAMS} parameters or bad escapes"
        ) from None
    params: dict[str, str] = {}
    for name, value in pairs:
        params.setdefault(name.lower(), _clean(value))
    return params


def serial_of(params: dict[str, str]) -> str:
    serial = params.get("sn", "")
    if not SERIAL_PATTERN.match(serial):
        raise IclockError("SN: a serial number is 1-64 letters, digits, '-' or '_'")
    return serial


def parse_info(text: str) -> dict[str, str]:
    """`INFO=fw,users,fps,logs,...` from getrequest, by the positions firmware uses."""
    names = ("firmware", "users", "fingerprints", "logs", "ip")
    parts = [_clean(part) for part in text.split(",", len(names))][: len(names)]
    return {name: value for name, value in zip(names, parts, strict=False) if value}


# ---- uploads ------------------------------------------------------------------------------


def _lines(body: bytes) -> list[str]:
    if len(body) > MAX_BODY_BYTES:
        raise IclockError(f"the body is larger than {MAX_BODY_BYTES} bytes")
    # Chinese firmware writes names in GB2312; nothing we keep from a line depends on it.
    text = body.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
    lines = [line for line in text.split("\n") if line.strip()]
    if len(lines) > MAX_RECORDS:
        raise IclockError(f"the body has more than {MAX_RECORDS} records; send fewer at once")
    return lines


def parse_attlog(body: bytes) -> Parsed[AttLogRecord]:
    """ATTLOG lines: `PIN\\tYYYY-MM-DD HH:MM:SS\\tStatus\\tVerify\\tWorkcode\\t...`."""
    records: list[AttLogRecord] = []
    bad = 0
    for line in _lines(body):
        record = _attlog_line(line)
        if record is None:
            bad += 1
        else:
            records.append(record)
    return Parsed(records=records, bad_lines=bad)


def _attlog_line(line: str) -> AttLogRecord | None:
    if len(line) > MAX_LINE_BYTES:
        return None
    fields = line.split("\t", MAX_FIELDS)
    if len(fields) < 2:
        return None
    pin = fields[0].strip()
    if not _PIN_PATTERN.match(pin):
        return None
    try:
        time = dt.datetime.strptime(fields[1].strip(), _TIME_FORMAT)
    except ValueError:
        return None
    status = _small_int(fields[2] if len(fields) > 2 else "0")
    verify = _small_int(fields[3] if len(fields) > 3 else "0")
    if status is None or verify is None:
        return None
    # Firmware without work codes leaves the field out or empty; both mean code 0.
    work_code = (_clean(fields[4].strip()) if len(fields) > 4 else "") or "0"
    return AttLogRecord(pin=pin, time=time, status=status, verify=verify, work_code=work_code)


def parse_operlog(body: bytes) -> Parsed[OperLog]:
    """OPERLOG: `OPLOG ...`, `USER PIN=...\\tName=...`, `FP ...` and other biometric lines.

    Only users are kept (what is enrolled on the terminal); the rest is counted."""
    oper = OperLog()
    bad = 0
    for line in _lines(body):
        head, _, rest = line.partition(" ")
        if len(line) > MAX_LINE_BYTES:
            bad += 1
        elif head == "OPLOG":
            oper.operations += 1
        elif head == "USER":
            user = _user_line(rest)
            if user is None:
                bad += 1
            else:
                oper.users.append(user)
        elif head.isalpha() and head.isupper():
            oper.others += 1  # FP, FACE, USERPIC, BIOPHOTO...: biometrics we do not keep
        else:
            bad += 1
    return Parsed(records=[oper], bad_lines=bad)


def _user_line(rest: str) -> UserLine | None:
    fields = _key_values(rest)
    pin = fields.get("PIN", "")
    if not _PIN_PATTERN.match(pin):
        return None
    privilege = _small_int(fields.get("Pri", "0") or "0")
    return UserLine(
        pin=pin,
        name=fields.get("Name", ""),
        card=fields.get("Card", "") if _CARD_PATTERN.match(fields.get("Card", "")) else "",
        privilege=privilege or 0,
    )


def _key_values(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for field in text.split("\t", MAX_FIELDS)[:MAX_FIELDS]:
        key, sep, value = field.partition("=")
        if sep:
            values.setdefault(key.strip(), _clean(value))
    return values


def parse_devicecmd(body: bytes) -> Parsed[CommandReturn]:
    """Results: one `ID=<id>&Return=<code>&CMD=<cmd>` per line."""
    results: list[CommandReturn] = []
    bad = 0
    for line in _lines(body)[:MAX_RESULTS]:
        fields: dict[str, str] = {}
        for part in line.split("&", 8)[:8]:
            key, _, value = part.partition("=")
            fields.setdefault(key.strip().upper(), value.strip())
        command_id = fields.get("ID", "")
        code = _signed_int(fields.get("RETURN", ""))
        if not COMMAND_ID_PATTERN.match(command_id) or code is None:
            bad += 1
            continue
        results.append(
            CommandReturn(command_id=command_id, code=code, command=_clean(fields.get("CMD", "")))
        )
    return Parsed(records=results, bad_lines=bad)


# ---- answers ------------------------------------------------------------------------------


class Options(msgspec.Struct, frozen=True, kw_only=True):
    delay_s: int = 5
    error_delay_s: int = 30
    time_zone_minutes: int = 0
    realtime: bool = True
    server_version: str = "2.4.1"
    push_version: str = "2.4.1"


def build_options(serial: str, options: Options) -> bytes:
    """The handshake answer: `GET OPTION FROM: <SN>` then `key=value` lines."""
    minutes = options.time_zone_minutes
    # Whole hours are sent as hours; half and quarter zones as minutes (330 = +05:30).
    zone = str(minutes // 60) if minutes % 60 == 0 else str(minutes)
    lines = [
        f"GET OPTION FROM: {serial}",
        # 0 would re-send every stored punch; 9999 skips old user data (both are dedup-safe,
        # but the operator log is not what we keep).
        "ATTLOGStamp=None",
        "OPERLOGStamp=9999",
        "ATTPHOTOStamp=None",
        f"ErrorDelay={options.error_delay_s}",
        f"Delay={options.delay_s}",
        "TransTimes=00:00;14:05",
        "TransInterval=1",
        "TransFlag=TransData AttLog\tOpLog\tEnrollUser\tChgUser",
        f"TimeZone={zone}",
        f"Realtime={1 if options.realtime else 0}",
        "Encrypt=None",
        f"ServerVer={options.server_version}",
        f"PushProtVer={options.push_version}",
    ]
    return ("\n".join(lines) + "\n").encode()


def build_uploaded(accepted: int) -> bytes:
    return f"OK: {accepted}".encode()


def build_commands(commands: list[tuple[str, str]]) -> bytes:
    """The getrequest answer: `C:<id>:<command>` per line, or `OK` when there is none."""
    if not commands:
        return b"OK"
    for command_id, text in commands:
        if not COMMAND_ID_PATTERN.match(command_id) or "\n" in text or "\r" in text:
            raise ValueError(f"command {command_id!r} cannot be sent as one line")
    return "".join(f"C:{cid}:{text}\n" for cid, text in commands).encode()


def _field_value(name: str, value: str) -> str:
    if any(ch in value for ch in "\t\r\n\0"):
        raise ValueError(f"{name} must not contain tabs or line breaks")
    if len(value) > 64:
        raise ValueError(f"{name} is longer than 64 characters")
    return value


def user_command(pin: str, name: str, card: str, *, privilege: int = 0) -> str:
    """`DATA UPDATE USERINFO ...`: adds the user or changes them; ValueError names a field."""
    if not _PIN_PATTERN.match(pin):
        raise ValueError("employee_no: a terminal PIN is 1-24 letters or digits")
    if not _CARD_PATTERN.match(card):
        raise ValueError("card_no: a card number is up to 32 letters or digits")
    fields = {
        "PIN": pin,
        "Name": _field_value("name", name),
        "Pri": str(privilege),
        "Passwd": "",
        "Card": card,
        "Grp": "1",
        "TZ": "",
        "Verify": "",
    }
    return "DATA UPDATE USERINFO " + "\t".join(f"{key}={value}" for key, value in fields.items())


def delete_user_command(pin: str) -> str:
    if not _PIN_PATTERN.match(pin):
        raise ValueError("employee_no: a terminal PIN is 1-24 letters or digits")
    return f"DATA DELETE USERINFO PIN={pin}"


# ---- small pieces -------------------------------------------------------------------------


def _clean(value: str) -> str:
    # PostgreSQL text cannot hold NUL; every kept string is short.
    return value.replace("\0", "")[:MAX_FIELD_CHARS]


def _small_int(text: str) -> int | None:
    text = text.strip()
    if not text.isdigit() or len(text) > 6:
        return None
    return int(text)


def _signed_int(text: str) -> int | None:
    text = text.strip()
    digits = text[1:] if text.startswith("-") else text
    if not digits.isdigit() or len(digits) > 9:
        return None
    return int(text)
