"""A visit as billing knows it from the floor (its arrival, its provider, how it ended)
and what a money command may do with it: a command names a visit that exists at the
clinic, a checkout ends a visit that is still open on the floor, and the floor hears of
a visit's checkout once.

Billing knows a visit when its arrival was read on the clinic's floor or when it has
entries on the clinic's ledger (a visit paid weeks after it ended is still a visit).
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.errors import Conflict, NotFound

ENDED_WORDS = {
    "checked_out": "checked out",
    "cancelled": "cancelled",
    "rescheduled": "cancelled (rescheduled)",
    "left_without_being_seen": "left without being seen",
    "entered_in_error": "an arrival entered in error",
}


@dataclass(frozen=True, slots=True)
class FloorVisit:
    """What the floor said about a visit. ``ended``: how it ended (``checked_out``, or a
    cancellation's reason), by the floor event ``ended_by``; ``checkout_published``: the
    id of the ``patient.checked_out`` the desk published for it (its floor copy may not
    have been read back yet); ``arrival_undone``: the floor undid the visit's arrival
    (``action.undone`` naming it), so the visit no longer exists there (``arrived`` is
    then False)."""

    arrived: bool = False
    patient_ref: str | None = None
    provider_id: str | None = None
    ended: str | None = None
    ended_by: str | None = None
    checkout_published: str | None = None
    arrival_undone: bool = False


def _undone(clinic_id: str, visit_id: str) -> Conflict:
    return Conflict(f"visit {visit_id} of clinic {clinic_id} no longer exists on the floor: "
                    "its arrival was undone there, so nothing can be charged or paid on it",
                    code="visit_ended")


def require_known(clinic_id: str, visit_id: str, floor: FloorVisit, on_ledger: bool) -> None:
    """Refuse (``NotFound``, naming the visit and the clinic) a visit neither arrived at the
    clinic nor on its ledger: another clinic's visit, a typo, a visit not checked in; a
    visit whose arrival the floor undid, with nothing on the ledger, is a ``Conflict``
    (``visit_ended``: it existed and no longer does, as check-in answers)."""
    if floor.arrival_undone and not on_ledger:
        raise _undone(clinic_id, visit_id)
    if not (floor.arrived or on_ledger):
        raise NotFound(f"visit {visit_id} is not a visit of clinic {clinic_id}: it has not "
                       "checked in there and has nothing on its ledger", code="unknown_visit")


def require_on_floor(clinic_id: str, visit_id: str, floor: FloorVisit) -> None:
    """A visit whose arrival the floor undid takes no new money (checkout, coverage,
    payment, re-pricing: ``Conflict``), even with entries on its ledger; voids and
    refunds of those entries remain possible."""
    if floor.arrival_undone:
        raise _undone(clinic_id, visit_id)


def require_same_patient(clinic_id: str, visit_id: str, floor: FloorVisit,
                         patient_ref: str | None, ledger_ref: str | None = None) -> None:
    """A command naming a patient for the visit (coverage, checkout) names the one who
    checked in, when the floor knows who did, else the one its ledger already names
    (``ledger_ref``: a walk-in named at the desk) (``Conflict``, ``patient_mismatch``): a
    visit's charges and balance belong to one patient, not to whoever a request names."""
    if patient_ref and floor.patient_ref and patient_ref != floor.patient_ref:
        raise Conflict(f"visit {visit_id} of clinic {clinic_id} checked in as another "
                       "patient: the patient_ref given differs from its arrival's (leave it "
                       "out to use the arrival's)", code="patient_mismatch")
    if patient_ref and not floor.patient_ref and ledger_ref and patient_ref != ledger_ref:
        raise Conflict(f"visit {visit_id} of clinic {clinic_id} is already another "
                       "patient's: the patient_ref given differs from the one its ledger "
                       "names (leave it out to use that one)", code="patient_mismatch")


def require_checkout_allowed(clinic_id: str, visit_id: str, floor: FloorVisit) -> None:
    """A visit whose arrival was undone, or that ended otherwise than by a checkout
    (cancelled, left without being seen, entered in error), cannot be checked out
    (``Conflict``)."""
    require_on_floor(clinic_id, visit_id, floor)
    if floor.ended is not None and floor.ended != "checked_out":
        how = ENDED_WORDS.get(floor.ended, floor.ended.replace("_", " "))
        raise Conflict(f"visit {visit_id} of clinic {clinic_id} was {how}: it cannot be "
                       "checked out", code="visit_ended")


def publishes_checkout(floor: FloorVisit) -> bool:
    """Whether a desk checkout tells the floor the visit is over: only for a visit the
    floor has open (arrived, not ended, no checkout of it published yet). A visit known
    only from the ledger (its arrival long gone from the floor), or already ended, is
    priced without a floor event the floor could not apply."""
    return floor.arrived and floor.ended is None and floor.checkout_published is None
