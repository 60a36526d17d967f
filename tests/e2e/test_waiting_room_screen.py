"""The waiting-room TV in a real browser (Debian's Chromium driven by Playwright) against
the real flow service on a real Kafka and Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect

from shared import events as ev
from tests.e2e.conftest import publish
from tests.helpers import ServiceProcess


async def open_screen(browser: Browser, flow: dict[str, Any], width: int = 1920,
                      height: int = 1080) -> Page:
    page = await browser.new_page(viewport={"width": width, "height": height})
    await page.goto(f"{flow['service'].url}/screens/lobby/waiting-room?token=dev-screen")
    return page


async def test_an_arrival_appears_on_the_waiting_room_screen_within_a_second(
    browser: Browser, flow: dict[str, Any], artifacts: Path,
) -> None:
    await publish(flow, ev.RoomReady(room_id="4"))
    page = await open_screen(browser, flow)
    await expect(page.locator("#status")).to_contain_text("live", timeout=10_000)
    assert "token" not in page.url  # kept in the tab's session, not in the address bar
    await publish(flow, ev.PatientArrived(visit_id="v1", ticket_code="A-17",
                                          provider_id="dr-lee", visit_type="follow_up"))
    started = asyncio.get_running_loop().time()
    await expect(page.locator("#waiting .ticket").first).to_have_text("A-17", timeout=1_000)
    assert asyncio.get_running_loop().time() - started < 1.0
    await expect(page.locator("#waiting .range").first).to_contain_text("min")
    await page.screenshot(path=str(artifacts / "waiting-room-1920x1080.png"))


async def test_a_delay_banner_appears_and_clears(browser: Browser,
                                                 flow: dict[str, Any]) -> None:
    await publish(flow, ev.PatientArrived(visit_id="v1", ticket_code="A-1",
                                          provider_id="dr-lee", visit_type="follow_up"))
    page = await open_screen(browser, flow, 1280, 720)
    await expect(page.locator("#waiting .ticket").first).to_have_text("A-1", timeout=10_000)
    await publish(flow, ev.DelayAnnounced(provider_id="dr-lee", minutes=25, reason="late"))
    banner = page.locator(".banner")
    await expect(banner).to_contain_text("dr-lee is running about 25 minutes behind",
                                         timeout=5_000)
    await publish(flow, ev.DelayCleared(provider_id="dr-lee"))
    await expect(banner).to_have_count(0, timeout=5_000)


async def test_the_screen_shows_who_is_called_and_never_a_name(
    browser: Browser, flow: dict[str, Any], artifacts: Path,
) -> None:
    await publish(flow,
                  ev.PatientArrived(visit_id="v1", ticket_code="A-1", provider_id="dr-lee",
                                    visit_type="follow_up", patient_ref="p-123"),
                  ev.PatientArrived(visit_id="v2", ticket_code="A-2", provider_id="dr-lee",
                                    visit_type="follow_up", patient_ref="p-456"),
                  ev.PatientRoomed(visit_id="v1", room_id="4"))
    page = await open_screen(browser, flow, 1280, 720)
    await expect(page.locator("#calling li").first).to_contain_text("A-1", timeout=10_000)
    await expect(page.locator("#calling li").first).to_contain_text("Room 4")
    text = await page.locator("body").inner_text()
    for private in ("p-123", "p-456", "v1", "v2", "follow_up"):
        assert private not in text
    overflow = await page.evaluate(
        "document.documentElement.scrollWidth > window.innerWidth")
    assert overflow is False
    await page.screenshot(path=str(artifacts / "waiting-room-1280x720.png"))


@pytest.mark.reliability(
    "flow killed under an open waiting-room screen",
    "the screen reconnects by itself and shows new arrivals",
)
async def test_the_screen_recovers_by_itself_after_the_flow_service_restarts(
    browser: Browser, flow: dict[str, Any],
) -> None:
    await publish(flow, ev.PatientArrived(visit_id="v1", ticket_code="A-1",
                                          provider_id="dr-lee", visit_type="follow_up"))
    page = await open_screen(browser, flow)
    await expect(page.locator("#waiting .ticket").first).to_have_text("A-1", timeout=10_000)
    service: ServiceProcess = flow["service"]
    service.kill()
    await expect(page.locator("#status")).to_contain_text("reconnecting", timeout=10_000)
    service.start()
    await service.wait_ready()
    await publish(flow, ev.PatientArrived(visit_id="v2", ticket_code="A-2",
                                          provider_id="dr-lee", visit_type="follow_up"))
    await expect(page.locator("#waiting .ticket")).to_have_text(["A-1", "A-2"],
                                                                timeout=20_000)
    await expect(page.locator("#status")).to_contain_text("live")


@pytest.mark.parametrize(("width", "height"), [(1920, 1080), (1280, 720)])
async def test_forty_waiting_patients_each_see_their_ticket_page_by_page(
    browser: Browser, flow: dict[str, Any], artifacts: Path, width: int, height: int,
) -> None:
    tickets = [f"B-{n:02d}" for n in range(1, 41)]
    await publish(flow, *(ev.PatientArrived(visit_id=f"v{n}", ticket_code=ticket,
                                            provider_id="dr-lee", visit_type="follow_up")
                          for n, ticket in enumerate(tickets)))
    page = await open_screen(browser, flow, width, height)
    await expect(page.locator("#waiting li")).to_have_count(40, timeout=15_000)
    pages = await page.evaluate("window.waitingRoom.pages")
    assert pages > 1
    await expect(page.locator("#waiting-page")).to_have_text(f"page 1 of {pages}")
    seen: list[str] = []
    for n in range(pages):
        if n > 0:  # the screen turns pages on a timer; the test turns them itself
            assert await page.evaluate("window.waitingRoom.nextPage().page") == n + 1
            await expect(page.locator("#waiting-page")).to_have_text(
                f"page {n + 1} of {pages}")
        visible = page.locator("#waiting li:not([hidden])")
        shown = await visible.locator(".ticket").all_inner_texts()
        assert shown, f"page {n + 1} is empty"
        # every row of the page is whole, inside the panel
        fits = await page.evaluate("""() => {
            const panel = document.getElementById('waiting-panel').getBoundingClientRect();
            return Array.from(document.querySelectorAll('#waiting li:not([hidden])'))
              .every((li) => li.getBoundingClientRect().bottom <= panel.bottom + 0.5);
        }""")
        assert fits, f"a row of page {n + 1} is cut at {width}x{height}"
        seen += shown
        await page.screenshot(path=str(artifacts / f"waiting-room-40-{width}x{height}-"
                                                    f"page{n + 1}.png"))
    assert seen == tickets  # each ticket once, in queue order
    assert "more" not in await page.locator("#waiting-panel").inner_text()
    # after the last page, the first again
    assert await page.evaluate("window.waitingRoom.nextPage().page") == 1


async def test_forty_waiting_with_four_delays_fit_ten_tickets_a_page_at_720p(
    browser: Browser, flow: dict[str, Any], artifacts: Path,
) -> None:
    """A clinic delay and three providers' delays at 1280x720: compact banners and, with
    no one called, the waiting list over the whole width: at least 10 tickets a page,
    every ticket on some page, every row whole."""
    tickets = [f"C-{n:02d}" for n in range(1, 41)]
    providers = ("dr-lee", "dr-okafor", "dr-ngata")
    await publish(flow, *(ev.PatientArrived(visit_id=f"v{n}", ticket_code=ticket,
                                            provider_id=providers[n % 3],
                                            visit_type="follow_up")
                          for n, ticket in enumerate(tickets)),
                  ev.DelayAnnounced(provider_id=None, minutes=25, reason="x"),
                  *(ev.DelayAnnounced(provider_id=p, minutes=20 + n, reason="x")
                    for n, p in enumerate(providers)))
    page = await open_screen(browser, flow, 1280, 720)
    await expect(page.locator("#waiting li")).to_have_count(40, timeout=15_000)
    await expect(page.locator(".banner")).to_have_count(4, timeout=5_000)
    pages = await page.evaluate("window.waitingRoom.pages")
    seen: list[str] = []
    for n in range(pages):
        if n > 0:
            assert await page.evaluate("window.waitingRoom.nextPage().page") == n + 1
        shown = await page.locator("#waiting li:not([hidden]) .ticket").all_inner_texts()
        fits = await page.evaluate("""() => {
            const panel = document.getElementById('waiting-panel').getBoundingClientRect();
            return Array.from(document.querySelectorAll('#waiting li:not([hidden])'))
              .every((li) => li.getBoundingClientRect().bottom <= panel.bottom + 0.5
                             && li.getBoundingClientRect().right <= panel.right + 0.5);
        }""")
        assert fits, f"a row of page {n + 1} is cut"
        if n < pages - 1:
            assert len(shown) >= 10, (n + 1, shown)
        seen += shown
        if n == 0:
            await page.screenshot(path=str(artifacts / "waiting-room-40-delays-1280x720.png"))
    assert seen == tickets
    overflow = await page.evaluate("document.documentElement.scrollWidth > window.innerWidth")
    assert overflow is False
