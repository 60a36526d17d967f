"""The foundation's end-to-end path: an arrival posted to checkin is on Kafka as the
documented envelope, flow applies it, and flow's board lists the patient with an
estimate. Real Kafka, real Redis, both services running for real."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import orjson

from shared.admin import ensure_topics
from shared.events import envelope_json_schema
from shared.topics import FLOOR, topic_name
from tests.helpers import ServiceProcess, auth, eventually, read_topic


async def test_an_arrival_posted_to_checkin_appears_on_flows_board_with_an_estimate(
    kafka_bootstrap: str, redis_url: str, topic_prefix: str, tmp_path: Path,
) -> None:
    await ensure_topics(kafka_bootstrap, topic_prefix)
    env = {
        "CLINICFLOW_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "CLINICFLOW_REDIS_URL": redis_url,
        "CLINICFLOW_TOPIC_PREFIX": topic_prefix,
        "CLINICFLOW_REDIS_PREFIX": topic_prefix.rstrip("."),
        "CLINICFLOW_FLOW_GROUP_ID": f"{topic_prefix}flow",
    }
    checkin = ServiceProcess("checkin", env, tmp_path / "checkin.log")
    flow = ServiceProcess("flow", env, tmp_path / "flow.log")
    checkin.start()
    flow.start()
    try:
        await checkin.wait_ready()
        await flow.wait_ready()
        async with httpx.AsyncClient() as client:
            # bad input: 422 naming the field, and nothing published
            bad = await client.post(f"{checkin.url}/clinics/north/arrivals",
                                    json={"visit_type": "", "priority": "soon"},
                                    headers=auth("dev-front-desk"))
            assert bad.status_code == 422
            assert "visit_type" in bad.json()["detail"] and "priority" in bad.json()["detail"]
            answer = await client.post(
                f"{checkin.url}/clinics/north/arrivals",
                json={"provider_id": "dr-lee", "visit_type": "follow_up",
                      "patient_ref": "p-7f3a9c"},
                headers={**auth("dev-front-desk"), "Idempotency-Key": "arrival-1"},
            )
            assert answer.status_code == 201, answer.text
            arrival = answer.json()
            retried = await client.post(
                f"{checkin.url}/clinics/north/arrivals",
                json={"provider_id": "dr-lee", "visit_type": "follow_up",
                      "patient_ref": "p-7f3a9c"},
                headers={**auth("dev-front-desk"), "Idempotency-Key": "arrival-1"},
            )
            assert retried.json() == {**arrival, "replayed": True}

            records = await read_topic(kafka_bootstrap, topic_name(FLOOR, topic_prefix),
                                       expect=1)
            assert len(records) == 1  # the retry published nothing
            record = records[0]
            assert record.key == b"north"
            document = orjson.loads(record.value)
            jsonschema.validate(document, envelope_json_schema())
            assert document["event_type"] == "patient.arrived"
            assert document["correlation_id"] == arrival["visit_id"]
            assert document["data"]["ticket_code"] == arrival["ticket_code"]
            assert "name" not in document["data"]

            async def listed() -> Any:
                response = await client.get(f"{flow.url}/clinics/north/board",
                                            headers=auth("dev-screen"))
                if response.status_code != 200:
                    return None
                waiting = response.json()["waiting"]
                return waiting[0] if waiting else None

            shown = await eventually(listed, timeout=20)
            assert shown["ticket_code"] == arrival["ticket_code"]
            assert shown["low"] <= shown["wait_minutes"] <= shown["high"]
    finally:
        checkin.stop()
        flow.stop()


async def test_the_four_services_run_alone_and_a_visit_goes_from_arrival_to_checkout(
    kafka_bootstrap: str, redis_url: str, topic_prefix: str, tmp_path: Path,
) -> None:
    await ensure_topics(kafka_bootstrap, topic_prefix)
    env = {
        "CLINICFLOW_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "CLINICFLOW_REDIS_URL": redis_url,
        "CLINICFLOW_TOPIC_PREFIX": topic_prefix,
        "CLINICFLOW_REDIS_PREFIX": topic_prefix.rstrip("."),
        "CLINICFLOW_FLOW_GROUP_ID": f"{topic_prefix}flow",
        "CLINICFLOW_NOTIFICATIONS_GROUP_ID": f"{topic_prefix}notifications",
        "CLINICFLOW_BILLING_GROUP_ID": f"{topic_prefix}billing",
    }
    services = {name: ServiceProcess(name, env, tmp_path / f"{name}.log")
                for name in ("checkin", "flow", "notifications", "billing")}
    for service in services.values():
        service.start()
    try:
        for service in services.values():
            await service.wait_ready()
        async with httpx.AsyncClient() as client:
            for name, service in services.items():
                metrics = await client.get(f"{service.url}/metrics")
                assert metrics.status_code == 200
                assert f'service="{name}"' in metrics.text or name in ("notifications",
                                                                       "billing")
                assert (await client.get(f"{service.url}/healthz")).json()["service"] == name
            arrival = (await client.post(
                f"{services['checkin'].url}/clinics/north/arrivals",
                json={"provider_id": "dr-lee", "visit_type": "follow_up"},
                headers={**auth("dev-front-desk"), "Idempotency-Key": uuid.uuid4().hex})).json()
            visit = arrival["visit_id"]
            flow = services["flow"].url

            async def board_where(check: Any) -> Any:
                response = await client.get(f"{flow}/clinics/north/board",
                                            headers=auth("dev-nurse"))
                board = response.json() if response.status_code == 200 else None
                return board if board is not None and check(board) else None

            await eventually(lambda: board_where(lambda b: len(b["waiting"]) == 1), timeout=20)

            async def estimates_now() -> Any:
                got = await client.get(
                    f"{services['notifications'].url}/clinics/north/estimates",
                    headers=auth("dev-nurse"))
                return got.json()["estimates"] if got.status_code == 200 else None

            async def no_estimates() -> bool:
                return await estimates_now() == []

            # flow's estimate of the waiting visit reaches notifications
            estimates = await eventually(estimates_now, timeout=20)
            assert estimates[0]["ticket_code"] == arrival["ticket_code"]
            roomed = await client.post(f"{flow}/clinics/north/visits/{visit}/room",
                                       json={"room_id": "room-4"}, headers=auth("dev-nurse"))
            assert roomed.status_code == 202
            await eventually(lambda: board_where(lambda b: b["in_rooms"]), timeout=20)
            out = await client.post(
                f"{services['billing'].url}/clinics/north/visits/{visit}/checkout",
                json={"cpt_codes": ["99213"], "icd10_codes": ["J06.9"]},
                headers=auth("dev-billing"))
            assert out.status_code == 202, out.text
            board = await eventually(
                lambda: board_where(lambda b: b["counts"].get("checked_out") == 1), timeout=20)
            assert board["waiting"] == [] and board["in_rooms"] == []
            assert board["rooms"][0]["state"] == "needs_cleaning"

            # out of the line, out of notifications' list of waiting visits' estimates
            assert await eventually(no_estimates, timeout=20)
    finally:
        for service in services.values():
            service.stop()
