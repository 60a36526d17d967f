"""The notifier's plan on a clinic's story: a batch of floor and estimate records (or a
tick of the clock) in, what to store out. Pure: no broker, no Redis, no clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson

from services.notifications.consumer import notifier_reader
from services.notifications.domain import ClinicNotifier, Names, Preferences, RuleBook
from services.notifications.plan import NotificationChanges, NotifierPlan, NotifierState
from services.notifications.records import words
from shared import events as ev
from shared.projection import Inbound, Planned
from tests.fakes import KafkaRecord, record_of

FLOOR, ESTIMATES = "floor", "estimates"
NINE = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
PLAN = NotifierPlan(RuleBook.parse({"default": {"settle_seconds": 5,
                                                "come_back_lead_minutes": 10}}),
                    floor_topic=FLOOR, paging=False)
READER = notifier_reader(FLOOR, ESTIMATES)


def at(minutes: float) -> datetime:
    return NINE + timedelta(minutes=minutes)


def fact(payload: ev.Payload, minute: float) -> ev.Event:
    return ev.make_event(payload, clinic_id="north", source="test", occurred_at=at(minute))


def arrival(visit: str, minute: float = 0) -> ev.Event:
    return fact(ev.PatientArrived(visit_id=visit, ticket_code="A-1", provider_id="dr-lee",
                                  visit_type="follow_up"), minute)


def estimate(visit: str, wait: float, minute: float) -> ev.Event:
    return ev.make_event(
        ev.WaitEstimated(visit_id=visit, ticket_code="A-1", provider_id="dr-lee", position=1,
                         wait_minutes=wait, low=wait - 5, high=wait + 5),
        clinic_id="north", source="flow", occurred_at=at(minute))


def records(floor: list[ev.Event], estimates: list[ev.Event],
            estimates_first: bool = False) -> list[Inbound]:
    """A batch as the runner reads it: each topic's records in offset order."""
    on_floor = [READER.read(*_fields(record_of(e, FLOOR, n))) for n, e in enumerate(floor)]
    on_estimates = [READER.read(*_fields(record_of(e, ESTIMATES, n)))
                    for n, e in enumerate(estimates)]
    return on_estimates + on_floor if estimates_first else on_floor + on_estimates


def _fields(record: KafkaRecord) -> tuple[str, int, int, bytes | None, bytes | None]:
    return record.topic, record.partition, record.offset, record.key, record.value


def stored(notifier: ClinicNotifier | None = None, *, now: datetime,
           prefs: Preferences | None = None, ticking: tuple[str, ...] = ()) -> NotifierState:
    return NotifierState(now=now, notifiers={"north": notifier or ClinicNotifier("north")},
                         preferences={"north": {"v1": prefs or Preferences(channel="sms")}},
                         ticking=ticking)


def reloaded(changes: NotificationChanges) -> ClinicNotifier:
    """The clinic's notifier as the next batch reads it back."""
    return ClinicNotifier.from_dict(orjson.loads(changes.states["north"]))


def texts(planned: Planned[NotificationChanges], names: Names | None = None) -> list[str]:
    """What the patients the batch decided to tell will read (in the clinic's ``names``,
    when the message is sent)."""
    return [words(n.fields, names or Names())[1] for n in planned.changes.notifications]


def test_a_delay_and_its_fresh_estimate_in_one_batch_tell_the_patient_the_new_wait_at_once(
) -> None:
    batch = records([arrival("v1"), fact(ev.DelayAnnounced(provider_id="dr-lee", minutes=25), 1)],
                    [estimate("v1", 10, 0), estimate("v1", 35, 1)])
    planned = PLAN(batch, stored(now=at(1.5)))
    assert (planned.applied, planned.dead_letters) == (4, [])
    assert texts(planned) == ["Dr. Lee is running about 25 minutes behind; your new estimated "
                              "wait is 30\u201340 minutes."]
    [message] = planned.changes.notifications
    assert (message.fields["kind"], message.fields["channel"]) == ("delay_warning", "sms")
    assert message.due_at == at(1.5).timestamp()  # due when decided
    assert planned.changes.timers == {"north": None}  # nothing left to wait for
    assert set(planned.changes.estimates["north"]) == {"v1"}
    assert ("delay_warning", "queued") in planned.changes.decisions


def test_the_estimates_list_follows_the_waiting_visits() -> None:
    came = [arrival("v1"), arrival("v2"), arrival("v3"), arrival("v4")]
    batch = records([*came,
                     fact(ev.PatientRoomed(visit_id="v1", room_id="r1"), 2),
                     fact(ev.ArrivalCancelled(visit_id="v2", reason="left_without_being_seen"),
                          3),
                     fact(ev.ActionUndone(undone_event_id=came[3].envelope.event_id), 3)],
                    [estimate("v1", 10, 1), estimate("v2", 12, 1), estimate("v3", 15, 1),
                     estimate("v4", 20, 1)])
    planned = PLAN(batch, stored(now=at(3)))
    assert planned.dead_letters == []
    # roomed, gone and undone: off the list; the one still waiting on it, with its time
    assert set(planned.changes.estimates["north"]) == {"v3"}
    assert planned.changes.estimates_gone == {"north": {"v1", "v2", "v4"}}
    assert orjson.loads(planned.changes.estimates["north"]["v3"])["estimated_at"] == \
        at(1).isoformat()

    # the next batch: v3 is roomed, and an estimate of v1 made before its rooming is read
    # late (the estimates topic behind the floor's): v1 does not come back
    notifier = reloaded(planned.changes)
    later = PLAN(records([fact(ev.PatientRoomed(visit_id="v3", room_id="r2"), 4)],
                         [estimate("v1", 9, 1.5)]), stored(notifier, now=at(4)))
    assert "north" not in later.changes.estimates
    assert later.changes.estimates_gone == {"north": {"v1", "v3"}}
    # an estimate of a visit whose arrival is not read yet is kept
    early = PLAN(records([], [estimate("v9", 5, 4)]), stored(notifier, now=at(4)))
    assert set(early.changes.estimates["north"]) == {"v9"}


def test_a_floor_fact_goes_before_an_estimate_made_at_the_same_instant() -> None:
    # flow estimated the patient waiting outside after it applied their arrival: the
    # estimate calls them back (read first, it would wait for the arrival to do it)
    came, estimated = arrival("v1"), estimate("v1", 8, 0)
    planned = PLAN(records([came], [estimated], estimates_first=True),
                   stored(now=at(0), prefs=Preferences(channel="sms", wait_anywhere=True)))
    [message] = planned.changes.notifications
    assert message.fields["kind"] == "come_back_now"
    assert orjson.loads(message.fields["trigger_ids"]) == [estimated.envelope.event_id]


def test_a_fact_the_floor_refuses_is_dead_lettered_with_its_reason_and_the_rest_applies(
) -> None:
    ghost = fact(ev.PatientRoomed(visit_id="ghost", room_id="room-9"), 1)
    planned = PLAN(records([arrival("v1"), ghost], []), stored(now=at(1)))
    assert planned.applied == 1
    [letter] = planned.dead_letters
    assert letter.record.event is not None and letter.record.event.envelope.event_id == \
        ghost.envelope.event_id
    assert "unknown visit ghost" in letter.reason
    assert [v.visit_id for v in reloaded(planned.changes).floor.waiting()] == ["v1"]


def test_a_warning_whose_fresh_estimate_never_comes_goes_out_at_the_tick_after_settling(
) -> None:
    batch = records([arrival("v1"), fact(ev.DelayAnnounced(provider_id="dr-lee", minutes=25), 1)],
                    [estimate("v1", 10, 0)])
    read_at = at(1.5)
    first = PLAN(batch, stored(now=read_at))
    assert texts(first) == []
    settled = read_at + timedelta(seconds=5)  # settle_seconds from when it was read
    assert first.changes.timers == {"north": settled.timestamp()}
    early = PLAN([], stored(reloaded(first.changes), now=settled - timedelta(seconds=1),
                            ticking=("north",)))
    assert texts(early) == [] and early.changes.timers == {"north": settled.timestamp()}
    tick = PLAN([], stored(reloaded(first.changes), now=settled, ticking=("north",)))
    assert (tick.applied, tick.dead_letters) == (0, [])
    assert texts(tick) == ["Dr. Lee is running about 25 minutes behind; your new estimated "
                           "wait is 25\u201335 minutes."]
    assert tick.changes.timers == {"north": None}


def test_the_estimates_topic_carries_only_wait_estimates_and_the_floor_topic_none() -> None:
    on_floor = READER.read(*_fields(record_of(estimate("v1", 10, 0), FLOOR, 0)))
    assert on_floor.event is None and on_floor.reason is not None
    assert "does not belong on floor" in on_floor.reason
    on_estimates = READER.read(*_fields(record_of(arrival("v1"), ESTIMATES, 0)))
    assert on_estimates.reason is not None and "does not belong on estimates" in \
        on_estimates.reason
    assert READER.read(*_fields(record_of(arrival("v1"), FLOOR, 0))).event is not None
