"""A Suprema BioStar 2 server's REST API (`td-devsim biostar`), from the API facts alone.

Session login (`POST /api/login` answers a `bs-session-id` header, required on every other
call), event search by datetime (`POST /api/events/search`; no match leaves `rows` out),
door open / release / lock / unlock, users and cards. Events get increasing ids as they are
stored. Knobs: latency, a share of calls answered 503, sessions that expire.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import secrets
from dataclasses import dataclass, field
from typing import Any

import trio

# BS2 event codes: identify success by card / fingerprint / face; a door unlocked.
IDENTIFY_OK = (0x1301, 0x1302, 0x1303)
DOOR_UNLOCKED = 0x5200
MAX_BODY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 18443
    user: str = "admin"
    password: str = ""
    doors: int = 2
    users: tuple[str, ...] = ("1001", "1002", "1003")
    punch_every_s: float = 0.0
    latency_ms: int = 0
    busy_rate: float = 0.0
    session_ttl_s: float = 0.0  # 0: sessions never expire
    seed: int | None = None


@dataclass
class ServerState:
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    cards: dict[str, str] = field(default_factory=dict)  # card row id -> card number
    events: list[dict[str, Any]] = field(default_factory=list)
    sessions: dict[str, float] = field(default_factory=dict)
    door_modes: dict[int, str] = field(default_factory=dict)
    logins: int = 0


def _utc_text(when: dt.datetime) -> str:
    return (
        when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 10000:02d}Z"
    )


def _parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


class BioStarServer:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.state = ServerState(
            users={u: {"user_id": u, "name": f"User {u}"} for u in config.users}
        )
        self.rng = random.Random(config.seed)
        self._turn = 0

    def add_event(self, code: int, *, user_id: str | None = None, door: int | None = None) -> None:
        now = dt.datetime.now(dt.UTC)
        row: dict[str, Any] = {
            "id": str(len(self.state.events) + 1),
            "datetime": _utc_text(now),
            "server_datetime": _utc_text(now),
            "event_type_id": {"code": str(code)},
            "device_id": {"id": "541531029", "name": "BioStation 2"},
        }
        if user_id is not None:
            user = self.state.users.get(user_id, {})
            row["user_id"] = {"user_id": user_id, "name": user.get("name", "")}
        if door is not None:
            row["door_id"] = [{"id": str(door), "name": f"Door {door}"}]
        self.state.events.append(row)

    def punch(self) -> None:
        users = sorted(self.state.users) or ["1"]
        user = users[self._turn % len(users)]
        self._turn += 1
        self.add_event(self.rng.choice(IDENTIFY_OK), user_id=user, door=1)

    # ---- ASGI -----------------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > MAX_BODY_BYTES:
                await _answer(send, 413, {"Response": {"message": "too large"}})
                return
            if not message.get("more_body"):
                break
        if self.config.latency_ms:
            await trio.sleep(self.config.latency_ms / 1000)
        status, payload, headers = self.handle(scope, body)
        await _answer(send, status, payload, headers)

    def handle(
        self, scope: dict[str, Any], body: bytes
    ) -> tuple[int, dict[str, Any], list[tuple[bytes, bytes]]]:
        method, path = scope["method"], scope["path"]
        try:
            data = json.loads(body) if body.strip() else {}
        except ValueError:
            return 400, _error("bad JSON"), []
        if method == "POST" and path == "/api/login":
            return self._login(data)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        if not self._session_ok(headers.get("bs-session-id", "")):
            return 401, _error("Login required"), []
        if self.rng.random() < self.config.busy_rate:
            return 503, _error("Server busy"), []
        return (*self._route(method, path, data), [])

    def _login(self, data: Any) -> tuple[int, dict[str, Any], list[tuple[bytes, bytes]]]:
        user = data.get("User") if isinstance(data, dict) else None
        if (
            not isinstance(user, dict)
            or user.get("login_id") != self.config.user
            or not secrets.compare_digest(str(user.get("password", "")), self.config.password)
        ):
            return 401, _error("Login failed"), []
        session = secrets.token_hex(16)
        self.state.sessions[session] = trio.current_time()
        self.state.logins += 1
        return 200, {"User": {"login_id": self.config.user}}, [(b"bs-session-id", session.encode())]

    def _session_ok(self, session: str) -> bool:
        started = self.state.sessions.get(session)
        if started is None:
            return False
        ttl = self.config.session_ttl_s
        if ttl and trio.current_time() - started > ttl:
            del self.state.sessions[session]
            return False
        return True

    def _route(self, method: str, path: str, data: Any) -> tuple[int, dict[str, Any]]:
        parts = path.strip("/").split("/")
        if method == "POST" and path == "/api/events/search":
            return self._search(data)
        if method == "POST" and len(parts) == 3 and parts[:2] == ["api", "doors"]:
            return self._door(parts[2], data)
        if path == "/api/users" and method == "GET":
            rows = list(self.state.users.values())
            return 200, {"UserCollection": {"rows": rows, "total": str(len(rows))}}
        if path == "/api/users" and method == "POST":
            user = data.get("User", {}) if isinstance(data, dict) else {}
            user_id = str(user.get("user_id", ""))
            if not user_id:
                return 400, _error("user_id is required")
            if user_id in self.state.users:
                return 400, _error("Duplicated user ID")
            self.state.users[user_id] = {"user_id": user_id, "name": user.get("name", "")}
            return 200, {"Response": {"code": "0", "message": "Success"}}
        if len(parts) == 3 and parts[:2] == ["api", "users"]:
            user_id = parts[2]
            if user_id not in self.state.users:
                return 404, _error("User not found")
            if method == "DELETE":
                del self.state.users[user_id]
                return 200, {"Response": {"code": "0", "message": "Success"}}
            if method == "PUT":
                change = data.get("User", {}) if isinstance(data, dict) else {}
                for card in change.get("cards", []):
                    if str(card.get("id")) not in self.state.cards:
                        return 400, _error("Card not found")
                self.state.users[user_id].update(change)
                return 200, {"Response": {"code": "0", "message": "Success"}}
        if path == "/api/cards" and method == "POST":
            rows = data.get("CardCollection", {}).get("rows", []) if isinstance(data, dict) else []
            created = []
            for row in rows:
                card_id = str(len(self.state.cards) + 1)
                self.state.cards[card_id] = str(row.get("card_id", ""))
                created.append({"id": card_id, "card_id": self.state.cards[card_id]})
            return 200, {"CardCollection": {"rows": created}}
        return 404, _error(f"no such endpoint {method} {path}")

    def _search(self, data: Any) -> tuple[int, dict[str, Any]]:
        query = data.get("Query", {}) if isinstance(data, dict) else {}
        limit = int(query.get("limit", 100))
        rows = self.state.events
        for condition in query.get("conditions", []):
            if condition.get("column") == "datetime" and condition.get("operator") == 3:
                low, high = (_parse_time(v) for v in condition["values"][:2])
                rows = [r for r in rows if low <= _parse_time(r["datetime"]) <= high]
        rows = sorted(rows, key=lambda r: (r["datetime"], int(r["id"])))[:limit]
        if not rows:
            return 200, {"EventCollection": {}}
        return 200, {"EventCollection": {"rows": rows}}

    def _door(self, action: str, data: Any) -> tuple[int, dict[str, Any]]:
        if action not in ("open", "release", "lock", "unlock"):
            return 404, _error(f"no door action {action}")
        rows = data.get("DoorCollection", {}).get("rows", []) if isinstance(data, dict) else []
        if not rows:
            return 400, _error("DoorCollection.rows is required")
        for row in rows:
            door = int(str(row.get("id", "0")) or 0)
            if not 1 <= door <= self.config.doors:
                return 400, _error(f"Door {row.get('id')} not found")
            self.state.door_modes[door] = action
            if action in ("open", "unlock"):
                self.add_event(DOOR_UNLOCKED, door=door)
        return 200, {"Response": {"code": "0", "message": "Success"}}


def _error(message: str) -> dict[str, Any]:
    return {"Response": {"code": "1", "message": message}}


async def _answer(
    send: Any, status: int, payload: dict[str, Any], extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps(payload).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def serve(
    server: BioStarServer, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve until cancelled; reports the bound port."""
    import hypercorn.config
    import hypercorn.trio

    config = hypercorn.config.Config()
    config.bind = [f"{server.config.host}:{server.config.port}"]
    config.loglevel = "WARNING"
    config.accesslog = None

    class _Port:
        def started(self, value: list[str] | None = None) -> None:
            task_status.started(int((value or [":0"])[0].rsplit(":", 1)[1]))

    async def punches() -> None:
        every = server.config.punch_every_s
        if every <= 0:
            return
        while True:
            await trio.sleep(every)
            server.punch()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(punches)
        await hypercorn.trio.serve(server, config, task_status=_Port())  # type: ignore[arg-type]
