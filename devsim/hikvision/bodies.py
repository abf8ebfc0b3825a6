"""Response bodies of the simulated terminal, shaped like real firmware.

Namespaces differ per document on purpose, as on real devices: deviceInfo in hikvision.com
ver20, status in isapi.org ver20, time in std-cgi ver10, door parameters in psia, JSON
elsewhere. The adapter must read them all by local name.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape

import msgspec

if TYPE_CHECKING:
    from devsim.hikvision.terminal import SimulatorConfig

HIKVISION_NS = "http://www.hikvision.com/ver20/XMLSchema"
ISAPI_NS = "http://www.isapi.org/ver20/XMLSchema"
STD_CGI_NS = "http://www.std-cgi.com/ver10/XMLSchema"
PSIA_NS = "urn:psialliance-org"
_HEAD = '<?xml version="1.0" encoding="UTF-8"?>\n'


def device_info_xml(config: SimulatorConfig, realm: str) -> bytes:
    digest = hashlib.sha1(config.serial.encode(), usedforsecurity=False).hexdigest()
    mac = "44:19:b6:" + ":".join(digest[i : i + 2] for i in range(0, 6, 2))
    return (
        f'{_HEAD}<DeviceInfo version="2.0" xmlns="{HIKVISION_NS}">\n'
        f"<deviceName>{escape(realm)}</deviceName>\n"
        "<deviceID>255</deviceID>\n"
        f"<model>{escape(config.model)}</model>\n"
        f"<serialNumber>{escape(config.serial)}</serialNumber>\n"
        f"<macAddress>{mac}</macAddress>\n"
        "<firmwareVersion>V3.2.30</firmwareVersion>\n"
        "<firmwareReleasedDate>build 230815</firmwareReleasedDate>\n"
        "<encoderVersion>V2.0</encoderVersion>\n"
        "<deviceType>ACS</deviceType>\n"
        "<subDeviceType>accessControlTerminal</subDeviceType>\n"
        "<telecontrolID>1</telecontrolID>\n"
        "<localZoneNum>2</localZoneNum>\n"
        "<alarmOutNum>1</alarmOutNum>\n"
        f"<electroLockNum>{config.doors}</electroLockNum>\n"
        "<RS485Num>1</RS485Num>\n"
        "<manufacturer>hikvision</manufacturer>\n"
        "</DeviceInfo>\n"
    ).encode()


def device_status_xml(now: dt.datetime, uptime_s: int, reboots: int) -> bytes:
    return (
        f'{_HEAD}<DeviceStatus version="2.0" xmlns="{ISAPI_NS}">\n'
        f"<currentDeviceTime>{now.isoformat()}</currentDeviceTime>\n"
        f"<deviceUpTime>{uptime_s}</deviceUpTime>\n"
        "<CPUList><CPU><cpuDescription>ARM</cpuDescription>"
        "<cpuUtilization>7</cpuUtilization></CPU></CPUList>\n"
        "<MemoryList><Memory><memoryDescription>DDR Memory</memoryDescription>"
        "<memoryUsage>163</memoryUsage><memoryAvailable>348</memoryAvailable>"
        "</Memory></MemoryList>\n"
        f"<totalRebootCount>{reboots}</totalRebootCount>\n"
        "</DeviceStatus>\n"
    ).encode()


def time_xml(local_now: dt.datetime, zone: str) -> bytes:
    return (
        f'{_HEAD}<Time version="1.0" xmlns="{STD_CGI_NS}">\n'
        "<timeMode>manual</timeMode>\n"
        f"<localTime>{local_now.isoformat()}</localTime>\n"
        f"<timeZone>{escape(zone)}</timeZone>\n"
        "</Time>\n"
    ).encode()


def door_capabilities_xml(doors: int) -> bytes:
    return (
        f'{_HEAD}<RemoteControlDoor version="2.0" xmlns="{ISAPI_NS}">\n'
        f'<doorNo min="1" max="{doors}"/>\n'
        '<cmd opt="open,close,alwaysOpen,alwaysClose"/>\n'
        "</RemoteControlDoor>\n"
    ).encode()


def door_param_xml(door_no: int) -> bytes:
    return (
        f'{_HEAD}<DoorParam version="2.0" xmlns="{PSIA_NS}">\n'
        f"<doorName>Door {door_no}</doorName>\n"
        "<magneticType>alwaysClose</magneticType>\n"
        "<openButtonType>alwaysOpen</openButtonType>\n"
        "<openDuration>5</openDuration>\n"
        "<disabledOpenDuration>10</disabledOpenDuration>\n"
        "<magneticAlarmTimeout>0</magneticAlarmTimeout>\n"
        "</DoorParam>\n"
    ).encode()


def user_check_xml(locked: bool, unlock_in_s: int, retries_left: int) -> bytes:
    return (
        f'{_HEAD}<userCheck version="2.0" xmlns="{ISAPI_NS}">\n'
        "<statusValue>401</statusValue>\n"
        "<statusString>Unauthorized</statusString>\n"
        "<isDefaultPassword>false</isDefaultPassword>\n"
        "<isRiskPassword>false</isRiskPassword>\n"
        "<isActivated>true</isActivated>\n"
        f"<lockStatus>{'lock' if locked else 'unlock'}</lockStatus>\n"
        f"<unlockTime>{unlock_in_s}</unlockTime>\n"
        f"<retryLoginTime>{retries_left}</retryLoginTime>\n"
        "</userCheck>\n"
    ).encode()


def response_status(
    path: str,
    as_json: bool,
    code: int = 1,
    text: str = "OK",
    sub: str = "ok",
    error_code: int | None = None,
    namespace: str = ISAPI_NS,
) -> tuple[bytes, str]:
    """A status answer: JSON for `?format=json` calls, else XML ResponseStatus."""
    if as_json:
        body: dict[str, object] = {"statusCode": code, "statusString": text, "subStatusCode": sub}
        if code != 1:
            body["requestURL"] = path
            body["errorCode"] = error_code or code * 0x10000000
            body["errorMsg"] = sub
        return msgspec.json.encode(body), "application/json"
    extra = ""
    if error_code is not None:
        extra = f"<errorCode>{error_code}</errorCode>\n<errorMsg>{sub}</errorMsg>\n"
    xml = (
        f'{_HEAD}<ResponseStatus version="2.0" xmlns="{namespace}">\n'
        f"<requestURL>{escape(path)}</requestURL>\n"
        f"<statusCode>{code}</statusCode>\n"
        f"<statusString>{text}</statusString>\n"
        f"<subStatusCode>{sub}</subStatusCode>\n"
        f"{extra}</ResponseStatus>\n"
    )
    return xml.encode(), "application/xml"
