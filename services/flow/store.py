"""Flow's Redis projection. The one place that knows its key layout.

Keys (``P`` is ``CLINICFLOW_REDIS_PREFIX``, default ``cf``)::

    P:flow:offset:{topic}:{partition}     last floor offset applied in the checkpoint
    P:flow:snap:{clinic}                  the clinic's live state at that checkpoint (JSON)
    P:flow:pclinics:{topic}:{partition}   SET of clinics whose events live on that partition
    P:flow:board:{clinic}                 the clinic's current board (JSON), served by the API
    P:flow:clinics                        SET of every clinic flow has seen
    P:flow:owner:{topic}:{partition}      fencing token: bumped by each instance given it
    P:flow:changes:{clinic}               pub/sub channel: each new board, for SSE clients
    P:flow:outbox, P:flow:outbox-lock     dead letters waiting for Kafka (shared/outbox.py)
    P:flow:outbox-parked                  those Kafka refused for good, set aside
    P:flow:claims:{clinic}                HASH: the rooms and visits floor commands are
                                          changing, from their check until their event is on
                                          the board (a few seconds; services/flow/commands.py)
    P:idem:flow:{key}                     Idempotency-Key answers (shared/idempotency.py)

A checkpoint writes the snapshots of the clinics that changed, the partitions'
offsets and the dead letters of the records it covers (queued in the outbox) in one
atomic write (a Lua script), so after a crash the service resumes from a state and an
offset that belong together: every event is applied to the stored state exactly once,
and a record is dead-lettered exactly when its offset is stored. Boards are derived
views, rewritten after every batch; they may run ahead of the checkpoint.
Everything here can be thrown away: with no offset stored, flow replays the
floor topic from the beginning and rebuilds it (design decision 1).

Writes are fenced. An instance paused past its session (a long GC pause, a
frozen VM, SIGSTOP) wakes up still holding batches of partitions the group has
given to another instance; its late boards and checkpoint would overwrite the
newer ones. Each instance ``claim``s a partition when it is assigned (a token
the owner key counts up), and every write checks, in the same Lua call, that
the partitions it holds are still its own; a write of a partition claimed since
is refused with ``Fenced``. A flushed owner key is claimed again by the next
write (Redis lost is rebuilt, design decision 1).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from redis.asyncio import Redis

from shared.outbox import Outbox
from shared.projection import Partition

# KEYS: fence keys, SET keys, SADD keys, RPUSH keys, PUBLISH channels; ARGV: the first four
# counts, then the fence tokens, SET values, SADD members, RPUSH entries and messages in order
_FENCED_WRITE = """
local fences, sets = tonumber(ARGV[1]), tonumber(ARGV[2])
local adds, pushes = tonumber(ARGV[3]), tonumber(ARGV[4])
for i = 1, fences do
  local owner = redis.call('GET', KEYS[i])
  if owner and owner ~= ARGV[4 + i] then return 0 end
  if not owner then redis.call('SET', KEYS[i], ARGV[4 + i]) end
end
local at = fences
for i = at + 1, at + sets do redis.call('SET', KEYS[i], ARGV[4 + i]) end
at = at + sets
for i = at + 1, at + adds do redis.call('SADD', KEYS[i], ARGV[4 + i]) end
at = at + adds
for i = at + 1, at + pushes do redis.call('RPUSH', KEYS[i], ARGV[4 + i]) end
for i = at + pushes + 1, #KEYS do redis.call('PUBLISH', KEYS[i], ARGV[4 + i]) end
return 1
"""



@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What one checkpoint stores together: each partition's last applied offset, the
    snapshots of the clinics that changed (with the partition each lives on), and the
    dead letters among the records it covers (outbox entries, oldest first)."""

    offsets: dict[Partition, int]
    snapshots: dict[str, tuple[Partition, bytes]]
    dead_letters: list[bytes] = field(default_factory=list)


class Fenced(Exception):
    """A write refused: another instance was given one of this instance's partitions."""


class FlowStore:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = f"{prefix}:flow"
        self._claims: dict[Partition, int] = {}  # partitions held -> fencing token
        self._fenced_write = redis.register_script(_FENCED_WRITE)
        self.outbox = Outbox(redis, self.prefix)  # dead letters, relayed to Kafka

    # ------------------------------------------------------------------ keys

    def _offset(self, topic: str, partition: int) -> str:
        return f"{self.prefix}:offset:{topic}:{partition}"

    def _snap(self, clinic_id: str) -> str:
        return f"{self.prefix}:snap:{clinic_id}"

    def _pclinics(self, topic: str, partition: int) -> str:
        return f"{self.prefix}:pclinics:{topic}:{partition}"

    def _owner(self, topic: str, partition: int) -> str:
        return f"{self.prefix}:owner:{topic}:{partition}"

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

    async def applied_offset(self, topic: str, partition: int) -> int | None:
        """The last offset of the partition the stored checkpoint has applied (None:
        none); the boards show at least as much."""
        raw = await self.redis.get(self._offset(topic, partition))
        return None if raw is None else int(raw)

    async def board(self, clinic_id: str) -> bytes | None:
        result: bytes | None = await self.redis.get(self._board(clinic_id))
        return result

    async def clinics(self) -> list[str]:
        members = await self.redis.smembers(self._clinics)
        return sorted(m.decode() for m in members)

    async def has_checkpoint(self, topic: str, partition: int) -> bool:
        return bool(await self.redis.exists(self._offset(topic, partition)))

    # ---------------------------------------------------------------- writes

    async def claim(self, topic: str, partition: int) -> None:
        """Take a newly assigned partition: from now on, writes of any instance that held
        it before are refused. Claim before loading the partition's checkpoint."""
        token = await self.redis.incr(self._owner(topic, partition))
        self._claims[(topic, partition)] = int(token)

    def release(self, topic: str, partition: int) -> None:
        """Forget a revoked partition's claim (its later writes are not ours to make)."""
        self._claims.pop((topic, partition), None)

    async def write(self, boards: dict[str, bytes], checkpoint: Checkpoint | None = None
                    ) -> None:
        """Write boards (and publish them to SSE listeners); with ``checkpoint``, store its
        snapshots and offsets and queue its dead letters as well.

        All of it or nothing is written; nothing when a partition this instance claimed
        was claimed since (``Fenced``).
        """
        fences = [(self._owner(*tp), token) for tp, token in self._claims.items()]
        sets: list[tuple[str, bytes | str | int]] = []
        adds: list[tuple[str, str]] = [(self._clinics, clinic_id) for clinic_id in boards]
        pushes: list[tuple[str, bytes]] = []
        for clinic_id, board in boards.items():
            sets.append((self._board(clinic_id), board))
        if checkpoint is not None:
            for clinic_id, ((topic, partition), snapshot) in checkpoint.snapshots.items():
                sets.append((self._snap(clinic_id), snapshot))
                adds.append((self._pclinics(topic, partition), clinic_id))
            for (topic, partition), offset in checkpoint.offsets.items():
                sets.append((self._offset(topic, partition), offset))
            pushes = [(self.outbox.key, entry) for entry in checkpoint.dead_letters]
        if not sets and not adds:
            return
        publishes = [(self.changes_channel(c), board) for c, board in boards.items()]
        groups = (fences, sets, adds, pushes, publishes)
        written = await self._fenced_write(
            keys=[key for group in groups for key, _ in group],
            args=[len(fences), len(sets), len(adds), len(pushes),
                  *(value for group in groups for _, value in group)],
        )
        if not written:
            raise Fenced("a partition of this write was given to another flow instance")

    async def forget_boards(self, clinic_ids: Iterable[str]) -> None:
        ids = list(clinic_ids)
        if ids:
            await self.redis.delete(*[self._board(c) for c in ids])
