"""The projection's plan for one batch (pure): which appointments it marks arrived or
frees again, in the order of the records."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from services.checkin.consumer import BatchResult, Item, plan_batch
from services.checkin.domain import VisitView
from shared import events as ev

NINE = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)
FLOOR = "clinicflow.floor.v1"


def item(offset: int, payload: ev.Payload, at: datetime) -> Item:
    event = ev.make_event(payload, clinic_id="north", source="checkin", occurred_at=at)
    return Item(FLOOR, 0, offset, b"north", ev.encode(event), event=event)


def arrival(visit: str, ticket: str, appointment: str | None = "apt-1") -> ev.PatientArrived:
    return ev.PatientArrived(visit_id=visit, ticket_code=ticket, visit_type="follow_up",
                             appointment_id=appointment)


def test_a_rebuild_marks_arrivals_frees_those_entered_in_error_and_keeps_the_order() -> None:
    items = [item(0, arrival("v-1", "A-1"), NINE),
             item(1, ev.ArrivalCancelled(visit_id="v-1", reason="entered_in_error"),
                  NINE + timedelta(minutes=1)),
             item(2, arrival("v-2", "A-2"), NINE + timedelta(minutes=2)),
             item(3, ev.ArrivalCancelled(visit_id="v-2", reason="left_without_being_seen"),
                  NINE + timedelta(minutes=3)),
             item(4, arrival("v-3", "A-3", appointment=None), NINE + timedelta(minutes=4))]
    writes = plan_batch(items, {}, {}, ZoneInfo("UTC"), BatchResult())
    assert writes.arrivals == [("north", "apt-1", "v-1", True),
                               ("north", "apt-1", "v-1", False),
                               ("north", "apt-1", "v-2", True)]
    assert writes.visits[("north", "v-2")].status == "cancelled"
    assert writes.offsets == {(FLOOR, 0): 4}


def test_a_visit_checkin_saved_itself_is_not_marked_again_by_its_own_event() -> None:
    known = VisitView(clinic_id="north", visit_id="v-1", ticket_code="A-1", day=date(2026, 3, 2),
                      status="cancelled", status_at=NINE + timedelta(minutes=1),
                      appointment_id="apt-1")
    writes = plan_batch([item(7, arrival("v-1", "A-1"), NINE)], {},
                        {("north", "v-1"): known}, ZoneInfo("UTC"), BatchResult())
    assert writes.arrivals == []
    assert writes.visits == {}
