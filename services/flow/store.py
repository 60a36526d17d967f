"""Flow's Redis projection. The one place that knows its key layout.

Keys (``P`` is ``CLINICFLOW_REDIS_PREFIX``, default ``cf``)::

    P:flow:offset:{topic}:{partition}     last floor offset applied in the checkpoint
    P:flow:snap:{clinic}                  the clinic's live state at that checkpoint (JSON)
    P:flow:pclinics:{topic}:{partition}   SET of clinics whose events live on that partition
    P:flow:board:{clinic}                 the clinic's current board (JSON), served by the API
    P:flow:clinics                        SET of every clinic flow has seen
    P:flow:changes:{clinic}               pub/sub channel: each new board, for SSE clients
    P:idem:flow:{key}                     Idempotency-Key answers (shared/idempotency.py)

A checkpoint writes the snapshots of the clinics that changed and the
partitions' offsets in one MULTI/EXEC transaction, so after a crash the
service resumes from a state and an offset that belong together: every event
is applied to the stored state exactly once. Boards are derived views,
rewritten after every batch; they may run ahead of the checkpoint.
Everything here can be thrown away: with no offset stored, flow replays the
floor topic from the beginning and rebuilds it (design decision 1).
"""

from __future__ import annotations

from collections.abc import Iterable

from redis.asyncio import Redis


class FlowStore:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = f"{prefix}:flow"

    # ------------------------------------------------------------------ keys

    def _offset(self, topic: str, partition: int) -> str:
        return f"{self.prefix}:offset:{topic}:{partition}"

    def _snap(self, clinic_id: str) -> str:
        return f"{self.prefix}:snap:{clinic_id}"

    def _pclinics(self, topic: str, partition: int) -> str:
        return f"{self.prefix}:pclinics:{topic}:{partition}"

    def _board(self, clinic_id: str) -> str:
        return f"{self.prefix}:board:{clinic_id}"

    @property
    def _clinics(self) -> str:
        return f"{self.prefix}:clinics"

    def changes_channel(self, clinic_id: str) -> str:
        return f"{self.prefix}:changes:{clinic_id}"

    @property
    def changes_pattern(self) -> str:
        return f"{self.prefix}:changes:*"

    def clinic_of_channel(self, channel: str) -> str:
        return channel[len(self.prefix) + len(":changes:"):]

    # ----------------------------------------------------------------- reads

    async def load_partition(self, topic: str, partition: int) -> tuple[int | None, list[bytes]]:
        """The checkpointed offset of a partition and its clinics' snapshots."""
        raw_offset, clinics = await (
            self.redis.pipeline(transaction=True)
            .get(self._offset(topic, partition))
            .smembers(self._pclinics(topic, partition))
            .execute()
        )
        if raw_offset is None:
            return None, []
        ids = sorted(c.decode() for c in clinics)
        snapshots = await self.redis.mget([self._snap(c) for c in ids]) if ids else []
        return int(raw_offset), [s for s in snapshots if s is not None]

    async def board(self, clinic_id: str) -> bytes | None:
        result: bytes | None = await self.redis.get(self._board(clinic_id))
        return result

    async def clinics(self) -> list[str]:
        members = await self.redis.smembers(self._clinics)
        return sorted(m.decode() for m in members)

    async def has_checkpoint(self, topic: str, partition: int) -> bool:
        return bool(await self.redis.exists(self._offset(topic, partition)))

    # ---------------------------------------------------------------- writes

    async def write(
        self,
        boards: dict[str, bytes],
        checkpoint: tuple[dict[tuple[str, int], int], dict[str, tuple[tuple[str, int], bytes]]]
        | None = None,
    ) -> None:
        """Write boards (and publish them to SSE listeners); with ``checkpoint``,
        atomically store snapshots and offsets as well.

        ``checkpoint`` is (offsets by (topic, partition), snapshots by clinic with
        the (topic, partition) the clinic lives on).
        """
        pipe = self.redis.pipeline(transaction=checkpoint is not None)
        for clinic_id, board in boards.items():
            pipe.set(self._board(clinic_id), board)
            pipe.publish(self.changes_channel(clinic_id), board)
        if boards:
            pipe.sadd(self._clinics, *boards)
        if checkpoint is not None:
            offsets, snapshots = checkpoint
            for clinic_id, ((topic, partition), snapshot) in snapshots.items():
                pipe.set(self._snap(clinic_id), snapshot)
                pipe.sadd(self._pclinics(topic, partition), clinic_id)
            for (topic, partition), offset in offsets.items():
                pipe.set(self._offset(topic, partition), offset)
        await pipe.execute()

    async def forget_boards(self, clinic_ids: Iterable[str]) -> None:
        ids = list(clinic_ids)
        if ids:
            await self.redis.delete(*[self._board(c) for c in ids])
