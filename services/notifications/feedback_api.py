"""The feedback form a patient opens from the message sent after checkout: one page, no
login, on a phone. ``GET /feedback/{token}`` shows it, ``POST /feedback/{token}`` takes the
answer once. The token is the signed link (``feedback_link``); a link altered or made up
(404), past its time (410) or already used (409) is refused with a page that says so in
plain words. The free text is kept in ``FeedbackStore`` only: never logged, never on the
event (``feedback.given`` carries the rating, the wait answer and whether text was
given)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from services.notifications import feedback_link
from services.notifications import metrics as m
from services.notifications.domain.texts import Names
from services.notifications.feedback_store import Answer, FeedbackStore, WaitAnswer
from shared.clock import Clock

MAX_TEXT = 2000  # characters of free text
MAX_BODY = 16_384  # bytes of a posted form
WAITS: tuple[tuple[WaitAnswer, str], ...] = (
    ("about_right", "Yes, about what we told you"),
    ("longer", "No, it was longer"),
    ("shorter", "No, it was shorter"),
)
HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
           "X-Content-Type-Options": "nosniff",
           "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
           "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"}
REFUSALS: dict[str, tuple[int, str, str]] = {
    "forged": (404, "This link does not work",
               "This feedback link is not one we sent, or it was changed on the way. "
               "Please open the link exactly as it came in your message."),
    "expired": (410, "This link has expired",
                "This feedback link is no longer valid: links work for a few days after "
                "the visit. Thank you all the same."),
    "used": (409, "Feedback already given",
             "Feedback for this visit has already been sent with this link, and each "
             "link works once. Thank you for it!"),
}


def make_feedback_link(secret: str, public_url: str, valid_for: timedelta,
                       clock: Clock) -> Callable[[str, str], str]:
    """``(clinic, visit) -> the form's address``, signed now, for the sender."""
    base = public_url.rstrip("/")

    def link(clinic_id: str, visit_id: str) -> str:
        token = feedback_link.sign(secret, clinic_id, visit_id, now=clock.now(),
                                   valid_for=valid_for)
        return f"{base}/feedback/{token}"

    return link


def make_feedback_router(store: FeedbackStore, secret: str, clock: Clock,
                         names: Callable[[str], Names]) -> APIRouter:
    """The form's two routes (public: the signed link is the credential)."""
    router = APIRouter(include_in_schema=False)
    templates = Environment(loader=FileSystemLoader(Path(__file__).with_name("templates")),
                            autoescape=select_autoescape(["html"]))

    def page(status: int, title: str, clinic_name: str = "", **values: Any) -> HTMLResponse:
        html = templates.get_template("feedback.html").render(
            title=title, clinic_name=clinic_name, waits=WAITS, max_text=MAX_TEXT,
            **{"form": False, "message": "", "refused": False, "error": "", "rating": None,
               "wait": None, "comment": "", **values})
        return HTMLResponse(html, status_code=status, headers=HEADERS)

    def refused(problem: str) -> HTMLResponse:
        m.FEEDBACK_REFUSED.labels(problem).inc()
        status, title, message = REFUSALS[problem]
        return page(status, title, message=message, refused=True)

    async def claims_of(token: str) -> feedback_link.LinkClaims | str:
        try:
            claims = feedback_link.verify(secret, token, now=clock.now())
        except feedback_link.LinkRefused as exc:
            return exc.problem
        if await store.given(claims.clinic_id, claims.visit_id):
            return "used"
        return claims

    @router.get("/feedback/{token}", response_class=HTMLResponse)
    async def feedback_form(token: str) -> HTMLResponse:
        """The form, for a valid link not used yet."""
        claims = await claims_of(token)
        if isinstance(claims, str):
            return refused(claims)
        return page(200, "How was your visit?", names(claims.clinic_id).clinic, form=True)

    @router.post("/feedback/{token}", response_class=HTMLResponse)
    async def give_feedback(token: str, request: Request) -> HTMLResponse:
        """Take the answer once: a thank-you page, or the form again saying what is
        missing (422)."""
        claims = await claims_of(token)
        if isinstance(claims, str):
            return refused(claims)
        clinic_name = names(claims.clinic_id).clinic
        body = await request.body()
        if len(body) > MAX_BODY:
            return page(413, "How was your visit?", clinic_name, form=True,
                        error=f"Your answer is too long: please keep the text under "
                        f"{MAX_TEXT} characters.")
        fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        rating_text = (fields.get("rating") or [""])[0]
        wait_text = (fields.get("wait") or [""])[0]
        wait = next((value for value, _label in WAITS if value == wait_text), None)
        comment = (fields.get("comment") or [""])[0].strip()
        rating = int(rating_text) if rating_text in ("1", "2", "3", "4", "5") else None
        problems = []
        if rating is None:
            problems.append("choose how your visit was, from 1 to 5")
        if wait is None:
            problems.append("say whether your wait was about what we told you")
        if len(comment) > MAX_TEXT:
            problems.append(f"keep the text under {MAX_TEXT} characters")
        if problems or rating is None or wait is None:
            return page(422, "How was your visit?", clinic_name, form=True,
                        error="Please " + " and ".join(problems) + ".", rating=rating,
                        wait=wait, comment=comment[:MAX_TEXT])
        answer = Answer(rating=rating, wait=wait, text=comment)
        if not await store.take(claims.clinic_id, claims.visit_id, answer, clock.now()):
            return refused("used")  # the same link posted twice at once: one is taken
        m.FEEDBACK_GIVEN.labels(str(rating), wait).inc()
        return page(200, "Thank you", clinic_name,
                    message="Your answer has reached the clinic. Thank you for taking the "
                    "time.")

    return router
