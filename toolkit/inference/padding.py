"""Windows -> padded batches bucketed by length, within a row and token budget; stage timing."""

import time
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from toolkit.features import Features
from toolkit.inference.predictors import Predictor, SideBySide


@dataclass
class Stopwatch:
    """Seconds spent per named stage, summed over calls: ``with watch("infer"): ...``; and the windows inferred."""
    seconds: dict[str, float] = field(default_factory=dict)
    windows: int = 0

    @contextmanager
    def __call__(self, stage: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - started

    def add(self, other: dict[str, float]) -> None:
        for stage, seconds in other.items():
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds


@dataclass
class BatchSettings:
    batch_size: int = 8
    max_batch_tokens: int = 4096
    pad_to: int | None = None  # pad every batch to this length (benchmarks); None = per batch
    bucket: int | None = None  # pad each window to a multiple of this many tokens and batch equal lengths only

    @classmethod
    def for_device(cls, device: str, batch_size: int | None = None, max_batch_tokens: int | None = None):
        """Defaults that measured best: small batches on CPU (attention memory traffic), large on CUDA."""
        default = cls(64, 32768) if device == "cuda" else cls(8, 4096)
        return cls(batch_size or default.batch_size, max_batch_tokens or default.max_batch_tokens)

    @classmethod
    def for_openvino(cls, batch_size: int | None = None, max_batch_tokens: int | None = None):
        """OpenVINO on the CPU: batches of up to 32 windows within 4,096 tokens measured 2-14 % faster than 8 for
        its bf16 and int8 variants (bench/results/cpu-tuning-epyc-bf16); ONNX Runtime keeps 8. Windows are padded
        to a multiple of 16 tokens: with a window's padded length its own, its logits are bit for bit the same
        whatever it is batched with (bf16 and static int8 otherwise move by up to 0.3 with the batch's padding),
        and OpenVINO prepares kernels for fewer shapes (a first pass over 2,420 questions 10-29 % faster)."""
        return cls(batch_size or 32, max_batch_tokens or 4096, bucket=16)


def bucketed(length: int, bucket: int | None) -> int:
    """The length a window is padded to: the next multiple of bucket (None: its own length)."""
    return -(-length // bucket) * bucket if bucket else length


def batches(lengths: list[int], batch_size: int, max_batch_tokens: int, bucket: int | None = None) -> list[list[int]]:
    """Indices grouped by similar length: at most batch_size rows and max_batch_tokens padded tokens. With a
    bucket, each batch holds windows of one padded length only, so a window's padded shape is its own."""
    lengths = [bucketed(n, bucket) for n in lengths]
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    out, current = [], []
    for i in order:
        longest = max(lengths[i], max((lengths[j] for j in current), default=0))
        if current and (len(current) + 1 > batch_size or longest * (len(current) + 1) > max_batch_tokens
                        or bucket and lengths[i] != lengths[current[0]]):
            out.append(current)
            current = []
        current.append(i)
    if current:
        out.append(current)
    return out


def pad_batch(features: Features, rows: list[int], pad_id: int, pad_to: int | None = None) -> dict[str, np.ndarray]:
    width = pad_to or max(len(features.inputs["input_ids"][i]) for i in rows)
    out = {}
    for name, values in features.inputs.items():
        fill = pad_id if name == "input_ids" else 0
        array = np.full((len(rows), width), fill, dtype=np.int64)
        for r, i in enumerate(rows):
            array[r, :len(values[i])] = values[i]
        out[name] = array
    return out


def padded_batches(features: Features, pad_id: int, settings: BatchSettings):
    """(groups, padded): the feature indices of each batch and, lazily, each batch padded as the settings say
    (to pad_to, to its windows' length bucket, or to its longest window)."""
    lengths = [len(ids) for ids in features.inputs["input_ids"]]
    groups = batches(lengths, settings.batch_size, settings.max_batch_tokens, settings.bucket)
    widths = [settings.pad_to or (bucketed(lengths[rows[0]], settings.bucket) if settings.bucket else None)
              for rows in groups]
    return groups, (pad_batch(features, rows, pad_id, width) for rows, width in zip(groups, widths))


def batch_logits(predictor: Predictor, padded: Iterable[dict[str, np.ndarray]]) -> Iterable[tuple[np.ndarray, ...]]:
    """Each padded batch's (start, end) logits, in order; all at once where the predictor runs batches side by
    side (OpenVINO's streams)."""
    return predictor.logits_each(padded) if isinstance(predictor, SideBySide) else map(predictor.logits, padded)


def feature_logits(predictor: Predictor, features: Features, pad_id: int, settings: BatchSettings):
    """Start/end logits of every feature, each cut to its own length, in feature order."""
    groups, padded = padded_batches(features, pad_id, settings)
    start: list = [None] * len(features)
    end: list = [None] * len(features)
    for rows, (s, e) in zip(groups, batch_logits(predictor, padded)):
        for r, i in enumerate(rows):
            n = len(features.inputs["input_ids"][i])
            start[i], end[i] = s[r, :n], e[r, :n]
    return start, end
