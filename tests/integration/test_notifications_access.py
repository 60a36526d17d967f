"""Who may do what: every route's roles, clinic scoping, clear refusals, audited reads of
contact details, Idempotency-Key on contact commands, CORS for the nurse station."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest

from services.notifications.app import create_app
from shared import events as ev
from shared.settings import NotificationsSettings
from shared.topics import AUDIT, topic_name
from tests.helpers import auth, read_topic, serving
from tests.integration.notifications_support import (
    FRONT_DESK,
    arrival,
    publish_floor,
)

ROLES = ("front_desk", "kiosk", "nurse", "billing", "manager", "screen")
CONTACT = {"channel": "email", "address": "a17@patients.example.org", "consent": True}
NOTIFICATION = "n-0123456789abcdef01234567"

# (method, path, body, roles allowed)
ROUTES: list[tuple[str, str, Any, set[str]]] = [
    ("PUT", "/clinics/north/visits/v1/contact", CONTACT, {"front_desk"}),
    ("GET", "/clinics/north/visits/v1/contact", None, {"front_desk"}),
    ("PATCH", "/clinics/north/visits/v1/contact", {"wait_anywhere": True}, {"front_desk"}),
    ("DELETE", "/clinics/north/visits/v9/contact", None, {"front_desk"}),
    ("GET", "/clinics/north/notifications", None, {"front_desk", "nurse", "manager"}),
    ("GET", f"/clinics/north/notifications/{NOTIFICATION}", None,
     {"front_desk", "nurse", "manager"}),
    ("GET", "/clinics/north/alerts", None, {"nurse", "manager"}),
    ("GET", "/clinics/north/told", None, {"screen", "front_desk", "nurse", "manager"}),
    ("GET", "/clinics/north/estimates", None, {"front_desk", "nurse", "manager"}),
    ("GET", "/clinics/north/rules", None, {"front_desk", "nurse", "manager"}),
]


@pytest.fixture
async def service(notifications_env: dict[str, Any]) -> Any:
    credentials = [
        *({"name": f"dev {r}", "role": r, "token": f"dev-{r.replace('_', '-')}"} for r in ROLES),
        {"name": "south desk", "role": "front_desk", "clinics": ["south"],
         "token": "south-desk-token-0123456789"},
    ]
    env = {**notifications_env, "credentials": orjson.dumps(credentials).decode(),
           "notifications_cors_origins": ["http://127.0.0.1:8002"]}
    # the visits the contacts are for checked in at north (v1 to v3) and south (v1)
    now = datetime.now(UTC)
    await publish_floor(env["kafka_bootstrap"], env["topic_prefix"], [
        *(arrival(v, f"A-{n}", "dr-lee", now) for n, v in enumerate(("v1", "v2", "v3"), 1)),
        arrival("v1", "S-1", "dr-ng", now, clinic="south")])
    async with serving(create_app(NotificationsSettings(**env))) as url, \
            httpx.AsyncClient(base_url=url) as client:
        yield client


@pytest.mark.reliability(
    "every notifications route times every role",
    "allowed or refused as documented",
)
async def test_every_route_admits_only_its_roles_and_refuses_others_with_a_reason(
    service: httpx.AsyncClient,
) -> None:
    assert (await service.put("/clinics/north/visits/v1/contact", json=CONTACT,
                              headers=FRONT_DESK)).status_code == 200
    for method, path, body, allowed in ROUTES:
        anonymous = await service.request(method, path, json=body)
        assert anonymous.status_code == 401, (method, path)
        for role in ROLES:
            answer = await service.request(method, path, json=body,
                                           headers=auth(f"dev-{role.replace('_', '-')}"))
            if role in allowed:
                assert answer.status_code in (200, 204, 404), (method, path, role, answer.text)
            else:
                assert answer.status_code == 403, (method, path, role)
                assert role in answer.json()["detail"]
    stream = await service.get("/clinics/north/alerts/stream",
                               params={"access_token": "dev-screen"})
    assert stream.status_code == 403


@pytest.mark.reliability(
    "a credential for another clinic (notifications)",
    "refused",
)
async def test_a_credential_for_another_clinic_is_refused(service: httpx.AsyncClient) -> None:
    south = auth("south-desk-token-0123456789")
    refused = await service.put("/clinics/north/visits/v1/contact", json=CONTACT, headers=south)
    assert refused.status_code == 403 and "north" in refused.json()["detail"]
    assert (await service.put("/clinics/south/visits/v1/contact", json=CONTACT,
                              headers=south)).status_code == 200


async def test_contacts_need_consent_and_a_valid_address_and_sms_needs_a_gateway(
    service: httpx.AsyncClient,
) -> None:
    path = "/clinics/north/visits/v1/contact"
    no_consent = await service.put(path, json={**CONTACT, "consent": False}, headers=FRONT_DESK)
    assert no_consent.status_code == 422 and "consent" in no_consent.json()["detail"]
    bad_mail = await service.put(path, json={**CONTACT, "address": "nobody"},
                                 headers=FRONT_DESK)
    assert bad_mail.status_code == 422 and "address" in bad_mail.json()["detail"]
    bad_phone = await service.put(path, json={"channel": "sms", "address": "555-1234",
                                              "consent": True}, headers=FRONT_DESK)
    assert bad_phone.status_code == 422 and "address" in bad_phone.json()["detail"]
    no_gateway = await service.put(path, json={"channel": "sms", "address": "+15551234567",
                                               "consent": True}, headers=FRONT_DESK)
    assert no_gateway.status_code == 422 and "SMS" in no_gateway.json()["detail"]
    missing = await service.get(f"/clinics/north/notifications/{NOTIFICATION}",
                                headers=FRONT_DESK)
    assert missing.status_code == 404 and NOTIFICATION in missing.json()["detail"]
    nothing = await service.get("/clinics/north/visits/v404/contact", headers=FRONT_DESK)
    assert nothing.status_code == 404 and "v404" in nothing.json()["detail"]


async def test_a_retried_contact_request_is_one_recording(service: httpx.AsyncClient) -> None:
    path = "/clinics/north/visits/v2/contact"
    headers = {**FRONT_DESK, "Idempotency-Key": "desk-v2-contact"}
    first = await service.put(path, json=CONTACT, headers=headers)
    again = await service.put(path, json=CONTACT, headers=headers)
    other = await service.put(path, json={**CONTACT, "wait_anywhere": True}, headers=headers)
    assert (first.json()["replayed"], again.json()["replayed"]) == (False, True)
    assert first.json()["address_hint"] == "a•••@patients.example.org"
    assert "a17@" not in first.text
    assert other.status_code == 422 and "Idempotency-Key" in other.json()["detail"]


@pytest.mark.reliability(
    "contact details read back",
    "an audit event (who, what, when) without the value",
)
async def test_reading_contact_details_back_is_audited_without_the_value(
    service: httpx.AsyncClient, notifications_env: dict[str, Any],
) -> None:
    saved = await service.put("/clinics/north/visits/v3/contact", json=CONTACT,
                              headers=FRONT_DESK)
    assert saved.status_code == 200, saved.text
    read = await service.get("/clinics/north/visits/v3/contact", headers=FRONT_DESK)
    assert read.json()["address"] == CONTACT["address"]
    records = await read_topic(notifications_env["kafka_bootstrap"],
                               topic_name(AUDIT, notifications_env["topic_prefix"]), expect=2)
    audit = [ev.decode(r.value) for r in records]
    [seen] = [e for e in audit if e.event_type == "contact.read"]
    assert (seen.payload.reader, seen.payload.purpose,  # type: ignore[attr-defined]
            seen.payload.visit_id) == ("dev front_desk", "front_desk_view", "v3")  # type: ignore[attr-defined]
    assert all(b"a17@" not in r.value for r in records)


async def test_the_nurse_station_page_may_read_alerts_across_origins(
    service: httpx.AsyncClient,
) -> None:
    answer = await service.get("/clinics/north/alerts", params={"access_token": "dev-nurse"},
                               headers={"Origin": "http://127.0.0.1:8002"})
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == "http://127.0.0.1:8002"
    stranger = await service.get("/clinics/north/alerts", params={"access_token": "dev-nurse"},
                                 headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in stranger.headers
    spec = (await service.get("/openapi.json")).json()
    assert "/clinics/{clinic_id}/alerts/stream" in spec["paths"]
    assert spec["components"]["schemas"]["ContactIn"]["examples"]
