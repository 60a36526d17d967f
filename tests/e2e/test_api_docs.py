"""/docs and /redoc work on a clinic network that cannot reach the internet: Swagger UI's
and ReDoc's scripts come from the service (they were loaded from a CDN, and the pages were
blank offline). Chromium, with every request off loopback refused; the service's HTTP app
as every service makes it (``make_http_app``), served by uvicorn on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
import uvicorn
from playwright.async_api import Browser, Route

from shared.service import ServiceRuntime, make_http_app
from shared.settings import CommonSettings


@pytest.fixture
async def served() -> AsyncIterator[str]:
    app = make_http_app(ServiceRuntime(CommonSettings(), "docs-test"), title="clinicflow flow",
                        description="the API pages, offline")

    @app.get("/clinics/{clinic_id}/things")
    async def things(clinic_id: str) -> dict[str, str]:
        return {"clinic_id": clinic_id}

    # listening before uvicorn starts: the browser's first request waits in the backlog
    # until uvicorn accepts it (nothing to poll for)
    listening = socket.create_server(("127.0.0.1", 0))
    port = listening.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
    serving = asyncio.create_task(server.serve(sockets=[listening]))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await serving
        listening.close()


async def test_the_api_pages_render_from_the_service_alone(browser: Browser,
                                                            served: str) -> None:
    elsewhere: list[tuple[str, str]] = []

    async def offline(route: Route) -> None:
        if route.request.url.startswith(served):
            await route.continue_()
        else:  # what a clinic's closed network does
            elsewhere.append((route.request.resource_type, route.request.url))
            await route.abort()

    page = await browser.new_page()
    await page.route("**/*", offline)
    await page.goto(f"{served}/docs")
    await page.wait_for_selector(".opblock", timeout=15_000)  # the operations, rendered
    operations = await page.locator(".opblock").all_inner_texts()
    assert any("/clinics/{clinic_id}/things" in text for text in operations)
    assert any("/healthz" in text for text in operations)
    await page.goto(f"{served}/redoc")
    await page.wait_for_selector("h1", timeout=15_000)
    assert "clinicflow flow" in (await page.locator("h1").first.inner_text()).lower()
    # nothing the pages need comes from elsewhere (ReDoc asks for its own logo, an image
    # the closed network refuses; the page is whole without it)
    assert [url for kind, url in elsewhere if kind != "image"] == []
