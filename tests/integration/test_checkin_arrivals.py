"""Arrivals, the kiosk, cancel, no-shows and the status lookup on the real broker and
Redis: what is published (read back from Kafka), what is refused with a clear 4xx and
nothing half-published, and that names, birth dates and initials never reach an event."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis

from shared import events as ev
from shared.idempotency import fingerprint
from shared.topics import FLOOR
from tests.fakes import FakeClock
from tests.helpers import eventually
from tests.integration.test_checkin_support import (
    CSV,
    FRONT_DESK,
    KIOSK,
    MANAGER,
    NURSE,
    Checkin,
    at,
    csv_rows,
    publish,
    running_checkin,
)

DOB, INITIALS = "1980-04-02", "JQ"


@pytest.fixture
async def checkin(kafka_bootstrap: str, redis_url: str,
                  topic_prefix: str) -> AsyncIterator[Checkin]:
    # the clinic's clock stands still: every lookup of a test falls in one rate-limit minute
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    async with running_checkin(kafka_bootstrap, redis_url, topic_prefix, clock=clock,
                               checkin_lookup_misses_per_minute=3) as service:
        now = clock.now()
        schedule = csv_rows(
            ("apt-late", "p-aaa111", "dr-lee", "follow_up", at(-20, now), "15", "", ""),
            ("apt-soon", "p-bbb222", "dr-kim", "physical", at(30, now), "30", "", ""),
            ("APT-Kiosk", "p-ccc333", "dr-lee", "follow_up", at(15, now), "15", DOB,
             INITIALS),
            ("apt-dob", "p-ddd444", "dr-kim", "follow_up", at(5, now), "15", "1991-07-15",
             "MB"),
        )
        answer = await service.import_csv(schedule)
        assert answer.status_code == 200, answer.text
        await service.events(expect=4)
        yield service


async def arrive(checkin: Checkin, body: dict[str, Any], key: str | None = None,
                 clinic: str = "north", headers: dict[str, str] = FRONT_DESK) -> Any:
    extra = {"Idempotency-Key": key} if key else {}
    return await checkin.client.post(f"/clinics/{clinic}/arrivals", json=body,
                                     headers={**headers, **extra})


async def test_scheduled_and_walk_in_arrivals_publish_ticket_codes_and_the_late_flag(
    checkin: Checkin,
) -> None:
    late = await arrive(checkin, {"appointment_id": "apt-late"}, key="k-late")
    assert late.status_code == 201, late.text
    soon = await arrive(checkin, {"appointment_id": "apt-soon", "priority": "urgent"})
    walk_in = await arrive(checkin, {"provider_id": None, "visit_type": "minor_procedure",
                                     "patient_ref": "p-walk01"}, key="k-walk-in")
    assert soon.status_code == 201 and walk_in.status_code == 201, (soon.text, walk_in.text)
    answers = [late.json(), soon.json(), walk_in.json()]
    assert [a["late"] for a in answers] == [True, False, False]
    codes = [a["ticket_code"] for a in answers]
    assert len(set(codes)) == 3
    assert answers[0]["provider_id"] == "dr-lee" and answers[0]["visit_type"] == "follow_up"
    assert answers[1]["priority"] == "urgent"
    assert answers[2]["provider_id"] is None and answers[2]["appointment_id"] is None

    events = (await checkin.events(expect=7))[4:]
    assert [e["event_type"] for e in events] == ["patient.arrived"] * 3
    for event, answer in zip(events, answers, strict=True):
        assert event["correlation_id"] == answer["visit_id"]
        assert event["event_id"] == answer["event_id"]
        assert event["data"]["ticket_code"] == answer["ticket_code"]
        assert event["data"]["late"] is answer["late"]
    assert events[0]["data"]["appointment_id"] == "apt-late"
    assert events[0]["data"]["scheduled_at"] is not None
    assert events[2]["data"]["scheduled_at"] is None
    # a walk-in's reference that is not this service's pseudonym is published as its keyed
    # pseudonym (it may be an identifier: an MRN), never as typed
    assert events[2]["data"]["patient_ref"].startswith("pt-")
    assert events[2]["data"]["patient_ref"] == answers[2]["patient_ref"]

    # the same request again under its Idempotency-Key: the same arrival, nothing new
    retried = await arrive(checkin, {"appointment_id": "apt-late"}, key="k-late")
    assert retried.status_code == 201
    assert retried.json() == {**answers[0], "replayed": True}
    # the key reused for a different request is refused, not silently replayed
    reused = await arrive(checkin, {"appointment_id": "apt-soon"}, key="k-late")
    assert reused.status_code == 422, reused.text
    # a second arrival for the same visit without the key: 409 naming the first visit
    second = await arrive(checkin, {"appointment_id": "apt-late"})
    assert second.status_code == 409, second.text
    assert answers[0]["visit_id"] in second.json()["detail"]
    assert len(await checkin.events()) == 7

    schedule = await checkin.client.get("/clinics/north/schedule", headers=FRONT_DESK)
    status = {r["appointment_id"]: r["status"] for r in schedule.json()["appointments"]}
    assert status["apt-late"] == "arrived" and status["apt-dob"] == "booked"


async def test_unknown_other_clinics_and_bad_arrivals_get_a_clear_4xx_and_publish_nothing(
    checkin: Checkin,
) -> None:
    south = csv_rows(("apt-south", "p-sss111", "dr-ray", "follow_up", at(10), "15", "", ""))
    imported = await checkin.client.post("/clinics/south/schedule/csv", content=south,
                                         headers={**FRONT_DESK, **CSV})
    assert imported.status_code == 200
    before = len(await checkin.events(expect=5))

    unknown = await arrive(checkin, {"appointment_id": "apt-nope"})
    assert unknown.status_code == 404 and "apt-nope" in unknown.json()["detail"]
    elsewhere = await arrive(checkin, {"appointment_id": "apt-south"})
    assert elsewhere.status_code == 404, elsewhere.text
    no_type = await arrive(checkin, {"provider_id": "dr-lee"})
    assert no_type.status_code == 422 and "visit_type" in no_type.json()["detail"]
    bad = await arrive(checkin, {"visit_type": "x", "priority": "soonish"})
    assert bad.status_code == 422 and "priority" in bad.json()["detail"]
    kiosk = await arrive(checkin, {"visit_type": "x"}, headers=KIOSK)
    assert kiosk.status_code == 403
    nurse = await arrive(checkin, {"visit_type": "x"}, headers=NURSE)
    assert nurse.status_code == 403
    oversized = await checkin.client.post(
        "/clinics/north/arrivals", content=b'{"visit_type": "' + b"x" * 1_100_000 + b'"}',
        headers={**FRONT_DESK, "Content-Type": "application/json"})
    assert oversized.status_code == 413, oversized.text[:200]
    assert len(await checkin.events()) == before


async def test_cancel_publishes_once_and_kiosk_credentials_cannot_cancel(
    checkin: Checkin,
) -> None:
    arrived = (await arrive(checkin, {"appointment_id": "apt-soon"})).json()
    visit = arrived["visit_id"]
    path = f"/clinics/north/visits/{visit}/cancel"
    kiosk = await checkin.client.post(path, json={"reason": "cancelled"}, headers=KIOSK)
    assert kiosk.status_code == 403, kiosk.text
    cancelled = await checkin.client.post(path, json={"reason": "left_without_being_seen"},
                                          headers={**FRONT_DESK, "Idempotency-Key": "c-1"})
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["ticket_code"] == arrived["ticket_code"]
    retried = await checkin.client.post(path, json={"reason": "left_without_being_seen"},
                                        headers={**FRONT_DESK, "Idempotency-Key": "c-1"})
    assert retried.json() == {**cancelled.json(), "replayed": True}
    again = await checkin.client.post(path, json={"reason": "cancelled"}, headers=FRONT_DESK)
    assert again.status_code == 409 and "not waiting" in again.json()["detail"]
    unknown = await checkin.client.post("/clinics/north/visits/v-0000000000000000/cancel",
                                        json={"reason": "cancelled"}, headers=MANAGER)
    assert unknown.status_code == 404

    events = await checkin.events(expect=6)
    assert [e["event_type"] for e in events[4:]] == ["patient.arrived", "arrival.cancelled"]
    assert events[5]["data"] == {"visit_id": visit, "reason": "left_without_being_seen"}
    assert events[5]["correlation_id"] == visit
    # a cancelled ticket is no longer waiting
    status = await checkin.client.get(f"/clinics/north/tickets/{arrived['ticket_code']}/wait",
                                      headers=KIOSK)
    assert status.status_code == 200 and status.json()["waiting"] is False


@pytest.mark.reliability(
    "birth date and initials entered at the kiosk",
    "never in an event",
)
async def test_kiosk_checks_in_by_code_or_birth_date_and_initials_without_publishing_them(
    checkin: Checkin,
) -> None:
    codes = await checkin.kiosk_codes()
    # the patient types the short code from the confirmation, in any case
    typed = f" {codes['APT-Kiosk'].lower()} "
    by_code = await checkin.client.post("/clinics/north/kiosk/check-ins",
                                        json={"appointment_code": typed},
                                        headers={**KIOSK, "Idempotency-Key": "kiosk-1"})
    assert by_code.status_code == 201, by_code.text
    answer = by_code.json()
    assert answer["ticket_code"] and answer["late"] is False
    assert answer["wait"]["waiting"] is True
    assert set(answer["wait"]) == {"ticket_code", "waiting", "position", "low_minutes",
                                   "high_minutes"}
    again = await checkin.client.post("/clinics/north/kiosk/check-ins",
                                      json={"appointment_code": codes["APT-Kiosk"]},
                                      headers=KIOSK)
    assert again.status_code == 409 and "front desk" in again.json()["detail"]

    by_identity = await checkin.client.post(
        "/clinics/north/kiosk/check-ins", json={"date_of_birth": "1991-07-15",
                                                "initials": "m.b."}, headers=KIOSK)
    assert by_identity.status_code == 201, by_identity.text
    wrong = await checkin.client.post(
        "/clinics/north/kiosk/check-ins", json={"date_of_birth": "1991-07-15",
                                                "initials": "XX"}, headers=KIOSK)
    assert wrong.status_code == 404
    assert "1991" not in wrong.text and "XX" not in wrong.text
    late = await checkin.client.post("/clinics/north/kiosk/check-ins",
                                     json={"appointment_code": codes["apt-late"]},
                                     headers=KIOSK)
    assert late.status_code == 201 and late.json()["late"] is True
    both = await checkin.client.post(
        "/clinics/north/kiosk/check-ins",
        json={"appointment_code": "apt-soon", "initials": "MB"}, headers=KIOSK)
    assert both.status_code == 422

    events = await checkin.events(expect=7)
    arrivals = [e for e in events if e["event_type"] == "patient.arrived"]
    assert {e["data"]["appointment_id"] for e in arrivals} == {"APT-Kiosk", "apt-dob",
                                                               "apt-late"}
    assert [e["data"]["late"] for e in arrivals] == [False, False, True]
    raw = await checkin.raw_floor()
    for secret in (DOB.encode(), b"1991-07-15", b"JQ", b'"MB"', b"m.b.", b"initials",
                   b"date_of_birth"):
        assert secret not in raw, secret

    # the kiosk can follow its own visit's wait by the visit id it was given
    followed = await checkin.client.get(f"/clinics/north/visits/{answer['visit_id']}/wait",
                                        headers=KIOSK)
    assert followed.status_code == 200
    assert followed.json()["ticket_code"] == answer["ticket_code"]


@pytest.mark.reliability(
    "ticket codes guessed at the public lookup",
    "rate-limited (429); nothing but place and range",
)
async def test_ticket_lookup_gives_place_and_range_only_and_guessing_is_rate_limited(
    checkin: Checkin,
) -> None:
    arrived = (await arrive(checkin, {"appointment_id": "apt-soon"})).json()
    code = arrived["ticket_code"]
    found = await checkin.client.get(f"/clinics/north/tickets/{code.lower()}/wait",
                                     headers=KIOSK)
    assert found.status_code == 200, found.text
    assert set(found.json()) == {"ticket_code", "waiting", "position", "low_minutes",
                                 "high_minutes"}
    assert found.json()["ticket_code"] == code and found.json()["waiting"] is True

    statuses = []
    for guess in ("Z-901", "Z-902", "Z-903", "Z-904", "Z-905"):
        answer = await checkin.client.get(f"/clinics/north/tickets/{guess}/wait",
                                          headers=KIOSK)
        statuses.append(answer.status_code)
    assert statuses == [404, 404, 404, 429, 429]
    limited = await checkin.client.get(f"/clinics/north/tickets/{code}/wait", headers=KIOSK)
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    # the limit is per credential: the front desk still gets answers
    desk = await checkin.client.get(f"/clinics/north/tickets/{code}/wait", headers=FRONT_DESK)
    assert desk.status_code == 200
    # the kiosk's failed check-ins count against the same misses
    kiosk = await checkin.client.post("/clinics/north/kiosk/check-ins",
                                      json={"appointment_code": "K7P-4QX"}, headers=KIOSK)
    assert kiosk.status_code == 429


async def test_a_booked_appointment_with_no_arrival_becomes_a_no_show_on_the_follow_up_list(
    kafka_bootstrap: str, redis_url: str, topic_prefix: str,
) -> None:
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    async with running_checkin(kafka_bootstrap, redis_url, topic_prefix, clock=clock,
                               checkin_no_show_after_minutes=1,
                               checkin_late_after_minutes=0) as checkin:
        start = clock.now()
        schedule = csv_rows(
            ("apt-missed", "p-aaa111", "dr-lee", "follow_up", at(-3, start), "15", DOB,
             INITIALS),
            ("apt-came", "p-bbb222", "dr-lee", "follow_up", at(-0.5, start), "15", "", ""),
            ("apt-later", "p-ccc333", "dr-kim", "physical", at(30, start), "15", "", ""),
            ("apt-off", "p-ddd444", "dr-kim", "physical", at(-3, start), "15", "", ""),
            ("apt-undone", "p-eee555", "dr-kim", "physical", at(-2.5, start), "15", "", ""),
        )
        answer = await checkin.import_csv(schedule)
        assert answer.status_code == 200, answer.text
        # apt-came checks in while it is late but not yet missed
        came = await arrive(checkin, {"appointment_id": "apt-came"})
        assert came.status_code == 201 and came.json()["late"] is True
        # apt-undone is checked in by mistake, and the desk undoes it on flow's board: the
        # appointment waits for its patient again, and is missed like any other
        mistaken = (await arrive(checkin, {"appointment_id": "apt-undone"})).json()
        await publish(checkin.kafka_bootstrap, FLOOR, topic_prefix, [ev.make_event(
            ev.ActionUndone(undone_event_id=mistaken["event_id"]), clinic_id="north",
            source="flow", occurred_at=clock.now())])

        async def undone() -> bool:
            schedule = await checkin.client.get("/clinics/north/schedule", headers=FRONT_DESK)
            return {r["appointment_id"]: r["status"] for r in schedule.json()["appointments"]
                    }["apt-undone"] == "booked"

        await eventually(undone, timeout=30)
        # the projection, reading the arrivals back (before the undo: one partition), took
        # apt-came off the sweep's list; the undone one is back on it
        redis = aioredis.Redis.from_url(redis_url)
        try:
            pending = {m.decode() for m in await redis.zrange(
                f"{topic_prefix.rstrip('.')}:checkin:pending:north", 0, -1)}
        finally:
            await redis.aclose()
        assert pending == {"apt-missed", "apt-later", "apt-off", "apt-undone"}

        # the sweep a minute later: apt-came would be missed by now had it not come
        swept = await checkin.sweep_no_shows(clock.advance(minutes=1))
        missed = [e.payload.appointment_id for e in swept.published
                  if isinstance(e.payload, ev.PatientNoShow)]
        assert sorted(missed) == ["apt-missed", "apt-off", "apt-undone"]
        assert len(swept.published) == 3
        events = await checkin.events(expect=11)
        found = [e for e in events if e["event_type"] == "patient.no_show"]
        assert sorted(e["data"]["appointment_id"] for e in found) == [
            "apt-missed", "apt-off", "apt-undone"]
        assert all(e["correlation_id"] == e["data"]["appointment_id"] for e in found)

        listed = await checkin.client.get("/clinics/north/no-shows", headers=FRONT_DESK)
        assert listed.status_code == 200
        rows = listed.json()["no_shows"]
        assert [r["appointment_id"] for r in rows] == ["apt-missed", "apt-off", "apt-undone"]
        assert rows[0]["patient_ref"] == "p-aaa111" and rows[0]["arrived_later"] is False
        kiosk = await checkin.client.get("/clinics/north/no-shows", headers=KIOSK)
        assert kiosk.status_code == 403

        # the patient came after all: the front desk may still check them in
        late = await arrive(checkin, {"appointment_id": "apt-missed"})
        assert late.status_code == 201 and late.json()["late"] is True
        relisted = await checkin.client.get("/clinics/north/no-shows", headers=FRONT_DESK)
        assert relisted.json()["no_shows"][0]["arrived_later"] is True
        # the kiosk refuses a missed appointment and sends them to the desk
        off = await checkin.client.post("/clinics/north/kiosk/check-ins",
                                        json={"appointment_code": (
                                            await checkin.kiosk_codes())["apt-off"]},
                                        headers=KIOSK)
        assert off.status_code == 409 and "front desk" in off.json()["detail"]

        # another sweep publishes nothing more
        again = await checkin.sweep_no_shows(clock.advance(minutes=1))
        assert again.published == [] and again.failed == 0
        events = await checkin.events(expect=12)
        assert [e["event_type"] for e in events].count("patient.no_show") == 3
        raw = await checkin.raw_floor()
        assert DOB.encode() not in raw and INITIALS.encode() not in raw


async def test_an_arrival_entered_in_error_frees_its_appointment_for_the_right_patient(
    checkin: Checkin,
) -> None:
    wrong = (await arrive(checkin, {"appointment_id": "apt-soon"})).json()
    cancelled = await checkin.client.post(f"/clinics/north/visits/{wrong['visit_id']}/cancel",
                                          json={"reason": "entered_in_error"},
                                          headers=FRONT_DESK)
    assert cancelled.status_code == 200, cancelled.text
    schedule = await checkin.client.get("/clinics/north/schedule", headers=FRONT_DESK)
    status = {r["appointment_id"]: r["status"] for r in schedule.json()["appointments"]}
    assert status["apt-soon"] == "booked"
    right = await arrive(checkin, {"appointment_id": "apt-soon"})
    assert right.status_code == 201, right.text
    assert right.json()["visit_id"] != wrong["visit_id"]
    assert right.json()["ticket_code"] != wrong["ticket_code"]

    # a patient who left is still the appointment's arrival: no second check-in for it
    left = await checkin.client.post(f"/clinics/north/visits/{right.json()['visit_id']}/cancel",
                                     json={"reason": "left_without_being_seen"},
                                     headers=FRONT_DESK)
    assert left.status_code == 200
    again = await arrive(checkin, {"appointment_id": "apt-soon"})
    assert again.status_code == 409


async def test_nothing_kept_in_redis_gives_back_a_birth_date_or_initials(
    checkin: Checkin, redis_url: str, topic_prefix: str,
) -> None:
    body = b'{"date_of_birth":"1991-07-15","initials":"MB"}'
    path = "/clinics/north/kiosk/check-ins"
    answer = await checkin.client.post(path, content=body, headers={
        **KIOSK, "Content-Type": "application/json", "Idempotency-Key": "kiosk-dob"})
    assert answer.status_code == 201, answer.text
    replayed = await checkin.client.post(path, content=body, headers={
        **KIOSK, "Content-Type": "application/json", "Idempotency-Key": "kiosk-dob"})
    assert replayed.json() == {**answer.json(), "replayed": True}
    invalid = await checkin.client.post(path, json={"date_of_birth": "1991-13-45",
                                                    "initials": "MB"}, headers=KIOSK)
    assert invalid.status_code == 422 and "1991-13-45" not in invalid.text

    # a plain hash of the request (birth date + initials) would be brute-forced in seconds
    plain = fingerprint("POST", path, body)
    client = aioredis.from_url(redis_url)
    try:
        stored = b""
        async for key in client.scan_iter(match=f"{topic_prefix.rstrip('.')}:*"):
            kind = await client.type(key)
            if kind == b"string":
                stored += key + b"=" + (await client.get(key) or b"") + b"\n"
            elif kind == b"hash":
                stored += key + b"=" + repr(await client.hgetall(key)).encode() + b"\n"
    finally:
        await client.aclose()
    assert b"kiosk-dob" in stored
    for secret in (plain.encode(), b"1991-07-15", b"1991", b'"MB"'):
        assert secret not in stored, secret


@pytest.mark.reliability(
    "a walk-in retried without an Idempotency-Key, twice the same walk-in",
    "428 naming the header and no ticket; with the key, one ticket whatever the retries",
)
async def test_a_walk_in_needs_an_idempotency_key_and_its_retries_are_one_ticket(
    checkin: Checkin,
) -> None:
    before = len(await checkin.events(expect=4))
    body = {"provider_id": "dr-lee", "visit_type": "follow_up"}
    # two identical walk-ins without a key: refused, not two tickets
    for _ in range(2):
        refused = await arrive(checkin, body)
        assert refused.status_code == 428, refused.text
        assert "Idempotency-Key" in refused.json()["detail"]
        assert refused.json()["code"] == "idempotency_key_required"
    assert len(await checkin.events()) == before
    # one walk-in, its answer lost and the request retried under its key: one ticket
    first = await arrive(checkin, body, key="walk-in-7c1e")
    retried = await arrive(checkin, body, key="walk-in-7c1e")
    assert first.status_code == retried.status_code == 201, (first.text, retried.text)
    assert retried.json() == {**first.json(), "replayed": True}
    # another patient with the same request is another key: another ticket
    other = await arrive(checkin, body, key="walk-in-9d2f")
    assert other.json()["ticket_code"] != first.json()["ticket_code"]
    events = await checkin.events(expect=before + 2)
    assert [e["event_type"] for e in events[before:]] == ["patient.arrived"] * 2
    # a scheduled arrival needs no key: the appointment itself is the natural key
    scheduled = await arrive(checkin, {"appointment_id": "apt-soon"})
    assert scheduled.status_code == 201, scheduled.text
    again = await arrive(checkin, {"appointment_id": "apt-soon"})
    assert again.status_code == 409 and scheduled.json()["visit_id"] in again.json()["detail"]


@pytest.mark.reliability(
    "commands naming a provider, visit, ticket or code that does not exist here, or "
    "another clinic's",
    "404 naming it; nothing published",
)
async def test_commands_naming_what_this_clinic_does_not_have_are_refused_naming_it(
    checkin: Checkin,
) -> None:
    south = csv_rows(("apt-south", "p-sss111", "dr-ray", "follow_up", at(10), "15", "", ""))
    assert (await checkin.client.post("/clinics/south/schedule/csv", content=south,
                                      headers={**FRONT_DESK, **CSV})).status_code == 200
    south_codes = await checkin.kiosk_codes("south")
    south_visit = (await arrive(checkin, {"appointment_id": "apt-south"},
                                clinic="south")).json()
    before = len(await checkin.events(expect=6))

    nobody = await arrive(checkin, {"provider_id": "dr-nobody", "visit_type": "follow_up"},
                          key="k-nobody")
    assert nobody.status_code == 404, nobody.text
    assert "dr-nobody" in nobody.json()["detail"] and "dr-lee" in nobody.json()["detail"]
    # south's provider is not north's either
    theirs = await arrive(checkin, {"appointment_id": "apt-soon", "provider_id": "dr-ray"})
    assert theirs.status_code == 404 and "dr-ray" in theirs.json()["detail"], theirs.text
    visit = south_visit["visit_id"]
    cancel = await checkin.client.post(f"/clinics/north/visits/{visit}/cancel",
                                       json={"reason": "cancelled"}, headers=FRONT_DESK)
    assert cancel.status_code == 404 and visit in cancel.json()["detail"], cancel.text
    followed = await checkin.client.get(f"/clinics/north/visits/{visit}/wait",
                                        headers=FRONT_DESK)
    assert followed.status_code == 404 and visit in followed.json()["detail"]
    assert followed.json()["code"] == "unknown_visit"  # as every other 404: a code to branch on
    ticket = south_visit["ticket_code"]
    looked_up = await checkin.client.get(f"/clinics/north/tickets/{ticket}/wait",
                                         headers=FRONT_DESK)
    assert looked_up.status_code == 404 and ticket in looked_up.json()["detail"]
    assert looked_up.json()["code"] == "unknown_ticket"
    # at the kiosk: the raw appointment id is not a kiosk code, south's code not north's
    for code in ("apt-soon", south_codes["apt-south"]):
        typed = await checkin.client.post("/clinics/north/kiosk/check-ins",
                                          json={"appointment_code": code}, headers=KIOSK)
        assert typed.status_code == 404, typed.text
    assert len(await checkin.events()) == before
    # the south visit is untouched and still waiting
    theirs_still = await checkin.client.get(f"/clinics/south/visits/{visit}/wait",
                                            headers=FRONT_DESK)
    assert theirs_still.json()["waiting"] is True
