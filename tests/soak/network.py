"""The soak's clinic network: simulated clinic days (``tools.simulate``, the same
simulator ``make up`` and bench/ use) played in accelerated time through the services'
real front doors, in bursts separated by idle stretches with no events at all.

* floor facts (rooms, rooming, provider in, delays, cancellations) go onto the floor
  topic with a plain producer, as the nurses' and desks' clients would;
* walk-ins check in through checkin's HTTP API (it publishes the arrival; the visit's
  later facts use the visit id it answered);
* every checkout carries CPT codes, so billing prices it from the floor; a share of the
  visits pays at the billing desk (HTTP), in full or in part;
* a share of the visits leaves an e-mail contact with notifications (HTTP), so delays
  and come-back calls are really sent, to a local SMTP server.

What was sent is kept (``Expected``) so the test can hold the services to it."""

from __future__ import annotations

import asyncio
import csv
import random
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer

from shared import events as ev
from tests.helpers import REPO, auth
from tools.replay import to_fact
from tools.simulate import simulate_clinics

FRONT_DESK = auth("dev-front-desk")
BILLING = auth("dev-billing")
FEE_FILE = REPO / "services" / "billing" / "fee_schedule.example.csv"

# what each visit type is billed (codes of the example fee schedule)
CPT_BY_VISIT_TYPE: dict[str, list[str]] = {
    "follow_up": ["99213"],
    "new_patient": ["99203"],
    "physical": ["99396", "36415"],
    "procedure": ["99214", "93000"],
    "urgent": ["99213", "87880"],
    "consultation": ["99204"],
}
CONTACT_SHARE = 0.25  # visits that leave an e-mail address with notifications
PAYMENT_PLANS = ("all", "all", "part", "none")  # at the billing desk, after checkout
METHODS = ("cash", "check", "card")


def fees_cents(path: Path = FEE_FILE) -> dict[str, int]:
    """The ``*`` lines of the fee schedule, read here independently of billing's parser."""
    fees: dict[str, int] = {}
    with path.open() as handle:
        rows = csv.reader(line for line in handle if not line.startswith("#"))
        next(rows)
        for clinic, code, _description, fee in rows:
            if clinic == "*":
                dollars, cents = fee.split(".")
                fees[code] = int(dollars) * 100 + int(cents)
    return fees


@dataclass
class Phase:
    kind: str  # "busy" or "idle"
    seconds: float


def schedule(minutes: float) -> list[Phase]:
    """Bursts and idle stretches filling ``minutes``: cycles of a quarter of the run
    (2 to 15 minutes), a third of each idle. At least two cycles; the run ends idle."""
    total = minutes * 60
    cycle = min(900.0, max(120.0, total / 4))
    cycles = max(2, round(total / cycle))
    cycle = total / cycles
    phases: list[Phase] = []
    for _ in range(cycles):
        phases += [Phase("busy", cycle * 2 / 3), Phase("idle", cycle / 3)]
    return phases


@dataclass
class Expected:
    """What the network did, to compare with what the services say."""

    floor_published: int = 0
    walk_ins_via_checkin: int = 0
    contacts: int = 0
    checkouts: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # clinic -> n
    charges: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # clinic -> cents
    paid: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    open_balances: dict[str, dict[str, int]] = field(
        default_factory=lambda: defaultdict(dict))  # clinic -> visit -> cents
    taken: dict[tuple[str, date, str], int] = field(
        default_factory=lambda: defaultdict(int))  # (clinic, business day, method) -> cents
    http_failures: list[str] = field(default_factory=list)


class ClinicNetwork:
    """Plays simulated days of ``clinics`` clinics; one ``play`` call per burst."""

    def __init__(self, *, bootstrap: str, floor_topic: str, clinics: int, speed: float,
                 checkin_url: str, billing_url: str, notifications_url: str,
                 seed: int = 8) -> None:
        self.bootstrap, self.floor_topic = bootstrap, floor_topic
        self.clinics, self.speed, self.seed = clinics, speed, seed
        self.urls = {"checkin": checkin_url, "billing": billing_url,
                     "notifications": notifications_url}
        self.fees = fees_cents()
        self.expected = Expected()
        self.rng = random.Random(seed)
        self.day = -1
        self.sim_days_started = 0
        self.first_day_ended: float | None = None  # time.monotonic()
        self._timeline: Iterator[tuple[float, dict[str, Any]]] = iter(())
        self._pending: tuple[float, dict[str, Any]] | None = None
        self._sim_clock = 0.0  # simulated seconds into the current day
        self._visit_ids: dict[str, str] = {}  # simulated visit id -> the id the floor knows
        self._tickets: dict[str, int] = defaultdict(int)
        self._visit_types: dict[str, str] = {}  # the floor's visit id -> visit type
        self._references = 0
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._side_limit = asyncio.Semaphore(4)
        self.producer: AIOKafkaProducer | None = None
        self.client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> ClinicNetwork:
        self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all",
                                         enable_idempotence=True)
        await self.producer.start()
        self.client = httpx.AsyncClient(timeout=30)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.settle()
        if self.client is not None:
            await self.client.aclose()
        if self.producer is not None:
            await self.producer.stop()

    # ------------------------------------------------------------- the timeline

    def _next_day(self) -> None:
        self.day += 1
        if self.day == 1:  # the first clinic day is over: its state has filled and emptied
            self.first_day_ended = time.monotonic()
        self.sim_days_started += 1
        day = simulate_clinics("all", self.seed + self.day, self.clinics)
        start = datetime.fromisoformat(day.events[0]["ts"])
        self._timeline = (((datetime.fromisoformat(e["ts"]) - start).total_seconds(), e)
                          for e in day.events)
        self._sim_clock = 0.0

    def _peek(self) -> tuple[float, dict[str, Any]]:
        while self._pending is None:
            self._pending = next(self._timeline, None)
            if self._pending is None:
                self._next_day()
        return self._pending

    async def play(self, seconds: float) -> int:
        """Publish the next ``seconds`` x speed simulated seconds of the network's days,
        paced in real time; returns the events sent."""
        sent = 0
        started = time.monotonic()
        sim_start = self._sim_clock
        while True:
            at, record = self._peek()
            elapsed_sim = at - sim_start
            if elapsed_sim < 0:  # a new day began: its clock starts again at 0
                sim_start = at - (time.monotonic() - started) * self.speed
                elapsed_sim = at - sim_start
            wall_due = started + elapsed_sim / self.speed
            if wall_due - started >= seconds:
                self._sim_clock = sim_start + seconds * self.speed
                break
            wait = wall_due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._pending = None
            self._sim_clock = at
            sent += await self._apply(record)
        return sent

    # ------------------------------------------------------------ one record

    def _ticket(self, clinic: str) -> str:
        self._tickets[clinic] = self._tickets[clinic] % 9999 + 1
        return f"S-{self._tickets[clinic]}"

    async def _apply(self, record: dict[str, Any]) -> int:
        """One simulated fact through its door; returns 1 when this network published it
        on the floor itself (a walk-in is published by checkin)."""
        clinic, kind = record["clinic_id"], record["type"]
        if "visit_id" not in record:  # rooms and delays
            return await self._publish(clinic, to_fact(record, self._no_ticket))
        simulated = f"{self.day}/{record['visit_id']}"
        if kind == "arrival":
            return await self._arrive(clinic, simulated, record)
        visit = self._visit_ids.get(simulated)
        if visit is None:  # its walk-in was refused: nothing of it reaches the floor
            return 0
        payload = to_fact({**record, "visit_id": visit}, self._no_ticket)
        if kind in ("checkout", "cancel"):
            del self._visit_ids[simulated]
            visit_type = self._visit_types.pop(visit, "follow_up")
            if kind == "checkout":
                payload = self._priced(clinic, visit, visit_type)
        return await self._publish(clinic, payload)

    async def _arrive(self, clinic: str, simulated: str, record: dict[str, Any]) -> int:
        walk_in = record["scheduled_at"] is None
        visit = await self._walk_in(clinic, record) if walk_in else \
            f"d{self.day}-{record['visit_id']}"
        if visit is None:
            return 0
        self._visit_ids[simulated] = visit
        self._visit_types[visit] = record["visit_type"]
        if self.rng.random() < CONTACT_SHARE:
            self._side(self._contact(clinic, visit))
        if walk_in:
            return 0
        return await self._publish(clinic, to_fact({**record, "visit_id": visit},
                                                    lambda c, _v: self._ticket(c)))

    @staticmethod
    def _no_ticket(_clinic: str, _visit: str) -> str:
        raise AssertionError("only arrivals carry a ticket code")

    async def _publish(self, clinic: str, payload: ev.Payload) -> int:
        event = ev.make_event(payload, clinic_id=clinic, source="soak",
                              occurred_at=datetime.now(UTC),
                              correlation_id=getattr(payload, "visit_id", None))
        assert self.producer is not None
        await self.producer.send_and_wait(self.floor_topic, ev.encode(event),
                                          key=clinic.encode())
        self.expected.floor_published += 1
        return 1

    def _priced(self, clinic: str, visit: str, visit_type: str) -> ev.Payload:
        """The checkout with its CPT codes; a desk payment for some of them (in the
        background); what billing should then hold is noted."""
        codes = CPT_BY_VISIT_TYPE.get(visit_type, ["99213"])
        charge = sum(self.fees[c] for c in codes)
        self.expected.checkouts[clinic] += 1
        self.expected.charges[clinic] += charge
        plan = self.rng.choice(PAYMENT_PLANS)
        amount = {"all": charge, "part": charge // 2, "none": 0}[plan]
        if amount:
            self._side(self._pay(clinic, visit, amount, self.rng.choice(METHODS)))
        if charge - amount:
            self.expected.open_balances[clinic][visit] = charge - amount
        return ev.PatientCheckedOut.model_construct(visit_id=visit, cpt_codes=codes,
                                                    icd10_codes=[])

    # ------------------------------------------------------------ HTTP doors

    async def _walk_in(self, clinic: str, record: dict[str, Any]) -> str | None:
        assert self.client is not None
        answer = await self.client.post(
            f"{self.urls['checkin']}/clinics/{clinic}/arrivals", headers={
                **FRONT_DESK, "Idempotency-Key": f"soak-d{self.day}-{record['visit_id']}"},
            json={"provider_id": record["provider_id"], "visit_type": record["visit_type"],
                  "priority": record["priority"]})
        if answer.status_code != 201:
            self.expected.http_failures.append(f"walk-in {answer.status_code} {answer.text}")
            return None
        self.expected.walk_ins_via_checkin += 1
        visit: str = answer.json()["visit_id"]
        return visit

    async def _contact(self, clinic: str, visit: str) -> None:
        assert self.client is not None
        answer = await self.client.put(
            f"{self.urls['notifications']}/clinics/{clinic}/visits/{visit}/contact",
            headers=FRONT_DESK, json={"channel": "email", "consent": True,
                                      "address": f"{visit}@patients.example.org",
                                      "wait_anywhere": self.rng.random() < 0.5})
        if answer.status_code != 200:
            self.expected.http_failures.append(f"contact {answer.status_code} {answer.text}")
            return
        self.expected.contacts += 1

    async def _pay(self, clinic: str, visit: str, amount: int, method: str) -> None:
        assert self.client is not None
        self._references += 1  # a terminal's authorization or a check number, short
        reference = None if method == "cash" else f"AUTH-{self._references}"
        answer = await self.client.post(
            f"{self.urls['billing']}/clinics/{clinic}/visits/{visit}/payments",
            headers={**BILLING, "Idempotency-Key": f"pay-{visit}"},
            json={"method": method, "amount_cents": amount, "reference": reference})
        if answer.status_code != 201:
            self.expected.http_failures.append(f"payment {answer.status_code} {answer.text}")
            return
        made = datetime.fromisoformat(answer.json()["made_at"]).astimezone(UTC).date()
        self.expected.paid[(clinic, method)] += amount
        self.expected.taken[(clinic, made, method)] += amount

    def _side(self, work: Any) -> None:
        async def limited() -> None:
            async with self._side_limit:
                try:
                    await work
                except httpx.HTTPError as exc:  # a service gone or hung: said, not raised
                    self.expected.http_failures.append(repr(exc))

        task = asyncio.create_task(limited())
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def settle(self) -> None:
        """Wait for the desk requests still out (before an idle stretch, and at the end)."""
        while self._side_tasks:
            await asyncio.gather(*list(self._side_tasks))
