"""The simulated terminal's alert stream: what firmware sends on
`GET /ISAPI/Event/notification/alertStream`, written from the protocol notes.

Raw bytes on the socket (the connection is the stream, closed when the client goes): the
response head, then one multipart part per access event as it is logged, and a `videoloss`
heartbeat when nothing happened for a while. On connect the last logged event is sent again
marked `currentEvent: false`, as terminals do. Built here, not with the adapter's parser, so
the simulator cannot share that parser's mistakes.
"""

from __future__ import annotations

import json
from typing import Any

import trio

from devsim.hikvision.terminal import SimulatedTerminal

BOUNDARY = "MIME_boundary"
HEARTBEAT_S = 10.0


def response_head() -> bytes:
    return (
        "HTTP/1.1 200 OK\r\n"
        "Server: webs\r\n"
        "Connection: close\r\n"
        f"Content-Type: multipart/mixed; boundary={BOUNDARY}\r\n"
        "\r\n"
    ).encode()


def part(document: dict[str, Any]) -> bytes:
    body = json.dumps(document, ensure_ascii=False, indent=1).encode()
    head = (
        f"--{BOUNDARY}\r\n"
        'Content-Type: application/json; charset="UTF-8"\r\n'
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    ).encode()
    return head + body + b"\r\n"


def access_event_part(terminal: SimulatedTerminal, event: dict[str, Any], current: bool) -> bytes:
    """The stream's shape of one logged event (the search's `major`/`minor`/`time` renamed)."""
    inner: dict[str, Any] = {
        "deviceName": terminal.config.model,
        "majorEventType": event["major"],
        "subEventType": event["minor"],
        "serialNo": event["serialNo"],
        "currentVerifyMode": event.get("currentVerifyMode", "invalid"),
        "currentEvent": current,
        "frontSerialNo": event["serialNo"] - 1,
        "attendanceStatus": "undefined",
    }
    for key in ("name", "employeeNoString", "cardNo", "doorNo"):
        if key in event:
            inner[key] = event[key]
    return part(
        {
            "ipAddress": terminal.config.host,
            "portNo": terminal.config.port,
            "protocol": "HTTP",
            "channelID": 1,
            "dateTime": event["time"],
            "activePostCount": 1,
            "eventType": "AccessControllerEvent",
            "eventState": "active",
            "eventDescription": "Access Controller Event",
            "AccessControllerEvent": inner,
        }
    )


def heartbeat_part(terminal: SimulatedTerminal) -> bytes:
    return part(
        {
            "ipAddress": terminal.config.host,
            "portNo": terminal.config.port,
            "protocol": "HTTP",
            "channelID": 1,
            "dateTime": terminal.local_now().isoformat(),
            "activePostCount": 0,
            "eventType": "videoloss",
            "eventState": "inactive",
            "eventDescription": "videoloss alarm",
        }
    )


async def send_stream(
    stream: trio.SocketStream, terminal: SimulatedTerminal, heartbeat_s: float = HEARTBEAT_S
) -> None:
    """Send the stream until the client goes away (or the shell is cancelled)."""
    await stream.send_all(response_head())
    sent = len(terminal.events)
    if sent:
        await stream.send_all(access_event_part(terminal, terminal.events[-1], current=False))
    while True:
        logged = terminal.event_logged
        while sent < len(terminal.events):
            await stream.send_all(access_event_part(terminal, terminal.events[sent], True))
            sent += 1
        with trio.move_on_after(heartbeat_s) as idle:
            await logged.wait()
        if idle.cancelled_caught:
            await stream.send_all(heartbeat_part(terminal))
