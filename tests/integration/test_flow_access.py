"""Who may do what on flow's API: every route times every role, and a credential for
one clinic reads, streams and changes nothing of another clinic."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from services.flow.app import create_app
from shared import events as ev
from shared.admin import ensure_topics
from shared.settings import ROLES, FlowSettings
from tests.helpers import eventually, producer, serving

TOKENS = {role: f"{role}-north-token-000000" for role in ROLES}
SOUTH_NURSE = "nurse-south-token-0000000"

# route -> roles allowed (everything else: 403; no token: 401)
ROUTES: list[tuple[str, str, dict[str, Any] | None, set[str]]] = [
    ("GET", "/clinics/north/board", None, {"screen", "nurse", "front_desk", "manager"}),
    ("POST", "/clinics/north/rooms/r1/ready", None, {"nurse", "manager"}),
    ("POST", "/clinics/north/rooms/r2/out-of-service", {"reason": "leak"},
     {"nurse", "manager"}),
    ("POST", "/clinics/north/visits/v1/room", {"room_id": "r1"}, {"nurse", "manager"}),
    ("POST", "/clinics/north/visits/v1/provider-in", {}, {"nurse", "manager"}),
    ("POST", "/clinics/north/delays", {"provider_id": "dr-lee", "minutes": 10},
     {"nurse", "front_desk", "manager"}),
    ("DELETE", "/clinics/north/delays/dr-lee", None, {"nurse", "front_desk", "manager"}),
    ("POST", "/clinics/north/undo", {"event_id": "e1"}, {"nurse", "manager"}),
]


@pytest.fixture
async def flow_url(kafka_bootstrap: str, redis_url: str,
                   topic_prefix: str) -> Any:
    await ensure_topics(kafka_bootstrap, topic_prefix)
    credentials = [{"name": f"north {role}", "role": role, "clinics": ["north"],
                    "token": token} for role, token in TOKENS.items()]
    credentials.append({"name": "south nurse", "role": "nurse", "clinics": ["south"],
                        "token": SOUTH_NURSE})
    settings = FlowSettings(kafka_bootstrap=kafka_bootstrap, redis_url=redis_url,
                            topic_prefix=topic_prefix, redis_prefix=topic_prefix.rstrip("."),
                            flow_group_id=f"{topic_prefix}flow",
                            credentials=json.dumps(credentials),
                            flow_sse_max_per_credential=2)
    app = create_app(settings)
    async with serving(app) as url:
        async with producer(kafka_bootstrap) as client:
            for payload in (ev.RoomReady(room_id="r1"), ev.RoomReady(room_id="r2"),
                            ev.PatientArrived(visit_id="v1", ticket_code="A-1",
                                              provider_id="dr-lee", visit_type="follow_up")):
                event = ev.make_event(payload, clinic_id="north", source="test")
                await client.send_and_wait(f"{topic_prefix}clinicflow.floor.v1",
                                           ev.encode(event), key=b"north")

        async def has_v1() -> bool:
            raw = await app.state.projection.store.board("north")
            return raw is not None and b'"v1"' in raw

        await eventually(has_v1)
        yield url


async def test_every_route_refuses_every_role_it_does_not_name(flow_url: str) -> None:
    async with httpx.AsyncClient(base_url=flow_url) as client:
        for method, path, body, allowed in ROUTES:
            anonymous = await client.request(method, path, json=body)
            assert anonymous.status_code == 401, (method, path)
            for role, token in TOKENS.items():
                answer = await client.request(method, path, json=body, headers={
                    "Authorization": f"Bearer {token}", "Idempotency-Key": f"{method}{path}"})
                if role in allowed:
                    # past the door: an undo of an event the clinic never had is refused
                    # as unknown (404); the rest is accepted, or refused by the floor's
                    # state (409: provider-in before the board shows the rooming; 404: a
                    # delay cleared already, or not yet on the board)
                    passed = ((404,) if path.endswith("/undo") else
                              (202, 404) if method == "DELETE" else (200, 202, 409))
                    assert answer.status_code in passed, (method, path, role, answer.text)
                else:
                    assert answer.status_code == 403, (method, path, role)
                    assert role in answer.json()["detail"]


async def test_the_browser_s_favicon_request_is_answered_without_a_404(flow_url: str) -> None:
    async with httpx.AsyncClient(base_url=flow_url) as client:
        answer = await client.get("/favicon.ico")
    assert answer.status_code == 204 and answer.content == b""


async def test_a_credential_for_one_clinic_sees_and_changes_nothing_of_another(
    flow_url: str,
) -> None:
    south = {"Authorization": f"Bearer {SOUTH_NURSE}"}
    async with httpx.AsyncClient(base_url=flow_url) as client:
        for method, path, body, allowed in ROUTES:
            if "nurse" not in allowed:
                continue
            answer = await client.request(method, path, json=body, headers=south)
            assert answer.status_code == 403, (method, path)
            assert "north" in answer.json()["detail"]
        stream = await client.get("/clinics/north/stream", headers=south)
        assert stream.status_code == 403
        listing = await client.get("/clinics", headers=south)
        assert "north" not in listing.json()["clinics"]


async def test_the_screen_role_sees_ticket_codes_and_ranges_only(flow_url: str) -> None:
    async with httpx.AsyncClient(base_url=flow_url) as client:
        board = (await client.get("/clinics/north/board", headers={
            "Authorization": f"Bearer {TOKENS['screen']}"})).json()
    assert set(board["waiting"][0]) == {"ticket_code", "provider_id", "position",
                                        "wait_minutes", "low", "high"}
    assert "operations" not in board and "in_rooms" not in board


async def test_live_connections_are_limited_per_credential(flow_url: str) -> None:
    headers = {"Authorization": f"Bearer {TOKENS['screen']}"}
    async with httpx.AsyncClient(base_url=flow_url, timeout=5) as client:
        async with client.stream("GET", "/clinics/north/stream", headers=headers) as one, \
                client.stream("GET", "/clinics/north/stream", headers=headers) as two:
            assert one.status_code == two.status_code == 200
            third = await client.get("/clinics/north/stream", headers=headers)
            assert third.status_code == 429
        # closed connections are given back
        async with client.stream("GET", "/clinics/north/stream", headers=headers) as again:
            assert again.status_code == 200


async def test_oversized_bodies_are_refused_before_anything_is_published(
    flow_url: str,
) -> None:
    async with httpx.AsyncClient(base_url=flow_url) as client:
        answer = await client.post(
            "/clinics/north/delays", content=b"{" + b" " * 300_000 + b"}",
            headers={"Authorization": f"Bearer {TOKENS['nurse']}",
                     "Content-Type": "application/json"})
    assert answer.status_code == 413
    assert "larger than" in answer.json()["detail"]
