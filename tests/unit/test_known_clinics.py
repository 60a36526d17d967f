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
