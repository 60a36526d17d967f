"""What every service shares at run time: Kafka and Redis connections that come up
with backoff, and the HTTP basics (health, readiness, metrics, limits, errors).

A service's ``create_app(settings)`` builds a ``ServiceRuntime`` and calls
``make_http_app``; nothing connects at import time. When Kafka or Redis is down
at start, the service still serves ``/healthz`` and a ``/readyz`` that says
which dependency is missing, and keeps retrying with backoff, logging each try.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi_offline import FastAPIOffline
from faststream.kafka import KafkaBroker
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.auth import Authenticator
from shared.clock import Clock, Job, clock_from_setting, every
from shared.errors import Refusal, status_of
from shared.kafka import kafka_connect_problem, make_broker
from shared.logging import configure_logging, get_logger
from shared.metrics import DEPENDENCY_UP, HTTP_LATENCY, HTTP_REQUESTS, render_metrics
from shared.settings import CommonSettings

Hook = Callable[[], Awaitable[None]]

# Redis connections a process keeps at most, and how long a request waits for one of
# them when all are in use before it is refused with a 503
REDIS_CONNECTIONS = 100
REDIS_POOL_WAIT_SECONDS = 5.0


def make_redis(settings: CommonSettings) -> Redis:
    """A service's Redis client: one blocking pool, commands retried on a fresh connection
    (a pub/sub subscription too: it reconnects and subscribes again by itself)."""
    return Redis.from_pool(BlockingConnectionPool.from_url(
        settings.redis_url, socket_connect_timeout=2, socket_timeout=5,
        health_check_interval=15, **settings.redis_tls_options(),
        # a pooled connection left over from before a Redis restart fails once: the
        # command is tried again on a fresh one (redis-py 8 would raise at once)
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        # a burst of more requests than connections waits its turn for a moment
        # rather than failing at once with "Redis is unreachable" (redis-py's plain
        # pool raises MaxConnectionsError when all are in use)
        max_connections=REDIS_CONNECTIONS, timeout=REDIS_POOL_WAIT_SECONDS,
    ))


# the runtime's problem (``problems``) that only a restart mends: /healthz fails with it
PRODUCER_PROBLEM = "kafka_producer"


class ServiceRuntime:
    """Owns one service's broker and Redis client and knows whether they are up."""

    def __init__(self, settings: CommonSettings, service: str,
                 clock: Clock | None = None) -> None:
        self.settings = settings
        self.service = service
        # the wall clock, or a warped one (CLINICFLOW_CLOCK_WARP: a simulated day played fast)
        self.clock: Clock = clock or clock_from_setting(settings.clock_warp)
        self.periodic: list[tuple[float, Job, str, bool]] = []
        self._periodic_tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self.broker: KafkaBroker = make_broker(settings, service,
                                               on_broken=self._producer_broken)
        self.redis: Redis = make_redis(settings)
        self.kafka_started = False
        self.problems: dict[str, str] = {}
        self.after_start: list[Hook] = []  # run once the broker is up (e.g. state rebuild)
        self.before_stop: list[Hook] = []
        self._starter: asyncio.Task[None] | None = None
        self.log = get_logger(f"clinicflow.{service}")

    async def send(self, value: bytes, to: str, key: bytes | None) -> Awaitable[Any]:
        """Hand one record to the producer (records go out in the order handed over) and
        return its confirmation (``acks=all``) to await: many records in one produce
        request instead of a round trip each (``shared.outbox.OutboxRelay``)."""
        confirmation: Awaitable[Any] = await self.broker.publish(value, to, key=key,
                                                                  no_confirm=True)
        return confirmation

    def every(self, seconds: float, job: Job, name: str, *, needs_kafka: bool = True) -> None:
        """Run ``job(now)`` every ``seconds`` while the service runs (``shared.clock.every``:
        failures logged and counted, never silent); with ``needs_kafka`` a run waits
        until Kafka is connected. A period of 0 or less registers nothing: tests build
        services that way and call the job's ``tick(now)`` themselves."""
        if seconds > 0:
            self.periodic.append((seconds, job, name, needs_kafka))

    async def start(self) -> None:
        """Start connecting in the background, and the periodic jobs; returns at once."""
        self._stopping.clear()
        self._starter = asyncio.create_task(
            self._start_with_backoff(), name=f"{self.service}-start"
        )
        for seconds, job, name, needs_kafka in self.periodic:
            ready = (lambda: self.kafka_started) if needs_kafka else (lambda: True)
            self._periodic_tasks.append(asyncio.create_task(
                every(seconds, job, name=name, service=self.service, clock=self.clock,
                      ready=ready, stopping=self._stopping), name=f"{self.service}-{name}"))

    async def wait_started(self, timeout: float = 60.0) -> None:
        """For tests and tools: wait until Kafka is connected and start hooks ran."""
        assert self._starter is not None, "start() first"
        await asyncio.wait_for(asyncio.shield(self._starter), timeout)

    async def _start_with_backoff(self) -> None:
        delay = 0.5
        attempt = 0
        while True:
            attempt += 1
            try:
                await self.redis.ping()
                self.problems.pop("redis", None)
            except Exception as exc:
                self.problems["redis"] = f"unreachable at start: {exc}"
                self.log.warning(
                    "redis not reachable, retrying", attempt=attempt, retry_in=delay, error=str(exc)
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            try:
                await self.broker.start()
                self.kafka_started = True
                self.problems.pop("kafka", None)
                break
            except Exception as exc:
                reason = await kafka_connect_problem(self.settings) or repr(exc)
                self.problems["kafka"] = f"unreachable at start: {reason}"
                self.log.warning(
                    "kafka not reachable, retrying",
                    attempt=attempt,
                    retry_in=delay,
                    error=reason,
                )
                try:
                    await self.broker.stop()
                except Exception:
                    pass
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        for hook in self.after_start:
            await hook()
        self.log.info("service started", kafka=self.settings.kafka_bootstrap)

    async def stop_periodic(self, grace: float = 5.0) -> None:
        """End the periodic jobs after the runs under way (up to ``grace`` seconds;
        then they are cancelled)."""
        self._stopping.set()
        if running := [task for task in self._periodic_tasks if not task.done()]:
            await asyncio.wait(running, timeout=grace)
        await stop_tasks(self._periodic_tasks)
        self._periodic_tasks.clear()

    async def stop(self) -> None:
        await self.stop_periodic()
        if self._starter is not None and not self._starter.done():
            self._starter.cancel()
            try:
                await self._starter
            except (asyncio.CancelledError, Exception):
                pass
        for hook in self.before_stop:
            try:
                await hook()
            except Exception as exc:
                self.log.warning("stop hook failed", error=repr(exc))
        if self.kafka_started:
            await self.broker.stop()
            self.kafka_started = False
        await self.redis.aclose()

    def _producer_broken(self, exc: BaseException) -> None:
        """The Kafka producer is out of step with the broker for good (``PRODUCER_BROKEN``):
        ``/healthz`` fails from now on, so the orchestrator restarts the process (a new
        producer); ``/readyz`` names it."""
        if PRODUCER_PROBLEM not in self.problems:
            self.log.error("kafka producer broken: restart this process", error=repr(exc))
        self.problems[PRODUCER_PROBLEM] = (
            f"the Kafka producer is out of step with the broker ({type(exc).__name__}): "
            "publishes fail until this process restarts")

    async def readiness(self) -> dict[str, str]:
        """``{"kafka": "ok" | problem, "redis": "ok" | problem}``."""
        result: dict[str, str] = {}
        try:
            await asyncio.wait_for(self.redis.ping(), 2.0)
            result["redis"] = "ok"
        except Exception as exc:
            # redis-py's repr drops the message ("auth:AuthenticationError"): keep the why
            result["redis"] = f"unreachable: {type(exc).__name__}: {exc}"
        if not self.kafka_started:
            result["kafka"] = self.problems.get("kafka", "connecting")
        else:
            try:
                ok = await self.broker.ping(timeout=2.0)
                result["kafka"] = "ok" if ok else "unreachable: broker did not answer"
            except Exception as exc:
                result["kafka"] = f"unreachable: {exc!r}"
        if self._starter is not None and self._starter.done() is False and result["kafka"] == "ok":
            result["kafka"] = "starting"
        if PRODUCER_PROBLEM in self.problems:
            result["kafka"] = self.problems[PRODUCER_PROBLEM]
        for dependency, state in result.items():
            DEPENDENCY_UP.labels(self.service, dependency).set(1 if state == "ok" else 0)
        return result


class BodySizeLimit:
    """ASGI middleware: refuse bodies over ``max_bytes`` with a 413 that says so."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((value for name, value in scope.get("headers") or ()
                         if name == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _too_large(self.max_bytes, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge(self.max_bytes)
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            await _too_large(self.max_bytes, send)


class RequestMetrics:
    """ASGI middleware: count each request by route and status class and time it to the
    start of its answer (the headers; a live stream's body goes on after that).

    A plain ASGI wrapper of ``send``: Starlette's ``@app.middleware("http")`` ran every
    request in a task of its own with memory streams between the two, which cost as much
    CPU as a bare FastAPI route (docs/performance.md)."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service
        # the labelled children, by (route, status class): .labels() takes a lock each time
        self._counters: dict[tuple[str, int], Any] = {}
        self._timers: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.observe(scope, message["status"], time.perf_counter() - started)
            await send(message)

        await self.app(scope, receive, timed_send)

    def observe(self, scope: Scope, status: int, seconds: float) -> None:
        path = getattr(scope.get("route"), "path", "unmatched")
        counter = self._counters.get((path, status // 100))
        if counter is None:
            counter = HTTP_REQUESTS.labels(self.service, path, f"{status // 100}xx")
            self._counters[(path, status // 100)] = counter
        counter.inc()
        timer = self._timers.get(path)
        if timer is None:
            timer = self._timers[path] = HTTP_LATENCY.labels(self.service, path)
        timer.observe(seconds)


class _BodyTooLarge(HTTPException):
    """An HTTPException so that FastAPI passes it on when it meets it while parsing a JSON
    body (a chunked body without Content-Length): any other error there becomes a 400."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, detail=f"request body larger than {max_bytes} bytes")


async def _too_large(max_bytes: int, send: Send) -> None:
    body = orjson.dumps({"detail": f"request body larger than {max_bytes} bytes"})
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def make_http_app(
    runtime: ServiceRuntime,
    *,
    title: str,
    description: str,
    version: str = "0.1.0",
    on_startup: list[Hook] | None = None,
    on_shutdown: list[Hook] | None = None,
) -> FastAPI:
    """A FastAPI app with ``/healthz``, ``/readyz``, ``/metrics``, limits and clear errors."""
    settings = runtime.settings
    configure_logging(settings.log_level, settings.log_format, runtime.service)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        for hook in on_startup or []:
            await hook()
        try:
            yield
        finally:
            await runtime.stop_periodic()  # no job runs while the service winds down
            for hook in on_shutdown or []:
                await hook()
            await runtime.stop()

    # /docs and /redoc load Swagger UI's and ReDoc's scripts from the service (under
    # /docs-assets), not from a CDN a clinic's network may not reach
    app = FastAPIOffline(title=title, description=description, version=version,
                         lifespan=lifespan, static_url="/docs-assets")
    app.state.runtime = runtime
    app.state.settings = settings
    app.state.authenticator = Authenticator(settings.credential_list())
    # the clinics served (empty: any, as in development; see shared.auth)
    app.state.known_clinics = frozenset(settings.clinic_directory().clinics)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, service=runtime.service)  # outermost: sees the 413s

    @app.exception_handler(RedisConnectionError)
    @app.exception_handler(RedisTimeoutError)
    async def redis_unreachable(_request: Request, exc: Exception) -> JSONResponse:
        # Redis down past the client's retries: a 503 the caller may retry, not a 500
        runtime.log.warning("request refused: redis unreachable", error=type(exc).__name__)
        return JSONResponse(status_code=503, headers={"Retry-After": "2"},
                            content={"detail": "Redis is unreachable or busy; try again "
                                               "shortly"})

    @app.exception_handler(Refusal)
    async def refused(_request: Request, exc: Refusal) -> JSONResponse:
        # the one place a domain refusal becomes an HTTP status (shared/errors.py)
        return JSONResponse(status_code=status_of(exc),
                            content={"detail": exc.detail, "code": exc.code})

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        message = "; ".join(_describe(e) for e in errors)
        return JSONResponse(
            status_code=422,
            content={"detail": f"invalid request: {message}", "errors": _jsonable(errors)},
        )

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        """Browsers ask each page's origin for one: nothing to show, and no 404 logged."""
        return Response(status_code=204, headers={"Cache-Control": "max-age=86400"})

    @app.get("/healthz", tags=["operations"], summary="The process is alive",
             responses={503: {"description": "the process must be restarted (says why)"}})
    async def healthz() -> Any:
        """Touches neither Kafka nor Redis (an outage of either is ``/readyz``'s): 503 only
        when the process cannot recover without a restart (its Kafka producer is out of
        step with the broker for good)."""
        broken = runtime.problems.get(PRODUCER_PROBLEM)
        if broken is not None:
            return JSONResponse(status_code=503, content={
                "status": "restart", "service": runtime.service, "reason": broken})
        return {"status": "ok", "service": runtime.service}

    @app.get("/readyz", tags=["operations"], summary="Kafka and Redis are reachable")
    async def readyz() -> JSONResponse:
        checks = await runtime.readiness()
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse(
            status_code=200 if ready else 503,
            content={"ready": ready, "service": runtime.service, "checks": checks},
        )

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics",
             response_class=PlainTextResponse)
    async def metrics() -> Response:
        body, content_type = render_metrics()
        return Response(content=body, media_type=content_type)

    return app


def _describe(error: Any) -> str:
    """One validation error in words: the field and what is wrong with it."""
    if error.get("type") == "json_invalid":
        # FastAPI reports the character position as the "field": say it is the body
        position = next((p for p in error.get("loc", ()) if isinstance(p, int)), None)
        reason = (error.get("ctx") or {}).get("error") or "not valid JSON"
        where = f" at character {position}" if position is not None else ""
        return f"the body is not valid JSON{where}: {reason}"
    loc = [str(p) for p in error.get("loc", ()) if p != "body"]
    if error.get("type") == "missing" and not loc:
        return "the body is missing: send a JSON object"
    return f"{'.'.join(loc) or 'body'}: {error.get('msg', 'invalid')}"


def _jsonable(errors: Sequence[Any]) -> list[dict[str, Any]]:
    out = []
    for error in errors:
        item = {k: v for k, v in dict(error).items() if k in ("loc", "msg", "type")}
        item["loc"] = [str(p) for p in item.get("loc", [])]
        out.append(item)
    return out


async def stop_tasks(tasks: Iterable[asyncio.Task[Any] | None]) -> None:
    """Cancel background loops and wait until each has really ended.

    A cancellation that lands inside a Redis call can be swallowed by the client, and
    the loop goes round again; a single ``cancel()`` then hangs the shutdown. Cancel
    again until every task is done (errors they end with are the loop's own business).
    """
    pending = [task for task in tasks if task is not None]
    while waiting := [task for task in pending if not task.done()]:
        for task in waiting:
            task.cancel()
        await asyncio.wait(waiting, timeout=0.5)
    for task in pending:
        if not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" warning
