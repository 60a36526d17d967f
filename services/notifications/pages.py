"""The front desk's follow-up list of complaints, served by notifications itself (a Jinja2
template, a CSS file and a small script: no front-end build).

``GET /screens/{clinic}/complaints`` is the page shell. It is public and holds no data:
only the clinic's id, name and zone. Everything it shows comes from the complaints API
(``complaints_api.py``) with the bearer token the page is opened with once
(``?token=<token>``; kept in the tab's sessionStorage and dropped from the address bar,
as flow's pages do). The front desk sees the list, logs complaints (category and how
they came in, no free text) and acknowledges or resolves them; a manager's token makes it
the manager view: the patient's words beside each complaint (the manager-only route) and
the resolved ones on request. Times are shown on the clinic's clock, whatever the
browser's zone. The page sends no Referer, so the first URL's token does not leak.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import get_args

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape

from services.notifications.complaints import MAX_TEXT
from services.notifications.domain.texts import Names
from shared.auth import require_known_clinic
from shared.events_notifications import ComplaintCategory

HERE = Path(__file__).parent
STATIC = HERE / "static"
_CLINIC = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
CATEGORIES: tuple[str, ...] = get_args(ComplaintCategory)
SOURCES = (("in_person", "in person"), ("phone", "by phone"))
HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'none'",
    "Referrer-Policy": "no-referrer",  # the first load carries the token in its URL
    "X-Content-Type-Options": "nosniff",
}


def make_pages_router(names: Callable[[str], Names]) -> APIRouter:
    """``GET /screens/{clinic}/complaints``: the follow-up list's page shell. ``names``
    gives the clinic's name and zone."""
    router = APIRouter(include_in_schema=False)
    templates = Environment(loader=FileSystemLoader(HERE / "templates"),
                            autoescape=select_autoescape(["html"]))
    page = templates.get_template("complaints.html")

    @router.get("/screens/{clinic_id}/complaints", response_class=HTMLResponse)
    async def follow_up_page(clinic_id: str, request: Request) -> HTMLResponse:
        """The front desk's follow-up list; with a manager's token, the manager view."""
        if not _CLINIC.match(clinic_id):
            raise HTTPException(404, detail=f"no such clinic {clinic_id[:64]!r}")
        require_known_clinic(request)  # 404 unknown_clinic, as the APIs the page calls
        clinic = names(clinic_id)
        return HTMLResponse(page.render(
            clinic_id=clinic_id, clinic_name=clinic.clinic or clinic_id,
            timezone=clinic.zone.key, categories=CATEGORIES, sources=SOURCES,
            max_text=MAX_TEXT),
            headers=HEADERS)

    return router


def static_files() -> StaticFiles:
    return StaticFiles(directory=STATIC)
