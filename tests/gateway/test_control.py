from __future__ import annotations

from pathlib import Path

import pytest
import trio

from gateway.app import Gateway
from gateway.control import control_url
from protocol import codec
from protocol.agent import PolicyBody
from protocol.control import PolicyAck, PolicyUpdate, Welcome
from tests.gateway.helpers import make_config


def test_control_url_follows_the_backend_scheme() -> None:
    assert control_url("http://b:8000") == "ws://b:8000/v2/gateways/control"
    assert control_url("https://b.example/td/") == "wss://b.example/td/v2/gateways/control"
    with pytest.raises(ValueError, match="http"):
        control_url("b:8000")


@pytest.mark.trio
async def test_welcome_and_policy_updates_are_applied_and_acked(tmp_path: Path) -> None:
    gateway = Gateway(make_config(tmp_path, enrollment_key=""))
    good = PolicyBody(idle_threshold_s=90)
    bad = PolicyBody(idle_threshold_s=30)
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.state.run)
        await nursery.start(gateway.buffer.run)
        await gateway.control._apply_welcome(
            Welcome(
                gateway_id="gw-1",
                enrollment_key="from-backend",
                policies=[
                    PolicyUpdate(
                        policy_id="p1",
                        revision=3,
                        checksum=codec.policy_checksum(good),
                        body=good,
                        is_default=True,
                    )
                ],
            )
        )
        await gateway.control._apply_policy(
            PolicyUpdate(policy_id="p2", revision=1, checksum="0" * 64, body=bad)
        )
        acks = [gateway.control._pending.receive_nowait().message for _ in range(2)]
        assert gateway.gateway_id() == "gw-1"
        assert gateway.state.setting("enrollment_key") == "from-backend"
        assert gateway.state.policy_for("any-agent").policy_id == "p1"
        assert gateway.state.policy_revisions() == {"p1": 3}
        nursery.cancel_scope.cancel()
    assert acks[0] == PolicyAck(
        policy_id="p1", revision=3, checksum=codec.policy_checksum(good), applied=True
    )
    assert isinstance(acks[1], PolicyAck)
    assert acks[1].applied is False
    assert "checksum mismatch" in (acks[1].reason or "")
