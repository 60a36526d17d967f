"""PHI never leaves its place: a patient's name, birth date, initials, phone number and
email address are fed in where a clinic really enters them (a schedule with extra columns,
the kiosk, the front desk's contact form, a mistyped contact, the feedback form's free
text after checkout, a complaint the front desk logs with what the patient said), the four
services run as real processes through a whole visit with a delay warning sent by SMS,
and then every record on every topic (told waits, feedback and complaint events included),
every log line, every screen and board and every answer but the manager's view of one
complaint is scanned for them, and so is every notifications key in Redis but the three
places the words may live (contacts, feedback answers' and complaints' ``text``)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from shared.admin import ensure_topics
from shared.topics import ALL_TOPICS, topic_name
from tests.helpers import ServiceProcess, auth, eventually, read_topic
from tests.integration.notifications_support import SMS_SECRET, MailCatcher, receiving

NAME = "Margaret Bellweather"
DOB = "1951-03-09"
PHONE = "+15550187342"
EMAIL = "margaret.bellweather@example.org"
MRN = "MRN0049381"  # her chart number, as a patient reads it off a letter
# what would give her away, in the forms it could take in a line of text
PHI = [NAME, "Bellweather", "Margaret", DOB, "1951", "03/09/1951", PHONE, "15550187342",
       "5550187342", "555-018-7342", EMAIL, MRN, "0049381"]
# what she told the front desk on the phone, PHI and all: kept for the manager only
COMPLAINT = f"{NAME} ({MRN}, born {DOB}, {PHONE}) waited 50 minutes past what she was told"


# each as a whole token: "1951" inside a timestamp's microseconds or a port is not her
_PATTERNS = {secret: re.compile(r"(?<![0-9A-Za-z])" + re.escape(secret) + r"(?![0-9A-Za-z])",
                                re.IGNORECASE) for secret in PHI}


def leaks(text: str) -> list[str]:
    return [secret for secret, pattern in _PATTERNS.items() if pattern.search(text)]


@pytest.mark.reliability(
    "names, birth dates, initials, phone numbers and emails entered at every door",
    "none of them in any event on any topic, any log line, any screen or board",
)
async def test_identifying_data_never_reaches_events_logs_or_screens(
    kafka_bootstrap: str, redis_url: str, topic_prefix: str, tmp_path: Path,
    smtp_server: MailCatcher,
) -> None:
    await ensure_topics(kafka_bootstrap, topic_prefix)
    async with receiving(SMS_SECRET) as gateway:
        env = {
            "CLINICFLOW_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "CLINICFLOW_REDIS_URL": redis_url,
            "CLINICFLOW_TOPIC_PREFIX": topic_prefix,
            "CLINICFLOW_REDIS_PREFIX": topic_prefix.rstrip("."),
            "CLINICFLOW_FLOW_GROUP_ID": f"{topic_prefix}flow",
            "CLINICFLOW_NOTIFICATIONS_GROUP_ID": f"{topic_prefix}notifications",
            "CLINICFLOW_BILLING_GROUP_ID": f"{topic_prefix}billing",
            "CLINICFLOW_CHECKIN_GROUP_ID": f"{topic_prefix}checkin",
            "CLINICFLOW_SMS_GATEWAY_URL": gateway.url,
            "CLINICFLOW_SMS_HMAC_SECRET": SMS_SECRET,
            "CLINICFLOW_SMTP_HOST": "127.0.0.1",
            "CLINICFLOW_SMTP_PORT": str(smtp_server.port),
            "CLINICFLOW_NOTIFICATIONS_RULES": orjson.dumps(
                # no quiet hours: the run is on the machine's clock, at any hour
                {"default": {"settle_seconds": 0.5, "clinic_name": "North Clinic",
                             "quiet_hours": None}}).decode(),
            "CLINICFLOW_LOG_FORMAT": "json",
        }
        logs = {name: tmp_path / f"{name}.log"
                for name in ("checkin", "flow", "notifications", "billing")}
        services = {name: ServiceProcess(name, env, log) for name, log in logs.items()}
        for service in services.values():
            service.start()
        try:
            for service in services.values():
                await service.wait_ready()
            screens = await _a_visit_with_phi_entered(services, gateway)
            screens.update(await _complaints_keep_the_words_for_the_manager(
                services["notifications"].url, screens.pop("visit")))
        finally:
            for service in services.values():
                service.stop()
        stored = await _notifications_redis(redis_url, topic_prefix.rstrip("."))
        # the scan read the stores issue 17 added (their keys, the words left out)
        assert any(":complaint:" in where for where in stored), sorted(stored)[:20]
        assert any(":feedback:" in where for where in stored), sorted(stored)[:20]

    found: dict[str, list[str]] = {}
    types: set[str] = set()
    for spec in ALL_TOPICS:
        for record in await read_topic(kafka_bootstrap, topic_name(spec, topic_prefix)):
            text = (record.value or b"").decode("utf-8", "replace")
            types.add(orjson.loads(record.value or b"{}").get("event_type", "?")
                      if text.startswith("{") else "?")
            if hits := leaks(text):
                found.setdefault(f"topic {spec.name}", []).extend(hits)
    for where, text in stored.items():
        if hits := leaks(text):
            found.setdefault(f"redis {where}", []).extend(hits)
    for name, log in logs.items():
        for number, line in enumerate(log.read_text().splitlines(), 1):
            if hits := leaks(line):
                found.setdefault(f"{name}.log line {number}", []).extend(hits)
    for where, text in screens.items():
        if hits := leaks(text):
            found.setdefault(where, []).extend(hits)
    assert found == {}
    # the scan read what issue 17 added: told waits, the answer, the complaints' steps
    assert {"wait.told", "feedback.given", "complaint.logged", "complaint.acknowledged",
            "complaint.resolved"} <= types, types
    # the one place a phone number may go: the SMS gateway, which has to dial it
    assert any(message["to"] == PHONE for message in gateway.accepted)


async def _a_visit_with_phi_entered(services: dict[str, ServiceProcess],
                                    gateway: Any) -> dict[str, str]:
    checkin, flow = services["checkin"].url, services["flow"].url
    notifications, billing = services["notifications"].url, services["billing"].url
    desk, kiosk, nurse = auth("dev-front-desk"), auth("dev-kiosk"), auth("dev-nurse")
    now = datetime.now(UTC)
    # today's appointment: five minutes from now, unless that is already tomorrow (a run
    # just before midnight UTC looked for today's and found none)
    soon = (now + timedelta(minutes=5) if (now + timedelta(minutes=5)).date() == now.date()
            else now).isoformat()
    schedule = ("appointment_id,patient_ref,provider_id,visit_type,scheduled_at,dob,initials,"
                "patient_name,phone\n"
                f"apt-1,p-001,dr-lee,follow_up,{soon},{DOB},MB,{NAME},{PHONE}\n")
    async with httpx.AsyncClient(timeout=10) as client:
        imported = await client.post(
            f"{checkin}/clinics/north/schedule/csv", content=schedule,
            headers={**desk, "Content-Type": "text/csv", "Idempotency-Key": "import-1"})
        assert imported.status_code in (200, 201), imported.text
        assert not leaks(imported.text)  # ignored columns are named, never quoted

        # a patient types the wrong birth date, then the right one
        wrong = await client.post(f"{checkin}/clinics/north/kiosk/check-ins",
                                  json={"date_of_birth": "1951-09-03", "initials": "MB"},
                                  headers=kiosk)
        assert wrong.status_code == 404 and "1951" not in wrong.text
        checked_in = await client.post(f"{checkin}/clinics/north/kiosk/check-ins",
                                       json={"date_of_birth": DOB, "initials": "M.B."},
                                       headers={**kiosk, "Idempotency-Key": "kiosk-1"})
        assert checked_in.status_code == 201, checked_in.text
        visit, ticket = checked_in.json()["visit_id"], checked_in.json()["ticket_code"]

        # the front desk mistypes the contact first: refused without echoing it back
        mistyped = await client.put(f"{notifications}/clinics/north/visits/{visit}/contact",
                                    json={"channel": "email", "address": PHONE,
                                          "consent": True}, headers=desk)
        assert mistyped.status_code == 422 and not leaks(mistyped.text)
        for channel, address in (("email", EMAIL), ("sms", PHONE)):
            saved = await client.put(
                f"{notifications}/clinics/north/visits/{visit}/contact",
                json={"channel": channel, "address": address, "consent": True},
                headers={**desk, "Idempotency-Key": f"contact-{channel}"})
            assert saved.status_code == 200, saved.text
            assert not leaks(saved.text)

        async def on_board() -> Any:
            answer = await client.get(f"{flow}/clinics/north/board", headers=nurse)
            return answer.status_code == 200 and any(
                w["ticket_code"] == ticket for w in answer.json()["waiting"])

        await eventually(on_board, timeout=20)
        delay = await client.post(f"{flow}/clinics/north/delays",
                                  json={"provider_id": "dr-lee", "minutes": 40,
                                        "reason": "running late"}, headers=nurse)
        assert delay.status_code == 202, delay.text
        await eventually(lambda: any(m["to"] == PHONE for m in gateway.accepted), timeout=30)

        screens = {
            "waiting-room page": (await client.get(
                f"{flow}/screens/north/waiting-room?token=dev-screen")).text,
            "board (screen)": (await client.get(f"{flow}/clinics/north/board",
                                                headers=auth("dev-screen"))).text,
            "board (manager)": (await client.get(f"{flow}/clinics/north/board",
                                                 headers=auth("dev-manager"))).text,
            "notifications list": (await client.get(
                f"{notifications}/clinics/north/notifications", headers=desk)).text,
            "told (screen)": (await client.get(f"{notifications}/clinics/north/told",
                                               headers=auth("dev-screen"))).text,
            "ticket lookup": (await client.get(
                f"{checkin}/clinics/north/tickets/{ticket}/wait", headers=kiosk)).text,
            "schedule": (await client.get(f"{checkin}/clinics/north/schedule",
                                          headers=desk)).text,
        }
        roomed = await client.post(f"{flow}/clinics/north/visits/{visit}/room",
                                   json={"room_id": "room-4"}, headers=nurse)
        assert roomed.status_code == 202
        out = await client.post(f"{billing}/clinics/north/visits/{visit}/checkout",
                                json={"cpt_codes": ["99213"], "icd10_codes": ["J06.9"]},
                                headers=auth("dev-billing"))
        assert out.status_code in (200, 201, 202), out.text
        # after checkout the patient gets a feedback link and writes who they are in it
        feedback = await eventually(lambda: next(
            (m["text"] for m in gateway.accepted if "/feedback/" in m["text"]), None),
            timeout=30)
        form = f"{notifications}/feedback/{feedback.rsplit('/feedback/', 1)[1].split()[0]}"
        answered = await client.post(form, data={
            "rating": "2", "wait": "longer",
            "comment": f"{NAME} here, born {DOB}, call me on {PHONE}: my knee still hurts"})
        assert answered.status_code == 200, answered.text
        screens["feedback answered"] = answered.text
        screens["feedback link again"] = (await client.get(form)).text
        for name, url in (("checkin", checkin), ("flow", flow),
                          ("notifications", notifications), ("billing", billing)):
            screens[f"{name} metrics"] = (await client.get(f"{url}/metrics")).text
    screens["visit"] = visit
    return screens


async def _complaints_keep_the_words_for_the_manager(notifications: str,
                                                     visit: str) -> dict[str, str]:
    """The front desk logs her phone call with her words; the low rating raised another.
    Every answer but the manager's view of one complaint is a screen to scan; that view
    is the one place the words are shown, and it shows them."""
    desk, manager = auth("dev-front-desk"), auth("dev-manager")
    screens: dict[str, str] = {}
    async with httpx.AsyncClient(base_url=notifications, timeout=10) as client:
        logged = await client.post("/clinics/north/complaints", json={
            "category": "wait", "source": "phone", "visit_id": visit, "text": COMPLAINT},
            headers={**desk, "Idempotency-Key": "complaint-1"})
        assert logged.status_code == 201, logged.text
        screens["complaint logged (front desk)"] = logged.text
        complaint = logged.json()["complaint_id"]

        async def both_listed() -> Any:
            answer = await client.get("/clinics/north/complaints", headers=desk)
            return answer.status_code == 200 and len(answer.json()["complaints"]) >= 2 \
                and answer

        screens["follow-up list (front desk)"] = (await eventually(both_listed,
                                                                   timeout=30)).text
        screens["follow-up page (front desk)"] = (await client.get(
            "/screens/north/complaints?token=dev-front-desk")).text
        one = f"/clinics/north/complaints/{complaint}"
        refused = await client.get(one, headers=desk)
        assert refused.status_code == 403
        screens["one complaint (front desk, refused)"] = refused.text
        for step in ("acknowledge", "resolve"):
            done = await client.post(f"{one}/{step}", headers=desk)
            assert done.status_code == 200, done.text
            screens[f"complaint {step}d (front desk)"] = done.text
        screens["all complaints (manager list)"] = (await client.get(
            "/clinics/north/complaints?all=true", headers=manager)).text
        screens["satisfaction (manager)"] = (await client.get(
            "/clinics/north/satisfaction", headers=manager)).text
        screens["accuracy (manager)"] = (await client.get(
            "/clinics/north/accuracy", headers=manager)).text
        # the manager's view: the words are kept and shown there, and only there
        assert (await client.get(one, headers=manager)).json()["text"] == COMPLAINT
        for listed in orjson.loads(screens["all complaints (manager list)"])["complaints"]:
            if listed["source"] == "low_rating":
                low = await client.get(f"/clinics/north/complaints/{listed['complaint_id']}",
                                       headers=manager)
                assert NAME in low.json()["text"]  # what she wrote on the form
    return screens


# where a patient's words or contact may be kept (field ``text`` / the contact hash)
_ALLOWED = re.compile(r":notifications:(contact:.*|feedback:[^:]+:[^:]+#text"
                      r"|complaint:[^:]+:[^:]+#text)$")


async def _notifications_redis(redis_url: str, prefix: str) -> dict[str, str]:
    """Every notifications key in Redis as text, a hash field by field (``key#field``),
    but the places the words may live."""
    redis = Redis.from_url(redis_url)
    texts: dict[str, str] = {}
    try:
        async for raw in redis.scan_iter(match=f"{prefix}:notifications:*", count=500):
            key = raw.decode()
            kind = (await redis.type(raw)).decode()
            if kind == "hash":
                for field, value in (await redis.hgetall(raw)).items():
                    texts[f"{key}#{field.decode()}"] = value.decode("utf-8", "replace")
            elif kind == "string":
                texts[key] = (await redis.get(raw) or b"").decode("utf-8", "replace")
            elif kind in ("list", "zset", "set"):
                members = (await redis.lrange(raw, 0, -1) if kind == "list" else
                           await redis.zrange(raw, 0, -1) if kind == "zset" else
                           await redis.smembers(raw))
                texts[key] = "\n".join(m.decode("utf-8", "replace") for m in members)
            elif kind == "stream":
                texts[key] = repr(await redis.xrange(raw))
    finally:
        await redis.aclose()
    return {where: text for where, text in texts.items() if not _ALLOWED.search(where)}
