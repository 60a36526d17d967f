"""``clinicflow screenshots``: the README's pictures, taken from a running ``make up``.

The waiting room, the nurse station and the operations dashboard of one demo clinic
(``north``, Northside Family Practice, America/New_York, by default) as a browser in
another time zone sees them (Asia/Tokyo by default: every time on the pictures must still
be the clinic's), and the kiosk after a patient of that clinic checks in there with their
appointment's code. Run it beside ``make up`` (or ``clinicflow up``), ten minutes or so
after the start, once the panels notifications feeds have filled (the played day starts
mid-morning, so flow's charts have a history at once)::

    clinicflow screenshots --out docs/screenshots

The ports are the services' own settings (``CLINICFLOW_<SERVICE>_PORT``, as ``clinicflow
up`` reads them); the tokens are the development ones ``make up`` prints. The kiosk picture
checks in a real booked patient of the demo (the booked appointment nearest to now that the
kiosk takes): the demo's desk then finds them arrived and skips its own check-in. Chromium
is Debian's (``chromium`` on the PATH), driven by Playwright.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from tools.devup import service_ports

STAFF_PAGES = (  # file, page, token: 1920x1080, a TV's and a desktop's size
    ("waiting-room.png", "waiting-room", "dev-screen"),
    ("nurse-station.png", "nurse", "dev-nurse"),
    ("operations.png", "operations", "dev-manager"),
)
KIOSK_WIDTH, KIOSK_HEIGHT = 768, 1024  # a tablet, upright
KIOSK_TRIES = 8  # appointments tried at the kiosk (one may be refused: too early, arrived)
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--disable-dev-shm-usage"]


class ScreenshotError(Exception):
    """What stopped the pictures, worded for the person running the command."""


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise ScreenshotError("no Chromium on the PATH: `make venv` installs Debian's")
    return found


def kiosk_candidates(rows: list[dict[str, Any]], now: datetime) -> list[str]:
    """The printed kiosk codes of the booked appointments not yet arrived, nearest to
    ``now`` first (the kiosk takes an appointment around its time)."""
    booked = [r for r in rows if r.get("status") == "booked" and r.get("kiosk_code")
              and not r.get("visit_id")]
    booked.sort(key=lambda r: abs(datetime.fromisoformat(r["scheduled_at"]) - now))
    return [str(r["kiosk_code"]) for r in booked]


async def take(out: Path, clinic: str, zone: str, ports: dict[str, int]) -> list[Path]:
    """Take the four pictures into the folder ``out``; returns their paths."""
    from playwright.async_api import async_playwright, expect

    flow = f"http://127.0.0.1:{ports['flow']}"
    checkin = f"http://127.0.0.1:{ports['checkin']}"
    async with httpx.AsyncClient(timeout=10) as client:
        try:
            answer = await client.get(f"{checkin}/clinics/{clinic}/schedule",
                                      headers={"Authorization": "Bearer dev-front-desk"})
        except httpx.TransportError as exc:
            raise ScreenshotError(f"check-in does not answer at {checkin} ({exc!r}): is "
                                  "`make up` running, with these ports?") from None
        if answer.status_code != 200:
            raise ScreenshotError(f"check-in answered {answer.status_code} for clinic "
                                  f"{clinic!r}'s schedule: {answer.text[:200]}")
    codes = kiosk_candidates(answer.json()["appointments"], datetime.now(UTC))
    taken: list[Path] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium_path(),
                                                   headless=True, args=BROWSER_ARGS)
        try:
            wide = await browser.new_context(viewport={"width": 1920, "height": 1080},
                                             timezone_id=zone)
            for name, page_name, token in STAFF_PAGES:
                page = await wide.new_page()
                await page.goto(f"{flow}/screens/{clinic}/{page_name}?token={token}")
                await expect(page.locator("#status")).to_contain_text("live",
                                                                      timeout=20_000)
                # what the page fetches beside the board (names, notifications' figures)
                await page.wait_for_load_state("load")
                await page.evaluate("document.fonts.ready")
                await page.wait_for_timeout(1_500)
                await page.screenshot(path=str(out / name))
                taken.append(out / name)
            tablet = await browser.new_context(
                viewport={"width": KIOSK_WIDTH, "height": KIOSK_HEIGHT}, timezone_id=zone)
            page = await tablet.new_page()
            await page.goto(f"{checkin}/kiosk/{clinic}?token=dev-kiosk")
            for code in codes[:KIOSK_TRIES]:
                await page.locator("#appointment-code").fill(code)
                await page.get_by_role("button", name="Check in").first.click()
                done = page.locator("#done")
                try:
                    await expect(done).to_be_visible(timeout=5_000)
                except AssertionError:
                    continue  # refused (too early, or the desk was quicker): the next one
                await expect(page.locator("#wait")).to_contain_text("Estimated wait",
                                                                    timeout=10_000)
                await page.screenshot(path=str(out / "kiosk.png"))
                taken.append(out / "kiosk.png")
                break
            else:
                raise ScreenshotError(f"the kiosk took none of the {min(len(codes), KIOSK_TRIES)}"
                                      f" booked appointments tried at clinic {clinic!r}: is "
                                      "its day under way?")
        finally:
            await browser.close()
    return taken


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        taken = asyncio.run(take(out, args.clinic, args.zone, service_ports(os.environ)))
    except ScreenshotError as exc:
        print(f"clinicflow screenshots: {exc}", file=sys.stderr)
        return 1
    for path in taken:
        print(path)
    return 0


def add_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "screenshots", help="take the README's pictures of the screens from a running "
        "`make up`")
    parser.add_argument("--out", default="docs/screenshots",
                        help="where to write them (default docs/screenshots)")
    parser.add_argument("--clinic", default="north", help="the demo clinic (default north)")
    parser.add_argument("--zone", default="Asia/Tokyo",
                        help="the browser's time zone (default Asia/Tokyo: the pictures "
                        "must still show the clinic's own times)")
    parser.set_defaults(func=run)
