"""The driver's side of one shard: numbering its writes, sending them to every replica,
counting acknowledgements, routing reads to a live replica, and bringing replicas that were
down back up to date.

Writes to a shard are numbered under one lock and sent to the live replicas in that order;
each replica applies them in number order (``ShardReplica.apply``). A write is acknowledged
once ``write_quorum`` replicas have it in their write-ahead log. The shard keeps its latest
writes (up to ``tail_bytes``) in Ray's object store: a replica that missed some replays them
from there; one that missed more, or whose log another epoch overwrote, restores a live
replica's snapshot and replays the rest. Reads go round-robin over the live replicas and wait
until the replica has applied the last acknowledged write, so a caller reads its own writes.

Each start of the shard by a driver is a new *epoch*, beginning after the highest write any
replica holds. At least ``replicas - write_quorum + 1`` replicas must answer for a start, so
that one of them holds every acknowledged write.
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
from .replica import REFUSALS, SequenceGap

log = logging.getLogger(__name__)
_NOOP = pickle.dumps(("noop", (), {}))
_MAX_UNSENT = 100_000


def _ray():
    import ray

    return ray


def _cause(exc: BaseException) -> BaseException:
    """The exception a replica raised, without Ray's wrapper (its message has the traceback)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def _replica_broke(exc: BaseException) -> bool:
    """Whether a failed call says the replica (not the request) is at fault: its actor died
    or restarted, it is behind, or its storage failed."""
    ray = _ray()
    if isinstance(exc, ray.exceptions.RayActorError):
        return True
    cause = _cause(exc)
    return isinstance(cause, SequenceGap) or (isinstance(cause, OSError)
                                              and not isinstance(cause, TimeoutError))


@dataclass(eq=False)
class Replica:
    shard: int
    index: int
    actor: Any
    live: bool = False
    applied: int = 0
    epoch: int = 0
    node: str | None = None
    """The address of the node it runs on (its directory is on that node's disk)."""
    diverged: bool = False
    """Its log cannot be trusted past a point: it copies a live replica's snapshot."""
    repairing: threading.Lock = field(default_factory=threading.Lock)

    def __str__(self) -> str:
        return f"replica {self.index} of shard {self.shard}"

    def call(self, method: str, group: str | None = None):
        """``actor.method`` in its concurrency group: writes and reads each have their own
        threads, so neither can starve the other (nor the liveness probes)."""
        m = getattr(self.actor, method)
        return m.options(concurrency_group=group) if group else m


class PendingRead:
    """A read sent to one replica; ``result()`` retries on the shard's other live replicas
    if that one is down."""

    def __init__(self, shard: Shard, method: str, args: tuple, kwargs: dict,
                 timeout: float | None = None):
        self.shard = shard
        self.request = pickle.dumps((method, args, kwargs), protocol=5)
        self.timeout = shard.read_timeout if timeout is None else timeout
        self.tried: set[int] = set()
        self._send()

    def _send(self) -> None:
        self.replica = self.shard.pick(self.tried)
        self.ref = None if self.replica is None else self.replica.call("read", "reads").remote(
            self.shard.acked, self.request)

    def result(self) -> Any:
        ray = _ray()
        while self.replica is not None:
            try:
                return pickle.loads(ray.get(self.ref, timeout=self.timeout))
            except ray.exceptions.GetTimeoutError:
                raise TimeoutError(f"{self.shard}: {self.replica} did not answer within "
                                   f"{self.timeout:g} s") from None
            except ray.exceptions.RayError as exc:
                if not _replica_broke(exc):
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
        done: list[tuple[Replica, str, Any]] = []
        for replica, ref in self.calls:
            try:
                status, value = ray.get(ref, timeout=shard.timeout)
            except ray.exceptions.RayError as exc:
                shard.lost(replica, exc)
                continue
            replica.applied = max(replica.applied, self.seq)
            done.append((replica, status, value))
        refusals = [(r, v) for r, s, v in done if s == "error"]
        if refusals and len(refusals) < sum(s != "dup" for _, s, _ in done):
            # applied on some, refused on others: those broke (a refusal is deterministic)
            for replica, value in refusals:
                log.error("%s: %s refused write %d the others applied: %s", shard, replica,
                          self.seq, value)
                replica.diverged = True
                shard.lost(replica, value)
            done = [d for d in done if d[1] != "error"]
            refusals = []
        acks = len(done)
        if acks < shard.write_quorum:  # wait for replicas Ray is restarting, then catch them up
            deadline = time.monotonic() + shard.timeout
            for replica in [r for r in shard.replicas if not r.live]:
                if acks >= shard.write_quorum:
                    break
                if shard.repair(replica, deadline) and replica.applied >= self.seq:
                    acks += 1
        if acks < shard.write_quorum:
            raise ShardUnavailable(shard.unavailable(
                f"{acks} of {len(shard.replicas)} replicas have write {self.seq} (the quorum "
                f"is {shard.write_quorum}); it is not acknowledged and may or may not be applied"))
        with shard.lock:
            shard.acked = max(shard.acked, self.seq)
        if refusals:
            raise refusals[0][1]
        return next((v for _, s, v in done if s == "ok"), None)


class Shard:
    """``replicas``: the shard's replica actors, in index order. ``state``: the shard's part
    of ``cluster.json`` (``epochs``: where each epoch's numbering began; ``acked``: the last
    acknowledged write at the last clean close), updated in place on start and close."""

    def __init__(self, collection: str, index: int, replicas: list[Replica], *,
                 write_quorum: int, tail_bytes: int, timeout: float, read_timeout: float,
                 state: dict):
        self.collection = collection
        self.index = index
        self.replicas = replicas
        self.write_quorum = write_quorum
        self.tail_bytes = tail_bytes
        self.timeout = timeout
        """Seconds a replica may take to apply a write, to catch up, or to come back."""
        self.read_timeout = read_timeout
        self.state = state
        self.epoch = 0
        self.lock = threading.Lock()
        """Held while numbering and sending a write, so replicas receive writes in order."""
        self.seq = 0
        self.acked = 0
        self.unsent: set[int] = set()
        """Writes numbered while no replica was live (sent nowhere): a replica may skip one
        the tail no longer holds."""
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

    def _epoch_start(self, epoch: int) -> int | None:
        return self.state.get("epochs", {}).get(str(epoch))

    def _trusted(self, replica: Replica) -> bool:
        """A replica's log holds nothing a later epoch renumbered: what it applied in its
        epoch ends before the next epoch began."""
        if replica.diverged:
            return False
        nxt = self._epoch_start(replica.epoch + 1)
        return nxt is None or replica.applied < nxt

    def start(self) -> None:
        """Learn each replica's applied write; the shard continues in a new epoch after the
        highest trusted one, and replicas behind it catch up."""
        ray = _ray()
        for replica in self.replicas:
            try:
                status = ray.get(replica.call("status").remote(), timeout=self.timeout)
                replica.applied, replica.epoch = status["applied"], status["epoch"]
                replica.node = status["node"]
                replica.live = True
            except ray.exceptions.RayError as exc:
                log.warning("%s: %s did not start: %s", self, replica, _cause(exc))
        answered = [r for r in self.replicas if r.live]
        need = len(self.replicas) - self.write_quorum + 1
        if len(answered) < need:
            raise ShardUnavailable(self.unavailable(
                f"{len(answered)} of {len(self.replicas)} replicas answered; {need} must, so "
                f"that one holds every acknowledged write"))
        trusted = [r for r in answered if self._trusted(r)]
        base = max((r.applied for r in trusted), default=0)
        floor = max(int(self.state.get("acked", 0)),
                    max((int(s) for s in self.state.get("epochs", {}).values()), default=1) - 1)
        if base < floor:
            raise ShardUnavailable(self.unavailable(
                f"no replica holds the writes up to {floor} (the highest is {base}): its data "
                f"is missing"))
        self.epoch = max((int(e) for e in self.state.get("epochs", {})), default=0) + 1
        self.state.setdefault("epochs", {})[str(self.epoch)] = base + 1
        self.seq = self.acked = base
        for replica in answered:
            if replica.applied != base or replica not in trusted:
                replica.live = False
                replica.diverged = replica not in trusted
                self.repair(replica, time.monotonic() + self.timeout)
        for replica in self.replicas:
            if not replica.live:
                self.repair_later(replica)

    # --- writes ----------------------------------------------------------------------

    def submit(self, method: str, args: tuple = (), kwargs: dict | None = None) -> PendingWrite:
        ray = _ray()
        op = pickle.dumps((method, args, kwargs or {}), protocol=5)
        with self.lock:
            self.seq += 1
            ref = ray.put(op)
            self._remember(self.seq, ref, len(op))
            calls = [(r, r.call("apply", "writes").remote(self.seq, self.epoch, ref))
                     for r in self.replicas if r.live]
            if not calls:
                self.unsent.add(self.seq)
                if len(self.unsent) > _MAX_UNSENT:
                    self.unsent.discard(min(self.unsent))
            return PendingWrite(self, self.seq, calls)

    def _remember(self, seq: int, ref: Any, size: int) -> None:
        """Keep write ``seq`` for replicas that miss it; the oldest go past ``tail_bytes``
        (the newest is always kept)."""
        self._tail.append((seq, ref, size))
        self._tail_size += size
        while len(self._tail) > 1 and self._tail_size > self.tail_bytes:
            self._tail_size -= self._tail.popleft()[2]

    def _tail_from(self, seq: int) -> list | None:
        """The kept writes from ``seq`` on, or None when one no longer kept was sent to a
        replica (only a write sent nowhere may be skipped, as a no-op)."""
        first = self._tail[0][0] if self._tail else self.seq + 1
        evicted = range(seq, min(first, self.seq + 1))
        if any(s not in self.unsent for s in evicted):
            return None
        noop = _ray().put(_NOOP) if evicted else None
        return [(s, noop) for s in evicted] + [(s, ref) for s, ref, _ in self._tail if s >= seq]

    # --- reads -----------------------------------------------------------------------

    def pick(self, exclude: set[int]) -> Replica | None:
        live = [r for r in self.replicas if r.live and r.index not in exclude]
        return live[next(self._rr) % len(live)] if live else None

    def read(self, method: str, *args: Any, timeout: float | None = None,
             **kwargs: Any) -> PendingRead:
        return PendingRead(self, method, args, kwargs, timeout)

    def each_replica(self, method: str, *args: Any, timeout: float | None = None) -> list:
        """Call ``method`` on every live replica (flush, close, drop): the answers of those
        that answered (one that failed is repaired in the background). Raises when none
        did, unless no replica was live to begin with."""
        ray = _ray()
        calls = [(r, r.call(method).remote(*args)) for r in self.replicas if r.live]
        out = []
        for replica, ref in calls:
            try:
                out.append(ray.get(ref, timeout=self.timeout if timeout is None else timeout))
            except ray.exceptions.GetTimeoutError:
                raise TimeoutError(f"{self}: {replica} did not finish {method} in time") from None
            except ray.exceptions.RayError as exc:
                if not _replica_broke(exc):
                    raise _cause(exc) from None
                self.lost(replica, exc)
        if calls and not out:
            raise ShardUnavailable(self.unavailable(f"no replica finished {method}"))
        return out

    def snapshot(self) -> tuple[bytes, int, int]:
        """A live replica's snapshot archive and the write (number, epoch) it holds up to."""
        ray = _ray()
        tried: set[int] = set()
        while (replica := self.pick(tried)) is not None:
            try:
                return ray.get(replica.call("snapshot").remote(), timeout=self.read_timeout)
            except ray.exceptions.RayError as exc:
                if not _replica_broke(exc):
                    raise _cause(exc) from None
                self.lost(replica, exc)
                tried.add(replica.index)
        raise ShardUnavailable(self.unavailable("no live replica to snapshot"))

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
        if replica.repairing.locked() or self.closed:
            return
        threading.Thread(target=self.repair, args=(replica, None), daemon=True,
                         name=f"quiver-repair-{self.collection}-{self.index}-{replica.index}"
                         ).start()

    def repair(self, replica: Replica, deadline: float | None) -> bool:
        """Bring ``replica`` back: wait until its actor answers, replay the writes it missed
        (or restore a live replica's snapshot and replay the rest), and mark it live. True
        when it is live. ``deadline=None`` (the background repair) keeps trying, backing
        off; one with a deadline that fails hands over to the background."""
        ray = _ray()
        pause = 0.2
        while not self.closed:
            wait = 5.0 if deadline is None else max(0.0, deadline - time.monotonic())
            if not replica.repairing.acquire(timeout=wait):
                if deadline is None:
                    continue  # another repair holds it: it ends live, or hands back
                return replica.live
            try:
                if replica.live:
                    return True
                status = ray.get(replica.call("status").remote(), timeout=self.timeout)
                replica.applied, replica.epoch = status["applied"], status["epoch"]
                self._catch_up(replica)
                return True
            except (ray.exceptions.RayError, QuiverError) as exc:
                if isinstance(exc, ray.exceptions.ActorDiedError):  # for good: no restarts
                    log.warning("%s: %s is gone: %s", self, replica, _cause(exc))
                    return False
                if deadline is not None and time.monotonic() >= deadline:
                    log.warning("%s: %s not repaired yet: %s", self, replica, _cause(exc))
                    break
            finally:
                replica.repairing.release()
            time.sleep(pause)
            pause = min(5.0, pause * 1.5)
        self.repair_later(replica)
        return False

    def _catch_up(self, replica: Replica) -> None:
        ray = _ray()
        while True:
            missed = None if not self._trusted(replica) else self._tail_from(replica.applied + 1)
            if missed is None:  # too far behind, or another epoch's log: a live replica's copy
                source = max((r for r in self.replicas if r.live), key=lambda r: r.applied,
                             default=None)
                if source is None:
                    raise ShardUnavailable(self.unavailable("no live replica to copy from"))
                log.info("%s: %s (at write %d of epoch %d) copies %s", self, replica,
                         replica.applied, replica.epoch, source)
                archive, at, epoch = source.call("snapshot").options(num_returns=3).remote()
                replica.applied = ray.get(replica.call("restore").remote(archive, at, epoch),
                                          timeout=self.read_timeout)
                replica.epoch, replica.diverged = ray.get(epoch), False
                continue
            if len(missed) > 64:  # most of them while writes go on
                self._replay(replica, missed)
                continue
            with self.lock:  # the last few with new writes held, then it takes them live
                missed = self._tail_from(replica.applied + 1)
                if missed is None:
                    continue
                self._replay(replica, missed)
                replica.live = True
            log.info("%s: %s is back at write %d", self, replica, replica.applied)
            return

    def _replay(self, replica: Replica, writes: list) -> None:
        ray = _ray()
        for seq, ref in writes:
            status, value = ray.get(replica.call("apply", "writes").remote(seq, self.epoch, ref),
                                    timeout=self.timeout)
            replica.applied, replica.epoch = seq, self.epoch
            if status == "error" and not isinstance(value, REFUSALS):
                raise value
