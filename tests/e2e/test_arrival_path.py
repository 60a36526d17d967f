"""The foundation's end-to-end path: an arrival posted to checkin is on Kafka as the
documented envelope, flow applies it, and flow's board lists the patient with an
estimate. Real Kafka, real Redis, both services running for real."""

from __future__ import annotations

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
