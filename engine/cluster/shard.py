"""The driver's side of one shard: numbering its writes, sending them to every replica,
counting acknowledgements, routing reads to a live replica, and bringing replicas that were
down back up to date.

Writes to a shard are numbered under one lock and sent to the live replicas in that order;
each replica applies them in number order (``ShardReplica.apply``). A write is acknowledged
once ``write_quorum`` replicas have it in their write-ahead log. The shard keeps the last
writes (up to ``tail_bytes``) in Ray's object store: a replica that missed some replays them
from there, one that missed more restores another replica's snapshot and replays the rest.
Reads go round-robin over the live replicas and wait until the replica has applied the last
acknowledged write, so a caller always reads its own writes.
"""

from __future__ import annotations

import collections
import itertools
import logging
import pickle
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import QuiverError, ShardUnavailable
from .replica import SequenceGap

log = logging.getLogger(__name__)
_NOOP = pickle.dumps(("noop", (), {}))


def _ray():
    import ray

    return ray


def _cause(exc: BaseException) -> BaseException:
    """The exception a replica raised, without Ray's wrapper (its message has the traceback)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def _is_refusal(exc: BaseException) -> bool:
    """A replica refused the request itself (bad input: the same on every replica), as
    opposed to the replica being down, behind or broken."""
    cause = _cause(exc)
    return isinstance(cause, QuiverError) and not isinstance(cause, SequenceGap)


@dataclass(eq=False)
class Replica:
    shard: int
    index: int
    actor: Any
    live: bool = False
    applied: int = 0
    node: str | None = None
    """The address of the node it runs on (its directory is on that node's disk)."""
    repairing: threading.Lock = field(default_factory=threading.Lock)

    def __str__(self) -> str:
        return f"replica {self.index} of shard {self.shard}"


class PendingRead:
    """A read sent to one replica; ``result()`` retries on the shard's other live replicas
    if that one is down."""

    def __init__(self, shard: Shard, method: str, args: tuple, kwargs: dict):
        self.shard = shard
        self.request = pickle.dumps((method, args, kwargs), protocol=5)
        self.tried: set[int] = set()
        self._send()

    def _send(self) -> None:
        self.replica = self.shard.pick(self.tried)
        self.ref = None if self.replica is None else self.replica.actor.read.remote(
            self.shard.acked, self.request)

    def result(self) -> Any:
        ray = _ray()
        while self.replica is not None:
            try:
                return pickle.loads(ray.get(self.ref, timeout=self.shard.timeout))
            except ray.exceptions.RayError as exc:
                if _is_refusal(exc):
                    raise _cause(exc) from None
                self.shard.lost(self.replica, exc)
                self.tried.add(self.replica.index)
                self._send()
        raise ShardUnavailable(self.shard.unavailable("no live replica to answer"))


class PendingWrite:
    """A numbered write sent to the shard's live replicas; ``result()`` waits for the quorum."""

    def __init__(self, shard: Shard, seq: int, calls: list):
        self.shard, self.seq, self.calls = shard, seq, calls

    def result(self) -> Any:
        ray = _ray()
        shard = self.shard
        acks, result, refusal, down = 0, None, None, []
        for replica, ref in self.calls:
            try:
                status, value = ray.get(ref, timeout=shard.timeout)
            except ray.exceptions.RayError as exc:
                shard.lost(replica, exc)
                down.append(replica)
                continue
            acks += 1
            replica.applied = max(replica.applied, self.seq)
            if status == "ok" and result is None:
                result = value
            elif status == "error":
                refusal = value
        if acks < shard.write_quorum:  # wait for replicas Ray is restarting, then catch them up
            deadline = time.monotonic() + shard.timeout
            for replica in [r for r in shard.replicas if not r.live]:
                if acks >= shard.write_quorum:
                    break
                if shard.repair(replica, deadline) and replica.applied >= self.seq:
                    acks += 1
        if acks < shard.write_quorum:
            shard.unacknowledged.add(self.seq)
            raise ShardUnavailable(shard.unavailable(
                f"{acks} of {len(shard.replicas)} replicas have write {self.seq} (the quorum "
                f"is {shard.write_quorum}); it is not acknowledged and may or may not be applied"))
        with shard.lock:
            shard.acked = max(shard.acked, self.seq)
        if refusal is not None:
            raise refusal
        return result


class Shard:
    """``replicas``: the shard's replica actors, in index order."""

    def __init__(self, collection: str, index: int, replicas: list[Replica], *,
                 write_quorum: int, tail_bytes: int, timeout: float):
        self.collection = collection
        self.index = index
        self.replicas = replicas
        self.write_quorum = write_quorum
        self.tail_bytes = tail_bytes
        self.timeout = timeout
        self.lock = threading.Lock()
        """Held while numbering and sending a write, so replicas receive writes in order."""
        self.seq = 0
        self.acked = 0
        self.unacknowledged: set[int] = set()
        """Writes no quorum acknowledged: a replica may skip one the tail no longer holds."""
        self._tail: collections.deque = collections.deque()
        self._tail_size = 0
        self._rr = itertools.count()
        self.closed = False
        """Set when the collection closes: background repairs stop."""

    def __str__(self) -> str:
        return f"collection {self.collection!r}: shard {self.index}"

    def unavailable(self, why: str) -> str:
        down = [r.index for r in self.replicas if not r.live]
        return (f"{self}: {why}" + (f" (replica{'s' if len(down) > 1 else ''} "
                                     f"{', '.join(map(str, down))} down)" if down else ""))

    # --- opening ---------------------------------------------------------------------

    def start(self) -> None:
        """Learn each replica's applied write; the shard continues from the highest, and
        replicas behind it catch up (from the most advanced one's snapshot)."""
        ray = _ray()
        for replica in self.replicas:
            try:
                status = ray.get(replica.actor.status.remote(), timeout=self.timeout)
                replica.applied, replica.node = status["applied"], status["node"]
                replica.live = True
            except ray.exceptions.RayError as exc:
                log.warning("%s: %s did not start: %s", self, replica, _cause(exc))
        if not any(r.live for r in self.replicas):
            raise ShardUnavailable(self.unavailable("no replica started"))
        self.seq = self.acked = max(r.applied for r in self.replicas if r.live)
        for replica in self.replicas:
            if replica.live and replica.applied < self.seq:
                replica.live = False
                self.repair(replica, time.monotonic() + self.timeout)
            elif not replica.live:
                self.repair_later(replica)

    # --- writes ----------------------------------------------------------------------

    def submit(self, method: str, args: tuple = (), kwargs: dict | None = None) -> PendingWrite:
        ray = _ray()
        op = pickle.dumps((method, args, kwargs or {}), protocol=5)
        with self.lock:
            self.seq += 1
            ref = ray.put(op)
            self._remember(self.seq, ref, len(op))
            calls = [(r, r.actor.apply.remote(self.seq, ref)) for r in self.replicas if r.live]
            return PendingWrite(self, self.seq, calls)

    def _remember(self, seq: int, ref: Any, size: int) -> None:
        """Keep write ``seq`` for replicas that miss it; the oldest go past ``tail_bytes``
        (the newest is always kept)."""
        self._tail.append((seq, ref, size))
        self._tail_size += size
        while len(self._tail) > 1 and self._tail_size > self.tail_bytes:
            self._tail_size -= self._tail.popleft()[2]

    def _tail_from(self, seq: int) -> list | None:
        """The kept writes from ``seq`` on (writes no quorum acknowledged may be missing:
        they become no-ops), or None when an acknowledged one is no longer kept."""
        first = self._tail[0][0] if self._tail else self.seq + 1
        if any(s not in self.unacknowledged for s in range(seq, min(first, self.seq + 1))):
            return None
        ray = _ray()
        noop = ray.put(_NOOP)
        out = [(s, noop) for s in range(seq, min(first, self.seq + 1))]
        return out + [(s, ref) for s, ref, _ in self._tail if s >= seq]

    # --- reads -----------------------------------------------------------------------

    def pick(self, exclude: set[int]) -> Replica | None:
        live = [r for r in self.replicas if r.live and r.index not in exclude]
        return live[next(self._rr) % len(live)] if live else None

    def read(self, method: str, *args: Any, **kwargs: Any) -> PendingRead:
        return PendingRead(self, method, args, kwargs)

    def each_replica(self, method: str, *args: Any) -> list:
        """Call ``method`` on every live replica (flush, drop): the answers of those that
        answered (one that failed is repaired in the background)."""
        ray = _ray()
        calls = [(r, getattr(r.actor, method).remote(*args)) for r in self.replicas if r.live]
        out = []
        for replica, ref in calls:
            try:
                out.append(ray.get(ref, timeout=self.timeout))
            except ray.exceptions.RayError as exc:
                if _is_refusal(exc):
                    raise _cause(exc) from None
                self.lost(replica, exc)
        return out

    # --- faults ----------------------------------------------------------------------

    def lost(self, replica: Replica, exc: BaseException) -> None:
        """``replica`` failed a call: no more reads or writes go to it until a repair (in
        the background from now on) has brought it up to date."""
        if replica.live:
            log.warning("%s: %s is down or behind: %s", self, replica, _cause(exc))
        replica.live = False
        self.repair_later(replica)

    def repair_later(self, replica: Replica) -> None:
        """Catch ``replica`` up in the background (Ray restarts its actor meanwhile)."""
        if replica.repairing.locked():
            return
        threading.Thread(target=self.repair, args=(replica, None), daemon=True,
                         name=f"quiver-repair-{self.collection}-{self.index}-{replica.index}"
                         ).start()

    def repair(self, replica: Replica, deadline: float | None) -> bool:
        """Bring ``replica`` back: wait until its actor answers, replay the writes it missed
        (or restore a live replica's snapshot and replay the rest), and mark it live. True
        when it is live; ``deadline=None`` keeps trying (the background repair)."""
        ray = _ray()
        while not self.closed:
            if not replica.repairing.acquire(timeout=5.0 if deadline is None else
                                             max(0.0, deadline - time.monotonic())):
                return replica.live
            try:
                if replica.live:
                    return True
                replica.applied = ray.get(replica.actor.status.remote(),
                                          timeout=self.timeout)["applied"]
                self._catch_up(replica)
                return True
            except (ray.exceptions.RayError, ShardUnavailable) as exc:
                if isinstance(exc, ray.exceptions.ActorDiedError):  # for good: no restarts
                    log.warning("%s: %s is gone: %s", self, replica, _cause(exc))
                    return False
                if deadline is not None and time.monotonic() >= deadline:
                    log.warning("%s: %s could not be repaired: %s", self, replica, _cause(exc))
                    return False
            finally:
                replica.repairing.release()
            time.sleep(0.2)
        return False

    def _catch_up(self, replica: Replica) -> None:
        ray = _ray()
        while True:
            with self.lock:
                missed = self._tail_from(replica.applied + 1)
                if missed is not None and len(missed) <= 64:  # the last few: new writes wait
                    self._replay(replica, missed)
                    replica.live = True
                    log.info("%s: %s is back at write %d", self, replica, replica.applied)
                    return
            if missed is None:  # too far behind: another replica's snapshot
                source = max((r for r in self.replicas if r.live), key=lambda r: r.applied,
                             default=None)
                if source is None:
                    raise ShardUnavailable(self.unavailable("no live replica to copy from"))
                log.info("%s: %s is at write %d, too far behind to replay: it copies %s",
                         self, replica, replica.applied, source)
                archive, at = ray.get(source.actor.snapshot.remote(), timeout=self.timeout)
                replica.applied = ray.get(replica.actor.restore.remote(archive, at),
                                          timeout=self.timeout)
            else:
                self._replay(replica, missed)

    def _replay(self, replica: Replica, writes: list) -> None:
        ray = _ray()
        for seq, ref in writes:
            ray.get(replica.actor.apply.remote(seq, ref), timeout=self.timeout)
            replica.applied = seq
