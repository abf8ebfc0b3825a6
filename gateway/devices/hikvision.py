"""The Hikvision ISAPI adapter: httpx on trio, one client per terminal.

Bodies are built and read by `isapi` (the alert stream by `alert_stream`); this module only
moves bytes and turns httpx failures into DeviceError, in `_translate` and nowhere else.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import trio

from gateway.devices import alert_stream, isapi, isapi_status
from gateway.devices.base import (
    DOOR_ACTIONS,
    AccessEvent,
    DeviceError,
    DeviceErrorKind,
    DeviceInfo,
    DoorAction,
    UserRecord,
    register,
)
from gateway.devices.digest import IsapiDigestAuth
from protocol.control import DeviceConfig

DEFAULT_TIMEOUT_S = 10.0
# After we ask for a reboot, connection failures for this long mean "rebooting", not "down".
REBOOT_GRACE_S = 300.0
# Terminals cap pages at about 30 whatever maxResults says; asking for more is harmless.
EVENT_PAGE_SIZE = 30
USER_PAGE_SIZE = 30
MAX_PAGES = 10_000
# An alert stream silent this long is treated as dead and reconnected (some firmware sends no
# heartbeat at all, so this is long; the event search covers whatever the gap held).
STREAM_IDLE_S = 300.0
# Bytes of an error answer read from a stream request: enough for any ResponseStatus.
_ERROR_BODY_MAX = 64 * 1024

OnAlert = Callable[[AccessEvent | None], Awaitable[None]]

_XML = {"Content-Type": "application/xml; charset=UTF-8"}
_JSON = {"Content-Type": "application/json"}


class HikvisionAdapter:
    """A DeviceAdapter for one Hikvision access terminal."""

    def __init__(
        self,
        config: DeviceConfig,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        utcnow: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._where = f"{config.host}:{config.port}"
        self._timeout_s = timeout_s
        self._utcnow = utcnow
        self._reboot_asked_at: float | None = None
        self._client = httpx.AsyncClient(
            base_url=f"{config.scheme}://{config.host}:{config.port}",
            auth=IsapiDigestAuth(config.username, config.password),
            timeout=httpx.Timeout(timeout_s),
            # Terminals ship self-signed certificates and sit on the site LAN.
            verify=False,
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"HikvisionAdapter({self._where})"

    async def aclose(self) -> None:
        await self._client.aclose()

    # ---- transport ---------------------------------------------------------------------

    async def _send(
        self,
        method: str,
        path: str,
        what: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        if self._client.is_closed:
            raise DeviceError(
                DeviceErrorKind.UNREACHABLE,
                f"{what}: the connection to {self._where} was closed because the device was "
                "reconfigured or removed; retry",
            )
        try:
            response = await self._client.request(method, path, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise self._translate(what, exc) from None
        return response.status_code, response.content

    def _translate(self, what: str, exc: httpx.HTTPError) -> DeviceError:
        if isinstance(exc, httpx.TimeoutException):
            return DeviceError(
                DeviceErrorKind.TIMEOUT,
                f"{what}: no answer from the device at {self._where} within "
                f"{self._timeout_s:g} s; check that it is powered and not overloaded",
            )
        # A device going down mid-answer closes the connection without a response
        # (RemoteProtocolError).
        if isinstance(
            exc,
            httpx.ConnectError | httpx.ReadError | httpx.WriteError | httpx.RemoteProtocolError,
        ):
            return self._connection_error(what, exc)
        return DeviceError(
            DeviceErrorKind.PROTOCOL,
            f"{what}: HTTP exchange with {self._where} failed ({type(exc).__name__})",
        )

    def _connection_error(self, what: str, exc: Exception) -> DeviceError:
        reason = str(exc) or type(exc).__name__
        if (
            self._reboot_asked_at is not None
            and trio.current_time() - self._reboot_asked_at < REBOOT_GRACE_S
        ):
            return DeviceError(
                DeviceErrorKind.REBOOTING,
                f"{what}: the device at {self._where} is rebooting and refuses connections "
                f"until it is back ({reason})",
            )
        return DeviceError(
            DeviceErrorKind.UNREACHABLE,
            f"{what}: cannot connect to the device at {self._where} ({reason}); "
            "check that it is powered and reachable",
        )

    async def _get_ok(self, path: str, what: str) -> bytes:
        status, content = await self._send("GET", path, what)
        if status != 200:
            raise isapi_status.error_for_response(status, content, what)
        return content

    async def _call(
        self, method: str, path: str, what: str, body: bytes, headers: dict[str, str]
    ) -> dict[str, Any]:
        status, content = await self._send(method, path, what, body, headers)
        answer = isapi_status.check_ok(status, content, what)
        result: dict[str, Any] = {}
        if answer is not None and answer.status_code == 7:
            result["reboot_required"] = True
        return result

    # ---- system ------------------------------------------------------------------------

    async def device_info(self) -> DeviceInfo:
        content = await self._get_ok(isapi.DEVICE_INFO, "device info")
        self._reboot_asked_at = None  # it answers, so any reboot is over
        return isapi.parse_device_info(content)

    async def status(self) -> dict[str, Any]:
        system = isapi.parse_device_status(await self._get_ok(isapi.DEVICE_STATUS, "status"))
        try:
            doors: list[dict[str, Any]] | None = isapi.parse_work_status(
                await self._get_ok(isapi.WORK_STATUS, "door status")
            )
        except DeviceError as exc:
            if exc.kind is not DeviceErrorKind.NOT_SUPPORTED:
                raise
            doors = None  # door controllers without AcsWorkStatus still have a status
        return {"system": system, "doors": doors}

    async def reboot(self) -> dict[str, Any]:
        result = await self._call("PUT", isapi.REBOOT, "reboot", b"", _XML)
        self._reboot_asked_at = trio.current_time()
        return {"rebooting": True, **result}

    async def get_time(self) -> dict[str, Any]:
        return isapi.parse_time(await self._get_ok(isapi.TIME, "get time"))

    async def sync_time(self) -> dict[str, Any]:
        before = await self.get_time()
        now = self._utcnow()
        body = isapi.build_time_body(now, before["time_zone"])
        result = await self._call("PUT", isapi.TIME, "sync time", body, _XML)
        return {
            "previous_time": before["local_time"],
            "set_to_utc": now.isoformat(timespec="seconds"),
            "time_zone": before["time_zone"],
            **result,
        }

    # ---- doors -------------------------------------------------------------------------

    async def door(self, door_no: int, action: DoorAction) -> dict[str, Any]:
        what = f"door {door_no} {action}"
        if action not in DOOR_ACTIONS:
            raise DeviceError(
                DeviceErrorKind.BAD_REQUEST,
                f"{what}: unknown door action; use one of {', '.join(DOOR_ACTIONS)}",
            )
        if not 1 <= door_no <= 65535:
            raise DeviceError(
                DeviceErrorKind.BAD_REQUEST, f"{what}: door numbers are 1..65535 (65535 = all)"
            )
        body = isapi.build_door_body(action)
        result = await self._call("PUT", isapi.door_path(door_no), what, body, _XML)
        return {"door": door_no, "action": action, **result}

    # ---- users -------------------------------------------------------------------------

    async def add_user(self, user: UserRecord) -> dict[str, Any]:
        """Add the user (with `replace`, update it if the terminal has it); then its cards
        become exactly `user.card_nos`."""
        body = isapi.build_user_record(user)
        what = f"add user {user.employee_no}"
        try:
            result = await self._call("POST", isapi.USER_RECORD, what, body, _JSON)
            updated = False
        except DeviceError as exc:
            if not user.replace or exc.sub_status_code != "employeeNoAlreadyExist":
                raise
            what = f"update user {user.employee_no}"
            result = await self._call("PUT", isapi.USER_MODIFY, what, body, _JSON)
            updated = True
        if updated or user.card_nos:
            await self._call(
                "PUT",
                isapi.CARD_DELETE,
                f"clear cards of {user.employee_no}",
                isapi.build_card_delete([user.employee_no]),
                _JSON,
            )
        for card_no in user.card_nos:
            await self._call(
                "POST",
                isapi.CARD_RECORD,
                f"add card {card_no} of {user.employee_no}",
                isapi.build_card_record(user.employee_no, card_no),
                _JSON,
            )
        return {
            "employee_no": user.employee_no,
            "updated": updated,
            "card_nos": user.card_nos,
            **result,
        }

    async def delete_user(self, employee_no: str) -> dict[str, Any]:
        body = isapi.build_user_delete([employee_no])
        what = f"delete user {employee_no}"
        result = await self._call("PUT", isapi.USER_DELETE, what, body, _JSON)
        return {"employee_no": employee_no, "deleted": True, **result}

    async def search_users(self, employee_nos: list[str] | None = None) -> list[UserRecord]:
        search_id = uuid.uuid4().hex
        users: list[UserRecord] = []
        for _ in range(MAX_PAGES):
            body = isapi.build_user_search(search_id, len(users), USER_PAGE_SIZE, employee_nos)
            status, content = await self._send(
                "POST", isapi.USER_SEARCH, "user search", body, _JSON
            )
            isapi_status.check_ok(status, content, "user search")
            page = isapi.parse_user_page(content)
            users += page.users
            if page.status != "MORE" or not page.users:
                break
        return users

    # ---- access events -----------------------------------------------------------------

    async def events_since(self, serial_no: int, *, limit: int = 1000) -> list[AccessEvent]:
        """Pages through one search (same searchID) while the device answers MORE."""
        search_id = uuid.uuid4().hex
        position = 0
        events: dict[int, AccessEvent] = {}
        for _ in range(MAX_PAGES):
            body = isapi.build_event_search(search_id, position, EVENT_PAGE_SIZE, serial_no + 1)
            status, content = await self._send("POST", isapi.ACS_EVENT, "event search", body, _JSON)
            isapi_status.check_ok(status, content, "event search")
            page = isapi.parse_event_page(content)
            # Firmware that ignores beginSerialNo still returns older events: drop them here.
            events.update((e.serial_no, e) for e in page.events if e.serial_no > serial_no)
            position += page.num_of_matches
            if page.status != "MORE" or len(events) >= limit:
                break
            if page.num_of_matches == 0:
                raise DeviceError(
                    DeviceErrorKind.PROTOCOL,
                    "event search: the device said MORE but sent an empty page",
                )
        return [events[no] for no in sorted(events)][:limit]

    async def watch_alerts(self, on_alert: OnAlert, *, idle_s: float = STREAM_IDLE_S) -> None:
        """Follow the alert stream: `on_alert(event)` per access event, `on_alert(None)` once
        connected and per heartbeat or other alert. Returns when the device ends the stream;
        raises DeviceError when it breaks (NOT_SUPPORTED: the terminal has no stream)."""
        what = "alert stream"
        if self._client.is_closed:
            raise DeviceError(DeviceErrorKind.UNREACHABLE, f"{what}: the adapter was closed")
        timeout = httpx.Timeout(self._timeout_s, read=idle_s)
        try:
            async with self._client.stream(
                "GET", alert_stream.ALERT_STREAM, timeout=timeout
            ) as response:
                if response.status_code != 200:
                    body = bytearray()
                    if response.is_stream_consumed:  # a 401 the Digest flow already read
                        body += response.content[:_ERROR_BODY_MAX]
                    else:
                        async for chunk in response.aiter_raw():
                            body += chunk
                            if len(body) > _ERROR_BODY_MAX:
                                break
                    raise isapi_status.error_for_response(response.status_code, bytes(body), what)
                try:
                    parser = alert_stream.MultipartParser(
                        alert_stream.boundary_of(response.headers.get("content-type", ""))
                    )
                except alert_stream.StreamError as exc:
                    # Answering 200 with something else is how some firmware says "no stream".
                    raise DeviceError(DeviceErrorKind.NOT_SUPPORTED, f"{what}: {exc}") from None
                await on_alert(None)
                async for chunk in response.aiter_raw():
                    try:
                        parts = parser.feed(chunk)
                    except alert_stream.StreamError as exc:
                        raise DeviceError(DeviceErrorKind.PROTOCOL, f"{what}: {exc}") from None
                    for part in parts:
                        await on_alert(alert_stream.parse_alert(part))
                    if parser.closed:
                        return
        except httpx.HTTPError as exc:
            raise self._translate(what, exc) from None


register("hikvision", HikvisionAdapter)
