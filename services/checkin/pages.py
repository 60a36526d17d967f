"""The kiosk page, served by checkin itself (a Jinja2 template, a CSS file and a small
script: no front-end build).

The page shell is public and holds no data; everything it shows comes from the API
with the kiosk's bearer token, which the page takes once from ``?token=`` and keeps
in the tab's sessionStorage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape

from services.checkin.domain import ID_PATTERN
from shared.auth import require_known_clinic
from shared.clinics import ClinicDirectory

HERE = Path(__file__).parent
STATIC = HERE / "static"
HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",  # the first load carries the token in its URL
    "X-Content-Type-Options": "nosniff",
}


def make_pages_router(clinics: ClinicDirectory) -> APIRouter:
    templates = Environment(loader=FileSystemLoader(HERE / "templates"),
                            autoescape=select_autoescape(["html"]))
    kiosk = templates.get_template("kiosk.html")
    router = APIRouter(tags=["kiosk page"])

    @router.get("/kiosk/{clinic_id}", response_class=HTMLResponse,
                summary="The self check-in kiosk page (open once with ?token=<kiosk token>)",
                description="A tablet-sized page: check in with the appointment code or date "
                "of birth and initials, get the ticket code and the estimated wait; look up "
                "the place in line by ticket code. The page itself holds no data.",
                responses={200: {"content": {"text/html": {"example": "<!doctype html>..."}}},
                           404: {"description": "not a clinic id, or one this deployment "
                                 "does not serve (`unknown_clinic`)"}})
    async def kiosk_page(clinic_id: Annotated[str, PathParam(
            description="the clinic this kiosk stands in", examples=["north"])],
        request: Request,
    ) -> HTMLResponse:
        if not ID_PATTERN.match(clinic_id):
            raise HTTPException(404, detail=f"no such clinic {clinic_id[:64]!r}")
        require_known_clinic(request)  # 404 unknown_clinic, as the APIs the page calls
        return HTMLResponse(kiosk.render(clinic_id=clinic_id,
                                         clinic_name=clinics[clinic_id].display_name),
                            headers=HEADERS)

    return router


def static_files() -> StaticFiles:
    return StaticFiles(directory=STATIC)
