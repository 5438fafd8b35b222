"""Domain errors. Each maps to one RFC 7807 problem response at the edge."""

from __future__ import annotations

from typing import Any


class BillowError(Exception):
    status = 500
    title = "Internal Server Error"

    def __init__(self, detail: str, *, extensions: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extensions = extensions or {}


class ValidationFailed(BillowError):
    """Bad input. `errors` lists each problem with the field (and event index) it concerns."""

    status = 400
    title = "Bad Request"

    def __init__(self, detail: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail, extensions={"validationErrors": errors or []})
        self.errors = errors or []

    @classmethod
    def at(cls, field: str, message: str) -> ValidationFailed:
        """One problem with one field; the detail reads `field: message`."""
        return cls(f"{field}: {message}", [{"field": field, "message": message}])


class Unauthorized(BillowError):
    status = 401
    title = "Unauthorized"


class Forbidden(BillowError):
    status = 403
    title = "Forbidden"


class NotFound(BillowError):
    status = 404
    title = "Not Found"


class Conflict(BillowError):
    status = 409
    title = "Conflict"


class PayloadTooLarge(BillowError):
    status = 413
    title = "Payload Too Large"


class UnsupportedMediaType(BillowError):
    status = 415
    title = "Unsupported Media Type"


class NotAcceptable(BillowError):
    status = 406
    title = "Not Acceptable"


class Unavailable(BillowError):
    """A dependency (bus, store) is down: nothing was acknowledged, the client should retry."""

    status = 503
    title = "Service Unavailable"


def problem(status: int, title: str, detail: str, instance: str, extensions: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status, "detail": detail, "instance": instance}
    if extensions:
        body["extensions"] = extensions
        body.update({k: v for k, v in extensions.items() if k not in body})
    return body
