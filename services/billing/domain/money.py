"""Money and identities: dollars parsed to integer cents without floats, cents shown to
people, and deterministic entry ids."""

from __future__ import annotations

import hashlib
import re

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_AMOUNT = re.compile(r"^(?P<units>[0-9]{1,7})(\.(?P<cents>[0-9]{1,2}))?$")


def parse_amount(text: str) -> int:
    """``"125"``, ``"125.5"`` or ``"125.50"`` (dollars) -> 12550 cents. No floats involved."""
    match = _AMOUNT.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not an amount like 125.00")
    cents = (match.group("cents") or "0").ljust(2, "0")
    return int(match.group("units")) * 100 + int(cents)


def format_cents(cents: int) -> str:
    """12345 -> ``"123.45"``; -500 -> ``"-5.00"``; thousands separated: ``"1,234.00"``."""
    sign = "-" if cents < 0 else ""
    units, rest = divmod(abs(cents), 100)
    return f"{sign}{units:,}.{rest:02d}"


def stable_id(prefix: str, *parts: str) -> str:
    """A deterministic entry id made from the ids it derives from (same input, same id)."""
    if len(parts) == 1 and len(parts[0]) <= 56 and ID_PATTERN.match(parts[0]):
        return f"{prefix}-{parts[0]}"
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:40]
    return f"{prefix}-h{digest}"
