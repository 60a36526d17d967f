"""The live flow service remembers each clinic's days as replay does: a stream of several
days gives the same memory and the same estimates whether it is applied live, with
restarts from the checkpoint, or rebuilt from the beginning; the checkpoint carries the
memory, and its size does not grow with the clinic's history."""

from __future__ import annotations

from datetime import datetime
from functools import cache
from zoneinfo import ZoneInfo

import orjson

from services.flow.consumer import FlowProjection
from services.flow.metrics import Labels
from services.flow.processor import FloorProcessor, floor_reader
from shared import events as ev
from shared.clinics import ClinicDirectory
from shared.floor.clinic_flow import ClinicFlow
from shared.floor.memory import RememberingFlow
from shared.floor.snapshot import dump_flow, dump_flow_json, load_flow
from tests.fakes import FakeClock, KafkaRecord
from tests.unit.test_flow_consumer import MemoryFlowStore, Published
from tools.replay import replay_events, to_fact
from tools.simulate import simulate_days

FLOOR = "floor"
READER = floor_reader(FLOOR)
ZONE = "America/Chicago"
CLINICS = ClinicDirectory.parse({"c1": {"timezone": ZONE}})


@cache
def simulated(scenario: str, seed: int, days: int) -> tuple[dict[str, object], ...]:
    return tuple(simulate_days(scenario, seed, days, clinic_id="c1").events)


@cache
def stream(scenario: str = "mixed", seed: int = 3, days: int = 2) -> list[KafkaRecord]:
    """The clinic's days as flow reads them from the floor topic."""
    records = []
    for offset, log in enumerate(simulated(scenario, seed, days)):
        event = ev.make_event(to_fact(dict(log), lambda _c, _v: "A-1"), clinic_id="c1",
                              source="test", occurred_at=datetime.fromisoformat(str(log["ts"])),
                              event_id=f"e{offset}")
        records.append(KafkaRecord(FLOOR, 0, offset, b"c1", ev.encode(event)))
    return records


def at_of(record: KafkaRecord) -> datetime:
    return ev.decode(record.value).envelope.occurred_at  # type: ignore[arg-type]


def restarted(processor: FloorProcessor) -> FloorProcessor:
    """A new instance that takes the clinic over from its checkpoint."""
    again = FloorProcessor(CLINICS.zone)
    for clinic_id, flow in processor.flows.items():
        again.adopt(load_flow(orjson.loads(dump_flow_json(flow))), *processor.partition_of[
            clinic_id])
    again.applied = dict(processor.applied)
    return again


def test_live_restarted_and_rebuilt_flows_remember_alike_and_estimate_day_two_alike() -> None:
    records = stream()
    live, restarting = FloorProcessor(CLINICS.zone), FloorProcessor(CLINICS.zone)
    day_two: list[tuple[datetime, str, float, float, float]] = []
    batches = [records[i:i + 9] for i in range(0, len(records), 9)]
    for number, batch in enumerate(batches):
        live.process_stream(READER.stream(batch, {}))
        if number % 10 == 9:
            restarting = restarted(restarting)
            assert restarting.flows["c1"].zone == ZoneInfo(ZONE)  # type: ignore[attr-defined]
        restarting.process_stream(READER.stream(batches[max(0, number - 1)] + batch, {}))
        at = at_of(batch[-1])
        estimates = live.flows["c1"].estimates(at)
        assert estimates == restarting.flows["c1"].estimates(at), number
        remembering = live.flows["c1"]
        assert isinstance(remembering, RememberingFlow)
        following = records[min(len(records) - 1, (number + 1) * 9)]
        if remembering.profile.days and (following is batch[-1] or at_of(following) > at):
            day_two.extend((at, e.visit_id, e.wait_minutes, e.low, e.high) for e in estimates)
    rebuilt = FloorProcessor(CLINICS.zone)
    rebuilt.process_stream(READER.stream(records, {}))
    flows = [p.flows["c1"] for p in (live, restarting, rebuilt)]
    assert all(isinstance(f, RememberingFlow) and f.profile.days == 1 for f in flows)
    assert dump_flow(flows[0]) == dump_flow(flows[1]) == dump_flow(flows[2])
    assert len(day_two) > 100
    # replay (``clinicflow replay``) told the same: a day-2 estimate the live flow made
    # after the last fact of its minute is the replay's line of that minute, if it wrote one
    replayed = {(datetime.fromisoformat(e["ts"]), e["visit_id"]): e
                for e in replay_events(dict(r) for r in simulated("mixed", 3, 2))}
    for at, visit_id, wait, low, high in day_two:
        line = replayed.get((at, visit_id))
        if line is not None:
            assert (line["wait_minutes"], line["low"], line["high"]) == (wait, low, high)
    assert sum((at, v) in replayed for at, v, *_ in day_two) > 20
    # what memory changed: day 2 is not estimated as a clinic without history would be
    plain = ClinicFlow("c1")
    for log in simulated("mixed", 3, 2):
        plain.apply(to_fact(dict(log), lambda _c, _v: "A-1"),
                    datetime.fromisoformat(str(log["ts"])))
    at = at_of(records[-1])
    assert plain.estimator.visit_minutes != flows[0].estimator.visit_minutes or \
        plain.estimates(at) != flows[0].estimates(at)


async def test_the_service_checkpoints_the_memory_and_a_restart_carries_on_with_it() -> None:
    records = stream()
    clock = FakeClock()
    store = MemoryFlowStore()
    live = FlowProjection(store, Published(), clock,  # type: ignore[arg-type]
                          estimates_topic="estimates", publish_estimates=False,
                          labels=Labels(CLINICS))
    second_day = next(i for i, r in enumerate(records)
                      if (at_of(r) - at_of(records[i - 1])).total_seconds() > 4 * 3600)
    cut = second_day + 60
    for start in range(0, cut, 50):
        clock.advance(seconds=2)
        await live.apply_stream(READER.stream(records[start:min(start + 50, cut)], {}))
    last = store.checkpoints[-1]
    (_tp, snapshot), = last.snapshots.values()
    memory = orjson.loads(snapshot)["memory"]
    assert memory["profile"]["days"] == 1 and memory["day_started_at"] is not None
    offset = last.offsets[(FLOOR, 0)]
    restored = FlowProjection(MemoryFlowStore({(FLOOR, 0): (offset, [snapshot])}),  # type: ignore[arg-type]
                              Published(), clock, estimates_topic="estimates",
                              publish_estimates=False, labels=Labels(CLINICS))
    assert await restored.positions([(FLOOR, 0)]) == {(FLOOR, 0): offset}
    flow = restored.processor.flows["c1"]
    assert isinstance(flow, RememberingFlow) and flow.zone == ZoneInfo(ZONE)
    rest = records[offset + 1:]
    for projection in (live, restored):
        for start in range(0, len(rest), 50):
            await projection.apply_stream(READER.stream(rest[start:start + 50], {}))
    at = at_of(records[-1])
    a, b = live.processor.flows["c1"], restored.processor.flows["c1"]
    assert a.estimates(at) == b.estimates(at) and dump_flow(a) == dump_flow(b)


def test_a_checkpoint_from_before_memory_carries_on_and_starts_remembering() -> None:
    records = stream()
    plain = FloorProcessor(CLINICS.zone)
    plain.process_stream(READER.stream(records[:200], {}))
    old = dump_flow(plain.flows["c1"])
    del old["memory"]  # as a checkpoint written before clinics remembered
    assert type(load_flow(old)) is ClinicFlow
    carried = FloorProcessor(CLINICS.zone)
    carried.adopt(load_flow(old), FLOOR, 0)
    carried.applied = dict(plain.applied)
    flow = carried.flows["c1"]
    assert isinstance(flow, RememberingFlow) and flow.zone == ZoneInfo(ZONE)
    assert flow.day_started_at == at_of(records[0])
    for processor in (plain, carried):
        processor.process_stream(READER.stream(records, {}))
    at = at_of(records[-1])
    assert flow.profile.days == 1  # yesterday was folded in at the second day's start
    assert flow.estimates(at) == plain.flows["c1"].estimates(at)


def test_the_memory_in_the_checkpoint_does_not_grow_with_the_clinic_s_history() -> None:
    """The busiest shape's profile after 5 and after 15 days: bounded the same."""
    sizes = {}
    for days in (5, 15):
        processor = FloorProcessor(CLINICS.zone)
        processor.process_stream(READER.stream(stream("overbooked", 2, days), {}))
        flow = processor.flows["c1"]
        assert isinstance(flow, RememberingFlow) and flow.profile.days == days - 1
        sizes[days] = len(orjson.dumps(orjson.loads(dump_flow_json(flow))["memory"]))
    assert sizes[15] < 24_000
    assert sizes[15] < 1.15 * sizes[5]
