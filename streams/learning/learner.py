"""The recommender's learner processes: the shards learn beside the worker's event loop, not on it.

Learning took over half of a worker's time under the GIL (docs/benchmark-history.md, "Where the worker's time
goes"): one process could not both fetch, validate, store and ack 10,000 clicks/s and learn them. The
shards (`streams/learning/shard.py`) now live in `commerce_learners` child processes (partition p in learner
p mod n); the worker decodes each record once, sends it on, and keeps everything that talks to Kafka,
the tables and ClickHouse.

Three pipes per learner:
- `work` (worker -> learner): records, restores, revocations, checkpoints and snapshots, carried out
  in the order sent. A checkpoint therefore holds exactly the records sent before it: the worker acks
  those once it has written the checkpoint's table records (which the learner hands back) to the table.
- `ask` (both ways): requests (a user's recommendations, stats) answered between slices of work
  (`WORK_SLICE_SECONDS`), and their replies, read on the worker's event loop.
- `bulk` (learner -> worker): the replies to work (checkpoints run to tens of MB), sent and read by a
  thread at each end. On the `ask` pipe, a checkpoint held every answer behind it for 100-500 ms: a
  thread reading a large message waits for the GIL after each chunk the pipe gives it.

A learner that dies (or raises) fails every waiting request and stops the worker (`Learner.check`); the
restarted worker restores from the last checkpoints, like after a kill -9. A learner dies with its
worker: it reads an end of file from the worker's pipes, and Linux kills it when its parent exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import logging
import multiprocessing
import os
import queue
import resource
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection, wait
from typing import Any

from online_models.recommender import RecommenderConfig, bpr, cooc, scoring
from streams.runtime import heap
from streams.learning.shard import Shard, TableWrites, also_viewed

log = logging.getLogger(__name__)

WORK_SLICE_SECONDS = 0.002  # the longest a learner works before it answers waiting requests
RECORDS_PER_STEP = 16
USERS_PER_STEP = 16
RECS_CACHE_SECONDS = 1.0  # a user's answer is kept this long, unless their own click changes it
_FATAL = -1  # request id of a learner's last words


# --- the learner process -------------------------------------------------------------------------------


def serve(work: Connection, ask: Connection, bulk: Connection, config: RecommenderConfig) -> None:
    """A learner process's main: carry out `work` in order, answer `ask` between slices, until the worker goes."""
    _die_with_parent()
    heap.configure()
    bpr.warm_up()
    cooc.warm_up()
    scoring.warm_up()
    host = Host(config, ask, bulk)
    try:
        host.run(work)
    except (EOFError, OSError):
        return  # the worker closed its pipes or is gone
    except BaseException:  # noqa: BLE001 - told to the worker, which stops
        try:
            ask.send((_FATAL, traceback.format_exc()))
        finally:
            raise SystemExit(1) from None


_GROUP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _die_with_parent() -> None:
    """Live exactly as long as the worker: out of its process group, so that a signal sent to the group (Ctrl-C, a
    supervisor's stop) reaches the worker alone, which stops in order while its learner still answers; killed by
    Linux when the worker exits (else by the end of file on its pipes).

    The worker starts the process with those signals blocked (`Learner.start`), so one sent to the group while this
    process was still importing waits, and is discarded here: it was the worker's to handle."""
    int_handler = signal.signal(signal.SIGINT, signal.SIG_IGN)  # discards a pending one (POSIX)
    term_handler = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _GROUP_SIGNALS)
    signal.signal(signal.SIGINT, int_handler)
    signal.signal(signal.SIGTERM, term_handler)
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the end of file on the worker's pipes still stops it


class Host:
    """What runs in a learner process: its shards, their answer cache, and the queue of work."""

    def __init__(self, config: RecommenderConfig, ask: Connection, bulk: Connection) -> None:
        self.config = config
        self.ask = ask
        self.bulk: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=_send_all, args=(self.bulk, bulk), name="wharf-learner-bulk", daemon=True).start()
        self.shards: dict[int, Shard] = {}
        self.cache: dict[tuple[str, int], tuple[float, int, list]] = {}
        self.jobs: deque[Iterator[None]] = deque()
        self.longest_step = 0.0  # seconds: how long a waiting request could wait behind one step of work
        self.longest_kind = ""
        self.answered = 0
        self.answer_seconds = 0.0
        self.work_seconds = 0.0

    def run(self, work: Connection) -> None:
        ask = self.ask
        swept = time.monotonic()
        while True:
            while ask.poll():
                self.answer(*ask.recv())
            if self.jobs:
                job = self.jobs[0]
                started = now = time.perf_counter()
                deadline = now + WORK_SLICE_SECONDS
                try:
                    while now < deadline:
                        next(job)
                        step, now = time.perf_counter() - now, time.perf_counter()
                        if step > self.longest_step:
                            self.longest_step, self.longest_kind = step, job.__name__.removeprefix("do_")
                except StopIteration:
                    self.jobs.popleft()
                    heap.freeze_if_due()  # the worker's collector policy (streams/runtime/heap.py), here for the shards
                    if time.monotonic() - swept >= heap.SWEEP_SECONDS:
                        heap.sweep()
                        swept = time.monotonic()
                self.work_seconds += time.perf_counter() - started
                continue
            if work in wait([work, ask]):
                kind, *args = work.recv()
                self.jobs.append(getattr(self, f"do_{kind}")(*args))

    def reply(self, req: int, payload: Any) -> None:
        """The reply to a piece of work, sent by the bulk thread (pickled there too: the payload is not changed after)."""
        self.bulk.put((req, payload))

    # Work, in order: generators that yield after each small step.

    def do_records(self, records: list[tuple[int, Any]]) -> Iterator[None]:
        shards = self.shards
        for start in range(0, len(records), RECORDS_PER_STEP):
            for p, record in records[start:start + RECORDS_PER_STEP]:
                shard = shards.get(p)
                if shard is not None:  # else revoked meanwhile: the new owner learns it
                    shard.apply(record)
            yield

    def do_load(self, req: int, p: int, entries: list[tuple[bytes, bytes]]) -> Iterator[None]:
        shard = self.shards[p] = Shard.restore(p, self.config, entries)
        self.reply(req, (len(shard.model.users), len(shard.model.items), dict(shard.offsets), list(shard.log.refused)))
        yield

    def do_forget(self, partitions: list[int]) -> Iterator[None]:
        for p in partitions:
            self.shards.pop(p, None)
        self.cache.clear()
        yield

    def do_checkpoint(self, req: int, partitions: list[int]) -> Iterator[None]:
        """Each shard's checkpoint as table writes ({p: (writes, records)}; None for a shard not held)."""
        out: dict[int, tuple[list, int] | None] = {}
        for p in partitions:
            shard = self.shards.get(p)
            if shard is None:
                out[p] = None
                continue
            writes, records = TableWrites(), 0
            for records in shard.checkpoint_steps(writes):  # noqa: B007 - the last count is the total
                yield
            out[p] = (writes.ops, records)
        self.reply(req, out)

    def do_snapshot(self, req: int, k: int, k_items: int, max_active: int) -> Iterator[None]:
        """Per shard: the top-k of its users and the 'also viewed' top-k_items of its items, of those active since
        the last snapshot (the most recent `max_active` of each)."""
        out = []
        for p, shard in list(self.shards.items()):
            users = [u for u in shard.active_users.newest(max_active) if u in shard.model.users]  # not evicted since
            item_ids = shard.active_items.newest(max_active)
            shard.active_users.clear()
            shard.active_items.clear()
            recs = []
            for start in range(0, len(users), USERS_PER_STEP):
                recs += [(uid, [tuple(r) for r in shard.model.recommend(uid, k)]) for uid in users[start:start + USERS_PER_STEP]]
                yield
            lists = [(iid, also_viewed(shard.model, iid, k_items)) for iid in item_ids]
            out.append((p, recs, [(iid, lst) for iid, lst in lists if lst]))
        self.reply(req, out)

    # Requests, answered between steps of work.

    def answer(self, kind: str, req: int, *args: Any) -> None:
        started = time.perf_counter()
        self.ask.send((req, getattr(self, f"ask_{kind}")(*args)))
        self.answered += 1
        self.answer_seconds += time.perf_counter() - started

    def ask_recommend(self, p: int, user_id: str, k: int) -> list[tuple[str, float, str]] | None:
        """A user's top-k (None: the shard is not here); a short cache absorbs request bursts, and a user's own
        click invalidates it (their events count is part of the key)."""
        shard = self.shards.get(p)
        if shard is None:
            return None
        user = shard.model.users.get(user_id)
        events = user.events if user is not None else 0
        hit = self.cache.get((user_id, k))
        now = time.monotonic()
        if hit is not None and hit[0] > now and hit[1] == events:
            return hit[2]
        recs = [tuple(r) for r in shard.model.recommend(user_id, k)]
        if len(self.cache) > 100_000:
            self.cache.clear()
        self.cache[(user_id, k)] = (now + RECS_CACHE_SECONDS, events, recs)
        return recs

    def ask_stats(self) -> dict[str, Any]:
        return {"shards": {p: shard.stats() for p, shard in self.shards.items()},
                "process": {"pid": os.getpid(), "work_s": round(self.work_seconds, 3), "answered": self.answered,
                            "answer_s": round(self.answer_seconds, 3), "longest_step_ms": round(self.longest_step * 1e3, 1), "longest_step": self.longest_kind,
                            "queued_jobs": len(self.jobs), "gc": heap.pauses.as_dict(),
                            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}}


# --- the worker's side ---------------------------------------------------------------------------------


def _send_all(outbox: queue.SimpleQueue, conn: Connection) -> None:
    """Send what is put in `outbox` (pickled here, off the putting thread) until None; then close."""
    try:
        while (msg := outbox.get()) is not None:
            conn.send(msg)
    finally:
        conn.close()


class LearnerDied(RuntimeError):
    pass


class Learner:
    """One learner process, seen from the worker's event loop."""

    def __init__(self, index: int, config: RecommenderConfig, on_death: Callable[[BaseException], None]) -> None:
        self.index = index
        self.config = config
        self.on_death = on_death
        self.error: BaseException | None = None
        self._started = False
        self._ids = itertools.count(1)
        self._futures: dict[int, asyncio.Future] = {}
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()

    def start(self) -> None:
        """Spawn the process (not fork: the worker has threads) and its pipe threads; from the event loop."""
        if self._started:
            return
        self._started = True
        self._loop = asyncio.get_running_loop()
        ctx = multiprocessing.get_context("spawn")
        work_there, self._work = ctx.Pipe(duplex=False)
        self._ask, ask_there = ctx.Pipe(duplex=True)
        self._bulk, bulk_there = ctx.Pipe(duplex=False)
        self.process = ctx.Process(target=serve, args=(work_there, ask_there, bulk_there, self.config),
                                   name=f"wharf-learner-{self.index}", daemon=True)
        # Until the child leaves the worker's process group (`_die_with_parent`), a signal sent to the group must not
        # kill it: it inherits this thread's mask. The worker's own handlers run once the mask is restored.
        # multiprocessing's resource tracker unblocks these signals when it starts its own process: start it first.
        resource_tracker.ensure_running()
        masked = signal.pthread_sigmask(signal.SIG_BLOCK, _GROUP_SIGNALS)
        try:
            self.process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, masked)
        for end in (work_there, ask_there, bulk_there):
            end.close()
        threading.Thread(target=self._send_loop, name=f"wharf-learner-{self.index}-send", daemon=True).start()
        threading.Thread(target=self._read_bulk, name=f"wharf-learner-{self.index}-bulk", daemon=True).start()
        self._loop.add_reader(self._ask.fileno(), self._read_answers)

    def check(self) -> None:
        """Raise if the learner is gone: what it was sent is lost, and the worker must restart from checkpoints."""
        if self.error is not None:
            raise LearnerDied(f"learner {self.index} failed") from self.error

    def send(self, kind: str, *args: Any) -> None:
        """Queue work (in order, after everything sent before)."""
        self.check()
        self._outbox.put((kind, *args))

    def work(self, kind: str, *args: Any) -> asyncio.Future:
        """Queue work that replies; the future has the reply."""
        req, fut = self._request()
        self.send(kind, req, *args)
        return fut

    async def ask(self, kind: str, *args: Any) -> Any:
        """A request answered between steps of work (it does not wait for the work queued before it)."""
        self.check()
        req, fut = self._request()
        self._ask.send((kind, req, *args))
        return await fut

    def stop(self) -> None:
        if self._started:
            self._outbox.put(None)

    def _request(self) -> tuple[int, asyncio.Future]:
        req = next(self._ids)
        fut = self._futures[req] = asyncio.get_running_loop().create_future()
        return req, fut

    def _send_loop(self) -> None:
        try:
            _send_all(self._outbox, self._work)
        except OSError as exc:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._died, exc)

    def _read_bulk(self) -> None:
        try:
            while True:
                req, payload = self._bulk.recv()
                self._loop.call_soon_threadsafe(self._resolve, req, payload)
        except (EOFError, OSError) as exc:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the worker is exiting anyway
                self._loop.call_soon_threadsafe(self._died, exc)

    def _read_answers(self) -> None:
        """On the event loop, when the `ask` pipe has data: answers are small and written whole."""
        try:
            while self._ask.poll():
                self._resolve(*self._ask.recv())
        except (EOFError, OSError) as exc:
            self._loop.remove_reader(self._ask.fileno())
            self._died(exc)

    def _resolve(self, req: int, payload: Any) -> None:
        if req == _FATAL:
            self._died(LearnerDied(f"learner {self.index} raised:\n{payload}"))
            return
        fut = self._futures.pop(req, None)
        if fut is not None and not fut.done():
            fut.set_result(payload)

    def _died(self, exc: BaseException) -> None:
        if self.error is not None:
            return
        self.error = exc
        log.critical("recommender learner %d is gone (%s); the worker stops and restarts from its checkpoints",
                     self.index, exc)
        for fut in self._futures.values():
            if not fut.done():
                fut.set_exception(LearnerDied(f"learner {self.index} is gone"))
        self._futures.clear()
        self.on_death(exc)


class Learners:
    """The worker's learner processes; partition p's shard is in learner p mod n."""

    def __init__(self, n: int, config: RecommenderConfig, on_death: Callable[[BaseException], None]) -> None:
        """`on_death` is called (on the event loop) when a learner dies or raises: the worker must stop."""
        self.all = [Learner(i, config, on_death) for i in range(n)]

    def of(self, partition: int) -> Learner:
        learner = self.all[partition % len(self.all)]
        learner.start()
        return learner

    def check(self) -> None:
        for learner in self.all:
            learner.check()

    def by_learner(self, partitions: Any) -> dict[Learner, list[int]]:
        out: dict[Learner, list[int]] = {}
        for p in sorted(partitions):
            out.setdefault(self.of(p), []).append(p)
        return out
