"""Flow's metrics keep their label values bounded: a provider or room the clinic did not
configure is 'other', whatever the events say; and each clinic has one bottleneck series,
the one its operations page names."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prometheus_client import REGISTRY

from services.flow import metrics as m
from services.flow.processor import build_board
from shared import events as ev
from shared.clinics import ClinicDirectory
from shared.floor.clinic_flow import ClinicFlow

OPEN = datetime(2026, 3, 2, 13, 0, tzinfo=UTC)
CLINICS = ClinicDirectory.parse({"metrics-north": {
    "providers": {"dr-lee": "Dr. Lee"}, "rooms": {"room-1": "Exam 1", "room-2": "Exam 2"}}})


def bottleneck(clinic: str, stage: str, resource: str) -> float | None:
    return REGISTRY.get_sample_value("clinicflow_bottleneck", {
        "clinic": clinic, "stage": stage, "resource": resource})


def test_provider_and_room_labels_are_the_configured_ones_or_other() -> None:
    labels = m.Labels(CLINICS)
    assert labels.provider("metrics-north", "dr-lee") == "dr-lee"
    assert labels.provider("metrics-north", "dr-made-up-9f3a") == "other"
    assert labels.provider("metrics-north", None) == "any"
    assert labels.provider("somewhere-else", "dr-lee") == "other"  # not configured there
    assert labels.room("metrics-north", "room-2") == "room-2"
    assert labels.room("metrics-north", "r999") == "other"


def test_the_bottleneck_gauge_names_what_the_operations_page_names_and_only_that() -> None:
    labels = m.Labels(CLINICS)
    flow = ClinicFlow("metrics-north")
    events = 0

    def fact(payload: ev.Payload, minute: float) -> None:
        nonlocal events
        events += 1
        flow.apply(payload, OPEN + timedelta(minutes=minute), f"e{events}")

    labels.set_bottleneck("metrics-north", None)
    assert bottleneck("metrics-north", "none", "none") == 1
    # both rooms hold Dr. Lee's patients waiting for him, and four more wait in the lobby
    fact(ev.RoomReady(room_id="room-1"), 0)
    fact(ev.RoomReady(room_id="room-2"), 0)
    for n in range(6):
        fact(ev.PatientArrived(visit_id=f"v{n}", ticket_code=f"A-{n}", provider_id="dr-lee",
                               visit_type="follow_up",
                               scheduled_at=OPEN + timedelta(minutes=5 * n)), 5 * n)
    fact(ev.PatientRoomed(visit_id="v0", room_id="room-1"), 20)
    fact(ev.PatientRoomed(visit_id="v1", room_id="room-2"), 30)
    now = OPEN + timedelta(minutes=90)
    board = build_board(flow, flow.estimates(now), now)
    named = board["operations"]["bottleneck"]
    assert named is not None and named["provider_id"] == "dr-lee"
    labels.set_bottleneck("metrics-north", named)
    assert bottleneck("metrics-north", named["stage"], "dr-lee") == 1
    assert bottleneck("metrics-north", "none", "none") is None  # one series per clinic
    # a provider nobody configured is "other", not a new series of its own
    labels.set_bottleneck("metrics-north", {**named, "provider_id": "dr-from-an-event"})
    assert bottleneck("metrics-north", named["stage"], "other") == 1
    assert bottleneck("metrics-north", named["stage"], "dr-lee") is None
    assert {named["stage"], "none"} <= m.BOTTLENECK_STAGES


def queue_length(clinic: str, provider: str) -> float | None:
    return REGISTRY.get_sample_value("clinicflow_queue_length_patients", {
        "clinic": clinic, "provider": provider})


def test_each_board_leaves_its_gauges_at_what_it_shows_when_boards_change_few_of_them(
) -> None:
    from services.flow.consumer import FlowProjection
    from shared.clock import SystemClock

    async def nothing(*_args: object) -> None:
        return None

    projection = FlowProjection(None, nothing, SystemClock(),  # type: ignore[arg-type]
                                estimates_topic="estimates", labels=m.Labels(CLINICS))
    waiting = {"visit_id": "v1", "ticket_code": "A-1", "provider_id": "dr-lee",
               "wait_minutes": 12.0}
    board: dict[str, object] = {
        "waiting": [waiting], "providers": [{"provider_id": "dr-lee", "delay_minutes": 0}],
        "rooms": [{"room_id": "room-1", "state": "ready"}], "in_rooms": [],
        "clinic_delay": None}
    projection._gauges("gauges-north", board)
    assert queue_length("gauges-north", "other") == 1  # dr-lee is not configured here
    # another board with the same figures, then one with a second patient, then back
    projection._gauges("gauges-north", board)
    assert queue_length("gauges-north", "other") == 1
    projection._gauges("gauges-north", {**board, "waiting": [waiting, waiting]})
    assert queue_length("gauges-north", "other") == 2
    projection._gauges("gauges-north", board)
    assert queue_length("gauges-north", "other") == 1
    assert REGISTRY.get_sample_value("clinicflow_rooms", {
        "clinic": "gauges-north", "state": "ready"}) == 1
    projection._gauges("gauges-north", {**board, "rooms": [
        {"room_id": "room-1", "state": "occupied"}]})
    assert REGISTRY.get_sample_value("clinicflow_rooms", {
        "clinic": "gauges-north", "state": "ready"}) == 0
    assert REGISTRY.get_sample_value("clinicflow_rooms", {
        "clinic": "gauges-north", "state": "occupied"}) == 1
    # the provider labels remembered are the ones the configuration gives
    labels = projection.labels
    assert labels.provider("metrics-north", "dr-lee") == "dr-lee"
    assert labels.provider("metrics-north", "dr-lee") == "dr-lee"
    assert labels.provider("gauges-north", "dr-lee") == "other"


def test_a_bottleneck_that_holds_board_after_board_stays_the_one_series() -> None:
    labels = m.Labels(CLINICS)
    lobby = {"stage": "arrival_to_roomed", "provider_id": "dr-lee"}
    for _board in range(3):
        labels.set_bottleneck("metrics-east", lobby)
    assert bottleneck("metrics-east", "arrival_to_roomed", "other") == 1
    labels.set_bottleneck("metrics-east", None)
    assert bottleneck("metrics-east", "arrival_to_roomed", "other") is None
    assert bottleneck("metrics-east", "none", "none") == 1
    labels.set_bottleneck("metrics-east", lobby)
    labels.set_bottleneck("metrics-east", lobby)
    assert bottleneck("metrics-east", "arrival_to_roomed", "other") == 1
    assert bottleneck("metrics-east", "none", "none") is None
