"""Errors a user of the client sees. Each carries the node's own words."""

from __future__ import annotations


class SyftError(Exception):
    """Base of every error jupyter_syft raises to its users."""


class BadMessageError(SyftError):
    """The node could not accept the call as sent (malformed, unsigned, stale, replayed)."""


class NotAuthorisedError(SyftError, PermissionError):
    """The caller's role on that node does not allow this."""


class NotFoundError(SyftError, LookupError):
    """No such dataset, request or upload (or not one the caller may see)."""


class InvalidError(SyftError, ValueError):
    """The call was understood but is wrong: bad code, a schema mismatch, a bad name."""


class ConflictError(SyftError):
    """The state does not allow it now (already decided, no result yet)."""


class BudgetExhausted(ConflictError):
    """The privacy budget left cannot pay for this request; nothing was charged."""


class NodeError(SyftError):
    """The node failed while handling the call (its log has the incident id)."""


class Unreachable(SyftError):
    """The node could not be reached, or the link to it broke: it is down or offline.

    Every transport failure is one (`jupyter_syft.p2p.P2PError`, a Flight connection that
    fails), so "offline" has one definition: `except Unreachable`."""


class RateLimitedError(SyftError):
    """The node refused the call because this peer sent too many; retry later."""


class RequestDenied(SyftError):
    """The owner denied the request; `reason` is theirs."""

    def __init__(self, request_id: str, reason: str) -> None:
        super().__init__(f"request {request_id} was denied: {reason or '(no reason given)'}")
        self.reason = reason


class ResultWithheld(RequestDenied):
    """The job ran, and the owner looked at its result and kept it; `reason` is theirs."""

    def __init__(self, request_id: str, reason: str) -> None:
        SyftError.__init__(
            self, f"the result of request {request_id} was withheld by the owner: {reason}"
        )
        self.reason = reason


class RequestFailed(SyftError):
    """The code ran and failed on the domain; the message holds what the owner lets the
    scientist see: the exception type and their own frames, or the full text once released."""

    def __init__(self, request_id: str, error: str) -> None:
        super().__init__(f"request {request_id} failed on the domain:\n{error}")
        self.remote_error = error


BY_CODE: dict[str, type[SyftError]] = {
    "bad_message": BadMessageError,
    "not_authorised": NotAuthorisedError,
    "not_found": NotFoundError,
    "invalid": InvalidError,
    "conflict": ConflictError,
    "budget_exhausted": BudgetExhausted,
    "rate_limited": RateLimitedError,
    "internal": NodeError,
}


class DisclosableError(ValueError):
    """Raised on a domain by the node's own checks (training settings, weights, DP queries)
    with a message made of public facts only: names, shapes, settings, limits.

    A failed job shows the scientist such a message when no frame of the scientist's code is
    on its traceback or on that of its causes (otherwise their code chose the message, and only
    the exception's type is shown: jupyter_syft.domain.worker).
    """
