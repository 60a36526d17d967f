"""Contact commands are checked against what exists, on the real broker, Redis and SMTP
server: a visit not on the clinic's floor (or another clinic's) is a 404 naming it, one
that ended a 409, e-mail with no mail server is refused; a contact recorded a moment after
the check-in is taken (the service reads the floor first); the same contact given again
is one recording. Nothing answered 2xx ends as a dead letter: every message a recorded
contact is owed reaches the mail server."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest

from services.notifications.app import create_app
from shared import events as ev
from shared.settings import NotificationsSettings
from shared.topics import AUDIT, DEAD_LETTER, NOTIFICATIONS, topic_name
from tests.helpers import eventually, read_topic, serving
from tests.integration.notifications_support import (
    FRONT_DESK,
    MailCatcher,
    arrival,
    estimate,
    floor_event,
    notifications_service,
    notifier_has_read_everything,
    publish_estimates,
    publish_floor,
    record_contact,
)

EMAIL = {"channel": "email", "address": "a17@patients.example.org", "consent": True}


def contact_path(visit: str, clinic: str = "north") -> str:
    return f"/clinics/{clinic}/visits/{visit}/contact"


@pytest.mark.reliability(
    "a contact for a visit that is not on the clinic's floor, through another clinic's "
    "path, or for a visit that has ended",
    "404 or 409 naming the visit and the clinic; nothing stored, nothing audited",
)
async def test_a_contact_is_taken_only_for_a_visit_on_the_clinics_floor(
    notifications_env: dict[str, Any], smtp_server: MailCatcher,
) -> None:
    bootstrap, prefix = notifications_env["kafka_bootstrap"], notifications_env["topic_prefix"]
    now = datetime.now(UTC)
    async with notifications_service(notifications_env) as (_app, client):
        await publish_floor(bootstrap, prefix, [
            arrival("v17", "A-17", "dr-lee", now), arrival("v18", "A-18", "dr-lee", now),
            arrival("s1", "S-1", "dr-ng", now, clinic="south")])
        # checked in a moment ago: taken (the service reads the floor before answering)
        taken = await client.put(contact_path("v17"), json=EMAIL, headers=FRONT_DESK)
        assert taken.status_code == 200, taken.text

        never = await client.put(contact_path("v404"), json=EMAIL, headers=FRONT_DESK)
        assert never.status_code == 404
        assert never.json()["code"] == "unknown_visit"
        assert "v404" in never.json()["detail"] and "north" in never.json()["detail"]
        # south's visit through north's path, north's visit through south's
        crossed = await client.put(contact_path("s1"), json=EMAIL, headers=FRONT_DESK)
        assert crossed.status_code == 404 and "s1" in crossed.json()["detail"]
        crossed_back = await client.put(contact_path("v17", "south"), json=EMAIL,
                                        headers=FRONT_DESK)
        assert crossed_back.status_code == 404 and "south" in crossed_back.json()["detail"]
        erase_unknown = await client.delete(contact_path("v404"), headers=FRONT_DESK)
        assert erase_unknown.status_code == 404 and "v404" in erase_unknown.json()["detail"]

        # A-18 leaves without being seen: too late to take a contact, or change one
        await record_contact(client, "v18", "email", "a18@patients.example.org")
        await publish_floor(bootstrap, prefix, [floor_event(
            ev.ArrivalCancelled(visit_id="v18", reason="left_without_being_seen"), now)])
        ended = await client.put(contact_path("v18"), json={**EMAIL, "wait_anywhere": True},
                                 headers=FRONT_DESK)
        assert ended.status_code == 409 and ended.json()["code"] == "visit_ended"
        assert "v18" in ended.json()["detail"]
        changed = await client.patch(contact_path("v18"), json={"wait_anywhere": True},
                                     headers=FRONT_DESK)
        assert changed.status_code == 409 and "v18" in changed.json()["detail"]
        # the patient may still have their details erased
        assert (await client.delete(contact_path("v18"), headers=FRONT_DESK)).status_code == 204
        assert (await client.delete(contact_path("v18"), headers=FRONT_DESK)).status_code == 204

        for visit, clinic in (("v404", "north"), ("s1", "north"), ("v17", "south")):
            assert (await client.get(contact_path(visit, clinic),
                                     headers=FRONT_DESK)).status_code == 404
    # the outbox is at least once (an entry published as the relay was stopped is published
    # again by the shutdown drain): events are told apart by their event_id, as consumers do
    audit = list({e.envelope.event_id: e for e in (
        ev.decode(r.value) for r in await read_topic(bootstrap, topic_name(AUDIT, prefix),
                                                     expect=3))}.values())
    # v17 and v18 recorded, v18 erased once (erasing again changed nothing); the reads
    # that found nothing are not audited
    assert sorted((e.event_type, e.payload.visit_id) for e in audit) == [  # type: ignore[attr-defined]
        ("contact.erased", "v18"), ("contact.recorded", "v17"), ("contact.recorded", "v18")]


async def test_email_without_a_mail_server_is_refused_clearly(
    notifications_env: dict[str, Any],
) -> None:
    bootstrap, prefix = notifications_env["kafka_bootstrap"], notifications_env["topic_prefix"]
    env = {**notifications_env, "smtp_host": None}
    await publish_floor(bootstrap, prefix, [arrival("v17", "A-17", "dr-lee", datetime.now(UTC))])
    async with serving(create_app(NotificationsSettings(**env))) as url, \
            httpx.AsyncClient(base_url=url) as client:
        refused = await client.put(contact_path("v17"), json=EMAIL, headers=FRONT_DESK)
        assert refused.status_code == 422
        assert refused.json()["code"] == "channel_unavailable"
        assert "e-mail is not available" in refused.json()["detail"]
        assert "CLINICFLOW_SMTP_HOST" in refused.json()["detail"]
        sms = await client.put(contact_path("v17"), json={
            "channel": "sms", "address": "+15551234567", "consent": True}, headers=FRONT_DESK)
        assert sms.status_code == 422 and "SMS is not available" in sms.json()["detail"]
        assert (await client.get(contact_path("v17"), headers=FRONT_DESK)).status_code == 404
        # booleans are true or false, never "true" or "yes": 422 naming the field
        for method, path, body, field in [
            ("PUT", contact_path("v17"), {**EMAIL, "consent": "true"}, "consent"),
            ("PUT", contact_path("v17"), {**EMAIL, "wait_anywhere": 1}, "wait_anywhere"),
            ("PATCH", contact_path("v17"), {"wait_anywhere": "yes"},
             "wait_anywhere"),
            ("PATCH", contact_path("v17"), {"delay_updates": "false"},
             "delay_updates"),
        ]:
            loose = await client.request(method, path, json=body, headers=FRONT_DESK)
            assert loose.status_code == 422, (body, loose.text)
            assert field in loose.text, loose.text


@pytest.mark.reliability(
    "the same contact sent again (a retry without an Idempotency-Key)",
    "one recording, one audit event, one message per trigger",
)
async def test_the_same_contact_given_twice_is_one_recording_and_every_message_it_is_owed_goes(
    notifications_env: dict[str, Any], smtp_server: MailCatcher,
) -> None:
    bootstrap, prefix = notifications_env["kafka_bootstrap"], notifications_env["topic_prefix"]
    now = datetime.now(UTC)
    async with notifications_service(notifications_env) as (app, client):
        await publish_floor(bootstrap, prefix, [arrival("v17", "A-17", "dr-lee", now)])
        first = await client.put(contact_path("v17"), json=EMAIL, headers=FRONT_DESK)
        again = await client.put(contact_path("v17"), json=EMAIL, headers=FRONT_DESK)
        assert (first.status_code, again.status_code) == (200, 200)
        assert (first.json()["replayed"], again.json()["replayed"]) == (False, True)
        assert again.json()["expires_at"] == first.json()["expires_at"]
        patched = [await client.patch(contact_path("v17"), json={"delay_updates": True},
                                      headers=FRONT_DESK) for _ in range(2)]
        assert [p.json()["replayed"] for p in patched] == [True, True]  # already so
        # the patient corrects the address: the latest given wins
        corrected = await client.put(contact_path("v17"), json={
            **EMAIL, "address": "a17.new@patients.example.org"}, headers=FRONT_DESK)
        assert corrected.json()["replayed"] is False

        await publish_floor(bootstrap, prefix, [floor_event(
            ev.DelayAnnounced(provider_id="dr-lee", minutes=25), now)])
        await publish_estimates(bootstrap, prefix, [estimate("v17", "A-17", "dr-lee", 30, now)])
        await eventually(lambda: smtp_server.mails, timeout=20)
        await notifier_has_read_everything(app, bootstrap, prefix)
        await app.state.sender.drain()
    assert [m.to for m in smtp_server.mails] == [("a17.new@patients.example.org",)]
    # the outbox is at least once (an entry published as the relay was stopped is published
    # again by the shutdown drain): events are told apart by their event_id, as consumers do
    audit = list({e.envelope.event_id: e for e in (
        ev.decode(r.value) for r in await read_topic(bootstrap, topic_name(AUDIT, prefix),
                                                     expect=3))}.values())
    assert sorted(e.event_type for e in audit) == [
        "contact.read", "contact.recorded", "contact.recorded"]  # the send's read
    sent = [ev.decode(r.value) for r in await read_topic(
        bootstrap, topic_name(NOTIFICATIONS, prefix), expect=1)]
    assert [e.event_type for e in sent] == ["notification.sent"]
    letters = await read_topic(bootstrap, topic_name(DEAD_LETTER, prefix))
    assert [orjson.loads(r.value)["reason"] for r in letters] == []
