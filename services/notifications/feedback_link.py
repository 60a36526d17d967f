"""The feedback form's link: signed, expiring, and (with the store) single-use. Pure.

A link carries its clinic, visit and expiry, in the clear but signed with HMAC-SHA256
under ``CLINICFLOW_NOTIFICATIONS_FEEDBACK_SECRET``: ``<payload>.<signature>``, both
base64url without padding, the payload a compact JSON ``{"c": clinic, "v": visit, "e":
expiry in Unix seconds}``. Nothing else (no ticket, no name) is in it. ``verify`` refuses a
link whose signature does not match (altered, made up, or signed under another key) before
it reads the payload, and one past its expiry; that a link was used is the store's to say
(``FeedbackStore``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import orjson

LinkProblem = Literal["forged", "expired"]


class LinkRefused(Exception):
    """A link the form does not take: ``problem`` says why."""

    def __init__(self, problem: LinkProblem) -> None:
        super().__init__(problem)
        self.problem: LinkProblem = problem


@dataclass(frozen=True, slots=True)
class LinkClaims:
    """What a valid link says: whose visit, and until when it may be used."""

    clinic_id: str
    visit_id: str
    expires_at: datetime


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, payload: str) -> bytes:
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest()


def sign(secret: str, clinic_id: str, visit_id: str, *, now: datetime,
         valid_for: timedelta) -> str:
    """A link token for a visit's form, valid from ``now`` for ``valid_for`` (to the
    second)."""
    expires = int((now + valid_for).timestamp())
    payload = _b64(orjson.dumps({"c": clinic_id, "v": visit_id, "e": expires}))
    return f"{payload}.{_b64(_mac(secret, payload))}"


def verify(secret: str, token: str, *, now: datetime) -> LinkClaims:
    """The claims of a token signed under ``secret`` and not expired at ``now``; raises
    ``LinkRefused("forged")`` for anything not signed so (malformed included) and
    ``LinkRefused("expired")`` for one signed but past its time."""
    payload, _, signature = token.partition(".")
    try:
        given = _unb64(signature)
    except (binascii.Error, ValueError):
        raise LinkRefused("forged") from None
    if not payload or not hmac.compare_digest(given, _mac(secret, payload)):
        raise LinkRefused("forged")
    try:
        claims = orjson.loads(_unb64(payload))
        clinic_id, visit_id, expires = str(claims["c"]), str(claims["v"]), int(claims["e"])
    except (binascii.Error, ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        raise LinkRefused("forged") from None  # signed by us, never malformed: be safe
    expires_at = datetime.fromtimestamp(expires, UTC)
    if now >= expires_at:
        raise LinkRefused("expired")
    return LinkClaims(clinic_id, visit_id, expires_at)
