"""Pages flow serves itself (no front-end build): the waiting-room screen, the nurse
station and the operations dashboard.

The page shells are public: they hold no patient data, only the clinic id and the
clinic's overdue limits. The data comes from the board API and its live stream, which
need a token: a page is opened once as ``/screens/<clinic>/<page>?token=<token>``, keeps
the token in the tab's sessionStorage and drops it from the address bar (details in
``static/live.js``). Two pages also read the notifications service
(``CLINICFLOW_FLOW_NURSE_ALERTS_URL``, which must allow flow's origin): the nurse station
its room-ready alerts, the operations dashboard how right the told waits were today and
this week's ratings and complaints by wait band and told-versus-actual error.
Pages send no Referer, so the first URL's token does not leak to
the page's own assets. The screens role sees ticket codes only; the nurse station needs
a nurse (or manager) token for its actions, the operations dashboard a manager token.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape

from shared.auth import require_known_clinic
from shared.settings import FlowSettings

STATIC = Path(__file__).with_name("static")
TEMPLATES = Path(__file__).with_name("templates")
_CLINIC = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
PAGES = {"waiting-room": "waiting-room.html", "nurse": "nurse.html",
         "operations": "operations.html"}


def _origin(url: str | None) -> str:
    if not url:
        return ""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""


def make_pages_router(settings: FlowSettings) -> APIRouter:
    """``GET /screens/{clinic}/waiting-room|nurse|operations``: the page shells."""
    router = APIRouter(include_in_schema=False)
    templates = Environment(loader=FileSystemLoader(TEMPLATES),
                            autoescape=select_autoescape(["html"]))
    clinics = settings.clinic_directory()
    alerts_origin = _origin(settings.flow_nurse_alerts_url)
    alerts_url = (settings.flow_nurse_alerts_url or "").rstrip("/") if alerts_origin else ""
    policy = ("default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
              "frame-ancestors 'none'; form-action 'none'; "
              f"connect-src 'self'{' ' + alerts_origin if alerts_origin else ''}")
    headers = {"Cache-Control": "no-store", "Content-Security-Policy": policy,
               "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff"}

    def render(page: str, clinic_id: str, request: Request) -> HTMLResponse:
        if not _CLINIC.match(clinic_id):
            raise HTTPException(404, detail=f"no such clinic {clinic_id!r}: clinic ids are "
                                "letters, digits and _.:-")
        require_known_clinic(request)  # 404 unknown_clinic, as the APIs the page calls
        clinic = clinics[clinic_id]
        html = templates.get_template(PAGES[page]).render(
            page=page, clinic_id=clinic_id, alerts_url=alerts_url,
            notifications_url=alerts_url,  # the same service: alerts, accuracy, satisfaction
            limits_json=json.dumps(settings.overdue_limits_for(clinic_id)),
            clinic_name=clinic.display_name,
            # the clinic's zone and names: the scripts show times on the clinic's clock
            # (Intl.DateTimeFormat timeZone) and names instead of ids (static/live.js)
            clinic_json=json.dumps({"name": clinic.display_name, "timezone": clinic.zone.key,
                                    "providers": clinic.providers, "rooms": clinic.rooms}),
        )
        return HTMLResponse(html, headers=headers)

    @router.get("/screens/{clinic_id}/waiting-room", response_class=HTMLResponse)
    async def waiting_room(clinic_id: str, request: Request) -> HTMLResponse:
        """The lobby TV: ticket codes and ranges, who is called, delays (screen token)."""
        return render("waiting-room", clinic_id, request)

    @router.get("/screens/{clinic_id}/nurse", response_class=HTMLResponse)
    async def nurse_station(clinic_id: str, request: Request) -> HTMLResponse:
        """Rooms, who is next per provider, room-ready alerts, one-click actions."""
        return render("nurse", clinic_id, request)

    @router.get("/screens/{clinic_id}/operations", response_class=HTMLResponse)
    async def operations(clinic_id: str, request: Request) -> HTMLResponse:
        """The manager's dashboard: stages, queues over the day, bottleneck, pace, and how
        right the waits told today were (from notifications)."""
        return render("operations", clinic_id, request)

    return router


def static_files() -> StaticFiles:
    return StaticFiles(directory=STATIC)
