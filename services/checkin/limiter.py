"""The status lookup's rate limiter: fixed one-minute windows per client, counted in
Redis through the store (which keeps the counters' keys), so every instance of checkin
counts the same client together.
"""

from __future__ import annotations

import hashlib
import math
from datetime import datetime

from fastapi import HTTPException, Request

from services.checkin import metrics as m
from services.checkin.store import CheckinStore
from shared.auth import Principal


class LookupLimiter:
    """Fixed one-minute windows per client (credential + address): at most
    ``per_minute`` lookups, and at most ``misses_per_minute`` unknown codes or failed
    kiosk checks (guessing), each answered 429 with ``Retry-After`` once exceeded."""

    def __init__(self, store: CheckinStore, per_minute: int, misses_per_minute: int) -> None:
        self.store = store
        self.per_minute = per_minute
        self.misses_per_minute = misses_per_minute

    @staticmethod
    def client(request: Request, principal: Principal) -> str:
        address = request.client.host if request.client else "-"
        return hashlib.sha256(f"{principal.name}|{address}".encode()).hexdigest()[:20]

    @staticmethod
    def _retry_after(now: datetime) -> str:
        return str(max(1, 60 - math.floor(now.timestamp()) % 60))

    async def admit(self, client: str, now: datetime, kind: str, *, count: bool = True) -> None:
        minute = int(now.timestamp() // 60)
        if await self.store.counted("miss", client, minute) >= self.misses_per_minute:
            m.LOOKUPS.labels(kind, "limited").inc()
            raise HTTPException(429, detail="too many unknown codes or failed checks; "
                                "try again in a minute or see the front desk",
                                headers={"Retry-After": self._retry_after(now)})
        if count and await self.store.count("lookup", client, minute) > self.per_minute:
            m.LOOKUPS.labels(kind, "limited").inc()
            raise HTTPException(429, detail=f"more than {self.per_minute} lookups a minute; "
                                "try again in a minute",
                                headers={"Retry-After": self._retry_after(now)})

    async def missed(self, client: str, now: datetime) -> None:
        await self.store.count("miss", client, int(now.timestamp() // 60))
