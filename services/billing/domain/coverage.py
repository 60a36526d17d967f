"""The patient's share of a charge under the visit's coverage (copay, then deductible,
then coinsurance), in integer cents."""

from __future__ import annotations

from dataclasses import dataclass

from shared.events_billing import CoverageRecorded


@dataclass(frozen=True, slots=True)
class Coverage:
    copay_cents: int = 0
    coinsurance_basis_points: int = 0
    deductible_remaining_cents: int = 0
    self_pay: bool = False
    entry_id: str | None = None

    @classmethod
    def of(cls, entry: CoverageRecorded) -> Coverage:
        return cls(entry.copay_cents, entry.coinsurance_basis_points,
                   entry.deductible_remaining_cents, entry.self_pay, entry.entry_id)


@dataclass(frozen=True, slots=True)
class Share:
    """A charge split between the patient and the payer."""

    charges_cents: int
    copay_cents: int = 0
    deductible_cents: int = 0
    coinsurance_cents: int = 0
    self_pay: bool = False

    @property
    def amount_cents(self) -> int:
        """What the patient owes."""
        if self.self_pay:
            return self.charges_cents
        return self.copay_cents + self.deductible_cents + self.coinsurance_cents

    @property
    def insurance_cents(self) -> int:
        return self.charges_cents - self.amount_cents


def patient_share(charges_cents: int, coverage: Coverage | None) -> Share:
    """Split ``charges_cents`` (module docstring: copay, then deductible, then coinsurance
    rounded half up to the cent). No coverage, or self-pay: the patient owes it all."""
    if charges_cents < 0:
        raise ValueError("charges cannot be negative")
    if coverage is None or coverage.self_pay:
        return Share(charges_cents, self_pay=True)
    copay = min(coverage.copay_cents, charges_cents)
    rest = charges_cents - copay
    deductible = min(coverage.deductible_remaining_cents, rest)
    rest -= deductible
    coinsurance = (rest * coverage.coinsurance_basis_points + 5_000) // 10_000
    return Share(charges_cents, copay, deductible, coinsurance)
