"""The stand-in predictors and the server helpers the tests share: one place, so that no test file imports
another. A predictor here has the Predictor protocol's logits(batch) -> (start, end) and its labels."""

import socket
import threading
import time
from contextlib import contextmanager

import numpy as np


class Peak:
    """Best span: token `peak` in every window. It can be slow (delay seconds a batch), or fail after
    fail_after batches; batches lists the rows of each batch it ran."""
    provider, device = "test", "cpu"

    def __init__(self, peak: int, variant: str = "fake", delay: float = 0.0, fail_after: int | None = None):
        self.peak, self.variant, self.delay, self.fail_after, self.batches = peak, variant, delay, fail_after, []

    def logits(self, batch):
        if self.fail_after is not None and len(self.batches) >= self.fail_after:
            raise RuntimeError("secret internal detail")
        time.sleep(self.delay)
        self.batches.append(batch["input_ids"].shape[0])
        start = np.full(batch["input_ids"].shape, -5.0, np.float32)
        start[:, self.peak] = 5.0
        return start, start.copy()


class NullWins(Peak):
    """As Peak, but the null score (12) beats the span's (10): "no answer" at threshold 0."""

    def logits(self, batch):
        start, end = super().logits(batch)
        start[:, 0] = end[:, 0] = 6.0
        return start, end


class Spread(Peak):
    """Start logits peak at tokens 5 > 6 > 7 and end logits at 7 > 6 > 5: the best span is tokens 5-7."""

    def logits(self, batch):
        start = np.full(batch["input_ids"].shape, -5.0, np.float32)
        end = start.copy()
        start[:, 5:8] = [5.0, 4.0, 3.0]
        end[:, 5:8] = [3.0, 4.0, 5.0]
        return start, end


class TokenSpan:
    """Best span: from token position `first` to `last` of each window long enough to hold them."""
    provider, device, variant = "test", "cpu", "fake"

    def __init__(self, first: int, last: int):
        self.first, self.last = first, last

    def logits(self, batch):
        start = np.full(batch["input_ids"].shape, -5.0, np.float32)
        end = start.copy()
        if batch["input_ids"].shape[1] > self.last:
            start[:, self.first], end[:, self.last] = 5.0, 5.0
        return start, end


class AnswerFinder:
    """Logits that point at given token ids: tests windowing without training."""
    provider, variant = "test", "test"

    def __init__(self, start_id: int, end_id: int):
        self.start_id, self.end_id = start_id, end_id

    def logits(self, batch):
        ids = batch["input_ids"]
        start = np.where(ids == self.start_id, 10.0, 0.0)
        end = np.where(ids == self.end_id, 10.0, 0.0)
        start[:, 0] = end[:, 0] = 1.0
        return start.astype(np.float32), end.astype(np.float32)


class FailsAfter:
    """Wraps a predictor and raises on its n-th batch: a crash in the middle of a job."""

    def __init__(self, predictor, n):
        self.predictor, self.n, self.provider, self.variant = predictor, n, predictor.provider, predictor.variant

    def logits(self, batch):
        self.n -= 1
        if self.n < 0:
            raise RuntimeError("simulated crash")
        return self.predictor.logits(batch)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def uvicorn_thread(app):
    """The app served by uvicorn in a thread on a free port, for clients that need a real socket."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
