"""Bounds every stored value keeps: integers PostgreSQL columns hold, text without NUL, and
free-form JSON (command payloads, results, device info) of bounded depth.

PostgreSQL cannot store U+0000 in `text` or `jsonb`, `integer` columns hold 32 bits and
`bigint` 64, and JSON nested a thousand deep exhausts a decoder's stack. Each is refused
where a message is decoded, with the field named, so it never reaches the database as a
500 on one side and a batch retried forever on the other.
"""

from __future__ import annotations

from typing import Annotated, Any

from msgspec import Meta

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
# Free-form JSON deeper than this is not a command payload or a device report but an attack.
MAX_DEPTH = 32
MAX_FREE_FORM_ITEMS = 10_000
MAX_FREE_FORM_STRING = 64 * 1024

# In every JSON Schema generated from these types, so clients (and fuzzers) are told too.
NO_NUL = r"^[^\x00]*$"

Int32 = Annotated[int, Meta(ge=-INT32_MAX - 1, le=INT32_MAX)]
Int64 = Annotated[int, Meta(ge=-INT64_MAX - 1, le=INT64_MAX)]
Count = Annotated[int, Meta(ge=0, le=INT64_MAX)]
Revision = Annotated[int, Meta(ge=0, le=INT32_MAX)]
# A float that JSON and PostgreSQL both take (no inf, no NaN beyond this range).
Measure = Annotated[float, Meta(ge=-1e300, le=1e300)]

# Text that names something (ids, hosts, versions, reasons): NUL is refused, not replaced.
Name64 = Annotated[str, Meta(max_length=64, pattern=NO_NUL)]
Name256 = Annotated[str, Meta(max_length=256, pattern=NO_NUL)]
Text4k = Annotated[str, Meta(max_length=4096, pattern=NO_NUL)]


class FreeFormError(ValueError):
    """Free-form JSON that cannot be stored; the message starts with the offending path."""


def check_free_form(value: Any, path: str) -> None:
    """Raise FreeFormError naming the first value under `path` that PostgreSQL's jsonb cannot
    store or that is nested deeper than MAX_DEPTH; `value` is decoded JSON."""
    budget = [MAX_FREE_FORM_ITEMS]
    _check(value, path, 0, budget)


def captured_free_form(value: Any, path: str) -> Any:
    """`value` (what a terminal or the OS reported, e.g. device info) with NUL in its text
    replaced by U+FFFD; still FreeFormError past the depth, integer and size bounds."""
    cleaned = _replace_nul(value)
    check_free_form(cleaned, path)
    return cleaned


def captured_text(text: str | None, max_length: int = 4096) -> str | None:
    """Reported text (an error a device gave, a fault) made storable: NUL becomes U+FFFD and
    the text is cut at `max_length`, as refusing it would lose the report it belongs to."""
    if text is None:
        return None
    return text.replace("\x00", REPLACEMENT)[:max_length]


REPLACEMENT = "\ufffd"


def _replace_nul(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", REPLACEMENT) if "\x00" in value else value
    if depth > MAX_DEPTH:
        return value  # check_free_form refuses it
    if isinstance(value, dict):
        return {_replace_nul(k): _replace_nul(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_nul(item, depth + 1) for item in value]
    return value


def _check(value: Any, path: str, depth: int, budget: list[int]) -> None:
    budget[0] -= 1
    if budget[0] < 0:
        raise FreeFormError(f"{path}: more than {MAX_FREE_FORM_ITEMS} values")
    if isinstance(value, str):
        _check_text(value, path)
    elif isinstance(value, bool) or value is None or isinstance(value, float):
        return
    elif isinstance(value, int):
        if not -INT64_MAX - 1 <= value <= INT64_MAX:
            raise FreeFormError(f"{path}: integer outside the 64-bit range")
    elif isinstance(value, dict | list):
        if depth >= MAX_DEPTH:
            raise FreeFormError(f"{path}: nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            for key, item in value.items():
                _check_text(str(key), f"{path}.{key!s:.40}")
                _check(item, f"{path}.{key!s:.40}", depth + 1, budget)
        else:
            for index, item in enumerate(value):
                _check(item, f"{path}[{index}]", depth + 1, budget)


def _check_text(text: str, path: str) -> None:
    if "\x00" in text:
        raise FreeFormError(f"{path}: contains NUL (U+0000), which cannot be stored")
    if len(text) > MAX_FREE_FORM_STRING:
        raise FreeFormError(f"{path}: longer than {MAX_FREE_FORM_STRING} characters")
