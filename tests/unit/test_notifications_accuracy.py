"""Told versus actual (services/notifications/accuracy.py): told records joined with the
floor's roomings, scored once, summed per clinic day by hour, channel and provider, the
rolling average scored on the same records. Pure: events carry the (injected) times; the
store is a dict that does what AccuracyStore.write does."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from services.notifications.accuracy import (
    AccuracyChanges,
    AccuracyPlan,
    AccuracyState,
    VisitState,
    rolling_reference,
    summarize,
)
from services.notifications.accuracy_store import accuracy_reader
from shared import events as ev
from shared.projection import Inbound
from tests.fakes import FakeClock

FLOOR, TOLD = "floor", "told"
CHICAGO = ZoneInfo("America/Chicago")
CLOCK = FakeClock(datetime(2026, 3, 2, 15, 0, tzinfo=UTC))  # 09:00 in Chicago
PLAN = AccuracyPlan(zone=lambda _clinic: CHICAGO, floor_topic=FLOOR)
READER = accuracy_reader(FLOOR, TOLD)
DAY = date(2026, 3, 2)


def at(minutes: float) -> datetime:
    return CLOCK.now() + timedelta(minutes=minutes)


def arrived(visit: str, minute: float) -> ev.Event:
    return ev.make_event(ev.PatientArrived(visit_id=visit, ticket_code="A-1",
                                           provider_id="p1", visit_type="follow_up"),
                         clinic_id="north", source="test", occurred_at=at(minute))


def roomed(visit: str, minute: float) -> ev.Event:
    return ev.make_event(ev.PatientRoomed(visit_id=visit, room_id="r1"), clinic_id="north",
                         source="test", occurred_at=at(minute))


def left(visit: str, minute: float) -> ev.Event:
    return ev.make_event(ev.ArrivalCancelled(visit_id=visit, reason="left_without_being_seen"),
                         clinic_id="north", source="test", occurred_at=at(minute))


def told(visit: str, minute: float, low: float, high: float, point: float,
         channel: ev.ToldChannel = "kiosk", provider: str | None = "p1",
         event_id: str | None = None, reference: float | None = None) -> ev.Event:
    return ev.make_event(ev.WaitTold(visit_id=visit, channel=channel, low=low, high=high,
                                     wait_minutes=point, provider_id=provider,
                                     reference_minutes=reference),
                         clinic_id="north", source="test", occurred_at=at(minute),
                         event_id=event_id)


class Memory:
    """The accuracy keys in a dict, written as AccuracyStore.write writes Redis."""

    def __init__(self) -> None:
        self.visits: dict[tuple[str, str], dict[str, str]] = {}
        self.recent: dict[str, list[tuple[float, float]]] = {}
        self.days: dict[tuple[str, date], dict[str, int]] = {}
        self.dead: list[str] = []

    def state(self, records: list[Inbound]) -> AccuracyState:
        return AccuracyState(
            visits={key: VisitState.from_hash(value) for key, value in self.visits.items()},
            recent={c: list(r) for c, r in self.recent.items()})

    def write(self, changes: AccuracyChanges) -> None:
        for key, change in changes.visits.items():
            stored = self.visits.setdefault(key, {})
            for name in change.delete:
                stored.pop(name, None)
            stored.update(change.set)
        self.recent.update(changes.recent)
        for day_key, counts in changes.counts.items():
            day = self.days.setdefault(day_key, {})
            for name, amount in counts.items():
                day[name] = day.get(name, 0) + amount

    def apply(self, floor: list[ev.Event], told_events: list[ev.Event]) -> AccuracyChanges:
        batch = [READER.read(FLOOR, 0, n, e.clinic_id.encode(), ev.encode(e))
                 for n, e in enumerate(floor)]
        batch += [READER.read(TOLD, 0, n, e.clinic_id.encode(), ev.encode(e))
                  for n, e in enumerate(told_events)]
        planned = PLAN(batch, self.state(batch))
        self.write(planned.changes)
        self.dead += [d.reason for d in planned.dead_letters]
        return planned.changes

    def figures(self, day: date = DAY) -> dict[str, Any]:
        return summarize(self.days.get(("north", day), {}))


def test_a_told_range_is_scored_once_when_the_visit_is_roomed() -> None:
    memory = Memory()
    memory.apply([arrived("v1", 0)], [told("v1", 1, 10, 20, 15)])
    assert memory.figures()["scored"] == 0  # waiting: nothing to score yet
    changes = memory.apply([roomed("v1", 19)], [])
    (score,) = changes.scores
    assert score.error_minutes == pytest.approx(3.0) and score.inside  # waited 18, told 15
    figures = memory.figures()
    assert figures["scored"] == 1 and figures["mean_absolute_error_minutes"] == 3.0
    assert figures["share_inside_range"] == 1.0
    assert figures["by_hour"]["09"]["scored"] == 1  # Chicago's hour, not UTC's 15
    assert figures["by_channel"]["kiosk"]["scored"] == 1
    assert figures["by_provider"]["p1"]["scored"] == 1
    # the same rooming again (an undo and redo, a replay): not scored again
    assert memory.apply([roomed("v1", 25)], []).scores == []
    assert memory.figures()["scored"] == 1


def test_outside_the_range_left_patients_and_late_or_repeated_told_records() -> None:
    memory = Memory()
    memory.apply([arrived("v1", 0), arrived("v2", 0)],
                 [told("v1", 0, 5, 10, 8, event_id="t1"),
                  told("v1", 0, 5, 10, 8, event_id="t1"),  # the outbox sent it twice
                  told("v2", 2, 5, 10, 8, channel="sms")])
    memory.apply([roomed("v1", 30), left("v2", 20)], [])
    # told after the rooming (a screen behind), and the duplicate once more: not scored
    memory.apply([], [told("v1", 31, 0, 5, 1, channel="tv"), told("v1", 0, 5, 10, 8,
                                                                  event_id="t1")])
    figures = memory.figures()
    assert figures["scored"] == 1 and figures["share_inside_range"] == 0.0
    assert figures["mean_absolute_error_minutes"] == 22.0
    assert figures["left"] == 1 and figures["by_channel"]["sms"]["left"] == 1
    assert "tv" not in figures["by_channel"]


def test_a_told_record_read_after_its_rooming_is_scored_the_same() -> None:
    first, second = Memory(), Memory()
    facts = [arrived("v1", 0), roomed("v1", 12)]
    first.apply(facts, [told("v1", 2, 5, 15, 9, event_id="t")])
    second.apply(facts, [])
    second.apply([], [told("v1", 2, 5, 15, 9, event_id="t")])
    assert first.figures() == second.figures()
    assert first.figures()["scored"] == 1 and first.figures()["share_inside_range"] == 1.0


def test_a_range_whose_high_is_below_its_low_is_a_dead_letter() -> None:
    memory = Memory()
    memory.apply([], [told("v1", 0, 20, 10, 15)])
    assert memory.dead == ["wait.told range high 10.0 is below low 20.0"]


def test_the_rolling_average_is_scored_on_the_same_records_as_the_backtest_does() -> None:
    assert rolling_reference([], 100.0, None) == 0.0
    recent = [(float(i * 60), float(w)) for i, w in enumerate([10, 20, 30, 40, 50, 60])]
    # at 4:00 five waits finished (10..50): mean 30, less 5 minutes waited
    assert rolling_reference(recent, 240.0, 240.0 - 300) == 25.0
    assert rolling_reference(recent, 300.0, None) == 40.0  # the last five: 20..60
    assert rolling_reference(recent, 300.0, 0.0) == 35.0  # waited 5 minutes
    memory = Memory()
    # v1 waits 20 minutes, v2 is told at minute 21 (waited 1) and roomed at 31
    memory.apply([arrived("v1", 0), arrived("v2", 20), roomed("v1", 20)],
                 [told("v2", 21, 5, 15, 12)])
    memory.apply([roomed("v2", 31)], [])
    figures = memory.figures()
    assert figures["mean_absolute_error_minutes"] == 2.0  # waited 10, told 12
    # the rolling average said 20 - 1 = 19 minutes more: 9 off
    assert figures["rolling_average_mean_absolute_error_minutes"] == 9.0
    # a reference carried by the told record is used as it is
    memory.apply([arrived("v3", 30)], [told("v3", 30, 0, 10, 5, reference=7)])
    memory.apply([roomed("v3", 34)], [])
    assert memory.figures()["by_hour"]["09"]["rolling_average_mean_absolute_error_minutes"] \
        == pytest.approx((9 + 3) / 2)


def test_days_and_hours_are_the_clinics() -> None:
    memory = Memory()
    # 05:50 UTC on March 3 is 23:50 on March 2 in Chicago
    late = datetime(2026, 3, 3, 5, 50, tzinfo=UTC) - CLOCK.now()
    minutes = late.total_seconds() / 60
    memory.apply([arrived("v9", minutes)], [told("v9", minutes, 5, 15, 10)])
    memory.apply([roomed("v9", minutes + 20)], [])
    assert memory.figures(DAY)["by_hour"]["23"]["scored"] == 1
    assert memory.figures(date(2026, 3, 3))["scored"] == 0


def _story() -> tuple[list[ev.Event], list[ev.Event]]:
    floor, told_events = [], []
    for n in range(12):
        visit = f"v{n}"
        floor.append(arrived(visit, n * 4))
        told_events.append(told(visit, n * 4, 5 + n, 15 + n, 10 + n, provider=f"p{n % 3}"))
        told_events.append(told(visit, n * 4 + 3, 2, 9, 5, channel="tv", provider=None))
        if n % 5 == 4:
            floor.append(left(visit, n * 4 + 9))
        else:
            floor.append(roomed(visit, n * 4 + 6 + n))
    floor.sort(key=lambda e: e.occurred_at)
    return floor, told_events


def test_any_split_and_order_of_the_two_topics_gives_the_same_figures() -> None:
    floor, told_events = _story()
    whole = Memory()
    whole.apply(floor, told_events)
    assert whole.figures()["scored"] > 10 and whole.figures()["left"] == 4
    for floor_size, told_size in itertools.product((1, 3, 7), (2, 5, 24)):
        memory = Memory()
        floor_batches = [floor[i:i + floor_size] for i in range(0, len(floor), floor_size)]
        told_batches = [told_events[i:i + told_size]
                        for i in range(0, len(told_events), told_size)]
        # the told topic read ahead of the floor, then behind it
        nothing: list[ev.Event] = []
        for f, t in itertools.zip_longest(floor_batches, told_batches, fillvalue=nothing):
            memory.apply([], t)
            memory.apply(f, [])
        assert memory.figures() == whole.figures(), (floor_size, told_size)
        behind = Memory()
        for f in floor_batches:
            behind.apply(f, [])
        for t in told_batches:
            behind.apply([], t)
        assert behind.figures() == whole.figures(), (floor_size, told_size)


def test_a_sent_delay_warning_is_told_as_the_patient_read_it() -> None:
    import orjson

    from services.notifications.domain.texts import Wording
    from services.notifications.records import told_event

    record = {"notification_id": "n1", "clinic_id": "north", "visit_id": "v1",
              "ticket_code": "A-17", "kind": "delay_warning",
              "wording": orjson.dumps(Wording("delay_warning", "A-17", "p1", 30, 31.0, 44.0,
                                              3, wait=37.2).to_dict()).decode()}
    raw = told_event(record, "sms", CLOCK.now())
    assert raw is not None
    sent = ev.decode(orjson.loads(raw)["value"])
    assert sent.envelope.event_id == "n1.told" and sent.occurred_at == CLOCK.now()
    assert sent.payload == ev.WaitTold(visit_id="v1", ticket_code="A-17", channel="sms",
                                       low=30, high=45, wait_minutes=37.2, provider_id="p1")
    come_back = {**record, "kind": "come_back_now"}
    told_next = told_event(come_back, "email", CLOCK.now())
    assert told_next is not None
    told_payload = ev.decode(orjson.loads(told_next)["value"]).payload
    assert isinstance(told_payload, ev.WaitTold) and told_payload.channel == "next"
    assert told_event({**record, "kind": "ready_for_you"}, "sms", CLOCK.now()) is None


async def test_the_gauges_start_again_at_a_new_clinic_day() -> None:
    import math

    from prometheus_client import REGISTRY

    from services.notifications.accuracy_store import AccuracyProjection

    class Days:
        """hgetall of the accuracy day keys: March 2 has figures, later days none."""

        async def hgetall(self, key: str) -> dict[bytes, bytes]:
            return ({b"09|kiosk|p1|n": b"4", b"09|kiosk|p1|in": b"1", b"09|kiosk|p1|err": b"0",
                     b"09|kiosk|p1|ref": b"0"} if key.endswith("2026-03-02") else {})

    clock = FakeClock(datetime(2026, 3, 2, 20, 0, tzinfo=UTC))  # 14:00 in Chicago
    projection = AccuracyProjection(None, Days(), None, PLAN, clock,  # type: ignore[arg-type]
                                    prefix="t", floor_topic=FLOOR, told_topic=TOLD,
                                    group_id="g", configured=lambda c: c == "gauged")

    def sample(name: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"clinic": "gauged"})

    await projection.figures("gauged", DAY)
    assert sample("clinicflow_told_share_inside_range") == 0.25
    assert sample("clinicflow_told_scored_today") == 4
    # 00:30 in Chicago on March 3: a new day, nothing scored yet
    assert await projection.tick(datetime(2026, 3, 3, 6, 30, tzinfo=UTC)) == 1
    assert sample("clinicflow_told_scored_today") == 0
    share = sample("clinicflow_told_share_inside_range")
    assert share is not None and math.isnan(share)


def test_a_visit_is_told_again_only_when_its_range_moved_beyond_the_clock() -> None:
    from shared.told import LastTold, screen_range, tell_again, told_event

    last = LastTold(CLOCK.now(), 20.0, 30.0)
    assert tell_again(None, CLOCK.now(), 20, 30)
    assert not tell_again(last, at(2), 0, 90)  # moments later: never, whatever it says
    assert not tell_again(last, at(10), 10.5, 20.5)  # ran down with the clock
    assert tell_again(last, at(10), 16, 26)  # 6 minutes longer than the clock explains
    assert not tell_again(last, at(4), 16, 30)  # 4 minutes later: its top 4 above the clock
    assert tell_again(last, at(4), 16, 32)  # ... 6 above: moved
    assert screen_range(8.2, 23.1) == (5, 25) and screen_range(0, 2) == (0, 5)
    one = told_event("north", "v1", channel="tv", low=5, high=25, point=14, at=at(0),
                     source="flow")
    again = told_event("north", "v1", channel="tv", low=5, high=25, point=14, at=at(0),
                       source="flow")
    assert one.envelope.event_id == again.envelope.event_id  # a replay is one record


def test_the_rolling_average_starts_again_each_clinic_day() -> None:
    recent = [(0.0, 40.0), (3600.0, 30.0)]
    assert rolling_reference(recent, 7200.0, None) == 35.0
    assert rolling_reference(recent, 7200.0, None, since=1800.0) == 30.0
    assert rolling_reference(recent, 7200.0, None, since=4000.0) == 0.0
