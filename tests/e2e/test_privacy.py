"""PHI never leaves its place: a patient's name, birth date, initials, phone number and
email address are fed in where a clinic really enters them (a schedule with extra columns,
the kiosk, the front desk's contact form, a mistyped contact, the feedback form's free
text after checkout), the four services run as real processes through a whole visit with
a delay warning sent by SMS, and then every record on every topic, every log line and
every screen and board is scanned for them."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from shared.admin import ensure_topics
from shared.topics import ALL_TOPICS, topic_name
from tests.helpers import ServiceProcess, auth, eventually, read_topic
from tests.integration.notifications_support import SMS_SECRET, MailCatcher, receiving

NAME = "Margaret Bellweather"
DOB = "1951-03-09"
PHONE = "+15550187342"
EMAIL = "margaret.bellweather@example.org"
# what would give her away, in the forms it could take in a line of text
PHI = [NAME, "Bellweather", "Margaret", DOB, "1951", "03/09/1951", PHONE, "15550187342",
       "5550187342", "555-018-7342", EMAIL]


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
                {"default": {"settle_seconds": 0.5, "clinic_name": "North Clinic"}}).decode(),
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
        finally:
            for service in services.values():
                service.stop()

    found: dict[str, list[str]] = {}
    for spec in ALL_TOPICS:
        for record in await read_topic(kafka_bootstrap, topic_name(spec, topic_prefix)):
            text = (record.value or b"").decode("utf-8", "replace")
            if hits := leaks(text):
                found.setdefault(f"topic {spec.name}", []).extend(hits)
    for name, log in logs.items():
        for number, line in enumerate(log.read_text().splitlines(), 1):
            if hits := leaks(line):
                found.setdefault(f"{name}.log line {number}", []).extend(hits)
    for where, text in screens.items():
        if hits := leaks(text):
            found.setdefault(where, []).extend(hits)
    assert found == {}
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
    return screens
