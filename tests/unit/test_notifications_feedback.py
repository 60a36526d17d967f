"""Feedback after the visit, the pure parts: the signed link (forged, altered, expired,
another key), the one message a checkout asks for (consent, opt-out, replays, the rule),
its words, and how long the contact is kept for a request deferred from the evening."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import orjson
import pytest

from services.notifications.consumer import notifier_reader
from services.notifications.domain import (
    ClinicNotifier,
    Names,
    Outcome,
    Preferences,
    RuleBook,
    Rules,
    contact_deleted_at,
    contact_expiry,
    contact_hold,
)
from services.notifications.domain.rules import (
    CONTACT_HOLD_MARGIN,
    backoff_seconds,
    hold_span,
    quiet_until,
)
from services.notifications.domain.texts import Wording, render
from services.notifications.feedback_link import LinkRefused, sign, verify
from services.notifications.plan import NotificationChanges, NotifierPlan, NotifierState
from shared import events as ev
from tests.fakes import record_of

NOON = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
SECRET = "a-feedback-secret-for-tests"
DAY = timedelta(hours=72)


def test_a_signed_link_names_its_visit_until_it_expires() -> None:
    token = sign(SECRET, "north", "v-17", now=NOON, valid_for=DAY)
    claims = verify(SECRET, token, now=NOON + DAY - timedelta(seconds=1))
    assert (claims.clinic_id, claims.visit_id) == ("north", "v-17")
    assert claims.expires_at == NOON + DAY
    with pytest.raises(LinkRefused) as refused:
        verify(SECRET, token, now=NOON + DAY)
    assert refused.value.problem == "expired"


def _altered(token: str, **changes: object) -> str:
    payload, _, signature = token.partition(".")
    claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    forged = base64.urlsafe_b64encode(orjson.dumps(claims)).rstrip(b"=").decode()
    return f"{forged}.{signature}"


@pytest.mark.parametrize("make", [
    lambda t: _altered(t, v="v-18"),               # another visit's form
    lambda t: _altered(t, e=4_102_444_800),        # a later expiry
    lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # the signature changed
    lambda t: sign("another-key", "north", "v-17", now=NOON, valid_for=DAY),
    lambda t: t.split(".")[0],                     # no signature
    lambda t: "", lambda t: ".", lambda t: "not a link", lambda t: "a.b.c",
    lambda t: "%%%.@@@",
])
def test_a_link_altered_made_up_or_signed_under_another_key_is_forged(make) -> None:  # type: ignore[no-untyped-def]
    token = sign(SECRET, "north", "v-17", now=NOON, valid_for=DAY)
    with pytest.raises(LinkRefused) as refused:
        verify(SECRET, make(token), now=NOON)
    assert refused.value.problem == "forged"


def test_an_expired_link_signed_by_us_is_expired_not_forged() -> None:
    token = sign(SECRET, "north", "v-17", now=NOON - DAY * 2, valid_for=DAY)
    with pytest.raises(LinkRefused) as refused:
        verify(SECRET, token, now=NOON)
    assert refused.value.problem == "expired"


# ------------------------------------------------------------ the message


def checked_out(prefs: Preferences | None, rules: Rules = Rules(),
                read_after: timedelta = timedelta(0), *, read_at: datetime = NOON,
                checkout: bool = True) -> tuple[ClinicNotifier, Outcome]:
    """A patient roomed and seen in the hour before ``read_at`` (12:00 UTC) and checked
    out then (unless not ``checkout``); the checkout read ``read_after``."""
    notifier = ClinicNotifier("north")
    visits = {} if prefs is None else {"v-17": prefs}
    start = read_at - timedelta(minutes=60)
    for minute, payload in enumerate([
            ev.PatientArrived(visit_id="v-17", ticket_code="A-17", provider_id="p1",
                              visit_type="follow_up"),
            ev.RoomReady(room_id="r1"),
            ev.PatientRoomed(visit_id="v-17", room_id="r1"),
            ev.ProviderIn(visit_id="v-17", provider_id="p1")]):
        when = start + timedelta(minutes=minute * 10)
        notifier.on_floor(payload, at=when, event_id=f"e{minute}", rules=rules, prefs=visits,
                          wall=when)
    if not checkout:
        return notifier, Outcome()
    out = notifier.on_floor(ev.PatientCheckedOut(visit_id="v-17"), at=read_at,
                            event_id="out", rules=rules, prefs=visits,
                            wall=read_at + read_after)
    return notifier, out


def test_a_patient_who_agreed_to_messages_is_asked_once_after_checkout() -> None:
    _, out = checked_out(Preferences(channel="email", delay_updates=False))
    [message] = out.messages
    assert (message.kind, message.visit_id, message.channel) == ("feedback_request", "v-17",
                                                                 "email")
    assert message.wording == Wording("feedback_request", "A-17")
    assert ("feedback_request", "queued") in out.decisions
    # the same visit checked out again (undone, redone) names the same message: one kept
    _, again = checked_out(Preferences(channel="email"))
    assert again.messages[0].notification_id == message.notification_id


@pytest.mark.parametrize(("prefs", "rules", "late", "why"), [
    (None, Rules(), 0, "no_contact"),
    (Preferences(channel="sms", opted_out=True), Rules(), 0, "opted_out"),
    (Preferences(channel="sms"), Rules(feedback_requests=False), 0, "disabled"),
    (Preferences(channel="sms"), Rules(max_message_age_minutes=30), 31, "stale"),
])
def test_no_feedback_message_without_consent_when_opted_out_disabled_or_replayed(
    prefs: Preferences | None, rules: Rules, late: int, why: str,
) -> None:
    _, out = checked_out(prefs, rules, timedelta(minutes=late))
    assert out.messages == []
    assert ("feedback_request", why) in out.decisions


def test_the_message_carries_the_link_only_when_sent_to_the_patient() -> None:
    wording = Wording("feedback_request", "A-17")
    subject, text = render(wording, Names(clinic="North Family Practice"),
                           "https://clinic.example/feedback/abc.def")
    assert subject == "North Family Practice: how was your visit?"
    assert "ticket A-17" in text and text.endswith("https://clinic.example/feedback/abc.def")
    _, listed = render(wording, Names())
    assert "feedback/" not in listed and "link for the patient only" in listed


# ------------------------------------------- the contact a deferred request needs

CHICAGO = ZoneInfo("America/Chicago")


def chicago(day: int, hour: int, minute: int = 0) -> datetime:
    """The clinic's clock (UTC-6 in March before the clocks change), as UTC."""
    return datetime(2026, 3, day, hour, minute, tzinfo=CHICAGO).astimezone(UTC)


def test_a_contact_is_kept_past_midnight_only_while_the_evening_request_waits_for_it() -> None:
    rules = Rules(timezone="America/Chicago")  # quiet hours 21:00-08:00 on its clock
    given, checkout = chicago(2, 21, 10), chicago(2, 21, 30)
    midnight, eight = chicago(3, 0), chicago(3, 8)
    expires = contact_expiry(given, CHICAGO)
    assert expires == midnight

    # the checkout at 21:30 decides the request; it is due at the end of quiet hours
    _, out = checked_out(Preferences(channel="email"), rules, read_at=checkout)
    [message] = out.messages
    assert message.not_before == quiet_until(checkout, rules) == eight
    hold = contact_hold(eight, hold_span())
    # its retries (5 attempts of up to 10 s, 2+4+8+16 s between) and an hour's margin;
    # never later, whatever is pending
    assert hold == chicago(3, 9) + timedelta(seconds=80)

    # past midnight the contact is kept for it, and only for it
    assert contact_deleted_at(expires, [hold]) == hold
    assert contact_deleted_at(expires, []) == midnight  # a visit with nothing pending
    # sent at 08:00 (nothing pending any more): past its own midnight, deleted at once
    assert contact_deleted_at(expires, []) < eight
    # a request due before the contact's own midnight never shortens it
    assert contact_deleted_at(expires, [contact_hold(chicago(2, 14), hold_span())]) \
        == midnight


@pytest.mark.parametrize(("attempts", "base", "cap", "timeout"), [
    (5, 2.0, 300.0, 10.0), (20, 2.0, 300.0, 10.0), (12, 30.0, 900.0, 30.0), (1, 2.0, 5.0, 1.0)])
def test_the_last_retry_of_a_deferred_request_still_finds_its_contact(
        attempts: int, base: float, cap: float, timeout: float) -> None:
    """The hold follows the sender's retry settings: a schedule longer than an hour (20
    attempts, backoff capped at 5 minutes: 63.5 minutes of waits) is held for whole."""
    due = chicago(3, 8)
    span = hold_span(attempts, base, cap, timeout)
    started, last_ends = due, due + timedelta(seconds=timeout)
    for attempt in range(1, attempts):  # each attempt fails after its timeout, then waits
        started = last_ends + timedelta(seconds=backoff_seconds(attempt, base, cap))
        last_ends = started + timedelta(seconds=timeout)
    assert last_ends + CONTACT_HOLD_MARGIN <= contact_hold(due, span)
    assert contact_hold(due, span) - (last_ends + CONTACT_HOLD_MARGIN) < timedelta(seconds=1)


def test_the_plan_holds_the_contact_for_a_deferred_request_only() -> None:
    plan = NotifierPlan(RuleBook.parse({}), floor_topic="floor", paging=False,
                        names=lambda _clinic: Names(zone=CHICAGO))
    reader = notifier_reader("floor", "estimates")

    def checkout_read_at(read: datetime, plan: NotifierPlan = plan) -> NotificationChanges:
        notifier, _ = checked_out(Preferences(channel="email"), read_at=read,
                                  checkout=False)
        event = ev.make_event(ev.PatientCheckedOut(visit_id="v-17"), clinic_id="north",
                              source="test", occurred_at=read)
        record = record_of(event, "floor", 9)
        inbound = reader.read(record.topic, record.partition, record.offset, record.key,
                              record.value)
        state = NotifierState(now=read, notifiers={"north": notifier},
                              preferences={"north": {"v-17": Preferences(channel="email")}})
        return plan([inbound], state).changes

    evening = checkout_read_at(chicago(2, 21, 30))
    [request] = evening.notifications
    assert evening.contact_holds == [(request.notification_id, "north", "v-17",
                                      chicago(3, 9) + timedelta(seconds=80))]
    # a deployment whose sender retries for longer holds the contact for longer
    longer = NotifierPlan(RuleBook.parse({}), floor_topic="floor", paging=False,
                          names=lambda _clinic: Names(zone=CHICAGO),
                          hold=hold_span(20, 2.0, 300.0, 10.0))
    [(_id, _clinic, _visit, until)] = checkout_read_at(chicago(2, 21, 30),
                                                       longer).contact_holds
    assert until == chicago(3, 8) + timedelta(seconds=200 + 510 + 11 * 300) \
        + CONTACT_HOLD_MARGIN
    afternoon = checkout_read_at(chicago(2, 16, 30))
    assert len(afternoon.notifications) == 1 and afternoon.contact_holds == []
