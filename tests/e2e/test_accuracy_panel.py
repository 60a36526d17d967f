"""The operations dashboard's "how right were we today" panel in a real browser (Debian's
Chromium): flow's page reads notifications' accuracy API across origins (CORS), on a real
Kafka and Redis, with the told records and roomings scored by the real projection."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from playwright.async_api import Browser, expect

from services.notifications.app import create_app
from shared import events as ev
from shared.admin import ensure_topics
from shared.settings import NotificationsSettings
from tests.e2e.conftest import flow_env
from tests.fakes import FakeClock
from tests.helpers import ServiceProcess, auth, eventually, producer, serving

NOON = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # the clinic is on UTC here


def floor_and_told(minute: float, payload: ev.Payload) -> tuple[str, ev.Event]:
    event = ev.make_event(payload, clinic_id="lobby", source="test",
                          occurred_at=NOON - timedelta(minutes=60 - minute))
    return ("told" if isinstance(payload, ev.WaitTold) else "floor"), event


async def test_the_operations_screen_shows_how_right_the_told_waits_were_today(
    browser: Browser, kafka_bootstrap: str, redis_url: str, topic_prefix: str,
    tmp_path: Path, artifacts: Path,
) -> None:
    await ensure_topics(kafka_bootstrap, topic_prefix)
    flow = ServiceProcess("flow", flow_env(kafka_bootstrap, redis_url, topic_prefix),
                          tmp_path / "flow.log")
    settings = NotificationsSettings(
        kafka_bootstrap=kafka_bootstrap, redis_url=redis_url, topic_prefix=topic_prefix,
        redis_prefix=topic_prefix.rstrip("."),
        notifications_group_id=f"{topic_prefix}notifications", notifications_tick_seconds=0,
        notifications_cors_origins=[flow.url])
    # two patients told at 11:00 and roomed at 11:20: the kiosk's 10-30 (point 15) came
    # true, the screen's 0-10 (point 5) did not; the rolling average said 10 to both
    records = [
        floor_and_told(0, ev.PatientArrived(visit_id="v1", ticket_code="A-1",
                                            provider_id="p1", visit_type="follow_up")),
        floor_and_told(0, ev.PatientArrived(visit_id="v2", ticket_code="A-2",
                                            provider_id="p1", visit_type="follow_up")),
        floor_and_told(0, ev.WaitTold(visit_id="v1", ticket_code="A-1", channel="kiosk",
                                      low=10, high=30, wait_minutes=15, provider_id="p1",
                                      reference_minutes=10)),
        floor_and_told(0, ev.WaitTold(visit_id="v2", ticket_code="A-2", channel="tv",
                                      low=0, high=10, wait_minutes=5, provider_id="p1",
                                      reference_minutes=10)),
        floor_and_told(0, ev.RoomReady(room_id="1")),
        floor_and_told(0, ev.RoomReady(room_id="2")),
        floor_and_told(20, ev.PatientRoomed(visit_id="v1", room_id="1")),
        floor_and_told(20, ev.PatientRoomed(visit_id="v2", room_id="2")),
    ]
    async with serving(create_app(settings, clock=FakeClock(NOON))) as notifications, \
            httpx.AsyncClient(base_url=notifications) as client:
        async with producer(kafka_bootstrap) as kafka:
            for kind, event in records:
                await kafka.send_and_wait(f"{topic_prefix}clinicflow.{kind}.v1",
                                          ev.encode(event), key=b"lobby")

        async def scored() -> bool:
            answer = await client.get("/clinics/lobby/accuracy", headers=auth("dev-manager"))
            return answer.status_code == 200 and answer.json()["scored"] == 2

        await eventually(scored, timeout=30)
        flow.env["CLINICFLOW_FLOW_NURSE_ALERTS_URL"] = notifications
        flow.start()
        try:
            await flow.wait_ready()
            page = await browser.new_page(viewport={"width": 1920, "height": 1080})
            await page.goto(f"{flow.url}/screens/lobby/operations?token=dev-manager")
            panel = page.locator("#accuracy-panel")
            await expect(page.locator("#accuracy-date")).to_have_text("2026-03-02",
                                                                       timeout=10_000)
            overall = panel.locator("tr.overall td")
            await expect(overall).to_have_text(["all channels", "2", "50%", "10.0 min",
                                                "10.0 min"])
            await expect(overall.nth(2)).to_have_class("missed")  # under 60%
            channels = panel.locator("tr.channel")
            await expect(channels).to_have_count(2)
            await expect(channels.nth(0).locator("td")).to_have_text(
                ["kiosk", "1", "100%", "5.0 min", "10.0 min"])
            await expect(channels.nth(1).locator("td")).to_have_text(
                ["waiting-room TV", "1", "0%", "15.0 min", "10.0 min"])
            await page.screenshot(path=str(artifacts / "operations-accuracy.png"),
                                  full_page=True)
            # the lobby screen's token may not read the figures: said so, nothing shown
            screen = await browser.new_page(viewport={"width": 1280, "height": 800})
            await screen.goto(f"{flow.url}/screens/lobby/operations?token=dev-screen")
            await expect(screen.locator("#accuracy-note")).to_contain_text(
                "may not see the accuracy", timeout=10_000)
            await expect(screen.locator("#accuracy tbody tr")).to_have_count(0)
        finally:
            flow.stop()
