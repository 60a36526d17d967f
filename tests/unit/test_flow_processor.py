"""Batches of floor records, read as the service reads them (each as the processor comes
to it): applied once, bad ones dead-lettered with the reason, state survives a checkpoint
round trip exactly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson

from services.flow.processor import FloorProcessor, build_board, floor_reader
from shared import events as ev
from shared.floor.model import NotApplicable
from shared.floor.snapshot import dump_flow, load_flow
from shared.projection import Reading
from tests.fakes import KafkaRecord

T0 = datetime(2026, 3, 2, 13, 0, tzinfo=UTC)
TOPIC = "clinicflow.floor.v1"
READER = floor_reader(TOPIC)


def read(records: list[KafkaRecord]) -> list[Reading]:
    """The records as flow's reader hands them to the processor: each with its event, or
    the reason it cannot be applied."""
    return list(READER.stream(records, {}))


def record(offset: int, payload: ev.Payload, *, clinic: str = "north", minute: float = 0,
           event_id: str | None = None, key: bytes | None = None) -> KafkaRecord:
    event = ev.make_event(payload, clinic_id=clinic, source="test",
                          occurred_at=T0 + timedelta(minutes=minute),
                          event_id=event_id or f"e{offset}")
    return KafkaRecord(TOPIC, 0, offset, key if key is not None else clinic.encode(),
                       ev.encode(event))


def day() -> list[KafkaRecord]:
    return [
        record(0, ev.RoomReady(room_id="r1")),
        record(1, ev.RoomReady(room_id="r2")),
        record(2, ev.PatientArrived(visit_id="v1", ticket_code="A-1", provider_id="dr-lee",
                                    visit_type="follow_up"), minute=1),
        record(3, ev.PatientArrived(visit_id="v2", ticket_code="A-2", provider_id="dr-lee",
                                    visit_type="new_patient"), minute=2),
        record(4, ev.PatientArrived(visit_id="v3", ticket_code="A-3", provider_id=None,
                                    visit_type="urgent", priority="urgent"), minute=3),
        record(5, ev.PatientRoomed(visit_id="v3", room_id="r1"), minute=4, event_id="room-v3"),
        record(6, ev.DelayAnnounced(provider_id="dr-lee", minutes=20, reason="late"), minute=5),
        record(7, ev.PatientArrived(visit_id="s1", ticket_code="B-1", provider_id="dr-kim",
                                    visit_type="physical"), clinic="south", minute=5),
    ]


def test_every_record_is_applied_once_even_when_a_batch_is_redelivered() -> None:
    processor = FloorProcessor()
    first = processor.process_stream(read(day()))
    assert first.applied == 8 and not first.dead_letters
    again = processor.process_stream(read(day()))
    assert again.applied == 0 and again.already_applied == 8
    assert set(processor.flows) == {"north", "south"}
    assert first.offsets == {(TOPIC, 0): 7}


def test_malformed_unknown_and_unappliable_events_become_dead_letters_with_reasons() -> None:
    processor = FloorProcessor()
    bad = [
        KafkaRecord(TOPIC, 0, 0, b"north", b"{not json"),
        KafkaRecord(TOPIC, 0, 1, b"north", orjson.dumps({"event_type": "x"})),
        KafkaRecord(TOPIC, 0, 2, b"north", orjson.dumps({
            "event_type": "patient.teleported", "clinic_id": "north", "source": "t",
            "data": {}})),
        KafkaRecord(TOPIC, 0, 3, b"north", orjson.dumps({
            "event_type": "room.ready", "schema_version": 9, "clinic_id": "north",
            "source": "t", "data": {"room_id": "r1"}})),
        record(4, ev.PatientRoomed(visit_id="ghost", room_id="r1")),
        record(5, ev.RoomReady(room_id="r1"), key=b"south"),
        KafkaRecord(TOPIC, 0, 6, b"north", None),
        record(7, ev.WaitEstimated(visit_id="v1", ticket_code="A-1", position=1,
                                   wait_minutes=5, low=2, high=9)),
        record(8, ev.RoomReady(room_id="r9")),
    ]
    result = processor.process_stream(read(bad))
    reasons = [d.reason for d in result.dead_letters]
    assert [d.record.offset for d in result.dead_letters] == list(range(8))
    assert reasons[0].startswith("not valid JSON")
    assert reasons[1].startswith("bad envelope")
    assert reasons[2] == "unknown event_type 'patient.teleported'"
    assert reasons[3] == "unknown schema_version 9 for room.ready"
    assert reasons[4] == "roomed for unknown visit ghost"
    assert "keyed by clinic" in reasons[5]
    assert "tombstone" in reasons[6]
    assert reasons[7] == f"wait.estimated does not belong on {TOPIC}"  # estimates have their own
    assert result.applied == 1  # the consumer kept going: r9 is ready
    assert "r9" in processor.flows["north"].clinic.rooms
    again = processor.process_stream(read(bad))  # redelivered: nothing dead-lettered twice
    assert again.already_applied == len(bad) and not again.dead_letters


def test_records_read_before_the_batch_is_applied_are_applied_as_a_stream_is() -> None:
    batch = [*day(), KafkaRecord(TOPIC, 0, 8, b"north", None),
             record(9, ev.PatientRoomed(visit_id="ghost", room_id="r2"))]
    streamed, read_first = FloorProcessor(), FloorProcessor()
    a = streamed.process_stream(READER.stream(batch, {}))
    b = read_first.process([READER.read(r.topic, r.partition, r.offset, r.key, r.value)
                            for r in batch])  # as the digest reads them
    assert (a.applied, a.offsets, a.touched) == (b.applied, b.offsets, b.touched) == (
        8, {(TOPIC, 0): 9}, {"north": T0 + timedelta(minutes=5),
                             "south": T0 + timedelta(minutes=5)})
    assert [(d.record, d.reason) for d in a.dead_letters] == [
        (d.record, d.reason) for d in b.dead_letters]
    assert [d.reason for d in a.dead_letters] == ["empty record (tombstone)",
                                                  "roomed for unknown visit ghost"]
    assert a.dead_letters[1].record.event is not None  # the event the floor refused
    for clinic_id in ("north", "south"):
        assert dump_flow(streamed.flows[clinic_id]) == dump_flow(read_first.flows[clinic_id])


def test_a_checkpointed_clinic_carries_on_exactly_as_if_it_never_stopped() -> None:
    continuous = FloorProcessor()
    continuous.process_stream(read(day()))
    restored = FloorProcessor()
    restored.process_stream(read(day()[:6]))
    for flow in list(restored.flows.values()):
        snapshot = orjson.dumps(dump_flow(flow))
        restored.adopt(load_flow(orjson.loads(snapshot)), TOPIC, 0)
    restored.process_stream(read(day()))  # redelivery from the start: already-applied ones skipped
    later = [
        record(8, ev.ActionUndone(undone_event_id="room-v3"), minute=6),
        record(9, ev.PatientCheckedOut(visit_id="v1"), minute=7),
    ]
    continuous.process_stream(read(later))
    restored.process_stream(read(later))
    now = T0 + timedelta(minutes=8)
    for clinic_id in ("north", "south"):
        a, b = continuous.flows[clinic_id], restored.flows[clinic_id]
        assert build_board(a, a.estimates(now), now) == build_board(b, b.estimates(now), now)
        assert dump_flow(a) == dump_flow(b)
    assert continuous.flows["north"].clinic.waiting()[0].visit_id == "v3"  # undo put it back


def test_the_board_shows_ticket_codes_estimates_rooms_and_delays() -> None:
    processor = FloorProcessor()
    processor.process_stream(read(day()))
    flow = processor.flows["north"]
    now = T0 + timedelta(minutes=5)
    board = build_board(flow, flow.estimates(now), now)
    assert [w["ticket_code"] for w in board["waiting"]] == ["A-1", "A-2"]
    assert all(w["low"] <= w["wait_minutes"] <= w["high"] for w in board["waiting"])
    assert {r["room_id"]: r["state"] for r in board["rooms"]} == {"r1": "occupied",
                                                                 "r2": "ready"}
    assert board["rooms"][0]["ticket_code"] == "A-3"
    lee = next(p for p in board["providers"] if p["provider_id"] == "dr-lee")
    assert lee["delay_minutes"] == 20 and lee["waiting"] == 2


def test_a_clinic_restored_mid_day_estimates_exactly_like_one_that_never_stopped() -> None:
    """A whole simulated day, checkpointed and restored every hundred events: the
    estimates at the end are the same as those of an uninterrupted run."""
    from shared.floor.clinic_flow import ClinicFlow
    from tools.replay import to_fact
    from tools.simulate import simulate_day

    day = simulate_day("mixed", 3).events
    continuous = ClinicFlow("c1")
    restored = ClinicFlow("c1")
    at = T0
    for number, record in enumerate(day):
        fact = to_fact(record, lambda _c, v: "A-1")
        at = datetime.fromisoformat(record["ts"])
        for flow in (continuous, restored):
            flow.apply(fact, at, event_id=f"e{number}")
        if number % 100 == 99:
            restored = load_flow(orjson.loads(orjson.dumps(dump_flow(restored))))
        if number % 37 == 0:  # the live service estimates at arbitrary moments too
            continuous.estimates(at)
    assert continuous.estimates(at) == restored.estimates(at)
    assert dump_flow(continuous) == dump_flow(restored)


def test_the_checkpoint_json_is_the_snapshot_and_open_counts_follow_the_floor() -> None:
    """``dump_flow_json`` (each undo record's JSON made once) writes what ``dump_flow``
    says, and the per-status counts kept as facts apply equal a fresh count, through
    a whole day with undos and restores."""
    from shared.floor.clinic_flow import ClinicFlow
    from shared.floor.snapshot import dump_flow_json
    from tools.replay import to_fact
    from tools.simulate import simulate_day

    flow = ClinicFlow("c1")
    undone = 0
    for number, record in enumerate(simulate_day("mixed", 5).events):
        at = datetime.fromisoformat(record["ts"])
        try:
            flow.apply(to_fact(record, lambda _c, v: "A-1"), at, event_id=f"e{number}")
        except NotApplicable:
            pass  # a fact about a visit whose arrival was taken back
        if number % 50 == 49:  # take the last fact back, when the floor allows it
            try:
                flow.apply(ev.ActionUndone(undone_event_id=f"e{number}"), at, f"u{number}")
                undone += 1
            except NotApplicable:
                pass
        if number % 80 == 79:
            assert dump_flow_json(flow) == orjson.dumps(dump_flow(flow))
            assert dump_flow_json(flow) == dump_flow_json(flow)  # made once, reused
            flow = load_flow(orjson.loads(dump_flow_json(flow)))
        counted = flow.clinic.open_counts
        flow.clinic.recount()
        assert counted == flow.clinic.open_counts, number
    assert undone > 0


def test_the_checkpoint_json_writes_times_of_any_zone_as_the_snapshot_does() -> None:
    """``dump_flow_json`` hands UTC times to orjson and others to ``isoformat``: the text
    must be ``dump_flow``'s either way (an odd-seconds offset included)."""
    from datetime import timezone
    from zoneinfo import ZoneInfo

    from shared.floor.clinic_flow import ClinicFlow
    from shared.floor.snapshot import dump_flow_json

    flow = ClinicFlow("c1")
    zones = [UTC, ZoneInfo("America/New_York"), timezone(timedelta(hours=5, minutes=30)),
             timezone(timedelta(minutes=-1, seconds=-15))]
    start = datetime(2026, 3, 2, 9, 0, 0, 123456, tzinfo=UTC)
    for number, zone in enumerate(zones * 3):
        at = (start + timedelta(minutes=number)).astimezone(zone)
        visit = f"v{number}"
        flow.apply(ev.PatientArrived(visit_id=visit, ticket_code=f"A-{number}",
                                     provider_id="dr-lee", visit_type="follow_up",
                                     scheduled_at=at + timedelta(minutes=30)), at, f"a{number}")
        flow.apply(ev.PatientRoomed(visit_id=visit, room_id=f"r{number}"), at, f"r{number}")
        if number % 2:
            flow.apply(ev.DelayAnnounced(provider_id="dr-lee", minutes=number), at, f"d{number}")
        else:
            flow.apply(ev.PatientCheckedOut(visit_id=visit), at, f"c{number}")
    assert dump_flow_json(flow) == orjson.dumps(dump_flow(flow))
