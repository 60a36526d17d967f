"""Reading the day's schedule: CSV and FHIR R4 ``Appointment`` resources in a JSON Bundle.

Pure: bytes in, ``ParsedSchedule`` out. Every bad row is reported with its line number
and the reason; the caller imports all rows or none (see the README). Identifying data
is turned into keyed digests by the ``ImportKeys`` functions passed in, here, at once:
date of birth, initials and a FHIR Patient's name become the kiosk check's digest; an
EHR identifier (a FHIR ``Patient.id``, an MRN column) becomes the pseudonymous
``patient_ref``. The plain values never leave this module, and reasons never quote them.
Appointment-type codes become the clinic's visit types (``ImportKeys.visit_types``).

CSV: a header row, then one appointment per row. Columns (any order, case-insensitive)::

    appointment_id, provider_id, visit_type, scheduled_at                 required
    patient_ref (already pseudonymous) or mrn (an EHR identifier)         one of them
    duration_minutes, status (booked|cancelled), dob, initials, clinic_id  optional

``scheduled_at`` is ISO 8601 with a UTC offset (``2026-03-02T08:15:00-05:00``); a
time without one is refused rather than guessed. Other columns (a patient's name...)
are ignored and listed in the answer, never stored.

FHIR: ``Practitioner`` and ``Location`` resources (and participants' ``display``) give
the providers' and rooms' display names (``ParsedSchedule.providers`` / ``rooms``).
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from pydantic import ValidationError

from services.checkin.domain import (
    DEFAULT_VISIT_TYPES,
    ID_PATTERN,
    Appointment,
    known_visit_type,
    normalize_initials,
    visit_types_named,
)

IdentityHasher = Callable[[date, str], str]
Pseudonymizer = Callable[[str], str]

REQUIRED_COLUMNS = ("appointment_id", "provider_id", "visit_type", "scheduled_at")
PATIENT_COLUMNS = ("patient_ref", "mrn")  # one of them
OPTIONAL_COLUMNS = ("duration_minutes", "status", "dob", "initials", "clinic_id")
COLUMN_ALIASES = {"date_of_birth": "dob", "birth_date": "dob", "appointment": "appointment_id",
                  "provider": "provider_id", "start": "scheduled_at",
                  "medical_record_number": "mrn", "patient_mrn": "mrn", "patient_id": "mrn"}
MAX_ROWS = 5000

# FHIR Appointment.status -> what it means for the day's schedule
FHIR_BOOKED = {"booked", "pending", "arrived", "checked-in", "fulfilled"}
FHIR_CANCELLED = {"cancelled", "noshow", "entered-in-error"}
FHIR_NOT_SCHEDULED = {"proposed", "waitlist"}


@dataclass(frozen=True, slots=True)
class ImportKeys:
    """What an import turns identifying data and codes into: ``hash_identity`` the kiosk
    check's digest of birth date + initials, ``pseudonymize`` an EHR patient identifier
    into ``patient_ref``, ``visit_types`` appointment-type codes into visit types."""

    hash_identity: IdentityHasher
    pseudonymize: Pseudonymizer
    visit_types: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_VISIT_TYPES))


@dataclass(frozen=True, slots=True)
class RowProblem:
    """A row that cannot be imported (``line`` 1-based in the uploaded file)."""

    line: int
    reason: str
    appointment_id: str | None = None


@dataclass(slots=True)
class ParsedSchedule:
    """What a file holds: good appointments, bad rows, rows deliberately skipped."""

    appointments: list[Appointment] = field(default_factory=list)
    errors: list[RowProblem] = field(default_factory=list)
    skipped: list[RowProblem] = field(default_factory=list)
    ignored_columns: list[str] = field(default_factory=list)
    rows: int = 0
    lines: list[int] = field(default_factory=list)  # each appointment's line, in order
    # display names from a FHIR Bundle: Practitioner id -> name, Location id -> name
    providers: dict[str, str] = field(default_factory=dict)
    rooms: dict[str, str] = field(default_factory=dict)


class _RowError(ValueError):
    pass


# ------------------------------------------------------------------ fields


def _identifier(value: Any, column: str) -> str:
    text = "" if value is None else str(value).strip()
    if not text:
        raise _RowError(f"{column} is missing")
    if not ID_PATTERN.match(text):
        raise _RowError(f"{column} {text[:80]!r} is not a valid id "
                        "(letters, digits, _ . : - ; at most 64)")
    return text


def _visit_type(value: Any, table: Mapping[str, str]) -> str:
    text = "" if value is None else str(value).strip()
    if not text:
        raise _RowError("visit_type is missing")
    if len(text) > 40:
        raise _RowError("visit_type is longer than 40 characters")
    known = known_visit_type(text, table)
    if known is None:
        raise _RowError(f"visit_type {text!r} is not one of this clinic's visit types: "
                        f"{visit_types_named(table)} (or a code mapped to one)")
    return known


def _instant(value: Any, column: str) -> datetime:
    text = "" if value is None else str(value).strip()
    if not text:
        raise _RowError(f"{column} is missing")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise _RowError(f"{column} {text[:40]!r} is not an ISO 8601 date-time") from None
    if parsed.tzinfo is None:
        raise _RowError(f"{column} {text[:40]!r} has no UTC offset "
                        "(write e.g. 2026-03-02T08:15:00-05:00)")
    return parsed.astimezone(UTC)


def _duration(value: Any) -> int | None:
    if value is None or str(value).strip() == "":
        return None
    text = str(value).strip()
    try:
        minutes = int(text)
    except ValueError:
        raise _RowError(f"duration_minutes {text[:20]!r} is not a whole number") from None
    if not 1 <= minutes <= 480:
        raise _RowError(f"duration_minutes {minutes} is not between 1 and 480")
    return minutes


def _birth_date(value: Any) -> date:
    # the value is identifying: reasons never quote it
    try:
        born = date.fromisoformat(str(value).strip())
    except ValueError:
        raise _RowError("dob is not a date (YYYY-MM-DD)") from None
    if born.year < 1900:
        raise _RowError("dob is before 1900")
    return born


def _identity(dob: Any, initials: Any, hash_identity: IdentityHasher) -> str | None:
    has_dob = dob is not None and str(dob).strip() != ""
    has_initials = initials is not None and str(initials).strip() != ""
    if not has_dob and not has_initials:
        return None
    if has_dob != has_initials:
        raise _RowError("dob and initials go together: give both or neither")
    letters = normalize_initials(str(initials))
    if letters is None:
        raise _RowError("initials must be 1 to 4 letters")
    return hash_identity(_birth_date(dob), letters)


def _appointment(**fields: Any) -> Appointment:
    appointment = Appointment(**fields)
    try:
        appointment.payload()  # the event it becomes must be valid before anything is published
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        raise _RowError(f"{where}: {error['msg']}") from None
    return appointment


def _drop_duplicates(parsed: ParsedSchedule, lines: list[int], what: str) -> None:
    """Refuse a second row with an appointment id already seen (ids compare without case:
    the kiosk's appointment code is typed in either case)."""
    seen: dict[str, int] = {}
    keep: list[Appointment] = []
    kept_lines: list[int] = []
    for appointment, line in zip(parsed.appointments, lines, strict=True):
        folded = appointment.appointment_id.lower()
        if folded in seen:
            parsed.errors.append(RowProblem(
                line, f"{what} {appointment.appointment_id!r} is already on line {seen[folded]}",
                appointment.appointment_id))
            continue
        seen[folded] = line
        keep.append(appointment)
        kept_lines.append(line)
    parsed.appointments = keep
    parsed.lines = kept_lines
    parsed.errors.sort(key=lambda p: p.line)


# --------------------------------------------------------------------- CSV


def parse_csv(data: bytes, *, clinic_id: str, keys: ImportKeys) -> ParsedSchedule:
    """Read a CSV schedule. Line numbers count physical lines (a quoted field may span
    several); the header is line 1."""
    parsed = ParsedSchedule()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        parsed.errors.append(RowProblem(data.count(b"\n", 0, exc.start) + 1,
                                        "the file is not UTF-8 text"))
        return parsed
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        parsed.errors.append(RowProblem(1, "the file is empty: a header row is required"))
        return parsed
    except csv.Error as exc:
        parsed.errors.append(RowProblem(1, f"the header row is not valid CSV: {exc}"))
        return parsed
    columns = [COLUMN_ALIASES.get(c.strip().lower(), c.strip().lower()) for c in header]
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if not any(c in columns for c in PATIENT_COLUMNS):
        missing.insert(0, "patient_ref (or mrn)")
    repeated = sorted({c for c in columns if c and columns.count(c) > 1})
    if missing or repeated:
        reasons = []
        if missing:
            reasons.append(f"missing column(s): {', '.join(missing)}")
        if repeated:
            reasons.append(f"repeated column(s): {', '.join(repeated)}")
        hint = ""
        if len(header) == 1 and (";" in header[0] or "\t" in header[0]):
            hint = "; the fields seem separated by ';' or tabs: save the file as CSV " \
                   "with commas"
        parsed.errors.append(RowProblem(1, "; ".join(reasons) + " (header: appointment_id, "
                                        "patient_ref, provider_id, visit_type, scheduled_at, "
                                        "...)" + hint))
        return parsed
    known = set(REQUIRED_COLUMNS) | set(PATIENT_COLUMNS) | set(OPTIONAL_COLUMNS)
    parsed.ignored_columns = [h.strip() for h, c in zip(header, columns, strict=True)
                              if c not in known]
    lines: list[int] = []
    last_line = reader.line_num
    while True:
        start = last_line + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            parsed.errors.append(RowProblem(start, f"not valid CSV: {exc}"))
            break
        last_line = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        parsed.rows += 1
        if parsed.rows > MAX_ROWS:
            parsed.errors.append(RowProblem(start, f"more than {MAX_ROWS} rows: split the file"))
            break
        given = row[0].strip() if row else None
        if len(row) != len(columns):
            parsed.errors.append(RowProblem(
                start, f"{len(row)} fields, but the header has {len(columns)}",
                given if given and ID_PATTERN.match(given) else None))
            continue
        values = dict(zip(columns, row, strict=True))
        appointment_id = values.get("appointment_id", "").strip() or None
        try:
            appointment = _csv_row(values, clinic_id, keys)
        except _RowError as exc:
            parsed.errors.append(RowProblem(start, str(exc), appointment_id))
            continue
        parsed.appointments.append(appointment)
        lines.append(start)
    _drop_duplicates(parsed, lines, "appointment_id")
    return parsed


def _csv_row(values: dict[str, str], clinic_id: str, keys: ImportKeys) -> Appointment:
    row_clinic = values.get("clinic_id", "").strip()
    if row_clinic and row_clinic != clinic_id:
        raise _RowError(f"row is for clinic {row_clinic[:64]!r}, not {clinic_id!r}")
    status = (values.get("status") or "").strip().lower() or "booked"
    if status not in ("booked", "cancelled"):
        raise _RowError(f"status {status[:20]!r} is not booked or cancelled")
    return _appointment(
        appointment_id=_identifier(values.get("appointment_id"), "appointment_id"),
        patient_ref=_csv_patient(values, keys.pseudonymize),
        provider_id=_identifier(values.get("provider_id"), "provider_id"),
        visit_type=_visit_type(values.get("visit_type"), keys.visit_types),
        scheduled_at=_instant(values.get("scheduled_at"), "scheduled_at"),
        duration_minutes=_duration(values.get("duration_minutes")),
        status=status,
        identity=_identity(values.get("dob"), values.get("initials"), keys.hash_identity),
    )


def _csv_patient(values: dict[str, str], pseudonymize: Pseudonymizer) -> str:
    """The row's ``patient_ref``: the pseudonym of its MRN, or its ``patient_ref`` as given
    (already pseudonymous). Never both: which one would be meant is not for us to guess."""
    mrn = (values.get("mrn") or "").strip()
    given = (values.get("patient_ref") or "").strip()
    if mrn and given:
        raise _RowError("give patient_ref or mrn, not both")
    if mrn:
        # an EHR identifier: reasons never quote it
        if len(mrn) > 64 or not mrn.isprintable():
            raise _RowError("mrn is longer than 64 characters or not printable")
        return pseudonymize(mrn)
    if not given:
        raise _RowError("patient_ref (or mrn) is missing")
    return _identifier(given, "patient_ref")


# -------------------------------------------------------------------- FHIR


def parse_fhir_bundle(data: bytes, *, clinic_id: str, keys: ImportKeys) -> ParsedSchedule:
    """Read a FHIR R4 Bundle of ``Appointment`` resources (``Patient`` resources in the same
    Bundle give the kiosk check's birth date and initials; ``Practitioner`` and
    ``Location`` resources display names). A row is a Bundle entry; its line is where the
    entry starts in the uploaded JSON. Every ``Patient.id`` becomes a pseudonym."""
    parsed = ParsedSchedule()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        parsed.errors.append(RowProblem(data.count(b"\n", 0, exc.start) + 1,
                                        "the file is not UTF-8 text"))
        return parsed
    try:
        bundle = json.loads(text)
    except json.JSONDecodeError as exc:
        parsed.errors.append(RowProblem(exc.lineno, f"not valid JSON at column {exc.colno}: "
                                                    f"{exc.msg}"))
        return parsed
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        parsed.errors.append(RowProblem(1, "not a FHIR Bundle (resourceType must be "
                                           "\"Bundle\")"))
        return parsed
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        parsed.errors.append(RowProblem(1, "Bundle.entry must be a list"))
        return parsed
    line_of = _entry_lines(text, len(entries))
    patients: dict[str, dict[str, Any]] = {}
    by_url: dict[str, dict[str, Any]] = {}  # entries' fullUrl (often urn:uuid:...) -> resource
    for entry in entries:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            continue
        if isinstance(entry.get("fullUrl"), str):
            by_url[entry["fullUrl"]] = resource
        if resource.get("resourceType") == "Patient":
            for reference in _patient_references(entry, resource):
                patients[reference] = resource
        elif resource.get("resourceType") == "Practitioner":
            _keep_name(parsed.providers, resource.get("id"), _person_name(resource))
        elif resource.get("resourceType") == "Location":
            _keep_name(parsed.rooms, resource.get("id"), resource.get("name"))
    lines: list[int] = []
    for index, entry in enumerate(entries):
        line = line_of[index]
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            parsed.errors.append(RowProblem(line, f"entry[{index}] has no resource"))
            continue
        if resource.get("resourceType") != "Appointment":
            continue
        parsed.rows += 1
        if parsed.rows > MAX_ROWS:
            parsed.errors.append(RowProblem(line, f"more than {MAX_ROWS} appointments: "
                                                  "split the Bundle"))
            break
        raw_id = resource.get("id")
        given_id = raw_id if isinstance(raw_id, str) and ID_PATTERN.match(raw_id) else None
        status = resource.get("status")
        if status in FHIR_NOT_SCHEDULED:
            parsed.skipped.append(RowProblem(line, f"status {status!r} is not on the schedule",
                                             given_id))
            continue
        try:
            appointment = _fhir_appointment(resource, patients, by_url, keys, parsed)
        except _RowError as exc:
            parsed.errors.append(RowProblem(line, f"entry[{index}]: {exc}", given_id))
            continue
        parsed.appointments.append(appointment)
        lines.append(line)
    _drop_duplicates(parsed, lines, "Appointment")
    return parsed


def _fhir_appointment(resource: dict[str, Any], patients: dict[str, dict[str, Any]],
                      by_url: dict[str, dict[str, Any]], keys: ImportKeys,
                      parsed: ParsedSchedule) -> Appointment:
    appointment_id = _identifier(resource.get("id"), "id")
    status_text = resource.get("status")
    if status_text in FHIR_BOOKED:
        status = "booked"
    elif status_text in FHIR_CANCELLED:
        status = "cancelled"
    else:
        raise _RowError(f"status {str(status_text)[:30]!r} is not an Appointment status")
    start = _instant(resource.get("start"), "start")
    duration = resource.get("minutesDuration")
    if duration is None and resource.get("end"):
        end = _instant(resource.get("end"), "end")
        duration = round((end - start).total_seconds() / 60)
        if duration < 1:
            raise _RowError("end is not after start")
    patient_ref = provider_id = None
    patient_reference = None
    participants = resource.get("participant")
    if not isinstance(participants, list) or not participants:
        raise _RowError("participant is missing (a Patient and a Practitioner)")
    for participant in participants:
        actor = participant.get("actor") if isinstance(participant, dict) else None
        reference = actor.get("reference") if isinstance(actor, dict) else None
        if not isinstance(reference, str):
            continue
        kind, _, ident = reference.rstrip("/").rpartition("/")
        kind = kind.rpartition("/")[2]
        target = by_url.get(reference)
        if target is not None:
            # a reference to another entry of the Bundle by its fullUrl (urn:uuid:...)
            kind = str(target.get("resourceType") or "")
            ident = target["id"] if isinstance(target.get("id"), str) else \
                reference.rpartition(":")[2].rpartition("/")[2]
        display = actor.get("display") if isinstance(actor, dict) else None
        if kind == "Patient" and patient_ref is None:
            # the EHR's identifier of the patient: only its pseudonym goes any further
            patient_ref = keys.pseudonymize(_identifier(ident, "Patient reference"))
            patient_reference = reference
        elif kind in ("Practitioner", "PractitionerRole") and provider_id is None:
            provider_id = _identifier(ident, "Practitioner reference")
            _keep_name(parsed.providers, provider_id, display, replace_name=False)
        elif kind == "Location" and ID_PATTERN.match(ident or ""):
            _keep_name(parsed.rooms, ident, display, replace_name=False)
    if patient_ref is None:
        raise _RowError("no participant is a Patient")
    if provider_id is None:
        raise _RowError("no participant is a Practitioner")
    identity = None
    patient = patients.get(patient_reference or "")
    if patient is None and patient_reference is not None:
        patient = patients.get(f"Patient/{patient_reference.rstrip('/').rpartition('/')[2]}")
    if patient is not None:
        identity = _fhir_identity(patient, keys.hash_identity)
    return _appointment(
        appointment_id=appointment_id, patient_ref=patient_ref, provider_id=provider_id,
        visit_type=_visit_type(_fhir_visit_type(resource), keys.visit_types),
        scheduled_at=start, duration_minutes=_duration(duration), status=status,
        identity=identity,
    )


def _keep_name(names: dict[str, str], ident: Any, name: Any, *,
               replace_name: bool = True) -> None:
    """Keep a display name of a Practitioner or Location (a resource's own name wins over
    a participant's ``display``)."""
    if not isinstance(ident, str) or not ID_PATTERN.match(ident):
        return
    if not isinstance(name, str) or not name.strip():
        return
    if replace_name or ident not in names:
        names[ident] = " ".join(name.split())[:80]


def _person_name(resource: dict[str, Any]) -> str | None:
    """A Practitioner's name as people say it: ``text``, else prefix, given and family
    (``Dr. Ada Okafor``)."""
    names = resource.get("name")
    if not isinstance(names, list) or not names:
        return None
    name = next((n for n in names if isinstance(n, dict) and n.get("use") == "official"),
                names[0])
    if not isinstance(name, dict):
        return None
    if isinstance(name.get("text"), str) and name["text"].strip():
        return str(name["text"])
    parts: list[str] = []
    for key in ("prefix", "given"):
        values = name.get(key)
        if isinstance(values, list):
            parts.extend(v for v in values if isinstance(v, str))
    if isinstance(name.get("family"), str):
        parts.append(name["family"])
    return " ".join(parts) or None


def _fhir_visit_type(resource: dict[str, Any]) -> str | None:
    candidates: list[Any] = [resource.get("appointmentType")]
    service_types = resource.get("serviceType")
    if isinstance(service_types, list):
        candidates.extend(service_types)
    for concept in candidates:
        if not isinstance(concept, dict):
            continue
        for coding in concept.get("coding") or []:
            if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                return coding["code"]
        if isinstance(concept.get("text"), str):
            return concept["text"]
    return None


def _patient_references(entry: dict[str, Any], patient: dict[str, Any]) -> list[str]:
    references = []
    if isinstance(patient.get("id"), str):
        references.append(f"Patient/{patient['id']}")
    if isinstance(entry.get("fullUrl"), str):
        references.append(entry["fullUrl"])
    return references


def _fhir_identity(patient: dict[str, Any], hash_identity: IdentityHasher) -> str | None:
    """Digest of the Patient's birth date and initials (first given name, family name)."""
    birth = patient.get("birthDate")
    names = patient.get("name")
    if not isinstance(birth, str) or not isinstance(names, list) or not names:
        return None
    try:
        born = date.fromisoformat(birth)
    except ValueError:
        raise _RowError("the Patient's birthDate is not a full date (YYYY-MM-DD)") from None
    name = next((n for n in names if isinstance(n, dict) and n.get("use") == "official"),
                names[0])
    if not isinstance(name, dict):
        return None
    given = name.get("given") or []
    family = name.get("family") or ""
    first = given[0] if given and isinstance(given[0], str) else ""
    letters = normalize_initials(first[:1] + (family[:1] if isinstance(family, str) else ""))
    if letters is None or len(letters) < 2:
        return None
    return hash_identity(born, letters)


_WS = re.compile(r"[ \t\n\r]*")


def _entry_lines(text: str, count: int) -> list[int]:
    """The line where each element of the Bundle's top-level ``entry`` array starts.

    The text is already known to be valid JSON; it is walked once with the standard
    decoder to find the array's element offsets. Falls back to line 1."""
    offsets = _entry_offsets(text)
    if len(offsets) != count:
        return [1] * count
    newlines = [i for i, ch in enumerate(text) if ch == "\n"]
    return [bisect.bisect_left(newlines, offset) + 1 for offset in offsets]


def _entry_offsets(text: str) -> list[int]:
    decoder = json.JSONDecoder()

    def skip(at: int) -> int:
        match = _WS.match(text, at)
        return match.end() if match else at

    try:
        at = skip(1 if text.startswith("\ufeff") else 0)
        if text[at] != "{":
            return []
        at = skip(at + 1)
        while text[at] != "}":
            key, at = decoder.raw_decode(text, at)
            at = skip(at)
            at = skip(at + 1)  # the colon
            if key == "entry" and text[at] == "[":
                offsets: list[int] = []
                at = skip(at + 1)
                while text[at] != "]":
                    offsets.append(at)
                    _value, at = decoder.raw_decode(text, at)
                    at = skip(at)
                    if text[at] == ",":
                        at = skip(at + 1)
                return offsets
            _value, at = decoder.raw_decode(text, at)
            at = skip(at)
            if text[at] == ",":
                at = skip(at + 1)
    except (ValueError, IndexError):
        return []
    return []
