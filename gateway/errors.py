"""The gateway's errors, named by cause.

    GatewayError
     ├── ConfigError       a setting has a value the gateway cannot use (start-up fails)
     ├── BufferFull        the buffer is at its byte cap in `reject` mode (agents get 503)
     ├── BufferTooLarge    one request is bigger than the whole buffer cap (agents get 413)
     ├── StorageError      SQLite failed underneath the buffer or the state store
     │    └── StorageFull  the disk holding the data directory is full (agents get 503)
     └── IdentityRefused   a registration may not take that agent_uid
          ├── IdentityTaken    the uid belongs to a registered agent (agents get 409)
          └── AgentRevoked     an operator revoked the uid (agents get 403)

Foreign errors are translated (or handled) at one boundary each: APSW in gateway/buffer.py
and gateway/state.py, httpx in gateway/uplink.py, trio-websocket in gateway/control.py.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """A setting is missing or has a value outside what it accepts."""


class BufferFull(GatewayError):
    """The buffer is at its cap and the overflow policy is `reject`."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__("the gateway buffer is full; retry later")
        self.retry_after_s = retry_after_s


class BufferTooLarge(GatewayError):
    """One request is bigger than the buffer's whole byte cap: it can never fit."""


class StorageError(GatewayError):
    """SQLite failed (disk full, I/O error, corruption found while running)."""


class IdentityRefused(GatewayError):
    """A registration may not take the agent_uid it asked for."""


class IdentityTaken(IdentityRefused):
    """The agent_uid is registered, and the caller showed neither its token nor a reset."""


class AgentRevoked(IdentityRefused):
    """An operator revoked the agent_uid; it registers again only after a reset."""


class StorageFull(StorageError):
    """The file system under the data directory has no space left; it passes once space
    returns (the next commit succeeds)."""

    def __init__(self, message: str, retry_after_s: int = 10) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
