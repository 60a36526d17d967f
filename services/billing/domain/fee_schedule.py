"""The clinics' fee schedule: one fee per CPT code and clinic (``*`` for every clinic),
read from the CSV a clinic edits."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from services.billing.domain.money import ID_PATTERN, format_cents, parse_amount
from shared.errors import Rejected
from shared.events_billing import CPT_PATTERN, MAX_CENTS, MAX_CHARGE_LINES, ChargeLine

_CPT = re.compile(CPT_PATTERN)
ALL_CLINICS = "*"


class FeeScheduleError(ValueError):
    """A fee schedule that cannot be used; the message names the file and the bad lines."""


@dataclass(frozen=True, slots=True)
class Fee:
    cpt_code: str
    description: str
    fee_cents: int


class UnknownServices(Rejected):
    """CPT codes the clinic's fee schedule does not list (a checkout priced from them is
    rejected whole: never a partial charge)."""

    def __init__(self, clinic_id: str, codes: Sequence[str]) -> None:
        listed = ", ".join(codes)
        super().__init__(f"CPT code(s) {listed} not in clinic {clinic_id!r}'s fee schedule",
                         code="unknown_cpt_code")
        self.codes = tuple(codes)


@dataclass(frozen=True)
class FeeSchedule:
    """Fees per clinic (``*`` applies to every clinic; a clinic's own line wins)."""

    fees: Mapping[str, Mapping[str, Fee]]
    source: str = "(memory)"

    def for_clinic(self, clinic_id: str) -> dict[str, Fee]:
        return {**self.fees.get(ALL_CLINICS, {}), **self.fees.get(clinic_id, {})}

    def unknown_codes(self, clinic_id: str, codes: Iterable[str]) -> list[str]:
        known = self.for_clinic(clinic_id)
        return list(dict.fromkeys(c for c in codes if c not in known))

    def lines(self, clinic_id: str, codes: Sequence[str]) -> list[ChargeLine]:
        """One charge line per code, in the order given. Raises ``UnknownServices``, or
        ``Rejected`` for more codes than one charge carries."""
        if len(codes) > MAX_CHARGE_LINES:
            raise Rejected(f"{len(codes)} services (CPT codes) on one checkout: a charge "
                           f"carries at most {MAX_CHARGE_LINES}", code="too_many_services")
        unknown = self.unknown_codes(clinic_id, codes)
        if unknown:
            raise UnknownServices(clinic_id, unknown)
        known = self.for_clinic(clinic_id)
        return [
            ChargeLine(cpt_code=c, description=known[c].description, fee_cents=known[c].fee_cents)
            for c in codes
        ]


FEE_COLUMNS = ("clinic", "cpt_code", "description", "fee")


def parse_fee_schedule(text: str, source: str = "fee schedule") -> FeeSchedule:
    """Read a fee schedule CSV (``clinic,cpt_code,description,fee``; fee in dollars such
    as ``125.00``; ``#`` starts a comment line). Raises ``FeeScheduleError`` naming
    every bad line (up to 20)."""
    problems: list[str] = []
    fees: dict[str, dict[str, Fee]] = {}
    first_seen: dict[tuple[str, str], int] = {}
    header: list[str] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            cells = [c.strip() for c in next(csv.reader([line]))]
        except csv.Error as exc:
            problems.append(f"line {number}: not CSV ({exc})")
            continue
        if header is None:
            header = [c.lower() for c in cells]
            missing = [c for c in FEE_COLUMNS if c not in header]
            if missing:
                raise FeeScheduleError(
                    f"{source} line {number}: header must name the columns "
                    f"{','.join(FEE_COLUMNS)} (missing: {', '.join(missing)})"
                )
            continue
        if len(cells) != len(header):
            problems.append(f"line {number}: {len(cells)} cells, expected {len(header)}")
            continue
        row = dict(zip(header, cells, strict=True))
        clinic, code, description = row["clinic"], row["cpt_code"].upper(), row["description"]
        if clinic != ALL_CLINICS and not ID_PATTERN.match(clinic):
            problems.append(f"line {number}: clinic {clinic!r} is not a clinic id (or *)")
            continue
        if not _CPT.match(code):
            problems.append(f"line {number}: CPT code {row['cpt_code']!r} is not 5 characters "
                            "like 99213 (four digits, then a digit or letter)")
            continue
        if len(description) > 120:
            problems.append(f"line {number}: description longer than 120 characters")
            continue
        try:
            cents = parse_amount(row["fee"])
        except ValueError:
            problems.append(f"line {number}: fee {row['fee']!r} is not an amount like 125.00")
            continue
        if cents > MAX_CENTS:  # a charge line could not carry it: every checkout refused
            problems.append(f"line {number}: fee {row['fee']!r} is over "
                            f"{format_cents(MAX_CENTS)}, the most one charge line carries")
            continue
        seen = first_seen.get((clinic, code))
        if seen is not None:
            problems.append(f"line {number}: {code} for clinic {clinic} is already on line {seen}")
            continue
        first_seen[(clinic, code)] = number
        fees.setdefault(clinic, {})[code] = Fee(code, description, cents)
    if header is None:
        raise FeeScheduleError(f"{source}: empty (expected a header {','.join(FEE_COLUMNS)})")
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20
                                 else [])
        raise FeeScheduleError(f"{source}: " + "; ".join(shown))
    if not fees:
        raise FeeScheduleError(f"{source}: no fees listed")
    return FeeSchedule(fees=fees, source=source)
