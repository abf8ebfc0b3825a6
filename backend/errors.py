"""The backend's error tree; every error a client sees is one of these.

    BackendError                 500 internal_error (base; never raised directly)
    ├── InvalidRequest           400 invalid_request (names the field)
    ├── Unauthorized             401 unauthorized
    ├── Forbidden                403 forbidden
    ├── NotFound                 404 not_found (also: another organisation's resource)
    ├── Conflict                 409 conflict
    ├── PayloadTooLarge          413 payload_too_large
    ├── UnsupportedMediaType     415 unsupported_media_type
    ├── RateLimited              429 rate_limited (+ Retry-After)
    └── Unavailable              503 unavailable (database unreachable)

`backend.app` maps each to `{"error": code, "detail": sentence}` in one place.
"""

from __future__ import annotations


class BackendError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidRequest(BackendError):
    status_code = 400
    code = "invalid_request"


class Unauthorized(BackendError):
    status_code = 401
    code = "unauthorized"


class Forbidden(BackendError):
    status_code = 403
    code = "forbidden"


class NotFound(BackendError):
    status_code = 404
    code = "not_found"


class Conflict(BackendError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(BackendError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(BackendError):
    status_code = 415
    code = "unsupported_media_type"


class RateLimited(BackendError):
    status_code = 429
    code = "rate_limited"

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class Unavailable(BackendError):
    status_code = 503
    code = "unavailable"
