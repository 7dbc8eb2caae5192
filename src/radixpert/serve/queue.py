"""A bounded queue of generation jobs and the one worker thread that batches them.

    queue = BatchQueue(handler, max_waiting=64, max_rows=8, wait_s=0.005, timeout_s=60)
    queue.start()
    future = queue.submit(job)        # QueueFull at once when max_waiting jobs already wait
    result = await asyncio.wrap_future(future)

The worker takes the oldest job, then, for up to ``wait_s``, every waiting job with the same
``key`` (model and generation settings) until the batch holds ``max_rows`` rows, and hands the
batch to ``handler(jobs)`` — one ``generate`` call for requests of many clients. A job whose
key is None (a stream, a seeded sample) runs alone. A job that waited longer than
``timeout_s`` fails with ``QueueTimeout`` without running; a cancelled one is dropped. One
thread runs all models: on one device, concurrent ``generate`` calls would only contend.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """``max_waiting`` jobs are already waiting."""


class QueueTimeout(Exception):
    """A job waited longer than the queue's timeout."""


@dataclass
class Job:
    """One unit of work: ``payload`` for the handler, ``rows`` it adds to a batch."""

    key: Hashable | None
    payload: Any
    rows: int = 1
    future: Future = field(default_factory=Future)
    submitted: float = field(default_factory=time.monotonic)


class BatchQueue:
    """See the module docstring.

    Args:
        handler: Runs a batch of jobs of one key and sets each job's future (an exception it
            raises is set on the futures still pending).
        max_waiting: Jobs that may wait (the running batch not counted).
        max_rows: Most rows in one batch.
        wait_s: How long the worker waits for more jobs of the first one's key.
        timeout_s: Longest wait in the queue before a job fails with ``QueueTimeout``.
        on_depth: Called with the number of waiting jobs whenever it changes.
        on_batch: Called with the rows of each batch run.
    """

    def __init__(
        self,
        handler: Callable[[Sequence[Job]], None],
        *,
        max_waiting: int = 64,
        max_rows: int = 8,
        wait_s: float = 0.005,
        timeout_s: float = 60.0,
        on_depth: Callable[[int], None] | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_waiting < 1 or max_rows < 1:
            raise ValueError("max_waiting and max_rows must be at least 1")
        self.handler, self.max_waiting, self.max_rows = handler, max_waiting, max_rows
        self.wait_s, self.timeout_s = wait_s, timeout_s
        self._on_depth = on_depth or (lambda n: None)
        self._on_batch = on_batch or (lambda n: None)
        self._waiting: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False
        self.running = 0  # jobs in the batch being run

    @property
    def depth(self) -> int:
        return len(self._waiting)

    def start(self) -> None:
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._loop, name="radixpert-serve", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stops the worker after its current batch; waiting jobs fail with QueueTimeout."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._cond:
            while self._waiting:
                _fail(self._waiting.popleft(), QueueTimeout("the server is shutting down"))
            self._on_depth(0)

    def submit(self, job: Job) -> Future:
        """Queues ``job``; raises ``QueueFull`` at once if the queue is full."""
        if job.rows > self.max_rows:
            job.rows = self.max_rows  # a wide job runs alone, still one batch
        with self._cond:
            if len(self._waiting) >= self.max_waiting:
                raise QueueFull(f"{len(self._waiting)} requests are already waiting")
            self._waiting.append(job)
            self._on_depth(len(self._waiting))
            self._cond.notify_all()
        return job.future

    def _take(self) -> list[Job] | None:
        """The next batch (None when stopping)."""
        with self._cond:
            while not self._waiting and not self._stop:
                self._cond.wait()
            if self._stop:
                return None
            first = self._waiting.popleft()
            batch, rows = [first], first.rows
            if first.key is not None:
                deadline = time.monotonic() + self.wait_s
                while rows < self.max_rows:
                    match = next(
                        (
                            j
                            for j in self._waiting
                            if j.key == first.key and rows + j.rows <= self.max_rows
                        ),
                        None,
                    )
                    if match is not None:
                        self._waiting.remove(match)
                        batch.append(match)
                        rows += match.rows
                        continue
                    left = deadline - time.monotonic()
                    if left <= 0 or self._stop:
                        break
                    self._cond.wait(left)
            self._on_depth(len(self._waiting))
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            now = time.monotonic()
            live = []
            for job in batch:
                waited = now - job.submitted
                if waited > self.timeout_s:
                    limit = f"limit {self.timeout_s:g} s"
                    _fail(job, QueueTimeout(f"waited {waited:.1f} s in the queue ({limit})"))
                elif job.future.set_running_or_notify_cancel():
                    live.append(job)
            if not live:
                continue
            self.running = len(live)
            self._on_batch(sum(j.rows for j in live))
            try:
                self.handler(live)
            except Exception as e:  # the handler's failure is each job's, never the worker's
                logger.exception("batch of %d job(s) failed", len(live))
                for job in live:
                    _fail(job, e)
            finally:
                self.running = 0


def _fail(job: Job, error: BaseException) -> None:
    future = job.future
    if not future.done() and (future.running() or future.set_running_or_notify_cancel()):
        future.set_exception(error)
