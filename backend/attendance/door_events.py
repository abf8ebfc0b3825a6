"""Door events in words: Hikvision major/minor codes (decimal, SDK constants) to a phrase,
and which ones are punches.

Codes are decimal as the terminal sends them: 0x65 = 101 is "employee no. and PIN granted",
while 0x68 = 104 is a failed detection, not a grant (a classic hex/decimal mix-up).
"""

from __future__ import annotations

MAJOR_ALARM = 1
MAJOR_EXCEPTION = 2
MAJOR_OPERATION = 3
MAJOR_EVENT = 5

# Major 5 minors that mean "verification passed": each is one punch of the person.
GRANTED: dict[int, str] = {
    1: "card granted",
    2: "card and PIN granted",
    16: "multi-factor verification granted",
    38: "fingerprint granted",
    40: "card and fingerprint granted",
    43: "card, fingerprint and PIN granted",
    46: "fingerprint and PIN granted",
    54: "face and fingerprint granted",
    57: "face and PIN granted",
    60: "face and card granted",
    63: "face, PIN and fingerprint granted",
    66: "face, card and fingerprint granted",
    69: "employee no. and fingerprint granted",
    72: "employee no., fingerprint and PIN granted",
    75: "face granted",
    77: "employee no. and face granted",
    101: "employee no. and PIN granted",
    181: "PIN granted",
}

_EVENTS: dict[int, str] = {
    3: "card and PIN refused",
    4: "card and PIN timed out",
    6: "card has no access right",
    7: "card outside its valid period",
    8: "card expired",
    9: "invalid card",
    10: "anti-passback refused",
    11: "interlocked door not closed",
    21: "door unlocked",
    22: "door locked",
    23: "door opened abnormally",
    24: "door held open",
    39: "fingerprint refused",
    76: "face refused",
    104: "human detection failed",
}

_OPERATIONS: dict[int, str] = {
    123: "remote reboot",
    1024: "remote open",
    1025: "remote close",
    1026: "remote always open",
    1027: "remote always closed",
}


def is_punch(major: int, minor: int, employee_no: str | None, card_no: str | None) -> bool:
    """A granted verification that names a person (an empty or "0" employee no. does not)."""
    if major != MAJOR_EVENT or minor not in GRANTED:
        return False
    return bool(employee_no and employee_no != "0") or bool(card_no and card_no != "0")


def describe(major: int, minor: int) -> str:
    """The event in words; codes not known here are given as numbers."""
    if major == MAJOR_EVENT:
        text = GRANTED.get(minor) or _EVENTS.get(minor)
    elif major == MAJOR_OPERATION:
        text = _OPERATIONS.get(minor)
    elif major == MAJOR_ALARM:
        text = f"alarm {minor}"
    elif major == MAJOR_EXCEPTION:
        text = f"device exception {minor}"
    else:
        text = None
    return text or f"event {major}/{minor}"
