"""`make up`: a fresh demo day each run, on each clinic's own calendar and clock, busy from
the first minute; the banner names every page the services really serve. Pure: the
clock is an argument, processes are stand-ins, no Kafka, no Redis."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.flow.pages import make_pages_router
from shared import events as ev
from shared.clinics import ClinicDirectory
from shared.floor.clinic_flow import ClinicFlow
from shared.floor.model import LATE_GRACE
from shared.settings import FlowSettings
from tools.devup import (
    DEFAULT_PORTS,
    MARKER,
    _banner,
    add_cli,
    check_playable,
    fresh_demo_dir,
    instance_ports,
    is_demo_state,
    service_env,
    service_ports,
    single_run,
    stop_leftovers,
)
from tools.live_demo import (
    DEMO_CLINICS,
    MID_MORNING,
    DemoEvent,
    clinic_day,
    clinics_setting,
    clock_shift,
    demo_day,
    played,
    time_of_day,
)
from tools.simulate import get_scenario
from tools.stack import (
    LocalStack,
    Managed,
    StackError,
    is_our_process,
    process_start_time,
    write_state,
)

DIRECTORY = ClinicDirectory.parse(clinics_setting())
# a Sunday afternoon in December, and the edges of the clinics' days
AFTERNOON_IN_NEW_YORK = datetime(2026, 12, 6, 20, 20, tzinfo=UTC)  # 15:20 EST, 14:20 CST
LATE_EVENING_IN_NEW_YORK = datetime(2026, 12, 7, 4, 50, tzinfo=UTC)  # 23:50 EST, Dec 6
JUST_AFTER_MIDNIGHT_IN_NEW_YORK = datetime(2026, 12, 7, 5, 10, tzinfo=UTC)  # 00:10 EST
SUMMER_MORNING = datetime(2026, 7, 1, 13, 0, tzinfo=UTC)  # 09:00 EDT
MOMENTS = (AFTERNOON_IN_NEW_YORK, LATE_EVENING_IN_NEW_YORK, JUST_AFTER_MIDNIGHT_IN_NEW_YORK,
           SUMMER_MORNING)


def _local(at: datetime, clinic_id: str) -> datetime:
    return at.astimezone(DIRECTORY.zone(clinic_id))


def _floors(events: list[DemoEvent], until: datetime | None = None) -> dict[str, ClinicFlow]:
    """Each clinic's floor after the demo's facts up to ``until``, applied as flow does
    (a fact the floor could not apply raises: it would be a dead letter)."""
    floors: dict[str, ClinicFlow] = {}
    for event in events:
        if until is not None and event.at > until:
            break
        floor = floors.setdefault(event.clinic_id, ClinicFlow(event.clinic_id))
        floor.apply(event.payload, event.at)
    return floors


# ------------------------------------------------------------------ the clinics


def test_each_demo_clinic_has_its_own_zone_and_names_for_every_provider_and_room() -> None:
    zones = {c.clinic_id: DIRECTORY.zone(c.clinic_id).key for c in DEMO_CLINICS}
    assert zones == {"north": "America/New_York", "south": "America/Chicago",
                     "east": "America/Denver"}
    # a UTC-5 clinic in winter, as the screens are checked in
    assert _local(AFTERNOON_IN_NEW_YORK, "north").utcoffset() == timedelta(hours=-5)
    for demo in DEMO_CLINICS:
        clinic = DIRECTORY[demo.clinic_id]
        shape = get_scenario(demo.scenario)
        assert clinic.display_name == demo.name
        assert sorted(clinic.providers) == sorted(f"p{n}" for n in range(1, shape.providers + 1))
        assert sorted(clinic.rooms) == sorted(f"r{n}" for n in range(1, shape.rooms + 1))
        assert all(name.startswith("Dr. ") for name in clinic.providers.values())
        assert not any(re.search(r"\br\d", name) for name in clinic.rooms.values())
    assert DIRECTORY["north"].provider_name("p1") == "Dr. Okafor"
    assert DIRECTORY["north"].room_name("r5") == "Exam 5"


def test_every_service_is_given_the_demo_clinics_unless_clinics_are_configured() -> None:
    stack: Any = SimpleNamespace(kafka_bootstrap="127.0.0.1:19092",
                                 redis_url="redis://127.0.0.1:16379/0")
    env = service_env({}, stack, DEFAULT_PORTS)
    assert ClinicDirectory.parse(env["CLINICFLOW_CLINICS"]).zone("north").key == \
        "America/New_York"
    assert env["CLINICFLOW_KAFKA_BOOTSTRAP"] == "127.0.0.1:19092"
    assert env["CLINICFLOW_FLOW_PORT"] == "8002"
    own = '{"north": {"timezone": "Pacific/Honolulu"}}'
    assert service_env({"CLINICFLOW_CLINICS": own}, stack, DEFAULT_PORTS)[
        "CLINICFLOW_CLINICS"] == own


def test_more_instances_of_each_service_listen_100_ports_apart() -> None:
    ports = instance_ports(DEFAULT_PORTS, 3)
    assert ports["flow"] == 8002 and ports["flow.2"] == 8102 and ports["flow.3"] == 8202
    assert ports["checkin.3"] == 8201 and len(ports) == 12
    assert instance_ports(DEFAULT_PORTS, 1) == DEFAULT_PORTS
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers())
    assert parser.parse_args(["up", "--instances", "2"]).instances == 2
    for wrong in ("0", "5", "two"):
        with pytest.raises(SystemExit):
            parser.parse_args(["up", "--instances", wrong])


def test_services_listen_where_their_port_settings_say() -> None:
    assert service_ports({}) == DEFAULT_PORTS
    assert service_ports({"CLINICFLOW_FLOW_PORT": "18002"})["flow"] == 18002
    with pytest.raises(StackError, match="CLINICFLOW_BILLING_PORT"):
        service_ports({"CLINICFLOW_BILLING_PORT": "eighty"})


# ------------------------------------------------------------ one calendar, one clock


@pytest.mark.parametrize("now", MOMENTS, ids=lambda m: m.isoformat())
def test_the_demo_day_is_on_each_clinics_own_calendar_and_clock(now: datetime) -> None:
    events = demo_day(now=now)
    assert {e.clinic_id for e in events} == {"north", "south", "east"}
    for clinic_id in ("north", "south", "east"):
        mine = [e for e in events if e.clinic_id == clinic_id]
        assert mine[0].at <= now <= mine[-1].at  # under way: begun, not over
        today = _local(now, clinic_id).date()
        dates = {_local(e.at, clinic_id).date() for e in mine}
        # the clinic's date, or across its midnight for a run in its evening or night
        assert dates <= {today - timedelta(days=1), today, today + timedelta(days=1)}
        if time(9) <= _local(now, clinic_id).time() <= time(14):
            assert dates == {today}  # a daytime run keeps to the clinic's date
    for event in events:
        if isinstance(event.payload, ev.PatientArrived) and event.payload.scheduled_at:
            appointment = _local(event.payload.scheduled_at, event.clinic_id)
            arrived = _local(event.at, event.clinic_id)
            assert abs(arrived - appointment) < timedelta(hours=3)  # one clock
            assert appointment.minute % 15 == 0 and appointment.second == 0  # as booked


def test_patients_arrive_around_their_appointment_on_the_same_clock() -> None:
    events = demo_day(now=AFTERNOON_IN_NEW_YORK)
    scheduled = [e for e in events if isinstance(e.payload, ev.PatientArrived)
                 and e.payload.scheduled_at is not None]
    offsets = [(e.at - e.payload.scheduled_at).total_seconds() / 60 for e in scheduled
               if isinstance(e.payload, ev.PatientArrived) and e.payload.scheduled_at]
    # the simulator's patients: most a little early, some late, none hours away
    assert all(-50 <= minutes <= 120 for minutes in offsets)
    assert sum(1 for m in offsets if m < 0) > 0.7 * len(offsets)


def test_a_realistic_share_of_scheduled_patients_come_late_not_all() -> None:
    events = demo_day(now=AFTERNOON_IN_NEW_YORK)
    arrivals = [e.payload for e in events if isinstance(e.payload, ev.PatientArrived)]
    scheduled = [a for a in arrivals if a.scheduled_at is not None]
    late = [a for a in scheduled if a.late]
    assert len(scheduled) > 100
    assert 0.02 <= len(late) / len(scheduled) <= 0.15
    # the flag says what the floor will conclude: more than 10 minutes past the appointment
    for event in events:
        payload = event.payload
        if isinstance(payload, ev.PatientArrived) and payload.scheduled_at is not None:
            assert payload.late == (event.at > payload.scheduled_at + LATE_GRACE)
    # and the floor agrees: late patients are few on every clinic's board at the start
    floors = _floors(events, until=AFTERNOON_IN_NEW_YORK)
    for floor in floors.values():
        visits = [v for v in floor.clinic.visits.values() if v.scheduled_at is not None]
        assert sum(v.late for v in visits) < len(visits) / 2


# ----------------------------------------------------------------- busy at once


def test_the_day_is_slid_to_mid_morning_in_whole_quarter_hours() -> None:
    assert clock_shift(MID_MORNING) == timedelta(0)  # real hours
    assert clock_shift(timedelta(hours=15, minutes=20)) == timedelta(hours=4, minutes=45)
    # the evening: the day runs into the next morning
    assert clock_shift(timedelta(hours=23, minutes=50)) == timedelta(hours=13, minutes=15)
    # just after midnight: it began the evening before
    assert clock_shift(timedelta(minutes=10)) == timedelta(hours=-10, minutes=-15)


@pytest.mark.parametrize("now", MOMENTS, ids=lambda m: m.isoformat())
def test_it_is_mid_morning_of_the_simulated_day_at_any_hour(now: datetime) -> None:
    for demo in DEMO_CLINICS:
        zone = DIRECTORY.zone(demo.clinic_id)
        planned = clinic_day(demo, zone, now)
        simulated_now = time_of_day(now, zone) - planned.shift
        assert abs(simulated_now - MID_MORNING) <= timedelta(minutes=8)
        assert planned.shift % timedelta(minutes=15) == timedelta(0)


# every two hours of a day in UTC, so every hour of the clinics' clocks is near one
AROUND_THE_CLOCK = tuple(datetime(2026, 12, 6, 1, 10, tzinfo=UTC) + timedelta(hours=2 * n)
                         for n in range(12))


@pytest.mark.parametrize("clinic_id", ["north", "south", "east"])
@pytest.mark.parametrize("now", AROUND_THE_CLOCK + MOMENTS, ids=lambda m: m.isoformat())
def test_every_panel_has_something_to_show_the_moment_the_morning_is_published(
        clinic_id: str, now: datetime) -> None:
    floor = _floors(demo_day(now=now), until=now)[clinic_id]
    clinic = floor.clinic
    assert len(clinic.waiting()) >= 3  # expected waits on the waiting-room screen
    assert clinic.roomed()  # rooms in use on the nurse station, someone being called
    report = floor.day.report(clinic, now)
    assert report["outcomes"]["checked_out"] >= 5  # stage durations, the day's counts
    assert len(report["queue"]["waiting"]) >= 12  # an hour of queue over the day
    paces = {row["provider_id"]: row["text"] for row in report["providers"]}
    # every provider has roomed on-time patients to measure the pace against
    assert all(text != "no on-time patient roomed yet"
               for provider, text in paces.items() if provider.startswith("p")), paces


@pytest.mark.parametrize("now", MOMENTS, ids=lambda m: m.isoformat())
def test_the_whole_day_applies_to_the_floor_without_a_refusal(now: datetime) -> None:
    events = demo_day(now=now)
    assert [e.at for e in events] == sorted(e.at for e in events)
    _floors(events)  # raises NotApplicable on a fact the floor would dead-letter


def test_played_faster_the_appointments_move_with_the_arrivals() -> None:
    started = AFTERNOON_IN_NEW_YORK
    events = demo_day(now=started)
    future = [e for e in events if e.at > started and isinstance(e.payload, ev.PatientArrived)
              and e.payload.scheduled_at is not None and e.payload.scheduled_at > started]
    past = next(e for e in events if e.at <= started)
    assert played(past, started, 10.0) == past  # what happened keeps its time
    for event in future:
        fast = played(event, started, 10.0)
        assert isinstance(fast.payload, ev.PatientArrived)
        assert isinstance(event.payload, ev.PatientArrived)
        assert fast.at - started == (event.at - started) / 10
        assert fast.payload.scheduled_at and event.payload.scheduled_at
        assert (fast.at - fast.payload.scheduled_at) == \
            (event.at - event.payload.scheduled_at) / 10  # early stays early, late late


# ------------------------------------------------------------- a fresh day each run


def test_each_run_starts_a_fresh_day_and_keeps_only_the_previous_one(tmp_path: Path) -> None:
    first = fresh_demo_dir(tmp_path)
    assert first == tmp_path / "up" and (first / MARKER).is_file()
    (first / "kafka").mkdir()
    (first / "kafka" / "day-one").write_text("north-v001 roomed")

    second = fresh_demo_dir(tmp_path)
    assert list(second.iterdir()) == [second / MARKER]  # nothing of day one
    assert (tmp_path / "up.previous" / "kafka" / "day-one").is_file()
    (second / "redis").mkdir()

    fresh_demo_dir(tmp_path)
    assert (tmp_path / "up.previous" / "redis").is_dir()  # day two set aside, day one gone
    assert not any(tmp_path.glob("up.discarded-*"))


def test_a_directory_make_up_did_not_create_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "thesis.tex").write_text("years of work")
    with pytest.raises(StackError, match="not made by `make up`"):
        fresh_demo_dir(tmp_path)
    assert (tmp_path / "up" / "thesis.tex").read_text() == "years of work"
    assert not (tmp_path / "up.previous").exists()


def test_the_state_of_an_earlier_make_up_without_a_marker_is_recognised(tmp_path: Path) -> None:
    old = tmp_path / "up"
    (old / "kafka").mkdir(parents=True)
    (old / "redis").mkdir()
    assert is_demo_state(old)
    fresh_demo_dir(tmp_path)
    assert (tmp_path / "up.previous" / "redis").is_dir()


def test_a_removal_cut_short_is_finished_by_the_next_run(tmp_path: Path) -> None:
    (tmp_path / "up.discarded-1234abcd" / "kafka").mkdir(parents=True)
    fresh_demo_dir(tmp_path)
    assert not (tmp_path / "up.discarded-1234abcd").exists()


def test_a_second_make_up_is_refused_while_one_runs(tmp_path: Path) -> None:
    with single_run(tmp_path / "up.lock"), \
            pytest.raises(StackError, match="already running"), \
            single_run(tmp_path / "up.lock"):
        pass
    with single_run(tmp_path / "up.lock"):  # free again once the first run ends
        pass


@pytest.fixture
def stand_in_service() -> Iterator[subprocess.Popen[bytes]]:
    """A process whose command line reads like a service `make up` started."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                                "tools.cli run flow"])
    yield process
    if process.poll() is None:
        process.kill()
    process.wait()


def _record_killed_run(state_file: Path, demo: Path, service: subprocess.Popen[bytes]) -> None:
    """What a `make up` killed with -9 leaves: its record, naming a service still running."""
    stack = LocalStack(demo)
    stack.companions.append(Managed("flow", service.pid, 8002, "tools.cli run flow",
                                    demo / "flow.log", None,
                                    process_start_time(service.pid)))
    write_state(state_file, stack)


def test_what_a_killed_make_up_left_running_is_stopped_by_the_next(
        tmp_path: Path, stand_in_service: subprocess.Popen[bytes]) -> None:
    state_file, demo = tmp_path / "stack.json", tmp_path / "up"
    _record_killed_run(state_file, demo, stand_in_service)
    state = json.loads(state_file.read_text())
    # its owner is gone: a PID that exited (the record's start time no longer matches)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    state["owner"] = {"pid": gone.pid, "started": 1}
    state_file.write_text(json.dumps(state))
    said: list[str] = []

    stop_leftovers(state_file, demo, said.append)

    assert stand_in_service.wait(5) is not None
    assert any("stopped flow" in line for line in said)
    assert not state_file.exists()


def test_a_running_make_up_or_stack_is_never_stopped_by_another(
        tmp_path: Path, stand_in_service: subprocess.Popen[bytes]) -> None:
    state_file, demo = tmp_path / "stack.json", tmp_path / "up"
    _record_killed_run(state_file, demo, stand_in_service)  # owner: this very process
    with pytest.raises(StackError, match="already running"):
        stop_leftovers(state_file, demo, print)
    # `clinicflow stack up`'s own stack (its data elsewhere) is not make up's to stop
    _record_killed_run(state_file, tmp_path, stand_in_service)
    with pytest.raises(StackError, match="`clinicflow stack up` is running"):
        stop_leftovers(state_file, demo, print)
    assert is_our_process(stand_in_service.pid, "tools.cli run flow")
    assert state_file.exists()


# ------------------------------------------------------------------------ the banner


def test_the_banner_links_every_flow_page_and_the_kiosk_of_every_clinic(tmp_path: Path) -> None:
    stack: Any = SimpleNamespace(kafka_bootstrap="127.0.0.1:9092",
                                 redis_url="redis://127.0.0.1:6379/0")
    text = _banner(stack, 4.0, DEFAULT_PORTS, DIRECTORY, tmp_path / "up" / "logs")
    assert "Northside Family Practice (north, America/New_York)" in text
    app = FastAPI()
    app.include_router(make_pages_router(FlowSettings()))
    client = TestClient(app)
    for clinic in ("north", "south", "east"):
        pages = set(re.findall(rf"http://127\.0\.0\.1:8002/screens/{clinic}/([a-z-]+)\?token=",
                               text))
        assert pages == {"waiting-room", "nurse", "operations"}
        assert f"http://127.0.0.1:8001/kiosk/{clinic}?token=dev-kiosk" in text
        assert (f"http://127.0.0.1:8003/screens/{clinic}/complaints?token=dev-front-desk"
                in text)
        for page in pages:  # and flow serves each of them
            assert client.get(f"/screens/{clinic}/{page}").status_code == 200, page


def test_the_clinic_day_is_the_date_in_the_clinics_zone_not_the_servers() -> None:
    # 23:50 in New York is already tomorrow in UTC: the day is still the 6th there
    planned = clinic_day(DEMO_CLINICS[0], ZoneInfo("America/New_York"),
                         LATE_EVENING_IN_NEW_YORK)
    assert planned.day == date(2026, 12, 6)
    assert LATE_EVENING_IN_NEW_YORK.date() == date(2026, 12, 7)
    assert datetime.combine(planned.day, time(0)).weekday() == 6  # that Sunday


def test_a_played_day_older_than_check_in_keeps_a_schedule_is_refused_before_anything_starts(
) -> None:
    today = date(2026, 12, 10)
    check_playable(date(2026, 12, 8), today)  # KEEP_DAYS (3) days: today and two before
    check_playable(date(2026, 12, 11), today)
    with pytest.raises(StackError, match=r"--date 2026-12-07: .* play 2026-12-08 or later"):
        check_playable(date(2026, 12, 7), today)


def test_print_clinics_gives_what_every_service_is_given(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    # for a command run beside make up (clinicflow billing reconcile): the same zones
    import tools.devup as devup

    monkeypatch.delenv("CLINICFLOW_CLINICS", raising=False)
    assert devup.run(argparse.Namespace(print_clinics=True)) == 0
    printed = json.loads(capsys.readouterr().out)
    given = ClinicDirectory.parse(devup.service_env(
        {}, SimpleNamespace(kafka_bootstrap="k", redis_url="r"),  # type: ignore[arg-type]
        {"checkin": 1, "flow": 2, "notifications": 3, "billing": 4})["CLINICFLOW_CLINICS"])
    assert {c: z["timezone"] for c, z in printed.items()} == {
        c: given.zone(c).key for c in given.clinics} == {
        "north": "America/New_York", "south": "America/Chicago", "east": "America/Denver"}


def test_every_demo_checkout_bills_codes_the_example_fee_schedule_prices() -> None:
    # the replay format carries no codes: every checkout charged nothing, and billing's
    # ledger, receipts and reconciliation stayed empty all through make up
    from services.billing.fees import EXAMPLE, load_fee_schedule

    schedule = load_fee_schedule(EXAMPLE)  # what billing prices with when none is set
    checkouts = [e for e in demo_day(now=datetime(2026, 12, 7, 17, 0, tzinfo=UTC))
                 if isinstance(e.payload, ev.PatientCheckedOut)]
    assert len(checkouts) > 100
    billed = [(e.clinic_id, e.payload.cpt_codes) for e in checkouts
              if isinstance(e.payload, ev.PatientCheckedOut)]
    for clinic_id, codes in billed:
        assert codes and schedule.unknown_codes(clinic_id, codes) == [], (clinic_id, codes)
    assert len({tuple(codes) for _, codes in billed}) >= 4  # by visit type
