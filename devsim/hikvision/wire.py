"""The few wire details the simulated terminal parses, written from the standards.

Kept apart from the gateway's ISAPI code on purpose: a simulator that parsed with the
adapter's helpers would agree with the adapter's mistakes instead of exposing them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import xml.etree.ElementTree as ET

# RFC 7616 auth-param: token "=" ( token / quoted-string )
_AUTH_PARAM = re.compile(r'([A-Za-z][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')
# POSIX TZ: a name (letters or <quoted>), then the offset to ADD to local time to get UTC.
_POSIX_ZONE = re.compile(r"^(?:<[^>]*>|[A-Za-z]+)([+-]?)(\d{1,2})(?::(\d{1,2}))?(?::(\d{1,2}))?")


def digest_params(header: str) -> dict[str, str]:
    """The auth-params of an `Authorization: Digest ...` header; empty for other schemes."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "digest":
        return {}
    params: dict[str, str] = {}
    for match in _AUTH_PARAM.finditer(rest):
        quoted, token = match.group(2), match.group(3)
        value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else token
        params[match.group(1).lower()] = value
    return params


def _md5_hex(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def expected_digest(
    params: dict[str, str], *, username: str, password: str, realm: str, method: str
) -> str:
    """The `response` a client knowing the password sends for these params (RFC 7616, MD5)."""
    ha1 = _md5_hex(f"{username}:{realm}:{password}")
    ha2 = _md5_hex(f"{method}:{params.get('uri', '')}")
    qop = params.get("qop")
    if qop is None:
        return _md5_hex(f"{ha1}:{params.get('nonce', '')}:{ha2}")
    nc, cnonce = params.get("nc", ""), params.get("cnonce", "")
    return _md5_hex(f"{ha1}:{params.get('nonce', '')}:{nc}:{cnonce}:{qop}:{ha2}")


def zone_offset(zone: str) -> dt.timedelta:
    """UTC offset of a POSIX zone string as terminals show it: `CST-8:00:00` is UTC+8."""
    match = _POSIX_ZONE.match(zone.strip())
    if match is None:
        raise ValueError(f"unknown time zone {zone!r}")
    sign, hours, minutes, seconds = match.groups()
    offset = dt.timedelta(hours=int(hours), minutes=int(minutes or 0), seconds=int(seconds or 0))
    if offset >= dt.timedelta(hours=24):
        raise ValueError(f"time zone {zone!r} is a day or more away from UTC")
    # POSIX counts west as positive: no sign or `+` is behind UTC.
    return offset if sign == "-" else -offset


def xml_fields(body: bytes) -> dict[str, str]:
    """Every element's text by its name without namespace (firmware mixes namespaces)."""
    try:
        root = ET.fromstring(body)
    except (ET.ParseError, LookupError) as exc:  # LookupError: an unknown encoding
        raise ValueError(f"invalid XML: {exc}") from None
    fields: dict[str, str] = {}
    for element in root.iter():
        fields.setdefault(element.tag.rsplit("}", 1)[-1], (element.text or "").strip())
    return fields
