"""Patients are told, on the real broker, Redis and SMTP server: delays reach exactly the
waiting patients they affect, once; rate limits hold; patients waiting outside are called
back; the front desk sees who has been told.

The notifier acts on the clock only when a test ticks it (``tick(now)``), at a time the
test chose on its ``FakeClock``: what waits for time to pass (a warning settling, a rate
limit's window) goes out at that tick, never earlier by a wall-clock ticker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson

from services.notifications.app import create_app
from shared import events as ev
from shared.settings import NotificationsSettings
from shared.topics import AUDIT, NOTIFICATIONS, topic_name
from tests.fakes import FakeClock
from tests.helpers import auth, eventually, read_topic, serving
from tests.integration.notifications_support import (
    FRONT_DESK,
    MailCatcher,
    arrival,
    estimate,
    floor_event,
    notifier_has_read_everything,
    publish_estimates,
    publish_floor,
    record_contact,
    rules_json,
)


def mail(visit: str) -> str:
    return f"{visit}@patients.example.org"


async def test_a_delay_announcement_reaches_every_affected_waiting_patient_once_and_nobody_else(
    notifications_env: dict[str, Any], smtp_server: MailCatcher,
) -> None:
    env = {**notifications_env, "notifications_rules": rules_json(settle_seconds=5)}
    bootstrap, prefix = env["kafka_bootstrap"], env["topic_prefix"]
    clock = FakeClock(datetime.now(UTC))  # the notifier reads the day now; the test moves on
    t0 = clock.now() - timedelta(minutes=5)
    lee = [("v1", "A-1"), ("v2", "A-2"), ("v3", "A-3"), ("v4", "A-4")]
    others = [("v5", "B-1", "dr-kim"), ("v6", "W-1", None), ("v7", "A-5", "dr-lee"),
              ("v8", "A-6", "dr-lee"), ("v9", "A-7", "dr-lee")]
    app = create_app(NotificationsSettings(**env), clock=clock)
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as client:
        await publish_floor(bootstrap, prefix, [
            *(arrival(v, t, "dr-lee", t0) for v, t in lee),
            *(arrival(v, t, p, t0) for v, t, p in others),
            floor_event(ev.PatientRoomed(visit_id="v7", room_id="room-1"), t0 + timedelta(
                minutes=1)),
        ])
        for visit, _ in lee:
            await record_contact(client, visit, "email", mail(visit))
        for visit, _, _ in others[:4]:
            await record_contact(client, visit, "email", mail(visit))
        # A-6 opts out at the desk; A-7 gave no contact at all
        assert (await client.delete("/clinics/north/visits/v8/contact",
                                    headers=FRONT_DESK)).status_code == 204
        await publish_estimates(bootstrap, prefix, [
            estimate(v, t, "dr-lee", 10.0 * (i + 1), t0) for i, (v, t) in enumerate(lee)])
        # Dr. Lee runs 25 minutes late; flow re-estimates three of his patients at once
        delay = floor_event(ev.DelayAnnounced(provider_id="dr-lee", minutes=25,
                                              reason="emergency"), t0 + timedelta(minutes=2))
        await publish_floor(bootstrap, prefix, [delay])
        await publish_estimates(bootstrap, prefix, [
            estimate("v1", "A-1", "dr-lee", 35, delay.occurred_at, position=1),
            estimate("v2", "A-2", "dr-lee", 45, delay.occurred_at),
            estimate("v3", "A-3", "dr-lee", 55, delay.occurred_at),
        ])
        # each warning waits for its fresh estimate (another topic, read whenever) and
        # quotes it, however late the notifier read it after the delay
        await eventually(lambda: len(smtp_server.mails) >= 3, timeout=20)
        assert smtp_server.to(mail("v1"))[0].text == (
            "Dr. Lee is running about 25 minutes behind; your new estimated wait is "
            "30\u201340 minutes.")
        assert "40\u201350 minutes" in smtp_server.to(mail("v2"))[0].text
        assert "50\u201360 minutes" in smtp_server.to(mail("v3"))[0].text
        # A-4's fresh estimate never comes: the warning waits out its five seconds...
        await notifier_has_read_everything(app, bootstrap, prefix)
        assert sorted(n["ticket_code"] for n in await _listed(client)) == ["A-1", "A-2", "A-3"]
        # ...and goes out when they are over, with the delay as the least wait
        await app.state.notifier.tick(clock.advance(seconds=5))
        await eventually(lambda: smtp_server.to(mail("v4")), timeout=20)
        assert "about 25 minutes behind" in smtp_server.to(mail("v4"))[0].text

        # the same delay delivered again changes nothing; Dr. Kim's delay reaches his
        # patient once it has settled
        await publish_floor(bootstrap, prefix, [delay])
        await publish_floor(bootstrap, prefix, [floor_event(
            ev.DelayAnnounced(provider_id="dr-kim", minutes=15), t0 + timedelta(minutes=3))])
        await notifier_has_read_everything(app, bootstrap, prefix)
        await app.state.notifier.tick(clock.advance(seconds=5))
        await eventually(lambda: smtp_server.to(mail("v5")), timeout=20)

        told = sorted(address for m in smtp_server.mails for address in m.to)
        assert told == sorted(mail(v) for v in ("v1", "v2", "v3", "v4", "v5"))
        assert len({m.message_id for m in smtp_server.mails}) == 5

        listed = await _listed(client)
        assert sorted((n["ticket_code"], n["kind"], n["channel"]) for n in listed) == [
            ("A-1", "delay_warning", "email"), ("A-2", "delay_warning", "email"),
            ("A-3", "delay_warning", "email"), ("A-4", "delay_warning", "email"),
            ("B-1", "delay_warning", "email")]
        await eventually(lambda: _all_sent(client), timeout=10)
        assert "@" not in orjson.dumps(listed).decode()
        status = (await client.get(f"/clinics/north/notifications/"
                                   f"{listed[0]['notification_id']}",
                                   headers=FRONT_DESK)).json()
        assert status["status"] == "sent" and status["attempts"] == 1
        assert status["trigger_event_ids"]

    sent = await read_topic(bootstrap, topic_name(NOTIFICATIONS, prefix), expect=5)
    sent_events = [ev.decode(r.value) for r in sent]
    assert sorted(e.payload.ticket_code for e in sent_events  # type: ignore[attr-defined]
                  if e.event_type == "notification.sent") == ["A-1", "A-2", "A-3", "A-4", "B-1"]
    assert all(b"@" not in r.value for r in sent)
    # eight contacts recorded, one erased, five read to send: who, what, when, never the value
    audit = [ev.decode(r.value) for r in await read_topic(bootstrap, topic_name(AUDIT, prefix),
                                                          expect=14)]
    assert sorted(e.event_type for e in audit) == (
        ["contact.erased"] + ["contact.read"] * 5 + ["contact.recorded"] * 8)
    reads = [e.payload for e in audit if e.event_type == "contact.read"]
    assert {r.purpose for r in reads} == {"send"}  # type: ignore[attr-defined]
    assert all(b"@" not in ev.encode(e) for e in audit)


async def _listed(client: httpx.AsyncClient, kind: str | None = None) -> list[dict[str, Any]]:
    query = f"?kind={kind}" if kind else ""
    answer = await client.get(f"/clinics/north/notifications{query}", headers=FRONT_DESK)
    listed: list[dict[str, Any]] = answer.json()["notifications"]
    return listed


async def _all_sent(client: httpx.AsyncClient) -> bool:
    listed = (await client.get("/clinics/north/notifications",
                               headers=FRONT_DESK)).json()["notifications"]
    return bool(listed) and all(n["status"] == "sent" for n in listed)


async def test_rate_limits_hold_and_a_held_warning_goes_out_when_the_window_ends(
    notifications_env: dict[str, Any], smtp_server: MailCatcher,
) -> None:
    env = {**notifications_env,
           "notifications_rules": rules_json(settle_seconds=0.2,
                                             min_minutes_between_messages=0.1,  # 6 s
                                             come_back_lead_minutes=10)}
    bootstrap, prefix = env["kafka_bootstrap"], env["topic_prefix"]
    clock = FakeClock(datetime.now(UTC))
    now = clock.now()
    app = create_app(NotificationsSettings(**env), clock=clock)
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as client:
        await publish_floor(bootstrap, prefix, [arrival("v1", "A-1", "dr-lee", now),
                                                arrival("v2", "A-2", "dr-kim", now)])
        await record_contact(client, "v1", "email", mail("v1"))
        await record_contact(client, "v2", "email", mail("v2"), wait_anywhere=True)
        await publish_estimates(bootstrap, prefix, [estimate("v1", "A-1", "dr-lee", 10, now),
                                                    estimate("v2", "A-2", "dr-kim", 40, now)])
        first = floor_event(ev.DelayAnnounced(provider_id="dr-lee", minutes=20), now)
        await publish_floor(bootstrap, prefix, [first])
        await publish_estimates(bootstrap, prefix, [estimate("v1", "A-1", "dr-lee", 30, now)])
        await eventually(lambda: smtp_server.to(mail("v1")), timeout=20)
        # worse news at once: a longer delay and a jump in the estimate, both held
        later = now + timedelta(seconds=1)
        await publish_floor(bootstrap, prefix, [floor_event(
            ev.DelayAnnounced(provider_id="dr-lee", minutes=45), later)])
        await publish_estimates(bootstrap, prefix, [
            estimate("v1", "A-1", "dr-lee", 55, later),
            estimate("v2", "A-2", "dr-kim", 8, later, position=1)])  # come back: never held
        await eventually(lambda: smtp_server.to(mail("v2")), timeout=20)
        assert smtp_server.to(mail("v2"))[0].text.startswith("Please come back now, you are next")
        await notifier_has_read_everything(app, bootstrap, prefix)
        assert len(smtp_server.to(mail("v1"))) == 1  # held, though everything is read
        # the window runs 6 s from the first warning: a tick just before it ends sends
        # nothing; the tick when it ends sends the held warning, once
        await app.state.notifier.tick(clock.set(now + timedelta(seconds=5.9)))
        assert len(await _listed(client, "delay_warning")) == 1
        await app.state.notifier.tick(clock.set(now + timedelta(seconds=6)))
        await eventually(lambda: len(smtp_server.to(mail("v1"))) == 2, timeout=20)
        assert len(await _listed(client, "delay_warning")) == 2
        second_mail = smtp_server.to(mail("v1"))[1]
        assert second_mail.text.startswith("Dr. Lee is running about 45 minutes behind")
        listed = await _listed(client, "come_back_now")
        assert [n["ticket_code"] for n in listed] == ["A-2"]
        # a kind there is not is refused, with the kinds there are (it listed nothing, 200)
        bogus = await client.get("/clinics/north/notifications?kind=bogus",
                                 headers=FRONT_DESK)
        assert bogus.status_code == 422, bogus.text
        assert all(k in bogus.json()["detail"] for k in ("kind", "delay_warning", "nurse_page"))


async def test_a_patient_waiting_outside_is_called_back_then_told_we_are_ready(
    notifications_env: dict[str, Any], smtp_server: MailCatcher,
) -> None:
    env = {**notifications_env, "notifications_rules": rules_json(come_back_lead_minutes=10)}
    bootstrap, prefix = env["kafka_bootstrap"], env["topic_prefix"]
    clock = FakeClock(datetime.now(UTC))
    now = clock.now()
    async with serving(create_app(NotificationsSettings(**env), clock=clock)) as url, \
            httpx.AsyncClient(base_url=url) as client:
        await publish_floor(bootstrap, prefix, [arrival("v17", "A-17", "dr-lee", now)])
        await record_contact(client, "v17", "email", mail("v17"), wait_anywhere=True,
                             delay_updates=False)
        await publish_estimates(bootstrap, prefix, [
            estimate("v17", "A-17", "dr-lee", 40, now),
            estimate("v17", "A-17", "dr-lee", 25, now + timedelta(seconds=1)),
            estimate("v17", "A-17", "dr-lee", 12, now + timedelta(seconds=2), position=1)])
        await eventually(lambda: smtp_server.to(mail("v17")), timeout=20)
        clock.advance(seconds=3)
        await publish_floor(bootstrap, prefix, [
            floor_event(ev.RoomReady(room_id="room-4"), now + timedelta(seconds=3))])
        await eventually(lambda: len(smtp_server.to(mail("v17"))) == 2, timeout=20)
        come_back, ready = smtp_server.to(mail("v17"))
        assert come_back.subject == "please come back now"
        assert ready.text == ("We are ready for you (ticket A-17): please come in now. "
                              "Room 4 is ready.")
        listed = (await client.get("/clinics/north/notifications",
                                   headers=FRONT_DESK)).json()["notifications"]
        assert [(n["ticket_code"], n["kind"]) for n in listed] == [
            ("A-17", "ready_for_you"), ("A-17", "come_back_now")]
        # the lobby screen sees the latest message per ticket, and nothing else
        told = (await client.get("/clinics/north/told",
                                 headers=auth("dev-screen"))).json()["told"]
        assert [(t["ticket_code"], t["kind"]) for t in told] == [("A-17", "ready_for_you")]
        assert set(told[0]) == {"ticket_code", "kind", "at"}
        # the next clinic day (a day is 25 hours at most), ticket codes start again: a new
        # A-17 is not marked with yesterday's patient's messages (kept three days)
        clock.set(now + timedelta(hours=26))
        told = (await client.get("/clinics/north/told",
                                 headers=auth("dev-screen"))).json()["told"]
        assert told == []


async def test_the_estimates_list_holds_the_waiting_visits_only(
    notifications_env: dict[str, Any],
) -> None:
    """A visit roomed or gone leaves the list (it kept every visit ever estimated, roomed
    ones too, for as long as the clinic had a visit a day); an estimate not renewed for
    12 hours is a visit nothing ended, not shown."""
    env = notifications_env
    bootstrap, prefix = env["kafka_bootstrap"], env["topic_prefix"]
    clock = FakeClock(datetime.now(UTC))
    now = clock.now()
    app = create_app(NotificationsSettings(**env), clock=clock)
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as client:
        await publish_floor(bootstrap, prefix, [arrival(v, t, "dr-lee", now) for v, t in
                                                (("v1", "A-1"), ("v2", "A-2"), ("v3", "A-3"))])
        await publish_estimates(bootstrap, prefix, [
            estimate(v, t, "dr-lee", 10 * n, now + timedelta(seconds=1), position=n)
            for n, (v, t) in enumerate((("v1", "A-1"), ("v2", "A-2"), ("v3", "A-3")), 1)])
        await publish_floor(bootstrap, prefix, [
            floor_event(ev.PatientRoomed(visit_id="v1", room_id="room-4"),
                        now + timedelta(seconds=2)),
            floor_event(ev.ArrivalCancelled(visit_id="v2", reason="left_without_being_seen"),
                        now + timedelta(seconds=3))])
        await notifier_has_read_everything(app, bootstrap, prefix)

        async def listed() -> list[dict[str, Any]]:
            answer = await client.get("/clinics/north/estimates", headers=FRONT_DESK)
            assert answer.status_code == 200, answer.text
            return list(answer.json()["estimates"])

        [row] = await listed()
        assert (row["visit_id"], row["position"]) == ("v3", 3)
        assert datetime.fromisoformat(row["estimated_at"]) == now + timedelta(seconds=1)
        clock.set(now + timedelta(hours=11, minutes=59))
        assert [r["visit_id"] for r in await listed()] == ["v3"]
        clock.set(now + timedelta(hours=12, seconds=2))
        assert await listed() == []
