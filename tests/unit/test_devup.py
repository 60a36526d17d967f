"""`make up`'s banner names every page the services really serve."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.flow.pages import make_pages_router
from shared.settings import FlowSettings
from tools.devup import _banner


def test_the_banner_links_every_flow_page_and_the_kiosk() -> None:
    stack: Any = SimpleNamespace(kafka_bootstrap="127.0.0.1:9092",
                                 redis_url="redis://127.0.0.1:6379/0")
    text = _banner(stack, 4.0)
    pages = set(re.findall(r"http://127\.0\.0\.1:8002/screens/north/([a-z-]+)\?token=", text))
    assert pages == {"waiting-room", "nurse", "operations"}
    assert "http://127.0.0.1:8001/kiosk/north?token=dev-kiosk" in text
    # and flow serves each of them
    app = FastAPI()
    app.include_router(make_pages_router(FlowSettings()))
    client = TestClient(app)
    for page in pages:
        assert client.get(f"/screens/north/{page}").status_code == 200, page
