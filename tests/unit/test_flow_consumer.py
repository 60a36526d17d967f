"""Flow's floor consumer, without Kafka or Redis: what it remembers of published
estimates follows the open visits, not the day."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from services.flow import consumer as consumer_module
from services.flow.consumer import FloorConsumer
from services.flow.estimator import Estimate
from services.flow.handlers import ClinicFlow
from shared import events as ev


class _Broker:
    def __init__(self) -> None:
        self.published: list[tuple[bytes, str]] = []

    async def publish(self, body: bytes, topic: str, key: bytes | None = None) -> None:
        self.published.append((body, topic))


class _Runtime:
    def __init__(self) -> None:
        self.broker = _Broker()


async def test_published_estimates_of_ended_visits_are_forgotten(monkeypatch: Any) -> None:
    monkeypatch.setattr(consumer_module, "PUBLISHED_PRUNE_AT", 50)
    runtime = _Runtime()
    floor = FloorConsumer(runtime, None, floor_topic="f", estimates_topic="e",  # type: ignore[arg-type]
                          dead_letter_topic="d")
    flow = floor.processor.flows["north"] = ClinicFlow("north")
    now = datetime.now(UTC)
    for number in range(200):
        visit = f"v{number}"
        flow.apply(ev.PatientArrived(visit_id=visit, ticket_code=f"A-{number}",
                                     provider_id="dr-lee", visit_type="follow_up"), now)
        await floor._publish_estimates([("north", Estimate(visit, now, 10.0, 5.0, 15.0, 1, 10.0),
                                         now)])
        if number >= 10:  # all but the first ten leave again
            flow.apply(ev.ArrivalCancelled(visit_id=visit, reason="cancelled"), now)
    assert len(runtime.broker.published) == 200  # every estimate went out
    assert len(floor._published) <= 2 * 50  # pruned as it went
    assert {f"v{n}" for n in range(10)} <= set(floor._published)  # the open ones kept
