"""Where estimates are told, the told record (issue 17, part 1): the waiting-room screen's
ranges from flow, on an injected clock: once when a visit gets a range, again only when it
moved beyond the clock, never more than once per visit in three minutes."""

from __future__ import annotations

from datetime import timedelta

import orjson

from services.flow.consumer import FlowProjection
from shared import events as ev
from shared.floor.clinic_flow import ClinicFlow
from shared.floor.estimator import WaitEstimate
from tests.fakes import FakeClock
from tests.unit.test_flow_consumer import MemoryFlowStore, Published


async def test_the_waiting_room_screen_tells_a_visit_its_range_and_its_material_changes(
        ) -> None:
    clock, published = FakeClock(), Published()
    floor = FlowProjection(MemoryFlowStore(), published, clock,  # type: ignore[arg-type]
                           estimates_topic="estimates", told_topic="told")
    flow = floor.processor.flows["north"] = ClinicFlow("north")
    flow.apply(ev.PatientArrived(visit_id="v1", ticket_code="A-1", provider_id="dr-lee",
                                 visit_type="follow_up"), clock.now())

    async def shown(minutes_later: float, wait: float, low: float, high: float) -> None:
        at = clock.set(clock.now() + timedelta(minutes=minutes_later))
        await floor._publish_estimates([("north", WaitEstimate("v1", at, wait, low, high, 1,
                                                               wait), at)])

    await shown(0, 14.5, 8.2, 23.1)  # first range: told
    await shown(1, 20.0, 14.0, 30.0)  # moved, but a minute later: not yet
    await shown(3, 10.5, 5.0, 18.0)  # 4 minutes on, ran down with the clock: not again
    await shown(2, 30.0, 25.0, 40.0)  # 6 minutes on, 22 minutes longer: told
    told = [ev.decode(value) for value, topic, _key in published.sent if topic == "told"]
    estimates = [value for value, topic, _key in published.sent if topic == "estimates"]
    assert len(estimates) == 4 and len(told) == 2
    first, second = (t.payload for t in told)
    assert first == ev.WaitTold(visit_id="v1", ticket_code="A-1", channel="tv", low=5,
                                high=25, wait_minutes=14.5, provider_id="dr-lee")
    assert isinstance(second, ev.WaitTold) and (second.low, second.high) == (25, 40)
    assert told[1].occurred_at - told[0].occurred_at == timedelta(minutes=6)
    assert all(orjson.loads(value)["clinic_id"] == "north" for value, topic, _key
               in published.sent)
