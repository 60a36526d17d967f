"""The refusals every HTTP API can answer, for its OpenAPI document: the body of each is
``{"detail": "..."}`` saying what is wrong (422 also lists the bad fields).

A router passes ``responses=REFUSALS`` so that clients (and the schema fuzzing in
tests/integration/test_api_fuzz.py) know every status a route may answer with.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Refused(BaseModel):
    """Why the request was refused."""

    detail: str = Field(examples=["unknown or revoked token"])


class Invalid(BaseModel):
    """A request that does not match its schema: ``detail`` names every bad field."""

    detail: str = Field(examples=["invalid request: minutes: Input should be less than or "
                                  "equal to 600"])
    errors: list[dict[str, Any]] = Field(default_factory=list)


def _refused(when: str) -> dict[str, Any]:
    return {"model": Refused, "description": when}


REFUSALS: dict[int | str, dict[str, Any]] = {
    400: _refused("the body cannot be read (not UTF-8)"),
    401: _refused("no bearer token, or an unknown one"),
    403: _refused("the credential's role may not do this, or it does not open the clinic"),
    404: _refused("no such visit, room, entry or record at this clinic"),
    409: _refused("the request conflicts with the clinic's current state"),
    413: _refused("the body is larger than CLINICFLOW_MAX_BODY_BYTES"),
    422: {"model": Invalid, "description": "invalid request: ``detail`` names each field"},
    503: _refused("Kafka or Redis is unavailable; nothing was recorded, try again"),
}
