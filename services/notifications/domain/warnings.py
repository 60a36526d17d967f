"""Telling waiting patients: delay warnings, "please come back now" and "we are ready for
you". Pure: every call takes the time.

* A patient is warned when a delay is announced for their provider (or the whole
  clinic), or when their estimate slips well beyond what they were last told: the time
  they expect to be called moved later by ``warn_after_growth_minutes``. What they were
  "last told" starts as the first estimate (the one on their ticket and the screen) and
  becomes each warning's estimate. A warning waits ``settle_seconds`` for the other half
  of the story: a delay waits for flow's fresh estimate (so the message says the new
  wait), a jump in the estimate waits for the delay that may explain it.
* At most one warning per patient per ``min_minutes_between_messages``: a warning inside
  that window is held and goes out when the window ends, if it is still true then. "Come
  back now" and "we are ready for you" are never held back (each goes out at most once
  per visit) but do count as messages.
* Never inside the clinic's quiet hours (``quiet_hours``, its own clock): a warning that
  settles then is dropped, not held (a wait warned of in the morning is no longer true).
  "Come back now" and "we are ready for you" are sent in quiet hours too: the patient is
  on the clinic's list now, waiting in or near the clinic, and is being called.
* Never after roomed, never to a patient who left, opted out or gave no contact, never
  for a trigger older than ``max_message_age_minutes`` (a replay is not news).
* A patient waiting outside is told "please come back now" when the low end of their
  estimate (the early edge of the 80% range: nine in ten patients are back before they
  are called) drops to ``come_back_lead_minutes``, and "we are ready for you" when a
  room is ready for them.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from services.notifications.domain.alerts import Alert
from services.notifications.domain.ids import notification_id
from services.notifications.domain.notes import (
    PatientKind,
    PatientNotes,
    PendingWarning,
    WaitQuote,
)
from services.notifications.domain.outcome import Message, Outcome
from services.notifications.domain.rules import (
    NO_CONTACT,
    Preferences,
    Rules,
    quiet_reason,
    quiet_until,
    stale,
)
from services.notifications.domain.texts import Wording
from shared import events as ev
from shared.floor.model import Clinic, Visit, VisitStatus

ORPHAN_NOTES = timedelta(hours=2)  # estimates for visits the floor never showed are dropped
INTENTS_PER_VISIT = 8


class WaitingPatients:
    """What one clinic's patients were told and are about to be told, by visit."""

    def __init__(self, clinic_id: str) -> None:
        self.clinic_id = clinic_id
        self.notes: dict[str, PatientNotes] = {}

    def notes_for(self, visit_id: str, ticket_code: str, provider_id: str | None) -> PatientNotes:
        notes = self.notes.get(visit_id)
        if notes is None:
            notes = self.notes[visit_id] = PatientNotes(visit_id, ticket_code, provider_id)
        return notes

    # ------------------------------------------------------------- inputs

    def arrived(self, arrival: ev.PatientArrived, *, event_id: str, now: datetime,
                rules: Rules, prefs: dict[str, Preferences], wall: datetime,
                out: Outcome) -> None:
        """A patient arrived (their estimate may have been read first)."""
        notes = self.notes_for(arrival.visit_id, arrival.ticket_code, arrival.provider_id)
        notes.ticket_code, notes.provider_id = arrival.ticket_code, arrival.provider_id
        if notes.estimate is not None:  # flow's estimate was read before the arrival
            self._consider_come_back(
                notes, notes.estimate.aged(now), event_id, now,
                prefs.get(arrival.visit_id, NO_CONTACT), rules, wall, out)

    def estimated(self, estimate: ev.WaitEstimated, *, at: datetime, event_id: str,
                  floor: Clinic, now: datetime, rules: Rules, prefs: dict[str, Preferences],
                  wall: datetime, out: Outcome) -> None:
        """Flow's latest estimate for a visit: a slip to warn of, a delay warning's fresh
        estimate, or the moment to call a patient waiting outside back."""
        visit_id = estimate.visit_id
        notes = self.notes_for(visit_id, estimate.ticket_code, estimate.provider_id)
        new = WaitQuote(at, estimate.wait_minutes, estimate.low, estimate.high,
                        estimate.position)
        if notes.estimate is not None and notes.estimate.at > at:
            return  # an older estimate read late
        notes.estimate = new
        if notes.told is None:
            notes.told = new  # what the ticket and the screen showed them first
        visit = floor.visits.get(visit_id)
        waiting = visit is not None and visit.status is VisitStatus.WAITING
        preference = prefs.get(visit_id, NO_CONTACT)
        if waiting:
            pending = notes.pending
            if pending is not None and pending.reason == "delay" and at >= pending.armed_at:
                pending.fresh = True
            slip = (new.expected_call() - notes.told.expected_call()).total_seconds() / 60.0
            if pending is None and slip >= rules.warn_after_growth_minutes and \
                    rules.delay_warnings:
                if preference.reachable and preference.delay_updates:
                    due = _settled(at, wall, rules)
                    notes.pending = PendingWarning("estimate", (event_id,), at, due,
                                                   _expires(at, due, rules))
                else:
                    out.decisions.append(("delay_warning", quiet_reason(preference)))
            self._consider_come_back(notes, new, event_id, now, preference, rules, wall, out)
        self.release(floor, now, rules, prefs, wall, out)

    def delay_announced(self, delay: ev.DelayAnnounced, *, at: datetime, event_id: str,
                        floor: Clinic, rules: Rules, prefs: dict[str, Preferences],
                        wall: datetime, out: Outcome) -> None:
        """Arm a warning for each waiting patient the delay affects."""
        if not rules.delay_warnings or delay.minutes < rules.announce_delays_from_minutes:
            return
        for visit in floor.waiting():
            if delay.provider_id is not None and visit.provider_id != delay.provider_id:
                continue
            preference = prefs.get(visit.visit_id, NO_CONTACT)
            if not (preference.reachable and preference.delay_updates):
                out.decisions.append(("delay_warning", quiet_reason(preference)))
                continue
            notes = self.notes_for(visit.visit_id, visit.ticket_code, visit.provider_id)
            before = notes.pending
            triggers = (*(before.trigger_ids if before else ()), event_id)
            due = _settled(at, wall, rules)
            if before and before.reason == "estimate":
                due = min(before.due_at, due)
            notes.pending = PendingWarning(
                "delay", triggers, at, due, _expires(at, due, rules),
                delay.minutes, delay.provider_id,
                fresh=notes.estimate is not None and notes.estimate.at >= at,
            )

    def delay_withdrawn(self, provider_id: str | None) -> None:
        """A delay cleared (or set to 0) before it was told: nobody needs to hear of it."""
        for notes in self.notes.values():
            pending = notes.pending
            if pending is not None and pending.reason == "delay" and \
                    pending.delay_provider == provider_id:
                notes.pending = None

    def settle_visits(self, floor: Clinic, out: Outcome) -> None:
        """Patients no longer waiting are never messaged: drop what was queued for them."""
        for visit_id in list(self.notes):
            notes = self.notes[visit_id]
            visit = floor.visits.get(visit_id)
            if visit is not None and visit.status is VisitStatus.WAITING:
                continue
            if visit is None and visit_id not in floor.closed_ids:
                continue  # not on the floor yet: its arrival is still to be read
            if notes.pending is not None:
                out.decisions.append(("delay_warning", "roomed" if visit else "left"))
                notes.pending = None
            if notes.intents:
                out.cancelled.append((visit_id, tuple(notes.intents)))
                notes.intents.clear()
            if visit is None:
                del self.notes[visit_id]

    def ready_for_you(self, visit: Visit, alert: Alert, rules: Rules,
                      prefs: dict[str, Preferences], fresh: bool, out: Outcome) -> None:
        """A room is ready for a patient waiting outside: "we are ready for you", once."""
        preference = prefs.get(visit.visit_id, NO_CONTACT)
        notes = self.notes_for(visit.visit_id, visit.ticket_code, visit.provider_id)
        if not (rules.wait_anywhere and preference.wait_anywhere) or notes.ready_sent:
            return
        notes.ready_sent = notes.come_back_sent = True
        if not preference.reachable:
            out.decisions.append(("ready_for_you", quiet_reason(preference)))
        elif not fresh:
            out.decisions.append(("ready_for_you", "stale"))
        else:
            self._send(notes, "ready_for_you", (alert.alert_id,), alert.raised_at, preference,
                       None, out, room_id=alert.room_id)

    # ------------------------------------------------------------ release

    def release(self, floor: Clinic, now: datetime, rules: Rules,
                prefs: dict[str, Preferences], wall: datetime, out: Outcome) -> None:
        """Send the warnings that have settled (or got their fresh estimate), hold those
        inside a patient's window, drop those no longer true."""
        for notes in self.notes.values():
            pending = notes.pending
            if pending is None:
                continue
            if not (pending.fresh or pending.due_at <= now):
                continue
            visit = floor.visits.get(notes.visit_id)
            preference = prefs.get(notes.visit_id, NO_CONTACT)
            drop: str | None = None
            if visit is None or visit.status is not VisitStatus.WAITING:
                drop = "roomed"
            elif not (preference.reachable and preference.delay_updates) or \
                    not rules.delay_warnings:
                drop = quiet_reason(preference)
            elif wall > pending.expires_at:
                drop = "stale"
            elif quiet_until(wall, rules) is not None:
                drop = "quiet_hours"  # only useful now: not held until the morning
            if drop is not None:
                out.decisions.append(("delay_warning", drop))
                notes.pending = None
                continue
            window_ends = (notes.last_message_at + timedelta(
                minutes=rules.min_minutes_between_messages)
                if notes.last_message_at is not None else None)
            if window_ends is not None and now < window_ends:
                # held: goes out when the window ends, if it is still true then
                pending.due_at = window_ends
                pending.fresh = False
                pending.expires_at = max(pending.expires_at, window_ends + timedelta(
                    minutes=rules.max_message_age_minutes))
                out.decisions.append(("delay_warning", "held"))
                continue
            estimate = _estimate_to_tell(notes, pending, now)
            if pending.reason == "estimate" and (
                    estimate is None or notes.told is None or
                    (estimate.expected_call() - notes.told.expected_call()).total_seconds() / 60
                    < rules.warn_after_growth_minutes):
                out.decisions.append(("delay_warning", "recovered"))
                notes.pending = None
                continue
            notes.pending = None
            self._send(notes, "delay_warning", pending.trigger_ids, now, preference,
                       estimate, out, pending)

    def recall(self, floor: Clinic, now: datetime, rules: Rules,
               prefs: dict[str, Preferences], wall: datetime, out: Outcome) -> None:
        """Call back each patient waiting outside whose range already reached the lead
        time: a contact given (or switched to waiting outside) after flow's estimate was
        read is acted on at the next tick, not only at the next estimate, which may never
        come when the patient is next in line."""
        for notes in self.notes.values():
            preference = prefs.get(notes.visit_id)
            visit = floor.visits.get(notes.visit_id)
            if (preference is None or notes.estimate is None or visit is None
                    or visit.status is not VisitStatus.WAITING):
                continue
            self._consider_come_back(notes, notes.estimate.aged(now),
                                     f"contact-{notes.visit_id}", now, preference, rules,
                                     wall, out)

    def next_due(self) -> list[datetime]:
        """When each waiting warning is next due."""
        return [n.pending.due_at for n in self.notes.values() if n.pending is not None]

    def forget_orphans(self, floor: Clinic, now: datetime) -> None:
        """Forget estimates of visits the floor never showed (their arrival was never read)."""
        for visit_id in [v for v, n in self.notes.items()
                         if v not in floor.visits
                         and (n.estimate is None or now - n.estimate.at > ORPHAN_NOTES)]:
            del self.notes[visit_id]

    # ----------------------------------------------------------- helpers

    def _consider_come_back(self, notes: PatientNotes, estimate: WaitQuote, trigger: str,
                            now: datetime, preference: Preferences, rules: Rules,
                            wall: datetime, out: Outcome) -> None:
        """Call a patient waiting outside back once their range reaches the lead time."""
        if not (rules.wait_anywhere and preference.wait_anywhere) or notes.come_back_sent \
                or estimate.low > rules.come_back_lead_minutes:
            return
        notes.come_back_sent = True
        if not preference.reachable:
            out.decisions.append(("come_back_now", quiet_reason(preference)))
        elif stale(estimate.at, wall, rules):
            out.decisions.append(("come_back_now", "stale"))
        else:
            self._send(notes, "come_back_now", (trigger,), now, preference, estimate, out)

    def _send(self, notes: PatientNotes, kind: PatientKind, triggers: tuple[str, ...],
              now: datetime, preference: Preferences, estimate: WaitQuote | None,
              out: Outcome, pending: PendingWarning | None = None,
              room_id: str | None = None) -> None:
        assert preference.channel is not None
        message = Message(
            notification_id=notification_id(self.clinic_id, notes.visit_id, kind, triggers),
            visit_id=notes.visit_id, ticket_code=notes.ticket_code, kind=kind,
            wording=_wording(kind, notes, estimate, pending, room_id), trigger_ids=triggers,
            decided_at=now, channel=preference.channel,
        )
        out.messages.append(message)
        out.decisions.append((kind, "queued"))
        notes.last_message_at = now
        if kind == "delay_warning" and estimate is not None:
            notes.told = estimate
        notes.intents = [*notes.intents, message.notification_id][-INTENTS_PER_VISIT:]


def _wording(kind: PatientKind, notes: PatientNotes, estimate: WaitQuote | None,
             pending: PendingWarning | None, room_id: str | None) -> Wording:
    """What a message says, in ids and numbers (``texts.render`` makes the words)."""
    low, high = (None, None) if estimate is None else (estimate.low, estimate.high)
    position = 0 if estimate is None else estimate.position
    wait = None if estimate is None else estimate.wait
    if kind == "delay_warning":
        assert estimate is not None
        if pending is not None and pending.reason == "delay":
            return Wording(kind, notes.ticket_code, pending.delay_provider,
                           pending.delay_minutes, low, high, position, wait=wait)
        return Wording(kind, notes.ticket_code, notes.provider_id, None, low, high, position,
                       wait=wait)
    if kind == "come_back_now":
        assert estimate is not None
    return Wording(kind, notes.ticket_code, notes.provider_id, None, low, high, position,
                   room_id, wait)


def _estimate_to_tell(notes: PatientNotes, pending: PendingWarning,
                      now: datetime) -> WaitQuote | None:
    """The estimate a warning quotes: flow's latest, aged to ``now``. A delay whose fresh
    estimate never came (flow saw no change, or is behind) is at least the delay itself."""
    if notes.estimate is None:
        if pending.reason != "delay":
            return None
        return WaitQuote(now, pending.delay_minutes, pending.delay_minutes,
                         pending.delay_minutes + 10)
    estimate = notes.estimate.aged(now)
    if pending.reason == "delay" and notes.estimate.at < pending.armed_at:
        width = estimate.high - estimate.low
        low = max(estimate.low, float(pending.delay_minutes))
        estimate = WaitQuote(now, max(estimate.wait, low), low,
                             max(estimate.high, low + width), estimate.position)
    return estimate


def _settled(at: datetime, wall: datetime, rules: Rules) -> datetime:
    """When a warning armed by a trigger made at ``at`` and read at ``wall`` stops waiting
    for the other half of its story. The wait counts from the reading: the other half
    comes on another topic, so a notifier catching up on old events (``at`` long past)
    still gives it ``settle_seconds`` to arrive. A trigger already too old to be news
    when read is not waited for: it is dropped at once."""
    settle = timedelta(seconds=rules.settle_seconds)
    return at + settle if stale(at, wall, rules) else max(at, wall) + settle


def _expires(at: datetime, due: datetime, rules: Rules) -> datetime:
    """When a warning armed by a trigger made at ``at`` is no longer news: its age limit,
    but never before its settle time ends (a trigger read just inside the limit would
    otherwise always be dropped while it waits)."""
    return max(at + timedelta(minutes=rules.max_message_age_minutes), due)
