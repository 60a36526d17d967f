"""Check-in's rules, without Kafka or Redis: tickets, lateness, the kiosk's identity check,
re-imports, no-shows and what a waiting patient is told."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from services.checkin.domain import (
    KIOSK_CODE_ALPHABET,
    Appointment,
    AppointmentState,
    VisitView,
    assign_kiosk_codes,
    check_provider,
    check_scheduled_arrival,
    choose_kiosk_appointment,
    clinic_day,
    evolve_visit,
    identity_digest,
    is_late,
    kiosk_code,
    kiosk_days,
    kiosk_takes,
    map_visit_type,
    no_show_verdict,
    normalize_initials,
    normalize_kiosk_code,
    normalize_ticket_code,
    patient_pseudonym,
    plan_import,
    printed_kiosk_code,
    ticket_code,
    ticket_number,
    undo_arrival,
    visit_type_table,
    wait_status,
)
from shared import events as ev
from shared.errors import Conflict, NotFound, Refusal, status_of
from shared.settings import CheckinSettings, InsecureConfiguration

NEW_YORK = ZoneInfo("America/New_York")
HONOLULU = ZoneInfo("Pacific/Honolulu")  # UTC-10 all year
AUCKLAND = ZoneInfo("Pacific/Auckland")  # UTC+13 in December (daylight saving)
NINE = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)  # 09:00 in New York
TODAY = date(2026, 3, 2)
SECRET = b"test-secret-0123456789"


def appointment(appointment_id: str = "apt-1", *, at: datetime = NINE, patient: str = "p-1",
                status: str = "booked", identity: str | None = None,
                provider: str = "dr-lee") -> Appointment:
    return Appointment(appointment_id=appointment_id, patient_ref=patient, provider_id=provider,
                       visit_type="follow_up", scheduled_at=at, duration_minutes=15,
                       status=status, identity=identity)  # type: ignore[arg-type]


# ------------------------------------------------------------------ tickets


def test_ticket_codes_count_up_per_day_and_roll_to_the_next_letter() -> None:
    assert [ticket_code(n) for n in (1, 2, 17)] == ["A-1", "A-2", "A-17"]
    assert ticket_code(9999) == "A-9999"
    assert ticket_code(10000) == "B-1"
    with pytest.raises(ValueError):
        ticket_code(0)


def test_a_printed_ticket_code_gives_back_its_number() -> None:
    for number in (1, 2, 17, 9999, 10000, 10017, 3 * 9999 + 5):
        assert ticket_number(ticket_code(number)) == number
    for nonsense in ("", "A", "A-", "A-0", "A-10000", "I-1", "a-1", "AA-1", "A-x"):
        assert ticket_number(nonsense) is None, nonsense


def test_a_ticket_code_is_read_however_the_patient_types_it() -> None:
    for typed in ("A-17", "a17", " a 17 ", "A-017", "A–17"):
        assert normalize_ticket_code(typed) == "A-17", typed
    for nonsense in ("", "17", "AA-1", "A-", "I-1", "A-0", "A-12345", "../etc"):
        assert normalize_ticket_code(nonsense) is None, nonsense


def test_the_clinics_day_is_its_own_calendar_day_not_utcs() -> None:
    late_evening = datetime(2026, 3, 3, 2, 0, tzinfo=UTC)  # 21:00 on the 2nd in New York
    assert clinic_day(late_evening, NEW_YORK) == TODAY
    assert clinic_day(late_evening, ZoneInfo("UTC")) == date(2026, 3, 3)


def test_one_instant_is_three_different_days_in_honolulu_utc_and_auckland_in_december(
) -> None:
    # 10:30 UTC on 10 December: 00:30 on the 10th in Honolulu, 23:30 on the 10th in
    # Auckland (UTC+13); an hour earlier it is still the 9th in Honolulu
    at = datetime(2026, 12, 10, 10, 30, tzinfo=UTC)
    assert clinic_day(at, HONOLULU) == date(2026, 12, 10)
    assert clinic_day(at - timedelta(hours=1), HONOLULU) == date(2026, 12, 9)
    assert clinic_day(at, AUCKLAND) == date(2026, 12, 10)
    assert clinic_day(at + timedelta(hours=1), AUCKLAND) == date(2026, 12, 11)
    assert clinic_day(at + timedelta(hours=1), ZoneInfo("UTC")) == date(2026, 12, 10)


def test_a_patient_is_late_only_past_the_grace_period_and_a_walk_in_never() -> None:
    grace = timedelta(minutes=10)
    assert not is_late(NINE + timedelta(minutes=10), NINE, grace)
    assert is_late(NINE + timedelta(minutes=11), NINE, grace)
    assert not is_late(NINE - timedelta(minutes=30), NINE, grace)
    assert not is_late(NINE + timedelta(hours=3), None, grace)


# ------------------------------------------------------- kiosk at midnight

# 23:55 on 9 December in Honolulu is 09:55 UTC on the 10th
HONOLULU_BEFORE_MIDNIGHT = datetime(2026, 12, 9, 23, 55, tzinfo=HONOLULU)
# 23:55 on 10 December in Auckland (UTC+13) is 10:55 UTC on the 10th
AUCKLAND_BEFORE_MIDNIGHT = datetime(2026, 12, 10, 23, 55, tzinfo=AUCKLAND)


@pytest.mark.parametrize(("zone", "now"), [(HONOLULU, HONOLULU_BEFORE_MIDNIGHT),
                                           (AUCKLAND, AUCKLAND_BEFORE_MIDNIGHT)])
def test_a_patient_checking_in_just_before_midnight_for_just_after_it_is_found(
        zone: ZoneInfo, now: datetime) -> None:
    just_after = AppointmentState(appointment(at=now + timedelta(minutes=10)))
    check_scheduled_arrival(just_after, channel="kiosk", now=now, zone=zone)
    identity_match = choose_kiosk_appointment([just_after], now=now, zone=zone)
    assert identity_match is just_after
    # the kiosk looks the code and the identity up on today's and tomorrow's schedule
    assert kiosk_days(now, zone) == [clinic_day(now, zone),
                                     clinic_day(now, zone) + timedelta(days=1)]


@pytest.mark.parametrize(("zone", "now"), [(HONOLULU, HONOLULU_BEFORE_MIDNIGHT),
                                           (AUCKLAND, AUCKLAND_BEFORE_MIDNIGHT)])
def test_tomorrows_morning_appointment_still_goes_to_the_front_desk_at_midnight(
        zone: ZoneInfo, now: datetime) -> None:
    tomorrow_morning = AppointmentState(appointment(at=now + timedelta(hours=9)))
    with pytest.raises(Conflict, match="not today") as refused:
        check_scheduled_arrival(tomorrow_morning, channel="kiosk", now=now, zone=zone)
    assert refused.value.code == "other_day"
    with pytest.raises(NotFound):
        choose_kiosk_appointment([tomorrow_morning], now=now, zone=zone)


def test_just_after_midnight_a_late_patient_for_last_nights_appointment_is_found() -> None:
    just_after = HONOLULU_BEFORE_MIDNIGHT + timedelta(minutes=15)  # 00:10 on the 10th
    last_night = AppointmentState(appointment(at=HONOLULU_BEFORE_MIDNIGHT - timedelta(minutes=5)))
    check_scheduled_arrival(last_night, channel="kiosk", now=just_after, zone=HONOLULU)
    assert kiosk_days(just_after, HONOLULU) == [date(2026, 12, 10), date(2026, 12, 9)]
    # at noon the kiosk takes the whole day, early or late, and nothing of the next one
    noon = datetime(2026, 12, 10, 12, 0, tzinfo=HONOLULU)
    assert kiosk_days(noon, HONOLULU) == [date(2026, 12, 10)]
    assert kiosk_takes(datetime(2026, 12, 10, 23, 30, tzinfo=HONOLULU), noon, HONOLULU)
    assert not kiosk_takes(datetime(2026, 12, 11, 0, 30, tzinfo=HONOLULU), noon, HONOLULU)


# ----------------------------------------------------------------- identity


def test_initials_are_letters_only_in_capitals() -> None:
    assert normalize_initials("j.s.") == "JS"
    assert normalize_initials(" m a k ") == "MAK"
    assert normalize_initials("12") is None
    assert normalize_initials("ABCDE") is None


def test_the_identity_digest_depends_on_secret_clinic_birth_date_and_initials() -> None:
    born = date(1980, 4, 2)
    digest = identity_digest(SECRET, "north", born, "JS")
    assert len(digest) == 64 and "1980" not in digest
    assert digest == identity_digest(SECRET, "north", born, "JS")
    assert digest != identity_digest(b"another-secret-000000", "north", born, "JS")
    assert digest != identity_digest(SECRET, "south", born, "JS")
    assert digest != identity_digest(SECRET, "north", date(1980, 4, 3), "JS")
    assert digest != identity_digest(SECRET, "north", born, "JT")


def test_an_ehr_patient_id_becomes_a_keyed_pseudonym_per_clinic() -> None:
    ref = patient_pseudonym(SECRET, "north", "448120")
    assert ref.startswith("pt-") and "448120" not in ref and len(ref) == 27
    assert ref == patient_pseudonym(SECRET, "north", "448120")  # the same at every import
    assert ref != patient_pseudonym(SECRET, "south", "448120")
    assert ref != patient_pseudonym(b"another-secret-000000", "north", "448120")
    assert ev.AppointmentScheduled(appointment_id="a", patient_ref=ref, provider_id="p",
                                   visit_type="t", scheduled_at=NINE).patient_ref == ref


def test_kiosk_codes_are_short_typeable_keyed_and_read_however_they_are_typed() -> None:
    code = kiosk_code(SECRET, "north", "apt-1", TODAY)
    assert len(code) == 6 and set(code) <= set(KIOSK_CODE_ALPHABET)
    assert not set(code) & set("01OIL")
    assert code == kiosk_code(SECRET, "north", "apt-1", TODAY)
    assert code != kiosk_code(SECRET, "north", "apt-1", TODAY + timedelta(days=1))
    assert code != kiosk_code(SECRET, "north", "apt-1", TODAY, attempt=1)
    printed = printed_kiosk_code(code)
    assert printed == f"{code[:3]}-{code[3:]}"
    for typed in (printed, printed.lower(), f" {code[:3]} {code[3:]} ", code):
        assert normalize_kiosk_code(typed) == code, typed
    for nonsense in ("", "apt-1", code[:5], code + "A", "ABC-10O"):
        assert normalize_kiosk_code(nonsense) is None, nonsense


def test_kiosk_codes_stay_with_their_appointment_and_never_repeat_in_a_clinic_day() -> None:
    first = assign_kiosk_codes([appointment("apt-1"), appointment("apt-2")], {}, {},
                               secret=SECRET, clinic_id="north", zone=NEW_YORK)
    codes = [a.kiosk_code or "" for a in first]
    assert "" not in codes and len(set(codes)) == 2
    stored = {a.appointment_id: a for a in first}
    again = assign_kiosk_codes([appointment("apt-1")], stored, {TODAY: {codes[0]: "apt-1"}},
                               secret=SECRET, clinic_id="north", zone=NEW_YORK)
    assert again[0].kiosk_code == codes[0]  # a re-import keeps the code the patient has
    # another appointment of the day already holds apt-3's first code: it gets another
    wanted = kiosk_code(SECRET, "north", "apt-3", TODAY)
    taken = assign_kiosk_codes([appointment("apt-3")], {}, {TODAY: {wanted: "apt-9"}},
                               secret=SECRET, clinic_id="north", zone=NEW_YORK)
    assert taken[0].kiosk_code == kiosk_code(SECRET, "north", "apt-3", TODAY, attempt=1)
    # moved to another day: a code of that day
    moved = assign_kiosk_codes([appointment("apt-1", at=NINE + timedelta(days=1))], stored,
                               {}, secret=SECRET, clinic_id="north", zone=NEW_YORK)
    assert moved[0].kiosk_code == kiosk_code(SECRET, "north", "apt-1",
                                             TODAY + timedelta(days=1))
    # the code is never published
    assert codes[0] not in first[0].payload().model_dump_json()


@pytest.mark.parametrize(("code", "visit_type"), [
    ("FOLLOWUP", "follow_up"), ("ROUTINE", "follow_up"), ("WALKIN", "walk_in"),
    ("CHECKUP", "physical"), ("EMERGENCY", "urgent"), ("Follow-up", "follow_up"),
    ("follow_up", "follow_up"), ("New Patient", "new_patient"), ("Consult", "consultation"),
    ("Annual physical", "physical"), ("minor procedure", "minor_procedure"),
    ("Sports Clearance", "sports_clearance"),
])
def test_appointment_type_codes_become_the_visit_types_the_estimator_knows(
        code: str, visit_type: str) -> None:
    assert map_visit_type(code, visit_type_table({})) == visit_type


def test_a_deployment_maps_its_own_codes_over_the_default_map() -> None:
    table = visit_type_table({"SPORTS": "physical", "routine": "consultation"})
    assert map_visit_type("sports", table) == "physical"
    assert map_visit_type("ROUTINE", table) == "consultation"
    assert map_visit_type("FOLLOWUP", table) == "follow_up"
    with pytest.raises(ValueError, match="VISIT_TYPES"):
        CheckinSettings(checkin_visit_types='{"SPORTS": ""}')
    settings = CheckinSettings(checkin_visit_types='{"SPORTS": "physical"}')
    assert settings.checkin_visit_type_map() == {"SPORTS": "physical"}


def test_the_default_zone_is_checkins_own_when_set_else_the_common_one() -> None:
    clinics = '{"surf": {"timezone": "Pacific/Honolulu"}}'
    own = CheckinSettings(clinics=clinics, checkin_timezone="Pacific/Tongatapu",
                          default_timezone="Europe/Paris").clinic_directory()
    assert own.zone("surf") == HONOLULU
    assert own.zone("elsewhere") == ZoneInfo("Pacific/Tongatapu")
    common = CheckinSettings(clinics=clinics, default_timezone="Europe/Paris").clinic_directory()
    assert common.zone("elsewhere") == ZoneInfo("Europe/Paris")
    assert CheckinSettings().clinic_directory().zone("north") == ZoneInfo("UTC")


def test_checkins_own_zone_other_than_the_common_one_is_warned_of_where_it_applies() -> None:
    # only check-in reads CLINICFLOW_CHECKIN_TIMEZONE: flow, notifications and billing
    # put the same clinic in CLINICFLOW_DEFAULT_TIMEZONE (UTC unless set)
    alone = CheckinSettings(checkin_timezone="America/Chicago").zone_warning()
    assert alone is not None and "every clinic in America/Chicago" in alone \
        and "the other services in UTC" in alone
    some = CheckinSettings(clinics='{"surf": {"timezone": "Pacific/Honolulu"}, "west": {}}',
                           checkin_timezone="America/Chicago").zone_warning()
    assert some is not None and "clinics west in America/Chicago" in some
    # nothing to warn of: the same zone, or every clinic served has its own
    assert CheckinSettings(checkin_timezone="America/Chicago",
                           default_timezone="America/Chicago").zone_warning() is None
    assert CheckinSettings(clinics='{"surf": {"timezone": "Pacific/Honolulu"}}',
                           checkin_timezone="America/Chicago").zone_warning() is None
    assert CheckinSettings().zone_warning() is None


def test_production_refuses_the_development_identity_secret() -> None:
    production = {"env": "production", "redis_url": "redis://:s@r:6379/0",
                  "kafka_security_protocol": "SASL_SSL", "kafka_sasl_username": "checkin",
                  "kafka_sasl_password": "a-kafka-secret",
                  "credentials": '[{"name": "desk", "role": "front_desk", '
                                 '"token": "a-long-enough-token-1234"}]'}
    with pytest.raises(InsecureConfiguration, match="CHECKIN_IDENTITY_SECRET"):
        CheckinSettings(**production)  # type: ignore[arg-type]
    with pytest.raises(InsecureConfiguration, match="shorter than 16"):
        CheckinSettings(**production, checkin_identity_secret="short")  # type: ignore[arg-type]
    settings = CheckinSettings(**production,  # type: ignore[arg-type]
                               checkin_identity_secret="a-real-secret-from-the-vault")
    assert settings.env == "production"
    with pytest.raises(ValueError, match="IANA"):
        CheckinSettings(checkin_timezone="Mars/Olympus")


# ------------------------------------------------------------------ imports


def test_reimporting_the_same_schedule_changes_nothing() -> None:
    stored = {"apt-1": appointment("apt-1"), "apt-2": appointment("apt-2")}
    plan = plan_import([appointment("apt-1"), appointment("apt-2")], stored)
    assert plan.to_publish == () and plan.to_store == ()
    assert len(plan.unchanged) == 2


def test_a_moved_or_cancelled_appointment_is_an_update_and_a_new_one_is_created() -> None:
    stored = {"apt-1": appointment("apt-1"), "apt-2": appointment("apt-2")}
    moved = appointment("apt-1", at=NINE + timedelta(minutes=30))
    cancelled = appointment("apt-2", status="cancelled")
    plan = plan_import([moved, cancelled, appointment("apt-3")], stored)
    assert [a.appointment_id for a in plan.updated] == ["apt-1", "apt-2"]
    assert [a.appointment_id for a in plan.created] == ["apt-3"]


def test_new_kiosk_check_data_alone_is_stored_but_not_published() -> None:
    plan = plan_import([appointment("apt-1", identity="d1")], {"apt-1": appointment("apt-1")})
    assert plan.to_publish == ()
    assert [a.identity for a in plan.restored] == ["d1"]
    # an import without the check data does not wipe what is stored
    again = plan_import([appointment("apt-1")], {"apt-1": appointment("apt-1", identity="d1")})
    assert again.to_store == ()


def test_the_published_appointment_never_carries_the_identity_digest() -> None:
    payload = appointment(identity="secret-digest").payload()
    assert "secret-digest" not in payload.model_dump_json()


# ----------------------------------------------------------------- arrivals


def test_the_front_desk_may_check_in_a_no_show_who_came_after_all() -> None:
    state = AppointmentState(appointment(), no_show=True)
    check_scheduled_arrival(state, channel="front_desk", now=NINE, zone=NEW_YORK)
    with pytest.raises(Conflict) as refused:
        check_scheduled_arrival(state, channel="kiosk", now=NINE, zone=NEW_YORK)
    assert refused.value.code == "no_show" and "front desk" in refused.value.detail


def test_a_second_arrival_is_refused_and_the_kiosk_does_not_say_whose_visit_it_is() -> None:
    state = AppointmentState(appointment(), arrived_visit="v-123")
    with pytest.raises(Conflict) as desk:
        check_scheduled_arrival(state, channel="front_desk", now=NINE, zone=NEW_YORK)
    assert desk.value.code == "already_arrived" and "v-123" in desk.value.detail
    with pytest.raises(Conflict) as kiosk:
        check_scheduled_arrival(state, channel="kiosk", now=NINE, zone=NEW_YORK)
    assert kiosk.value.code == "already_arrived" and "v-123" not in kiosk.value.detail


def test_a_cancelled_appointment_cannot_be_checked_in() -> None:
    state = AppointmentState(appointment(status="cancelled"))
    with pytest.raises(Conflict, match="cancelled"):
        check_scheduled_arrival(state, channel="front_desk", now=NINE, zone=NEW_YORK)


def test_the_kiosk_only_takes_todays_appointments() -> None:
    tomorrow = AppointmentState(appointment(at=NINE + timedelta(days=1)))
    with pytest.raises(Conflict, match="not today"):
        check_scheduled_arrival(tomorrow, channel="kiosk", now=NINE, zone=NEW_YORK)
    check_scheduled_arrival(tomorrow, channel="front_desk", now=NINE, zone=NEW_YORK)


def test_a_provider_the_clinic_does_not_know_is_refused_naming_it() -> None:
    check_provider("dr-lee", {"dr-lee", "dr-kim"}, "north")
    check_provider(None, {"dr-lee"}, "north")  # the first available provider
    check_provider("dr-any", set(), "north")  # a clinic that told checkin of none yet
    with pytest.raises(NotFound) as refused:
        check_provider("dr-nobody", {"dr-lee", "dr-kim"}, "north")
    assert "dr-nobody" in refused.value.detail and "dr-kim, dr-lee" in refused.value.detail
    assert refused.value.code == "unknown_provider"


def test_a_patient_with_two_appointments_today_checks_in_the_earliest_open_one() -> None:
    first = AppointmentState(appointment("apt-1", at=NINE), arrived_visit="v-1")
    second = AppointmentState(appointment("apt-2", at=NINE + timedelta(hours=2)))
    third = AppointmentState(appointment("apt-3", at=NINE + timedelta(hours=4)))
    chosen = choose_kiosk_appointment([third, first, second], now=NINE, zone=NEW_YORK)
    assert chosen.appointment.appointment_id == "apt-2"


def test_two_patients_sharing_birth_date_and_initials_go_to_the_front_desk() -> None:
    one = AppointmentState(appointment("apt-1", patient="p-1"))
    other = AppointmentState(appointment("apt-2", patient="p-2"))
    with pytest.raises(Conflict) as refused:
        choose_kiosk_appointment([one, other], now=NINE, zone=NEW_YORK)
    assert refused.value.code == "ambiguous" and "p-" not in refused.value.detail


def test_no_match_today_is_not_found_and_names_nobody() -> None:
    yesterday = AppointmentState(appointment(at=NINE - timedelta(days=1)))
    cancelled = AppointmentState(appointment("apt-2", status="cancelled"))
    with pytest.raises(NotFound) as refused:
        choose_kiosk_appointment([yesterday, cancelled], now=NINE, zone=NEW_YORK)
    assert "p-" not in refused.value.detail and "apt-" not in refused.value.detail


def test_the_kiosks_refusals_keep_their_http_answers() -> None:
    """The statuses the kiosk and the desk answered before the refusal kinds: 409 for an
    appointment that cannot be checked in, 404 for no match."""
    refusals: list[Refusal] = []
    for state, channel in ((AppointmentState(appointment(), no_show=True), "kiosk"),
                           (AppointmentState(appointment(status="cancelled")), "front_desk")):
        with pytest.raises(Refusal) as refused:
            check_scheduled_arrival(state, channel=channel,  # type: ignore[arg-type]
                                    now=NINE, zone=NEW_YORK)
        refusals.append(refused.value)
    with pytest.raises(Refusal) as none_today:
        choose_kiosk_appointment([], now=NINE, zone=NEW_YORK)
    refusals.append(none_today.value)
    assert [(status_of(r), r.code) for r in refusals] == [
        (409, "no_show"), (409, "cancelled"), (404, "not_found")]


# ----------------------------------------------------------------- no-shows


def test_no_show_only_after_the_configured_time_once_and_not_for_ancient_appointments() -> None:
    after, horizon = timedelta(minutes=30), timedelta(hours=24)
    booked = AppointmentState(appointment())
    assert no_show_verdict(booked, NINE + timedelta(minutes=29), after, horizon) == "not_yet"
    assert no_show_verdict(booked, NINE + timedelta(minutes=30), after, horizon) == "due"
    assert no_show_verdict(booked, NINE + timedelta(days=2), after, horizon) == "too_old"
    for settled in (AppointmentState(appointment(), arrived_visit="v-1"),
                    AppointmentState(appointment(), no_show=True),
                    AppointmentState(appointment(status="cancelled"))):
        assert no_show_verdict(settled, NINE + timedelta(hours=1), after, horizon) == "settled"


# --------------------------------------------------------- waiting patients


def event(payload: ev.Payload, at: datetime) -> ev.Event:
    return ev.make_event(payload, clinic_id="north", source="test", occurred_at=at)


def arrived(at: datetime = NINE) -> ev.Event:
    return event(ev.PatientArrived(visit_id="v-1", ticket_code="A-17", visit_type="follow_up"),
                 at)


def estimate(at: datetime, position: int = 3, low: float = 10, high: float = 25) -> ev.Event:
    return event(ev.WaitEstimated(visit_id="v-1", ticket_code="A-17", position=position,
                                  wait_minutes=(low + high) / 2, low=low, high=high), at)


def test_a_waiting_patient_sees_place_in_line_and_a_range_that_shrinks_with_time() -> None:
    view = evolve_visit(None, arrived(), NEW_YORK)
    assert view is not None
    status = wait_status(view, NINE)
    assert (status.waiting, status.low_minutes, status.high_minutes) == (True, None, None)
    view = evolve_visit(view, estimate(NINE + timedelta(minutes=1)), NEW_YORK)
    assert view is not None
    status = wait_status(view, NINE + timedelta(minutes=1))
    assert (status.position, status.low_minutes, status.high_minutes) == (3, 10, 25)
    later = wait_status(view, NINE + timedelta(minutes=6))
    assert (later.low_minutes, later.high_minutes) == (5, 20)
    much_later = wait_status(view, NINE + timedelta(minutes=60))
    assert (much_later.low_minutes, much_later.high_minutes) == (0, 0)


def test_a_roomed_patient_no_longer_waits_and_an_older_estimate_read_late_changes_nothing(
) -> None:
    view = evolve_visit(None, arrived(), NEW_YORK)
    roomed = event(ev.PatientRoomed(visit_id="v-1", room_id="r1"), NINE + timedelta(minutes=5))
    view = evolve_visit(view, roomed, NEW_YORK)
    assert view is not None and view.status == "roomed"
    stale = evolve_visit(view, estimate(NINE + timedelta(minutes=4)), NEW_YORK)
    assert stale == view
    status = wait_status(view, NINE + timedelta(minutes=6))
    assert (status.waiting, status.position, status.low_minutes) == (False, None, None)


def test_an_estimate_made_after_the_rooming_means_the_rooming_was_undone() -> None:
    view = evolve_visit(None, arrived(), NEW_YORK)
    view = evolve_visit(view, event(ev.PatientRoomed(visit_id="v-1", room_id="r1"),
                                    NINE + timedelta(minutes=5)), NEW_YORK)
    view = evolve_visit(view, estimate(NINE + timedelta(minutes=7), position=1), NEW_YORK)
    assert view is not None and view.status == "waiting" and view.position == 1


def test_an_estimate_read_before_the_arrival_starts_the_visit() -> None:
    view = evolve_visit(None, estimate(NINE), NEW_YORK)
    assert isinstance(view, VisitView) and view.ticket_code == "A-17"
    assert evolve_visit(view, arrived(NINE - timedelta(seconds=1)), NEW_YORK) == view


def test_an_arrival_undone_on_the_floor_no_longer_waits_and_later_estimates_do_not_revive_it(
) -> None:
    view = evolve_visit(None, arrived(), NEW_YORK)
    assert view is not None
    undone = undo_arrival(view, NINE + timedelta(minutes=2))
    assert (undone.status, wait_status(undone, NINE).waiting) == ("undone", False)
    assert evolve_visit(undone, estimate(NINE + timedelta(minutes=1)), NEW_YORK) == undone
    roomed = evolve_visit(view, event(ev.PatientRoomed(visit_id="v-1", room_id="r1"),
                                      NINE + timedelta(minutes=1)), NEW_YORK)
    assert roomed is not None and undo_arrival(roomed, NINE + timedelta(minutes=2)) == roomed


def test_an_arrival_read_after_an_estimate_still_tells_which_appointment_it_was() -> None:
    view = evolve_visit(None, estimate(NINE), NEW_YORK)
    scheduled = event(ev.PatientArrived(visit_id="v-1", ticket_code="A-17",
                                        visit_type="follow_up", appointment_id="apt-1"),
                      NINE - timedelta(seconds=1))
    after = evolve_visit(view, scheduled, NEW_YORK)
    assert after is not None and after.appointment_id == "apt-1"
    assert after.position == 3  # the estimate is kept
