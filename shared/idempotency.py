"""``Idempotency-Key`` handling for HTTP commands, kept in Redis.

A retried request with the same key and the same body gets the first answer
again, and publishes nothing new. The same key with a different body is a
422: the client reused a key by mistake. A key whose first request is still
running is a 409 with ``Retry-After``. Keys live for a day (a clinic day is the
unit of work).

The "still running" marker lives ``PENDING_TTL_SECONDS`` and is renewed while the
request runs, so the marker of a process that died mid-request is gone within
seconds and the client's retry runs the command (before, it was refused for a
minute). Renewal stops before the answer is stored.

A key belongs to whoever sent it: its scope includes the caller, the credential that
authenticated the request (its role and name, bound by ``shared.auth.require_role``
through ``bind_caller``). A manager's request with the key a nurse used runs as its own
request instead of replaying the nurse's answer (keys are chosen by clients; two
clients' keys may collide, by chance or on purpose). Redis keys:
``{prefix}:idem:{scope}:{caller}:{key}``, ``caller`` a digest of role and name; a store
used with no caller bound (tests, tools) keeps ``{prefix}:idem:{scope}:{key}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

import orjson
from fastapi import HTTPException
from redis.asyncio import Redis

IDEMPOTENCY_TTL_SECONDS = 24 * 60 * 60
PENDING_TTL_SECONDS = 10.0


# who sends the request being handled (set per request by the auth dependency)
_caller: ContextVar[str | None] = ContextVar("idempotency_caller", default=None)


def bind_caller(role: str, name: str) -> None:
    """Name the credential of the request being handled: its Idempotency-Keys are its
    own. Called by ``shared.auth.require_role`` once the token is known."""
    _caller.set(hashlib.sha256(f"{role}|{name}".encode()).hexdigest()[:16])


def fingerprint(method: str, path: str, body: bytes) -> str:
    """What makes two requests "the same request"."""
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + body).hexdigest()


class IdempotencyStore:
    """Remembers each (scope, caller, key)'s answer (keys: the module's docstring)."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix

    def _key(self, scope: str, key: str) -> str:
        caller = _caller.get()
        if caller is None:
            return f"{self._prefix}:idem:{scope}:{key}"
        return f"{self._prefix}:idem:{scope}:{caller}:{key}"

    async def run(
        self,
        scope: str,
        key: str,
        request_fingerprint: str,
        action: Callable[[], Awaitable[tuple[int, Any]]],
    ) -> tuple[int, Any, bool]:
        """Run ``action`` once per key. Returns (status, body, replayed)."""
        if not 1 <= len(key) <= 200:
            raise HTTPException(400, detail="Idempotency-Key must be 1 to 200 characters")
        redis_key = self._key(scope, key)
        pending = orjson.dumps({"state": "pending", "fingerprint": request_fingerprint})
        ttl_ms = int(PENDING_TTL_SECONDS * 1000)
        claimed = await self._redis.set(redis_key, pending, nx=True, px=ttl_ms)
        if not claimed:
            raw = await self._redis.get(redis_key)
            if raw is None:  # expired between the two calls: try once more
                return await self.run(scope, key, request_fingerprint, action)
            stored = orjson.loads(raw)
            if stored["fingerprint"] != request_fingerprint:
                raise HTTPException(
                    422,
                    detail="Idempotency-Key was already used for a different request",
                )
            if stored["state"] == "pending":
                retry = max(1, round(PENDING_TTL_SECONDS / 3))
                raise HTTPException(
                    409, detail="a request with this Idempotency-Key is still in progress: "
                    f"retry in {retry} s", headers={"Retry-After": str(retry)},
                )
            return int(stored["status"]), stored["body"], True
        renewing = asyncio.create_task(self._renew(redis_key, ttl_ms))
        try:
            status_code, body = await action()
        except BaseException:
            await _stop(renewing)
            await self._redis.delete(redis_key)
            raise
        await _stop(renewing)
        if status_code < 500:
            done = {
                "state": "done",
                "fingerprint": request_fingerprint,
                "status": status_code,
                "body": body,
            }
            await self._redis.set(redis_key, orjson.dumps(done), ex=IDEMPOTENCY_TTL_SECONDS)
        else:
            await self._redis.delete(redis_key)
        return status_code, body, False

    async def _renew(self, redis_key: str, ttl_ms: int) -> None:
        """Keep the "still running" marker alive while this process works on it."""
        while True:
            await asyncio.sleep(ttl_ms / 3000)
            with contextlib.suppress(Exception):  # Redis away: the marker may lapse
                await self._redis.pexpire(redis_key, ttl_ms)


async def _stop(task: asyncio.Task[None]) -> None:
    """Cancel the keep-alive and wait until it has ended: a cancellation that lands inside
    a Redis call can be swallowed by the client (the loop goes round again), and a single
    ``cancel()`` awaited would then hold the request forever; cancel until it is done."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=0.5)
    if not task.cancelled():
        task.exception()  # retrieved: its error is the loop's own business
