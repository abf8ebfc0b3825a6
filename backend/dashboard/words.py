"""Schema messages (msgspec's) in words an operator reads at a form field."""

from __future__ import annotations

import re

_READABLE = (
    (re.compile(r"^Expected `int` >= (\d+)$"), "must be at least {0}"),
    (re.compile(r"^Expected `int` <= (\d+)$"), "must be at most {0}"),
    (re.compile(r"^Expected `array` of length <= (\d+)$"), "at most {0} entries"),
    (re.compile(r"^Expected `str` of length <= (\d+)$"), "an entry is longer than {0} characters"),
    (re.compile(r"^Expected `str` of length >= 1$"), "required"),
    (
        re.compile(r"^Expected `str` matching regex '\^\[A-Za-z0-9\]\+\$'$"),
        "letters and digits only",
    ),
    (
        re.compile(r"^Expected `str` matching regex '\^\[A-Za-z0-9_\.-\]\+\$'$"),
        "letters, digits, dot, dash and underscore only",
    ),
    (re.compile(r"^Expected `uuid`.*$"), "not one of the choices"),
)


def readable(message: str) -> str:
    """`message` in plain words where it is a known schema message, else as it is."""
    for pattern, words in _READABLE:
        if match := pattern.match(message):
            return words.format(*match.groups())
    return message
