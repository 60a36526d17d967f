"""Ids derived from what triggered them: the same trigger always names the same
notification or alert, so a redelivered or replayed event decides nothing new (the store
refuses a second record with the same id). Pure."""

from __future__ import annotations

import hashlib


def digest(*parts: str) -> str:
    """A short stable hash of ``parts``."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:24]


def notification_id(clinic_id: str, visit_id: str, kind: str,
                    trigger_ids: tuple[str, ...]) -> str:
    """The id a message has whenever the same events trigger it (sorted, so the order in
    which a delay and an estimate were read does not matter)."""
    return "n-" + digest(clinic_id, visit_id, kind, *sorted(trigger_ids))
