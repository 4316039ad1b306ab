"""OpenVINO on the CPU behind the Predictor protocol: the IR files `export` writes beside the ONNX ones, our
padded batches in, logits out. The same IR runs at fp32 or bf16 inference precision (OpenVINO's own choice on a
CPU with native bf16 is bf16); the variant (variants.VARIANTS) names the IR and the precision, so that a gated
variant always runs as it was gated."""

import threading
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from toolkit.inference.predictors import EngineError


def openvino_missing() -> str | None:
    """Why OpenVINO cannot run here (None when it can)."""
    try:
        import openvino  # noqa: F401
    except ImportError as e:
        return f"OpenVINO is not installed: pip install 'qa-toolkit[cpu]' ({e})"
    return None


class OpenVinoPredictor:
    """An OpenVINO CPU model (an ov.Model or an IR/ONNX path) at one inference precision ("f32" or "bf16").

    A lone batch runs in latency mode (one stream over all its threads, one infer request used by one thread at a
    time). Several batches at once (logits_each) run on one stream per thread, a batch per stream: the windows of
    a few questions fall into several small length buckets, and small batches side by side on one core each
    measured 10-20 % faster than one after another on all cores; a batch over 1.25 streams' share of the tokens
    is cut across the streams (balanced). Both compiled models give the same logits bit for bit (tested), so
    which one answers a batch never changes an answer."""

    def __init__(self, model, threads: int, variant: str, precision: str = "f32"):
        missing = openvino_missing()
        if missing:
            raise EngineError(missing)
        import openvino as ov

        if isinstance(model, (str, Path)) and not Path(model).exists():
            raise EngineError(f"OpenVINO model not found: {model} (export it with `qa-toolkit export`)")
        core = ov.Core()
        source = core.read_model(str(model)) if isinstance(model, (str, Path)) else model
        config = {"INFERENCE_NUM_THREADS": str(threads), "INFERENCE_PRECISION_HINT": precision}
        self.compiled = core.compile_model(source, "CPU", {**config, "PERFORMANCE_HINT": "LATENCY"})
        self.request = self.compiled.create_infer_request()
        self.names = [i.get_any_name() for i in self.compiled.inputs]
        self.lock = threading.Lock()  # one caller at a time: the requests (and the queue's callback) are shared
        self.side_by_side = None  # several batches at once: one stream (and infer request) per thread
        if threads > 1:
            parallel = core.compile_model(source, "CPU", {**config, "NUM_STREAMS": str(threads)})
            self.side_by_side = ov.AsyncInferQueue(parallel, threads)
        self.provider, self.variant, self.device, self.precision = "OpenVINO-CPU", variant, "cpu", precision

    def logits(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        with self.lock:
            self.request.infer({k: batch[k] for k in self.names})
            return copied(self.request)

    def logits_each(self, batches: Iterable[dict[str, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(start, end) logits of each batch, in order: several batches side by side on the streams, a batch over
        1.25 streams' share of the tokens cut across them (balanced)."""
        batches = list(batches)
        if self.side_by_side is None or len(batches) < 2:
            return [self.logits(b) for b in batches]
        pieces = balanced(batches, len(self.side_by_side))
        results: list = [None] * len(pieces)
        # the largest first: the streams then finish close together instead of one idling through the last one
        largest_first = sorted(range(len(pieces)), key=lambda i: -pieces[i][1]["input_ids"].size)
        with self.lock:
            self.side_by_side.set_callback(lambda request, i: results.__setitem__(i, copied(request)))
            for i in largest_first:
                self.side_by_side.start_async({k: pieces[i][1][k] for k in self.names}, i)
            self.side_by_side.wait_all()
        parts: list[list] = [[] for _ in batches]
        for (owner, _), result in zip(pieces, results):
            parts[owner].append(result)
        return [mine[0] if len(mine) == 1 else tuple(np.concatenate(side) for side in zip(*mine)) for mine in parts]


def balanced(batches: list[dict[str, np.ndarray]], streams: int) -> list[tuple[int, dict[str, np.ndarray]]]:
    """(batch index, rows) pieces for the streams, in batch and row order: a batch holding over 1.25 streams'
    share of the padded tokens is cut into consecutive runs of rows (at most one per stream), so that one stream
    does not work through it alone while the others idle. Measured on the 2-core EPYC, two batches side by side:
    14 + 2 windows 1.4-1.5x faster cut, 10 + 1 1.6x, 12 + 4 1.1x; but two equal batches of 8 windows at 160 and
    176 tokens, the second just over the bare share, 0.92x: hence the margin. A window's logits do not depend on
    how many rows share its batch (tested)."""
    total = sum(b["input_ids"].size for b in batches)
    pieces = []
    for index, batch in enumerate(batches):
        rows, size = batch["input_ids"].shape[0], batch["input_ids"].size
        parts = min(rows, -(-size * streams // total)) if 4 * size * streams > 5 * total else 1
        bounds = [rows * p // parts for p in range(parts + 1)]
        pieces += [(index, {k: v[a:b] for k, v in batch.items()}) for a, b in zip(bounds, bounds[1:])]
    return pieces


def copied(request) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) logits of an infer request's last run, copied: the request reuses its arrays."""
    return tuple(np.array(request.get_tensor(name).data, np.float32) for name in ("start_logits", "end_logits"))
