"""Which clinic each EHR feed writes to, and how the EHR's codes become the clinic's ids.

Configured once (``CLINICFLOW_CHECKIN_FEEDS``, JSON), keyed by the sending facility: the
HL7 v2 ``MSH-4`` (its first component, the namespace id) or, for FHIR, the name an EHR's
credential is configured under::

    {"GENHOS": {"clinic": "north",
                "source_of_truth": "hl7",
                "providers": {"0148": "dr-addison"},
                "rooms": {"O/R": "r1"},
                "visit_types": {"OFFICE": "follow_up"}}}

``providers`` and ``rooms`` map the EHR's ids (``AIP-3``/``PV1-7``, ``AIL-3``/``PV1-3``,
FHIR ``Practitioner``/``Location`` ids) to the clinic's; an id not in the map is used as
it is. ``visit_types`` adds to the clinic's visit-type map (``CLINICFLOW_CHECKIN_
VISIT_TYPES``). ``source_of_truth`` (``hl7``, ``fhir`` or ``desk``) says which feed
owns the clinic's schedule: a schedule message from another feed is refused (``AR``,
403), so two systems never fight over one appointment. Pure: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from services.checkin.domain import ID_PATTERN, visit_type_key

SourceOfTruth = Literal["hl7", "fhir", "desk", "any"]
SOURCES: tuple[str, ...] = ("hl7", "fhir", "desk", "any")


class FeedConfigError(ValueError):
    """``CLINICFLOW_CHECKIN_FEEDS`` cannot be used; the message names the entry."""


@dataclass(frozen=True, slots=True)
class Feed:
    """One EHR feed: the clinic it writes to and its code maps."""

    facility: str
    clinic_id: str
    source_of_truth: SourceOfTruth = "any"
    providers: Mapping[str, str] = field(default_factory=dict)
    rooms: Mapping[str, str] = field(default_factory=dict)
    visit_types: Mapping[str, str] = field(default_factory=dict)

    def provider(self, ehr_id: str) -> str:
        """The clinic's provider id for the EHR's (unmapped ids as they are)."""
        return self.providers.get(ehr_id, ehr_id)

    def room(self, ehr_id: str) -> str:
        return self.rooms.get(ehr_id, ehr_id)

    def takes_schedule_from(self, source: str) -> bool:
        """Whether schedule changes from ``source`` (``hl7``, ``fhir``) may be applied."""
        return self.source_of_truth in ("any", source)

    def takes_import(self, fmt: str) -> bool:
        """Whether a schedule file import (``csv``, ``fhir`` Bundle) may change the
        clinic's schedule: the desk's files when no feed owns it (``any``, ``desk``), and
        a FHIR Bundle also when FHIR does."""
        return self.source_of_truth in ("any", "desk") or (
            fmt == "fhir" and self.source_of_truth == "fhir")


@dataclass(frozen=True, slots=True)
class Feeds:
    """Every configured feed, by sending facility (compared without case)."""

    by_facility: Mapping[str, Feed] = field(default_factory=dict)

    def for_facility(self, facility: str) -> Feed | None:
        return self.by_facility.get(facility.strip().upper())

    def for_clinic(self, clinic: str) -> Feed | None:
        """The first feed writing to ``clinic`` (its maps and source of truth)."""
        return next((f for f in self.by_facility.values() if f.clinic_id == clinic), None)

    def __len__(self) -> int:
        return len(self.by_facility)

    @classmethod
    def parse(cls, raw: str | Mapping[str, Any]) -> Feeds:
        """Read the configuration; ``FeedConfigError`` names the first bad entry."""
        data = json.loads(raw) if isinstance(raw, str) else raw
        if not isinstance(data, Mapping):
            raise FeedConfigError("CLINICFLOW_CHECKIN_FEEDS must be a JSON object")
        feeds: dict[str, Feed] = {}
        for facility, entry in data.items():
            where = f"CLINICFLOW_CHECKIN_FEEDS[{facility!r}]"
            if not isinstance(entry, Mapping):
                raise FeedConfigError(f'{where} must be an object: {{"clinic": "north"}}')
            clinic = entry.get("clinic")
            if not isinstance(clinic, str) or not ID_PATTERN.match(clinic):
                raise FeedConfigError(f"{where}.clinic must be a clinic id")
            source = entry.get("source_of_truth", "any")
            if source not in SOURCES:
                raise FeedConfigError(f"{where}.source_of_truth must be one of "
                                      f"{', '.join(SOURCES)}")
            maps: dict[str, dict[str, str]] = {}
            for name in ("providers", "rooms", "visit_types"):
                table = entry.get(name, {})
                if not isinstance(table, Mapping) or not all(
                        isinstance(k, str) and isinstance(v, str) and v.strip()
                        for k, v in table.items()):
                    raise FeedConfigError(f"{where}.{name} must map codes to ids")
                if name != "visit_types":
                    for value in table.values():
                        if not ID_PATTERN.match(value):
                            raise FeedConfigError(f"{where}.{name}: {value!r} is not an id")
                maps[name] = {(visit_type_key(k) if name == "visit_types" else k): v.strip()
                              for k, v in table.items()}
            key = str(facility).strip().upper()
            if key in feeds:
                raise FeedConfigError(f"{where} is configured twice (names ignore case)")
            feeds[key] = Feed(facility=str(facility), clinic_id=clinic,
                              source_of_truth=source, providers=maps["providers"],
                              rooms=maps["rooms"], visit_types=maps["visit_types"])
        return cls(feeds)
