"""Each clinic lives in its own time zone, on the real broker and Redis: a clinic in
Honolulu (UTC-10) and one in Tongatapu (UTC+13), at the moments when their day and UTC's
disagree. The service's clock is a ``FakeClock`` set to the clinic's midnight (the next
one after the real now, so Redis keeps what it is given): "today's schedule", the kiosk,
ticket numbers, the no-show sweep and the follow-up list all follow the clinic's calendar,
never the server's or UTC's.

The kiosk's rule at midnight: it takes the clinic's today's appointments, and across
midnight those within two hours of now (``KIOSK_ACROSS_MIDNIGHT``): the patient checking
in at 23:55 for 00:05 is found; tomorrow morning's appointment still goes to the desk."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import orjson
import pytest

from tests.fakes import FakeClock
from tests.integration.test_checkin_support import (
    CSV,
    FRONT_DESK,
    KIOSK,
    Checkin,
    a_key,
    running_checkin,
)

HONOLULU = ZoneInfo("Pacific/Honolulu")  # UTC-10, no daylight saving
TONGATAPU = ZoneInfo("Pacific/Tongatapu")  # UTC+13, no daylight saving
CLINICS = orjson.dumps({
    "surf": {"name": "Surfside Clinic", "timezone": "Pacific/Honolulu",
             "providers": {"dr-kai": "Dr. Kai"}},
    "reef": {"name": "Reef Family Practice", "timezone": "Pacific/Tongatapu"},
}).decode()
HEADER = "appointment_id,patient_ref,provider_id,visit_type,scheduled_at,dob,initials\n"


def next_local(zone: ZoneInfo, hour: int, minute: int) -> datetime:
    """The next moment after the real now when the clinic's clock reads hour:minute."""
    now = datetime.now(UTC).astimezone(zone)
    moment = datetime.combine(now.date(), time(hour, minute), tzinfo=zone)
    if moment <= now:
        moment = datetime.combine(now.date() + timedelta(days=1), time(hour, minute),
                                  tzinfo=zone)
    return moment


def row(appointment: str, patient: str, provider: str, at: datetime, zone: ZoneInfo,
        dob: str = "", initials: str = "") -> str:
    return (f"{appointment},{patient},{provider},follow_up,"
            f"{at.astimezone(zone).isoformat()},{dob},{initials}\n")


@pytest.fixture
async def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def checkin(kafka_bootstrap: str, redis_url: str, topic_prefix: str,
                  clock: FakeClock) -> AsyncIterator[Checkin]:
    async with running_checkin(kafka_bootstrap, redis_url, topic_prefix, clock=clock,
                               clinics=CLINICS, checkin_no_show_after_minutes=30) as service:
        yield service


async def import_schedule(checkin: Checkin, clinic: str, rows: str) -> None:
    answer = await checkin.client.post(f"/clinics/{clinic}/schedule/csv",
                                       content=(HEADER + rows).encode(),
                                       headers={**FRONT_DESK, **CSV})
    assert answer.status_code == 200, answer.text


async def kiosk(checkin: Checkin, clinic: str, body: dict[str, str]) -> tuple[int, dict]:
    answer = await checkin.client.post(f"/clinics/{clinic}/kiosk/check-ins", json=body,
                                       headers={**KIOSK, **a_key()})
    return answer.status_code, answer.json()


async def test_in_honolulu_a_patient_checking_in_at_2355_for_0005_is_found_and_tickets_restart(
    checkin: Checkin, clock: FakeClock,
) -> None:
    before_midnight = clock.set(next_local(HONOLULU, 23, 55))  # 09:55 UTC the next day
    today = before_midnight.date()
    tomorrow = today + timedelta(days=1)
    assert before_midnight.astimezone(UTC).date() == tomorrow  # UTC is already tomorrow
    await import_schedule(checkin, "surf", "".join((
        row("apt-evening", "p-eve", "dr-kai", before_midnight - timedelta(minutes=35),
            HONOLULU),
        row("apt-midnight", "p-mid", "dr-kai", before_midnight + timedelta(minutes=10),
            HONOLULU),
        row("apt-dob", "p-dob", "dr-kai", before_midnight + timedelta(minutes=25), HONOLULU,
            "1980-04-02", "KL"),
        row("apt-morning", "p-mor", "dr-kai", before_midnight + timedelta(hours=9),
            HONOLULU),
    )))

    # "today's schedule" at 23:55 is the clinic's today, not UTC's (already tomorrow)
    listed = (await checkin.client.get("/clinics/surf/schedule", headers=FRONT_DESK)).json()
    assert (listed["day"], listed["timezone"]) == (today.isoformat(), "Pacific/Honolulu")
    assert [r["appointment_id"] for r in listed["appointments"]] == ["apt-evening"]
    evening = listed["appointments"][0]
    assert evening["scheduled_at"].endswith("-10:00")  # on the clinic's clock
    assert evening["provider_name"] == "Dr. Kai"
    codes = await checkin.kiosk_codes("surf", tomorrow.isoformat())
    assert set(codes) == {"apt-midnight", "apt-dob", "apt-morning"}

    # 23:55: the 00:05 appointment is found by its code, the 00:20 one by birth date
    status, first = await kiosk(checkin, "surf", {"appointment_code": codes["apt-midnight"]})
    assert status == 201, first
    assert (first["ticket_code"], first["late"]) == ("A-1", False)
    status, second = await kiosk(checkin, "surf", {"date_of_birth": "1980-04-02",
                                                    "initials": "KL"})
    assert status == 201 and second["ticket_code"] == "A-2", second
    # tomorrow morning's appointment is not for tonight's kiosk
    status, morning = await kiosk(checkin, "surf", {"appointment_code": codes["apt-morning"]})
    assert status == 409 and "not today" in morning["detail"], morning
    assert f"{tomorrow:%B} {tomorrow.day}, {tomorrow.year}" in morning["detail"]  # its day

    # 00:10: a new clinic day, ticket numbers start again
    clock.advance(minutes=15)
    walk_in = await checkin.client.post("/clinics/surf/arrivals",
                                        json={"provider_id": "dr-kai", "visit_type": "urgent"},
                                        headers={**FRONT_DESK, **a_key()})
    assert walk_in.status_code == 201, walk_in.text
    assert walk_in.json()["ticket_code"] == "A-1"
    # last night's A-2 is still found just after midnight (yesterday's tickets are looked
    # up when today has no such number)
    found = await checkin.client.get("/clinics/surf/tickets/A-2/wait", headers=KIOSK)
    assert found.status_code == 200 and found.json()["waiting"] is True, found.text
    listed = (await checkin.client.get("/clinics/surf/schedule", headers=FRONT_DESK)).json()
    assert listed["day"] == tomorrow.isoformat()
    statuses = {r["appointment_id"]: r["status"] for r in listed["appointments"]}
    assert statuses == {"apt-midnight": "arrived", "apt-dob": "arrived",
                        "apt-morning": "booked"}

    events = await checkin.events(expect=7)
    arrivals = [e for e in events if e["event_type"] == "patient.arrived"]
    assert [e["data"]["ticket_code"] for e in arrivals] == ["A-1", "A-2", "A-1"]
    assert all(e["clinic_id"] == "surf" for e in arrivals)


async def test_in_tongatapu_the_no_show_of_2350_is_on_yesterdays_follow_up_list_at_0030(
    checkin: Checkin, clock: FakeClock,
) -> None:
    after_midnight = clock.set(next_local(TONGATAPU, 0, 30))  # 11:30 UTC the day before
    today = after_midnight.date()
    yesterday = today - timedelta(days=1)
    assert after_midnight.astimezone(UTC).date() == yesterday  # UTC is still yesterday
    missed_at = after_midnight - timedelta(minutes=40)  # 23:50 last night
    await import_schedule(checkin, "reef", "".join((
        row("apt-2350", "p-late", "dr-tu", missed_at, TONGATAPU),
        row("apt-0900", "p-day", "dr-tu", after_midnight + timedelta(hours=8, minutes=30),
            TONGATAPU),
    )))
    # the same schedule for a clinic in Honolulu would be two days apart: reef's own
    listed = (await checkin.client.get("/clinics/reef/schedule", headers=FRONT_DESK)).json()
    assert (listed["day"], listed["timezone"]) == (today.isoformat(), "Pacific/Tongatapu")
    assert [r["appointment_id"] for r in listed["appointments"]] == ["apt-0900"]
    assert listed["appointments"][0]["scheduled_at"].endswith("+13:00")

    swept = await checkin.sweep_no_shows(clock.now())
    assert [e.payload.appointment_id for e in swept.published] == ["apt-2350"]  # type: ignore[attr-defined]
    # on the follow-up list of the clinic's yesterday, where the appointment was
    tonight = (await checkin.client.get("/clinics/reef/no-shows",
                                        headers=FRONT_DESK)).json()
    assert tonight["day"] == today.isoformat() and tonight["no_shows"] == []
    last_night = (await checkin.client.get(f"/clinics/reef/no-shows?day={yesterday}",
                                           headers=FRONT_DESK)).json()
    assert [r["appointment_id"] for r in last_night["no_shows"]] == ["apt-2350"]
    scheduled = datetime.fromisoformat(last_night["no_shows"][0]["scheduled_at"])
    assert scheduled == missed_at and scheduled.utcoffset() == timedelta(hours=13)
    assert last_night["timezone"] == "Pacific/Tongatapu"
    yesterdays = (await checkin.client.get(f"/clinics/reef/schedule?day={yesterday}",
                                           headers=FRONT_DESK)).json()
    assert [(r["appointment_id"], r["status"]) for r in yesterdays["appointments"]] == [
        ("apt-2350", "no_show")]


async def test_one_instant_is_a_different_day_for_each_clinic(
    checkin: Checkin, clock: FakeClock,
) -> None:
    # 23:30 in Honolulu is 22:30 the next day in Tongatapu: a day and an hour apart
    at = clock.set(next_local(HONOLULU, 23, 30))
    surf = (await checkin.client.get("/clinics/surf/schedule", headers=FRONT_DESK)).json()
    reef = (await checkin.client.get("/clinics/reef/schedule", headers=FRONT_DESK)).json()
    assert date.fromisoformat(surf["day"]) == at.date()
    assert date.fromisoformat(reef["day"]) == at.date() + timedelta(days=1)
    # a clinic not in CLINICFLOW_CLINICS is not served: 404 naming it
    north = await checkin.client.get("/clinics/north/schedule", headers=FRONT_DESK)
    assert north.status_code == 404 and "north" in north.json()["detail"]
