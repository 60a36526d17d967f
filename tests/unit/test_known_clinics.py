"""A path naming a clinic the deployment does not serve is 404, after the token check."""

from __future__ import annotations

import json

from fastapi import Depends
from fastapi.testclient import TestClient

from shared.auth import Principal, require_role
from shared.service import ServiceRuntime, make_http_app
from shared.settings import CommonSettings

MANAGER = {"Authorization": "Bearer dev-manager"}


def _client(clinics: str | None) -> TestClient:
    settings = CommonSettings(clinics=clinics) if clinics else CommonSettings()
    app = make_http_app(ServiceRuntime(settings, "test"), title="t", description="d")

    @app.get("/clinics/{clinic_id}/things")
    async def things(clinic_id: str,
                     principal: Principal = Depends(require_role("manager"))) -> dict[str, str]:
        return {"clinic_id": clinic_id}

    return TestClient(app)  # no lifespan: nothing connects


def test_a_clinic_not_configured_is_404_naming_it() -> None:
    client = _client(json.dumps({"north": {"timezone": "America/New_York"},
                                 "south": {"timezone": "America/Chicago"}}))
    assert client.get("/clinics/north/things", headers=MANAGER).status_code == 200
    nowhere = client.get("/clinics/nowhere/things", headers=MANAGER)
    assert nowhere.status_code == 404
    assert nowhere.json()["code"] == "unknown_clinic" and "nowhere" in nowhere.json()["detail"]
    # a typo in the case is another clinic
    assert client.get("/clinics/North/things", headers=MANAGER).status_code == 404
    # without a token the answer says nothing about which clinics exist
    assert client.get("/clinics/nowhere/things").status_code == 401


def test_without_configured_clinics_every_clinic_id_is_served() -> None:
    client = _client(None)
    assert client.get("/clinics/anywhere/things", headers=MANAGER).status_code == 200


def test_the_screen_kiosk_and_follow_up_pages_of_a_clinic_not_served_are_404() -> None:
    # they answered 200 with a working-looking page (a UTC clock, "reconnecting..." for
    # ever; the kiosk took a check-in and only then said there was no such clinic)
    from services.checkin.pages import make_pages_router as kiosk_pages
    from services.flow.pages import make_pages_router as screen_pages
    from services.notifications.domain.texts import Names
    from services.notifications.pages import make_pages_router as follow_up_pages
    from shared.settings import FlowSettings

    clinics = json.dumps({"north": {"timezone": "America/New_York",
                                    "name": "Northside Family Practice"}})
    settings = CommonSettings(clinics=clinics)
    app = make_http_app(ServiceRuntime(settings, "test"), title="t", description="d")
    app.include_router(screen_pages(FlowSettings(clinics=clinics)))
    app.include_router(kiosk_pages(settings.clinic_directory()))
    app.include_router(follow_up_pages(lambda _clinic: Names(clinic="Northside Family Practice")))
    client = TestClient(app)
    for page in ("/screens/{}/waiting-room", "/screens/{}/nurse", "/screens/{}/operations",
                 "/kiosk/{}", "/screens/{}/complaints"):
        served = client.get(page.format("north"))
        assert served.status_code == 200, page
        # titled with the clinic's name (the kiosk's was its id)
        assert "Northside Family Practice</title>" in served.text, page
        west = client.get(page.format("west"))
        assert west.status_code == 404, page
        assert west.json()["code"] == "unknown_clinic" and "west" in west.json()["detail"]
