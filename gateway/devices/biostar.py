"""The Suprema BioStar 2 adapter: the server's REST API over httpx on trio.

One TD device is one BioStar 2 server (host, port, operator login). Session login keeps a
`bs-session-id`; a 401 on a call logs in again once, then gives up (a wrong password must
not be hammered). Events are read by datetime window and filtered by the server's event
id, the gateway's cursor; bodies are built and read in `biostar_api`, and httpx failures
become DeviceError in `_send` only.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import httpx

from gateway.devices import biostar_api as api
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
from protocol.control import DeviceConfig

DEFAULT_TIMEOUT_S = 10.0
# Without a remembered position (first run, or after a restart) this much history is read;
# the event id filter drops what was already delivered.
BACKFILL = dt.timedelta(days=1)
PAGE_SIZE = 200
MAX_PAGES = 1000
_JSON = {"Content-Type": "application/json"}


class BioStarAdapter:
    """A DeviceAdapter for one BioStar 2 server."""

    def __init__(
        self,
        config: DeviceConfig,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        utcnow: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._where = f"{config.host}:{config.port}"
        self._username = config.username
        self._password = config.password
        self._timeout_s = timeout_s
        self._utcnow = utcnow
        self._session: str | None = None
        # (event id, its datetime) of the newest event handed out, to start the next search.
        self._position: tuple[int, dt.datetime] | None = None
        self._client = httpx.AsyncClient(
            base_url=f"{config.scheme}://{config.host}:{config.port}",
            timeout=httpx.Timeout(timeout_s),
            # BioStar servers on a site LAN use self-signed certificates.
            verify=False,
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"BioStarAdapter({self._where})"

    async def aclose(self) -> None:
        await self._client.aclose()

    # ---- transport ---------------------------------------------------------------------

    async def _send(
        self, method: str, path: str, what: str, body: bytes | None = None
    ) -> tuple[int, bytes, httpx.Headers]:
        if self._client.is_closed:
            raise DeviceError(
                DeviceErrorKind.UNREACHABLE,
                f"{what}: the connection to {self._where} was closed because the device was "
                "reconfigured or removed; retry",
            )
        headers = dict(_JSON)
        if self._session is not None:
            headers[api.SESSION_HEADER] = self._session
        try:
            response = await self._client.request(method, path, content=body, headers=headers)
        except httpx.TimeoutException:
            raise DeviceError(
                DeviceErrorKind.TIMEOUT,
                f"{what}: no answer from the BioStar server at {self._where} within "
                f"{self._timeout_s:g} s",
            ) from None
        except (httpx.ConnectError, httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
            raise DeviceError(
                DeviceErrorKind.UNREACHABLE,
                f"{what}: cannot connect to the BioStar server at {self._where}; check that "
                "it runs and is reachable",
            ) from None
        except httpx.HTTPError as exc:
            raise DeviceError(
                DeviceErrorKind.PROTOCOL,
                f"{what}: HTTP exchange with {self._where} failed ({type(exc).__name__})",
            ) from None
        return response.status_code, response.content, response.headers

    async def _login(self) -> None:
        self._session = None
        body = api.build_login(self._username, self._password)
        status, content, headers = await self._send("POST", api.LOGIN, "login", body)
        if status == 401:
            raise DeviceError(
                DeviceErrorKind.AUTH_FAILED,
                f"login: BioStar at {self._where} refused the user name or password "
                "(authentication failed)",
                http_status=401,
            )
        api.check_answer(status, content, "login")
        session = headers.get(api.SESSION_HEADER)
        if not session or len(session) > 256:
            raise DeviceError(
                DeviceErrorKind.PROTOCOL, f"login: BioStar at {self._where} sent no session id"
            )
        self._session = session

    async def _call(
        self, method: str, path: str, what: str, body: bytes | None = None
    ) -> tuple[int, bytes]:
        if self._session is None:
            await self._login()
        status, content, _ = await self._send(method, path, what, body)
        if status == 401:  # the session expired: one fresh login, then the answer stands
            await self._login()
            status, content, _ = await self._send(method, path, what, body)
        return status, content

    async def _ok(self, method: str, path: str, what: str, body: bytes | None = None) -> Any:
        status, content = await self._call(method, path, what, body)
        return api.check_answer(status, content, what)

    # ---- system ------------------------------------------------------------------------

    async def device_info(self) -> DeviceInfo:
        if self._session is None:
            await self._login()
        return DeviceInfo(
            serial_number=f"biostar@{self._where}",
            model="BioStar 2",
            device_type="server",
        )

    async def status(self) -> dict[str, Any]:
        info = await self.device_info()
        return {
            "system": {"server": self._where, "session": True},
            "doors": None,
            "serial_number": info.serial_number,
        }

    async def reboot(self) -> dict[str, Any]:
        raise DeviceError(
            DeviceErrorKind.NOT_SUPPORTED, "reboot: a BioStar 2 server is not rebooted from here"
        )

    async def get_time(self) -> dict[str, Any]:
        raise DeviceError(DeviceErrorKind.NOT_SUPPORTED, "get time: BioStar keeps device clocks")

    async def sync_time(self) -> dict[str, Any]:
        raise DeviceError(
            DeviceErrorKind.NOT_SUPPORTED, "sync time: BioStar 2 synchronises its devices itself"
        )

    # ---- doors -------------------------------------------------------------------------

    async def door(self, door_no: int, action: DoorAction) -> dict[str, Any]:
        what = f"door {door_no} {action}"
        if action not in DOOR_ACTIONS:
            raise DeviceError(DeviceErrorKind.BAD_REQUEST, f"{what}: unknown door action")
        if not 1 <= door_no < 2**31:
            raise DeviceError(DeviceErrorKind.BAD_REQUEST, f"{what}: door ids are positive")
        await self._ok("POST", api.DOOR_ACTION[action], what, api.build_door_body(door_no))
        return {"door": door_no, "action": action}

    # ---- users -------------------------------------------------------------------------

    async def add_user(self, user: UserRecord) -> dict[str, Any]:
        what = f"add user {user.employee_no}"
        await self._ok("POST", api.USERS, what, api.build_user(user))
        if user.card_no:
            status, content = await self._call(
                "POST", api.CARDS, f"{what}: card", api.build_card(user.card_no)
            )
            api.check_answer(status, content, f"{what}: card")
            card_id = api.parse_created_card_id(content)
            await self._ok(
                "PUT",
                f"{api.USERS}/{user.employee_no}",
                f"{what}: card",
                api.build_user_cards([card_id]),
            )
        return {"employee_no": user.employee_no, "card_no": user.card_no}

    async def delete_user(self, employee_no: str) -> dict[str, Any]:
        if not employee_no.isalnum():
            raise DeviceError(DeviceErrorKind.BAD_REQUEST, "delete user: ids are alphanumeric")
        await self._ok("DELETE", f"{api.USERS}/{employee_no}", f"delete user {employee_no}")
        return {"employee_no": employee_no, "deleted": True}

    async def search_users(self, employee_nos: list[str] | None = None) -> list[UserRecord]:
        status, content = await self._call("GET", f"{api.USERS}?limit={api.MAX_ROWS}", "users")
        api.check_answer(status, content, "users")
        users = api.parse_users(content)
        if employee_nos is not None:
            wanted = set(employee_nos)
            users = [u for u in users if u.employee_no in wanted]
        return users

    # ---- events ------------------------------------------------------------------------

    async def events_since(self, serial_no: int, *, limit: int = 1000) -> list[AccessEvent]:
        now = self._utcnow()
        since = now - BACKFILL
        if self._position is not None and self._position[0] <= serial_no:
            since = self._position[1]
        found: dict[int, AccessEvent] = {}
        page_size = PAGE_SIZE
        for _ in range(MAX_PAGES):
            body = api.build_event_search(since, now + dt.timedelta(minutes=5), page_size)
            page_status, content = await self._call("POST", api.EVENT_SEARCH, "event search", body)
            api.check_answer(page_status, content, "event search")
            page = api.parse_event_page(content)
            found.update((e.serial_no, e) for e in page.events if e.serial_no > serial_no)
            if page.rows < page_size or page.last_time is None or len(found) >= limit:
                break
            if page.last_time <= since:
                # A full page within one instant (a backlog stamped alike): the window cannot
                # move on by time, so ask for that instant in a bigger page.
                if page_size >= api.MAX_ROWS:
                    raise DeviceError(
                        DeviceErrorKind.PROTOCOL,
                        f"event search: more than {api.MAX_ROWS} events share "
                        f"{since.isoformat()}; the gateway cannot page through them",
                    )
                page_size = min(api.MAX_ROWS, page_size * 2)
                continue
            page_size = PAGE_SIZE
            since = page.last_time  # inclusive: the id filter drops the rows seen twice
        events = [found[no] for no in sorted(found)][:limit]
        if events:
            self._position = (events[-1].serial_no, events[-1].time)
        return events


register("biostar", BioStarAdapter)
