"""Inputs `make fuzz` found that crashed an ISAPI parser, kept as plain tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from gateway.devices import isapi
from gateway.devices.base import DeviceError


@pytest.mark.parametrize(
    "parse", [isapi.parse_event_page, isapi.parse_user_page, isapi.parse_work_status]
)
@pytest.mark.parametrize("depth", [1_000, 50_000])
def test_json_nested_thousands_deep_is_a_device_error(
    parse: Callable[[bytes], Any], depth: int
) -> None:
    # It was a RecursionError out of msgspec, which the device manager does not expect.
    with pytest.raises(DeviceError, match="nested too deeply"):
        parse(b"[" * depth + b"]" * depth)
