"""The HTTP baseline of ``make bench``: a bare FastAPI app served exactly as a clinicflow
service is (uvicorn with the settings of ``shared/runner.py``, the same garbage collector
and allocator tuning), with nothing of clinicflow's around its routes.

- ``GET /healthz``: the floor of a FastAPI route, beside every service's ``/healthz``;
- ``GET /redis/{key}``: one Redis GET answered as is, beside flow's board GET (which is
  one Redis GET, a role's view and the JSON answer).

Run: ``python -m bench.bare_app --port N [--redis-url URL]``; loopback only.
"""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI, Response
from redis.asyncio import Redis

from shared.runner import tune_gc, tune_malloc


def create_app(redis_url: str | None) -> FastAPI:
    app = FastAPI(title="bare")
    redis = Redis.from_url(redis_url) if redis_url else None

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": "bare"}

    @app.get("/redis/{key}")
    async def redis_get(key: str) -> Response:
        raw = await redis.get(key) if redis is not None else None
        if raw is None:
            return Response(status_code=404)
        return Response(raw, media_type="application/json")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", default=None)
    args = parser.parse_args()
    app = create_app(args.redis_url)
    tune_malloc()
    tune_gc()
    # the arguments shared/runner.py gives uvicorn for every service
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_config=None, access_log=False,
                timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()
