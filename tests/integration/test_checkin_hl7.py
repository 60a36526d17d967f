"""The EHR's HL7 v2 feed on the real broker and Redis: an interface engine sends the
clinic's bookings (SIU) and registrations (ADT) over MLLP; each becomes the desk's own
command, is on Kafka before the engine hears AA, happens once however often the engine
resends it, and never carries the patient's MRN, name or birth date onto the floor.

One checkin (with its listener) serves the whole module; each test uses its own
appointments, patients and visits."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from shared.topics import DIRECTORY, FLOOR
from tests.helpers import all_relayed, read_topic
from tests.integration.test_checkin_hl7_support import (
    Ehr,
    Feed,
    MllpClient,
    module_prefix,
    running_feed,
)
from tests.integration.test_checkin_support import FRONT_DESK, KIOSK, csv_rows


@pytest.fixture(scope="module")
async def feed(kafka_bootstrap: str, redis_url: str) -> AsyncIterator[Feed]:
    async with running_feed(kafka_bootstrap, redis_url, module_prefix()) as service:
        yield service


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8].upper()}"


def mrn() -> str:
    return str(uuid.uuid4().int)[:9]


def about(events: list[dict[str, Any]], key: str, value: str) -> list[dict[str, Any]]:
    return [e for e in events if e["data"].get(key) == value]


async def test_a_new_booking_is_on_the_floor_before_the_engine_hears_aa_and_only_once(
    feed: Feed,
) -> None:
    ehr, now = Ehr(), datetime.now(UTC).replace(microsecond=0)
    appointment, patient = unique("A"), mrn()
    start = now + timedelta(minutes=40)
    booking = ehr.siu("S12", appointment, start, sent_at=now, mrn=patient)

    first = await feed.send(booking)
    assert first.code == "AA", first.raw
    assert first.text == "appointment booked"
    scheduled = about(await feed.floor(), "appointment_id", appointment)
    assert [e["event_type"] for e in scheduled] == ["appointment.scheduled"]
    data = scheduled[0]["data"]
    assert data["provider_id"] == "dr-addison"  # AIP-3 0148, mapped by the feed
    assert data["visit_type"] == "follow_up"  # SCH-7 FOLLOWUP (table 0276)
    assert data["duration_minutes"] == 15 and data["status"] == "booked"
    assert datetime.fromisoformat(data["scheduled_at"]) == start
    assert data["patient_ref"].startswith("pt-")

    # the engine did not hear the ACK and sends the same message again: same ACK, no effect
    again = await feed.send(booking)
    assert again.raw == first.raw
    assert len(about(await feed.floor(), "appointment_id", appointment)) == 1
    floor = await feed.raw_floor()
    for identifying in (patient, "MASSIE", "JAMES", "19560129", "1956-01-29", "371-66-9256"):
        assert identifying.encode() not in floor

    schedule = await feed.checkin.client.get("/clinics/north/schedule", headers=FRONT_DESK)
    rows = {r["appointment_id"]: r for r in schedule.json()["appointments"]}
    assert rows[appointment]["kiosk_code"]
    directory = (await feed.checkin.client.get("/clinics/north/directory",
                                               headers=FRONT_DESK)).json()
    assert any(p["id"] == "dr-addison" and p["name"] == "DR JAMES ADDISON"
               for p in directory["providers"])
    assert any(r["id"] == "r3" and r["name"] == "Exam room 3" for r in directory["rooms"])
    # the names are published for flow's screens and notifications' messages, once each
    await all_relayed(feed.checkin.app.state.relay)
    named = [orjson.loads(r.value)["data"] for r in await read_topic(
        feed.kafka_bootstrap, feed.checkin.floor_topic.replace(FLOOR.name, DIRECTORY.name),
        timeout=5)]
    assert [(n["id"], n["display"], n["origin"]) for n in named
            if n["id"] in ("dr-addison", "r3")] == [("dr-addison", "DR JAMES ADDISON", "hl7"),
                                                    ("r3", "Exam room 3", "hl7")]


async def test_a_reschedule_moves_the_appointment_and_an_older_update_arriving_late_is_ignored(
    feed: Feed,
) -> None:
    ehr, now = Ehr(), datetime.now(UTC).replace(microsecond=0)
    appointment, patient = unique("A"), mrn()
    booked_at, moved_to = now + timedelta(minutes=60), now + timedelta(minutes=90)
    client = await MllpClient.connect(feed.port)
    try:
        booked = await client.send(ehr.siu("S12", appointment, booked_at,
                                           sent_at=now - timedelta(minutes=10), mrn=patient))
        moved = await client.send(ehr.siu("S13", appointment, moved_to,
                                          sent_at=now - timedelta(minutes=2), mrn=patient))
        # an S14 the EHR wrote before the reschedule, delivered after it
        stale = await client.send(ehr.siu("S14", appointment, booked_at, minutes=30,
                                          sent_at=now - timedelta(minutes=5), mrn=patient))
    finally:
        await client.close()
    assert [booked.code, moved.code, stale.code] == ["AA", "AA", "AA"]
    assert moved.text == "appointment updated"
    assert stale.text.startswith("superseded")
    scheduled = about(await feed.floor(), "appointment_id", appointment)
    assert [datetime.fromisoformat(e["data"]["scheduled_at"]) for e in scheduled] == \
        [booked_at, moved_to]


async def test_a_cancellation_and_a_no_show_from_the_ehr_reach_the_floor_once(
    feed: Feed,
) -> None:
    ehr, now = Ehr(), datetime.now(UTC).replace(microsecond=0)
    cancelled, missed = unique("A"), unique("A")
    for appointment, start in ((cancelled, now + timedelta(minutes=30)),
                               (missed, now - timedelta(minutes=45))):
        answer = await feed.send(ehr.siu("S12", appointment, start,
                                         sent_at=now - timedelta(minutes=20), mrn=mrn()))
        assert answer.code == "AA", answer.raw

    cancel = await feed.send(ehr.siu("S15", cancelled, now + timedelta(minutes=30),
                                     sent_at=now, status="Cancelled"))
    no_show = await feed.send(ehr.siu("S26", missed, now - timedelta(minutes=45), sent_at=now))
    no_show_again = await feed.send(ehr.siu("S26", missed, now - timedelta(minutes=45),
                                            sent_at=now + timedelta(seconds=1)))
    assert (cancel.code, cancel.text) == ("AA", "appointment cancelled")
    assert (no_show.code, no_show.text) == ("AA", "no-show recorded")
    assert (no_show_again.code, no_show_again.text) == ("AA", "already a no-show")

    events = await feed.floor()
    assert [(e["event_type"], e["data"].get("status")) for e in
            about(events, "appointment_id", cancelled)] == [
        ("appointment.scheduled", "booked"), ("appointment.scheduled", "cancelled")]
    assert [e["event_type"] for e in about(events, "appointment_id", missed)] == [
        "appointment.scheduled", "patient.no_show"]

    unknown = await feed.send(ehr.siu("S26", unique("NOPE"), now, sent_at=now))
    assert unknown.code == "AE"
    assert unknown.error is not None
    assert unknown.error[2] == "SCH^1^2^1^1" and unknown.error[3].startswith("204^")


async def test_a_registration_checks_the_patient_in_on_their_appointment_once_and_a11_undoes_it(
    feed: Feed,
) -> None:
    ehr, now = Ehr(), datetime.now(UTC).replace(microsecond=0)
    appointment, patient, visit = unique("A"), mrn(), unique("V")
    booked = await feed.send(ehr.siu("S12", appointment, now + timedelta(minutes=5),
                                     sent_at=now - timedelta(minutes=30), mrn=patient))
    assert booked.code == "AA"

    registered = await feed.send(ehr.adt("A04", sent_at=now, visit=visit, mrn=patient))
    assert registered.code == "AA", registered.raw
    assert registered.text.startswith(f"checked in on appointment {appointment}")
    # the registration clerk pressed save twice: a second A04 for the same visit
    twice = await feed.send(ehr.adt("A04", sent_at=now + timedelta(seconds=5), visit=visit,
                                    mrn=patient))
    assert twice.code == "AA" and twice.text.startswith("already checked in")
    arrived = [e for e in await feed.floor() if e["event_type"] == "patient.arrived"
               and e["data"]["appointment_id"] == appointment]
    assert len(arrived) == 1
    visit_id = arrived[0]["data"]["visit_id"]
    assert arrived[0]["data"]["provider_id"] == "dr-addison"

    cancelled = await feed.send(ehr.adt("A11", sent_at=now + timedelta(seconds=10),
                                        visit=visit, mrn=patient))
    assert (cancelled.code, cancelled.text) == ("AA", f"arrival of visit {visit_id} cancelled")
    cancels = about(await feed.floor(), "visit_id", visit_id)
    assert [(e["event_type"], e["data"].get("reason")) for e in cancels][-1] == \
        ("arrival.cancelled", "entered_in_error")
    # the appointment waits for its patient again
    schedule = await feed.checkin.client.get("/clinics/north/schedule", headers=FRONT_DESK)
    row = next(r for r in schedule.json()["appointments"] if r["appointment_id"] == appointment)
    assert row["visit_id"] is None
    # a second cancel (a new message) says the arrival was cancelled, not "never checked in"
    again = await feed.send(ehr.adt("A11", sent_at=now + timedelta(seconds=20),
                                    visit=visit, mrn=patient))
    assert again.code == "AE", again.raw
    assert "already cancelled" in again.text and visit_id in again.raw.decode(), again.raw


async def test_a_patient_registered_without_an_appointment_is_a_walk_in_who_may_leave(
    feed: Feed,
) -> None:
    ehr, now = Ehr(), datetime.now(UTC).replace(microsecond=0)
    visit = unique("V")
    registered = await feed.send(ehr.adt("A04", sent_at=now, visit=visit, mrn=mrn(),
                                         admission_type="E"))
    assert registered.code == "AA" and "walk-in" in registered.text, registered.raw
    ended = await feed.send(ehr.adt("A03", sent_at=now + timedelta(minutes=2), visit=visit))
    assert ended.code == "AA" and "left without being seen" in ended.text
    events = await feed.floor()
    arrival = next(e for e in events if e["event_type"] == "patient.arrived"
                   and e["data"]["appointment_id"] is None
                   and e["data"]["visit_id"] in ended.text)
    assert arrival["data"]["priority"] == "urgent"  # PV1-4 E: emergency
    assert arrival["data"]["visit_type"] == "walk_in"
    visit_id = arrival["data"]["visit_id"]
    assert [(e["event_type"], e["data"].get("reason"))
            for e in about(events, "visit_id", visit_id)] == [
        ("patient.arrived", None), ("arrival.cancelled", "left_without_being_seen")]


async def test_a_corrected_birth_date_reaches_the_kiosk_check_and_nothing_is_published(
    feed: Feed,
) -> None:
    ehr, now = Ehr(), datetime.now(UTC).replace(microsecond=0)
    appointment, patient = unique("A"), mrn()
    booked = await feed.send(ehr.siu("S12", appointment, now + timedelta(minutes=10),
                                     sent_at=now - timedelta(minutes=30), mrn=patient,
                                     patient="QUILL^ROSA", born="19721103"))
    assert booked.code == "AA"
    before = len(await feed.floor())
    corrected = await feed.send(ehr.adt("A08", sent_at=now, mrn=patient, visit=None,
                                        patient="QUILL^ROSA", born="19721130"))
    assert (corrected.code, corrected.text) == ("AA", "kiosk check of 1 appointment(s) updated")
    assert len(await feed.floor()) == before

    kiosk = await feed.checkin.client.post(
        "/clinics/north/kiosk/check-ins", headers=KIOSK,
        json={"date_of_birth": "1972-11-30", "initials": "RQ"})
    assert kiosk.status_code == 201, kiosk.text
    schedule = await feed.checkin.client.get("/clinics/north/schedule", headers=FRONT_DESK)
    row = next(r for r in schedule.json()["appointments"] if r["appointment_id"] == appointment)
    assert row["visit_id"] == kiosk.json()["visit_id"]


async def test_what_the_feed_cannot_take_is_answered_with_the_segment_field_and_reason(
    feed: Feed,
) -> None:
    ehr, now = Ehr(), datetime.now(UTC).replace(microsecond=0)
    no_ids = ehr.siu("S12", "X", now, sent_at=now, control="no-ids").replace(
        b"SCH|X-P^EPIC|X^EPIC|", b"SCH|||")
    refused = await feed.send(no_ids)
    assert refused.code == "AE"
    assert refused.error is not None
    assert refused.error[2] == "SCH^1^2^1^1" and refused.error[3] == \
        "101^Required field missing^HL70357"
    assert "SCH-2" in refused.error[8]
    assert (await feed.send(no_ids)).raw == refused.raw  # the same answer again

    stranger = await feed.send(Ehr(facility="OTHERHOS").siu("S12", unique("A"), now,
                                                             sent_at=now))
    assert stranger.code == "AR"
    assert stranger.error is not None and stranger.error[2] == "MSH^1^4^1"
    assert "OTHERHOS" in stranger.error[8]

    admitted = await feed.send(ehr.adt("A04", sent_at=now, mrn=mrn()).replace(
        b"ADT^A04^ADT_A01", b"ADT^A01^ADT_A01"))
    assert admitted.code == "AR"
    assert admitted.error is not None and admitted.error[2] == "MSH^1^9^1^2"
    assert admitted.error[3].startswith("201^")

    no_patient = b"\r".join(s for s in ehr.adt("A04", sent_at=now).split(b"\r")
                            if not s.startswith(b"PID"))
    missing = await feed.send(no_patient)
    assert missing.code == "AE" and missing.error is not None
    assert missing.error[2] == "PID^1"


async def test_one_clinics_messages_about_different_appointments_go_side_by_side(
    feed: Feed,
) -> None:
    """No clinic-wide lock: eight engines book eight appointments of one clinic at once,
    each answered AA and booked once, each with its own kiosk code."""
    ehr, now = Ehr(), datetime.now(UTC).replace(microsecond=0)
    appointments = [unique("P") for _ in range(8)]

    async def engine(appointment: str) -> str:
        client = await MllpClient.connect(feed.port)
        try:
            answer = await client.send(ehr.siu("S12", appointment, now + timedelta(hours=1),
                                               sent_at=now, mrn=mrn()))
            return answer.code
        finally:
            await client.close()

    assert await asyncio.gather(*(engine(a) for a in appointments)) == ["AA"] * 8
    events = await feed.floor()
    for appointment in appointments:
        assert len(about(events, "appointment_id", appointment)) == 1
    codes = await feed.checkin.kiosk_codes()
    assert len({codes[a] for a in appointments}) == 8


async def test_a_schedule_file_import_and_the_feed_never_change_a_clinic_at_once(
    feed: Feed,
) -> None:
    """A feed message holds only its appointment; a whole-file import of the clinic is
    refused while one is held, and a feed booking is answered AR (resend later) while an
    import runs."""
    ehr, now = Ehr(), datetime.now(UTC).replace(microsecond=0)
    store = feed.checkin.app.state.store
    held = unique("H")
    assert (await store.hold_appointment("north", held, "a-message-in-flight"))[0] == 1
    row = csv_rows((unique("C"), "pt-x", "dr-addison", "follow_up",
                    (now + timedelta(hours=1)).isoformat(), "15", "", ""))
    refused = await feed.checkin.import_csv(row)
    assert refused.status_code == 409 and refused.json()["code"] == "import_running"
    await store.release_hold("north", held)
    assert (await feed.checkin.import_csv(row)).status_code == 200

    assert await store.lock_import("north")
    try:
        appointment = unique("I")
        message = ehr.siu("S12", appointment, now + timedelta(hours=1), sent_at=now, mrn=mrn())
        busy = await feed.send(message)
        assert busy.code == "AR" and busy.error is not None
        assert busy.error[3].startswith("206^")
    finally:
        await store.unlock_import("north")
    landed = await feed.send(message)  # the engine's resend, once the import is done
    assert landed.code == "AA", landed.raw
    assert len(about(await feed.floor(), "appointment_id", appointment)) == 1


async def test_a_control_id_used_again_for_a_different_message_is_refused_and_changes_nothing(
    feed: Feed,
) -> None:
    ehr, now = Ehr(), datetime.now(UTC).replace(microsecond=0)
    appointment, patient, control = unique("A"), mrn(), unique("C")
    start = now + timedelta(minutes=20)
    booked = await feed.send(ehr.siu("S12", appointment, start, sent_at=now, mrn=patient,
                                     control=control))
    assert (booked.code, booked.text) == ("AA", "appointment booked")
    # a resend restamped by the engine (MSH-7 only) is the same message: the same ACK
    resent = await feed.send(ehr.siu("S12", appointment, start, mrn=patient, control=control,
                                     sent_at=now + timedelta(seconds=30)))
    assert resent.raw == booked.raw
    arrival = await feed.send(ehr.adt("A04", sent_at=now, mrn=patient, visit=unique("V"),
                                      control=control))
    other = await feed.send(ehr.siu("S12", appointment, start + timedelta(minutes=30),
                                    sent_at=now, mrn=patient, control=control))
    for answer in (arrival, other):
        assert answer.code == "AE", answer.raw
        assert "control id already used for a different message" in answer.text
        assert answer.error is not None and answer.error[2].startswith("MSH^1^10"), answer.raw
    events = about(await feed.floor(), "appointment_id", appointment)
    assert [e["event_type"] for e in events] == ["appointment.scheduled"]
    assert not [e for e in await feed.floor() if e["event_type"] == "patient.arrived"
                and e["data"].get("appointment_id") == appointment]
    # the first message's own resend still gets its ACK
    assert (await feed.send(ehr.siu("S12", appointment, start, sent_at=now, mrn=patient,
                                    control=control))).raw == booked.raw


async def test_a_message_time_in_the_future_or_long_past_is_refused_and_freezes_nothing(
    feed: Feed,
) -> None:
    ehr, now = Ehr(), datetime.now(UTC).replace(microsecond=0)
    appointment, patient = unique("A"), mrn()
    start = now + timedelta(minutes=50)
    assert (await feed.send(ehr.siu("S12", appointment, start, sent_at=now - timedelta(
        minutes=5), mrn=patient))).code == "AA"
    future = await feed.send(ehr.siu("S14", appointment, start, minutes=30, mrn=patient,
                                     sent_at=datetime(2099, 12, 31, 12, tzinfo=UTC)))
    assert future.code == "AE", future.raw
    assert future.error is not None and future.error[2].startswith("MSH^1^7"), future.raw
    assert "in the future" in future.text
    # a clock a little fast is allowed, and does not make the next real update "older"
    fast = await feed.send(ehr.siu("S14", appointment, start, minutes=20, mrn=patient,
                                   sent_at=now + timedelta(minutes=3)))
    assert (fast.code, fast.text) == ("AA", "appointment updated"), fast.raw
    real = await feed.send(ehr.siu("S14", appointment, start, minutes=25, mrn=patient,
                                   sent_at=datetime.now(UTC) + timedelta(seconds=2)))
    assert (real.code, real.text) == ("AA", "appointment updated"), real.raw
    assert [e["data"]["duration_minutes"] for e in about(
        await feed.floor(), "appointment_id", appointment)] == [15, 20, 25]

    visit = unique("V")
    ancient = ehr.adt("A04", sent_at=now, mrn=patient, visit=visit)
    evn = ancient.split(b"\r")[1]
    ancient = ancient.replace(evn, b"EVN|A04|19000101000000|||")
    refused = await feed.send(ancient)
    assert refused.code == "AE", refused.raw
    assert refused.error is not None and refused.error[2].startswith("EVN^1^2"), refused.raw
    assert "implausibly old" in refused.text
    assert not about(await feed.floor(), "appointment_id", appointment)[3:]


async def test_an_appointment_type_the_clinic_does_not_know_is_refused_at_sch_7(
    feed: Feed,
) -> None:
    ehr, now = Ehr(), datetime.now(UTC).replace(microsecond=0)
    appointment = unique("A")
    answer = await feed.send(ehr.siu("S12", appointment, now + timedelta(minutes=30),
                                     sent_at=now, mrn=mrn(), reason="BOGUS^Bogus^L"))
    assert answer.code == "AE", answer.raw
    assert answer.error is not None and answer.error[2].startswith("SCH^1^7"), answer.raw
    assert "'BOGUS' is not one of this clinic's visit types" in answer.text
    assert not about(await feed.floor(), "appointment_id", appointment)


async def test_two_bookings_renaming_one_room_at_once_leave_the_last_applied_name_everywhere(
    feed: Feed, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two messages about different appointments name the same room (AIL-3) and provider
    (AIP-3) differently at once, raced deterministically: one is applied up to its
    transaction and waits there while the other is applied whole, then goes on. The one
    applied last decides the name stored, and its directory.named is the last published
    (its names are compared with the stored ones in its transaction, not before: names
    read before the other message stored its own would look unchanged and be lost)."""
    ehr, now = Ehr(), datetime.now(UTC).replace(microsecond=0)
    store = feed.checkin.app.state.store

    def named(message: bytes, room: str, provider: str) -> bytes:
        return (message.replace(b"^^^^^Exam room 3|", f"^^^^^{room}|".encode())
                .replace(b"AIP|1|A|0148^ADDISON^JAMES^", f"AIP|1|A|0148^{provider}^".encode()))

    def booking(appointment: str, room: str, provider: str) -> bytes:
        return named(ehr.siu("S12", appointment, now + timedelta(hours=1), sent_at=now,
                             mrn=mrn()), room, provider)

    # the names as the other tests of the module book them (stored once, whatever ran)
    assert (await feed.send(booking(unique("N"), "Exam room 3", "ADDISON^JAMES"))).code \
        == "AA"
    late_appointment = unique("N")
    last = booking(late_appointment, "Exam room 3", "ADDISON^JAMES")
    first = booking(unique("N"), "East room", "ADDISON^JO")
    waiting, go = asyncio.Event(), asyncio.Event()
    save_held = store.save_held

    async def racing(*args: Any, **kwargs: Any) -> None:
        if kwargs.get("held") == late_appointment:  # applied up to its transaction
            waiting.set()
            await go.wait()
        await save_held(*args, **kwargs)

    monkeypatch.setattr(store, "save_held", racing)
    late = asyncio.create_task(feed.send(last))
    try:
        await asyncio.wait_for(waiting.wait(), 10)
        assert (await feed.send(first)).code == "AA"  # stores and publishes its names
    finally:
        go.set()
    assert (await late).code == "AA"

    providers, rooms = await store.names("north")
    assert (rooms["r3"], providers["dr-addison"]) == ("Exam room 3", "DR JAMES ADDISON")
    await all_relayed(feed.checkin.app.state.relay)
    published = [orjson.loads(r.value)["data"] for r in await read_topic(
        feed.kafka_bootstrap, feed.checkin.floor_topic.replace(FLOOR.name, DIRECTORY.name),
        timeout=5)]
    assert [n["display"] for n in published if n["id"] == "r3"][-2:] == [
        "East room", "Exam room 3"]
    assert [n["display"] for n in published if n["id"] == "dr-addison"][-2:] == [
        "DR JO ADDISON", "DR JAMES ADDISON"]
