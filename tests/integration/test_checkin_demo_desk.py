"""``make up``'s demo clinics other than the EHR's (south, east) play their day through
check-in's front desk (tools/desk_sender.py): at the start their scheduled patients
still to come are on check-in's schedule with kiosk codes (before, those kiosks had no
schedule at all), under appointment ids that name the clinic once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from shared.clinics import ClinicDirectory
from shared.topics import FLOOR, topic_name
from tests.integration.test_checkin_support import FRONT_DESK, running_checkin
from tools.desk_sender import desk_bookings, play_desk_clinic
from tools.ehr_sender import ehr_day
from tools.live_demo import DEMO_CLINICS, clinics_setting


async def test_a_desk_clinics_kiosk_has_its_schedule_from_the_start(
    kafka_bootstrap: str, redis_url: str, topic_prefix: str,
) -> None:
    directory = ClinicDirectory.parse(clinics_setting())
    south = next(c for c in DEMO_CLINICS if c.clinic_id == "south")
    now = datetime.now(UTC).replace(microsecond=0)
    planned = ehr_day(south, directory, started=now)
    bookings = desk_bookings(planned.bookings, planned.future)
    assert bookings
    assert all(b.appointment_id.startswith("south-v") for b in bookings.values())
    assert all(b.provider.startswith("p") for b in bookings.values())  # the clinic's ids

    async with running_checkin(kafka_bootstrap, redis_url, topic_prefix,
                               clinics=clinics_setting()) as checkin:
        stop = asyncio.Event()
        await play_desk_clinic(kafka_bootstrap, topic_name(FLOOR, topic_prefix),
                               checkin_url=str(checkin.client.base_url), clinic=south,
                               directory=directory, stop=stop, clock=lambda: now,
                               on_caught_up=lambda _count: stop.set())
        days = {b.start.astimezone(directory.zone("south")).date() for b in bookings.values()}
        listed: dict[str, str] = {}
        for day in days:
            answer = await checkin.client.get(f"/clinics/south/schedule?day={day}",
                                              headers=FRONT_DESK)
            assert answer.status_code == 200, answer.text
            listed.update({r["appointment_id"]: r["kiosk_code"]
                           for r in answer.json()["appointments"]})
    assert set(listed) == {b.appointment_id for b in bookings.values()}
    assert all(listed.values())  # every one has its kiosk code
