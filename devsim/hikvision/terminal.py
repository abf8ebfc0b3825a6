"""A simulated Hikvision access terminal without I/O: request in, response out.

It keeps the state a real terminal has (doors, users, an event log with increasing serialNo,
login failures per client address) and answers with bodies shaped like real firmware,
including several XML namespaces on one device. `server` puts it on a socket.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable
from typing import Any

import msgspec
import trio

from devsim.hikvision.auth import DigestGate
from devsim.hikvision.bodies import (
    PSIA_NS,
    device_info_xml,
    device_status_xml,
    door_capabilities_xml,
    door_param_xml,
    response_status,
    time_xml,
)
from devsim.hikvision.wire import xml_fields, zone_offset

# Event codes (major, minor) the terminal logs.
REMOTE_EVENTS = {"open": 1024, "close": 1025, "alwaysOpen": 1026, "alwaysClose": 1027}
REMOTE_REBOOT = (3, 123)
LOCK_OPENED, LOCK_CLOSED, FACE_PASSED = (5, 21), (5, 22), (5, 75)
CARD_PASSED, CARD_INVALID, FACE_REFUSED = (5, 1), (5, 9), (5, 76)
DOOR_OPEN_DURATION_S = 5.0
DEFAULT_SERIAL = "DS-K1T341AMF20231101V010100ENF12345678"


class SimulatorConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    password: str
    user: str = "admin"
    host: str = "127.0.0.1"
    port: int = 18080
    latency_ms: int = 0
    busy_rate: float = 0.0
    lockout_after: int = 5  # 0 disables the lock-out
    unlock_s: int = 1800
    reboot_s: float = 30.0
    serial: str = DEFAULT_SERIAL
    model: str = "DS-K1T341AMF"
    doors: int = 1
    # Firmware quirk: reject the Nth use of one nonce with a 401 without a new challenge.
    nonce_max_uses: int = 0  # 0 = a nonce never wears out
    unsupported_commands: tuple[str, ...] = ()
    event_page_size: int = 30
    # Older firmware ignores beginSerialNo and always searches the whole log.
    honours_begin_serial_no: bool = True
    time_zone: str = "CST-8:00:00"
    seed: int | None = None
    # GET /ISAPI/Event/notification/alertStream; without it the route answers notSupport.
    alert_stream: bool = True

    def __repr__(self) -> str:
        return f"SimulatorConfig(user={self.user!r}, port={self.port}, serial={self.serial!r})"


class SimRequest(msgspec.Struct, kw_only=True):
    method: str
    target: str  # path and query as sent
    headers: dict[str, str]  # lower-case names
    body: bytes = b""
    client: str = "127.0.0.1"


class SimResponse(msgspec.Struct, kw_only=True):
    status: int
    body: bytes = b""
    content_type: str = "application/xml"
    headers: list[tuple[str, str]] = msgspec.field(default_factory=list)
    reboot: bool = False  # the shell takes the terminal off the network after answering
    stream: bool = False  # the shell keeps the connection and sends the alert stream


class _Door(msgspec.Struct):
    status: int = 4  # 1 sleep, 2 always open, 3 always closed, 4 normal
    open_until: float = 0.0


class SimulatedTerminal:
    def __init__(
        self,
        config: SimulatorConfig,
        *,
        clock: Callable[[], float] = trio.current_time,
        utcnow: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.config = config
        self._clock = clock
        self._utcnow = utcnow
        self._rng = random.Random(config.seed)
        self.realm = "DS-" + config.serial[-8:].upper()
        self.doors = [_Door() for _ in range(config.doors)]
        self.users: dict[str, dict[str, Any]] = {}
        # card number -> employee number
        self.cards: dict[str, str] = {}
        self.events: list[dict[str, Any]] = []
        # Set (and replaced) whenever an event is logged: the alert stream waits on it.
        self.event_logged = trio.Event()
        self.time_zone = config.time_zone
        self.clock_skew = dt.timedelta(0)
        self.reboot_count = 0
        self.booted_at: float | None = None
        self.busy_rate = config.busy_rate
        self.auth = DigestGate(
            user=config.user,
            password=config.password,
            realm=self.realm,
            lockout_after=config.lockout_after,
            unlock_s=config.unlock_s,
            nonce_max_uses=config.nonce_max_uses,
            clock=clock,
        )

    # ---- state a test or the shell may drive ---------------------------------------------

    def local_now(self) -> dt.datetime:
        zone = dt.timezone(zone_offset(self.time_zone))
        return (self._utcnow() + self.clock_skew).astimezone(zone).replace(microsecond=0)

    def log_event(self, major: int, minor: int, *, door: int | None = None, **extra: Any) -> int:
        serial_no = len(self.events) + 1
        event: dict[str, Any] = {
            "major": major,
            "minor": minor,
            "time": self.local_now().isoformat(),
            "serialNo": serial_no,
            "currentVerifyMode": "invalid",
            **extra,
        }
        if door is not None:
            event["doorNo"] = door
        self.events.append(event)
        self.event_logged.set()
        self.event_logged = trio.Event()
        return serial_no

    def simulate_face_access(self, employee_no: str, door: int = 1) -> int:
        """A person verified by face at the door: the event attendance is made of."""
        user = self.users.get(employee_no, {})
        return self.log_event(
            *FACE_PASSED,
            door=door,
            employeeNoString=employee_no,
            name=user.get("name", ""),
            currentVerifyMode="face",
            cardNo="",
        )

    def simulate_card_access(self, card_no: str, door: int = 1) -> int:
        """A card shown at the reader: granted if enrolled, else an invalid card."""
        employee_no = self.cards.get(card_no)
        if employee_no is None:
            return self.log_event(*CARD_INVALID, door=door, cardNo=card_no)
        return self.log_event(
            *CARD_PASSED,
            door=door,
            employeeNoString=employee_no,
            name=self.users.get(employee_no, {}).get("name", ""),
            currentVerifyMode="card",
            cardNo=card_no,
        )

    def simulate_punch(self, employee_no: str = "", card_no: str = "", door: int = 1) -> int:
        """A person at the door by card (when given) or by face."""
        if card_no:
            return self.simulate_card_access(card_no, door)
        if employee_no not in self.users:
            return self.log_event(*FACE_REFUSED, door=door, currentVerifyMode="face")
        return self.simulate_face_access(employee_no, door)

    def finish_reboot(self) -> None:
        self.reboot_count += 1
        self.booted_at = self._clock()
        self.auth.forget_nonces()  # a rebooted device forgets its nonces

    # ---- the request path ---------------------------------------------------------------

    def handle(self, request: SimRequest) -> SimResponse:
        if self.booted_at is None:
            self.booted_at = self._clock()
        path, _, query = request.target.partition("?")
        as_json = "format=json" in query.lower()
        denied = self.auth.check(
            request.method.upper(), path, request.headers.get("authorization", ""), request.client
        )
        if denied is not None:
            headers = [("WWW-Authenticate", denied.challenge)] if denied.challenge else []
            return SimResponse(status=401, body=denied.body, headers=headers)
        if self.busy_rate and self._rng.random() < self.busy_rate:
            return self._status(503, path, as_json, 2, "Device Busy", "deviceBusy")
        try:
            return self._route(request.method.upper(), path, request.body, as_json)
        except (msgspec.DecodeError, ValueError, KeyError, TypeError, AttributeError):
            sub = "badJsonFormat" if as_json else "badXmlFormat"
            return self._status(400, path, as_json, 5, "Invalid Format", sub)

    def _status(
        self,
        http: int,
        path: str,
        as_json: bool,
        code: int = 1,
        text: str = "OK",
        sub: str = "ok",
        error_code: int | None = None,
    ) -> SimResponse:
        body, content_type = response_status(path, as_json, code, text, sub, error_code)
        return SimResponse(status=http, body=body, content_type=content_type)

    # ---- endpoints ----------------------------------------------------------------------

    def _route(self, method: str, path: str, body: bytes, as_json: bool) -> SimResponse:
        parts = [p.lower() for p in path.strip("/").split("/")]
        key = "/".join(parts)
        handlers: dict[tuple[str, str], Callable[[], SimResponse]] = {
            ("GET", "isapi/system/deviceinfo"): self._device_info,
            ("GET", "isapi/system/status"): self._device_status,
            ("GET", "isapi/system/time"): self._get_time,
            ("PUT", "isapi/system/time"): lambda: self._set_time(body),
            ("PUT", "isapi/system/reboot"): lambda: self._reboot(path),
            ("GET", "isapi/accesscontrol/acsworkstatus"): self._work_status,
            ("POST", "isapi/accesscontrol/acsevent"): lambda: self._search_events(body),
            ("POST", "isapi/accesscontrol/userinfo/record"): lambda: self._add_user(path, body),
            ("PUT", "isapi/accesscontrol/userinfo/delete"): lambda: self._del_user(path, body),
            ("POST", "isapi/accesscontrol/userinfo/search"): lambda: self._search_users(body),
            ("PUT", "isapi/accesscontrol/userinfo/modify"): lambda: self._modify_user(path, body),
            ("POST", "isapi/accesscontrol/cardinfo/record"): lambda: self._add_card(path, body),
            ("PUT", "isapi/accesscontrol/cardinfo/delete"): lambda: self._del_cards(path, body),
            # Not ISAPI: the simulator's own door, so a person can be made to punch.
            ("POST", "simulator/punch"): lambda: self._punch(path, body),
            (
                "GET",
                "isapi/accesscontrol/remotecontrol/door/capabilities",
            ): lambda: SimResponse(status=200, body=door_capabilities_xml(self.config.doors)),
        }
        if self.config.alert_stream:
            handlers["GET", "isapi/event/notification/alertstream"] = lambda: SimResponse(
                status=200, content_type="multipart/mixed; boundary=MIME_boundary", stream=True
            )
        handler = handlers.get((method, key))
        if handler is not None:
            return handler()
        if key.startswith("isapi/accesscontrol/remotecontrol/door/") and len(parts) == 5:
            if method != "PUT":
                return self._status(403, path, as_json, 4, "Invalid Operation",
                                    "methodNotAllowed", 0x40000004)  # fmt: skip
            return self._door(path, int(parts[4]), body)
        if key.startswith("isapi/accesscontrol/door/param/") and method == "GET":
            return SimResponse(status=200, body=door_param_xml(int(parts[4])))
        if any(k == key for _, k in handlers):
            return self._status(403, path, as_json, 4, "Invalid Operation",
                                "methodNotAllowed", 0x40000004)  # fmt: skip
        return self._status(403, path, as_json, 4, "Invalid Operation", "notSupport", 0x40000001)

    def _device_info(self) -> SimResponse:
        return SimResponse(status=200, body=device_info_xml(self.config, self.realm))

    def _device_status(self) -> SimResponse:
        uptime = int(self._clock() - (self.booted_at or self._clock()))
        body = device_status_xml(self.local_now(), uptime, self.reboot_count)
        return SimResponse(status=200, body=body)

    def _get_time(self) -> SimResponse:
        return SimResponse(status=200, body=time_xml(self.local_now(), self.time_zone))

    def _set_time(self, body: bytes) -> SimResponse:
        fields = xml_fields(body)
        zone = fields.get("timeZone") or self.time_zone
        wanted = dt.datetime.fromisoformat(fields["localTime"])
        if wanted.tzinfo is None:
            wanted = wanted.replace(tzinfo=dt.timezone(zone_offset(zone)))
        self.time_zone = zone
        self.clock_skew = wanted - self._utcnow()
        body, content_type = response_status("/ISAPI/System/time", False, namespace=PSIA_NS)
        return SimResponse(status=200, body=body, content_type=content_type)

    def _reboot(self, path: str) -> SimResponse:
        self.log_event(*REMOTE_REBOOT)
        return SimResponse(status=200, body=response_status(path, False)[0], reboot=True)

    def _door(self, path: str, door_no: int, body: bytes) -> SimResponse:
        cmd = xml_fields(body).get("cmd", "")
        if cmd not in REMOTE_EVENTS or cmd in self.config.unsupported_commands:
            return self._status(403, path, False, 4, "Invalid Operation", "notSupport", 0x40000001)
        if door_no == 65535:
            targets = list(range(1, len(self.doors) + 1))
        elif 1 <= door_no <= len(self.doors):
            targets = [door_no]
        else:
            return self._status(403, path, False, 4, "Invalid Operation", "invalidOperation")
        now = self._clock()
        for number in targets:
            door = self.doors[number - 1]
            self.log_event(3, REMOTE_EVENTS[cmd], door=number)
            if cmd == "open":
                door.open_until = now + DOOR_OPEN_DURATION_S
                self.log_event(*LOCK_OPENED, door=number)
            elif cmd == "close":
                door.open_until = 0.0
                self.log_event(*LOCK_CLOSED, door=number)
            else:
                door.status = 2 if cmd == "alwaysOpen" else 3
        return self._status(200, path, False)

    def _work_status(self) -> SimResponse:
        now = self._clock()
        locks = [1 if d.status == 2 or d.open_until > now else 0 for d in self.doors]
        status = {
            "AcsWorkStatus": {
                "doorLockStatus": locks,
                "doorStatus": [d.status for d in self.doors],
                "magneticStatus": locks,
                "antiSneakStatus": "close",
                "hostAntiDismantleStatus": "close",
                "cardReaderOnlineStatus": [1],
                "cardNum": 0,
                "netStatus": "connected",
            }
        }
        return SimResponse(status=200, body=msgspec.json.encode(status), content_type=_JSON)

    def _search_events(self, body: bytes) -> SimResponse:
        cond = msgspec.json.decode(body)["AcsEventCond"]
        major, minor = int(cond.get("major", 0)), int(cond.get("minor", 0))
        begin, end = int(cond.get("beginSerialNo", 0)), int(cond.get("endSerialNo", 0))
        if not self.config.honours_begin_serial_no:
            begin = end = 0
        matches = [
            e
            for e in self.events
            if (not major or e["major"] == major)
            and (not minor or e["minor"] == minor)
            and e["serialNo"] >= begin
            and (not end or e["serialNo"] <= end)
        ]
        position = int(cond.get("searchResultPosition", 0))
        size = min(int(cond.get("maxResults", 30)), self.config.event_page_size)
        page = matches[position : position + size]
        more = position + len(page) < len(matches)
        answer: dict[str, Any] = {
            "searchID": cond.get("searchID", ""),
            "totalMatches": len(matches),
            "responseStatusStrg": "MORE" if more else ("OK" if page else "NO MATCH"),
            "numOfMatches": len(page),
        }
        if page:
            answer["InfoList"] = page
        body = msgspec.json.encode({"AcsEvent": answer})
        return SimResponse(status=200, body=body, content_type=_JSON)

    def _add_user(self, path: str, body: bytes) -> SimResponse:
        info = msgspec.json.decode(body)["UserInfo"]
        employee_no = str(info.get("employeeNo") or "")
        if not employee_no:
            return self._status(400, path, True, 6, "Invalid Content", "badParameters", 0x60000001)
        if employee_no in self.users:
            return self._status(
                400, path, True, 6, "Invalid Content", "employeeNoAlreadyExist", 0x60000019
            )
        self.users[employee_no] = info
        return self._status(200, path, True)

    def _del_user(self, path: str, body: bytes) -> SimResponse:
        wanted = msgspec.json.decode(body)["UserInfoDelCond"]["EmployeeNoList"]
        for item in wanted:
            employee_no = str(item["employeeNo"])
            self.users.pop(employee_no, None)
            self._drop_cards(employee_no)
        return self._status(200, path, True)

    def _modify_user(self, path: str, body: bytes) -> SimResponse:
        info = msgspec.json.decode(body)["UserInfo"]
        employee_no = str(info.get("employeeNo") or "")
        if employee_no not in self.users:
            return self._status(
                400, path, True, 6, "Invalid Content", "employeeNoNotExist", 0x60000020
            )
        self.users[employee_no] = info
        return self._status(200, path, True)

    def _add_card(self, path: str, body: bytes) -> SimResponse:
        info = msgspec.json.decode(body)["CardInfo"]
        employee_no, card_no = str(info.get("employeeNo") or ""), str(info.get("cardNo") or "")
        if employee_no not in self.users or not card_no:
            return self._status(400, path, True, 6, "Invalid Content", "badParameters", 0x60000001)
        if card_no in self.cards:
            return self._status(
                400, path, True, 6, "Invalid Content", "cardNoAlreadyExist", 0x60000021
            )
        self.cards[card_no] = employee_no
        return self._status(200, path, True)

    def _del_cards(self, path: str, body: bytes) -> SimResponse:
        wanted = msgspec.json.decode(body)["CardInfoDelCond"]["EmployeeNoList"]
        for item in wanted:
            self._drop_cards(str(item["employeeNo"]))
        return self._status(200, path, True)

    def _drop_cards(self, employee_no: str) -> None:
        for card_no in [c for c, owner in self.cards.items() if owner == employee_no]:
            del self.cards[card_no]

    def cards_of(self, employee_no: str) -> list[str]:
        return sorted(c for c, owner in self.cards.items() if owner == employee_no)

    def _punch(self, path: str, body: bytes) -> SimResponse:
        wanted = msgspec.json.decode(body) if body else {}
        serial_no = self.simulate_punch(
            employee_no=str(wanted.get("employeeNo") or ""),
            card_no=str(wanted.get("cardNo") or ""),
            door=int(wanted.get("door") or 1),
        )
        event = self.events[serial_no - 1]
        return SimResponse(status=200, body=msgspec.json.encode(event), content_type=_JSON)

    def _search_users(self, body: bytes) -> SimResponse:
        cond = msgspec.json.decode(body)["UserInfoSearchCond"]
        wanted = {str(i["employeeNo"]) for i in cond.get("EmployeeNoList") or []}
        matches = [
            {**u, "numOfCard": len(self.cards_of(no))}
            for no, u in self.users.items()
            if not wanted or no in wanted
        ]
        position = int(cond.get("searchResultPosition", 0))
        page = matches[position : position + min(int(cond.get("maxResults", 30)), 30)]
        more = position + len(page) < len(matches)
        answer: dict[str, Any] = {
            "searchID": cond.get("searchID", ""),
            "responseStatusStrg": "MORE" if more else ("OK" if page else "NO MATCH"),
            "numOfMatches": len(page),
            "totalMatches": len(matches),
        }
        if page:
            answer["UserInfo"] = page
        body = msgspec.json.encode({"UserInfoSearch": answer})
        return SimResponse(status=200, body=body, content_type=_JSON)


_JSON = "application/json"
