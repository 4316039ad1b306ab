"""The online server's dynamic batcher: concurrent requests queue up and are answered together, off the event loop.

One inference thread takes everything queued (up to a question budget), waits (up to max_wait_ms after the
latest arrival) for the clients it answered last to come back with their next question, and answers it with
answer_checked: questions grouped by adapter, their windows bucketed by length as in serve-batch. While it runs,
new requests queue, so batches grow with the load. The queue is bounded (QueueFull -> 503); a request whose
caller gave up (timeout, disconnect) is dropped before its batch starts, and costs nothing more.
"""

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from toolkit.inference import Engine, Stopwatch
from toolkit.postprocess import Answer
from toolkit.serving.requests import MAX_CONTEXT_TOKENS, Query, answer_checked


class QueueFull(RuntimeError):
    """More questions are waiting than the server queues; the caller should retry later."""


@dataclass
class BatcherConfig:
    max_batch_questions: int = 32  # questions answered in one engine call
    max_wait_ms: float = 2.0  # how long a batch waits for the clients answered last, after the latest arrival
    max_queue: int = 256  # questions waiting; beyond it requests are refused (503)
    max_context_tokens: int = MAX_CONTEXT_TOKENS


@dataclass
class Pending:
    queries: list[Query]
    threshold: float | None
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


class Batcher:
    def __init__(self, engine: Engine, cfg: BatcherConfig, on_batch=lambda record: None):
        self.engine, self.cfg, self.on_batch = engine, cfg, on_batch
        self.queue: asyncio.Queue[Pending] = asyncio.Queue()
        self.waiting = 0  # questions queued, not yet taken into a batch
        self.running = False
        self.returning: set = set()  # clients answered in the last batch, not yet back with their next question
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qa-inference")
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Finish what is queued and running, then stop."""
        while self.waiting or self.running:
            await asyncio.sleep(0.01)
        if self.task is not None:
            self.task.cancel()
        self.executor.shutdown(wait=True)

    def submit(self, queries: list[Query], threshold: float | None = None, client=None) -> asyncio.Future:
        """A future of {line: Answer} for the queries that pass their checks (the others get their error set).
        client names a keep-alive connection that may send again once answered (None: it will not). Raises
        QueueFull at once when the queue is full; cancelling the future drops the request if its batch has not
        started."""
        if self.waiting + len(queries) > self.cfg.max_queue:
            raise QueueFull(f"{self.waiting} questions are waiting (at most {self.cfg.max_queue})")
        future = asyncio.get_running_loop().create_future()
        self.waiting += len(queries)
        self.returning.discard(client)
        self.queue.put_nowait(Pending(queries, threshold, future, client))
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
            self.running = True
            try:
                for threshold in dict.fromkeys(p.threshold for p in live):
                    group = [p for p in live if p.threshold == threshold]
                    try:
                        results = await loop.run_in_executor(self.executor, self._answer, group, threshold)
                    except Exception as e:  # noqa: BLE001 - handed to every caller of the batch
                        results = [e] * len(group)
                    self.returning |= {p.client for p in group if p.client is not None}
                    for pending, result in zip(group, results):
                        if pending.future.done():
                            continue
                        if isinstance(result, Exception):
                            pending.future.set_exception(result)
                        else:
                            pending.future.set_result(result)
            finally:
                self.running = False

    def _answer(self, group: list[Pending], threshold: float | None) -> list[dict[int, Answer]]:
        """In the inference thread: every query of the group in one call, renumbered so lines are unique."""
        numbered, owners = [], []
        for i, pending in enumerate(group):
            for q in pending.queries:
                numbered.append(replace(q, line=len(numbered)))
                owners.append((i, q))
        watch = Stopwatch()
        started = time.perf_counter()
        answers = answer_checked(self.engine, numbered, self.cfg.max_context_tokens, watch, threshold)
        self.on_batch(BatchRecord(questions=len(numbered), windows=watch.windows,
                                  seconds=time.perf_counter() - started,
                                  adapters=sorted({self.engine.resolve(q.adapter) for q in numbered if q.error is None})))
        out: list[dict[int, Answer]] = [{} for _ in group]
        for copy, (i, original) in zip(numbered, owners):
            original.error = copy.error
            if copy.line in answers:
                out[i][original.line] = answers[copy.line]
        return out
