"""Flow's bottleneck metrics: where the day is stuck (stage, provider, room). Label values
are bounded (``Labels``): a provider or room the clinic did not configure is 'other'."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from shared.clinics import ClinicDirectory

STAGE_MINUTES = Histogram(
    "clinicflow_stage_duration_minutes",
    "Finished stage durations: arrival_to_roomed, roomed_to_provider, provider_to_checkout, "
    "room_turnover.",
    ["clinic", "provider", "stage"],
    buckets=(1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 240),
)
QUEUE_LENGTH = Gauge(
    "clinicflow_queue_length_patients",
    "Patients waiting to be roomed, per clinic and provider ('any' for first available, "
    "'other' for providers not configured).",
    ["clinic", "provider"],
)
ROOMS = Gauge("clinicflow_rooms", "Rooms by state.", ["clinic", "state"])
ESTIMATED_WAIT = Gauge(
    "clinicflow_estimated_wait_minutes",
    "Longest current estimated wait among waiting patients, per clinic and provider.",
    ["clinic", "provider"],
)
IN_ROOMS = Gauge(
    "clinicflow_patients_in_rooms_patients",
    "Patients roomed or with a provider, per clinic.",
    ["clinic"],
)
DELAY_MINUTES = Gauge(
    "clinicflow_provider_delay_minutes",
    "Announced delay per provider ('clinic' for a clinic-wide delay).",
    ["clinic", "provider"],
)
VISITS_ENDED = Counter(
    "clinicflow_visits_ended_total",
    "Visits ended, by outcome (checked_out, cancelled, left_without_being_seen).",
    ["clinic", "outcome"],
)
SSE_CLIENTS = Gauge("clinicflow_sse_clients", "Open Server-Sent-Events connections.")
BOTTLENECK = Gauge(
    "clinicflow_bottleneck",
    "1 for each clinic's current bottleneck as the operations page names it: stage (one of "
    "BOTTLENECK_STAGES, 'none' when nothing holds the floor up) and resource (a configured "
    "provider or room, 'any' for the first available provider, 'other' for one the clinic "
    "has not configured, 'none'). One series per clinic: the previous one is removed.",
    ["clinic", "stage", "resource"],
)

# the stages find_bottlenecks can name (shared/floor/day_stats.py), and "none"
BOTTLENECK_STAGES = frozenset({"arrival_to_roomed", "roomed_to_provider",
                               "provider_to_checkout", "room_turnover", "none"})


MAX_REMEMBERED_LABELS = 10_000


class Labels:
    """Label values flow may use, bounded by the configuration: event data never makes a
    new series. A provider label is a provider the clinic configured (CLINICFLOW_CLINICS),
    'any' for the first available, else 'other'; a room likewise."""

    def __init__(self, clinics: ClinicDirectory | None = None) -> None:
        self.clinics = clinics if clinics is not None else ClinicDirectory.parse(None)
        self._bottleneck: dict[str, tuple[str, str]] = {}
        # (clinic, provider) -> its label: every board asks for each of its providers
        self._providers: dict[tuple[str, str], str] = {}

    def provider(self, clinic_id: str, provider_id: str | None) -> str:
        if provider_id in (None, "", "any"):
            return "any"
        assert provider_id is not None
        key = (clinic_id, provider_id)
        label = self._providers.get(key)
        if label is None:
            if len(self._providers) >= MAX_REMEMBERED_LABELS:  # provider ids come from events
                self._providers.clear()
            label = self._providers[key] = (
                provider_id if provider_id in self.clinics[clinic_id].providers else "other")
        return label

    def room(self, clinic_id: str, room_id: str | None) -> str:
        if not room_id:
            return "other"
        return room_id if room_id in self.clinics[clinic_id].rooms else "other"

    def bottleneck(self, clinic_id: str, found: dict[str, Any] | None) -> tuple[str, str]:
        """(stage, resource) of the operations report's bottleneck (None: no bottleneck)."""
        if not found:
            return "none", "none"
        stage = found.get("stage") or "none"
        if stage not in BOTTLENECK_STAGES:
            stage = "none"
        if found.get("provider_id") is not None or stage in (
                "arrival_to_roomed", "roomed_to_provider", "provider_to_checkout"):
            resource = self.provider(clinic_id, found.get("provider_id"))
        else:
            rooms = found.get("room_ids") or []
            resource = self.room(clinic_id, rooms[0] if rooms else None)
        return stage, resource

    def set_bottleneck(self, clinic_id: str, found: dict[str, Any] | None) -> None:
        """The clinic's one bottleneck series: 1 for the current one, the previous removed
        (an alert 'for N minutes' then measures how long this one has held)."""
        now = self.bottleneck(clinic_id, found)
        before = self._bottleneck.get(clinic_id)
        if before == now:  # set already: a process has one Labels, the one setting these
            return
        if before is not None:
            try:
                BOTTLENECK.remove(clinic_id, *before)
            except KeyError:
                pass
        BOTTLENECK.labels(clinic_id, *now).set(1)
        self._bottleneck[clinic_id] = now
