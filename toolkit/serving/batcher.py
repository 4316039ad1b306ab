"""The online server's dynamic batcher: concurrent requests queue up and are answered together, off the event loop.

One inference thread takes everything queued (up to a question budget), waits (up to max_wait_ms after the
latest arrival) for the clients it answered last to come back with their next question, and answers it with
answer_checked: questions grouped by adapter, their windows bucketed by length as in serve-batch. While it runs,
new requests queue, so batches grow with the load. Admission is by expected wait: the engine's measured
seconds per question times the questions ahead; a request that could not be answered within HEADROOM of its
deadline is refused at once (Overloaded -> 503 with Retry-After), so the ones accepted finish in time. The queue is also
bounded in questions (Overloaded). A request whose caller gave up (timeout, disconnect) is dropped before its
batch starts, and costs nothing more. The loop is watched: if it dies, waiting requests fail at once
(Unavailable), `alive` turns false (the server's /ready says 503) and on_death is called.
"""

import asyncio
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from toolkit.inference import Engine, Stopwatch
from toolkit.postprocess import Answer
from toolkit.serving.requests import MAX_CONTEXT_TOKENS, Query, answer_checked


class Overloaded(RuntimeError):
    """The request could not be answered in time (or the queue is full); retry after retry_after seconds."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(RuntimeError):
    """The batcher's loop has stopped: nothing will be answered."""


RATE_WEIGHT = 0.3  # weight of the latest engine call in the running mean of seconds per question
HEADROOM = 0.7  # the share of a deadline the expected wait may fill: the rest is for the batch's later arrivals, HTTP, variance


@dataclass
class BatcherConfig:
    max_batch_questions: int = 32  # questions answered in one engine call
    max_wait_ms: float = 2.0  # how long a batch waits for the clients answered last, after the latest arrival
    max_queue: int = 256  # questions waiting; beyond it requests are refused (503), whatever their deadline
    max_context_tokens: int = MAX_CONTEXT_TOKENS


@dataclass
class Pending:
    queries: list[Query]
    future: asyncio.Future
    client: object = None  # its connection, when it may send again
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchRecord:
    """What one engine call did, for metrics."""
    questions: int
    windows: int
    seconds: float
    adapters: list[str]
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage of the call (checks, tokenise, infer, ...)


class Batcher:
    def __init__(self, engine: Engine, cfg: BatcherConfig, on_batch=lambda record: None, on_death=lambda error: None,
                 log: logging.Logger | None = None):
        self.engine, self.cfg, self.on_batch, self.on_death = engine, cfg, on_batch, on_death
        self.log = log or logging.getLogger("qa-toolkit.serve")
        self.queue: asyncio.Queue[Pending] = asyncio.Queue()
        self.waiting = 0  # questions queued, not yet taken into a batch
        self.in_flight = 0  # questions of the engine call running now
        self.seconds_per_question: float | None = None  # measured over the latest engine calls
        self.running = False
        self.current: list[Pending] = []  # the batch being answered
        self.returning: set = set()  # clients answered in the last batch, not yet back with their next question
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qa-inference")
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())
        self.task.add_done_callback(self._died)

    @property
    def alive(self) -> bool:
        return self.task is not None and not self.task.done()

    def _died(self, task: asyncio.Task) -> None:
        """The loop ended: by stop() (cancelled), or by an error outside the engine call, which is logged;
        every waiting request then fails at once instead of waiting for its timeout."""
        if task.cancelled():
            return
        error = task.exception()
        self.log.error("the batcher's loop died: %r; waiting requests fail with 503", error)
        stranded = list(self.current)  # the batch it was answering, if any, and everything queued
        while not self.queue.empty():
            stranded.append(self.queue.get_nowait())
        for pending in stranded:
            if pending is not None and not pending.future.done():
                pending.future.set_exception(Unavailable("the server's batcher stopped; retry on another replica"))
        self.waiting = 0
        self.on_death(error)

    async def stop(self) -> None:
        """Finish what is queued and running, then stop."""
        while self.alive and (self.waiting or self.running):
            await asyncio.sleep(0.01)
        if self.task is not None:
            self.task.cancel()
        self.executor.shutdown(wait=True)

    def expected_wait(self, questions: int) -> float:
        """Seconds until a request of this many questions would be answered, at the measured rate (0 before
        the first engine call is measured): the questions of the engine call running now, those queued ahead
        and its own. Its own batch may also take up to max_batch_questions of those who queue after it: HEADROOM
        keeps room for that."""
        return (self.waiting + self.in_flight + questions) * (self.seconds_per_question or 0.0)

    def submit(self, queries: list[Query], client=None, deadline_s: float = math.inf) -> asyncio.Future:
        """A future of {line: Answer} for the queries that pass their checks (the others get their error set).
        client names a keep-alive connection that may send again once answered (None: it will not). Raises
        Overloaded at once when the request could not be answered within deadline_s at the measured rate, or
        the queue is full; Unavailable when the loop has stopped. Cancelling the future drops the request if
        its batch has not started."""
        if not self.alive:
            raise Unavailable("the server's batcher is not running")
        drain = max(1.0, math.ceil((self.waiting + self.in_flight) * (self.seconds_per_question or 0.0)))
        if self.waiting + len(queries) > self.cfg.max_queue:
            raise Overloaded(f"{self.waiting} questions are waiting (at most {self.cfg.max_queue})", drain)
        expected = self.expected_wait(len(queries))
        # Nothing ahead: admitted whatever the estimate, which is how a high one (a slow warm-up) comes down.
        if expected > HEADROOM * deadline_s and self.waiting + self.in_flight > 0:
            raise Overloaded(f"expected wait {expected:.2f} s is over {HEADROOM:.0%} of the deadline of {deadline_s:g} s "
                             f"({self.waiting + self.in_flight} questions ahead at "
                             f"{1 / self.seconds_per_question:.0f} questions/s)", drain)
        future = asyncio.get_running_loop().create_future()
        self.waiting += len(queries)
        self.returning.discard(client)
        self.queue.put_nowait(Pending(queries, future, client))
        return future

    async def _gather(self) -> list[Pending]:
        """The next batch: everything queued, up to the budget; then, while it is not full, it waits for the
        clients answered in the last batch (on keep-alive connections) to send their next question, up to
        max_wait_ms after the latest arrival, and for no one else. A lone client goes at once; at concurrency 16
        the 16 clients are answered together and come back together. (A fixed max_wait_ms from the first arrival
        split them into two alternating batches of 8, slower than one of 16.)"""
        batch = [await self.queue.get()]
        size, started = len(batch[0].queries), time.perf_counter()
        while size < self.cfg.max_batch_questions:
            if self.queue.empty():
                left = max(started, batch[-1].enqueued) + self.cfg.max_wait_ms / 1000 - time.perf_counter()
                if not self.returning or left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
            else:
                batch.append(self.queue.get_nowait())
            size += len(batch[-1].queries)
        self.waiting -= size
        self.returning = set()
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            live = [p for p in batch if not p.future.done()]  # a caller that gave up is not answered
            self.current = live
            if not live:
                continue
            self.running = True
            self.in_flight = sum(len(p.queries) for p in live)
            try:
                try:
                    results = await loop.run_in_executor(self.executor, self._answer, live)
                except asyncio.CancelledError:
                    raise
                except BaseException as e:  # noqa: BLE001 - handed to every caller of the batch; a tokenizer's
                    results = [e] * len(live)  # Rust panic is a BaseException, and must not end the loop
                self.returning |= {p.client for p in live if p.client is not None}
                for pending, result in zip(live, results):
                    if pending.future.done():
                        continue
                    if isinstance(result, BaseException):
                        pending.future.set_exception(result if isinstance(result, Exception)
                                                     else RuntimeError(f"the engine failed: {result!r}"))
                    else:
                        pending.future.set_result(result)
            finally:
                self.running = False
                self.in_flight = 0
                self.current = []

    def _answer(self, group: list[Pending]) -> list[dict[int, Answer]]:
        """In the inference thread: every query of the group in one call, renumbered so lines are unique (the
        call answers each adapter's and each set of options' queries apart)."""
        numbered, owners = [], []
        for i, pending in enumerate(group):
            for q in pending.queries:
                numbered.append(replace(q, line=len(numbered)))
                owners.append((i, q))
        watch = Stopwatch()
        started = time.perf_counter()
        answers = answer_checked(self.engine, numbered, max_context_tokens=self.cfg.max_context_tokens, watch=watch)
        record = BatchRecord(questions=len(numbered), windows=watch.windows, seconds=time.perf_counter() - started,
                             adapters=sorted({self.engine.resolve(q.adapter) for q in numbered if q.error is None}),
                             stages=dict(watch.seconds))
        latest = record.seconds / max(record.questions, 1)
        self.seconds_per_question = latest if self.seconds_per_question is None else (
            RATE_WEIGHT * latest + (1 - RATE_WEIGHT) * self.seconds_per_question)
        self.on_batch(record)
        out: list[dict[int, Answer]] = [{} for _ in group]
        for copy, (i, original) in zip(numbered, owners):
            original.error = copy.error
            if copy.line in answers:
                out[i][original.line] = answers[copy.line]
        return out
