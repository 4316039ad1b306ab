"""What every export shares: its error, the parity set, calibration windows, and building into a hidden directory."""

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from toolkit import data as data_mod
from toolkit.config import QAConfig
from toolkit.features import MODEL_INPUTS, build_features
from toolkit.inference.padding import pad_batch


class ExportError(RuntimeError):
    """An export that cannot be done or whose result does not answer like PyTorch."""


def parity_examples(spec: str | None, manifest: dict, samples: int | None, seed: int, cache_dir: str | None):
    """(spec, examples) of the parity set: spec, or the training run's eval set named in its manifest."""
    spec = spec or manifest.get("config", {}).get("eval_file")
    if not spec:
        raise ExportError("no parity set: pass --eval-file (the training manifest names none)")
    cache = Path(cache_dir) if cache_dir else data_mod.default_cache_dir()
    examples, _ = data_mod.load_examples([spec], cache_dir=cache, seed=seed, limit=samples, default_split="validation")
    return spec, examples


def calibration_windows(tokenizer, qa: QAConfig, spec: str, samples: int | None, seed: int) -> list[dict[str, np.ndarray]]:
    """Training windows (never the eval set), one per batch at its own length, for int8 calibration."""
    examples, _ = data_mod.load_examples([spec], cache_dir=data_mod.default_cache_dir(), seed=seed,
                                         limit=samples, default_split="train")
    features = build_features(tokenizer, [e.question for e in examples], [e.context for e in examples], qa.features())
    return [{k: v for k, v in pad_batch(features, [i], tokenizer.pad_token_id).items() if k in MODEL_INPUTS}
            for i in range(len(features))]


def size_bytes(path: Path) -> int:
    """The file's size; an OpenVINO IR's weights (.bin beside the .xml) included."""
    weights = path.with_suffix(".bin")
    return path.stat().st_size + (weights.stat().st_size if path.suffix == ".xml" and weights.exists() else 0)


def max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return float(max(np.abs(x - y).max() for x, y in zip(a, b)))


@contextmanager
def building(out: Path) -> Iterator[Path]:
    """A hidden directory beside out to build in: it replaces out when the block ends, and is removed if it
    raises, so out is never seen half-written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}-partial-", dir=out.parent))
    work.chmod(0o755)
    try:
        yield work
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    work.rename(out)
