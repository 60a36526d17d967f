"""The front desk's and the kiosk's commands: import the schedule, check patients in,
cancel, sweep for no-shows, answer "where am I in line".

Each command reads what it needs from the store, asks the domain, publishes, then
records. Everything is validated before anything is published; a command that cannot
publish undoes what it recorded and says so (``Unavailable``). A command names only what
exists at its clinic (appointments, visits, tickets, providers): anything else is refused
(``NotFound``, ``Conflict``) before anything is published, so no answered command is
dead-lettered later. Refusals are ``shared.errors`` kinds, never HTTP statuses. Every day
is the clinic's own (``shared/clinics.py``). No Kafka or HTTP here: events go out through
the ``Publish`` function given in.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from services.checkin import metrics as m
from services.checkin.domain import (
    DEFAULT_VISIT_TYPES,
    PLAUSIBLE_DAYS,
    PSEUDONYM,
    Appointment,
    AppointmentState,
    Channel,
    VisitView,
    WaitStatus,
    assign_kiosk_codes,
    check_provider,
    check_scheduled_arrival,
    choose_kiosk_appointment,
    clinic_day,
    identity_digest,
    implausible_day,
    is_late,
    kiosk_days,
    known_visit_type,
    map_visit_type,
    no_show_verdict,
    normalize_initials,
    normalize_kiosk_code,
    normalize_ticket_code,
    patient_pseudonym,
    plan_import,
    provider_queue_place,
    visit_types_named,
    wait_status,
)
from services.checkin.schedule import IdentityHasher, ImportKeys, ParsedSchedule, RowProblem
from services.checkin.store import CheckinStore
from shared import events as ev
from shared.clinics import ClinicDirectory
from shared.errors import Conflict, NotFound, Refusal, Rejected, Unavailable
from shared.logging import get_logger
from shared.visit_end import VisitEnds

log = get_logger("clinicflow.checkin.desk")
SOURCE = "checkin"
NO_SHOW_HORIZON = timedelta(hours=24)
# how long a provider seen among a clinic's known providers is taken as known without
# asking Redis again (two of an arrival's round trips); an unknown one is always asked
PROVIDERS_KEPT = timedelta(seconds=5)

# publishes events to the floor topic (keyed by clinic); one outcome per event, in order:
# None when it is safely on Kafka, the exception otherwise
Publish = Callable[[Sequence[ev.Event]], Awaitable[list[BaseException | None]]]
# returns once checkin's projection holds the clinic's floor partition up to its end as of
# now (``barrier.FloorBarrier``); raises ``Unavailable`` when it cannot
Barrier = Callable[[str], Awaitable[None]]


async def _no_barrier(_clinic_id: str) -> None:
    return None


@dataclass(frozen=True, slots=True)
class DeskConfig:
    """``clinics``: each clinic's zone and names; ``identity_secret`` keys the kiosk check's
    digests, the kiosk codes and the patients' pseudonyms; ``visit_types`` maps
    appointment-type codes (normalized) to visit types."""

    clinics: ClinicDirectory
    late_after: timedelta
    no_show_after: timedelta
    identity_secret: bytes
    visit_types: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_VISIT_TYPES))


class ScheduleRejected(Rejected):
    """The import has bad rows: nothing was published or stored. ``errors`` lists every
    bad row (the answer names each one)."""

    def __init__(self, errors: list[RowProblem], rows: int) -> None:
        super().__init__(f"{len(errors)} problem(s) in {max(rows, len(errors))} row(s); "
                         "nothing was imported (fix the rows and import the whole file "
                         "again)", "bad_rows")
        self.errors = errors
        self.rows = rows


@dataclass(frozen=True, slots=True)
class ImportResult:
    dry_run: bool
    rows: int
    created: list[str]
    updated: list[str]
    unchanged: int
    restored: int
    skipped: list[RowProblem]
    ignored_columns: list[str]


@dataclass(frozen=True, slots=True)
class ArrivalResult:
    visit_id: str
    ticket_code: str
    event_id: str
    late: bool
    appointment_id: str | None
    provider_id: str | None
    visit_type: str
    priority: str
    wait: WaitStatus
    patient_ref: str | None = None


@dataclass(frozen=True, slots=True)
class NamedEntry:
    """A provider or room and how the clinic calls it; ``source``: ``configuration``
    (CLINICFLOW_CLINICS, the first source), ``fhir`` (an imported Practitioner or
    Location) or ``schedule`` (an id on an imported schedule, with no name anywhere)."""

    id: str
    name: str
    source: Literal["configuration", "fhir", "schedule"]


@dataclass(frozen=True, slots=True)
class ClinicNames:
    """A clinic as its people know it: name, zone, providers and rooms."""

    clinic_id: str
    name: str
    timezone: str
    providers: list[NamedEntry]
    rooms: list[NamedEntry]


@dataclass(frozen=True, slots=True)
class FollowUp:
    """A no-show on the front desk's list to call: no names, a pseudonymous patient."""

    appointment_id: str
    provider_id: str | None
    visit_type: str | None
    scheduled_at: datetime
    patient_ref: str | None
    arrived_later: bool


@dataclass(slots=True)
class WalkIn:
    provider_id: str | None
    visit_type: str
    priority: Literal["routine", "urgent"] = "routine"
    patient_ref: str | None = None


@dataclass(slots=True)
class ArrivalOverrides:
    """What the front desk may change when checking in a scheduled patient."""

    provider_id: str | None = None
    visit_type: str | None = None
    priority: Literal["routine", "urgent"] = "routine"


@dataclass(slots=True)
class NoShowSweepResult:
    """What one no-show sweep did: the ``patient.no_show`` events it published, and how
    many it could not publish (the next sweep tries them again)."""

    published: list[ev.Event] = field(default_factory=list)
    failed: int = 0


# how far from the clinic's today the kiosk looks for a code typed on the wrong day
KIOSK_DAYS_BACK = 14
KIOSK_DAYS_AHEAD = 120


class CheckinDesk:
    def __init__(self, store: CheckinStore, publish: Publish, config: DeskConfig,
                 barrier: Barrier = _no_barrier, visit_ends: VisitEnds | None = None,
                 ) -> None:
        self.store = store
        self.publish = publish
        self.config = config
        self.barrier = barrier
        # the visit-end claim a cancel takes before it publishes (shared/visit_end.py):
        # billing's checkout takes the same one, so only one of them ends a visit
        self.visit_ends = visit_ends
        # by clinic: when its known providers were read, and them (see PROVIDERS_KEPT)
        self._providers_read: dict[str, tuple[datetime, frozenset[str]]] = {}

    def zone(self, clinic_id: str) -> ZoneInfo:
        """The clinic's IANA zone (CLINICFLOW_CLINICS, else the default)."""
        return self.config.clinics.zone(clinic_id)

    def today(self, clinic_id: str, now: datetime) -> date:
        """The clinic's calendar day at ``now``, in its own zone."""
        return clinic_day(now, self.zone(clinic_id))

    def read_day(self, clinic_id: str, day: date | None, now: datetime) -> date:
        """The clinic's day a read asks for (default: its today); one more than
        ``PLAUSIBLE_DAYS`` from today is ``Rejected`` (422, ``implausible_date``), as an
        appointment's date is."""
        today = self.today(clinic_id, now)
        if day is None:
            return today
        if abs((day - today).days) > PLAUSIBLE_DAYS:
            raise Rejected(f"day {day.isoformat()} is more than {PLAUSIBLE_DAYS} days from "
                           f"the clinic's today ({today.isoformat()}): a mistyped date?",
                           "implausible_date")
        return day

    def identity_hasher(self, clinic_id: str) -> IdentityHasher:
        secret = self.config.identity_secret

        def digest(birth_date: date, initials: str) -> str:
            return identity_digest(secret, clinic_id, birth_date, initials)

        return digest

    def import_keys(self, clinic_id: str) -> ImportKeys:
        """What the clinic's imports turn identifying data and codes into (keyed by the
        identity secret: the kiosk check's digest, the patients' pseudonyms)."""
        secret = self.config.identity_secret

        def pseudonymize(ehr_id: str) -> str:
            return patient_pseudonym(secret, clinic_id, ehr_id)

        return ImportKeys(self.identity_hasher(clinic_id), pseudonymize,
                          self.config.visit_types)

    def visit_type(self, code: str) -> str:
        """A visit type as the clinic's map has it (``FOLLOWUP`` -> ``follow_up``)."""
        return map_visit_type(code, self.config.visit_types)

    def desk_visit_type(self, code: str) -> str:
        """A visit type typed at the desk (a walk-in's, an override): one of the clinic's
        visit types, or a code its map turns into one; anything else (free text that
        would be published as a new "type") is ``Rejected`` naming the allowed values."""
        table = self.config.visit_types
        mapped = known_visit_type(code, table)
        if mapped is None:
            raise Rejected(f"visit_type {code[:40]!r} is not one of this clinic's visit "
                           f"types: {visit_types_named(table)} (or a code mapped to one, "
                           "CLINICFLOW_CHECKIN_VISIT_TYPES)", "unknown_visit_type")
        return mapped

    def walk_in_patient_ref(self, clinic_id: str, given: str | None) -> str | None:
        """The ``patient_ref`` a walk-in is published with: a reference already in this
        service's pseudonym form (``pt-`` + 24 hex digits) as it is; anything else (an
        MRN, a chart number) is an identifier, turned into its keyed pseudonym as the
        imports and the HL7 feed do, so it never reaches Kafka as typed."""
        if given is None or PSEUDONYM.match(given):
            return given
        return patient_pseudonym(self.config.identity_secret, clinic_id, given)

    async def _publish_one(self, event: ev.Event) -> None:
        outcome = (await self.publish([event]))[0]
        if outcome is not None:
            log.warning("publish failed", event_type=event.event_type, error=repr(outcome))
            raise Unavailable("could not publish to Kafka; nothing was recorded, try again",
                              "unavailable")

    # ------------------------------------------------------------- schedule

    async def import_schedule(self, clinic_id: str, parsed: ParsedSchedule, *, fmt: str,
                              dry_run: bool, now: datetime) -> ImportResult:
        """All rows or none: any bad row rejects the whole import (``ScheduleRejected``).
        A valid import publishes ``appointment.scheduled`` for new and changed
        appointments only, then stores them."""
        started = time.perf_counter()
        for appointment, line in zip(parsed.appointments, parsed.lines, strict=False):
            if appointment.status != "booked":
                continue
            try:
                await self.check_booking(clinic_id, appointment.scheduled_at,
                                         appointment.provider_id, now=now,
                                         also_known=parsed.providers)
            except Refusal as refused:
                parsed.errors.append(RowProblem(line, refused.detail,
                                                appointment.appointment_id))
        parsed.errors.sort(key=lambda p: p.line)
        if parsed.errors:
            m.IMPORTS.labels(fmt, "rejected").inc()
            m.SCHEDULE_ROWS.labels(fmt, "rejected").inc(len(parsed.errors))
            raise ScheduleRejected(parsed.errors, parsed.rows)
        if not dry_run and not await self.store.lock_import(clinic_id):
            raise Conflict(f"another schedule import for clinic {clinic_id!r} is running; "
                           "try again when it is done", "import_running")
        try:
            ids = [a.appointment_id for a in parsed.appointments]
            stored = await self.store.appointments(clinic_id, ids)
            zone = self.zone(clinic_id)
            days = sorted({clinic_day(a.scheduled_at, zone) for a in parsed.appointments})
            coded = assign_kiosk_codes(
                parsed.appointments, stored, await self.store.kiosk_codes(clinic_id, days),
                secret=self.config.identity_secret, clinic_id=clinic_id, zone=zone)
            plan = plan_import(coded, stored)
            result = ImportResult(
                dry_run=dry_run, rows=parsed.rows,
                created=[a.appointment_id for a in plan.created],
                updated=[a.appointment_id for a in plan.updated],
                unchanged=len(plan.unchanged), restored=len(plan.restored),
                skipped=parsed.skipped, ignored_columns=parsed.ignored_columns,
            )
            if dry_run:
                m.IMPORTS.labels(fmt, "dry_run").inc()
                return result
            events = [ev.make_event(a.payload(), clinic_id=clinic_id, source=SOURCE,
                                    occurred_at=now, correlation_id=a.appointment_id)
                      for a in plan.to_publish]
            outcomes = await self.publish(events) if events else []
            published = [a for a, o in zip(plan.to_publish, outcomes, strict=True) if o is None]
            await self.store.save_appointments(clinic_id, [*published, *plan.restored],
                                               stored, zone)
            await self.store.save_names(clinic_id, parsed.providers, parsed.rooms, now=now,
                                        origin="csv" if fmt == "csv" else "fhir")
        finally:
            if not dry_run:
                await self.store.unlock_import(clinic_id)
        failed = len(plan.to_publish) - len(published)
        if failed:
            m.IMPORTS.labels(fmt, "failed").inc()
            log.warning("schedule import partly published", clinic=clinic_id, failed=failed,
                        published=len(published))
            raise Unavailable(f"{failed} of {len(plan.to_publish)} appointment changes could "
                              "not be published to Kafka; import the same file again to "
                              "finish (what was published is not repeated)", "unavailable")
        m.IMPORTS.labels(fmt, "imported").inc()
        for outcome, count in (("created", len(plan.created)), ("updated", len(plan.updated)),
                               ("unchanged", len(plan.unchanged)),
                               ("restored", len(plan.restored)),
                               ("skipped", len(parsed.skipped))):
            if count:
                m.SCHEDULE_ROWS.labels(fmt, outcome).inc(count)
        m.IMPORT_SECONDS.observe(time.perf_counter() - started)
        log.info("schedule imported", clinic=clinic_id, fmt=fmt, created=len(plan.created),
                 updated=len(plan.updated), unchanged=len(plan.unchanged))
        return result

    async def schedule(self, clinic_id: str, day: date) -> list[AppointmentState]:
        """The clinic's appointments of ``day`` (a day in its own zone), by time."""
        return await self.store.day_schedule(clinic_id, day)

    # ------------------------------------------------------------ directory

    async def names(self, clinic_id: str) -> ClinicNames:
        """The clinic's providers and rooms with their display names: configuration
        first, then what FHIR imports brought, then the bare ids of imported schedules."""
        clinic = self.config.clinics[clinic_id]
        imported_providers, imported_rooms = await self.store.names(clinic_id)
        scheduled = await self.store.scheduled_providers(clinic_id)

        def entries(configured: dict[str, str], imported: dict[str, str],
                    ids: set[str]) -> list[NamedEntry]:
            found: dict[str, NamedEntry] = {}
            for ident in sorted(ids):
                found[ident] = NamedEntry(ident, ident, "schedule")
            for ident, name in imported.items():
                found[ident] = NamedEntry(ident, name, "fhir")
            for ident, name in configured.items():
                found[ident] = NamedEntry(ident, name, "configuration")
            return sorted(found.values(), key=lambda e: e.id)

        return ClinicNames(clinic_id=clinic_id, name=clinic.display_name,
                           timezone=clinic.zone.key,
                           providers=entries(clinic.providers, imported_providers, scheduled),
                           rooms=entries(clinic.rooms, imported_rooms, set()))

    async def known_providers(self, clinic_id: str) -> set[str]:
        """The providers the clinic knows: configured, imported from FHIR, or on an
        imported schedule."""
        imported, _rooms = await self.store.names(clinic_id)
        return (set(self.config.clinics[clinic_id].providers) | set(imported)
                | await self.store.scheduled_providers(clinic_id))

    async def check_booking(self, clinic_id: str, scheduled_at: datetime | None,
                            provider_id: str | None, *, now: datetime,
                            also_known: Iterable[str] = ()) -> None:
        """Refuse a booking (an import row, an EHR's appointment) the clinic cannot have:
        a date implausibly far from the clinic's today (``Rejected``, ``implausible_date``)
        or, when the clinic's configuration lists its providers, a provider neither listed
        there nor among the names FHIR Practitioners brought (``also_known``: the
        import's own, an EHR feed's mapped ids) (``NotFound``, ``unknown_provider``). A
        clinic configured with no providers takes any id, as before."""
        if scheduled_at is not None:
            problem = implausible_day(scheduled_at, now, self.zone(clinic_id))
            if problem is not None:
                raise Rejected(problem, "implausible_date")
        configured = set(self.config.clinics[clinic_id].providers)
        if configured and provider_id is not None and provider_id not in configured:
            imported, _rooms = await self.store.names(clinic_id)
            check_provider(provider_id, configured | set(imported) | set(also_known),
                           clinic_id)

    async def _check_provider(self, clinic_id: str, provider_id: str | None,
                              channel: Channel, now: datetime) -> None:
        if provider_id is None:
            return
        read = self._providers_read.get(clinic_id)
        if (read is not None and provider_id in read[1]
                and timedelta(0) <= now - read[0] < PROVIDERS_KEPT):
            return  # known a moment ago: providers are added, never taken away so soon
        known = await self.known_providers(clinic_id)
        self._providers_read[clinic_id] = (now, frozenset(known))
        try:
            check_provider(provider_id, known, clinic_id)
        except Refusal as refused:
            m.ARRIVALS_REFUSED.labels(channel, refused.code).inc()
            raise

    # ------------------------------------------------------------- arrivals

    async def arrive_scheduled(self, clinic_id: str, appointment_id: str, *, channel: Channel,
                               now: datetime, overrides: ArrivalOverrides | None = None,
                               ids: tuple[str, str] | None = None,
                               state: AppointmentState | None = None) -> ArrivalResult:
        """Check in a scheduled patient: ``NotFound`` for an appointment not on this
        clinic's schedule (another clinic's looks exactly the same), ``Conflict`` for a
        second arrival. ``ids``: the visit and event ids to use (an EHR message's, the
        same at every try of it: a try that died after claiming the appointment is not a
        second arrival); ``state``: the appointment's state as the caller has just read
        it (the EHR feed), else it is read here (the arrival's claim decides either way)."""
        if state is None or state.appointment.appointment_id != appointment_id:
            state = (await self.store.appointment_states(clinic_id, [appointment_id])).get(
                appointment_id)
        if state is None:
            m.ARRIVALS_REFUSED.labels(channel, "not_found").inc()
            raise NotFound(f"no appointment {appointment_id!r} on clinic {clinic_id!r}'s "
                           "schedule", "not_found")
        overrides = overrides or ArrivalOverrides()
        await self._check_provider(clinic_id, overrides.provider_id, channel, now)
        return await self._arrive(clinic_id, state, channel=channel, now=now,
                                  overrides=overrides, ids=ids)

    async def _arrive(self, clinic_id: str, state: AppointmentState, *, channel: Channel,
                      now: datetime, overrides: ArrivalOverrides,
                      ids: tuple[str, str] | None = None) -> ArrivalResult:
        appointment = state.appointment
        zone = self.zone(clinic_id)
        visit_id, event_id = ids or (new_visit_id(), None)
        if state.arrived_visit == visit_id:  # this arrival's own claim, from a try that died
            state = replace(state, arrived_visit=None)
        try:
            check_scheduled_arrival(state, channel=channel, now=now, zone=zone)
        except Refusal as refused:
            m.ARRIVALS_REFUSED.labels(channel, refused.code).inc()
            raise
        try:
            return await self._publish_arrival(
                clinic_id, visit_id, now=now, channel=channel, appointment=appointment,
                provider_id=overrides.provider_id or appointment.provider_id,
                visit_type=(self.desk_visit_type(overrides.visit_type) if overrides.visit_type
                            else appointment.visit_type),
                priority=overrides.priority, patient_ref=appointment.patient_ref,
                event_id=event_id)
        except _Taken as taken:
            m.ARRIVALS_REFUSED.labels(channel, "already_arrived").inc()
            # raises the Conflict, worded for this channel
            check_scheduled_arrival(replace(state, arrived_visit=taken.holder),
                                    channel=channel, now=now, zone=zone)
            raise AssertionError("a second arrival is always refused") from None

    async def arrive_walk_in(self, clinic_id: str, walk_in: WalkIn, *, channel: Channel,
                             now: datetime, ids: tuple[str, str] | None = None,
                             ) -> ArrivalResult:
        """Check in a patient without an appointment (``provider_id`` None: first
        available; one the clinic does not know is ``NotFound``); ``ids`` as for
        ``arrive_scheduled``."""
        visit_type = self.desk_visit_type(walk_in.visit_type)
        await self._check_provider(clinic_id, walk_in.provider_id, channel, now)
        visit_id, event_id = ids or (new_visit_id(), None)
        return await self._publish_arrival(
            clinic_id, visit_id, now=now, channel=channel, appointment=None,
            provider_id=walk_in.provider_id, visit_type=visit_type,
            priority=walk_in.priority,
            patient_ref=self.walk_in_patient_ref(clinic_id, walk_in.patient_ref),
            event_id=event_id)

    async def _publish_arrival(self, clinic_id: str, visit_id: str, *, now: datetime,
                               channel: Channel, appointment: Appointment | None,
                               provider_id: str | None, visit_type: str, priority: str,
                               patient_ref: str | None,
                               event_id: str | None = None) -> ArrivalResult:
        """Publish the arrival of a new visit: its ticket taken, the visit stored and, for
        a scheduled one, its appointment claimed in one step (``_Taken`` when another
        visit holds the appointment); all undone when the event cannot be published."""
        day = self.today(clinic_id, now)
        scheduled_at = appointment.scheduled_at if appointment is not None else None
        late = is_late(now, scheduled_at, self.config.late_after)
        async def release() -> None:
            """The appointment's claim goes (only a claim this visit holds)."""
            if appointment is not None:
                await self.store.release_arrival(clinic_id, appointment.appointment_id,
                                                 visit_id)

        try:
            opened = await self.store.open_visit(
                VisitView(clinic_id=clinic_id, visit_id=visit_id, ticket_code="", day=day,
                          status="waiting", status_at=now,
                          appointment_id=appointment.appointment_id if appointment else None),
                claim=appointment)
        except BaseException:
            await release()  # a script that failed half-way keeps what it wrote
            raise
        if isinstance(opened, str):
            raise _Taken(opened)
        view = opened
        try:
            payload = ev.PatientArrived(
                visit_id=visit_id, ticket_code=view.ticket_code, patient_ref=patient_ref,
                appointment_id=view.appointment_id, provider_id=provider_id,
                visit_type=visit_type, scheduled_at=scheduled_at,
                priority=priority, late=late,  # type: ignore[arg-type]
            )
            event = ev.make_event(payload, clinic_id=clinic_id, source=SOURCE,
                                  occurred_at=now, correlation_id=visit_id, event_id=event_id)
            await self._publish_one(event)
        except BaseException:
            # nothing published: the visit, its ticket and the claim go, whatever fails
            try:
                await self.store.forget_visit(view)
            finally:
                await release()
            raise
        kind = "scheduled" if appointment is not None else "walk_in"
        m.ARRIVALS.labels(clinic_id, channel, kind, str(late).lower()).inc()
        log.info("patient checked in", clinic=clinic_id, visit_id=visit_id,
                 ticket=view.ticket_code, kind=kind, channel=channel, late=late)
        # the appointment leaves the no-show sweep's list when check-in's projection reads
        # this arrival back from the floor (and a sweep before that finds it arrived):
        # the arrival spends no round trip of its own on it
        return ArrivalResult(visit_id=visit_id, ticket_code=view.ticket_code,
                             event_id=event.envelope.event_id, late=late,
                             appointment_id=payload.appointment_id, provider_id=provider_id,
                             visit_type=visit_type, priority=priority,
                             wait=wait_status(view, now), patient_ref=patient_ref)

    # ---------------------------------------------------------------- kiosk

    async def kiosk_by_code(self, clinic_id: str, code: str, *, now: datetime) -> ArrivalResult:
        """Check in by the short kiosk code of an appointment the kiosk takes now (the
        clinic's today, or across midnight a nearby one). The appointment id itself is
        not a kiosk code."""
        typed = normalize_kiosk_code(code)
        state = None
        if typed is not None:
            days = kiosk_days(now, self.zone(clinic_id))
            appointment_id = await self.store.appointment_for_kiosk_code(clinic_id, days,
                                                                        typed)
            if appointment_id is not None:
                state = (await self.store.appointment_states(clinic_id, [appointment_id])
                         ).get(appointment_id)
        if state is None and typed is not None:
            await self._kiosk_code_of_another_day(clinic_id, typed, now)
        if state is None or state.appointment.kiosk_code != typed:
            m.ARRIVALS_REFUSED.labels("kiosk", "not_found").inc()
            raise NotFound("we could not find an appointment with that code; please check it "
                           "or see the front desk", "not_found")
        return await self._arrive(clinic_id, state, channel="kiosk", now=now,
                                  overrides=ArrivalOverrides())

    async def _kiosk_code_of_another_day(self, clinic_id: str, code: str,
                                         now: datetime) -> None:
        """A code that is an appointment's on another day than the kiosk takes now (from
        ``KIOSK_DAYS_BACK`` before the clinic's today to ``KIOSK_DAYS_AHEAD`` after) is a
        ``Conflict`` (``other_day``) saying which day, on the clinic's calendar, not "we
        could not find it"."""
        zone = self.zone(clinic_id)
        taken = set(kiosk_days(now, zone))
        today = self.today(clinic_id, now)
        days = [today + timedelta(days=n) for n in range(-KIOSK_DAYS_BACK, KIOSK_DAYS_AHEAD + 1)
                if today + timedelta(days=n) not in taken]
        found = await self.store.kiosk_code_elsewhere(clinic_id, days, code)
        if found is None:
            return
        day, appointment_id = found
        state = (await self.store.appointment_states(clinic_id, [appointment_id])
                 ).get(appointment_id)
        if state is None or state.appointment.kiosk_code != code \
                or state.appointment.status != "booked":
            return
        m.ARRIVALS_REFUSED.labels("kiosk", "other_day").inc()
        when = "tomorrow, " if day == today + timedelta(days=1) else \
            "yesterday, " if day == today - timedelta(days=1) else ""
        raise Conflict(f"this code is for an appointment on {when}{day:%A %B} {day.day}, "
                       f"{day.year}, not today ({today:%B} {today.day}); please come then "
                       "or see the front desk", "other_day")

    async def kiosk_by_identity(self, clinic_id: str, birth_date: date, initials: str, *,
                                now: datetime) -> ArrivalResult:
        """Match today's schedule on the digest of birth date + initials (never stored or
        compared in plain)."""
        letters = normalize_initials(initials)
        if letters is None:
            raise Rejected("initials must be 1 to 4 letters", "bad_initials")
        digest = self.identity_hasher(clinic_id)(birth_date, letters)
        zone = self.zone(clinic_id)
        ids = await self.store.identity_matches(clinic_id, kiosk_days(now, zone), digest)
        states = await self.store.appointment_states(clinic_id, ids)
        candidates = [s for s in states.values() if s.appointment.identity == digest]
        try:
            chosen = choose_kiosk_appointment(candidates, now=now, zone=zone)
        except Refusal as refused:
            m.ARRIVALS_REFUSED.labels("kiosk", refused.code).inc()
            raise
        return await self._arrive(clinic_id, chosen, channel="kiosk", now=now,
                                  overrides=ArrivalOverrides())

    # --------------------------------------------------------------- cancel

    async def cancel(self, clinic_id: str, visit_id: str, reason: str, *,
                     now: datetime) -> VisitView:
        """Cancel a waiting patient's arrival (left, rescheduled, entered in error).

        Decided once checkin holds the clinic's floor up to now (the barrier): a visit
        roomed, checked out or undone on the floor a moment ago is refused here, not
        dead-lettered by flow later."""
        before: list[VisitView] = []
        await self.barrier(clinic_id)

        def cancelled(current: VisitView | None) -> VisitView:
            if current is None:
                raise NotFound(f"no visit {visit_id!r} at clinic {clinic_id!r}", "not_found")
            if current.status == "undone":
                raise Conflict(f"visit {visit_id!r}'s arrival was undone on the floor: there "
                               "is nothing to cancel", "not_waiting")
            if current.status != "waiting":
                status = current.status.replace("_", " ")
                raise Conflict(f"visit {visit_id!r} is {status}, not waiting: it can no "
                               "longer be cancelled", "not_waiting")
            before.append(current)
            return replace(current, status="cancelled", status_at=now)

        changed = await self.store.change_visit(clinic_id, visit_id, cancelled)
        if self.visit_ends is not None:
            try:
                held = await self.visit_ends.claim(clinic_id, visit_id, "cancelled")
            except BaseException:
                await self.store.change_visit(clinic_id, visit_id,
                                              lambda _current: before[-1])
                raise
            if held is not None:  # a checkout ended it first (its event may be on its way)
                await self.store.change_visit(clinic_id, visit_id,
                                              lambda _current: before[-1])
                what = held.replace("_", " ")
                raise Conflict(f"visit {visit_id!r} is being {what} or already is: it can no "
                               "longer be cancelled", "not_waiting")
        event = ev.make_event(ev.ArrivalCancelled(visit_id=visit_id, reason=reason),  # type: ignore[arg-type]
                              clinic_id=clinic_id, source=SOURCE, occurred_at=now,
                              correlation_id=visit_id)
        try:
            await self._publish_one(event)
        except BaseException:
            await self.store.change_visit(clinic_id, visit_id, lambda _current: before[-1])
            if self.visit_ends is not None:
                await self.visit_ends.release(clinic_id, visit_id, "cancelled")
            raise
        if reason == "entered_in_error" and changed.appointment_id is not None:
            # the wrong patient was checked in on this appointment: free it for the right one
            await self.store.reopen_appointment(clinic_id, changed.appointment_id, visit_id)
        m.CANCELLATIONS.labels(clinic_id, reason).inc()
        log.info("arrival cancelled", clinic=clinic_id, visit_id=visit_id, reason=reason)
        return changed

    # ------------------------------------------------------------- no-shows

    async def sweep_no_shows(self, now: datetime) -> NoShowSweepResult:
        """Publish ``patient.no_show`` once for every booked appointment with no arrival
        ``no_show_after`` past its time. Safe to run from several instances at once."""
        result = NoShowSweepResult()
        after = self.config.no_show_after
        for clinic_id in await self.store.clinics():
            ids = await self.store.pending_until(clinic_id, now - after)
            if not ids:
                continue
            states = await self.store.appointment_states(clinic_id, ids)
            settled = []
            for appointment_id in ids:
                state = states.get(appointment_id)
                verdict = "settled" if state is None else no_show_verdict(
                    state, now, after, NO_SHOW_HORIZON)
                if verdict in ("settled", "too_old"):
                    settled.append(appointment_id)
                if verdict != "due" or state is None:
                    continue
                appointment = state.appointment
                if not await self.store.claim_no_show(clinic_id, appointment):
                    settled.append(appointment_id)
                    continue
                # an arrival may have been taken between the read and the claim
                fresh = await self.store.appointment_states(clinic_id, [appointment_id])
                if appointment_id in fresh and fresh[appointment_id].arrived_visit is not None:
                    await self.store.release_no_show(clinic_id, appointment_id)
                    settled.append(appointment_id)
                    continue
                event, outcome = await self._publish_no_show(clinic_id, appointment, now)
                if outcome is not None:
                    result.failed += 1
                    log.warning("no-show not published; next sweep retries", clinic=clinic_id,
                                error=repr(outcome))
                    continue
                result.published.append(event)
            await self.store.drop_pending(clinic_id, settled)
        if result.published:
            log.info("no-shows published", count=len(result.published))
        return result

    async def _publish_no_show(self, clinic_id: str, appointment: Appointment,
                               now: datetime) -> tuple[ev.Event, BaseException | None]:
        """Publish a claimed no-show and put it on the follow-up list; a failed publish
        releases the claim (the outcome says why)."""
        appointment_id = appointment.appointment_id
        event = ev.make_event(
            ev.PatientNoShow(appointment_id=appointment_id,
                             provider_id=appointment.provider_id,
                             scheduled_at=appointment.scheduled_at),
            clinic_id=clinic_id, source=SOURCE, occurred_at=now,
            correlation_id=appointment_id)
        outcome = (await self.publish([event]))[0]
        if outcome is not None:
            await self.store.release_no_show(clinic_id, appointment_id)
            return event, outcome
        await self.store.record_no_show(
            clinic_id, appointment_id, appointment.scheduled_at,
            clinic_day(appointment.scheduled_at, self.zone(clinic_id)))
        m.NO_SHOWS.labels(clinic_id).inc()
        return event, None

    async def mark_no_show(self, clinic_id: str, appointment_id: str, *,
                           now: datetime) -> ev.Event | None:
        """Mark one appointment a no-show now, as the EHR says (HL7 ``SIU^S26``), before
        the sweep would: ``patient.no_show`` once (None: it already is one).
        ``NotFound`` for an appointment not on the clinic's schedule, ``Conflict`` for one
        cancelled or checked in, ``Unavailable`` when Kafka cannot take it."""
        state = (await self.store.appointment_states(clinic_id, [appointment_id])).get(
            appointment_id)
        if state is None:
            raise NotFound(f"no appointment {appointment_id!r} on clinic {clinic_id!r}'s "
                           "schedule", "not_found")
        if state.appointment.status == "cancelled":
            raise Conflict(f"appointment {appointment_id!r} was cancelled", "cancelled")
        if state.arrived_visit is not None:
            raise Conflict(f"appointment {appointment_id!r} is checked in (visit "
                           f"{state.arrived_visit}): it is no no-show", "already_arrived")
        if state.no_show or not await self.store.claim_no_show(clinic_id, state.appointment):
            return None
        fresh = await self.store.appointment_states(clinic_id, [appointment_id])
        if appointment_id in fresh and fresh[appointment_id].arrived_visit is not None:
            await self.store.release_no_show(clinic_id, appointment_id)
            raise Conflict(f"appointment {appointment_id!r} was just checked in: it is no "
                           "no-show", "already_arrived")
        event, outcome = await self._publish_no_show(clinic_id, state.appointment, now)
        if outcome is not None:
            log.warning("publish failed", event_type=event.event_type, error=repr(outcome))
            raise Unavailable("could not publish to Kafka; nothing was recorded, try again",
                              "unavailable")
        return event

    async def follow_up_list(self, clinic_id: str, day: date) -> list[FollowUp]:
        """The no-shows of the clinic's ``day`` (its own zone) to call and reschedule, in
        appointment order."""
        entries = await self.store.no_shows(clinic_id, day)
        states = await self.store.appointment_states(clinic_id, [i for i, _ in entries])
        listed = []
        for appointment_id, scheduled_at in entries:
            state = states.get(appointment_id)
            appointment = state.appointment if state else None
            listed.append(FollowUp(
                appointment_id=appointment_id,
                provider_id=appointment.provider_id if appointment else None,
                visit_type=appointment.visit_type if appointment else None,
                scheduled_at=appointment.scheduled_at if appointment else scheduled_at,
                patient_ref=appointment.patient_ref if appointment else None,
                arrived_later=bool(state and state.arrived_visit),
            ))
        return listed

    # -------------------------------------------------------------- lookups

    async def wait_for_ticket(self, clinic_id: str, text: str,
                              now: datetime) -> WaitStatus | None:
        """Place in line and range for a ticket code of the clinic's today (or yesterday,
        just after midnight); None for a code that is unknown or not a code at all."""
        code = normalize_ticket_code(text)
        if code is None:
            return None
        today = self.today(clinic_id, now)
        view = await self.store.visit_for_ticket(clinic_id, [today, today - timedelta(days=1)],
                                                 code)
        return wait_status(await self._in_provider_queue(view), now) \
            if view is not None else None

    async def wait_for_visit(self, clinic_id: str, visit_id: str,
                             now: datetime) -> WaitStatus | None:
        view = await self.store.visit(clinic_id, visit_id)
        return wait_status(await self._in_provider_queue(view), now) \
            if view is not None else None

    async def _in_provider_queue(self, view: VisitView) -> VisitView:
        """The visit with its place in its provider's queue (``provider_queue_place``)
        instead of its place in the clinic's: the line the patient is in."""
        if view.status != "waiting" or view.position is None:
            return view
        others = await self.store.day_visits(view.clinic_id, view.day)
        return replace(view, position=provider_queue_place(view, others))


class _Taken(Exception):
    """The appointment's arrival is held by another visit (``holder``)."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


def new_visit_id() -> str:
    """A visit id: unguessable (the kiosk polls its own visit's wait by it)."""
    return f"v-{uuid.uuid4().hex[:16]}"
