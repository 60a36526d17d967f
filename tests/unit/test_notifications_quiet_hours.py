"""Quiet hours, on the clinic's own clock (Pacific/Auckland: UTC+13 in its summer, +12 in
its winter; its DST ends on 5 April 2026 at 03:00 and starts on 27 September 2026 at
02:00): a delay warning is not sent inside them, a feedback request waits for their end,
"come back now" is not held. The clock is injected: every call takes the time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from services.notifications import records
from services.notifications.domain import ClinicNotifier, Outcome, Preferences, Rules
from services.notifications.domain.rules import RuleBook, quiet_until
from shared import events as ev

AKL = ZoneInfo("Pacific/Auckland")
RULES = Rules(timezone="Pacific/Auckland", settle_seconds=5, come_back_lead_minutes=10)


def local(month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=AKL)


@pytest.mark.parametrize(("now", "until"), [
    (local(3, 2, 20, 59), None),                      # a minute before the window
    (local(3, 2, 21, 0), local(3, 3, 8, 0)),          # its start is inside
    (local(3, 3, 0, 30), local(3, 3, 8, 0)),          # after midnight: the same morning
    (local(3, 3, 7, 59), local(3, 3, 8, 0)),
    (local(3, 3, 8, 0), None),                        # its end is not
    (local(3, 3, 12, 0), None),
])
def test_the_window_is_read_on_the_clinics_clock_start_inside_end_outside(
    now: datetime, until: datetime | None,
) -> None:
    assert quiet_until(now.astimezone(UTC), RULES) == (
        None if until is None else until.astimezone(UTC))


def test_a_dst_night_is_an_hour_longer_or_shorter_in_utc_but_ends_at_eight_local() -> None:
    # autumn: 21:00 NZDT (08:00Z) to 08:00 NZST (20:00Z): twelve hours
    start = local(4, 4, 21, 0).astimezone(UTC)
    assert start == datetime(2026, 4, 4, 8, 0, tzinfo=UTC)
    assert quiet_until(start, RULES) == datetime(2026, 4, 4, 20, 0, tzinfo=UTC)
    # 02:30 is lived twice that night: quiet both times, with the same end
    for fold in (0, 1):
        twice = local(4, 5, 2, 30).replace(fold=fold).astimezone(UTC)
        assert quiet_until(twice, RULES) == datetime(2026, 4, 4, 20, 0, tzinfo=UTC)
    assert quiet_until(datetime(2026, 4, 4, 19, 59, tzinfo=UTC), RULES) is not None
    assert quiet_until(datetime(2026, 4, 4, 20, 0, tzinfo=UTC), RULES) is None
    # spring: 21:00 NZST (09:00Z) to 08:00 NZDT (19:00Z): ten hours
    spring = local(9, 26, 21, 0).astimezone(UTC)
    assert spring == datetime(2026, 9, 26, 9, 0, tzinfo=UTC)
    assert quiet_until(spring, RULES) == datetime(2026, 9, 26, 19, 0, tzinfo=UTC)


def test_a_window_within_a_day_none_and_bad_windows() -> None:
    noon = Rules(timezone="Pacific/Auckland", quiet_hours="12:00-14:00")
    assert quiet_until(local(3, 2, 13, 0), noon) == local(3, 2, 14, 0).astimezone(UTC)
    assert quiet_until(local(3, 2, 22, 0), noon) is None
    assert quiet_until(local(3, 2, 23, 0), Rules(quiet_hours=None)) is None
    assert quiet_until(local(3, 2, 23, 0), Rules(quiet_hours="")) is None
    for bad in ("21:00", "9pm-8am", "21:00-21:00", "25:00-08:00"):
        with pytest.raises(ValueError, match="quiet_hours"):
            RuleBook.parse({"clinics": {"akl": {"quiet_hours": bad}}})


class Evening:
    """One Auckland clinic, driven by hand; the wall clock is the events' time."""

    def __init__(self, prefs: Preferences) -> None:
        self.notifier = ClinicNotifier("akl")
        self.prefs = {"v1": prefs}
        self.n = 0

    def floor(self, payload: ev.Payload, when: datetime) -> Outcome:
        self.n += 1
        return self.notifier.on_floor(payload, at=when, event_id=f"f{self.n}", rules=RULES,
                                      prefs=self.prefs, wall=when)

    def estimate(self, when: datetime, wait: float, low: float, high: float) -> Outcome:
        self.n += 1
        return self.notifier.on_estimate(
            ev.WaitEstimated(visit_id="v1", ticket_code="A-1", provider_id="p1", position=1,
                             wait_minutes=wait, low=low, high=high),
            at=when, event_id=f"w{self.n}", rules=RULES, prefs=self.prefs, wall=when)

    def arrive(self, when: datetime) -> None:
        self.floor(ev.PatientArrived(visit_id="v1", ticket_code="A-1", provider_id="p1",
                                     visit_type="follow_up"), when)

    def check_out(self, when: datetime) -> Outcome:
        self.floor(ev.RoomReady(room_id="r1"), when - timedelta(minutes=30))
        self.floor(ev.PatientRoomed(visit_id="v1", room_id="r1"), when - timedelta(minutes=29))
        return self.floor(ev.PatientCheckedOut(visit_id="v1"), when)


def test_a_feedback_request_decided_in_quiet_hours_goes_out_once_at_their_end() -> None:
    evening = Evening(Preferences(channel="sms"))
    checkout = local(4, 4, 21, 30).astimezone(UTC)  # the night the clocks go back
    evening.arrive(checkout - timedelta(hours=1))
    out = evening.check_out(checkout)
    [message] = out.messages
    morning = datetime(2026, 4, 4, 20, 0, tzinfo=UTC)  # 08:00 NZST
    assert message.not_before == morning
    assert ("feedback_request", "deferred") in out.decisions
    stored = records.message_record(message, "akl", checkout)
    assert stored.due_at == morning.timestamp()  # the sender claims nothing before
    assert stored.fields["next_attempt_at"] == str(morning.timestamp())
    assert stored.created_at == checkout.timestamp()
    # the same visit checked out again names the same message: still one
    again = Evening(Preferences(channel="sms"))
    again.arrive(checkout - timedelta(hours=1))
    assert again.check_out(checkout + timedelta(minutes=5)).messages[0].notification_id == \
        message.notification_id


def test_a_feedback_request_outside_quiet_hours_is_due_at_once() -> None:
    evening = Evening(Preferences(channel="sms"))
    checkout = local(4, 4, 20, 59).astimezone(UTC)
    evening.arrive(checkout - timedelta(hours=1))
    out = evening.check_out(checkout)
    assert out.messages[0].not_before is None
    assert ("feedback_request", "queued") in out.decisions
    assert records.message_record(out.messages[0], "akl", checkout).due_at == \
        checkout.timestamp()


def test_a_delay_warning_is_dropped_in_quiet_hours_not_held_to_the_morning() -> None:
    evening = Evening(Preferences(channel="sms"))
    start = local(3, 2, 20, 50).astimezone(UTC)
    evening.arrive(start)
    evening.estimate(start, 20, 15, 25)
    # a 40-minute slip read at 20:58 settles at 20:58:05: sent (before the window)
    slip = start + timedelta(minutes=8)
    evening.estimate(slip, 60, 55, 65)
    sent = evening.notifier.tick(now=slip + timedelta(seconds=5), rules=RULES,
                                 prefs=evening.prefs)
    assert [m.kind for m in sent.messages] == ["delay_warning"]
    # another slip read at 21:30 (past the 20-minute window): dropped, and nothing later
    late = start + timedelta(minutes=40)
    evening.estimate(late, 100, 95, 105)
    out = evening.notifier.tick(now=late + timedelta(seconds=5), rules=RULES,
                                prefs=evening.prefs)
    assert out.messages == [] and ("delay_warning", "quiet_hours") in out.decisions
    assert evening.notifier.next_due() is None
    morning = local(3, 3, 8, 1).astimezone(UTC)
    assert evening.notifier.tick(now=morning, rules=RULES, prefs=evening.prefs).messages == []


def test_a_patient_waiting_outside_is_called_back_in_quiet_hours() -> None:
    """They are on the clinic's list now, near the clinic: an evening clinic calls them."""
    evening = Evening(Preferences(channel="sms", wait_anywhere=True))
    late = local(3, 2, 22, 15).astimezone(UTC)
    assert quiet_until(late, RULES) is not None
    evening.arrive(late)
    assert evening.estimate(late, 40, 30, 50).messages == []
    sent = evening.estimate(late + timedelta(minutes=25), 12, 8, 16)
    assert [m.kind for m in sent.messages] == ["come_back_now"]
    assert sent.messages[0].not_before is None
