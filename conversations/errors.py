"""Errors: the domain's, which say what went wrong, and the API's, which say it over HTTP.

Domain code (services, selectors, limits, stops, replies) raises a ``DomainError`` subclass
with a code and a message in plain words; only the API layer (``conversations.http``) picks
its HTTP status. ``ApiError`` is the API layer's own (authentication, parsing a request), and
every API failure leaves as the one JSON shape ``{"error": {"code": ..., "message": ...}}``.
"""

from __future__ import annotations

from django.http import JsonResponse


class DomainError(Exception):
    """A failure the caller can act on. ``retry_after``: seconds after which trying again may
    work; ``details``: more fields of the error for the client (ids it can use)."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retry_after: int | None = None,
        details: dict | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.details = details or {}


class Invalid(DomainError):
    """The request asks for something that cannot be."""


class NotFound(DomainError):
    """No such thing, or not the caller's."""


class Conflict(DomainError):
    """Not possible in the thing's present state."""


class Mismatch(DomainError):
    """The request contradicts an earlier one it claims to repeat."""


class Busy(DomainError):
    """A limit of the caller's is reached for now."""


class Unavailable(DomainError):
    """Something the service needs cannot be reached for now."""


class ApiError(Exception):
    """A failure to report to the client as a JSON error with an HTTP status."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        details: dict | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.details = details or {}


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    details: dict | None = None,
) -> JsonResponse:
    body = {"error": {"code": code, "message": message, **(details or {})}}
    response = JsonResponse(body, status=status)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def api_error_response(error: ApiError) -> JsonResponse:
    return error_response(
        error.status, error.code, error.message, headers=error.headers, details=error.details
    )
