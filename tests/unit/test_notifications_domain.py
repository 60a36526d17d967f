"""The notification rules on the clinic's story: pure, no broker, no Redis, no clock."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import orjson
import pytest

from services.notifications.domain import (
    Alert,
    ClinicNotifier,
    Names,
    NotApplicable,
    Outcome,
    Preferences,
    RuleBook,
    Rules,
    alert_text,
    backoff_seconds,
    contact_expiry,
    format_range,
    notification_id,
    render,
)
from services.notifications.names import NameBook
from services.notifications.records import alert_raised, alert_withdrawn, page_record
from shared import events as ev
from shared.clinics import ClinicDirectory

NINE = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
UTC_ZONE = ZoneInfo("UTC")
RULES = Rules(settle_seconds=5, min_minutes_between_messages=20, warn_after_growth_minutes=15,
              come_back_lead_minutes=10)
SMS = Preferences(channel="sms")
OUTSIDE = Preferences(channel="sms", wait_anywhere=True)
_ids = itertools.count(1)


def at(minutes: float) -> datetime:
    return NINE + timedelta(minutes=minutes)


class Day:
    """A clinic day driven by hand: floor events, flow's estimates, the clock. Messages
    are read in the clinic's ``names``."""

    def __init__(self, rules: Rules = RULES, clinic: str = "north",
                 names: Names | None = None) -> None:
        self.notifier = ClinicNotifier(clinic)
        self.rules = rules
        self.names = names or Names(clinic=rules.clinic_name, providers=rules.provider_names)
        self.prefs: dict[str, Preferences] = {}
        self.wall: datetime | None = None  # None: the wall clock follows the events

    def _wall(self, when: datetime) -> datetime:
        return self.wall or when

    def floor(self, payload: ev.Payload, minute: float, event_id: str | None = None) -> Outcome:
        when = at(minute)
        return self.notifier.on_floor(payload, at=when, event_id=event_id or f"e{next(_ids)}",
                                      rules=self.rules, prefs=self.prefs, wall=self._wall(when))

    def arrive(self, visit: str, ticket: str, provider: str | None, minute: float = 0,
               priority: str = "routine", prefs: Preferences | None = SMS) -> Outcome:
        if prefs is not None:
            self.prefs[visit] = prefs
        return self.floor(ev.PatientArrived(visit_id=visit, ticket_code=ticket,
                                            provider_id=provider, visit_type="follow_up",
                                            priority=priority), minute)  # type: ignore[arg-type]

    def estimate(self, visit: str, minute: float, wait: float, low: float | None = None,
                 high: float | None = None, position: int = 2,
                 event_id: str | None = None) -> Outcome:
        notes = self.notifier.patients.notes.get(visit)
        ticket = notes.ticket_code if notes else "A-0"
        provider = notes.provider_id if notes else None
        when = at(minute)
        payload = ev.WaitEstimated(visit_id=visit, ticket_code=ticket, provider_id=provider,
                                   position=position, wait_minutes=wait,
                                   low=wait - 5 if low is None else low,
                                   high=wait + 5 if high is None else high)
        return self.notifier.on_estimate(payload, at=when, event_id=event_id or f"w{next(_ids)}",
                                         rules=self.rules, prefs=self.prefs,
                                         wall=self._wall(when))

    def tick(self, minute: float) -> Outcome:
        return self.notifier.tick(now=at(minute), rules=self.rules, prefs=self.prefs)

    def delay(self, provider: str | None, minutes: int, minute: float,
              event_id: str | None = None) -> Outcome:
        return self.floor(ev.DelayAnnounced(provider_id=provider, minutes=minutes), minute,
                          event_id)


def told(outcome: Outcome, names: Names | None = None) -> dict[str, str]:
    """What each patient reads, in the clinic's words."""
    return {m.visit_id: render(m.wording, names or Names())[1] for m in outcome.messages}


def morning() -> Day:
    """Dr. Lee has three patients waiting, Dr. Kim one; estimates are on the screen."""
    day = Day()
    day.arrive("v1", "A-1", "dr-lee")
    day.arrive("v2", "A-2", "dr-lee")
    day.arrive("v3", "A-3", "dr-lee")
    day.arrive("v4", "B-1", "dr-kim")
    for visit, wait in (("v1", 5), ("v2", 15), ("v3", 25), ("v4", 10)):
        day.estimate(visit, 0, wait)
    return day


# ------------------------------------------------------------------ delays


def test_a_delay_for_dr_lee_tells_each_of_his_waiting_patients_their_new_wait() -> None:
    day = morning()
    assert day.delay("dr-lee", 25, 1).messages == []  # waits for flow's fresh estimate
    sent = Outcome()
    for visit, wait in (("v1", 30), ("v2", 35), ("v3", 45)):
        sent.extend(day.estimate(visit, 1, wait))
    assert told(sent) == {
        "v1": "Dr. Lee is running about 25 minutes behind; your new estimated wait is "
              "25\u201335 minutes.",
        "v2": "Dr. Lee is running about 25 minutes behind; your new estimated wait is "
              "30\u201340 minutes.",
        "v3": "Dr. Lee is running about 25 minutes behind; your new estimated wait is "
              "40\u201350 minutes.",
    }
    assert {m.kind for m in sent.messages} == {"delay_warning"}
    assert day.tick(10).messages == []  # nobody is told twice, Dr. Kim's patient not at all


def test_a_delay_whose_fresh_estimate_never_comes_is_sent_after_settling_with_the_delay_as_the_least_wait(  # noqa: E501
) -> None:
    day = morning()
    day.delay("dr-lee", 25, 1)
    assert day.tick(1).messages == []
    sent = day.tick(1 + 6 / 60)
    assert len(sent.messages) == 3
    assert "your new estimated wait is 25\u201335 minutes" in told(sent)["v1"]


def test_a_delay_read_minutes_late_still_waits_for_its_fresh_estimates_before_warning(
) -> None:
    # the notifier is behind: the delay made at 9:01 is read at 9:04, and flow's fresh
    # estimates (another topic, another consumer) come a moment after it
    day = morning()
    day.wall = at(4)
    assert day.delay("dr-lee", 25, 1).messages == []
    assert day.tick(4).messages == []  # the clock is past 9:01 + settle, not past the read
    sent = Outcome()
    for visit, wait in (("v1", 30), ("v2", 35)):
        sent.extend(day.estimate(visit, 1, wait))
    assert told(sent) == {
        "v1": "Dr. Lee is running about 25 minutes behind; your new estimated wait is "
              "20\u201330 minutes.",  # 25-35 when made at 9:01, three minutes ago
        "v2": "Dr. Lee is running about 25 minutes behind; your new estimated wait is "
              "25\u201335 minutes.",
    }
    # v3's fresh estimate never comes: settled from the read, with the delay as its floor
    late = day.tick(4 + 6 / 60)
    assert list(told(late)) == ["v3"]
    assert "about 25 minutes behind" in told(late)["v3"]


def test_a_delay_read_just_inside_the_age_limit_still_goes_out_after_settling() -> None:
    # made at 9:01, read at 9:30:57 (three seconds inside the 30-minute limit): it was
    # news when read, so the five seconds it waits for its estimates do not make it stale
    day = morning()
    day.wall = at(30 + 57 / 60)
    assert day.delay("dr-lee", 25, 1).messages == []
    sent = day.tick(30 + 57 / 60 + 5 / 60)
    assert sorted(told(sent)) == ["v1", "v2", "v3"]
    assert ("delay_warning", "stale") not in sent.decisions


def test_an_estimate_read_before_its_delay_waits_for_the_delay_to_tell_the_whole_story() -> None:
    day = morning()
    early = day.estimate("v2", 1, 35)  # flow's new estimate arrives first (another topic)
    assert early.messages == []
    sent = day.delay("dr-lee", 25, 1)
    assert told(sent)["v2"].startswith("Dr. Lee is running about 25 minutes behind")


def test_a_clinic_wide_delay_reaches_every_waiting_patient() -> None:
    day = Day(Rules(settle_seconds=0, clinic_name="North Clinic"))
    day.arrive("v1", "A-1", "dr-lee")
    day.arrive("v2", "W-1", None)
    sent = day.delay(None, 30, 1)
    assert set(told(sent)) == {"v1", "v2"}
    assert told(sent, day.names)["v2"].startswith(
        "North Clinic is running about 30 minutes behind")


def test_a_short_delay_or_one_cleared_before_it_was_told_bothers_nobody() -> None:
    day = morning()
    assert day.delay("dr-lee", 5, 1).messages == []  # under announce_delays_from_minutes
    day.delay("dr-lee", 25, 2)
    day.floor(ev.DelayCleared(provider_id="dr-lee"), 2.01)
    assert day.tick(30).messages == []


def test_nobody_is_warned_who_is_roomed_left_opted_out_or_gave_no_contact() -> None:
    day = Day(Rules(settle_seconds=0))
    day.arrive("roomed", "A-1", "dr-lee")
    day.arrive("left", "A-2", "dr-lee")
    day.arrive("opted-out", "A-3", "dr-lee", prefs=Preferences(channel="sms", opted_out=True))
    day.arrive("no-contact", "A-4", "dr-lee", prefs=None)
    day.arrive("no-delays", "A-5", "dr-lee", prefs=Preferences(channel="email",
                                                               delay_updates=False))
    day.arrive("told", "A-6", "dr-lee")
    day.floor(ev.PatientRoomed(visit_id="roomed", room_id="room-1"), 1)
    day.floor(ev.ArrivalCancelled(visit_id="left", reason="left_without_being_seen"), 1)
    sent = day.delay("dr-lee", 20, 2)
    assert set(told(sent)) == {"told"}
    assert sorted(o for k, o in sent.decisions if k == "delay_warning") == [
        "declined", "no_contact", "opted_out", "queued"]


def test_a_warning_is_never_sent_once_the_patient_is_roomed_and_queued_ones_are_cancelled(
) -> None:
    day = morning()
    day.delay("dr-lee", 25, 1)
    roomed = day.floor(ev.PatientRoomed(visit_id="v1", room_id="room-1"), 1.01)
    assert roomed.messages == []
    sent = day.tick(2)
    assert set(told(sent)) == {"v2", "v3"}
    later = day.floor(ev.PatientRoomed(visit_id="v2", room_id="room-2"), 3)
    [to_v2] = [m.notification_id for m in sent.messages if m.visit_id == "v2"]
    assert later.cancelled == [("v2", (to_v2,))]  # if it is still queued, it never goes
    assert day.estimate("v2", 4, 90).messages == []  # a late estimate for a roomed patient


# -------------------------------------------------------------- estimates


def test_a_small_drift_in_the_estimate_bothers_nobody_but_a_big_slip_does() -> None:
    day = morning()
    assert day.estimate("v3", 5, 30).messages == []  # expected at 9:35 instead of 9:25
    assert day.tick(6).messages == []
    day.estimate("v3", 10, 35)  # now expected at 9:45: 20 minutes later than told
    sent = day.tick(10.1)
    assert told(sent) == {
        "v3": "Dr. Lee is running behind; your new estimated wait is 30\u201340 minutes."}
    assert day.estimate("v3", 11, 34).messages == []  # told: the new baseline


def test_a_slip_that_recovers_while_settling_is_not_sent() -> None:
    day = morning()
    day.estimate("v3", 5, 45)
    day.estimate("v3", 5.02, 25)
    sent = day.tick(6)
    assert sent.messages == [] and ("delay_warning", "recovered") in sent.decisions


def test_a_patient_hears_at_most_once_per_window_and_a_held_warning_goes_out_when_it_ends(
) -> None:
    day = morning()
    day.delay("dr-lee", 15, 1)
    first = day.tick(2)
    assert "v3" in told(first)
    day.delay("dr-lee", 40, 5)  # worse news five minutes later
    assert "v3" not in told(day.estimate("v3", 5, 70))
    held = day.tick(20.9)
    assert held.messages == []
    released = day.tick(22)  # the 20-minute window from 9:02 ended at 9:22
    assert told(released)["v3"].startswith("Dr. Lee is running about 40 minutes behind")
    assert day.notifier.next_due() is None


def test_rate_limits_are_per_clinic() -> None:
    book = RuleBook.parse({"default": {"min_minutes_between_messages": 20},
                           "clinics": {"south": {"min_minutes_between_messages": 5,
                                                 "provider_names": {"dr-lee": "Dr. Ana Lee"}}}})
    assert book.for_clinic("north").min_minutes_between_messages == 20
    assert book.for_clinic("south").min_minutes_between_messages == 5
    south = NameBook(ClinicDirectory({}, UTC_ZONE), book)
    assert south("south").provider("dr-lee") == "Dr. Ana Lee"
    with pytest.raises(ValueError, match=r"clinics\.east\.come_back_lead_minutes"):
        RuleBook.parse({"clinics": {"east": {"come_back_lead_minutes": -1}}})
    with pytest.raises(ValueError, match="unknown time zone"):
        RuleBook.parse({"default": {"timezone": "Mars/Olympus"}})
    with pytest.raises(ValueError, match="Extra inputs"):
        RuleBook.parse({"default": {"treshold": 3}})


def test_old_events_replayed_after_an_outage_send_nothing() -> None:
    day = morning()
    day.wall = at(180)  # three hours later, the topic is read again from the start
    day.delay("dr-lee", 25, 1)
    sent = day.tick(180)
    assert sent.messages == []
    assert ("delay_warning", "stale") in sent.decisions


def test_the_same_delay_sent_twice_is_one_warning() -> None:
    day = morning()
    day.delay("dr-lee", 25, 1, event_id="delay-1")
    first = day.tick(2)
    again = day.delay("dr-lee", 25, 30, event_id="delay-1")
    assert len(first.messages) == 3 and again.messages == [] and day.tick(40).messages == []


def test_notification_ids_follow_the_triggering_events_in_any_order() -> None:
    assert notification_id("north", "v1", "delay_warning", ("d", "w")) == \
        notification_id("north", "v1", "delay_warning", ("w", "d"))
    assert notification_id("north", "v1", "delay_warning", ("d",)) != \
        notification_id("north", "v2", "delay_warning", ("d",))


# ----------------------------------------------------------- wait anywhere


def test_a_patient_waiting_in_the_car_is_called_back_once_when_the_range_reaches_the_lead(
) -> None:
    day = Day()
    day.arrive("v1", "A-17", "dr-lee", prefs=OUTSIDE)
    assert day.estimate("v1", 0, 40).messages == []
    assert day.estimate("v1", 20, 18, low=12, high=25).messages == []
    sent = day.estimate("v1", 25, 12, low=8, high=16, position=1)
    assert told(sent) == {"v1": "Please come back now, you are next (ticket A-17); "
                                "estimated wait 10\u201315 minutes."}
    assert [m.kind for m in sent.messages] == ["come_back_now"]
    assert day.estimate("v1", 27, 6, low=2, high=9, position=1).messages == []


def test_an_estimate_read_before_the_arrival_still_calls_the_patient_back() -> None:
    """The notifier reads the floor and flow's estimates as two streams: under load the
    estimate (made after flow applied the arrival) can be read first."""
    day = Day()
    day.prefs["v1"] = OUTSIDE
    assert day.estimate("v1", 0, 12, low=8, high=16, position=1).messages == []
    sent = day.arrive("v1", "A-17", "dr-lee", minute=0.1, prefs=OUTSIDE)
    assert [m.kind for m in sent.messages] == ["come_back_now"]
    assert day.estimate("v1", 1, 10, low=6, high=14, position=1).messages == []  # once


def test_a_patient_near_the_front_who_then_chooses_to_wait_outside_is_called_back_at_the_tick(
) -> None:
    """The front desk takes the contact after flow's estimate was read: no later estimate
    need come (the patient is next), the next tick calls them back, once."""
    day = Day()
    day.arrive("v1", "A-17", "dr-lee", prefs=None)
    assert day.estimate("v1", 0, 6, low=3, high=9, position=1).messages == []
    day.prefs["v1"] = OUTSIDE
    sent = day.tick(0.5)
    assert [(m.visit_id, m.kind) for m in sent.messages] == [("v1", "come_back_now")]
    assert day.tick(1).messages == []
    # not for a patient already roomed, nor one whose range is still far off
    later = Day()
    later.arrive("v2", "A-18", "dr-lee", prefs=None)
    later.estimate("v2", 0, 40, low=30, high=50)
    later.prefs["v2"] = OUTSIDE
    assert later.tick(0.5).messages == []


def test_a_room_ready_for_a_patient_outside_tells_them_we_are_ready() -> None:
    day = Day()
    day.arrive("v1", "A-17", "dr-lee", prefs=OUTSIDE)
    day.arrive("v2", "A-18", "dr-lee", prefs=SMS)
    sent = day.floor(ev.RoomReady(room_id="room-4"), 5)
    assert told(sent) == {"v1": "We are ready for you (ticket A-17): please come in now. "
                                "Room 4 is ready."}
    assert day.floor(ev.RoomReady(room_id="room-5"), 6).messages == []  # v2 waits inside


# ------------------------------------------------------------- nurse alerts


def test_a_ready_room_alerts_the_nurses_with_who_is_next_and_is_withdrawn_when_taken() -> None:
    day = Day()
    day.arrive("v1", "A-17", "dr-lee")
    day.arrive("v2", "A-18", "dr-lee")
    out = day.floor(ev.RoomReady(room_id="room-4"), 3)
    [(alert, page)] = out.raised
    assert alert_text(alert.room_id, alert.ticket_code, alert.provider_id, Names()) == (
        "Room 4 is ready for A-17 (Dr. Lee).") and page
    taken = day.floor(ev.PatientRoomed(visit_id="v1", room_id="room-4"), 4)
    assert [(a.alert_id, reason) for a, reason, _ in taken.withdrawn] == [
        (alert.alert_id, "room_taken")]
    assert taken.raised == []


def test_two_ready_rooms_call_two_different_patients_urgent_first() -> None:
    day = Day()
    day.arrive("v1", "A-1", "dr-lee", minute=0)
    day.arrive("v2", "B-1", "dr-kim", minute=1)
    day.floor(ev.RoomReady(room_id="room-1"), 2)
    urgent = day.arrive("v3", "U-1", "dr-kim", minute=3, priority="urgent")
    assert [(a.room_id, a.ticket_code) for a, _ in urgent.raised] == [("room-1", "U-1")]
    assert [r for _, r, _ in urgent.withdrawn] == ["next_patient_changed"]
    both = day.floor(ev.RoomReady(room_id="room-2"), 4)
    assert [(a.room_id, a.ticket_code) for a, _ in both.raised] == [("room-2", "A-1")]
    assert {a.ticket_code for a in day.notifier.alerts.values()} == {"U-1", "A-1"}


def test_a_provider_running_late_or_with_enough_patients_roomed_is_passed_over() -> None:
    day = Day(Rules(patients_roomed_per_provider=1))
    day.arrive("v1", "A-1", "dr-lee", minute=0)
    day.arrive("v2", "A-2", "dr-lee", minute=1)
    day.arrive("v3", "B-1", "dr-kim", minute=2)
    day.floor(ev.RoomReady(room_id="room-1"), 3)
    day.floor(ev.PatientRoomed(visit_id="v1", room_id="room-1"), 4)  # Dr. Lee has one roomed
    day.delay("dr-kim", 15, 5)
    assert day.floor(ev.RoomReady(room_id="room-2"), 6).raised == []  # nobody can take a room
    assert day.notifier.next_due() == at(20)  # when Dr. Kim's delay runs out
    [(alert, _)] = day.tick(20).raised
    assert alert_text(alert.room_id, alert.ticket_code, alert.provider_id, Names()) == (
        "Room 2 is ready for B-1 (Dr. Kim).")


def test_an_alert_withdrawn_and_raised_again_is_news_with_its_own_events_and_pages() -> None:
    # the same ready room matched with the same patient again (their provider ran late in
    # between; or late and on time again in one instant, as a batch is applied): each
    # raising was once given the first one's event and page ids, so the store refused its
    # page as a repeat and consumers dropped its events
    day = Day()
    day.arrive("v1", "A-1", "dr-lee", minute=0)
    [(first, _)] = day.floor(ev.RoomReady(room_id="room-1"), 1).raised
    [(gone, reason, _)] = day.delay("dr-lee", 10, 2).withdrawn
    assert (gone, reason) == (first, "nobody_to_room")
    [(second, _)] = day.tick(12).raised  # the delay is over, the room still ready
    day.delay("dr-lee", 10, 12)
    [(third, _)] = day.floor(ev.DelayCleared(provider_id="dr-lee"), 12).raised
    assert {(a.alert_id, a.room_id, a.visit_id) for a in (first, second, third)} == {
        (first.alert_id, "room-1", "v1")}
    assert second.raised_at == third.raised_at
    names = Names()

    def event_id(entry: bytes) -> str:
        return str(orjson.loads(orjson.loads(entry)["value"])["event_id"])

    ids = [event_id(alert_raised(first, "north", names)),
           event_id(alert_withdrawn(first, "nobody_to_room", "north", at(2))),
           event_id(alert_raised(second, "north", names)),
           event_id(alert_raised(third, "north", names)),
           page_record(first, "raised", "north", at(1)).notification_id,
           page_record(first, "withdrawn", "north", at(2)).notification_id,
           page_record(second, "raised", "north", at(12)).notification_id,
           page_record(third, "raised", "north", at(12)).notification_id]
    assert len(set(ids)) == len(ids)
    # a raising keeps its ids when stored and read back
    assert Alert.from_dict(third.to_dict()).raise_id == third.raise_id
    # an alert stored before raisings had ids of their own is withdrawn under its old ids
    legacy = {k: v for k, v in first.to_dict().items() if k != "raised_by"}
    assert event_id(alert_withdrawn(Alert.from_dict(legacy), "room_taken", "north", at(3))
                    ) == f"{first.alert_id}.withdrawn"


def test_the_same_facts_raise_an_alert_with_the_same_ids_whenever_the_clock_ticked() -> None:
    # a rebuild from Kafka decides the same raisings again: their ids must not depend on
    # when the notifier's tick ran (it moves the clinic's clock to the wall clock)
    def raised(tick_at: float | None) -> list[str]:
        day = Day()
        day.arrive("v1", "A-1", "dr-lee", minute=0)
        day.floor(ev.RoomReady(room_id="room-2"), 1, event_id="ready-2")  # nobody else
        day.delay("dr-lee", 30, 2, event_id="late")
        if tick_at is not None:
            day.tick(tick_at)  # the wall clock ran ahead of the facts (read late)
        out = day.floor(ev.DelayCleared(provider_id="dr-lee"), 5, event_id="on-time")
        return [a.raise_id for a, _ in out.raised]

    assert raised(None) == raised(20) != []


def test_an_undone_rooming_puts_the_patient_back_in_line_for_the_room() -> None:
    day = Day()
    day.arrive("v1", "A-1", "dr-lee")
    day.floor(ev.RoomReady(room_id="room-1"), 1)
    day.floor(ev.PatientRoomed(visit_id="v1", room_id="room-1"), 2, event_id="roomed-v1")
    back = day.floor(ev.ActionUndone(undone_event_id="roomed-v1"), 3)
    assert [a.ticket_code for a, _ in back.raised] == ["A-1"]
    with pytest.raises(NotApplicable):
        day.floor(ev.PatientRoomed(visit_id="ghost", room_id="room-9"), 4)


# ----------------------------------------------------------------- snapshots


def test_a_snapshot_carries_on_exactly_where_the_clinic_was() -> None:
    day = morning()
    day.floor(ev.RoomReady(room_id="room-4"), 0.5)
    day.delay("dr-lee", 25, 1)
    document = orjson.loads(orjson.dumps(day.notifier.to_dict()))
    restored = Day()
    restored.notifier = ClinicNotifier.from_dict(document)
    restored.prefs = day.prefs
    assert told(restored.tick(2)) == told(day.tick(2))
    assert restored.notifier.alerts == day.notifier.alerts
    assert [v.visit_id for v in restored.notifier.floor.waiting()] == ["v1", "v2", "v3", "v4"]


# --------------------------------------------------------- texts and times


def test_texts_read_as_the_front_desk_would_say_them() -> None:
    assert format_range(31.2, 38.7) == "30\u201340 minutes"
    assert format_range(0.0, 4.0) == "up to 5 minutes"
    assert format_range(20, 20) == "20\u201325 minutes"
    unnamed = Names()
    assert unnamed.provider("dr-lee") == "Dr. Lee"
    assert unnamed.provider("nurse_practitioner_ng") == "Nurse Practitioner Ng"
    assert unnamed.provider(None) == "the first available provider"
    assert unnamed.room("room-4") == "Room 4" and unnamed.room("r5") == "Room 5"
    assert unnamed.room("exam2") == "Room exam2"


def test_retries_back_off_exponentially_up_to_a_cap() -> None:
    assert [backoff_seconds(n, 2, 30) for n in range(1, 7)] == [2, 4, 8, 16, 30, 30]


def test_contacts_are_kept_until_the_end_of_the_clinic_day() -> None:
    evening = datetime(2026, 3, 2, 22, 30, tzinfo=UTC)  # 17:30 in New York
    assert contact_expiry(evening, "America/New_York") == datetime(2026, 3, 3, 5, 0,
                                                                     tzinfo=UTC)
    late = datetime(2026, 3, 2, 23, 30, tzinfo=UTC)
    assert contact_expiry(late, "UTC") == late + timedelta(hours=1)
    # kept in whole seconds, as the store keeps it: a repeat answers the same instant
    late_with_fraction = datetime(2026, 3, 2, 23, 30, 5, 467_267, tzinfo=UTC)
    assert contact_expiry(late_with_fraction, "UTC") == datetime(2026, 3, 3, 0, 30, 6,
                                                                 tzinfo=UTC)
