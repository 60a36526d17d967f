"""Why a command is refused, in the clinic's terms: domain code raises these and never
names an HTTP status. ``shared/service.py`` maps each kind to its status in one place
(``STATUS``), with the body ``{"detail": ..., "code": ...}``.

- ``NotFound``: the visit, room, provider, appointment, entry or event named does not
  exist at this clinic (404).
- ``Conflict``: it exists, but the clinic's current state does not allow the command
  (409): a room already occupied, a visit already ended.
- ``Rejected``: the command itself is wrong whatever the state (422): an unknown CPT
  code, an amount that does not add up.
- ``Unavailable``: a part the command needs is not there right now (503): the ledger
  projection is catching up, a channel has no server configured. Retrying may succeed.
- ``PreconditionRequired``: the request lacks what makes it safe to retry (428): an
  ``Idempotency-Key``.
"""

from __future__ import annotations


class Refusal(Exception):
    """A command refused; ``detail`` says why in words, ``code`` is a stable short name."""

    default_code = "refused"

    def __init__(self, detail: str, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code or self.default_code

    @property
    def message(self) -> str:
        return self.detail


class NotFound(Refusal):
    default_code = "not_found"


class Conflict(Refusal):
    default_code = "conflict"


class Rejected(Refusal):
    default_code = "rejected"


class Unavailable(Refusal):
    default_code = "unavailable"


class PreconditionRequired(Refusal):
    default_code = "precondition_required"


STATUS: dict[type[Refusal], int] = {
    NotFound: 404,
    Conflict: 409,
    Rejected: 422,
    Unavailable: 503,
    PreconditionRequired: 428,
}


def status_of(refusal: Refusal) -> int:
    """The HTTP status of a refusal (the nearest kind it derives from; 409 otherwise)."""
    for kind in type(refusal).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return 409
