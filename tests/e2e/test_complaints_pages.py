"""The front office's complaint screens in a real browser (Debian's Chromium), for a clinic
in Honolulu seen from a browser in Tokyo: the front desk's follow-up list served by
notifications (the list, a complaint logged and one acknowledged through the API, the
patient's words hidden), the same page as the manager view (the words shown only when a
row's button is clicked, hidden again after a while or a refresh), a token of
another role refused in words; and the operations screen's "waits and satisfaction this
week" panel (flow's page reading notifications' satisfaction API), the clinic's week."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
from playwright.async_api import Browser, Request, expect

from services.notifications.app import create_app
from shared import events as ev
from shared.admin import ensure_topics
from shared.events_notifications import FeedbackGiven
from shared.settings import NotificationsSettings
from shared.topics import NOTIFICATIONS, TOLD, topic_name
from tests.e2e.conftest import flow_env
from tests.fakes import FakeClock
from tests.helpers import ServiceProcess, auth, eventually, producer, serving
from tests.integration.notifications_support import arrival, floor_event, publish_floor

CLINICS = orjson.dumps({"lobby": {"name": "Lobby Family Practice",
                                  "timezone": "Pacific/Honolulu"}}).decode()
HEARD = datetime(2026, 3, 2, 20, 30, tzinfo=UTC)  # Monday 10:30 in Honolulu, 05:30 in Tokyo
WORDS = "Waited an hour past what I was told, nobody said why"
DESK = auth("dev-front-desk")


def settings(kafka_bootstrap: str, redis_url: str, topic_prefix: str,
             **more: Any) -> NotificationsSettings:
    return NotificationsSettings(
        kafka_bootstrap=kafka_bootstrap, redis_url=redis_url, topic_prefix=topic_prefix,
        redis_prefix=topic_prefix.rstrip("."),
        notifications_group_id=f"{topic_prefix}notifications", notifications_tick_seconds=0,
        clinics=CLINICS, **more)


async def test_front_desk_follows_up_complaints_and_the_manager_reads_the_words(
    browser: Browser, kafka_bootstrap: str, redis_url: str, topic_prefix: str,
    artifacts: Path,
) -> None:
    await ensure_topics(kafka_bootstrap, topic_prefix)
    clock = FakeClock(HEARD)
    app = create_app(settings(kafka_bootstrap, redis_url, topic_prefix), clock=clock)
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as client:
        # heard on the phone at 10:30, nobody acknowledged it by 11:30: escalated at 11:31
        heard = await client.post(
            "/clinics/lobby/complaints", json={"category": "wait", "source": "phone",
                                               "text": WORDS},
            headers={**DESK, "Idempotency-Key": "heard-1"})
        assert heard.status_code == 201, heard.text
        clock.set(HEARD + timedelta(minutes=61))
        assert await app.state.complaints.tick(clock.now()) == 1

        context = await browser.new_context(timezone_id="Asia/Tokyo",
                                            viewport={"width": 1400, "height": 800})
        posted: list[Request] = []
        context.on("request", lambda r: posted.append(r) if r.method == "POST" else None)
        refused: list[str] = []  # no answer a page reads as a role check: no 4xx at all
        context.on("response", lambda r: refused.append(f"{r.status} {r.url}")
                   if 400 <= r.status < 500 else None)
        try:
            desk = await context.new_page()
            await desk.goto(f"{url}/screens/lobby/complaints?token=dev-front-desk")
            rows = desk.locator("#complaints tbody tr")
            await expect(rows).to_have_count(1, timeout=10_000)
            # the clinic's clock, not Tokyo's (Tue 3 Mar 05:30): overdue and escalated
            await expect(rows.first.locator("td:not(.actions)")).to_have_text(
                ["Mon 2 Mar 10:30", "wait", "by phone", "open", "–",
                 "Mon 2 Mar 11:30 (overdue)", "escalated Mon 2 Mar 11:31"])
            await expect(desk.locator("#view")).to_have_text("front desk")
            # the service's time of the list (11:31 in Honolulu), not the browser's clock
            await expect(desk.locator("#as-of")).to_have_text("As of Mon 2 Mar 11:31.")
            await expect(desk.locator("#text-field")).to_be_hidden()
            await expect(desk.locator("th.words")).to_be_hidden()
            assert "token=" not in desk.url

            # the front desk logs one heard in person, then acknowledges the phoned one
            await desk.locator("select[name=category]").select_option("billing")
            await desk.locator("select[name=source]").select_option("in_person")
            await desk.get_by_role("button", name="Log complaint").click()
            await expect(desk.locator("#log-result")).to_have_text(
                "Logged: billing, to acknowledge by Mon 2 Mar 12:31.")
            await expect(rows).to_have_count(2)
            phoned = desk.locator("tr", has_text="by phone")
            await phoned.get_by_role("button", name="Acknowledge").click()
            await expect(phoned.locator("td.status")).to_have_text("acknowledged")
            await expect(phoned.locator("td.owner")).to_have_text("dev front_desk")
            await expect(phoned.get_by_role("button", name="Acknowledge")).to_have_count(0)
            assert WORDS not in await desk.content()
            assert len(posted) == 2 and all(r.headers.get("idempotency-key")
                                            for r in posted)
            await desk.screenshot(path=str(artifacts / "complaints-front-desk.png"))

            # the same page with a manager's token: the manager view; the words only on
            # demand, one complaint at a time, never read by the refresh loop
            boss = await context.new_page()
            await boss.clock.install()  # the page's timers, moved by the test
            read: list[str] = []
            boss.on("request", lambda r: read.append(r.url) if r.method == "GET"
                    and "/complaints/" in r.url else None)
            await boss.goto(f"{url}/screens/lobby/complaints?token=dev-manager")
            await expect(boss.locator("#view")).to_have_text("manager view", timeout=10_000)
            show = "Show what the patient said"
            said = boss.locator("tr", has_text="by phone").locator("td.words")
            await expect(said).to_have_text(show)
            await expect(boss.locator("tr", has_text="in person").locator("td.words")) \
                .to_have_text(show)
            await boss.clock.run_for(31_000)  # a refresh: still no words read
            await expect(boss.locator("#text-field")).to_be_visible()
            assert read == [] and WORDS not in await boss.content()
            await said.get_by_role("button", name=show).click()
            await expect(said).to_have_text(WORDS)
            assert len(read) == 1 and read[0].endswith(heard.json()["complaint_id"])
            await expect(boss.locator("tr", has_text="in person").locator("td.words")) \
                .to_have_text(show)
            await boss.screenshot(path=str(artifacts / "complaints-manager.png"))
            await boss.clock.run_for(21_000)  # a short while: hidden again
            await expect(said).to_have_text(show)
            assert WORDS not in await boss.content()
            await said.get_by_role("button", name=show).click()
            await expect(said).to_have_text(WORDS)
            await boss.locator("#all").check()  # the list read again: hidden again
            await expect(said).to_have_text(show)
            assert WORDS not in await boss.content() and len(read) == 2
            assert refused == []  # the pages learnt their view from the list itself

            # a nurse's token and a made-up one: refused in words, nothing listed
            for token, says in (("dev-nurse", "may not see complaints"),
                                ("made-up-token", "was refused")):
                other = await context.new_page()
                await other.goto(f"{url}/screens/lobby/complaints?token={token}")
                await expect(other.locator("#refusal")).to_contain_text(says,
                                                                         timeout=10_000)
                await expect(other.locator("#list-panel")).to_be_hidden()
                await expect(other.locator("#complaints tbody tr")).to_have_count(0)
        finally:
            await context.close()


# Honolulu's Sunday 8 March 20:00 is UTC's Monday 9 March 06:00: the clinic's week is
# 2-8 March, UTC's 9-15 March
SUNDAY_EVENING = datetime(2026, 3, 9, 6, 0, tzinfo=UTC)
MONDAY_0750 = datetime(2026, 3, 2, 17, 50, tzinfo=UTC)  # Monday 07:50 in Honolulu
SUNDAY_1420 = datetime(2026, 3, 9, 0, 20, tzinfo=UTC)  # Sunday 14:20 in Honolulu


async def test_operations_screen_shows_this_week_s_waits_and_satisfaction(
    browser: Browser, kafka_bootstrap: str, redis_url: str, topic_prefix: str,
    tmp_path: Path, artifacts: Path,
) -> None:
    await ensure_topics(kafka_bootstrap, topic_prefix)
    flow = ServiceProcess("flow", {**flow_env(kafka_bootstrap, redis_url, topic_prefix),
                                   "CLINICFLOW_CLINICS": CLINICS}, tmp_path / "flow.log")
    # v1 (Monday): told 10, roomed after 10 minutes, rated 5; v2 (Sunday afternoon, UTC's
    # next week): told 5, roomed after 40 minutes, rated 2 (which raises a complaint)
    await publish_floor(kafka_bootstrap, topic_prefix, [
        arrival("v1", "A-1", "p1", MONDAY_0750, clinic="lobby"),
        floor_event(ev.PatientRoomed(visit_id="v1", room_id="r1"),
                    MONDAY_0750 + timedelta(minutes=10), "lobby"),
        arrival("v2", "A-2", "p1", SUNDAY_1420, clinic="lobby"),
        floor_event(ev.PatientRoomed(visit_id="v2", room_id="r1"),
                    SUNDAY_1420 + timedelta(minutes=40), "lobby"),
    ])
    async with producer(kafka_bootstrap) as kafka:
        for visit, arrived, told, rating, wait in (
                ("v1", MONDAY_0750, 10, 5, "about_right"),
                ("v2", SUNDAY_1420, 5, 2, "longer")):
            await kafka.send_and_wait(topic_name(TOLD, topic_prefix), ev.encode(ev.make_event(
                ev.WaitTold(visit_id=visit, channel="kiosk", low=max(0, told - 5),
                            high=told + 5, wait_minutes=told, provider_id="p1"),
                clinic_id="lobby", source="test", occurred_at=arrived + timedelta(minutes=1))),
                key=b"lobby")
            await kafka.send_and_wait(topic_name(NOTIFICATIONS, topic_prefix), ev.encode(
                ev.make_event(FeedbackGiven(visit_id=visit, rating=rating, wait=wait,
                                            text_given=False),
                              clinic_id="lobby", source="notifications",
                              occurred_at=arrived + timedelta(hours=2),
                              event_id=f"fb-{visit}")), key=b"lobby")
    notifications = settings(kafka_bootstrap, redis_url, topic_prefix,
                             notifications_cors_origins=[flow.url])
    app = create_app(notifications, clock=FakeClock(SUNDAY_EVENING))
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as client:
        async def read() -> bool:
            answer = await client.get("/clinics/lobby/satisfaction",
                                      headers=auth("dev-manager"))
            found = answer.json()
            return answer.status_code == 200 and found["ratings"] == 2 \
                and found["complaints"] == 1

        await eventually(read, timeout=30)
        flow.env["CLINICFLOW_FLOW_NURSE_ALERTS_URL"] = url
        flow.start()
        try:
            await flow.wait_ready()
            context = await browser.new_context(timezone_id="Asia/Tokyo",
                                                viewport={"width": 1920, "height": 1080})
            page = await context.new_page()
            await page.goto(f"{flow.url}/screens/lobby/operations?token=dev-manager")
            panel = page.locator("#satisfaction-panel")
            await expect(page.locator("#satisfaction-week")).to_have_text(
                "2 Mar – 8 Mar", timeout=10_000)
            await expect(page.locator("#satisfaction-finding")).to_have_text(
                "Patients who waited 20+ minutes longer than told rate 3.0 points lower "
                "(2.00 from 1 rating) than those who waited about as told or less "
                "(5.00 from 1).")
            waited = panel.locator("#satisfaction-wait tbody tr")
            await expect(waited.nth(1).locator("td")).to_have_text(
                ["10-20 min", "1", "1", "5.00", "0"])
            await expect(waited.nth(3).locator("td")).to_have_text(
                ["30+ min", "1", "1", "2.00", "1"])
            told = panel.locator("#satisfaction-told tbody tr")
            await expect(told.nth(0).locator("td")).to_have_text(
                ["20+ min longer than told", "1", "1", "2.00", "1"])
            await expect(told.nth(1).locator("td")).to_have_text(
                ["about as told", "1", "1", "5.00", "0"])
            providers = panel.locator("#satisfaction-providers tbody tr")
            await expect(providers).to_have_count(1)
            await expect(providers.nth(0).locator("td")).to_have_text(
                ["p1", "2", "2", "3.50", "1", "1", "2.00"])
            await expect(page.locator("#satisfaction-note")).to_have_text(
                "2 visits roomed, 2 rated, 1 complaint")
            await page.screenshot(path=str(artifacts / "operations-satisfaction.png"),
                                  full_page=True)
            # the lobby screen's token may not read them: said so
            screen = await context.new_page()
            await screen.goto(f"{flow.url}/screens/lobby/operations?token=dev-screen")
            await expect(screen.locator("#satisfaction-note")).to_contain_text(
                "may not see the satisfaction", timeout=10_000)
            await context.close()
        finally:
            flow.stop()
