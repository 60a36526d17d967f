"""Pages flow serves itself: the waiting-room screen (no front-end build).

The page shells are public (they hold no data); the data comes from the board
stream, which needs a token (the page takes ``?token=`` once).
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).with_name("static")
_CLINIC = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")


def make_pages_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)
    template = (STATIC / "waiting-room.html").read_text()

    @router.get("/screens/{clinic_id}/waiting-room", response_class=HTMLResponse)
    async def waiting_room(clinic_id: str) -> HTMLResponse:
        if not _CLINIC.match(clinic_id):
            raise HTTPException(404, detail=f"no such clinic {clinic_id!r}")
        return HTMLResponse(template.replace("{{CLINIC}}", clinic_id),
                            headers={"Cache-Control": "no-store",
                                     "Content-Security-Policy": "default-src 'self'"})

    return router


def static_files() -> StaticFiles:
    return StaticFiles(directory=STATIC)
