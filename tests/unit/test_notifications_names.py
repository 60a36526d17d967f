"""Names people use and the clinic's own clock, on a clinic's story: messages and nurse
alerts say "Dr. Okafor" and "Exam 5" (CLINICFLOW_CLINICS), made when they are sent or
shown, never stored; events and metric labels keep ids, and only configured clinics get
a metric series of their own. Pure, but for the metric read back from the registry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import orjson
from faststream.kafka import KafkaBroker
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from services.notifications import metrics as m
from services.notifications.consumer import NotifierProjection, notifier_reader
from services.notifications.domain import (
    ClinicNotifier,
    Preferences,
    RuleBook,
    contact_expiry,
)
from services.notifications.names import NameBook
from services.notifications.plan import NotificationChanges, NotifierPlan, NotifierState
from services.notifications.records import words
from services.notifications.store import NotificationStore
from shared import events as ev
from shared import events_notifications as nev
from shared.clinics import ClinicDirectory
from shared.clock import SystemClock
from shared.projection import Inbound
from tests.fakes import record_of

CLINICS: dict[str, dict[str, object]] = {
    "north": {"name": "North Family Practice", "timezone": "America/Chicago",
              "providers": {"p1": "Dr. Okafor", "p2": "Dr. Ng"},
              "rooms": {"r5": "Exam 5", "r6": "Procedure room"}},
    "hilo": {"name": "Hilo Family Clinic", "timezone": "Pacific/Honolulu"},
    "tonga": {"timezone": "Pacific/Tongatapu"},
}
RULES = RuleBook.parse({"default": {"settle_seconds": 0},
                        "clinics": {"south": {"clinic_name": "South Clinic",
                                              "provider_names": {"p1": "Dr. Older"},
                                              "timezone": "America/New_York"},
                                    "north": {"clinic_name": "Not This Name",
                                              "provider_names": {"p1": "Dr. Older",
                                                                 "p9": "Dr. Filled-In"},
                                              "timezone": "Europe/Paris"}}})
BOOK = NameBook(ClinicDirectory.parse(CLINICS), RULES, zoned=frozenset(CLINICS))
FLOOR, ESTIMATES = "floor", "estimates"
READER = notifier_reader(FLOOR, ESTIMATES)
NINE = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)  # 09:00 in Chicago


def at(minutes: float) -> datetime:
    return NINE + timedelta(minutes=minutes)


def fact(payload: ev.Payload, minute: float) -> ev.Event:
    return ev.make_event(payload, clinic_id="north", source="test", occurred_at=at(minute))


def estimate(visit: str, ticket: str, wait: float, minute: float) -> ev.Event:
    return ev.make_event(
        ev.WaitEstimated(visit_id=visit, ticket_code=ticket, provider_id="p1", position=1,
                         wait_minutes=wait, low=wait - 5, high=wait + 5),
        clinic_id="north", source="flow", occurred_at=at(minute))


def batch(floor: list[ev.Event], estimates: list[ev.Event]) -> list[Inbound]:
    def read(event: ev.Event, topic: str, offset: int) -> Inbound:
        record = record_of(event, topic, offset)
        return READER.read(record.topic, record.partition, record.offset, record.key,
                           record.value)
    return ([read(e, FLOOR, n) for n, e in enumerate(floor)]
            + [read(e, ESTIMATES, n) for n, e in enumerate(estimates)])


def a_morning_at_north(plan: NotifierPlan) -> NotificationChanges:
    """Dr. Okafor (p1) runs 40 minutes behind for A-17; A-18 waits in the car and Exam 5
    (r5) becomes ready."""
    state = NotifierState(now=at(2), notifiers={"north": ClinicNotifier("north")},
                          preferences={"north": {
                              "v17": Preferences(channel="sms"),
                              "v18": Preferences(channel="sms", wait_anywhere=True)}})
    planned = plan(batch(
        [fact(ev.PatientArrived(visit_id="v17", ticket_code="A-17", provider_id="p1",
                                visit_type="follow_up"), 0),
         fact(ev.DelayAnnounced(provider_id="p1", minutes=40), 1),
         fact(ev.PatientArrived(visit_id="v18", ticket_code="A-18", provider_id="p2",
                                visit_type="follow_up"), 1.5),
         fact(ev.RoomReady(room_id="r5"), 1.8)],
        [estimate("v17", "A-17", 10, 0), estimate("v17", "A-17", 50, 1)]), state)
    return planned.changes


def test_patients_read_the_names_their_clinic_uses_for_its_doctors_and_rooms() -> None:
    changes = a_morning_at_north(NotifierPlan(RULES, floor_topic=FLOOR, paging=False,
                                              names=BOOK))
    read = {n.fields["ticket_code"]: words(n.fields, BOOK("north"))[:2]
            for n in changes.notifications}
    assert read["A-17"] == (
        "North Family Practice: your wait is longer",
        "North Family Practice: Dr. Okafor is running about 40 minutes behind; your new "
        "estimated wait is 45\u201355 minutes.")
    assert read["A-18"] == (
        "North Family Practice: we are ready for you",
        "We are ready for you (ticket A-18): please come in now. Exam 5 is ready.")
    # what is stored holds ids, never a name: a name changed in the configuration
    # reaches the message when it is sent
    stored = orjson.dumps([n.fields for n in changes.notifications]).decode()
    assert "Okafor" not in stored and "Exam 5" not in stored
    assert "p1" in stored and "r5" in stored
    renamed = NameBook(ClinicDirectory.parse(
        {"north": {"name": "North Family Practice", "timezone": "America/Chicago",
                   "providers": {"p1": "Dr. Adaeze Okafor"}}}), RULES, zoned=frozenset(CLINICS))
    [a17] = [n for n in changes.notifications if n.fields["ticket_code"] == "A-17"]
    assert "Dr. Adaeze Okafor is running about 40 minutes behind" in words(
        a17.fields, renamed("north"))[1]


def test_nurses_read_the_room_and_provider_by_name_while_the_event_keeps_the_ids() -> None:
    changes = a_morning_at_north(NotifierPlan(RULES, floor_topic=FLOOR, paging=True,
                                              names=BOOK))
    [alert] = raised_alerts(changes)
    assert (alert.room_id, alert.ticket_code, alert.provider_id) == ("r5", "A-18", "p2")
    assert alert.text == "Exam 5 is ready for A-18 (Dr. Ng)."
    # the alert as stored (Redis, the snapshot) and as paged is kept in ids...
    [(_action, _clinic, _room, stored)] = [c for c in changes.alert_changes if c[0] == "raise"]
    assert stored is not None and b"Exam 5" not in stored and b"Dr. Ng" not in stored
    assert b"Exam 5" not in changes.states["north"]
    [page] = [n for n in changes.notifications if n.fields["kind"] == "nurse_page"]
    assert "Exam 5" not in orjson.dumps(page.fields).decode()
    # ...and worded when it is paged
    subject, text, payload = words(page.fields, BOOK("north"))
    assert subject == text
    assert text == "Exam 5 is ready for A-18 (Dr. Ng)."
    assert (payload["alert"]["room_name"], payload["alert"]["provider_name"]) == (
        "Exam 5", "Dr. Ng")
    assert payload["alert"]["raised_at"].endswith("-06:00")  # Chicago's clock in March


def raised_alerts(changes: NotificationChanges) -> list[nev.NurseAlertRaised]:
    """The ``nurse_alert.raised`` events the batch queued in the outbox."""
    events = [ev.decode(orjson.loads(entry)["value"].encode()) for entry in changes.outbox]
    return [e.payload for e in events if isinstance(e.payload, nev.NurseAlertRaised)]


def test_the_clinics_configuration_names_people_first_and_the_older_rules_fill_in() -> None:
    north, south, hilo = BOOK("north"), BOOK("south"), BOOK("hilo")
    assert north.clinic == "North Family Practice"  # not the older rules' name
    assert north.provider("p1") == "Dr. Okafor" and north.provider("p9") == "Dr. Filled-In"
    assert north.zone == ZoneInfo("America/Chicago")  # CLINICFLOW_CLINICS' zone wins
    assert (south.clinic, south.provider("p1"), south.zone) == (
        "South Clinic", "Dr. Older", ZoneInfo("America/New_York"))
    assert hilo.room("r5") == "Room 5" and hilo.provider("dr-lee") == "Dr. Lee"
    unknown = BOOK("nowhere")
    assert (unknown.clinic, unknown.zone) == ("", ZoneInfo("UTC"))


def test_contacts_expire_at_the_clinics_own_midnight_either_side_of_utc() -> None:
    # 23:30 UTC on 2 March is 13:30 in Hilo (UTC-10) and 12:30 on 3 March in Tonga (UTC+13)
    evening_utc = datetime(2026, 3, 2, 23, 30, tzinfo=UTC)
    assert contact_expiry(evening_utc, BOOK("hilo").zone) == datetime(2026, 3, 3, 10, 0,
                                                                        tzinfo=UTC)
    assert contact_expiry(evening_utc, BOOK("tonga").zone) == datetime(2026, 3, 3, 11, 0,
                                                                         tzinfo=UTC)
    # 09:00 UTC is 23:00 the day before in Hilo: the patient keeps it at least an hour
    late_in_hilo = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    assert contact_expiry(late_in_hilo, BOOK("hilo").zone) == late_in_hilo + timedelta(hours=1)
    assert BOOK("hilo").local(evening_utc).isoformat() == "2026-03-02T13:30:00-10:00"
    assert BOOK("tonga").local(evening_utc).isoformat() == "2026-03-03T12:30:00+13:00"


async def test_alert_metrics_name_configured_clinics_and_count_any_other_as_other() -> None:
    projection = NotifierProjection(
        KafkaBroker("127.0.0.1:9"), NotificationStore(Redis(port=9), "t"),  # never connects
        rules=RULES, clock=SystemClock(), names=BOOK, prefix="t", floor_topic=FLOOR,
        estimates_topic=ESTIMATES, group_id="names-test", paging=False)

    def count(clinic: str) -> float:
        return REGISTRY.get_sample_value("clinicflow_nurse_alerts_total",
                                         {"clinic": clinic, "action": "raised"}) or 0.0

    before = {c: count(c) for c in ("north", "other", "x-9f3e", "south")}
    await projection._stored(NotificationChanges(alerts=[
        ("north", "raised"), ("x-9f3e", "raised"), ("x-1a2b", "raised"), ("south", "raised")]))
    assert count("north") - before["north"] == 1
    assert count("south") - before["south"] == 1  # configured in the rules
    assert count("other") - before["other"] == 2
    assert count("x-9f3e") == 0  # an id from an event never becomes a label
    assert m.clinic_label("x-1a2b", BOOK.configured) == m.OTHER_CLINIC
