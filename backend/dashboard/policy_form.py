"""A policy as an HTML form: form fields to protocol.agent.PolicyBody (the API's own schema),
its validation errors placed at the field, and the difference between two bodies."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import msgspec

from backend.dashboard.words import readable
from protocol.agent import PolicyBody

WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MAX_FIELD_CHARS = 300_000
NUMBER_FIELDS = ("idle_threshold_s", "upload_interval_s", "log_batch_max")
LIST_FIELDS = ("blocked_apps", "blocked_domains")
FLAG_FIELDS = ("track_titles", "track_urls")
LABELS = {
    "name": "Name",
    "idle_threshold_s": "Idle after (seconds)",
    "track_titles": "Record window titles",
    "track_urls": "Record URLs",
    "blocked_apps": "Apps not recorded",
    "blocked_domains": "Domains not recorded",
    "working_hours": "Working hours",
    "upload_interval_s": "Upload every (seconds)",
    "log_batch_max": "Logs per upload (at most)",
}
_HOURS_LINE = re.compile(r"^(\w{3})\s+(\d{2}:\d{2})\s*-\s*(\d{2}:\d{2})$")
_AT_FIELD = re.compile(r"^(.*) - at `\$\.([a-z_]+)(.*)`$")


@dataclass
class PolicyForm:
    """What the form shows: the values as typed, and an error per field."""

    values: dict[str, str]
    errors: dict[str, str] = field(default_factory=dict)


def form_values(name: str, body: PolicyBody) -> dict[str, str]:
    """The form's text for a stored policy."""
    values = {"name": name}
    for key in NUMBER_FIELDS:
        values[key] = str(getattr(body, key))
    for key in FLAG_FIELDS:
        values[key] = "on" if getattr(body, key) else ""
    for key in LIST_FIELDS:
        values[key] = "\n".join(getattr(body, key))
    values["working_hours"] = "\n".join(
        f"{WEEKDAYS[h.weekday]} {h.start}-{h.end}" for h in body.working_hours
    )
    return values


def parse(fields: dict[str, str]) -> tuple[PolicyForm, str | None, PolicyBody | None]:
    """The form (for showing again), the name and the body; the body is None on any error."""
    values = {key: fields.get(key, "") for key in LABELS}
    form = PolicyForm(values=values)
    for key, text in values.items():
        if len(text) > MAX_FIELD_CHARS:
            form.errors[key] = f"at most {MAX_FIELD_CHARS:,} characters"
        elif "\x00" in text:
            form.errors[key] = "contains a NUL character"
    name = values["name"].strip()
    if not 1 <= len(name) <= 200:
        form.errors.setdefault("name", "between 1 and 200 characters")
    raw: dict[str, Any] = {key: bool(values[key]) for key in FLAG_FIELDS}
    for key in NUMBER_FIELDS:
        try:
            raw[key] = int(values[key].strip())
        except ValueError:
            form.errors.setdefault(key, "a whole number")
    for key in LIST_FIELDS:
        raw[key] = [line.strip() for line in values[key].splitlines() if line.strip()]
    hours = []
    hour_lines = []  # the form line of each entry, to name it in an error
    for number, line in enumerate(values["working_hours"].splitlines(), start=1):
        if not line.strip():
            continue
        match = _HOURS_LINE.match(line.strip())
        if match is None or match.group(1).title() not in WEEKDAYS:
            form.errors.setdefault("working_hours", f"line {number}: write it as `Mon 09:00-17:00`")
            continue
        day, start, end = match.groups()
        hours.append({"weekday": WEEKDAYS.index(day.title()), "start": start, "end": end})
        hour_lines.append(number)
    raw["working_hours"] = hours
    if form.errors:
        return form, None, None
    try:
        body = msgspec.convert(raw, PolicyBody)
    except msgspec.ValidationError as exc:
        message = str(exc)
        if match := _AT_FIELD.match(message):
            problem, key, rest = match.groups()
            if key == "working_hours" and (index := re.match(r"\[(\d+)\]", rest)):
                problem = f"line {hour_lines[int(index.group(1))]}: {problem}"
            form.errors[key if key in LABELS else "name"] = readable(problem)
        else:
            form.errors["name"] = message
        return form, None, None
    return form, name, body


@dataclass(frozen=True, slots=True)
class Change:
    label: str
    before: str
    after: str


def _shown(key: str, body: PolicyBody) -> str:
    value = getattr(body, key)
    if key in FLAG_FIELDS:
        return "yes" if value else "no"
    if key == "working_hours":
        return ", ".join(f"{WEEKDAYS[h.weekday]} {h.start}-{h.end}" for h in value) or "all hours"
    if key in LIST_FIELDS:
        return ", ".join(value) or "none"
    return str(value)


def diff(current: PolicyBody, target: PolicyBody) -> list[Change]:
    """Each setting that differs between `current` and `target`, as both would show."""
    return [
        Change(LABELS.get(key, key), _shown(key, current), _shown(key, target))
        for key in PolicyBody.__struct_fields__
        if getattr(current, key) != getattr(target, key)
    ]
