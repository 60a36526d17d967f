"""The flow service on a real Kafka broker and a real Redis server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from services.flow.app import create_app
from shared import events as ev
from shared.admin import ensure_topics
from shared.settings import FlowSettings
from shared.topics import DEAD_LETTER, ESTIMATES, FLOOR, topic_name
from tests.helpers import ServiceProcess, auth, eventually, producer, read_topic, serving
from tests.integration.flow_support import (
    NURSE,
    a_day,
    boards_match_a_rebuild,
    floor_event,
    flow_settings,
    get_board,
    publish,
    service_env,
)
from tools.stack import LocalStack

SCREEN = auth("dev-screen")


@pytest.fixture
async def flow_env(kafka_bootstrap: str, redis_url: str, topic_prefix: str) -> dict[str, Any]:
    await ensure_topics(kafka_bootstrap, topic_prefix)
    return flow_settings(kafka_bootstrap, redis_url, topic_prefix)


def settings_for(env: dict[str, Any]) -> FlowSettings:
    return FlowSettings(**env)


def opening(clinic: str = "north") -> list[ev.Event]:
    return [
        floor_event(ev.RoomReady(room_id="r1"), clinic),
        floor_event(ev.RoomReady(room_id="r2"), clinic),
        floor_event(
            ev.PatientArrived(
                visit_id="v1", ticket_code="A-1", provider_id="dr-lee", visit_type="follow_up"
            ),
            clinic,
        ),
        floor_event(
            ev.PatientArrived(
                visit_id="v2", ticket_code="A-2", provider_id="dr-lee", visit_type="new_patient"
            ),
            clinic,
        ),
    ]


async def test_an_arrival_on_the_floor_topic_shows_on_the_board_with_an_estimate(
    flow_env: dict[str, Any],
) -> None:
    floor = topic_name(FLOOR, flow_env["topic_prefix"])
    async with (
        serving(create_app(settings_for(flow_env))) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        await publish(flow_env["kafka_bootstrap"], floor, opening())

        async def two_waiting() -> Any:
            board = await get_board(client, "north", SCREEN)
            return board if board and len(board["waiting"]) == 2 else None

        board = await eventually(two_waiting)
        assert [w["ticket_code"] for w in board["waiting"]] == ["A-1", "A-2"]
        first = board["waiting"][0]
        assert first["low"] <= first["wait_minutes"] <= first["high"]
        assert "visit_id" not in first  # the screen sees ticket codes only
        estimates = await read_topic(
            flow_env["kafka_bootstrap"], topic_name(ESTIMATES, flow_env["topic_prefix"]), expect=2
        )
        published = [ev.decode(r.value) for r in estimates]
        assert {e.payload.visit_id for e in published} >= {"v1", "v2"}  # type: ignore[attr-defined]


@pytest.mark.reliability(
    "malformed, unknown-type, unknown-version, oversized and wrongly keyed events on the "
    "floor topic (plain Kafka client)",
    "each lands on the dead-letter topic with its reason; the next valid event is applied",
)
async def test_a_malformed_event_goes_to_the_dead_letter_topic_and_the_consumer_keeps_going(
    flow_env: dict[str, Any],
) -> None:
    prefix = flow_env["topic_prefix"]
    floor = topic_name(FLOOR, prefix)
    async with (
        serving(create_app(settings_for(flow_env))) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        async with producer(flow_env["kafka_bootstrap"]) as client_kafka:
            await client_kafka.send_and_wait(floor, b"{oops", key=b"north")
            await client_kafka.send_and_wait(
                floor,
                orjson.dumps(
                    {
                        "event_type": "patient.arrived",
                        "schema_version": 7,
                        "clinic_id": "north",
                        "source": "kcat",
                        "data": {},
                    }
                ),
                key=b"north",
            )
            roomed_ghost = floor_event(ev.PatientRoomed(visit_id="ghost", room_id="r1"))
            await client_kafka.send_and_wait(floor, ev.encode(roomed_ghost), key=b"north")
            teleported = orjson.loads(ev.encode(roomed_ghost))
            teleported["event_type"] = "patient.teleported"
            await client_kafka.send_and_wait(floor, orjson.dumps(teleported), key=b"north")
            oversized = orjson.loads(ev.encode(floor_event(ev.DelayAnnounced(
                provider_id="dr-lee", minutes=5))))
            oversized["data"]["reason"] = "x" * 100_000
            await client_kafka.send_and_wait(floor, orjson.dumps(oversized), key=b"north")
            elsewhere = floor_event(ev.RoomReady(room_id="r9"), "south")
            await client_kafka.send_and_wait(floor, ev.encode(elsewhere), key=b"north")
        await publish(flow_env["kafka_bootstrap"], floor, opening())
        board = await eventually(lambda: get_board(client, "north", NURSE))
        await eventually(lambda: _has_waiting(client, 2))
        assert board["clinic_id"] == "north"
        letters = await read_topic(
            flow_env["kafka_bootstrap"], topic_name(DEAD_LETTER, prefix), expect=6
        )
        reasons = sorted(orjson.loads(r.value)["reason"] for r in letters)
        assert len(reasons) == 6
        assert any(r.startswith("not valid JSON") for r in reasons)
        assert "roomed for unknown visit ghost" in reasons
        assert "unknown schema_version 7 for patient.arrived" in reasons
        assert "unknown event_type 'patient.teleported'" in reasons
        assert any(r.startswith("too large: ") for r in reasons)
        assert any("is not the event's clinic_id 'south'" in r for r in reasons)
        metrics = (await client.get("/metrics")).text
        assert 'clinicflow_dead_letters_total{reason="not_valid_json",service="flow"}' in metrics
        assert 'clinicflow_dead_letters_total{reason="too_large",service="flow"}' in metrics


async def _has_waiting(client: httpx.AsyncClient, count: int) -> bool:
    board = await get_board(client, "north", NURSE)
    return bool(board) and len(board["waiting"]) == count


@pytest.mark.reliability(
    "a floor command retried with the same Idempotency-Key",
    "one event published, the same answer",
)
async def test_a_nurse_rooms_a_patient_once_even_when_the_request_is_retried(
    flow_env: dict[str, Any],
) -> None:
    floor = topic_name(FLOOR, flow_env["topic_prefix"])
    async with (
        serving(create_app(settings_for(flow_env))) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        await publish(flow_env["kafka_bootstrap"], floor, opening())
        await eventually(lambda: _has_waiting(client, 2))
        headers = {**NURSE, "Idempotency-Key": "room-v1-once"}
        answers = [
            await client.post(
                "/clinics/north/visits/v1/room", json={"room_id": "r1"}, headers=headers
            )
            for _ in range(3)
        ]
        assert [a.status_code for a in answers] == [202, 202, 202]
        assert len({a.json()["event_id"] for a in answers}) == 1
        assert [a.json()["replayed"] for a in answers] == [False, True, True]
        board = await eventually(lambda: _board_where(client, lambda b: len(b["waiting"]) == 1))
        assert board["rooms"][0] == {
            **board["rooms"][0],
            "room_id": "r1",
            "state": "occupied",
            "ticket_code": "A-1",
        }
        records = await read_topic(flow_env["kafka_bootstrap"], floor)
        roomed = [r for r in records if ev.decode(r.value).event_type == "patient.roomed"]
        assert len(roomed) == 1
        # bad requests are refused with a reason, and publish nothing
        unknown = await client.post(
            "/clinics/north/visits/nobody/room", json={"room_id": "r2"}, headers=NURSE
        )
        assert unknown.status_code == 404 and "nobody" in unknown.json()["detail"]
        invalid = await client.post(
            "/clinics/north/visits/v2/room", json={"room": "r2"}, headers=NURSE
        )
        assert invalid.status_code == 422 and "room_id" in invalid.json()["detail"]
        forbidden = await client.post(
            "/clinics/north/visits/v2/room", json={"room_id": "r2"}, headers=auth("dev-kiosk")
        )
        assert forbidden.status_code == 403
        assert len(await read_topic(flow_env["kafka_bootstrap"], floor)) == len(records)


async def _board_where(client: httpx.AsyncClient, predicate: Any) -> Any:
    board = await get_board(client, "north", NURSE)
    return board if board and predicate(board) else None


async def test_the_live_stream_pushes_each_board_change(flow_env: dict[str, Any]) -> None:
    floor = topic_name(FLOOR, flow_env["topic_prefix"])
    async with (
        serving(create_app(settings_for(flow_env))) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        await publish(flow_env["kafka_bootstrap"], floor, opening()[:2])
        await eventually(lambda: get_board(client, "north", SCREEN))
        received: list[dict[str, Any]] = []

        async def listen() -> None:
            async with client.stream("GET", "/clinics/north/stream", headers=SCREEN) as stream:
                async for line in stream.aiter_lines():
                    if line.startswith("data: "):
                        received.append(orjson.loads(line[6:]))

        listener = asyncio.create_task(listen())
        await eventually(lambda: len(received) >= 1)
        await publish(flow_env["kafka_bootstrap"], floor, opening()[2:3])
        board = await eventually(
            lambda: next((b for b in received if b["waiting"]), None), timeout=5
        )
        assert board["waiting"][0]["ticket_code"] == "A-1"
        listener.cancel()


@pytest.mark.reliability(
    "Redis flushed under flow",
    "every board rebuilt from the topic equals the board before",
)
async def test_flow_rebuilds_the_same_boards_from_kafka_after_redis_is_flushed(
    flow_env: dict[str, Any],
) -> None:
    floor = topic_name(FLOOR, flow_env["topic_prefix"])
    base = datetime.now(UTC)
    events = [
        *opening(),
        floor_event(ev.PatientRoomed(visit_id="v1", room_id="r1"), minute=1, base=base),
        floor_event(
            ev.DelayAnnounced(provider_id="dr-lee", minutes=20, reason="late"), minute=2, base=base
        ),
        *[
            floor_event(
                ev.PatientArrived(
                    visit_id=f"s{n}",
                    ticket_code=f"B-{n}",
                    provider_id="dr-kim",
                    visit_type="physical",
                ),
                clinic="south",
                minute=n,
                base=base,
            )
            for n in range(5)
        ],
    ]
    await publish(flow_env["kafka_bootstrap"], floor, events)
    redis = Redis.from_url(flow_env["redis_url"])
    async with (
        serving(create_app(settings_for(flow_env))) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        before = {
            c: await eventually(lambda c=c: _settled(client, c, 1 if c == "north" else 5))
            for c in ("north", "south")
        }
    keys = [k async for k in redis.scan_iter(f"{flow_env['redis_prefix']}:*")]
    assert keys
    await redis.delete(*keys)
    async with (
        serving(create_app(settings_for(flow_env))) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        after = {
            c: await eventually(lambda c=c: _settled(client, c, 1 if c == "north" else 5))
            for c in ("north", "south")
        }
    await redis.aclose()
    for clinic in ("north", "south"):
        assert _stable(after[clinic]) == _stable(before[clinic])


async def _settled(client: httpx.AsyncClient, clinic: str, waiting: int) -> Any:
    board = await get_board(client, clinic, NURSE)
    return board if board and len(board["waiting"]) == waiting else None


def _stable(board: dict[str, Any]) -> dict[str, Any]:
    """The board minus what depends on when it was drawn."""
    return {k: v for k, v in board.items() if k != "as_of"}


FAULTS = [
    pytest.param("kill flow", id="flow-killed", marks=pytest.mark.reliability(
        "flow killed with -9 mid-stream, restarted",
        "no event lost, none applied twice, every board equals a board rebuilt from the topic",
    )),
    pytest.param("restart kafka", id="broker-killed", marks=pytest.mark.reliability(
        "the Kafka broker killed with -9 mid-stream and started again",
        "no event lost, none applied twice, every board equals a board rebuilt from the topic",
    )),
    pytest.param("restart redis", id="redis-killed", marks=pytest.mark.reliability(
        "Redis killed with -9 mid-stream and started again (append-only file kept)",
        "no event lost, none applied twice, every board equals a board rebuilt from the topic",
    )),
]


@pytest.mark.parametrize("fault", FAULTS)
async def test_flow_survives_a_fault_mid_stream_losing_nothing_and_applying_nothing_twice(
    fault: str,
    flow_env: dict[str, Any],
    own_stack: LocalStack,
    make_stack: Callable[[], LocalStack],
    tmp_path: Path,
) -> None:
    """A fault while a day streams in; afterwards every board equals a board rebuilt from
    the topic by the pure processor, and day counts show no fact applied twice."""
    if fault == "restart kafka":
        # a broker of its own: killed -9, a broker recovers every partition it holds on
        # start, and the session's holds every topic of every test before this one
        # (thousands of partitions: 90-120 s under load, where this broker takes seconds)
        own_stack = await asyncio.to_thread(make_stack)
        await ensure_topics(own_stack.kafka_bootstrap, flow_env["topic_prefix"])
        flow_env = {**flow_env, **flow_settings(own_stack.kafka_bootstrap, own_stack.redis_url,
                                                flow_env["topic_prefix"])}
    floor = topic_name(FLOOR, flow_env["topic_prefix"])
    env = service_env(flow_env)
    env["CLINICFLOW_LOG_FORMAT"] = "json"
    service = ServiceProcess("flow", env, tmp_path / "flow.log")
    day = a_day(("north", "south", "east"))
    service.start()
    try:
        await service.wait_ready()
        half = len(day) // 2
        await publish(flow_env["kafka_bootstrap"], floor, day[:half])
        publishing = asyncio.create_task(publish(flow_env["kafka_bootstrap"], floor, day[half:]))
        await asyncio.sleep(0.3)
        if fault == "kill flow":
            service.kill()
            await publishing
            service.start()
        elif fault == "restart kafka":
            await asyncio.to_thread(own_stack.restart_kafka, 1.0, True)
            await publishing
        else:
            await asyncio.to_thread(own_stack.restart_redis, 1.0, True)
            await publishing
        await service.wait_ready(60)
        async with httpx.AsyncClient(base_url=service.url) as client:
            await boards_match_a_rebuild(client, flow_env["kafka_bootstrap"], floor,
                                         ("north", "south", "east"))
    finally:
        service.stop()


@pytest.mark.reliability(
    "Kafka group offsets ahead of what Redis holds",
    "flow resumes from Redis's offsets, nothing skipped",
)
async def test_flow_rebuilds_from_the_beginning_even_when_the_group_committed_further(
    flow_env: dict[str, Any],
) -> None:
    """Redis lost, Kafka's committed offsets still there: flow must not trust them."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    floor = topic_name(FLOOR, flow_env["topic_prefix"])
    await publish(flow_env["kafka_bootstrap"], floor, opening())
    partition = next(iter({r.partition for r in await read_topic(
        flow_env["kafka_bootstrap"], floor, expect=4)}))
    committer = AIOKafkaConsumer(bootstrap_servers=flow_env["kafka_bootstrap"],
                                 group_id=flow_env["flow_group_id"],
                                 enable_auto_commit=False)
    await committer.start()
    tp = TopicPartition(floor, partition)
    committer.assign([tp])
    await committer.commit({tp: 4})  # "everything was applied", says the group
    await committer.stop()
    async with serving(create_app(settings_for(flow_env))) as url, httpx.AsyncClient(
        base_url=url
    ) as client:
        board = await eventually(lambda: _settled(client, "north", 2))
        assert [w["ticket_code"] for w in board["waiting"]] == ["A-1", "A-2"]


@pytest.mark.reliability(
    "two flow instances in one consumer group, one killed with -9 under load",
    "its partitions move to the other; every board equals a board rebuilt from the topic",
)
async def test_a_killed_instance_s_partitions_move_and_the_boards_stay_right(
    flow_env: dict[str, Any], tmp_path: Path,
) -> None:
    floor = topic_name(FLOOR, flow_env["topic_prefix"])
    env = service_env(flow_env)
    env["CLINICFLOW_FLOW_SESSION_TIMEOUT_MS"] = "3000"
    first = ServiceProcess("flow", env, tmp_path / "flow-1.log")
    second = ServiceProcess("flow", env, tmp_path / "flow-2.log")
    clinics = tuple(f"clinic-{n}" for n in range(8))  # spread over the partitions
    day = a_day(clinics, visits=30)
    first.start()
    second.start()
    try:
        await first.wait_ready()
        await second.wait_ready()
        # the second instance's first assignment is the group split between the two
        await eventually(lambda: "rebuilding partition" in (tmp_path / "flow-2.log")
                         .read_text(), timeout=30)
        half = len(day) // 2
        await publish(flow_env["kafka_bootstrap"], floor, day[:half])
        publishing = asyncio.create_task(publish(flow_env["kafka_bootstrap"], floor, day[half:]))
        await asyncio.sleep(0.3)
        first.kill()
        await publishing
        async with httpx.AsyncClient(base_url=second.url) as client:
            await boards_match_a_rebuild(client, flow_env["kafka_bootstrap"], floor, clinics,
                                         visits=30)
    finally:
        first.stop()
        second.stop()
