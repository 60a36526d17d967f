"""Who to tell what, and when: the notification rules of one clinic, as plain Python.

Pure: no I/O, no clock reads (every call takes the time), no globals. The adapters feed
a clinic's ``ClinicNotifier`` floor events, flow's wait estimates and clock ticks, and
carry out the ``Outcome`` that comes back (queue a message, raise or withdraw a nurse
alert). Its parts:

- ``rules``: a clinic's thresholds (``Rules``, ``RuleBook``) and what a patient agreed to
  (``Preferences``); retry backoff, when contact details are deleted;
- ``notes``: what the notifier remembers of each waiting patient (``WaitQuote``,
  ``PendingWarning``, ``PatientNotes``);
- ``warnings``: delay warnings, "please come back now", "we are ready for you"
  (``WaitingPatients``);
- ``alerts``: nurse room-ready alerts (``NurseAlerts``, ``Alert``);
- ``notifier``: the clinic's state machine over the shared floor model
  (``ClinicNotifier``) and its snapshot;
- ``texts``: what people read, made from what was decided (a ``Wording``, an alert's
  ids) with the clinic's ``Names`` when it is sent or shown, so nothing stored holds a
  name;
- ``ids``: ids derived from triggers (the same trigger always names the same
  notification: the store refuses a second one).
"""

from services.notifications.domain.alerts import Alert, NurseAlerts, WithdrawReason, page_id
from services.notifications.domain.ids import notification_id
from services.notifications.domain.notes import PatientKind, PatientNotes, PendingWarning, WaitQuote
from services.notifications.domain.notifier import ClinicNotifier
from services.notifications.domain.outcome import Message, Outcome
from services.notifications.domain.rules import (
    NO_CONTACT,
    PatientChannel,
    Preferences,
    RuleBook,
    Rules,
    backoff_seconds,
    contact_deleted_at,
    contact_expiry,
    contact_hold,
)
from services.notifications.domain.texts import (
    Names,
    Wording,
    alert_text,
    format_range,
    render,
)
from services.notifications.domain.warnings import WaitingPatients
from shared.floor.model import NotApplicable

__all__ = [
    "NO_CONTACT", "Alert", "ClinicNotifier", "Message", "Names",
    "NotApplicable", "NurseAlerts", "Outcome", "PatientChannel", "PatientKind",
    "PatientNotes", "PendingWarning", "Preferences", "RuleBook", "Rules", "WaitQuote",
    "WaitingPatients", "WithdrawReason", "Wording", "alert_text", "backoff_seconds",
    "contact_deleted_at", "contact_expiry", "contact_hold", "format_range",
    "notification_id", "page_id", "render",
]  # fmt: skip
