"""``make up``'s simulated staff act through the services' doors, as people do: a walk-in
takes its ticket from check-in's counter (never one the script made up), and a scripted
step a service refuses because a person got there first (a cancelled visit, a patient
roomed out of turn) is skipped, never forced onto the floor topic, where it would be
dead-lettered. The services are faked here by a small floor that refuses as flow, check-in
and billing do (404: not there; 409: the room or visit is taken); the real stack's run
is test_stack's make up test."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta

import httpx

from shared import events as ev
from shared.clinics import ClinicDirectory
from tools.ehr_sender import DemoEvent, Doors, SimulatedFloor, staff_step
from tools.live_demo import DEMO_CLINICS, clinics_setting, demo_day

NOW = datetime(2026, 12, 7, 16, 0, tzinfo=UTC)
CHECKIN, FLOW, BILLING = "http://checkin", "http://flow", "http://billing"
NOTIFICATIONS = "http://notifications"


class FakeFloor:
    """Check-in's ticket counter and the floor as flow's commands check it."""

    def __init__(self) -> None:
        self.tickets: list[str] = []
        self.waiting: set[str] = set()
        self.rooms: dict[str, str] = {}  # room -> visit in it
        self.requests: list[tuple[str, str, dict[str, object]]] = []
        self.lagging: set[str] = set()  # paths refused once: flow not caught up yet
        self.owed: dict[str, int] = {}  # visit -> what billing's checkout said it owes

    # what people do at the same time, through the same doors
    def walk_in(self) -> str:
        self.tickets.append(f"S-{len(self.tickets) + 1}")
        visit = f"v-{len(self.tickets)}"
        self.waiting.add(visit)
        return visit

    def answer(self, request: httpx.Request) -> httpx.Response:
        path, body = request.url.path, json.loads(request.content or b"{}")
        self.requests.append((request.url.host, path, body))
        assert request.headers["Idempotency-Key"] and request.headers["Authorization"]
        if path in self.lagging:
            self.lagging.discard(path)
            return httpx.Response(404, json={"detail": "not read yet"})
        if path.endswith("/contact"):
            assert request.method == "PUT"
            visit = path.split("/")[-2]
            if visit not in self.waiting:
                return httpx.Response(404, json={"detail": f"no visit {visit}"})
            return httpx.Response(200, json={"visit_id": visit})
        if path.endswith("/arrivals"):
            visit = self.walk_in()
            return httpx.Response(201, json={"visit_id": visit, "ticket_code": self.tickets[-1]})
        if m := re.fullmatch(r"/clinics/south/visits/([^/]+)/(\w[\w-]*)", path):
            visit, action = m.groups()
            room = next((r for r, v in self.rooms.items() if v == visit), None)
            if action == "payments":
                assert body["amount_cents"] == self.owed.get(visit)
                return httpx.Response(201, json={"receipt_number": f"R-{visit}"})
            if action == "cancel":
                if visit not in self.waiting:
                    return httpx.Response(409, json={"detail": "not waiting"})
                self.waiting.discard(visit)
                return httpx.Response(200, json={"visit_id": visit})
            if action == "room":
                if visit not in self.waiting:
                    return httpx.Response(404, json={"detail": f"{visit} is not waiting"})
                if body["room_id"] in self.rooms:
                    return httpx.Response(409, json={"detail": "room_occupied"})
                self.waiting.discard(visit)
                self.rooms[body["room_id"]] = visit
                return httpx.Response(202, json={})
            if room is None:
                return httpx.Response(404, json={"detail": f"{visit} is not in a room"})
            if action == "checkout":
                del self.rooms[room]
                self.owed[visit] = 4_500 + 100 * len(self.owed)
                return httpx.Response(202, json={"account": {"balance_cents": self.owed[visit]}})
            return httpx.Response(202, json={})
        if m := re.fullmatch(r"/clinics/south/rooms/([^/]+)/ready", path):
            if m.group(1) in self.rooms:
                return httpx.Response(409, json={"detail": "room_occupied"})
            return httpx.Response(202, json={})
        return httpx.Response(202, json={})


def demo(payload: ev.Payload) -> DemoEvent:
    return DemoEvent(NOW, "south", payload)


def walk_in(visit: str, script_ticket: str) -> DemoEvent:
    return demo(ev.PatientArrived.model_construct(
        visit_id=visit, ticket_code=script_ticket, patient_ref=None, appointment_id=None,
        provider_id="p1", visit_type="urgent", scheduled_at=None, priority="routine",
        late=False))


def visit_day(visit: str, room: str) -> list[DemoEvent]:
    return [demo(ev.PatientRoomed.model_construct(visit_id=visit, room_id=room)),
            demo(ev.ProviderIn.model_construct(visit_id=visit, provider_id="p1")),
            demo(ev.PatientCheckedOut.model_construct(visit_id=visit, cpt_codes=[],
                                                      icd10_codes=[])),
            demo(ev.RoomReady.model_construct(room_id=room))]


async def staffed_floor(fake: FakeFloor) -> tuple[SimulatedFloor, list[DemoEvent]]:
    client = httpx.AsyncClient(transport=httpx.MockTransport(fake.answer))
    floor = SimulatedFloor("127.0.0.1:1", "floor", stop=asyncio.Event(),
                           clock=lambda: NOW, doors=Doors(CHECKIN, FLOW, BILLING),
                           client=client, retry_after=0)
    forced: list[DemoEvent] = []

    async def publish(event: DemoEvent, occurred: datetime | None = None) -> None:
        forced.append(event)

    floor.publish = publish  # type: ignore[method-assign]
    return floor, forced


async def test_a_human_cancel_and_an_out_of_turn_rooming_are_skipped_never_forced() -> None:
    fake = FakeFloor()
    floor, forced = await staffed_floor(fake)
    done = []
    fake.walk_in()  # a desk walk-in before the script's: S-1
    for event in (walk_in("south-v036", "S-1"), walk_in("south-v037", "S-2"),
                  walk_in("south-v038", "S-3")):
        done.append(await floor.act(event))
    mine = floor.visits
    assert mine == {"south-v036": "v-2", "south-v037": "v-3", "south-v038": "v-4"}
    fake.waiting.discard(mine["south-v037"])  # the desk cancels v037 (a 200)
    fake.waiting.discard(mine["south-v038"])  # a nurse rooms v038 into r5 out of turn
    fake.rooms["r5"] = mine["south-v038"]
    for event in [*visit_day("south-v037", "r2"),  # its visit has ended
                  *visit_day("south-v036", "r5")]:  # r5 holds v038
        done.append(await floor.act(event))
    await floor.close()

    assert forced == []  # nothing onto the floor topic: no dead letter possible
    assert len(fake.tickets) == len(set(fake.tickets)) == 4  # one counter, no S-x twice
    assert all("ticket_code" not in body for _, path, body in fake.requests
               if path.endswith("/arrivals"))
    assert done == [True] * 3 + [False] * 3 + [True] + [False] * 3 + [False]
    assert floor.skipped == 7
    roomings = [(host, path) for host, path, _ in fake.requests if path.endswith("/room")]
    assert roomings == [("flow", "/clinics/south/visits/v-3/room")] * 3 + \
        [("flow", "/clinics/south/visits/v-2/room")] * 3  # tried again, then skipped
    assert fake.rooms == {"r5": "v-4"}


async def test_a_step_refused_only_until_flow_has_read_the_one_before_is_done() -> None:
    fake = FakeFloor()
    floor, forced = await staffed_floor(fake)
    assert await floor.act(walk_in("south-v040", "S-9"))
    fake.lagging.add("/clinics/south/visits/v-1/room")
    assert [await floor.act(e) for e in visit_day("south-v040", "r1")] == [True] * 4
    await floor.close()
    assert forced == [] and floor.skipped == 0 and fake.rooms == {}
    steps = [host for host, path, _ in fake.requests if not path.endswith("/payments")]
    assert steps == ["checkin", "flow", "flow", "flow", "billing", "flow"]


def test_every_step_of_the_demo_day_has_a_door() -> None:
    directory = ClinicDirectory.parse(clinics_setting())
    for hours in range(0, 24, 5):
        day = demo_day(DEMO_CLINICS, directory, now=NOW + timedelta(hours=hours))
        assert day and all(staff_step(e.clinic_id, e.payload) is not None for e in day)


async def test_the_desk_enters_the_contact_some_patients_give_through_notifications_door() -> None:
    # without contacts the notifier had nobody to tell: no delay warning, no "come back
    # now", no feedback request all through make up
    fake = FakeFloor()
    client = httpx.AsyncClient(transport=httpx.MockTransport(fake.answer))
    floor = SimulatedFloor("127.0.0.1:1", "floor", stop=asyncio.Event(), clock=lambda: NOW,
                           doors=Doors(CHECKIN, FLOW, BILLING, NOTIFICATIONS), client=client,
                           retry_after=0)
    # the notifier reads each arrival a moment late: every contact is refused once
    fake.lagging |= {f"/clinics/south/visits/v-{n}/contact" for n in range(1, 31)}
    for n in range(30):
        assert await floor.act(walk_in(f"south-v{n:03d}", f"S-{n + 1}"))
    await floor.close()
    contacts = {path.split("/")[-2]: body for host, path, body in fake.requests
                if host == "notifications"}
    assert set(contacts) <= set(floor.visits.values())  # check-in's visits, each once
    assert 5 <= len(contacts) <= 25  # some patients give one, not all
    assert all(body["channel"] == "log" and body["consent"] is True
               for body in contacts.values())
    assert {body["wait_anywhere"] for body in contacts.values()} == {True, False}
    entered = [path for host, path, _ in fake.requests if host == "notifications"]
    assert len(entered) == 2 * len(contacts)  # refused once, then entered


async def test_without_notifications_door_no_contact_is_entered() -> None:
    fake = FakeFloor()
    floor, _forced = await staffed_floor(fake)
    for n in range(10):
        await floor.act(walk_in(f"south-v{n:03d}", f"S-{n + 1}"))
    await floor.close()
    assert [host for host, _, _ in fake.requests] == ["checkin"] * 10


async def test_most_patients_pay_what_they_owe_at_checkout_through_billings_door() -> None:
    # without payments billing's receipts, the drawer's totals and the day's reconciliation
    # had nothing but open balances all through make up
    fake = FakeFloor()
    floor, forced = await staffed_floor(fake)
    for n in range(40):
        visit, room = f"south-v{n:03d}", f"exam-{n}"
        for event in [walk_in(visit, f"S-{n + 1}"), *visit_day(visit, room)]:
            assert await floor.act(event)
    await floor.close()
    assert forced == []
    paid = {path.split("/")[-2]: body for host, path, body in fake.requests
            if host == "billing" and path.endswith("/payments")}
    assert set(paid) <= set(fake.owed) and len(fake.owed) == 40
    assert 20 <= len(paid) <= 39  # most pay there and then, not all
    assert all(body["amount_cents"] == fake.owed[visit] for visit, body in paid.items())
    assert {body["method"] for body in paid.values()} == {"card", "cash", "check"}
    for body in paid.values():  # a card's authorization, never a card number
        reference = body.get("reference")
        assert (reference is None) == (body["method"] == "cash")
        assert reference is None or not re.search(r"\d{12}", str(reference))
