"""The vendor registry: a new vendor is one module that registers a factory."""

from __future__ import annotations

import pytest

from gateway.devices import base
from gateway.devices.base import create_adapter, register
from gateway.devices.hikvision import HikvisionAdapter
from protocol.control import DeviceConfig


def config(vendor: str) -> DeviceConfig:
    return DeviceConfig(
        device_id="d1",
        vendor=vendor,
        name="Gate",
        host="192.0.2.10",
        port=80,
        username="admin",
        password="pw",
    )


def test_hikvision_is_built_in() -> None:
    assert isinstance(create_adapter(config("Hikvision")), HikvisionAdapter)


def test_unknown_vendor_names_the_supported_ones() -> None:
    with pytest.raises(ValueError, match=r"supported: .*hikvision"):
        create_adapter(config("acme"))


def test_a_registered_vendor_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    # The registry is process-wide: keep the test vendor out of other tests.
    monkeypatch.setattr(base, "_FACTORIES", dict(base._FACTORIES))
    made: list[DeviceConfig] = []

    def factory(cfg: DeviceConfig) -> HikvisionAdapter:
        made.append(cfg)
        return HikvisionAdapter(cfg)

    register("zkteco-test", factory)
    create_adapter(config("zkteco-test"))
    assert [c.vendor for c in made] == ["zkteco-test"]
