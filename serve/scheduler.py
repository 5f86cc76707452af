"""Cross-request batching for the embedded server.

Requests' pairs wait in one queue per group of score-changing options (max_length, cutoff layer). A group is sent to
the runtime when its tokens reach the budget (--max-batch-tokens) or its oldest request has waited --max-batch-wait-ms,
and a worker is free: the runtime call runs on a worker thread (as many in flight as the backend's concurrency, e.g.
one per device), so the event loop never blocks. While every worker is busy, requests keep arriving and the next batch
is as full as the queue allows. The runtime then sorts the merged pairs by length and cuts them into token-budget
batches itself, and each request gets its own slice of scores back, in its own order.

A request whose client goes away is cancelled: its pairs are dropped if they have not started. close() sends whatever
is pending at once and waits for the running calls (the SIGTERM drain).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .metrics import Metrics
from .model import GroupKey, Job, Model
from .schemas import RankRequest, ServeError
from .settings import ServeSettings

log = logging.getLogger("rerank_serve")


@dataclass(eq=False)
class _Entry:
    job: Job
    future: asyncio.Future[np.ndarray]
    started: bool = False


class Scheduler:
    """score(job) -> raw float64 scores of job.pairs. Create and use it inside one running event loop."""

    def __init__(self, model: Model, max_batch_tokens: int, max_wait_ms: float, max_queue: int,
                 metrics: Metrics, merge: bool = True) -> None:
        self.model = model
        self.merge = merge
        self.budget = max_batch_tokens
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.metrics = metrics
        self.width = model.concurrency
        self.pool = ThreadPoolExecutor(self.width, thread_name_prefix="rerank-serve")
        self.groups: dict[GroupKey, deque[_Entry]] = {}
        self.group_tokens: dict[GroupKey, int] = {}
        self.pending_pairs = 0
        self.slots = asyncio.Semaphore(self.width)
        self.wake = asyncio.Event()
        self.closing = False
        self.running: set[asyncio.Task[None]] = set()
        self.broken: str | None = None
        self.task = asyncio.get_running_loop().create_task(self._dispatch())
        self.task.add_done_callback(self._dispatcher_done)

    async def score(self, job: Job) -> np.ndarray:
        if self.broken:
            raise ServeError(500, "backend", self.broken)
        if self.closing:
            raise ServeError(503, "unhealthy", "the server is shutting down; retry on another instance",
                             {"Retry-After": "1"})
        if self.pending_pairs + len(job.pairs) > self.max_queue:
            raise ServeError(429, "overloaded", f"the queue holds {self.pending_pairs} pairs; this request's "
                             f"{len(job.pairs)} would pass the limit of {self.max_queue} (--max-queue); retry later",
                             {"Retry-After": "1"})
        entry = _Entry(job, asyncio.get_running_loop().create_future())
        self.groups.setdefault(job.key, deque()).append(entry)
        self.group_tokens[job.key] = self.group_tokens.get(job.key, 0) + job.total_tokens
        self._count(len(job.pairs))
        self.wake.set()
        try:
            return await entry.future
        except asyncio.CancelledError:
            if not entry.started:  # the client left before its pairs ran: drop them
                self._remove(entry)
                self.metrics.pairs_dropped.inc(len(job.pairs))
            raise

    async def close(self) -> None:
        """Run everything pending now, then wait for the running calls."""
        self.closing = True
        self.wake.set()
        await self.task
        if self.running:
            await asyncio.gather(*self.running, return_exceptions=True)
        self.pool.shutdown(wait=True)

    # --- the dispatcher --------------------------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        while True:
            await self.slots.acquire()
            key = await self._ready_group()
            if key is None:
                self.slots.release()
                return
            batch = self._take(key)
            task = asyncio.get_running_loop().create_task(self._run(key, batch))
            self.running.add(task)
            task.add_done_callback(self.running.discard)

    async def _ready_group(self) -> GroupKey | None:
        """The group to send next: one at its token budget or past its wait (the oldest first); None once closed."""
        while True:
            if not self.groups:
                if self.closing:
                    return None
                self.wake.clear()
                await self.wake.wait()
                continue
            now = time.monotonic()
            heads = sorted(self.groups, key=lambda k: self.groups[k][0].job.enqueued)
            for key in heads:
                deadline = self.groups[key][0].job.enqueued + self.max_wait
                if self.closing or self.group_tokens[key] >= self.budget or now >= deadline:
                    return key
            deadline = min(self.groups[k][0].job.enqueued for k in heads) + self.max_wait
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), max(0.0, deadline - now))
            except asyncio.TimeoutError:
                pass

    def _take(self, key: GroupKey) -> list[_Entry]:
        """Whole requests from the head of the group while they fit the token budget (always at least one)."""
        queue, batch, tokens = self.groups[key], [], 0
        while queue and (not batch or (self.merge and tokens + queue[0].job.total_tokens <= self.budget)):
            entry = queue.popleft()
            entry.started = True
            tokens += entry.job.total_tokens
            batch.append(entry)
        self._forget(key, tokens, sum(len(e.job.pairs) for e in batch))
        return batch

    async def _run(self, key: GroupKey, batch: list[_Entry]) -> None:
        loop = asyncio.get_running_loop()
        pairs = [pair for entry in batch for pair in entry.job.pairs]
        now = time.monotonic()
        self.metrics.observe_batch(len(pairs), sum(e.job.total_tokens for e in batch),
                                   [now - e.job.enqueued for e in batch])
        try:
            scores = await loop.run_in_executor(self.pool, self.model.score, key, pairs)
        except Exception as exc:  # the whole call failed: every request in it gets the reason
            error = ServeError(500, "backend", f"scoring failed: {type(exc).__name__}: {exc}")
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(error)
        else:
            self.metrics.pairs_scored.inc(len(pairs))
            offset = 0
            for entry in batch:
                n = len(entry.job.pairs)
                if not entry.future.done():  # a client that left meanwhile gets nothing
                    entry.future.set_result(scores[offset : offset + n])
                offset += n
        finally:
            self.slots.release()

    # --- bookkeeping -----------------------------------------------------------------------------------------------

    def _dispatcher_done(self, task: asyncio.Task[None]) -> None:
        """A dispatcher that died of a bug fails every pending and later request loudly instead of hanging them."""
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        log.error("the batch dispatcher failed", exc_info=exc)
        self.broken = f"the batch scheduler failed ({type(exc).__name__}: {exc}); restart the server"
        for queue in self.groups.values():
            for entry in queue:
                if not entry.future.done():
                    entry.future.set_exception(ServeError(500, "backend", self.broken))

    def _remove(self, entry: _Entry) -> None:
        queue = self.groups.get(entry.job.key)
        if queue is not None and entry in queue:
            queue.remove(entry)
            self._forget(entry.job.key, entry.job.total_tokens, len(entry.job.pairs))
            self.wake.set()

    def _forget(self, key: GroupKey, tokens: int, pairs: int) -> None:
        self.group_tokens[key] -= tokens
        if not self.groups[key]:
            del self.groups[key], self.group_tokens[key]
        self._count(-pairs)

    def _count(self, delta: int) -> None:
        self.pending_pairs += delta
        self.metrics.queue_pairs.set(self.pending_pairs)


class LocalEngine:
    """The embedded server's Engine: the model in this process behind a Scheduler."""

    def __init__(self, model: Model, scheduler: Scheduler) -> None:
        self.model = model
        self.scheduler = scheduler
        self.info = model.info

    @classmethod
    async def start(cls, load: Callable[[], Model], settings: ServeSettings, metrics: Metrics) -> LocalEngine:
        """Load and warm up the model on a thread, then start the scheduler in this event loop."""
        model = await asyncio.to_thread(load)
        await asyncio.to_thread(model.warm_up)
        return cls(model, Scheduler(model, settings.max_batch_tokens, settings.max_batch_wait_ms, settings.max_queue,
                                    metrics, merge=settings.cross_request_batching))

    async def rank(self, request: RankRequest) -> tuple[np.ndarray, int]:
        job = await asyncio.to_thread(self.model.prepare, request)  # tokenises
        return await self.scheduler.score(job), job.total_tokens

    async def close(self) -> None:
        await self.scheduler.close()
