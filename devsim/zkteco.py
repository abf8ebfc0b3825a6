"""A ZKTeco attendance terminal speaking the PUSH protocol to a server (`td-devsim zkteco`).

Written from the protocol facts alone, on purpose sharing no code with the gateway: a
simulator that reused the gateway's parser could not catch that parser's mistakes.

The terminal is the client. It shakes hands (`GET /iclock/cdata?options=all`), uploads its
punches (`POST /iclock/cdata?table=ATTLOG`) and keeps each one until the server answers
`OK: n`, polls for commands (`GET /iclock/getrequest`) every `Delay` seconds and reports
their results (`POST /iclock/devicecmd`). One connection per request, as many units do.

Fault knobs: `drop_rate` closes the connection before reading the answer (the server may
have stored what was sent; the terminal sends it again), `resend_rate` uploads a batch a
second time after it was acknowledged, `slow_ms` sends each request in two halves with a
pause between, `refuse_rate` answers commands with Return=-1005 (busy).
"""

from __future__ import annotations

import datetime as dt
import random
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

MAX_ANSWER_BYTES = 1024 * 1024
PUNCHES_PER_UPLOAD = 500
REQUEST_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class TerminalConfig:
    gateway: str  # http://host:port
    serial: str
    users: tuple[str, ...] = ("1001", "1002", "1003")
    punch_every_s: float = 0.0  # 0: no punches of its own
    max_punches: int = 0  # 0: no limit
    poll_s: float | None = None  # overrides the server's Delay when set
    error_delay_s: float | None = None  # overrides the server's ErrorDelay when set
    drop_rate: float = 0.0
    resend_rate: float = 0.0
    slow_ms: int = 0
    refuse_rate: float = 0.0
    reboot_s: float = 5.0
    # The zone its clock shows until a server's TimeZone option changes it (minutes east).
    zone_minutes: int = 0
    device_type: str = "att"
    firmware: str = "Ver 8.0.4.2-20230912"
    seed: int | None = None


@dataclass
class Punch:
    pin: str
    time: dt.datetime  # terminal local time
    status: int
    verify: int

    def line(self) -> str:
        stamp = self.time.strftime("%Y-%m-%d %H:%M:%S")
        return f"{self.pin}\t{stamp}\t{self.status}\t{self.verify}\t0\t0\t0"


@dataclass
class TerminalState:
    """What a test or a benchmark can look at while the terminal runs."""

    users: dict[str, dict[str, str]] = field(default_factory=dict)
    unsent: list[Punch] = field(default_factory=list)
    punched: int = 0
    acknowledged: int = 0
    uploads: int = 0
    upload_seconds: list[float] = field(default_factory=list)  # request to `OK`, per upload
    resent_uploads: int = 0
    dropped_requests: int = 0
    refused_handshakes: int = 0
    doors_opened: int = 0
    commands_done: dict[str, int] = field(default_factory=dict)
    handshakes: int = 0
    options: dict[str, str] = field(default_factory=dict)
    clock_offset: dt.timedelta = dt.timedelta(0)
    zone_minutes: int = 0


class Refused(Exception):
    """The server answered with an error status."""


class Dropped(Exception):
    """We closed the connection on purpose (a fault knob)."""


Echo = Callable[[str], None]
_FAILURES = (Refused, Dropped, OSError, trio.TooSlowError, ValueError)


def _first_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


class PushTerminal:
    """One simulated terminal; `await terminal.run()` until cancelled."""

    def __init__(self, config: TerminalConfig, echo: Echo | None = None) -> None:
        parsed = urllib.parse.urlsplit(config.gateway)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"--gateway must be http://host:port, got {config.gateway!r}")
        self.config = config
        self.host = parsed.hostname
        self.port = parsed.port or 80
        self.state = TerminalState(
            users={pin: {"name": f"User {pin}"} for pin in config.users},
            zone_minutes=config.zone_minutes,
        )
        self.rng = random.Random(config.seed)
        self.echo = echo or (lambda _line: None)
        self._upload_now = trio.Event()
        self._drained = trio.Event()
        self.punching = True
        self._last_punch: dt.datetime | None = None
        self._user_turn = 0

    # ---- HTTP, by hand: one request per connection ----------------------------------------

    async def _request(
        self, method: str, path: str, query: dict[str, str], body: bytes = b""
    ) -> tuple[int, str]:
        target = path + "?" + urllib.parse.urlencode(query)
        head = (
            f"{method} {target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"User-Agent: iClock Proxy/1.09\r\nConnection: close\r\n"
            f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        with trio.fail_after(REQUEST_TIMEOUT_S):
            stream = await trio.open_tcp_stream(self.host, self.port)
            async with stream:
                payload = head + body
                if self.config.slow_ms:
                    half = len(payload) // 2
                    await stream.send_all(payload[:half])
                    await trio.sleep(self.config.slow_ms / 1000)
                    payload = payload[half:]
                await stream.send_all(payload)
                if self.rng.random() < self.config.drop_rate:
                    self.state.dropped_requests += 1
                    raise Dropped
                return await _read_answer(stream)

    # ---- the terminal's loops -------------------------------------------------------------

    async def run(self) -> None:
        # People punch whether or not the server is reachable; the terminal keeps the
        # punches until an upload is acknowledged.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._punch_loop)
            while True:
                failure: BaseException | None = None
                try:
                    await self._handshake()
                    async with trio.open_nursery() as session:
                        session.start_soon(self._upload_loop)
                        await self._poll_loop()
                except* _FAILURES as group:
                    failure = _first_leaf(group)
                if failure is not None:
                    self.echo(
                        f"{self.config.serial}: {type(failure).__name__}: {failure}; retrying"
                    )
                    await trio.sleep(self._error_delay())

    def _error_delay(self) -> float:
        if self.config.error_delay_s is not None:
            return self.config.error_delay_s
        return float(self.state.options.get("ErrorDelay", "30") or 30)

    def _poll_delay(self) -> float:
        if self.config.poll_s is not None:
            return self.config.poll_s
        return float(self.state.options.get("Delay", "10") or 10)

    def _query(self, **extra: str) -> dict[str, str]:
        return {"SN": self.config.serial, **extra}

    async def _handshake(self) -> None:
        status, text = await self._request(
            "GET",
            "/iclock/cdata",
            self._query(
                options="all", pushver="2.4.1", language="69", DeviceType=self.config.device_type
            ),
        )
        if status != 200:
            self.state.refused_handshakes += 1
            raise Refused(f"handshake answered {status}: {text[:200]}")
        lines = text.splitlines()
        if not lines or not lines[0].startswith("GET OPTION FROM:"):
            raise ValueError(f"handshake answer does not start with GET OPTION FROM: {text[:80]!r}")
        options = {}
        for line in lines[1:]:
            key, sep, value = line.partition("=")
            if sep:
                options[key.strip()] = value.strip()
        self.state.options = options
        self.state.zone_minutes = _zone_minutes(options.get("TimeZone", "0"))
        self.state.handshakes += 1
        self.echo(
            f"{self.config.serial}: connected; Delay={options.get('Delay')}"
            f" TimeZone={options.get('TimeZone')}"
        )

    def local_now(self) -> dt.datetime:
        utc = dt.datetime.now(dt.UTC) + self.state.clock_offset
        return (utc + dt.timedelta(minutes=self.state.zone_minutes)).replace(
            tzinfo=None, microsecond=0
        )

    def punch(self, pin: str | None = None, status: int = 0, verify: int = 4) -> Punch:
        """Record a punch now (a distinct second per punch, as the terminal keeps them)."""
        if pin is None:
            pins = list(self.state.users) or ["1"]
            pin = pins[self._user_turn % len(pins)]
            self._user_turn += 1
        time = self.local_now()
        if self._last_punch is not None and time <= self._last_punch:
            time = self._last_punch + dt.timedelta(seconds=1)
        self._last_punch = time
        punch = Punch(pin=pin, time=time, status=status, verify=verify)
        self.state.unsent.append(punch)
        self.state.punched += 1
        self._upload_now.set()
        return punch

    async def _punch_loop(self) -> None:
        every = self.config.punch_every_s
        if every <= 0:
            await trio.sleep_forever()
        # Terminals of a fleet do not punch in step.
        await trio.sleep(self.rng.uniform(0, every))
        while self.punching and (
            not self.config.max_punches or self.state.punched < self.config.max_punches
        ):
            self.punch(status=self.rng.choice((0, 1)), verify=self.rng.choice((1, 4, 15)))
            await trio.sleep(every)
        await trio.sleep_forever()

    async def drained(self) -> None:
        """Returns once every punch made so far has been acknowledged."""
        while self.state.unsent:
            if self._drained.is_set():
                self._drained = trio.Event()
            await self._drained.wait()

    async def _upload_loop(self) -> None:
        while True:
            if not self.state.unsent:
                self._drained.set()
                await self._upload_now.wait()
            self._upload_now = trio.Event()
            while self.state.unsent:
                batch = self.state.unsent[:PUNCHES_PER_UPLOAD]
                await self._upload(batch)
                del self.state.unsent[: len(batch)]
                self.state.acknowledged += len(batch)
                if self.rng.random() < self.config.resend_rate:
                    self.state.resent_uploads += 1
                    await self._upload(batch)
                    self.echo(f"{self.config.serial}: sent {len(batch)} punches again")

    async def _upload(self, batch: list[Punch]) -> None:
        body = ("\n".join(p.line() for p in batch) + "\n").encode()
        stamp = self.state.options.get("ATTLOGStamp", "0")
        started = trio.current_time()
        status, text = await self._request(
            "POST", "/iclock/cdata", self._query(table="ATTLOG", Stamp=stamp), body
        )
        self.state.uploads += 1
        if len(self.state.upload_seconds) < 100_000:
            self.state.upload_seconds.append(trio.current_time() - started)
        if status != 200 or not text.startswith("OK"):
            raise Refused(f"ATTLOG upload answered {status}: {text[:200]}")

    async def _poll_loop(self) -> None:
        while True:
            info = (
                f"{self.config.firmware},{len(self.state.users)},0,{self.state.punched},127.0.0.1"
            )
            status, text = await self._request("GET", "/iclock/getrequest", self._query(INFO=info))
            if status != 200:
                raise Refused(f"getrequest answered {status}: {text[:200]}")
            results = [self._execute(line) for line in text.splitlines() if line.startswith("C:")]
            reboot = any(result[2] == "REBOOT" and result[1] == 0 for result in results)
            recheck = any(result[2] == "CHECK" and result[1] == 0 for result in results)
            if results:
                body = "\n".join(f"ID={cid}&Return={code}&CMD={cmd}" for cid, code, cmd in results)
                status, text = await self._request(
                    "POST", "/iclock/devicecmd", self._query(), body.encode() + b"\n"
                )
                if status != 200:
                    raise Refused(f"devicecmd answered {status}: {text[:200]}")
            if reboot:
                self.echo(f"{self.config.serial}: rebooting for {self.config.reboot_s:g} s")
                await trio.sleep(self.config.reboot_s)
                await self._handshake()
            elif recheck:
                await self._handshake()
            await trio.sleep(self._poll_delay())

    def _execute(self, line: str) -> tuple[str, int, str]:
        """Run one `C:<id>:<command>` line: (id, Return code, command word)."""
        _, command_id, text = line.split(":", 2)
        word = text.split(" ", 1)[0]
        if self.rng.random() < self.config.refuse_rate:
            return command_id, -1005, word
        if text == "AC_UNLOCK":
            self.state.doors_opened += 1
            self.echo(f"{self.config.serial}: door opened (command {command_id})")
            code = 0
        elif text in ("REBOOT", "CHECK", "INFO", "LOG"):
            code = 0
        elif text.startswith("DATA UPDATE USERINFO "):
            fields = _key_values(text[len("DATA UPDATE USERINFO ") :])
            pin = fields.get("PIN", "")
            if not pin:
                code = -1
            else:
                self.state.users[pin] = {
                    "name": fields.get("Name", ""),
                    "card": fields.get("Card", ""),
                }
                code = 0
        elif text.startswith("DATA DELETE USERINFO "):
            pin = _key_values(text[len("DATA DELETE USERINFO ") :]).get("PIN", "")
            code = 0 if self.state.users.pop(pin, None) is not None else -10
        else:
            code = -1002
        self.state.commands_done[word] = self.state.commands_done.get(word, 0) + 1
        return command_id, code, word


async def _read_answer(stream: trio.SocketStream) -> tuple[int, str]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise OSError("the server closed the connection before answering")
        data += chunk
        if len(data) > MAX_ANSWER_BYTES:
            raise ValueError("the answer headers are too large")
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    length = int(headers.get("content-length", "-1"))
    while length < 0 or len(body) < length:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        body += chunk
        if len(body) > MAX_ANSWER_BYTES:
            raise ValueError("the answer is too large")
    return status, body[: length if length >= 0 else None].decode("utf-8", "replace")


def _key_values(text: str) -> dict[str, str]:
    values = {}
    for part in text.split("\t"):
        key, sep, value = part.partition("=")
        if sep:
            values[key] = value
    return values


def _zone_minutes(text: str) -> int:
    """`8` (hours), `330` (minutes, for half/quarter zones), `-5`."""
    try:
        value = int(text)
    except ValueError:
        return 0
    return value * 60 if -24 <= value <= 24 else value
