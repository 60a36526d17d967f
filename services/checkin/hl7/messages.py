"""HL7 v2 messages as check-in reads them, and the acknowledgements it answers.

Pure: bytes in, a ``ScheduleMessage`` or ``RegistrationMessage`` out (or a ``Problem``
naming the segment, field and reason); an ``Ack`` out as bytes. Parsing is python-hl7's
(``hl7.parse``); this module only says which field means what (docs/interfaces.md has
the table):

- ``SIU^S12/S13/S14`` (booked, rescheduled, modified), ``S15/S17`` (cancelled, deleted),
  ``S26`` (no-show): the appointment from ``SCH``, the patient from ``PID``, the
  provider from ``AIP`` (else ``PV1-7``), the room from ``AIL``, the start from ``AIS-4``
  / ``AIP-6`` / ``AIL-6`` / ``SCH-11.4``, the visit type from ``SCH-7`` (table 0276)
  else ``AIS-3``.
- ``ADT^A04`` (registered: arrived), ``A11`` (registration cancelled), ``A08``
  (patient updated), ``A03`` (visit ended): the patient from ``PID``, the EHR's visit
  from ``PV1-19``, the provider from ``PV1-7``.

Identifying values (the MRN, name, birth date) are returned to the caller, which turns
them into pseudonyms and digests at once; no ``Problem`` reason ever quotes them.
Timestamps without an offset are returned naive: they are the sender's local time,
which the caller reads in the clinic's zone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, Literal

import hl7
from hl7.exceptions import ParseException

from services.checkin.domain import ID_PATTERN

VT, FS, CR = b"\x0b", b"\x1c", b"\x0d"

AckCode = Literal["AA", "AE", "AR"]
ScheduleAction = Literal["book", "cancel", "no_show"]
RegistrationAction = Literal["arrive", "cancel_arrival", "update_patient", "end_visit"]

SCHEDULE_TRIGGERS: dict[str, ScheduleAction] = {
    "S12": "book", "S13": "book", "S14": "book", "S15": "cancel", "S17": "cancel",
    "S26": "no_show"}
REGISTRATION_TRIGGERS: dict[str, RegistrationAction] = {
    "A04": "arrive", "A11": "cancel_arrival", "A08": "update_patient", "A03": "end_visit"}
PROCESSING_IDS = {"P", "T", "D"}

# HL7 table 0357 (message error condition codes) used in ERR-3
REQUIRED_FIELD_MISSING = "101"
DATA_TYPE_ERROR = "102"
TABLE_VALUE_NOT_FOUND = "103"
UNSUPPORTED_MESSAGE_TYPE = "200"
UNSUPPORTED_EVENT_CODE = "201"
UNSUPPORTED_PROCESSING_ID = "202"
UNSUPPORTED_VERSION_ID = "203"
UNKNOWN_KEY_IDENTIFIER = "204"
DUPLICATE_KEY_IDENTIFIER = "205"
APPLICATION_INTERNAL_ERROR = "207"
SEGMENT_SEQUENCE_ERROR = "100"
ERROR_TEXT = {
    "0": "Message accepted", "100": "Segment sequence error",
    "101": "Required field missing", "102": "Data type error",
    "103": "Table value not found", "200": "Unsupported message type",
    "201": "Unsupported event code", "202": "Unsupported processing id",
    "203": "Unsupported version id", "204": "Unknown key identifier",
    "205": "Duplicate key identifier", "206": "Application record locked",
    "207": "Application internal error",
}

CANCELLED_STATUSES = {"cancelled", "canceled", "deleted"}
URGENT_ADMISSION_TYPES = {"E", "U"}  # HL7 table 0007: emergency, urgent


class Problem(Exception):
    """Why a message cannot be applied, where: ``ack`` is ``AE`` (the content is wrong:
    do not resend as it is) or ``AR`` (rejected: unsupported, not for us, or not now)."""

    def __init__(self, ack: AckCode, code: str, reason: str, segment: str = "MSH",
                 field_no: int | None = None, component: int | None = None,
                 retry: bool = False) -> None:
        super().__init__(reason)
        self.ack: AckCode = ack
        self.code = code
        self.reason = reason
        self.segment = segment
        self.field_no = field_no
        self.component = component
        self.retry = retry  # a transient refusal: the same message may succeed later

    @property
    def where(self) -> str:
        """``PID-3``, ``SCH-11.4``: the place named in the ERR segment."""
        place = self.segment
        if self.field_no is not None:
            place += f"-{self.field_no}"
            if self.component is not None:
                place += f".{self.component}"
        return place


@dataclass(frozen=True, slots=True)
class Header:
    """What ``MSH`` says: who sent what, when, under which control id."""

    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    sent_at: datetime | None
    message_code: str
    trigger: str
    control_id: str
    processing_id: str
    version: str
    encoding: str = "^~\\&"

    @property
    def message_type(self) -> str:
        return f"{self.message_code}^{self.trigger}"


@dataclass(frozen=True, slots=True)
class PatientIdentity:
    """``PID``'s identifying values, in memory only: the caller pseudonymizes ``mrn`` and
    digests birth date + initials at once."""

    mrn: str = field(repr=False)
    family: str = field(default="", repr=False)
    given: str = field(default="", repr=False)
    birth_date: date | None = field(default=None, repr=False)

    @property
    def initials(self) -> str:
        return (self.given[:1] + self.family[:1]).upper()


@dataclass(frozen=True, slots=True)
class Named:
    """A provider or room as the EHR names it: its id and a display name."""

    ehr_id: str
    name: str = ""


@dataclass(frozen=True, slots=True)
class ScheduleMessage:
    """An ``SIU`` message: one appointment and what happened to it."""

    header: Header
    action: ScheduleAction
    appointment_id: str
    at: datetime | None  # the message's own time (ordering): MSH-7
    start: datetime | None = None
    duration_minutes: int | None = None
    visit_type_code: str | None = None
    patient: PatientIdentity | None = None
    provider: Named | None = None
    room: Named | None = None


@dataclass(frozen=True, slots=True)
class RegistrationMessage:
    """An ``ADT`` message: one patient's registration (visit) and what happened to it."""

    header: Header
    action: RegistrationAction
    at: datetime | None  # EVN-2 (recorded), else MSH-7
    patient: PatientIdentity | None = None
    visit_number: str | None = None
    attending: Named | None = None
    location: Named | None = None
    urgent: bool = False


FeedMessage = ScheduleMessage | RegistrationMessage


# ------------------------------------------------------------------- reading


def decode_text(frame: bytes) -> str:
    """The message's text: UTF-8, else Latin-1 (the common 8-bit charsets of v2 senders);
    segments end in CR (a sender's LF or CR LF is read as CR)."""
    try:
        text = frame.decode("utf-8")
    except UnicodeDecodeError:
        text = frame.decode("latin-1")
    text = text.replace("\r\n", "\r").replace("\n", "\r")
    return "\r".join(s for s in text.split("\r") if s.strip())


# the segments read here: a message's first of each is all ``hl7.parse`` is given (the
# NTE, NK1, OBX, DG1, AIG ... an EHR adds cost parsing time and change nothing)
READ_SEGMENTS = frozenset({"MSH", "EVN", "SCH", "TQ1", "PID", "PV1", "AIS", "AIP", "AIL"})


def _read_segments(text: str) -> str:
    kept: dict[str, str] = {}
    for segment in text.split("\r"):
        kind = segment[:3]
        if kind in READ_SEGMENTS and kind not in kept:
            kept[kind] = segment
    return "\r".join(kept.values())


def parse_message(frame: bytes) -> tuple[Any, Header]:
    """``hl7.parse`` the frame and read its header; ``Problem`` (AR) when it is not an HL7
    v2 message or its header cannot be answered."""
    text = decode_text(frame)
    if not text.startswith("MSH") or len(text) < 8:
        raise Problem("AR", SEGMENT_SEQUENCE_ERROR,
                      "not an HL7 v2 message: it must start with an MSH segment", "MSH", 1)
    try:
        message = hl7.parse(_read_segments(text))
        msh = message.segment("MSH")
    except (ParseException, KeyError, IndexError, ValueError):
        raise Problem("AR", SEGMENT_SEQUENCE_ERROR, "the MSH segment cannot be read",
                      "MSH", 1) from None
    return message, _header(msh, text[4:8])


def _value(segment: Any, field_no: int, component: int = 1, repeat: int = 1,
           subcomponent: int = 1) -> str:
    """One value of a segment ('' when absent), unescaped, stripped."""
    if segment is None:
        return ""
    try:
        value = segment.extract_field(1, field_no, repeat, component, subcomponent)
    except (IndexError, KeyError, TypeError, ValueError):
        return ""
    return str(value).strip() if value is not None else ""


def _repeats(segment: Any, field_no: int) -> int:
    try:
        found = segment(field_no)
    except (IndexError, KeyError, TypeError):
        return 0
    return len(found) if isinstance(found, hl7.Field) else (1 if str(found) else 0)


def _first(message: Any, segment_id: str) -> Any:
    try:
        return message.segment(segment_id)
    except (KeyError, IndexError):
        return None


def _header(msh: Any, encoding: str) -> Header:
    code, trigger = _value(msh, 9, 1), _value(msh, 9, 2)
    sent_at = None
    raw_time = _value(msh, 7, 1)
    if raw_time:
        sent_at = _timestamp(raw_time, "MSH", 7)
    return Header(
        sending_application=_value(msh, 3), sending_facility=_value(msh, 4),
        receiving_application=_value(msh, 5), receiving_facility=_value(msh, 6),
        sent_at=sent_at, message_code=code.upper(), trigger=trigger.upper(),
        control_id=_value(msh, 10), processing_id=_value(msh, 11).upper(),
        version=_value(msh, 12), encoding=encoding if len(encoding) == 4 else "^~\\&")


_DTM = re.compile(r"^\d{4}(\d{2}){0,5}(\.\d{1,4})?([+-]\d{4})?$")


def _timestamp(text: str, segment: str, field_no: int,
               component: int | None = None) -> datetime:
    """An HL7 DTM (``YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]``): aware when it has an
    offset, naive (the sender's local time) when not."""
    parsed = None
    if _DTM.match(text):
        try:
            parsed = hl7.parse_datetime(text)
        except (ValueError, TypeError):
            parsed = None
    if parsed is None:
        raise Problem("AE", DATA_TYPE_ERROR, f"{segment}-{field_no} is not an HL7 date/time "
                      "(YYYYMMDDHHMM[SS][+/-ZZZZ])", segment, field_no, component)
    if parsed.tzinfo is not None:
        offset = parsed.utcoffset() or timedelta(0)
        parsed = parsed.replace(tzinfo=timezone(offset))
    return parsed


def check_header(header: Header) -> None:
    """Refuse (AR) what the listener does not take: a missing control id, a processing id
    other than P/T/D, a version before 2.3, a type or trigger it does not apply."""
    if not header.control_id:
        raise Problem("AR", REQUIRED_FIELD_MISSING, "MSH-10 (message control id) is "
                      "missing: without it a resent message cannot be told apart", "MSH", 10)
    if len(header.control_id) > 199:
        raise Problem("AR", DATA_TYPE_ERROR, "MSH-10 is longer than 199 characters",
                      "MSH", 10)
    if header.processing_id[:1] not in PROCESSING_IDS:
        raise Problem("AR", UNSUPPORTED_PROCESSING_ID, "MSH-11 (processing id) must be P, "
                      "T or D", "MSH", 11)
    version = re.match(r"^2\.(\d+)", header.version)
    if version is None or int(version.group(1)) < 3:
        raise Problem("AR", UNSUPPORTED_VERSION_ID, "MSH-12 (version) must be 2.3 or "
                      "later", "MSH", 12)
    if header.message_code not in ("SIU", "ADT"):
        raise Problem("AR", UNSUPPORTED_MESSAGE_TYPE, f"MSH-9 message type "
                      f"{header.message_code[:10]!r} is not taken here (SIU, ADT)", "MSH", 9, 1)
    triggers = SCHEDULE_TRIGGERS if header.message_code == "SIU" else REGISTRATION_TRIGGERS
    if header.trigger not in triggers:
        raise Problem("AR", UNSUPPORTED_EVENT_CODE, f"{header.message_code}^"
                      f"{header.trigger[:10]} is not taken here ({', '.join(triggers)})",
                      "MSH", 9, 2)


def read_message(frame: bytes) -> FeedMessage:
    """The frame as a schedule or registration message, or ``Problem``."""
    message, header = parse_message(frame)
    check_header(header)
    return read_parsed(message, header)


def read_parsed(message: Any, header: Header) -> FeedMessage:
    """A message ``parse_message`` read and ``check_header`` took, as a schedule or
    registration message, or ``Problem`` (parsed once: the listener reads the header
    first, to answer even a message it cannot take)."""
    if header.message_code == "SIU":
        return _schedule(message, header)
    return _registration(message, header)


def _identifier(text: str, segment: str, field_no: int, component: int | None,
                what: str) -> str:
    if not text:
        raise Problem("AE", REQUIRED_FIELD_MISSING, f"{segment}-{field_no} ({what}) is "
                      "missing", segment, field_no, component)
    if not ID_PATTERN.match(text):
        raise Problem("AE", DATA_TYPE_ERROR, f"{segment}-{field_no} ({what}) must be 1-64 "
                      "letters, digits, _ . : -", segment, field_no, component)
    return text


def _patient(message: Any) -> PatientIdentity | None:
    """``PID``: the MRN (the PID-3 repetition typed MR, else the first), the first name
    of PID-5 and the birth date of PID-7."""
    pid = _first(message, "PID")
    if pid is None:
        return None
    mrn = ""
    for repeat in range(1, max(1, _repeats(pid, 3)) + 1):
        if _value(pid, 3, 5, repeat).upper() == "MR":
            mrn = _value(pid, 3, 1, repeat)
            break
    mrn = mrn or _value(pid, 3, 1)
    if not mrn:
        mrn = _value(pid, 2, 1)  # v2.3 senders' external id
    if not mrn:
        raise Problem("AE", REQUIRED_FIELD_MISSING, "PID-3 (patient identifier) is missing",
                      "PID", 3, 1)
    if len(mrn) > 64 or not mrn.isprintable():
        raise Problem("AE", DATA_TYPE_ERROR, "PID-3 is longer than 64 characters or not "
                      "printable", "PID", 3, 1)
    born = None
    birth = _value(pid, 7, 1)
    if birth:
        try:
            born = date(int(birth[0:4]), int(birth[4:6]), int(birth[6:8]))
        except (ValueError, IndexError):
            raise Problem("AE", DATA_TYPE_ERROR, "PID-7 (birth date) is not YYYYMMDD",
                          "PID", 7, 1) from None
    return PatientIdentity(mrn=mrn, family=_value(pid, 5, 1), given=_value(pid, 5, 2),
                           birth_date=born)


def _person(segment: Any, field_no: int) -> Named | None:
    """An XCN (id^family^given^middle^suffix^prefix) as an id and a display name."""
    ehr_id = _value(segment, field_no, 1)
    if not ehr_id:
        return None
    parts = [_value(segment, field_no, 6), _value(segment, field_no, 3),
             _value(segment, field_no, 2)]
    return Named(ehr_id, " ".join(p for p in parts if p))


def _place(segment: Any, field_no: int) -> Named | None:
    """A PL (point of care^room^bed^facility^...^description): the room, else the point
    of care; PL-9 (description) as its name."""
    room, point = _value(segment, field_no, 2), _value(segment, field_no, 1)
    ehr_id = room or point
    if not ehr_id:
        return None
    return Named(ehr_id, _value(segment, field_no, 9))


_UNITS = {"m": 1, "min": 1, "mins": 1, "minute": 1, "minutes": 1, "h": 60, "hr": 60,
          "hour": 60, "hours": 60, "s": 0, "sec": 0, "seconds": 0}


def _minutes(amount: str, unit: str, segment: str, field_no: int) -> int | None:
    if not amount:
        return None
    try:
        value = float(amount)
    except ValueError:
        raise Problem("AE", DATA_TYPE_ERROR, f"{segment}-{field_no} (duration) is not a "
                      "number", segment, field_no) from None
    factor = _UNITS.get(unit.strip().lower(), 1)
    minutes = round(value * factor) if factor else round(value / 60)
    if not 1 <= minutes <= 480:
        raise Problem("AE", DATA_TYPE_ERROR, f"{segment}-{field_no} (duration) is not "
                      "between 1 and 480 minutes", segment, field_no)
    return minutes


def _schedule(message: Any, header: Header) -> ScheduleMessage:
    sch = _first(message, "SCH")
    if sch is None:
        raise Problem("AE", SEGMENT_SEQUENCE_ERROR, "an SIU message needs an SCH segment",
                      "SCH")
    filler, placer = _value(sch, 2, 1), _value(sch, 1, 1)
    if not filler and not placer:
        raise Problem("AE", REQUIRED_FIELD_MISSING, "SCH-2 (filler appointment id) is "
                      "missing, and so is SCH-1 (placer appointment id)", "SCH", 2, 1)
    if filler:
        appointment_id = _identifier(filler, "SCH", 2, 1, "filler appointment id")
    else:
        appointment_id = _identifier(placer, "SCH", 1, 1, "placer appointment id")
    action = SCHEDULE_TRIGGERS[header.trigger]
    if action == "book" and _value(sch, 25, 1).lower() in CANCELLED_STATUSES:
        action = "cancel"  # an S14 whose filler status says the booking is gone
    ais, aip, ail = (_first(message, s) for s in ("AIS", "AIP", "AIL"))
    start = None
    for segment, field_no, component, name in ((ais, 4, 1, "AIS"), (aip, 6, 1, "AIP"),
                                               (ail, 6, 1, "AIL"), (sch, 11, 4, "SCH"),
                                               (_first(message, "TQ1"), 7, 1, "TQ1")):
        text = _value(segment, field_no, component)
        if text:
            start = _timestamp(text, name, field_no, component)
            break
    duration = None
    for segment, amount, unit, name in ((sch, 9, 10, "SCH"), (ais, 7, 8, "AIS"),
                                        (aip, 9, 10, "AIP"), (ail, 9, 10, "AIL")):
        duration = _minutes(_value(segment, amount), _value(segment, unit), name, amount)
        if duration is not None:
            break
    visit_type = (_value(sch, 7, 1) or _value(sch, 7, 2) or _value(ais, 3, 1)
                  or _value(ais, 3, 2) or None)
    provider = _person(aip, 3) or _person(_first(message, "PV1"), 7)
    return ScheduleMessage(
        header=header, action=action, appointment_id=appointment_id, at=header.sent_at,
        start=start, duration_minutes=duration,
        visit_type_code=visit_type[:40] if visit_type else None,
        patient=_patient(message), provider=provider, room=_place(ail, 3))


def _registration(message: Any, header: Header) -> RegistrationMessage:
    evn, pv1 = _first(message, "EVN"), _first(message, "PV1")
    at = header.sent_at
    recorded = _value(evn, 2, 1)
    if recorded:
        at = _timestamp(recorded, "EVN", 2, 1)
    action = REGISTRATION_TRIGGERS[header.trigger]
    patient = _patient(message)
    if patient is None and action in ("arrive", "update_patient"):
        raise Problem("AE", SEGMENT_SEQUENCE_ERROR, f"an ADT^{header.trigger} message needs "
                      "a PID segment", "PID")
    visit_number = _value(pv1, 19, 1) or None
    if visit_number is not None and (len(visit_number) > 64 or not visit_number.isprintable()):
        raise Problem("AE", DATA_TYPE_ERROR, "PV1-19 (visit number) is longer than 64 "
                      "characters or not printable", "PV1", 19, 1)
    if visit_number is None and action in ("cancel_arrival", "end_visit"):
        raise Problem("AE", REQUIRED_FIELD_MISSING, "PV1-19 (visit number) is missing: it "
                      "names the registration to cancel or end", "PV1", 19, 1)
    return RegistrationMessage(
        header=header, action=action, at=at, patient=patient, visit_number=visit_number,
        attending=_person(pv1, 7), location=_place(pv1, 3),
        urgent=_value(pv1, 4, 1).upper() in URGENT_ADMISSION_TYPES)


# ----------------------------------------------------------------- answering


@dataclass(frozen=True, slots=True)
class Ack:
    """An acknowledgement to send: its code and, when not AA, the problem."""

    code: AckCode
    problem: Problem | None = None
    text: str = ""


def _escape(text: str) -> str:
    """A value made safe for an HL7 field (the standard escapes of ``| ^ ~ \\ &``)."""
    out = []
    for ch in text:
        out.append({"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "~": "\\R\\",
                    "&": "\\T\\", "\r": " ", "\n": " "}.get(ch, ch))
    return "".join(out)


def _dtm(at: datetime) -> str:
    return at.strftime("%Y%m%d%H%M%S") + at.strftime("%z")


def ack_bytes(ack: Ack, header: Header | None, *, application: str, facility: str,
              control_id: str, now: datetime) -> bytes:
    """The ACK message (``MSH``, ``MSA``, and ``ERR`` for AE/AR) for ``header``'s message
    (None: the message could not be read; the ACK names no message). ``MSH-9`` is
    ``ACK^<trigger>^ACK``; ``MSA-2`` the message's control id; ``ERR-2`` the place
    (segment^sequence^field^repetition^component), ``ERR-3`` the table 0357 code,
    ``ERR-4`` ``E``, ``ERR-8`` the reason in words."""
    trigger = header.trigger if header else ""
    version = header.version if header and header.version else "2.5.1"
    processing = header.processing_id[:1] if header and header.processing_id else "P"
    segments = [
        "|".join(["MSH", "^~\\&", _escape(application), _escape(facility),
                  _escape(header.sending_application if header else ""),
                  _escape(header.sending_facility if header else ""), _dtm(now), "",
                  f"ACK^{_escape(trigger)}^ACK", _escape(control_id), processing,
                  _escape(version)]),
        "|".join(["MSA", ack.code, _escape(header.control_id if header else ""),
                  _escape(ack.text or (ack.problem.reason if ack.problem else ""))[:80]]),
    ]
    problem = ack.problem
    if problem is not None:
        location = "^".join([problem.segment, "1",
                             str(problem.field_no) if problem.field_no is not None else "",
                             "1" if problem.field_no is not None else "",
                             str(problem.component) if problem.component is not None else ""])
        code = f"{problem.code}^{_escape(ERROR_TEXT.get(problem.code, ''))}^HL70357"
        segments.append("|".join(["ERR", "", location.rstrip("^"), code, "E", "", "", "",
                                  _escape(f"{problem.where}: {problem.reason}")]))
    return ("\r".join(segments) + "\r").encode("utf-8")


def frame(payload: bytes) -> bytes:
    """A message in its MLLP envelope: VT, the message, FS CR."""
    return VT + payload + FS + CR
