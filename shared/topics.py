"""Every Kafka topic clinicflow uses, declared once: name, partitions, retention.

Floor events are keyed by ``clinic_id`` so one clinic's day stays in order on
one partition (design decision 2). The local stack, the tests and the
deployment manifests all create topics from this table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DAY_MS = 24 * 60 * 60 * 1000


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic's name and the configuration it is created with."""

    name: str
    partitions: int
    retention_ms: int
    description: str
    config: dict[str, str] = field(default_factory=dict)

    def topic_config(self) -> dict[str, str]:
        """Kafka topic-level configs (strings, as the admin API wants them)."""
        return {"retention.ms": str(self.retention_ms), **self.config}


FLOOR = TopicSpec(
    name="clinicflow.floor.v1",
    partitions=12,
    retention_ms=14 * DAY_MS,
    description="Everything that happens on a clinic's floor, keyed by clinic_id: "
    "arrivals, rooms, providers, delays, checkouts, undo corrections.",
)
ESTIMATES = TopicSpec(
    name="clinicflow.estimates.v1",
    partitions=12,
    retention_ms=2 * DAY_MS,
    description="Wait estimates made by flow for each waiting visit, keyed by clinic_id.",
)
TOLD = TopicSpec(
    name="clinicflow.told.v1",
    partitions=12,  # as many as the floor's: a clinic's told and floor records stay together
    retention_ms=14 * DAY_MS,  # as long as the floor: accuracy rebuilds from both
    description="What each patient was told about their wait (kiosk, status lookup, TV, "
    "SMS/email warnings, you're next), keyed by clinic_id: visit ids and ticket codes only.",
)
LEDGER = TopicSpec(
    name="clinicflow.ledger.v1",
    partitions=6,
    retention_ms=-1,  # the money record is kept: billing's projection rebuilds from it
    description="Billing ledger: charges, patient shares, payments, refunds, voids.",
)
NOTIFICATIONS = TopicSpec(
    name="clinicflow.notifications.v1",
    partitions=6,
    retention_ms=7 * DAY_MS,
    description="Notifications sent or failed (no contact details, ever).",
)
DIRECTORY = TopicSpec(
    name="clinicflow.directory.v1",
    partitions=6,
    # kept: every consumer rebuilds its display names from the topic's beginning. Not
    # compacted: records are keyed by clinic (like the floor's), so compaction would keep
    # one name per clinic; a name is published only when it changes, so the topic stays
    # small
    retention_ms=-1,
    description="Reference data: the display names of each clinic's providers and rooms "
    "as imports and EHR feeds bring them (directory.named), keyed by clinic_id. Staff and "
    "place names only, never a patient's.",
)
AUDIT = TopicSpec(
    name="clinicflow.audit.v1",
    partitions=3,
    retention_ms=-1,
    description="Who read identifying data, what and when.",
)
DEAD_LETTER = TopicSpec(
    name="clinicflow.deadletter.v1",
    partitions=3,
    retention_ms=30 * DAY_MS,
    description="Events a consumer could not apply, with the reason and where they came from.",
)

ALL_TOPICS: tuple[TopicSpec, ...] = (FLOOR, ESTIMATES, TOLD, LEDGER, NOTIFICATIONS,
                                     DIRECTORY, AUDIT, DEAD_LETTER)


def topic_name(spec: TopicSpec, prefix: str = "") -> str:
    """The topic's name with an optional prefix (tests give each run its own)."""
    return f"{prefix}{spec.name}"
