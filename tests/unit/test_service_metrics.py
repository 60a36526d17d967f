"""Every request counted by route and status class and timed to its answer's start, by
the plain ASGI middleware of shared/service.py: answers of routes, refusals, requests no
route matched, and live streams (timed when their headers go out)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI, HTTPException
from fastapi.responses import StreamingResponse

from shared.metrics import HTTP_LATENCY, HTTP_REQUESTS
from shared.service import BodySizeLimit, RequestMetrics


def count(service: str, route: str, status: str) -> float:
    value = HTTP_REQUESTS.labels(service, route, status)._value.get()  # type: ignore[attr-defined]
    return float(value)


def timed(service: str, route: str) -> float:
    samples = HTTP_LATENCY.labels(service, route)._sum.get()  # type: ignore[attr-defined]
    return float(samples)


def app_for(service: str) -> FastAPI:
    app = FastAPI()
    app.add_middleware(BodySizeLimit, max_bytes=10)
    app.add_middleware(RequestMetrics, service=service)

    @app.get("/clinics/{clinic_id}/board")
    async def board(clinic_id: str) -> dict[str, str]:
        if clinic_id == "nowhere":
            raise HTTPException(404, detail="no board")
        return {"clinic_id": clinic_id}

    @app.post("/clinics/{clinic_id}/arrivals")
    async def arrive(clinic_id: str) -> dict[str, str]:
        return {"clinic_id": clinic_id}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def frames() -> AsyncIterator[bytes]:
            yield b"data: 1\n\n"
            await asyncio.sleep(0.2)  # the body goes on after the headers were timed
            yield b"data: 2\n\n"
        return StreamingResponse(frames(), media_type="text/event-stream")

    return app


async def test_requests_are_counted_by_route_template_and_status_class() -> None:
    app = app_for("metrics-a")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for clinic in ("north", "south"):
            assert (await client.get(f"/clinics/{clinic}/board")).status_code == 200
        assert (await client.get("/clinics/nowhere/board")).status_code == 404
        assert (await client.get("/no/such/route")).status_code == 404
        too_big = await client.post("/clinics/north/arrivals", content=b"x" * 11)
        assert too_big.status_code == 413
    route = "/clinics/{clinic_id}/board"
    assert count("metrics-a", route, "2xx") == 2
    assert count("metrics-a", route, "4xx") == 1
    # no route matched, or refused before routing (the body limit): "unmatched"
    assert count("metrics-a", "unmatched", "4xx") == 2
    assert timed("metrics-a", route) > 0


async def test_a_live_stream_is_timed_to_its_headers_not_to_its_end() -> None:
    app = app_for("metrics-b")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/stream")
    assert response.text == "data: 1\n\ndata: 2\n\n"
    assert count("metrics-b", "/stream", "2xx") == 1
    assert timed("metrics-b", "/stream") < 0.2
