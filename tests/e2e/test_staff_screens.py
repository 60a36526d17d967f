"""The nurse station and the operations dashboard in a real browser (Debian's Chromium,
Playwright) against the real flow service on a real Kafka and Redis: a nurse's click rooms
the patient and the lobby screen follows; overdue rows never look like fresh ones; the
manager's dashboard names the bottleneck and draws the day."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson
import pytest
from playwright.async_api import Browser, Page, expect

from services.notifications.app import create_app
from shared import events as ev
from shared.admin import ensure_topics
from shared.settings import NotificationsSettings
from tests.e2e.conftest import publish
from tests.helpers import ServiceProcess, auth, producer, read_topic, serving


async def open_page(browser: Browser, flow: dict[str, Any], page_name: str, token: str,
                    width: int = 1920, height: int = 1080) -> Page:
    page = await browser.new_page(viewport={"width": width, "height": height})
    await page.goto(f"{flow['service'].url}/screens/lobby/{page_name}?token={token}")
    await expect(page.locator("#status")).to_contain_text("live", timeout=10_000)
    return page


async def test_a_nurse_click_rooms_the_patient_and_the_waiting_room_screen_follows(
    browser: Browser, flow: dict[str, Any], artifacts: Path,
) -> None:
    await publish(flow, ev.RoomReady(room_id="4"),
                  ev.PatientArrived(visit_id="v17", ticket_code="A-17", provider_id="dr-lee",
                                    visit_type="follow_up"),
                  ev.PatientArrived(visit_id="v18", ticket_code="A-18", provider_id="dr-lee",
                                    visit_type="follow_up"))
    lobby = await open_page(browser, flow, "waiting-room", "dev-screen", 1280, 720)
    await expect(lobby.locator("#waiting .ticket")).to_have_text(["A-17", "A-18"])
    nurse = await open_page(browser, flow, "nurse", "dev-nurse")
    first = nurse.locator('#queues li.patient[data-visit="v17"]')
    await expect(first).to_contain_text("A-17")
    # the ready room is offered for the head of the queue, and the alert says so
    await expect(nurse.locator("#alerts")).to_contain_text("A-17")
    await nurse.screenshot(path=str(artifacts / "nurse-station.png"))

    await first.get_by_role("button", name="→ Room 4").click()
    await expect(lobby.locator("#calling li").first).to_contain_text("A-17", timeout=5_000)
    await expect(lobby.locator("#calling li").first).to_contain_text("Room 4")
    await expect(lobby.locator("#waiting .ticket")).to_have_text(["A-18"])
    await expect(nurse.locator('#rooms [data-room="4"]')).to_contain_text("A-17")

    # undo puts the patient back in line, on both screens
    undo = nurse.locator("#undo")
    await expect(undo).to_contain_text("A-17 roomed in Room 4")
    await undo.click()
    await expect(lobby.locator("#waiting .ticket")).to_have_text(["A-17", "A-18"],
                                                                 timeout=5_000)
    await expect(nurse.locator('#queues li.patient[data-visit="v17"]')).to_be_visible()


async def test_overdue_rows_are_coloured_by_how_long_and_fresh_ones_are_not(
    browser: Browser, flow: dict[str, Any],
) -> None:
    now = datetime.now(UTC)
    # defaults: waiting overdue 10 min after the appointment; 1x, 2x and 6x steps
    await publish(flow, ev.PatientArrived(visit_id="v1", ticket_code="A-1",
                                          provider_id="dr-lee", visit_type="follow_up",
                                          scheduled_at=now - timedelta(hours=3)),
                  at=now - timedelta(hours=3))
    await publish(flow, ev.PatientArrived(visit_id="v2", ticket_code="A-2",
                                          provider_id="dr-lee", visit_type="follow_up",
                                          scheduled_at=now - timedelta(minutes=15)),
                  at=now - timedelta(minutes=20))
    await publish(flow, ev.PatientArrived(visit_id="v3", ticket_code="A-3",
                                          provider_id="dr-lee", visit_type="follow_up",
                                          scheduled_at=now + timedelta(minutes=20)))
    # the lobby TV's token sees ticket codes and ranges only: the station says so, rather
    # than rows of "NaN h NaN waiting"
    screen = await open_page(browser, flow, "nurse", "dev-screen")
    await expect(screen.locator("#rooms")).to_contain_text("may not see", timeout=5_000)
    assert "NaN" not in await screen.locator("main").inner_text()
    await screen.close()
    nurse = await open_page(browser, flow, "nurse", "dev-nurse")
    rows = {visit: nurse.locator(f'#queues li.patient[data-visit="{visit}"]')
            for visit in ("v1", "v2", "v3")}
    await expect(rows["v3"]).to_have_class("patient level-0")
    await expect(rows["v2"]).to_have_class("patient level-1")
    await expect(rows["v1"]).to_have_class("patient level-3 next")
    colours = [await rows[v].evaluate("n => getComputedStyle(n).backgroundColor")
               for v in ("v1", "v2", "v3")]
    assert len(set(colours)) == 3, colours
    await expect(rows["v1"]).to_contain_text("3 h")


async def test_the_nurse_station_lists_every_waiting_patient_a_long_queue_scrolls(
    browser: Browser, flow: dict[str, Any],
) -> None:
    """Nine walk-ins for the first available provider: nine rows in its column (it
    scrolls), never "+3 more"; the last one can be scrolled to."""
    await publish(flow, *(ev.PatientArrived(visit_id=f"w{n}", ticket_code=f"W-{n}",
                                            provider_id=None, visit_type="urgent")
                          for n in range(1, 10)))
    nurse = await open_page(browser, flow, "nurse", "dev-nurse")
    queue = nurse.locator('#queues .queue[data-provider="any"]')
    await expect(queue.locator("li.patient")).to_have_count(9, timeout=5_000)
    assert "more" not in await queue.inner_text()
    last = queue.locator('li.patient[data-visit="w9"]')
    await last.scroll_into_view_if_needed()
    await expect(last).to_be_in_viewport()


async def test_the_operations_dashboard_names_the_bottleneck_and_draws_the_day(
    browser: Browser, flow: dict[str, Any], artifacts: Path,
) -> None:
    now = datetime.now(UTC)
    start = now - timedelta(minutes=90)
    # two rooms, both occupied by dr-lee's patients who wait for the provider; four more
    # of dr-lee's patients wait in the lobby, past their appointments
    events: list[tuple[ev.Payload, datetime]] = [
        (ev.RoomReady(room_id="1"), start), (ev.RoomReady(room_id="2"), start),
    ]
    for n in range(6):
        events.append((ev.PatientArrived(visit_id=f"v{n}", ticket_code=f"A-{n}",
                                         provider_id="dr-lee", visit_type="follow_up",
                                         scheduled_at=start + timedelta(minutes=5 * n)),
                       start + timedelta(minutes=5 * n)))
    events.append((ev.PatientRoomed(visit_id="v0", room_id="1"), start + timedelta(minutes=20)))
    events.append((ev.PatientRoomed(visit_id="v1", room_id="2"), start + timedelta(minutes=30)))
    # a walk-in for the first available provider: no provider, so no pace of its own
    events.append((ev.PatientArrived(visit_id="v9", ticket_code="W-9", provider_id=None,
                                     visit_type="urgent"), start + timedelta(minutes=40)))
    for payload, at in events:
        await publish(flow, payload, at=at)

    screen = await open_page(browser, flow, "operations", "dev-screen")
    await expect(screen.locator("#bottleneck")).to_contain_text("may not see", timeout=5_000)
    page = await open_page(browser, flow, "operations", "dev-manager")
    bottleneck = page.locator("#bottleneck")
    await expect(bottleneck).to_contain_text("dr-lee", timeout=5_000)
    await expect(page.locator("#bottleneck-panel")).to_have_class("stuck")
    await expect(page.locator("#tile-waiting")).to_have_text("5")
    await expect(page.locator("#tile-rooms")).to_have_text("2 / 2")
    # a line per queue, bars per stage and per provider's pace
    await expect(page.locator("#queue-chart path.line")).to_have_count(2)
    await expect(page.locator("#stage-chart rect.bar").first).to_be_visible()
    await expect(page.locator("#pace-chart rect.bar").first).to_be_visible()
    await expect(page.locator("#pace-list")).to_contain_text("dr-lee")
    await expect(page.locator("#pace-list")).not_to_contain_text("first available")
    await expect(page.locator("#pace-list li")).to_have_count(1)
    await page.screenshot(path=str(artifacts / "operations.png"), full_page=True)


async def test_the_lobby_screen_marks_a_patient_who_was_called_back_from_outside(
    browser: Browser, kafka_bootstrap: str, redis_url: str, topic_prefix: str,
    tmp_path: Path, smtp_server: Any,
) -> None:
    await ensure_topics(kafka_bootstrap, topic_prefix)
    common = {"kafka_bootstrap": kafka_bootstrap, "redis_url": redis_url,
              "topic_prefix": topic_prefix, "redis_prefix": topic_prefix.rstrip(".")}
    flow = ServiceProcess("flow", {
        "CLINICFLOW_KAFKA_BOOTSTRAP": kafka_bootstrap, "CLINICFLOW_REDIS_URL": redis_url,
        "CLINICFLOW_TOPIC_PREFIX": topic_prefix,
        "CLINICFLOW_REDIS_PREFIX": topic_prefix.rstrip("."),
        "CLINICFLOW_FLOW_GROUP_ID": f"{topic_prefix}flow",
    }, tmp_path / "flow.log")
    settings = NotificationsSettings(
        **common, notifications_group_id=f"{topic_prefix}notifications",
        notifications_tick_seconds=0.1, smtp_host="127.0.0.1", smtp_port=smtp_server.port,
        notifications_cors_origins=[flow.url],
        notifications_rules=orjson.dumps({"default": {"settle_seconds": 1,
                                                      "come_back_lead_minutes": 30}}).decode())
    async with serving(create_app(settings)) as notifications, \
            httpx.AsyncClient(base_url=notifications) as client:
        flow.env["CLINICFLOW_FLOW_NURSE_ALERTS_URL"] = notifications
        flow.start()
        try:
            await flow.wait_ready()
            async with producer(kafka_bootstrap) as kafka:
                for payload in (ev.PatientArrived(visit_id="v17", ticket_code="A-17",
                                                  provider_id="dr-lee", visit_type="follow_up"),
                                ev.PatientArrived(visit_id="v18", ticket_code="A-18",
                                                  provider_id="dr-lee", visit_type="follow_up")):
                    event = ev.make_event(payload, clinic_id="north", source="test",
                                          occurred_at=datetime.now(UTC))
                    await kafka.send_and_wait(f"{topic_prefix}clinicflow.floor.v1",
                                              ev.encode(event), key=b"north")
            # the contact is taken for a visit on the floor (the notifier waits to have read it)
            answer = await client.put(
                "/clinics/north/visits/v17/contact", headers=auth("dev-front-desk"),
                json={"channel": "email", "address": "a17@patients.example.org",
                      "consent": True, "wait_anywhere": True, "delay_updates": False})
            assert answer.status_code == 200, answer.text
            page = await browser.new_page(viewport={"width": 1920, "height": 1080})
            await page.goto(f"{flow.url}/screens/north/waiting-room?token=dev-screen")
            row = page.locator("#waiting li", has_text="A-17")
            await expect(row.locator(".told")).to_have_text(
                re.compile("called back|room ready"), timeout=20_000)
            # only the patient who was told is marked
            await expect(page.locator("#waiting li", has_text="A-18").locator(".told")) \
                .to_have_count(0)
            assert len(smtp_server.to("a17@patients.example.org")) >= 1
        finally:
            flow.stop()


NAMED_CLINIC = {"lobby": {"name": "Lobby Family Practice", "timezone": "America/New_York",
                          "providers": {"p1": "Dr. Okafor"},
                          "rooms": {"r5": "Exam 5", "r6": "Exam 6"}}}


@pytest.fixture
async def named_flow(kafka_bootstrap: str, redis_url: str, topic_prefix: str,
                     tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """Flow for a clinic in New York whose provider and rooms have names."""
    await ensure_topics(kafka_bootstrap, topic_prefix)
    env = {
        "CLINICFLOW_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "CLINICFLOW_REDIS_URL": redis_url,
        "CLINICFLOW_TOPIC_PREFIX": topic_prefix,
        "CLINICFLOW_REDIS_PREFIX": topic_prefix.rstrip("."),
        "CLINICFLOW_FLOW_GROUP_ID": f"{topic_prefix}flow",
        "CLINICFLOW_FLOW_CHECKPOINT_SECONDS": "0.2",
        "CLINICFLOW_CLINICS": orjson.dumps(NAMED_CLINIC).decode(),
    }
    service = ServiceProcess("flow", env, tmp_path / "flow.log")
    service.start()
    await service.wait_ready()
    try:
        yield {"service": service, "topic": f"{topic_prefix}clinicflow.floor.v1",
               "bootstrap": kafka_bootstrap}
    finally:
        service.stop()


async def test_screens_use_the_clinic_s_names_and_clock_in_a_browser_elsewhere(
    browser: Browser, named_flow: dict[str, Any], artifacts: Path,
) -> None:
    new_york = ZoneInfo("America/New_York")
    today = datetime.now(new_york).date()
    appointment = datetime.combine(today, time(9, 45), tzinfo=new_york)
    await publish(named_flow,
                  ev.RoomReady(room_id="r5"), ev.RoomReady(room_id="r6"),
                  ev.PatientArrived(visit_id="v1", ticket_code="A-1", provider_id="p1",
                                    visit_type="follow_up", scheduled_at=appointment),
                  ev.PatientArrived(visit_id="v2", ticket_code="A-2", provider_id="p1",
                                    visit_type="follow_up"),
                  ev.PatientRoomed(visit_id="v2", room_id="r6"),
                  ev.DelayAnnounced(provider_id="p1", minutes=40, reason="late start"))
    # the browser lives in Tokyo; the clinic in New York
    context = await browser.new_context(timezone_id="Asia/Tokyo",
                                        viewport={"width": 1920, "height": 1080})
    url = named_flow["service"].url

    async def open_in_tokyo(page_name: str, token: str) -> Page:
        page = await context.new_page()
        await page.goto(f"{url}/screens/lobby/{page_name}?token={token}")
        await expect(page.locator("#status")).to_contain_text("live", timeout=10_000)
        return page

    try:
        nurse = await open_in_tokyo("nurse", "dev-nurse")
        patient = nurse.locator('#queues li.patient[data-visit="v1"]')
        await expect(patient).to_contain_text("appt 09:45")
        assert "02:45" not in await patient.inner_text()
        assert "10:45" not in await patient.inner_text()  # nor 23:45 Tokyo's next day
        await expect(nurse.locator("#queues")).to_contain_text("Dr. Okafor")
        await expect(nurse.locator('#rooms [data-room="r6"]')).to_contain_text("Exam 6")
        await expect(nurse.locator('#rooms [data-room="r5"]')).to_contain_text("Exam 5")
        clock = await nurse.locator("#clock").inner_text()
        assert clock == datetime.now(new_york).strftime("%H:%M") or \
            clock == (datetime.now(new_york) - timedelta(minutes=1)).strftime("%H:%M")
        await nurse.screenshot(path=str(artifacts / "nurse-station-new-york.png"))

        lobby = await open_in_tokyo("waiting-room", "dev-screen")
        await expect(lobby.locator(".banner")).to_contain_text(
            "Dr. Okafor is running about 40 minutes behind")
        await expect(lobby.locator("#calling li").first).to_contain_text("Exam 6")
        assert "p1" not in await lobby.locator("body").inner_text()
        assert await lobby.title() == "Waiting room · Lobby Family Practice"

        operations = await open_in_tokyo("operations", "dev-manager")
        await expect(operations.locator("#pace-list")).to_contain_text("Dr. Okafor")
        text = await operations.locator("main").inner_text()
        assert not re.search(r"\bp1\b", text) and not re.search(r"\br[56]\b", text), text
    finally:
        await context.close()


async def test_a_nurse_action_retried_keeps_its_idempotency_key_and_happens_once(
    browser: Browser, flow: dict[str, Any],
) -> None:
    await publish(flow, ev.RoomOutOfService(room_id="4", reason="leak"),
                  ev.RoomOutOfService(room_id="5", reason="leak"))
    nurse = await open_page(browser, flow, "nurse", "dev-nurse")
    keys: list[str] = []
    lost = {"left": 1}

    async def drop_the_first(route: Any) -> None:
        keys.append(route.request.headers["idempotency-key"])
        if lost["left"] > 0:  # the request never gets an answer
            lost["left"] -= 1
            await route.abort("connectionreset")
        else:
            await route.continue_()

    # the page retries by itself with the same key
    await nurse.route("**/clinics/lobby/rooms/4/ready", drop_the_first)
    await nurse.locator('#rooms [data-room="4"]').get_by_role(
        "button", name="Back in service").click()
    await expect(nurse.locator("#notice")).to_contain_text("ready \u2713", timeout=10_000)
    assert len(keys) == 2 and keys[0] == keys[1]

    # every automatic try lost: the nurse's second click sends the same key again
    keys.clear()
    lost["left"] = 3
    await nurse.route("**/clinics/lobby/rooms/5/ready", drop_the_first)
    room5 = nurse.locator('#rooms [data-room="5"]')
    await room5.get_by_role("button", name="Back in service").click()
    await expect(nurse.locator("#notice")).to_contain_text("failed", timeout=10_000)
    await room5.get_by_role("button", name="Back in service").click()
    await expect(nurse.locator("#notice")).to_contain_text("ready \u2713", timeout=10_000)
    assert len(keys) == 4 and len(set(keys)) == 1
    await expect(room5).to_contain_text("Ready", timeout=5_000)
    records = await read_topic(flow["bootstrap"], flow["topic"], expect=4)
    ready = [ev.decode(r.value).payload for r in records
             if ev.decode(r.value).event_type == "room.ready"]
    assert sorted(p.room_id for p in ready) == ["4", "5"]  # each once
