"""The Hugging Face Trainer as training uses it: evaluation in feature order and in fp32, the eval set and how
its logits are scored, the table printed as training goes, and the precision chosen for this machine."""

import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import SequentialSampler
from transformers import Trainer, TrainerCallback, TrainingArguments

from toolkit import data as data_mod
from toolkit.calibration import Calibration, Uncalibrated
from toolkit.config import TrainConfig
from toolkit.features import build_features, question_lengths
from toolkit.postprocess import Decoding, answer_all
from toolkit.runtime import native_bf16
from toolkit.scoring import position_metrics, squad_scores
from toolkit.training.distill import TARGET_KEYS, DistillSettings, distill_loss
from toolkit.training.reports import print_row, table_row


class TrainError(ValueError):
    """A training run that cannot start or go on; the message says why."""


class QATrainer(Trainer):
    """Trainer whose evaluation reads the eval set in the order it is given, in fp32.

    transformers 4.57 hands the eval set a LengthGroupedSampler too when group_by_length is on, which
    returns logits in a shuffled order; EvalSet gives its windows already sorted by length instead.
    With ``distill`` settings, training batches that carry a teacher's target logits are trained on the gold
    labels and the teacher's distributions together (toolkit.training.distill).
    """

    def __init__(self, *args, distill: DistillSettings | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.distill = distill

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.distill is None or TARGET_KEYS[0] not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        teacher_start, teacher_end = (inputs.pop(key) for key in TARGET_KEYS)
        outputs = model(**inputs)
        loss = distill_loss(outputs, teacher_start, teacher_end, self.distill)
        return (loss, outputs) if return_outputs else loss

    def _get_eval_sampler(self, eval_dataset):
        return SequentialSampler(eval_dataset)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluate in fp32, the precision export and serving run in, even when training runs under bf16
        autocast: the eval table and the tuned no-answer threshold must describe the served model. Two
        layers apply autocast: the Trainer's own context (use_cpu_amp) and accelerate's wrapper, an
        instance attribute over the model class's forward; both are lifted for this step."""
        inner = getattr(model, "module", model)  # under DDP, accelerate wrapped the inner model's forward
        wrapped = inner.__dict__.pop("forward", None)
        amp, self.use_cpu_amp = self.use_cpu_amp, False
        try:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        finally:
            self.use_cpu_amp = amp
            if wrapped is not None:
                inner.forward = wrapped

    def _load_optimizer_and_scheduler(self, checkpoint):
        """On --resume of a multi-process CPU run, transformers 4.57 maps the optimizer state onto
        args.device, 'cpu:N', which torch.load cannot restore to; it belongs on the CPU anyway."""
        if checkpoint is None or self.args.world_size == 1 or self.args.device.type != "cpu":
            return super()._load_optimizer_and_scheduler(checkpoint)
        from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME

        path = Path(checkpoint)
        self.optimizer.load_state_dict(torch.load(path / OPTIMIZER_NAME, map_location="cpu", weights_only=True))
        self.lr_scheduler.load_state_dict(torch.load(path / SCHEDULER_NAME, weights_only=True))


def first_answer(example) -> tuple[int, str] | None:
    return None if example.is_impossible else (example.answer_starts[0], example.answer_texts[0])


def drop_long_questions(examples, tokenizer, limit: int):
    lengths = question_lengths(tokenizer, [e.question for e in examples])
    kept = [e for e, n in zip(examples, lengths) if n <= limit]
    return kept, len(examples) - len(kept)


class EvalSet:
    """The eval examples, their windows with labels and offsets, and how to score logits on them.

    The Trainer sees the windows sorted by length (little padding, sequential order); ``logits``
    maps its predictions back to feature order before anything is scored.
    """

    def __init__(self, examples, tokenizer, cfg: TrainConfig):
        self.examples = examples
        self.features = build_features(tokenizer, [e.question for e in examples], [e.context for e in examples],
                                       cfg.features(), answers=[first_answer(e) for e in examples])
        self.references = data_mod.references(examples)
        self.cfg = cfg
        lengths = [len(ids) for ids in self.features.inputs["input_ids"]]
        self.order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        self.last_logits: tuple[np.ndarray, np.ndarray] | None = None  # of the latest compute_metrics

    def compute_metrics(self, prediction) -> dict:
        """Trainer's compute_metrics: scores at threshold 0, and keeps the logits for the final evaluation."""
        self.last_logits = self.logits(prediction.predictions)
        return self.score(*self.last_logits)

    def rows(self) -> list[dict]:
        """The windows in the order the Trainer evaluates them (by length)."""
        rows = self.features.rows()
        return [rows[i] for i in self.order]

    def logits(self, predictions) -> tuple[np.ndarray, np.ndarray]:
        """The Trainer's (start, end) predictions, rows in self.order, back in feature order."""
        start, end = predictions
        if len(start) != len(self.order):
            raise TrainError(f"eval returned {len(start)} rows for {len(self.order)} windows")
        inverse = np.empty(len(self.order), dtype=np.int64)
        inverse[self.order] = np.arange(len(self.order))
        return start[inverse], end[inverse]

    def answers(self, start_logits: np.ndarray, end_logits: np.ndarray, threshold: float,
                calibration: Calibration | None = None):
        """Answers as the served model gives them (words aligned), with this threshold and calibration."""
        decoding = Decoding(n_best=self.cfg.n_best, max_answer_length=self.cfg.max_answer_length,
                            null_threshold=threshold, calibration=calibration or Uncalibrated())
        return answer_all([e.context for e in self.examples], self.features.example_index, self.features.offsets,
                          start_logits, end_logits, decoding, self.features.words)

    def score(self, start_logits: np.ndarray, end_logits: np.ndarray, threshold: float = 0.0) -> dict:
        return self.score_answers(self.answers(start_logits, end_logits, threshold), start_logits, end_logits)

    def score_answers(self, answers, start_logits: np.ndarray, end_logits: np.ndarray) -> dict:
        scores = squad_scores({e.id: a.text for e, a in zip(self.examples, answers)}, self.references)
        labels = np.array(self.features.start_positions), np.array(self.features.end_positions)
        return {**position_metrics(start_logits, end_logits, *labels), **scores}

    def has_unanswerable(self) -> bool:
        return any(e.is_impossible for e in self.examples)


class TableCallback(TrainerCallback):
    """Prints the evaluation table as training goes, and times the optimiser steps alone."""

    def __init__(self):
        self.printed = 0
        self.step_seconds = 0.0
        self.steps = 0
        self._t = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.step_seconds += time.perf_counter() - self._t
        self.steps += 1

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not state.is_world_process_zero:
            return
        print_row(table_row(state.log_history, state.global_step, metrics), header=not self.printed)
        self.printed += 1


class CadenceCallback(TrainerCallback):
    """A resumed run evaluates, logs and saves every --eval-steps as given now: transformers 4.57 would keep
    the checkpoint's cadence."""

    def on_train_begin(self, args, state, control, **kwargs):
        state.compute_steps(args, state.max_steps)


def precision(cfg: TrainConfig) -> str:
    """'fp16' (CUDA), 'bf16' (autocast) or 'fp32' for this run on this machine."""
    if cfg.bf16 not in ("auto", "on", "off"):
        raise TrainError(f"bf16 must be auto, on or off, not '{cfg.bf16}'")
    cuda = torch.cuda.is_available()
    if cfg.bf16 == "on":
        if cuda and not torch.cuda.is_bf16_supported():
            raise TrainError("--bf16 on: this GPU has no bf16 support; use --bf16 off (fp16 on CUDA)")
        return "bf16"
    if cuda:
        return "fp16" if cfg.fp16 else "fp32"
    return "bf16" if cfg.bf16 == "auto" and native_bf16() else "fp32"


def training_arguments(cfg: TrainConfig, checkpoints: Path) -> TrainingArguments:
    mixed = precision(cfg)
    return TrainingArguments(
        output_dir=str(checkpoints), seed=cfg.seed, learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.eval_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps, warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay,
        fp16=mixed == "fp16", bf16=mixed == "bf16", eval_strategy="steps", eval_steps=cfg.eval_steps,
        logging_strategy="steps", logging_steps=cfg.eval_steps, save_strategy="steps", save_steps=cfg.eval_steps,
        save_total_limit=cfg.save_total_limit, label_names=["start_positions", "end_positions"],
        remove_unused_columns=False, group_by_length=cfg.group_by_length, report_to=[],
        dataloader_num_workers=0, use_cpu=not torch.cuda.is_available())
