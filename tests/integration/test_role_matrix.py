"""One role matrix over all four services: every route of every app (read from
``app.routes``, so a new route is covered the day it is added and fails here until its
policy is declared) times every role and no credential, allowed or refused as the
services' READMEs document; and object-level checks: a credential for clinic north
reads, streams and changes nothing of clinic south, ids swapped in paths and bodies.

The matrix is written to ``test-artifacts/role-matrix.md`` after every run and to
``docs/security.md`` with ``CLINICFLOW_UPDATE_REPORTS=1`` (like the reliability report).

The four services come from ``all_services`` (tests/integration/services_support.py),
shared with ``test_api_fuzz.py``.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from starlette.routing import Mount

from shared.settings import ROLES
from tests.helpers import eventually
from tests.integration.services_support import NONE, Services, bearer

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("checkin", "flow", "notifications", "billing")
EVERY_ROLE: tuple[str, ...] = (*ROLES, NONE)
PUBLIC = "public"

# ----------------------------------------------------------------- the policy
# ONE table: service -> "METHOD /path" -> the roles allowed (PUBLIC: no credential needed).
# It says what each service's README says; a route of an app missing here fails the test.

FRONT_DESK_OR_MANAGER = frozenset({"front_desk", "manager"})
BOARD_READERS = frozenset({"screen", "nurse", "front_desk", "manager"})
FLOOR_STAFF = frozenset({"nurse", "manager"})
DELAY_STAFF = frozenset({"nurse", "front_desk", "manager"})
NOTIFY_STAFF = frozenset({"front_desk", "nurse", "manager"})
BILLING_DESK = frozenset({"billing", "front_desk", "manager"})
OPERATIONS = {"GET /favicon.ico": PUBLIC,
              "GET /healthz": PUBLIC, "GET /readyz": PUBLIC, "GET /metrics": PUBLIC,
              "GET /openapi.json": PUBLIC, "GET /docs": PUBLIC, "GET /redoc": PUBLIC,
              "GET /docs/oauth2-redirect": PUBLIC,
              # Swagger UI's and ReDoc's scripts and styles, served by the service itself
              "GET /docs-assets": PUBLIC}

# a business day the drawer counts and reconciliation take (a window ending at the
# clinic's today): a week ago, whenever the suite runs, in any clinic's zone
A_WEEK_AGO = (datetime.now(UTC) - timedelta(days=7)).date().isoformat()

POLICY: dict[str, dict[str, frozenset[str] | str]] = {
    "checkin": {
        **OPERATIONS,
        "GET /static": PUBLIC,
        "POST /clinics/{clinic_id}/schedule/csv": FRONT_DESK_OR_MANAGER,
        "GET /clinics/{clinic_id}/directory": frozenset(ROLES),
        "POST /clinics/{clinic_id}/schedule/fhir": FRONT_DESK_OR_MANAGER,
        "GET /clinics/{clinic_id}/schedule": FRONT_DESK_OR_MANAGER,
        "POST /clinics/{clinic_id}/arrivals": FRONT_DESK_OR_MANAGER,
        "POST /clinics/{clinic_id}/visits/{visit_id}/cancel": FRONT_DESK_OR_MANAGER,
        "GET /clinics/{clinic_id}/no-shows": FRONT_DESK_OR_MANAGER,
        "POST /clinics/{clinic_id}/kiosk/check-ins": frozenset({"kiosk", "front_desk"}),
        "GET /clinics/{clinic_id}/visits/{visit_id}/wait":
            frozenset({"kiosk", "front_desk", "manager"}),
        "GET /clinics/{clinic_id}/tickets/{ticket_code}/wait":
            frozenset({"kiosk", "front_desk", "manager"}),
        "GET /kiosk/{clinic_id}": PUBLIC,
        "POST /clinics/{clinic_id}/fhir/Appointment": FRONT_DESK_OR_MANAGER,
        "PUT /clinics/{clinic_id}/fhir/Appointment/{resource_id}": FRONT_DESK_OR_MANAGER,
        "PUT /clinics/{clinic_id}/fhir/Encounter/{resource_id}": FRONT_DESK_OR_MANAGER,
        "POST /clinics/{clinic_id}/fhir": FRONT_DESK_OR_MANAGER,
        "POST /clinics/{clinic_id}/fhir/subscription": FRONT_DESK_OR_MANAGER,
        "GET /clinics/{clinic_id}/fhir/Encounter": frozenset({"front_desk", "nurse", "manager"}),
        "GET /clinics/{clinic_id}/fhir/Appointment":
            frozenset({"front_desk", "nurse", "manager"}),
    },
    "flow": {
        **OPERATIONS,
        "GET /static": PUBLIC,
        "GET /clinics": BOARD_READERS,
        "GET /clinics/{clinic_id}/board": BOARD_READERS,
        "GET /clinics/{clinic_id}/stream": BOARD_READERS,
        "POST /clinics/{clinic_id}/rooms/{room_id}/ready": FLOOR_STAFF,
        "POST /clinics/{clinic_id}/rooms/{room_id}/out-of-service": FLOOR_STAFF,
        "POST /clinics/{clinic_id}/visits/{visit_id}/room": FLOOR_STAFF,
        "POST /clinics/{clinic_id}/visits/{visit_id}/provider-in": FLOOR_STAFF,
        "POST /clinics/{clinic_id}/delays": DELAY_STAFF,
        "DELETE /clinics/{clinic_id}/delays/{provider_id}": DELAY_STAFF,
        "POST /clinics/{clinic_id}/undo": FLOOR_STAFF,
        "GET /screens/{clinic_id}/waiting-room": PUBLIC,
        "GET /screens/{clinic_id}/nurse": PUBLIC,
        "GET /screens/{clinic_id}/operations": PUBLIC,
    },
    "notifications": {
        **OPERATIONS,
        "PUT /clinics/{clinic_id}/visits/{visit_id}/contact": frozenset({"front_desk"}),
        "GET /clinics/{clinic_id}/visits/{visit_id}/contact": frozenset({"front_desk"}),
        "PATCH /clinics/{clinic_id}/visits/{visit_id}/contact": frozenset({"front_desk"}),
        "DELETE /clinics/{clinic_id}/visits/{visit_id}/contact": frozenset({"front_desk"}),
        "GET /clinics/{clinic_id}/notifications": NOTIFY_STAFF,
        "GET /clinics/{clinic_id}/notifications/{notification_id}": NOTIFY_STAFF,
        "GET /clinics/{clinic_id}/told": BOARD_READERS,
        "GET /clinics/{clinic_id}/alerts": FLOOR_STAFF,
        "GET /clinics/{clinic_id}/alerts/stream": FLOOR_STAFF,
        "GET /clinics/{clinic_id}/estimates": NOTIFY_STAFF,
        "GET /clinics/{clinic_id}/rules": NOTIFY_STAFF,
        "GET /clinics/{clinic_id}/accuracy": frozenset({"manager"}),
        "GET /clinics/{clinic_id}/satisfaction": frozenset({"manager"}),
        "POST /clinics/{clinic_id}/complaints": frozenset({"front_desk", "manager"}),
        "GET /clinics/{clinic_id}/complaints": frozenset({"front_desk", "manager"}),
        # the manager's view: the only one with what the patient said
        "GET /clinics/{clinic_id}/complaints/{complaint_id}": frozenset({"manager"}),
        "POST /clinics/{clinic_id}/complaints/{complaint_id}/acknowledge":
            frozenset({"front_desk", "manager"}),
        "POST /clinics/{clinic_id}/complaints/{complaint_id}/resolve":
            frozenset({"front_desk", "manager"}),
        # the patient's feedback form: its signed link is the credential
        "GET /feedback/{token}": PUBLIC,
        "POST /feedback/{token}": PUBLIC,
        # the follow-up list's page shell: no data, its script reads the routes above
        "GET /screens/{clinic_id}/complaints": PUBLIC,
        "GET /static": PUBLIC,
    },
    "billing": {
        **OPERATIONS,
        "PUT /clinics/{clinic_id}/visits/{visit_id}/coverage": BILLING_DESK,
        "POST /clinics/{clinic_id}/visits/{visit_id}/checkout": BILLING_DESK,
        "POST /clinics/{clinic_id}/visits/{visit_id}/payments": frozenset({"billing"}),
        "POST /clinics/{clinic_id}/visits/{visit_id}/payments/{payment_id}/refunds":
            frozenset({"billing"}),
        "POST /clinics/{clinic_id}/visits/{visit_id}/entries/{entry_id}/void":
            frozenset({"manager"}),
        "POST /clinics/{clinic_id}/visits/{visit_id}/reprice": frozenset({"billing", "manager"}),
        "GET /clinics/{clinic_id}/visits/{visit_id}/account": BILLING_DESK,
        "GET /clinics/{clinic_id}/patients/{patient_ref}/balance": BILLING_DESK,
        "GET /clinics/{clinic_id}/visits/{visit_id}/receipts/{entry_id}": BILLING_DESK,
        "POST /clinics/{clinic_id}/drawer-counts": frozenset({"billing", "manager"}),
        "GET /clinics/{clinic_id}/reconciliation": frozenset({"manager"}),
    },
}

STREAMS = {("flow", "GET /clinics/{clinic_id}/stream"),
           ("notifications", "GET /clinics/{clinic_id}/alerts/stream")}

# a body that passes validation, per route that takes one (the matrix is about who gets
# past authorization, so the allowed answer should be the route's own, not a 422)
BODIES: dict[str, Any] = {
    "POST /clinics/{clinic_id}/arrivals": {"visit_type": "follow_up"},
    "POST /clinics/{clinic_id}/visits/{visit_id}/cancel": {"reason": "cancelled"},
    "POST /clinics/{clinic_id}/kiosk/check-ins": {"appointment_code": "apt-none"},
    "POST /clinics/{clinic_id}/rooms/{room_id}/out-of-service": {"reason": "leak"},
    "POST /clinics/{clinic_id}/visits/{visit_id}/room": {"room_id": "r9"},
    "POST /clinics/{clinic_id}/visits/{visit_id}/provider-in": {},
    "POST /clinics/{clinic_id}/delays": {"provider_id": "dr-lee", "minutes": 10},
    "POST /clinics/{clinic_id}/undo": {"event_id": "e-none", "reason": "matrix"},
    "PUT /clinics/{clinic_id}/visits/{visit_id}/contact":
        {"channel": "email", "address": "someone@example.org", "consent": True},
    "PATCH /clinics/{clinic_id}/visits/{visit_id}/contact": {"wait_anywhere": True},
    "PUT /clinics/{clinic_id}/visits/{visit_id}/coverage": {"copay_cents": 2500},
    "POST /clinics/{clinic_id}/visits/{visit_id}/checkout": {"cpt_codes": ["99213"]},
    "POST /clinics/{clinic_id}/visits/{visit_id}/payments":
        {"method": "cash", "amount_cents": 100},
    "POST /clinics/{clinic_id}/visits/{visit_id}/payments/{payment_id}/refunds":
        {"amount_cents": 100, "reason": "matrix"},
    "POST /clinics/{clinic_id}/visits/{visit_id}/entries/{entry_id}/void": {"reason": "matrix"},
    "POST /clinics/{clinic_id}/visits/{visit_id}/reprice": {"reason": "matrix"},
    "POST /clinics/{clinic_id}/drawer-counts": {"business_date": A_WEEK_AGO,
                                                "cash_cents": 0},
    "POST /clinics/{clinic_id}/complaints": {"category": "other", "source": "phone"},
}
RAW_BODIES: dict[str, tuple[str, bytes]] = {
    "POST /clinics/{clinic_id}/schedule/csv": ("text/csv", b"appointment_id,patient_ref,"
                                               b"provider_id,visit_type,scheduled_at\n"),
    "POST /clinics/{clinic_id}/schedule/fhir": ("application/fhir+json",
                                                b'{"resourceType": "Bundle", "entry": []}'),
    # FHIR writes that change nothing (a proposed appointment, a planned encounter)
    "POST /clinics/{clinic_id}/fhir/Appointment": ("application/fhir+json", orjson.dumps({
        "resourceType": "Appointment", "status": "proposed", "participant": [
            {"actor": {"reference": "Patient/matrix"}, "status": "needs-action"}]})),
    "PUT /clinics/{clinic_id}/fhir/Appointment/{resource_id}": ("application/fhir+json",
                                                                orjson.dumps({
        "resourceType": "Appointment", "status": "proposed", "participant": [
            {"actor": {"reference": "Patient/matrix"}, "status": "needs-action"}]})),
    "PUT /clinics/{clinic_id}/fhir/Encounter/{resource_id}": ("application/fhir+json",
                                                              orjson.dumps({
        "resourceType": "Encounter", "status": "planned", "class": {"code": "AMB"}})),
    "POST /clinics/{clinic_id}/fhir": ("application/fhir+json",
                                       b'{"resourceType": "Bundle", "type": "batch"}'),
    "POST /clinics/{clinic_id}/fhir/subscription": ("application/fhir+json", b""),
}
QUERIES: dict[str, dict[str, str]] = {
    "GET /clinics/{clinic_id}/reconciliation": {"date": A_WEEK_AGO},
}


# ------------------------------------------------------------------ routes


@dataclass(frozen=True)
class Endpoint:
    service: str
    method: str
    path: str

    @property
    def key(self) -> str:
        return f"{self.method} {self.path}"


def endpoints(service: str, app: FastAPI) -> list[Endpoint]:
    """Every route the app serves (HEAD aside), from ``app.routes``."""
    found: list[Endpoint] = []
    for context in iter_route_contexts(app.routes):
        route, path = context.original_route, context.path or ""
        if isinstance(route, Mount):
            found.append(Endpoint(service, "GET", path))
            continue
        for method in sorted(getattr(route, "methods", None) or ()):
            if method != "HEAD":
                found.append(Endpoint(service, method, path))
    return found


def concrete(path: str, ids: dict[str, str]) -> str:
    """A route's path with its parameters filled in from ``ids`` (default ``x1``)."""
    return re.sub(r"\{(\w+)\}", lambda m: ids.get(m.group(1), "x1"), path)


async def call(client: httpx.AsyncClient, endpoint: Endpoint, role: str, scope: str,
               ids: dict[str, str], body: Any = None, raw: tuple[str, bytes] | None = None,
               ) -> tuple[int, str]:
    """Send one request of ``endpoint`` as ``role``: its status and text (a stream is
    closed once its status is in, with no text)."""
    path = concrete(endpoint.path, ids)
    if endpoint.path == "/static":
        path = "/static/" + {"checkin": "kiosk.css",
                             "notifications": "complaints.js"}.get(endpoint.service, "live.js")
    headers = {**bearer(role, scope), "Idempotency-Key": uuid.uuid4().hex}
    content: bytes | None = None
    if raw is not None:
        headers["Content-Type"], content = raw
    elif body is not None:
        headers["Content-Type"], content = "application/json", orjson.dumps(body)
    async with client.stream(endpoint.method, path, headers=headers, content=content,
                             params=QUERIES.get(endpoint.key)) as answer:
        if (endpoint.service, endpoint.key) in STREAMS:
            return answer.status_code, ""
        return answer.status_code, (await answer.aread()).decode(errors="replace")


# ------------------------------------------------------------------ tests


@dataclass
class Cell:
    endpoint: Endpoint
    role: str
    expected: str
    status: int

    @property
    def ok(self) -> bool:
        if self.expected == "401":
            return self.status == 401
        if self.expected == "403":
            return self.status == 403
        return self.status not in (401, 403) and self.status < 500


def expectation(policy: frozenset[str] | str, role: str) -> str:
    if policy == PUBLIC:
        return "allowed"
    if role == NONE:
        return "401"
    return "allowed" if role in policy else "403"


@pytest.mark.reliability(
    "every route of all four services x every role (front desk, kiosk, nurse, billing, "
    "manager, screen) and none",
    "no credential: 401; a role the README does not name: 403; a named role gets past "
    "authorization (its route's own answer, never 5xx); a route with no declared policy "
    "fails; the matrix is written to docs/security.md")
async def test_every_route_answers_every_role_as_documented(all_services: Services) -> None:
    services = all_services
    cells: list[Cell] = []
    undeclared: list[str] = []
    for service in SERVICES:
        declared = POLICY[service]
        served = endpoints(service, services.apps[service])
        undeclared += [f"{service}: {e.key}" for e in served if e.key not in declared]
        undeclared += [f"{service}: {key} (declared, not served)"
                       for key in set(declared) - {e.key for e in served}]
        for endpoint in served:
            if endpoint.key not in declared:
                continue
            policy = declared[endpoint.key]
            # a public route checks no credential: calling it without one says it all
            for role in (NONE,) if policy == PUBLIC else EVERY_ROLE:
                status, _ = await call(services.clients[service], endpoint, role, "any",
                                       {"clinic_id": "matrix"}, BODIES.get(endpoint.key),
                                       RAW_BODIES.get(endpoint.key))
                cells.append(Cell(endpoint, role, expectation(policy, role), status))
    write_matrix(cells)
    assert not undeclared, f"routes whose policy is not declared in POLICY: {undeclared}"
    wrong = [f"{c.endpoint.service} {c.endpoint.key} as {c.role}: expected {c.expected}, "
             f"got {c.status}" for c in cells if not c.ok]
    assert not wrong, "\n".join(wrong)


# ------------------------------------------------------------ the report

MATRIX_INTRO = """# Security: who may do what

Written by the test suite itself (`tests/integration/test_role_matrix.py`) from a run
against the four services on a real Kafka broker and Redis server: every route of every
app (read from `app.routes`) was called with a credential of each role and with none.
`make test` writes this to `test-artifacts/role-matrix.md`;
`CLINICFLOW_UPDATE_REPORTS=1 make test` also writes it here.

Legend: **ok** allowed (the route's own answer: 2xx, or 404/409/422 for the made-up ids
the matrix uses), **401** no credential, **403** role refused; `public` routes check no
credential and are called without one (`·`: not called with a role). Every credential
is also limited to its clinics: a credential for one clinic gets 403 on another
clinic's routes, streams included, and 404 (or an answer holding nothing of the other
clinic) for its ids swapped into its own paths and bodies (tested in the same file).
"""


def write_matrix(cells: list[Cell]) -> None:
    lines = [MATRIX_INTRO,
             f"Last run: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {len(cells)} calls, "
             f"**{sum(c.ok for c in cells)} as documented**."]
    for service in SERVICES:
        rows = [c for c in cells if c.endpoint.service == service]
        lines += ["", f"## {service}", "", "| route | " + " | ".join(EVERY_ROLE) + " |",
                  "|---|" + "---|" * len(EVERY_ROLE)]
        for endpoint in dict.fromkeys(c.endpoint for c in rows):
            marks = []
            for role in EVERY_ROLE:
                cell = next((c for c in rows if c.endpoint == endpoint and c.role == role),
                            None)
                if cell is None:
                    marks.append("·")
                    continue
                mark = "ok" if cell.expected == "allowed" else cell.expected
                marks.append(mark if cell.ok else f"**{cell.status}, expected {mark}**")
            public = " (public)" if POLICY[service][endpoint.key] == PUBLIC else ""
            lines.append(f"| `{endpoint.key}`{public} | " + " | ".join(marks) + " |")
    text = "\n".join(lines) + "\n"
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "role-matrix.md").write_text(text)
    if os.environ.get("CLINICFLOW_UPDATE_REPORTS") == "1":
        (REPO / "docs" / "security.md").write_text(text)


# ------------------------------------------------------------ object level


@dataclass
class South:
    """Clinic south's day, made with all-clinic credentials: the ids a north credential
    will try, and what must not change."""

    appointment: str
    visit: str
    ticket: str
    arrival_event: str
    room: str
    payment: str
    charge: str
    patient: str
    address: str

    def secrets(self, asked_for_visit: bool) -> list[str]:
        """What no answer to a north credential may hold. Answers echo the visit they
        were asked about, and billing derives a charge's id from its visit (north's own
        checkout of that visit id is ``chg-<visit>`` in north's ledger): those two count
        only when the request did not name the visit."""
        found = [self.ticket, self.address, self.payment, self.arrival_event]
        return found if asked_for_visit else [*found, self.visit, self.charge]

    def ids(self) -> dict[str, str]:
        return {"clinic_id": "south", "visit_id": self.visit, "room_id": self.room,
                "provider_id": "dr-south", "ticket_code": self.ticket,
                "notification_id": "n-0123456789abcdef01234567", "payment_id": self.payment,
                "entry_id": self.charge, "patient_ref": self.patient}


async def make_south(services: Services) -> South:
    checkin, flow = services.clients["checkin"], services.clients["flow"]
    notify, billing = services.clients["notifications"], services.clients["billing"]
    soon = (datetime.now(UTC) + timedelta(minutes=20)).replace(microsecond=0).isoformat()
    schedule = ("appointment_id,patient_ref,provider_id,visit_type,scheduled_at,dob,initials\n"
                f"apt-south-1,p-south-1,dr-south,follow_up,{soon},1970-01-02,ZQ\n")
    imported = await checkin.post("/clinics/south/schedule/csv", content=schedule.encode(),
                                  headers={**bearer("front_desk"), "Content-Type": "text/csv"})
    assert imported.status_code == 200, imported.text
    arrived = await checkin.post("/clinics/south/arrivals", json={"appointment_id": "apt-south-1"},
                                 headers=bearer("front_desk"))
    assert arrived.status_code == 201, arrived.text
    arrival = arrived.json()
    ready = await flow.post("/clinics/south/rooms/r-south/ready", headers=bearer("nurse"))
    assert ready.status_code == 202, ready.text
    address = "south.patient@example.org"
    contact = await notify.put(f"/clinics/south/visits/{arrival['visit_id']}/contact",
                               json={"channel": "email", "address": address, "consent": True},
                               headers=bearer("front_desk"))
    assert contact.status_code == 200, contact.text
    visit = arrival["visit_id"]
    checked_out = await billing.post(f"/clinics/south/visits/{visit}/checkout",
                                     json={"cpt_codes": ["99213"], "patient_ref": "p-south-1"},
                                     headers=bearer("billing"))
    assert checked_out.status_code == 202, checked_out.text
    paid = await billing.post(f"/clinics/south/visits/{visit}/payments",
                              json={"method": "cash", "amount_cents": 1500},
                              headers={**bearer("billing"), "Idempotency-Key": uuid.uuid4().hex})
    assert paid.status_code == 201, paid.text

    async def on_board() -> bool:
        board = await flow.get("/clinics/south/board", headers=bearer("manager"))
        # checked out: the visit has left the board, its room is being cleaned
        return board.status_code == 200 and "r-south" in board.text

    await eventually(on_board, timeout=30)
    return South(appointment="apt-south-1", visit=visit, ticket=arrival["ticket_code"],
                 arrival_event=arrival["event_id"], room="r-south",
                 payment=paid.json()["receipt_number"], charge=checked_out.json()["posted"][0],
                 patient="p-south-1", address=address)


async def south_state(services: Services, south: South) -> dict[str, Any]:
    """What clinic south holds, read without leaving a trace (no audited read)."""
    checkin, flow = services.clients["checkin"], services.clients["flow"]
    billing = services.clients["billing"]
    store = services.apps["notifications"].state.store
    board = (await flow.get("/clinics/south/board", headers=bearer("manager"))).json()
    board.pop("as_of", None)
    for waiting in board.get("waiting", []):  # the clock moves estimates, not facts
        for moving in ("wait_minutes", "low", "high", "estimate"):
            waiting.pop(moving, None)
    return {
        "schedule": (await checkin.get("/clinics/south/schedule",
                                       headers=bearer("manager"))).json(),
        "board": {k: board.get(k) for k in ("waiting", "in_rooms", "rooms")},
        "account": (await billing.get(f"/clinics/south/visits/{south.visit}/account",
                                      headers=bearer("manager"))).json(),
        "contact": await store.redis.hgetall(store.contact_key("south", south.visit)),
    }


def south_events(events: list[dict[str, Any]]) -> list[str]:
    """The ids of the facts about south that commands make (floor, ledger, audit)."""
    return sorted(e["event_id"] for e in events
                  if e.get("clinic_id") == "south" and e["_topic"] != "clinicflow.estimates.v1")


@pytest.mark.reliability(
    "a credential for clinic north against clinic south: south in the path, and south's "
    "visit, ticket, appointment, room, payment, charge, patient and event ids swapped "
    "into north's paths and bodies, every route and role of the four services",
    "south in the path: 403 for every role (401 without a credential), streams "
    "included; south's ids under north: 404/409/422 or an answer holding none of "
    "south's data; south's board, schedule, account, contact and events unchanged")
async def test_a_credential_for_one_clinic_reads_streams_and_changes_nothing_of_another(
        all_services: Services) -> None:
    services = all_services
    south = await make_south(services)
    before = await south_state(services, south)
    south_ids = south.ids()
    swapped_bodies = {
        "POST /clinics/{clinic_id}/arrivals": {"appointment_id": south.appointment},
        "POST /clinics/{clinic_id}/kiosk/check-ins": {"appointment_code": south.appointment},
        "POST /clinics/{clinic_id}/visits/{visit_id}/room": {"room_id": south.room},
        "POST /clinics/{clinic_id}/undo": {"event_id": south.arrival_event, "reason": "x"},
        "POST /clinics/{clinic_id}/delays": {"provider_id": "dr-south", "minutes": 30},
    }
    leaks: list[str] = []
    for service in SERVICES:
        client = services.clients[service]
        for endpoint in endpoints(service, services.apps[service]):
            policy = POLICY[service].get(endpoint.key)
            if policy == PUBLIC or "{clinic_id}" not in endpoint.path:
                continue
            body = BODIES.get(endpoint.key)
            raw = RAW_BODIES.get(endpoint.key)
            for role in ROLES:
                # 1. clinic south in the path: refused whatever the role
                status, _ = await call(client, endpoint, role, "north", south_ids, body, raw)
                if status != 403:
                    leaks.append(f"{service} {endpoint.key} south as north {role}: {status}")
                if policy is None or role not in policy:
                    continue
                # 2. north in the path, south's ids everywhere else
                answer = await call(client, endpoint, role, "north",
                                    {**south_ids, "clinic_id": "north"},
                                    swapped_bodies.get(endpoint.key, body), raw)
                secrets = south.secrets(asked_for_visit="{visit_id}" in endpoint.path)
                if answer[0] < 300 and any(secret in answer[1] for secret in secrets):
                    leaks.append(f"{service} {endpoint.key} as north {role} read south's "
                                 f"data: {answer[1][:200]}")
    assert not leaks, "\n".join(leaks)
    listed = await services.clients["flow"].get("/clinics", headers=bearer("nurse", "north"))
    assert "south" not in listed.json()["clinics"]
    # a last audited read of south's contact is the barrier: once its audit event is on
    # the topic, anything queued before it is there too
    events_before = await services.events()
    marker = await services.clients["notifications"].get(
        f"/clinics/south/visits/{south.visit}/contact", headers=bearer("front_desk"))
    assert marker.status_code == 200 and marker.json()["address"] == south.address

    async def barrier_passed() -> list[dict[str, Any]] | None:
        found = await services.events()
        return found if len(south_events(found)) > len(south_events(events_before)) else None

    after_events = await eventually(barrier_passed, timeout=30)
    new = set(south_events(after_events)) - set(south_events(events_before))
    assert len(new) == 1, f"south events made by north credentials: {new}"
    assert (await south_state(services, south)) == before

