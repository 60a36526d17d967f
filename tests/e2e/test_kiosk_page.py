"""The self check-in kiosk in a real browser (Debian's Chromium driven by Playwright) at
tablet sizes, against checkin and flow running for real on the session's Kafka and Redis:
the patient enters the appointment's kiosk code (or birth date and initials) and gets a
ticket code and flow's estimate; a check-in whose answer is lost is retried under the
same Idempotency-Key and answered with its ticket, never checked in twice."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from playwright.async_api import Browser, Page, Route, expect

from tests.helpers import ServiceProcess, auth, read_topic
from tests.integration.test_checkin_support import midday_zone

SCHEDULE = ("appointment_id,patient_ref,provider_id,visit_type,scheduled_at,"
            "duration_minutes,dob,initials\n"
            "apt-0815-lee,p-7f3a9c,dr-lee,follow_up,{soon},15,1980-04-02,JS\n"
            "apt-0830-kim,p-1b2c3d,dr-kim,physical,{later},30,1975-11-30,AM\n")


@pytest.fixture
async def checkin(flow: dict[str, Any], kafka_bootstrap: str, redis_url: str,
                  topic_prefix: str, tmp_path: Path) -> AsyncIterator[ServiceProcess]:
    """Checkin as a child process next to ``flow`` (same topics and Redis prefix), with
    today's schedule imported."""
    env = {
        "CLINICFLOW_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "CLINICFLOW_REDIS_URL": redis_url,
        "CLINICFLOW_TOPIC_PREFIX": topic_prefix,
        "CLINICFLOW_REDIS_PREFIX": topic_prefix.rstrip("."),
        "CLINICFLOW_CHECKIN_GROUP_ID": f"{topic_prefix}checkin",
        "CLINICFLOW_CHECKIN_TIMEZONE": midday_zone(),  # "today" whenever the test runs
    }
    service = ServiceProcess("checkin", env, tmp_path / "checkin.log")
    service.start()
    try:
        await service.wait_ready()
        now = datetime.now(UTC).replace(microsecond=0)
        schedule = SCHEDULE.format(soon=(now + timedelta(minutes=5)).isoformat(),
                                   later=(now + timedelta(minutes=20)).isoformat())
        async with httpx.AsyncClient() as client:
            answer = await client.post(f"{service.url}/clinics/north/schedule/csv",
                                       content=schedule,
                                       headers={**auth("dev-front-desk"),
                                                "Content-Type": "text/csv"})
            assert answer.status_code == 200, answer.text
            listed = await client.get(f"{service.url}/clinics/north/schedule",
                                      headers=auth("dev-front-desk"))
            service.kiosk_codes = {  # type: ignore[attr-defined]
                row["appointment_id"]: row["kiosk_code"]
                for row in listed.json()["appointments"]}
        yield service
    finally:
        service.stop()


async def open_kiosk(browser: Browser, checkin: ServiceProcess, width: int,
                     height: int) -> Page:
    page = await browser.new_page(viewport={"width": width, "height": height},
                                  has_touch=True)
    await page.goto(f"{checkin.url}/kiosk/north?token=dev-kiosk")
    await expect(page.locator("#appointment-code")).to_be_visible()
    assert "token" not in page.url  # kept in the tab's session, not in the address bar
    return page


async def no_horizontal_scroll(page: Page) -> bool:
    return bool(await page.evaluate(
        "document.documentElement.scrollWidth <= window.innerWidth"))


async def test_a_patient_checks_in_with_the_appointment_code_on_a_portrait_tablet(
    browser: Browser, checkin: ServiceProcess, flow: dict[str, Any], artifacts: Path,
    kafka_bootstrap: str,
) -> None:
    page = await open_kiosk(browser, checkin, 768, 1024)
    assert await no_horizontal_scroll(page)
    # one way of checking in at a time: the other tabs' forms are hidden
    await expect(page.locator("#by-code")).to_be_visible()
    await expect(page.locator("#by-identity")).to_be_hidden()
    await expect(page.locator("#lookup")).to_be_hidden()
    # big enough to touch: every tab and button at least 44 px high
    for box in [await b.bounding_box() for b in await page.locator("button:visible").all()]:
        assert box is not None and box["height"] >= 44, box
    await page.screenshot(path=str(artifacts / "kiosk-start-768x1024.png"))
    code = checkin.kiosk_codes["apt-0815-lee"]  # type: ignore[attr-defined]
    # typed as a patient would, in lower case, from the confirmation
    await page.locator("#appointment-code").fill(code.lower())
    await page.get_by_role("button", name="Check in").first.click()
    ticket = page.locator("#ticket")
    await expect(ticket).to_have_text("A-1", timeout=5_000)
    await expect(page.locator("#done")).to_be_visible()
    # flow's first estimate reaches the kiosk through checkin's projection within seconds
    await expect(page.locator("#wait")).to_contain_text("Estimated wait", timeout=5_000)
    await expect(page.locator("#wait")).to_contain_text("1st in line")
    assert await no_horizontal_scroll(page)
    text = await page.locator("body").inner_text()
    for private in ("p-7f3a9c", "dr-lee", "follow_up", "v-"):
        assert private not in text
    await page.screenshot(path=str(artifacts / "kiosk-768x1024.png"))

    # the same code again is refused politely, and the page resets for the next patient
    await page.get_by_role("button", name="Done").click()
    await expect(page.locator("#start")).to_be_visible()
    await expect(page.locator("#appointment-code")).to_have_value("")
    await page.locator("#appointment-code").fill(code)
    await page.get_by_role("button", name="Check in").first.click()
    await expect(page.locator("#error")).to_contain_text("already checked in")

    records = await read_topic(flow["bootstrap"], flow["topic"], expect=3)
    arrived = [orjson.loads(r.value) for r in records]
    arrived = [e for e in arrived if e["event_type"] == "patient.arrived"]
    assert len(arrived) == 1 and arrived[0]["data"]["ticket_code"] == "A-1"


async def test_date_of_birth_and_initials_then_the_place_in_line_on_a_landscape_tablet(
    browser: Browser, checkin: ServiceProcess, flow: dict[str, Any], artifacts: Path,
) -> None:
    page = await open_kiosk(browser, checkin, 1024, 768)
    await page.get_by_role("tab", name="Date of birth").click()
    await expect(page.locator("#by-code")).to_be_hidden()
    await expect(page.locator("#by-identity")).to_be_visible()
    await page.locator("#dob").fill("1975-11-30")
    await page.locator("#initials").fill("am")
    await page.locator("#by-identity").get_by_role("button", name="Check in").click()
    await expect(page.locator("#ticket")).to_have_text("A-1", timeout=5_000)
    await expect(page.locator("#wait")).to_contain_text("Estimated wait", timeout=5_000)
    assert await no_horizontal_scroll(page)
    await page.screenshot(path=str(artifacts / "kiosk-1024x768.png"))
    await page.get_by_role("button", name="Done").click()

    await page.get_by_role("tab", name="My place in line").click()
    await page.locator("#ticket-code").fill("a-1")
    await page.get_by_role("button", name="Show my place in line").click()
    await expect(page.locator("#ticket")).to_have_text("A-1", timeout=5_000)
    await expect(page.locator("#wait")).to_contain_text("1st in line")

    # a wrong birth date says so without echoing anything back
    await page.get_by_role("button", name="Done").click()
    await page.get_by_role("tab", name="Date of birth").click()
    await page.locator("#dob").fill("1975-11-29")
    await page.locator("#initials").fill("AM")
    await page.locator("#by-identity").get_by_role("button", name="Check in").click()
    await expect(page.locator("#error")).to_contain_text("could not find", timeout=5_000)
    assert "1975" not in await page.locator("#error").inner_text()

    # a kiosk opened without its token says so and offers nothing to type into
    fresh = await browser.new_page(viewport={"width": 1024, "height": 768})
    await fresh.goto(f"{checkin.url}/kiosk/north")
    await expect(fresh.locator("#setup")).to_be_visible()
    await expect(fresh.locator("#start")).to_be_hidden()


async def test_a_check_in_whose_answer_is_lost_gets_its_ticket_on_the_retry_never_a_second(
    browser: Browser, checkin: ServiceProcess, flow: dict[str, Any], artifacts: Path,
) -> None:
    page = await open_kiosk(browser, checkin, 768, 1024)
    sent_keys: list[str | None] = []
    lost = 0

    async def lose_the_first_answers(route: Route) -> None:
        nonlocal lost
        sent_keys.append(route.request.headers.get("idempotency-key"))
        if lost < 2:
            lost += 1
            await route.fetch()  # checkin checks the patient in...
            await route.abort("connectionreset")  # ...and the answer never reaches the kiosk
        else:
            await route.continue_()

    await page.route("**/kiosk/check-ins", lose_the_first_answers)
    code = checkin.kiosk_codes["apt-0830-kim"]  # type: ignore[attr-defined]
    await page.locator("#appointment-code").fill(code)
    await page.get_by_role("button", name="Check in").first.click()
    # the page retried once by itself under the same key; that answer was lost too
    await expect(page.locator("#error")).to_contain_text("tap Check in again", timeout=5_000)
    # the patient taps again: the same attempt, so the same key, so the same check-in
    await page.get_by_role("button", name="Check in").first.click()
    await expect(page.locator("#ticket")).to_have_text("A-1", timeout=5_000)
    await page.screenshot(path=str(artifacts / "kiosk-retried-768x1024.png"))
    assert len(sent_keys) == 3 and sent_keys[0] and len(set(sent_keys)) == 1, sent_keys

    records = await read_topic(flow["bootstrap"], flow["topic"], expect=3)
    arrived = [e for e in (orjson.loads(r.value) for r in records)
               if e["event_type"] == "patient.arrived"]
    assert [e["data"]["ticket_code"] for e in arrived] == ["A-1"]

    # the next patient's check-in is a new attempt with a key of its own
    await page.get_by_role("button", name="Done").click()
    await page.get_by_role("tab", name="Date of birth").click()
    await page.locator("#dob").fill("1980-04-02")
    await page.locator("#initials").fill("JS")
    await page.locator("#by-identity").get_by_role("button", name="Check in").click()
    await expect(page.locator("#ticket")).to_have_text("A-2", timeout=5_000)
    assert len(sent_keys) == 4 and sent_keys[3] not in sent_keys[:3]
