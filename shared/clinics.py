"""The clinics this deployment serves, as their people know them: each clinic's IANA
time zone (its day, its clock), its name, and the names of its providers and rooms.

Configured once for every service (``CLINICFLOW_CLINICS``, JSON)::

    {"north": {"name": "North Family Practice", "timezone": "America/Chicago",
               "providers": {"p1": "Dr. Okafor"}, "rooms": {"r1": "Room 1"}}}

When it names clinics, they are the clinics served: the APIs answer 404 for any other
(``shared.auth.require_known_clinic``). Without it (development), every clinic id is
served, in ``CLINICFLOW_DEFAULT_TIMEZONE`` (UTC unless set), shown by its ids. Events,
metrics and Redis keep ids; screens, messages, receipts and reports use the names and the
clinic's own day and clock. Pure: no I/O, no clock reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class ClinicConfigError(ValueError):
    """``CLINICFLOW_CLINICS`` cannot be used as it is; the message says where and why."""


@dataclass(frozen=True)
class Clinic:
    """One clinic's zone and the names of its people and places."""

    clinic_id: str
    zone: ZoneInfo
    name: str = ""
    providers: dict[str, str] = field(default_factory=dict)
    rooms: dict[str, str] = field(default_factory=dict)

    @property
    def display_name(self) -> str:
        return self.name or self.clinic_id

    def provider_name(self, provider_id: str | None) -> str:
        """How the clinic calls a provider (its id when no name is configured)."""
        if provider_id is None:
            return "the next available provider"
        return self.providers.get(provider_id, provider_id)

    def room_name(self, room_id: str) -> str:
        """How the clinic calls a room ("Room <id>" when no name is configured)."""
        return self.rooms.get(room_id) or f"Room {room_id}"

    def local(self, at: datetime) -> datetime:
        """An aware instant on the clinic's clock."""
        return at.astimezone(self.zone)

    def day_of(self, at: datetime) -> date:
        """The clinic's calendar day at an instant."""
        return at.astimezone(self.zone).date()

    def day_bounds(self, day: date) -> tuple[datetime, datetime]:
        """The first and the last-plus-one instant of a clinic day (a 23- or 25-hour day
        on a daylight-saving change), as aware datetimes in the clinic's zone."""
        start = datetime.combine(day, time(0), tzinfo=self.zone)
        end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=self.zone)
        return start, end


class ClinicDirectory:
    """Every configured clinic, and the default for the others."""

    def __init__(self, clinics: dict[str, Clinic], default_zone: ZoneInfo) -> None:
        self.clinics = clinics
        self.default_zone = default_zone

    def __getitem__(self, clinic_id: str) -> Clinic:
        found = self.clinics.get(clinic_id)
        return found if found is not None else Clinic(clinic_id, self.default_zone)

    def __contains__(self, clinic_id: object) -> bool:
        return clinic_id in self.clinics

    def zone(self, clinic_id: str) -> ZoneInfo:
        return self[clinic_id].zone

    @classmethod
    def parse(cls, raw: str | dict[str, Any] | None, default_zone: str = "UTC"
              ) -> ClinicDirectory:
        """From ``CLINICFLOW_CLINICS`` (JSON text or an already parsed object)."""
        import json

        default = _zone(default_zone, "CLINICFLOW_DEFAULT_TIMEZONE")
        if raw is None or raw == "":
            return cls({}, default)
        try:
            document = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError as exc:
            raise ClinicConfigError(f"CLINICFLOW_CLINICS is not JSON: {exc}") from None
        if not isinstance(document, dict):
            raise ClinicConfigError("CLINICFLOW_CLINICS must be an object of clinic ids")
        clinics = {}
        for clinic_id, entry in document.items():
            where = f"CLINICFLOW_CLINICS[{clinic_id!r}]"
            if not isinstance(entry, dict):
                raise ClinicConfigError(f"{where} must be an object")
            unknown = set(entry) - {"name", "timezone", "providers", "rooms"}
            if unknown:
                raise ClinicConfigError(f"{where}: unknown field(s) {sorted(unknown)}; "
                                        "expected name, timezone, providers, rooms")
            names: dict[str, dict[str, str]] = {}
            for kind in ("providers", "rooms"):
                mapping = entry.get(kind, {})
                if not isinstance(mapping, dict) or not all(
                        isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
                    raise ClinicConfigError(f"{where}.{kind} must map ids to display names")
                names[kind] = dict(mapping)
            zone = (_zone(entry["timezone"], f"{where}.timezone") if "timezone" in entry
                    else default)
            clinics[clinic_id] = Clinic(clinic_id, zone, str(entry.get("name", "")),
                                        names["providers"], names["rooms"])
        return cls(clinics, default)


def _zone(name: object, where: str) -> ZoneInfo:
    if not isinstance(name, str):
        raise ClinicConfigError(f"{where} must be an IANA zone name, e.g. America/Chicago")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ClinicConfigError(f"{where}: unknown time zone {name!r} (an IANA name such as "
                                "America/Chicago)") from None
