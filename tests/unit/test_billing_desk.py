"""The checkout desk's commands over a ledger held in memory: what a checkout publishes
and in which order, a visit busy with another money command, entries posted but not yet
projected; commands that name a visit the clinic does not know, a visit cancelled, a day
not begun; retries that post nothing twice (the natural keys, the required
Idempotency-Key); receipts and days on the clinic's own clock. Time is a FakeClock
(entries' stamps) and a counter (the waits): nothing here waits for a wall clock."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime
from typing import Any, cast

import pytest

from services.billing.desk import Desk, keyed_entry_id, required_key
from services.billing.domain.accounts import Posted
from services.billing.domain.money import stable_id
from services.billing.domain.visits import FloorVisit
from services.billing.fees import EXAMPLE, FeeScheduleFile
from services.billing.floor import BillingFloorProjection, PriceFloorCheckout
from services.billing.projection import posted_of
from services.billing.views import receipt_json
from shared import events as ev
from shared.clinics import ClinicDirectory
from shared.errors import Conflict, NotFound, PreconditionRequired, Rejected, status_of
from shared.events_billing import DrawerCounted
from tests.fakes import FakeClock

LEDGER, FLOOR = "ledger", "floor"
CLINICS = ClinicDirectory.parse({
    "hilo": {"name": "Hilo Family Clinic", "timezone": "Pacific/Honolulu",
             "providers": {"dr-kanoa": "Dr. Kanoa"}},
    "nuku": {"name": "Nuku'alofa Health", "timezone": "Pacific/Tongatapu"},
})


class HeldLedger:
    """The desk's side of Redis, in memory: what is published on the ledger is projected
    at once while ``projecting``; the visit's lock is held by another desk while ``busy``;
    ``floor`` is what billing read on the floor, per (clinic, visit)."""

    def __init__(self, *arrived: tuple[str, str]) -> None:
        self.posted: dict[tuple[str, str], Posted] = {}
        self.published: list[tuple[str, ev.Event]] = []
        self.projecting = True
        self.busy = False
        self.locks: dict[tuple[str, str], str] = {}
        self.floor: dict[tuple[str, str], FloorVisit] = {
            visit: FloorVisit(arrived=True, patient_ref="p-901") for visit in arrived}

    async def publish(self, value: bytes, topic: str, _key: bytes | None) -> None:
        event = ev.decode(value)
        self.published.append((topic, event))
        posted = posted_of(event, len(self.published))
        if topic == LEDGER and self.projecting and posted is not None:
            self.posted.setdefault((event.clinic_id, posted.entry_id), posted)

    def arrive(self, clinic_id: str, visit_id: str, **seen: Any) -> None:
        self.floor[(clinic_id, visit_id)] = FloorVisit(arrived=True, patient_ref="p-901",
                                                       **seen)

    def _of(self, clinic_id: str) -> list[Posted]:
        return sorted((p for (c, _i), p in self.posted.items() if c == clinic_id),
                      key=lambda p: p.position)

    async def lock_visit(self, clinic_id: str, visit_id: str, token: str) -> bool:
        if self.busy:
            return False
        self.locks[(clinic_id, visit_id)] = token
        return True

    async def keep_lock(self, clinic_id: str, visit_id: str, token: str) -> bool:
        return self.locks.get((clinic_id, visit_id)) == token

    async def unlock_visit(self, clinic_id: str, visit_id: str, token: str) -> None:
        if self.locks.get((clinic_id, visit_id)) == token:
            del self.locks[(clinic_id, visit_id)]

    async def visit_entries(self, clinic_id: str, visit_id: str) -> list[Posted]:
        return [p for p in self._of(clinic_id) if p.visit_id == visit_id]

    async def visits_entries(self, clinic_id: str,
                             visits: Iterable[str]) -> dict[str, list[Posted]]:
        return {v: await self.visit_entries(clinic_id, v) for v in visits}

    async def entries(self, clinic_id: str, entry_ids: Sequence[str]) -> list[Posted]:
        return [self.posted[(clinic_id, i)] for i in entry_ids
                if (clinic_id, i) in self.posted]

    async def entries_between(self, clinic_id: str, starts: datetime,
                              ends: datetime) -> list[Posted]:
        return [p for p in self._of(clinic_id) if starts <= p.occurred_at < ends]

    async def drawer_counts(self, clinic_id: str, day: date) -> list[Posted]:
        return [p for p in self._of(clinic_id)
                if isinstance(p.entry, DrawerCounted) and p.entry.business_date == day]

    async def open_visits(self, _clinic_id: str) -> list[str]:
        return []

    async def visit_known(self, clinic_id: str, visit_id: str) -> tuple[FloorVisit, bool]:
        return (self.floor.get((clinic_id, visit_id), FloorVisit()),
                bool(await self.visit_entries(clinic_id, visit_id)))

    async def floor_visit(self, clinic_id: str, visit_id: str) -> FloorVisit:
        return (await self.visit_known(clinic_id, visit_id))[0]

    async def checkout_published(self, clinic_id: str, visit_id: str, event_id: str) -> None:
        known = self.floor[(clinic_id, visit_id)]
        self.floor[(clinic_id, visit_id)] = FloorVisit(
            known.arrived, known.patient_ref, known.provider_id, known.ended, known.ended_by,
            event_id, known.arrival_undone)


class Seconds:
    """A monotonic clock that moves one second each time it is read."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


class FloorRead:
    """The floor barrier: counts the looks; ``then`` is what billing finds reading on."""

    def __init__(self, then: Any = None) -> None:
        self.looks = 0
        self.then = then

    async def __call__(self, _clinic_id: str) -> None:
        self.looks += 1
        if self.then is not None:
            self.then()


def desk_over(ledger: HeldLedger, clock: FakeClock | None = None,
              floor_barrier: FloorRead | None = None) -> Desk:
    desk = Desk(ledger, FeeScheduleFile(EXAMPLE), ledger.publish,  # type: ignore[arg-type]
                ledger_topic=LEDGER, floor_topic=FLOOR, clinics=CLINICS, wait_seconds=5,
                floor_barrier=floor_barrier or FloorRead(), clock=clock or FakeClock(),
                monotonic=Seconds())
    desk.lock_poll_seconds = desk.projection_poll_seconds = 0.0
    return desk


def topics(ledger: HeldLedger) -> list[tuple[str, str]]:
    return [(topic, e.event_type) for topic, e in ledger.published]


async def test_a_checkout_posts_charge_and_share_then_ends_the_visit_on_the_floor() -> None:
    ledger, clock = HeldLedger(("north", "v1")), FakeClock()
    result = await desk_over(ledger, clock).checkout("north", "v1", cpt_codes=["99213"])
    assert result.outcome == "priced" and result.entries == ("chg-v1", "shr-v1")
    assert topics(ledger) == [(LEDGER, "charge.posted"), (LEDGER, "patient_share.posted"),
                              (FLOOR, "patient.checked_out")]
    assert {e.occurred_at for _topic, e in ledger.published} == {clock.now()}
    floor_event = ledger.published[-1][1]
    assert floor_event.envelope.event_id == result.checkout_event_id == stable_id("out", "v1")
    assert result.account.charges_cents == 13000 and result.account.patient_ref == "p-901"
    assert result.published and ledger.locks == {}  # released


async def test_a_retried_checkout_tells_the_floor_nothing_twice() -> None:
    ledger = HeldLedger(("north", "v1"))
    desk = desk_over(ledger)
    await desk.checkout("north", "v1", cpt_codes=["99213"])
    again = await desk.checkout("north", "v1", cpt_codes=["99213"])
    assert again.outcome == "duplicate" and not again.published
    assert again.ended_on_floor and again.entries == ("chg-v1", "shr-v1")  # as the first said
    assert [t for t, _e in ledger.published].count(FLOOR) == 1


async def test_a_visit_busy_with_another_money_command_is_refused_after_the_wait() -> None:
    ledger = HeldLedger(("north", "v1"))
    ledger.busy = True
    with pytest.raises(Conflict, match="busy with another money command") as busy:
        await desk_over(ledger).checkout("north", "v1", cpt_codes=["99213"])
    assert status_of(busy.value) == 409
    assert ledger.published == []


async def test_entries_posted_but_not_projected_in_time_are_answered_from_what_is_known(
) -> None:
    ledger = HeldLedger(("north", "v1"))
    ledger.projecting = False  # the projection is far behind (another instance, a rebuild)
    result = await desk_over(ledger).checkout("north", "v1", cpt_codes=["99213"])
    assert result.outcome == "priced" and result.account.charges_cents == 0
    assert [topic for topic, _e in ledger.published] == [LEDGER, LEDGER, FLOOR]


async def test_a_payment_posted_but_not_projected_in_time_is_answered_with_its_receipt(
) -> None:
    # it was a 404 "no payment on visit": a clerk trying again took the money twice
    ledger = HeldLedger(("north", "v1"))
    desk = desk_over(ledger)
    await desk.checkout("north", "v1", cpt_codes=["99213"])
    ledger.projecting = False  # the projection is far behind
    receipt, replayed = await desk.pay("north", "v1", entry_id="pay-1", method="cash",
                                       amount_cents=2000, reference=None, reason="copay",
                                       made_by="desk")
    body = receipt_json(receipt)
    assert replayed is False and (body["kind"], body["method"]) == ("payment", "cash")
    assert body["amount"] == "20.00" and body["paid_cents"] == 2000
    assert body["balance"] == "110.00"  # the 130.00 share less the 20.00 just paid


async def test_a_wait_for_the_ledger_that_outlives_the_lock_reads_nothing_and_posts_nothing(
) -> None:
    # the lock expires after 10 s, the ledger wait may take 30: another command may hold
    # the lock by then, and both would read the same account
    ledger = HeldLedger(("north", "v1"))
    desk = desk_over(ledger)
    await desk.checkout("north", "v1", cpt_codes=["99213"])
    published = len(ledger.published)

    async def slow_barrier(clinic_id: str) -> None:
        if ("north", "v1") in ledger.locks:  # the wait held: the lock is another's by then
            ledger.locks[("north", "v1")] = "another-command"

    desk.barrier = slow_barrier
    with pytest.raises(Conflict, match="busy with another money command"):
        await desk.pay("north", "v1", entry_id="pay-9", method="cash", amount_cents=500,
                       reference=None, reason="copay", made_by="desk")
    assert len(ledger.published) == published
    assert ledger.locks == {("north", "v1"): "another-command"}  # not ours to give back


async def test_a_busy_visit_is_not_a_floor_checkout_to_drop() -> None:
    # the visit's lock held by a desk payment: the floor consumer must read the checkout
    # again later, not count it unpriceable and go past it
    ledger = HeldLedger()
    ledger.arrive("north", "v11", ended="checked_out", ended_by="out-ehr-5")
    ledger.busy = True
    floor = BillingFloorProjection(desk_over(ledger), cast(Any, None), "t", cast(Any, None),
                                   FakeClock())
    with pytest.raises(Conflict, match="busy"):
        await floor.take_effect(PriceFloorCheckout("north", "v11", ("99213",), "out-ehr-5"))


async def test_a_copay_taken_before_the_checkout_and_retried_after_it_is_the_same_payment(
) -> None:
    # the payment took its patient from the ledger, empty before the checkout: the retry
    # after it had the arrival's patient and was refused as another payment under the key
    ledger = HeldLedger(("north", "v2"))
    desk = desk_over(ledger)
    pay = {"entry_id": "pay-2", "method": "card", "amount_cents": 2500,
           "reference": "AUTH-77", "reason": "copay", "made_by": "desk"}
    first, replayed = await desk.pay("north", "v2", **pay)
    assert replayed is False and first.patient_ref == "p-901"  # the arrival's patient
    await desk.checkout("north", "v2", cpt_codes=["99213"])
    again, replayed = await desk.pay("north", "v2", **pay)
    assert replayed is True and again.receipt_number == first.receipt_number
    # coverage without a patient named is the arrival's patient's too
    account, _ = await desk.record_coverage(
        "north", "v2", patient_ref=None, copay_cents=2500, coinsurance_basis_points=0,
        deductible_remaining_cents=0, self_pay=False, made_by="desk")
    assert account.coverage is not None and account.coverage.entry.patient_ref == "p-901"  # type: ignore[attr-defined]


async def test_a_money_command_reads_the_ledger_only_once_it_holds_the_visits_lock() -> None:
    # waited for before the lock, the ledger could miss what the lock's last holder posted
    # after that wait (a holder that stopped waiting for its entries): two refunds of one
    # payment both allowed
    ledger = HeldLedger(("north", "v1"))
    held_at_barrier: list[bool] = []

    async def barrier(clinic_id: str) -> None:
        held_at_barrier.append(("north", "v1") in ledger.locks)

    desk = desk_over(ledger)
    desk.barrier = barrier
    await desk.checkout("north", "v1", cpt_codes=["99213"])
    await desk.pay("north", "v1", entry_id="pay-1", method="cash", amount_cents=2000,
                   reference=None, reason="copay", made_by="desk")
    # each command: once before taking the lock, once holding it (before reading)
    assert held_at_barrier and held_at_barrier == [False, True] * (len(held_at_barrier) // 2)
    assert ledger.locks == {}  # given back


async def test_a_visit_that_never_checked_in_at_the_clinic_is_refused_by_name() -> None:
    ledger = HeldLedger(("south", "v7"))  # south's visit, asked for through north
    floor = FloorRead()
    desk = desk_over(ledger, floor_barrier=floor)
    with pytest.raises(NotFound, match="visit v7 is not a visit of clinic north") as unknown:
        await desk.checkout("north", "v7", cpt_codes=["99213"])
    assert status_of(unknown.value) == 404 and unknown.value.code == "unknown_visit"
    for command in (desk.pay("north", "v7", entry_id="pay-1", method="cash",
                             amount_cents=500, reference=None, reason="desk", made_by="d"),
                    desk.void("north", "v7", target_entry_id="chg-v7", reason="x",
                              made_by="m"),
                    desk.refund("north", "v7", entry_id="rfd-1", payment_entry_id="pay-1",
                                amount_cents=1, reason="x", made_by="d"),
                    desk.reprice("north", "v7", reason="x", made_by="m"),
                    desk.visit_account("north", "v7")):
        with pytest.raises(NotFound, match="v7"):
            await command
    assert ledger.published == []
    assert floor.looks == 6  # each looked again once the floor was read to its end


async def test_an_arrival_published_a_moment_ago_is_found_once_the_floor_is_read() -> None:
    ledger = HeldLedger()
    floor = FloorRead(then=lambda: ledger.arrive("north", "v2"))
    receipt, replayed = await desk_over(ledger, floor_barrier=floor).pay(
        "north", "v2", entry_id="pay-1", method="cash", amount_cents=2500, reference=None,
        reason="copay", made_by="dev billing")
    assert receipt.amount_cents == 2500 and not replayed and floor.looks == 1


async def test_a_visit_that_left_without_being_seen_cannot_be_checked_out() -> None:
    ledger = HeldLedger()
    ledger.arrive("north", "v3", ended="left_without_being_seen", ended_by="e-9")
    with pytest.raises(Conflict, match="v3 of clinic north was left without being seen"):
        await desk_over(ledger).checkout("north", "v3", cpt_codes=["99213"])
    assert ledger.published == []


async def test_a_visit_whose_arrival_was_undone_takes_no_checkout_and_no_money() -> None:
    ledger = HeldLedger()
    ledger.floor[("north", "v5")] = FloorVisit(arrived=False, patient_ref="p-901",
                                               arrival_undone=True)
    desk = desk_over(ledger)
    for command in (desk.checkout("north", "v5", cpt_codes=["99213"]),
                    desk.pay("north", "v5", entry_id="pay-1", method="cash",
                             amount_cents=500, reference=None, reason="desk", made_by="d"),
                    desk.record_coverage("north", "v5", patient_ref=None, copay_cents=0,
                                         coinsurance_basis_points=0,
                                         deductible_remaining_cents=0, self_pay=True,
                                         made_by="d")):
        with pytest.raises(Conflict, match="v5 of clinic north no longer exists on the "
                                           "floor: its arrival was undone") as undone:
            await command
        assert status_of(undone.value) == 409 and undone.value.code == "visit_ended"
    assert ledger.published == []
    # coverage taken before the undo: still no checkout, no payment
    ledger.arrive("north", "v6")
    await desk.record_coverage("north", "v6", patient_ref=None, copay_cents=2500,
                               coinsurance_basis_points=0, deductible_remaining_cents=0,
                               self_pay=False, made_by="d")
    ledger.floor[("north", "v6")] = FloorVisit(arrived=False, arrival_undone=True)
    published = len(ledger.published)
    with pytest.raises(Conflict, match="arrival was undone"):
        await desk.checkout("north", "v6", cpt_codes=["99213"])
    with pytest.raises(Conflict, match="arrival was undone"):
        await desk.pay("north", "v6", entry_id="pay-2", method="cash", amount_cents=500,
                       reference=None, reason="desk", made_by="d")
    assert len(ledger.published) == published


async def test_a_patient_ref_other_than_the_arrivals_is_refused_naming_the_visit() -> None:
    ledger = HeldLedger(("south", "v8"))  # checked in as p-901
    desk = desk_over(ledger)
    for command in (desk.record_coverage("south", "v8", patient_ref="pt-someoneelse",
                                         copay_cents=2500, coinsurance_basis_points=0,
                                         deductible_remaining_cents=0, self_pay=False,
                                         made_by="d"),
                    desk.checkout("south", "v8", cpt_codes=["99213"],
                                  patient_ref="pt-third")):
        with pytest.raises(Conflict, match="visit v8 of clinic south checked in as another "
                                           "patient: the patient_ref given differs") as other:
            await command
        assert status_of(other.value) == 409 and other.value.code == "patient_mismatch"
        assert "pt-" not in other.value.detail and "p-901" not in other.value.detail
    assert ledger.published == []
    # the arrival's own ref, or none, is the arrival's patient
    await desk.record_coverage("south", "v8", patient_ref="p-901", copay_cents=2500,
                               coinsurance_basis_points=0, deductible_remaining_cents=0,
                               self_pay=False, made_by="d")
    result = await desk.checkout("south", "v8", cpt_codes=["99213"])
    assert result.outcome == "priced" and result.account.patient_ref == "p-901"


async def test_a_walk_in_named_at_the_desk_is_one_patients_not_two() -> None:
    # a walk-in checked in without a patient: coverage named p-1, the checkout p-2, and
    # the visit counted in both patients' balances
    ledger = HeldLedger()
    ledger.floor[("north", "w1")] = FloorVisit(arrived=True, patient_ref=None)
    desk = desk_over(ledger)
    await desk.record_coverage("north", "w1", patient_ref="p-1", copay_cents=2500,
                               coinsurance_basis_points=0, deductible_remaining_cents=0,
                               self_pay=False, made_by="d")
    with pytest.raises(Conflict, match="already another patient's") as other:
        await desk.checkout("north", "w1", cpt_codes=["99213"], patient_ref="p-2")
    assert other.value.code == "patient_mismatch" and "p-" not in other.value.detail
    result = await desk.checkout("north", "w1", cpt_codes=["99213"])  # left out: p-1's
    assert result.account.patient_ref == "p-1"
    assert {getattr(e.payload, "patient_ref", None) for t, e in ledger.published
            if t == LEDGER} == {"p-1"}


async def test_a_visit_checked_out_on_the_floor_is_priced_without_a_second_floor_event(
) -> None:
    ledger = HeldLedger()
    ledger.arrive("north", "v4", ended="checked_out", ended_by="out-ehr-1")
    result = await desk_over(ledger).checkout("north", "v4", cpt_codes=["99213"])
    assert result.outcome == "priced" and not result.published
    assert topics(ledger) == [(LEDGER, "charge.posted"), (LEDGER, "patient_share.posted")]


async def test_a_floor_checkout_cut_between_its_charge_and_share_posts_the_share_on_retry(
) -> None:
    # an instance killed after the charge was on the ledger and before the share: the
    # floor event is read again (by another instance) with the charge already projected
    ledger = HeldLedger()
    ledger.arrive("north", "v4", ended="checked_out", ended_by="out-ehr-1")
    desk = desk_over(ledger)
    publish = ledger.publish

    async def killed_before_the_share(value: bytes, topic: str, key: bytes | None) -> None:
        if ev.decode(value).event_type == "patient_share.posted":
            raise ConnectionError("the process died here")
        await publish(value, topic, key)

    desk.publish = killed_before_the_share
    with pytest.raises(ConnectionError):
        await desk.checkout("north", "v4", cpt_codes=["99213"], floor_event_id="out-ehr-1")
    assert topics(ledger) == [(LEDGER, "charge.posted")]
    desk.publish = publish
    again = await desk.checkout("north", "v4", cpt_codes=["99213"],
                                floor_event_id="out-ehr-1")
    assert topics(ledger) == [(LEDGER, "charge.posted"), (LEDGER, "patient_share.posted")]
    assert again.account.patient_share_cents == again.account.charges_cents == 13000
    # and read a third time, nothing more
    third = await desk.checkout("north", "v4", cpt_codes=["99213"], floor_event_id="out-ehr-1")
    assert third.outcome == "duplicate" and len(ledger.published) == 2


async def test_a_void_cut_between_the_charge_and_its_share_voids_the_share_when_retried(
) -> None:
    # the charge's void was on the ledger, its share's was not (Kafka refused it): the
    # retry answered "replayed" and the patient owed a share of no charge, then a second
    # share after a new checkout
    ledger = HeldLedger(("north", "v6"))
    desk = desk_over(ledger)
    await desk.checkout("north", "v6", cpt_codes=["99213"])
    publish = ledger.publish

    async def refused_after_the_first(value: bytes, topic: str, key: bytes | None) -> None:
        event = ev.decode(value)
        if event.event_type == "entry.voided" and \
                event.payload.voided_event_type == "patient_share.posted":  # type: ignore[attr-defined]
            raise ConnectionError("Kafka refused it")
        await publish(value, topic, key)

    desk.publish = refused_after_the_first
    with pytest.raises(ConnectionError):
        await desk.void("north", "v6", target_entry_id="chg-v6", reason="x", made_by="m")
    desk.publish = publish
    account, replayed = await desk.void("north", "v6", target_entry_id="chg-v6", reason="x",
                                        made_by="m")
    assert (replayed, account.charges_cents, account.patient_share_cents) == (False, 0, 0)
    again = await desk.void("north", "v6", target_entry_id="chg-v6", reason="x", made_by="m")
    assert again[1] is True  # and once more: nothing left to post
    assert [e.event_type for _t, e in ledger.published].count("entry.voided") == 2


async def test_a_checkouts_charge_and_share_are_of_one_instant() -> None:
    # a moment apart they fell on two business days when the clinic's midnight came
    # between them: a charge without its share on one day, a share without charge on the next
    clock = FakeClock()
    ledger = HeldLedger(("north", "v7"))
    desk = desk_over(ledger, clock)
    publish = ledger.publish

    async def slow(value: bytes, topic: str, key: bytes | None) -> None:
        await publish(value, topic, key)
        clock.advance(seconds=1)  # each publish takes a second

    desk.publish = slow
    await desk.checkout("north", "v7", cpt_codes=["99213"])
    at = {e.event_type: e.occurred_at for t, e in ledger.published if t == LEDGER}
    assert at["charge.posted"] == at["patient_share.posted"]


async def test_a_floor_checkout_of_more_services_than_a_charge_carries_is_refused() -> None:
    ledger = HeldLedger()
    ledger.arrive("north", "v8", ended="checked_out", ended_by="out-ehr-2")
    desk = desk_over(ledger)
    with pytest.raises(Rejected, match=r"31 services .* at most 30") as refused:
        await desk.checkout("north", "v8", cpt_codes=["99213"] * 31, floor_event_id="out-ehr-2")
    assert refused.value.code == "too_many_services" and ledger.published == []


async def test_the_floor_consumer_goes_on_past_a_checkout_no_charge_can_carry() -> None:
    # a floor checkout of 31 services raised pydantic's ValidationError building the
    # charge: the consumer read the batch again for ever, the clinic's floor stuck
    ledger = HeldLedger()
    ledger.arrive("north", "v9", ended="checked_out", ended_by="out-ehr-3")
    floor = BillingFloorProjection(desk_over(ledger), cast(Any, None), "t", cast(Any, None),
                                   FakeClock())
    too_many = PriceFloorCheckout("north", "v9", ("99213",) * 31, "out-ehr-3")
    assert await floor.take_effect(too_many) == 0  # logged, not priced, and on it goes
    assert ledger.published == []


async def test_another_clients_checkout_of_a_visit_the_floor_keeps_cancelled_charges_nothing(
) -> None:
    # the cancel was checked only at the desk: a checkout on the floor charged the patient
    ledger = HeldLedger()
    ledger.arrive("north", "v10", ended="left_without_being_seen", ended_by="cxl-1")
    floor = BillingFloorProjection(desk_over(ledger), cast(Any, None), "t", cast(Any, None),
                                   FakeClock())
    assert await floor.take_effect(
        PriceFloorCheckout("north", "v10", ("99213",), "out-ehr-4")) == 0
    assert ledger.published == []


def test_a_payment_without_an_idempotency_key_is_refused_naming_the_header() -> None:
    with pytest.raises(PreconditionRequired, match="Idempotency-Key header is required") as no:
        required_key(None, "payment")
    assert status_of(no.value) == 428 and no.value.code == "idempotency_key_required"
    assert required_key("k-1", "payment") == "k-1"
    assert keyed_entry_id("pay", "north", "v1", "k-1") == keyed_entry_id("pay", "north", "v1",
                                                                         "k-1")


async def test_retried_voids_coverage_repricing_and_counts_post_nothing_twice() -> None:
    ledger = HeldLedger(("north", "v5"))
    desk = desk_over(ledger)
    terms: dict[str, Any] = {"patient_ref": "p-901", "copay_cents": 2000,
                             "coinsurance_basis_points": 0, "deductible_remaining_cents": 0,
                             "self_pay": False, "made_by": "desk"}
    assert (await desk.record_coverage("north", "v5", **terms))[1] is False
    assert (await desk.record_coverage("north", "v5", **terms))[1] is True  # the same terms
    await desk.checkout("north", "v5", cpt_codes=["99213"])
    assert (await desk.reprice("north", "v5", reason="x", made_by="m"))[1] is True
    changed = {**terms, "copay_cents": 3000}
    assert (await desk.record_coverage("north", "v5", **changed))[1] is False
    first = await desk.reprice("north", "v5", reason="card found", made_by="m")
    again = await desk.reprice("north", "v5", reason="card found", made_by="m")
    assert (first[1], again[1], again[0].patient_share_cents) == (False, True, 3000)
    voided = await desk.void("north", "v5", target_entry_id="chg-v5", reason="x", made_by="m")
    twice = await desk.void("north", "v5", target_entry_id="chg-v5", reason="x", made_by="m")
    assert (voided[1], twice[1], twice[0].charges_cents) == (False, True, 0)
    count = {"cash": 0, "check": None, "card": None}
    day = date(2026, 3, 2)
    counted = await desk.count_drawer("north", business_date=day, counted=count, made_by="m")
    recount = await desk.count_drawer("north", business_date=day, counted=count, made_by="m")
    assert (counted.replayed, recount.replayed, recount.entry_id) == (
        False, True, counted.entry_id)
    fixed = await desk.count_drawer("north", business_date=day,
                                    counted={**count, "cash": 500}, made_by="m")
    assert not fixed.replayed and fixed.entry_id != counted.entry_id
    kinds = [e.event_type for _t, e in ledger.published if _t == LEDGER]
    assert kinds.count("coverage.recorded") == 2 and kinds.count("ledger.drawer_counted") == 2
    assert kinds.count("entry.voided") == 3  # the first share (re-priced), the charge, its share


async def test_a_drawer_count_for_a_day_not_begun_at_the_clinic_is_refused() -> None:
    # 09:30 UTC on 3 March is still 2 March in Hawaii, already 3 March in Tonga
    desk = desk_over(HeldLedger(), FakeClock(datetime(2026, 3, 3, 9, 30, tzinfo=UTC)))
    with pytest.raises(Rejected, match="2026-03-03 has not begun at clinic hilo") as early:
        await desk.count_drawer("hilo", business_date=date(2026, 3, 3),
                                counted={"cash": 0}, made_by="m")
    assert "its day is 2026-03-02 in Pacific/Honolulu" in early.value.detail
    assert not (await desk.count_drawer("nuku", business_date=date(2026, 3, 3),
                                        counted={"cash": 0}, made_by="m")).replayed


async def test_a_payment_at_half_past_eleven_at_night_in_hawaii_is_on_hawaiis_day() -> None:
    # 23:30 HST on 2 March is 09:30 UTC on 3 March
    clock = FakeClock(datetime(2026, 3, 3, 9, 30, tzinfo=UTC))
    ledger = HeldLedger()
    ledger.arrive("hilo", "v8", provider_id="dr-kanoa")
    desk = desk_over(ledger, clock)
    receipt, _ = await desk.pay("hilo", "v8", entry_id="pay-8", method="cash",
                                amount_cents=4000, reference=None, reason="copay",
                                made_by="dev billing")
    shown = receipt_json(receipt)
    assert shown["made_at"] == "2026-03-02T23:30:00-10:00"
    assert shown["made_at_display"] == "2026-03-02 23:30 HST"
    assert (shown["business_date"], shown["timezone"]) == ("2026-03-02", "Pacific/Honolulu")
    assert (shown["clinic_name"], shown["provider_name"]) == ("Hilo Family Clinic",
                                                              "Dr. Kanoa")
    assert desk.today("hilo") == date(2026, 3, 2)
    on_the_day = await desk.reconciliation("hilo")  # the clinic's today
    assert on_the_day.business_date == date(2026, 3, 2)
    assert next(m for m in on_the_day.methods if m.method == "cash").payments_cents == 4000
    with pytest.raises(Rejected, match="2026-03-03 is out of range"):  # not begun there
        await desk.reconciliation("hilo", date(2026, 3, 3))
