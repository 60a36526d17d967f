"""The feedback form on a phone (Debian's Chromium, a 390 x 844 touch screen) against the
real notifications service on Kafka and Redis: a patient answers once; the same link
again, an expired one and a forged one are each refused with a page that says why."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from playwright.async_api import Browser, expect

from services.notifications import feedback_link
from services.notifications.app import create_app
from shared.admin import ensure_topics
from shared.settings import NotificationsSettings
from tests.helpers import serving

SECRET = "feedback-secret-for-the-browser"
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2,
         "is_mobile": True, "has_touch": True}


def link(base: str, visit: str, now: datetime, hours: float = 72) -> str:
    token = feedback_link.sign(SECRET, "north", visit, now=now,
                               valid_for=timedelta(hours=hours))
    return f"{base}/feedback/{token}"


async def test_a_patient_answers_on_a_phone_once_and_a_used_link_is_refused(
    browser: Browser, kafka_bootstrap: str, redis_url: str, topic_prefix: str,
    artifacts: Path,
) -> None:
    await ensure_topics(kafka_bootstrap, topic_prefix)
    settings = NotificationsSettings(
        kafka_bootstrap=kafka_bootstrap, redis_url=redis_url, topic_prefix=topic_prefix,
        redis_prefix=topic_prefix.rstrip("."),
        notifications_group_id=f"{topic_prefix}notifications", notifications_tick_seconds=0,
        notifications_feedback_secret=SECRET)
    now = datetime.now(UTC)
    async with serving(create_app(settings)) as base:
        context = await browser.new_context(**PHONE)
        page = await context.new_page()
        url = link(base, "v17", now)
        opened = await page.goto(url)
        assert opened is not None and opened.status == 200
        await expect(page.locator("h1")).to_have_text("How was your visit?")
        # fits the phone: nothing to scroll sideways
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390
        await page.get_by_label("4").check()
        await page.get_by_label("No, it was longer").check()
        await page.locator("#comment").fill("The desk was kind.")
        await page.screenshot(path=str(artifacts / "feedback-form-phone.png"), full_page=True)
        await page.get_by_role("button", name="Send").tap()
        await expect(page.locator("h1")).to_have_text("Thank you")

        # the same link again: refused, in words
        again = await page.goto(url)
        assert again is not None and again.status == 409
        await expect(page.locator("h1")).to_have_text("Feedback already given")
        await expect(page.locator("#message")).to_contain_text("each link works once")
        await expect(page.locator("form")).to_have_count(0)

        expired = await page.goto(link(base, "v18", now - timedelta(hours=73)))
        assert expired is not None and expired.status == 410
        await expect(page.locator("h1")).to_have_text("This link has expired")

        token = url.rsplit("/", 1)[1]
        forged_url = f"{base}/feedback/{token.replace(token[:4], 'eyJj', 1)}x"
        forged = await page.goto(forged_url)
        assert forged is not None and forged.status == 404
        await expect(page.locator("h1")).to_have_text("This link does not work")
        await page.screenshot(path=str(artifacts / "feedback-refused-phone.png"))
        await context.close()
