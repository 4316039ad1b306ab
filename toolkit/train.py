"""LoRA (or full) fine-tuning with the Hugging Face Trainer, the evaluation table and the run's records."""

import csv
import dataclasses
import json
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import SequentialSampler
from tqdm.auto import tqdm
from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

from toolkit import data as data_mod
from toolkit import modeling
from toolkit.config import QAConfig, TrainConfig
from toolkit.features import build_features, check_config, question_lengths
from toolkit.metrics import best_null_threshold, position_metrics, squad_scores
from toolkit.postprocess import answer_all

TABLE_COLUMNS = ["step", "train_loss", "val_loss", "start_acc", "end_acc", "position_exact",
                 "exact", "f1", "HasAns_f1", "NoAns_f1"]
# Settings that may change between a run and its --resume; anything else must match.
RESUMABLE = {"epochs", "max_steps", "eval_steps", "save_total_limit"}


class TrainError(ValueError):
    """A training run that cannot start or go on; the message says why."""


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "accelerate", "datasets", "optimum", "optimum-onnx",
                 "onnxruntime", "onnxruntime-gpu", "numpy", "tokenizers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM: unlike ru_maxrss, not inherited across exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class QATrainer(Trainer):
    """Trainer whose evaluation reads the eval set in the order it is given.

    transformers 4.57 hands the eval set a LengthGroupedSampler too when group_by_length is on, which
    returns logits in a shuffled order; EvalSet gives its windows already sorted by length instead.
    """

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

    def answers(self, start_logits: np.ndarray, end_logits: np.ndarray, threshold: float):
        return answer_all([e.context for e in self.examples], self.features.example_index, self.features.offsets,
                          start_logits, end_logits, self.cfg.n_best, self.cfg.max_answer_length, threshold)

    def score(self, start_logits: np.ndarray, end_logits: np.ndarray, threshold: float = 0.0) -> dict:
        return self.score_answers(self.answers(start_logits, end_logits, threshold), start_logits, end_logits)

    def score_answers(self, answers, start_logits: np.ndarray, end_logits: np.ndarray) -> dict:
        scores = squad_scores({e.id: a.prediction for e, a in zip(self.examples, answers)}, self.references)
        labels = np.array(self.features.start_positions), np.array(self.features.end_positions)
        return {**position_metrics(start_logits, end_logits, *labels), **scores}

    def has_unanswerable(self) -> bool:
        return any(e.is_impossible for e in self.examples)


def first_answer(example) -> tuple[int, str] | None:
    return None if example.is_impossible else (example.answer_starts[0], example.answer_texts[0])


def drop_long_questions(examples, tokenizer, limit: int):
    lengths = question_lengths(tokenizer, [e.question for e in examples])
    kept = [e for e, n in zip(examples, lengths) if n <= limit]
    return kept, len(examples) - len(kept)


def table_row(log_history: list[dict], step: int, metrics: dict) -> dict:
    """One row of the evaluation table: the mean training loss of the logging interval ending at
    this step (none for an off-interval final row) and the eval metrics."""
    losses = [h["loss"] for h in log_history if "loss" in h and h.get("step") == step]
    row = {"step": step, "train_loss": losses[-1] if losses else float("nan"),
           "val_loss": metrics.get("eval_loss", float("nan"))}
    for col in TABLE_COLUMNS[3:]:
        row[col] = metrics.get(f"eval_{col}", float("nan"))
    return row


def table_rows(log_history: list[dict]) -> list[dict]:
    """Every evaluation of the run, from the Trainer's history (restored from checkpoints on --resume)."""
    return [table_row(log_history, h["step"], h) for h in log_history if "eval_loss" in h]


def print_row(row: dict, header: bool) -> None:
    if header:
        tqdm.write(" ".join(f"{c:>14}" for c in TABLE_COLUMNS))
    tqdm.write(" ".join(f"{row[c]:>14.4f}" if isinstance(row[c], float) else f"{row[c]:>14}" for c in TABLE_COLUMNS))


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
    native = {"avx512_bf16", "amx_bf16"} & modeling.cpu_flags()
    return "bf16" if cfg.bf16 == "auto" and native else "fp32"


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


def latest_checkpoint(directory: Path) -> Path:
    """The newest complete checkpoint: the Trainer writes trainer_state.json last, so a run killed while
    saving leaves a newer directory without it (or with it half-written), which is passed over."""
    complete = []
    for path in directory.glob("checkpoint-*"):
        try:
            step = int(path.name.split("-")[1])
            json.loads((path / "trainer_state.json").read_text())
        except (ValueError, OSError):
            continue
        complete.append((step, path))
    if not complete:
        raise TrainError(f"--resume: no complete checkpoint in {directory} yet")
    return max(complete)[1]


def check_resume(cfg: TrainConfig, out: Path, resume: bool) -> None:
    saved = out / "train_config.json"
    if resume:
        if not saved.exists():
            raise TrainError(f"--resume: {out} holds no earlier run (no train_config.json)")
        before = json.loads(saved.read_text())
        now = dataclasses.asdict(cfg)
        changed = sorted(k for k in now if k not in RESUMABLE and before.get(k) != now[k])
        if changed:
            raise TrainError(f"--resume: settings differ from the run in {out}: {changed}")
        latest_checkpoint(out / "checkpoints")
    elif out.exists() and any(out.iterdir()):
        raise TrainError(f"output dir {out} is not empty; pass --resume to continue that run "
                         "or choose another --output-dir")


def build_model(cfg: TrainConfig):
    """(model to train, record of the adapter it continues or None): the base with a new LoRA adapter, the
    base alone (full fine-tune), or the base with --init-adapter's adapter, trainable."""
    if cfg.init_adapter is None:
        model = modeling.load_base(cfg.model, cfg.seed)
        if cfg.full_finetune:
            return model, None
        return modeling.add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets), None
    if cfg.full_finetune:
        raise TrainError("--init-adapter continues a LoRA adapter; it cannot be combined with --full-finetune")
    adapter = Path(cfg.init_adapter)
    qa = QAConfig.load(adapter) if (adapter / "qa_config.json").exists() else None
    if qa is not None and qa.base_model != cfg.model:
        raise TrainError(f"--init-adapter {adapter} was trained on base '{qa.base_model}', not '{cfg.model}'; "
                         f"pass --model {qa.base_model}")
    model = modeling.load_trainable_adapter(modeling.load_base(cfg.model, cfg.seed, head_from_adapter=True), adapter)
    lora = model.peft_config["default"]
    manifest = adapter / "manifest.json"
    earlier = json.loads(manifest.read_text()) if manifest.exists() else {}
    return model, {"path": str(adapter.resolve()), "lora_r": lora.r, "lora_alpha": lora.lora_alpha,
                   "lora_targets": sorted(lora.target_modules),
                   "weights_sha256": data_mod.sha256_file(adapter / "adapter_model.safetensors"),
                   "trained_on": earlier.get("config", {}).get("train_files"),
                   "steps": earlier.get("timing", {}).get("global_step")}


def train(cfg: TrainConfig, resume: bool = False) -> dict | None:
    """Run one training job end to end; returns the manifest (also written to the output dir).

    Under a launcher (``torchrun --nproc_per_node N -m toolkit.cli train ...``) every process trains a
    shard of each global batch (DDP: gloo on CPU, NCCL on GPUs) and takes part in each evaluation; the
    first process alone writes the run directory, and the others return None."""
    started = time.time()
    out = Path(cfg.output_dir)
    args = training_arguments(cfg, out / "checkpoints")  # under a launcher: joins the process group
    check_resume(cfg, out, resume)
    if args.world_size > 1:
        torch.distributed.barrier()  # every process has checked the run directory before the first writes to it
    main_process = args.process_index == 0
    check_config(cfg.features())
    for spec in cfg.train_files:
        if data_mod.parse_spec(spec)[0] == "squad-v1.1-dev":
            raise TrainError("refusing to train on squad-v1.1-dev: its questions reappear in SQuAD 2.0 dev")
    tokenizer = modeling.load_tokenizer(cfg.model)
    cache = Path(cfg.cache_dir) if cfg.cache_dir else data_mod.default_cache_dir()
    train_examples, train_reports = data_mod.load_examples(cfg.train_files, cache, cfg.seed, cfg.train_samples, "train")
    eval_examples, eval_reports = data_mod.load_examples([cfg.eval_file], cache, cfg.seed, cfg.eval_samples, "validation")
    overlap = {e.id for e in train_examples} & {e.id for e in eval_examples}
    if overlap:
        raise TrainError(f"{len(overlap)} question(s) are in both the training and the eval data, "
                         f"e.g. {sorted(overlap)[:3]}")
    train_examples, long_train = drop_long_questions(train_examples, tokenizer, cfg.max_question_tokens)
    eval_examples, long_eval = drop_long_questions(eval_examples, tokenizer, cfg.max_question_tokens)
    train_features = build_features(tokenizer, [e.question for e in train_examples],
                                    [e.context for e in train_examples], cfg.features(),
                                    answers=[first_answer(e) for e in train_examples])
    evalset = EvalSet(eval_examples, tokenizer, cfg)
    print(f"train: {len(train_examples)} questions -> {len(train_features)} windows; "
          f"eval: {len(eval_examples)} questions -> {len(evalset.features)} windows", file=sys.stderr)

    model, init = build_model(cfg)
    params = modeling.count_parameters(model)
    print(params, file=sys.stderr)

    if main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    table = TableCallback()
    trainer = QATrainer(
        model=model, args=args,
        train_dataset=train_features.rows(), eval_dataset=evalset.rows(),
        data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8),
        compute_metrics=evalset.compute_metrics, callbacks=[table, CadenceCallback()])
    result = trainer.train(resume_from_checkpoint=str(latest_checkpoint(out / "checkpoints")) if resume else None)

    state = trainer.state
    rows = table_rows(state.log_history)
    if not rows or rows[-1]["step"] != state.global_step or evalset.last_logits is None:
        final = trainer.predict(evalset.rows(), metric_key_prefix="eval")  # the last weights, not yet evaluated here
        if not rows or rows[-1]["step"] != state.global_step:
            rows.append(table_row(state.log_history, state.global_step, final.metrics))
            if main_process:
                print_row(rows[-1], header=len(rows) == 1)
    if not main_process:
        return None
    start_logits, end_logits = evalset.last_logits
    threshold_note = "tuned on the eval set (max F1)"
    answers_0 = evalset.answers(start_logits, end_logits, 0.0)
    if evalset.has_unanswerable():
        best = best_null_threshold({e.id: a.text for e, a in zip(eval_examples, answers_0)},
                                   {e.id: a.null_score_diff for e, a in zip(eval_examples, answers_0)},
                                   evalset.references)
        threshold = best.threshold
    else:
        threshold, threshold_note = 0.0, "default 0.0: the eval set has no unanswerable question to tune on"
    predictions = evalset.answers(start_logits, end_logits, threshold)
    final_scores = evalset.score_answers(predictions, start_logits, end_logits)

    qa = QAConfig(base_model=cfg.model, model_type=model.config.model_type,
                  max_length=cfg.max_length, doc_stride=cfg.doc_stride, max_question_tokens=cfg.max_question_tokens,
                  max_answer_length=cfg.max_answer_length, n_best=cfg.n_best, null_threshold=threshold,
                  null_threshold_tuned_on=cfg.eval_file if evalset.has_unanswerable() else "")
    model_dir = out / ("model" if cfg.full_finetune else "adapter")
    if not cfg.full_finetune:  # a name that loads anywhere, not this machine's path of the base
        trainer.model.peft_config["default"].base_model_name_or_path = modeling.portable_name(cfg.model)
    trainer.model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    qa.save(model_dir)

    reports = out / "reports"
    reports.mkdir(exist_ok=True)
    write_table(rows, reports)
    plot_curves(rows, reports / "curves.png")
    (reports / "eval_predictions.json").write_text(json.dumps(
        {e.id: dataclasses.asdict(a) for e, a in zip(eval_examples, predictions)}, indent=1, default=str))
    steps = max(table.steps, 1)
    speed = training_speed(model.config, train_features, cfg, table)
    manifest = {
        "config": dataclasses.asdict(cfg),
        "resumed": resume,
        "init_adapter": init,
        "sources": {"train": [dataclasses.asdict(r) for r in train_reports],
                    "eval": [dataclasses.asdict(r) for r in eval_reports]},
        "counts": {"train_examples": len(train_examples), "train_features": len(train_features),
                   "eval_examples": len(eval_examples), "eval_features": len(evalset.features),
                   "long_questions_dropped": {"train": long_train, "eval": long_eval}},
        "seed": cfg.seed,
        "parameters": {"trainable": params.trainable, "total": params.total, "percent": params.percent},
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "precision": precision(cfg),
        "versions": package_versions(),
        "timing": {"global_step": trainer.state.global_step, "train_seconds_excluding_eval": table.step_seconds,
                   "seconds_per_step": table.step_seconds / steps, "trainer_runtime": result.metrics["train_runtime"],
                   "wall_seconds": time.time() - started},
        "speed": speed,
        "peak_rss_mb": peak_rss_mb(),
        "null_threshold": {"value": threshold, "how": threshold_note},
        "final_metrics": {"threshold_0": evalset.score_answers(answers_0, start_logits, end_logits),
                          "tuned": final_scores},
        "table": rows,
    }
    for directory in (out, model_dir):
        (directory / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    (model_dir / "README.md").write_text(model_card(cfg, manifest))
    return manifest


def training_speed(config, features, cfg: TrainConfig, table: "TableCallback") -> dict:
    """Tokens/s and achieved FLOP/s of the optimiser steps (eval excluded; all processes of a DDP run), against
    this machine's dense fp32 matmul rate at the same threads (times the processes). Model FLOPs: 3x the forward pass (forward + backward), estimated
    from the mean window length; LoRA's frozen weights skip their weight gradients, so for LoRA this
    overstates the work by up to a third."""
    lengths = [len(ids) for ids in features.inputs["input_ids"]]
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    windows = table.steps * cfg.batch_size * cfg.gradient_accumulation_steps * world
    mean_length = sum(lengths) / len(lengths)
    seconds = max(table.step_seconds, 1e-9)
    flops = 3 * modeling.encoder_flops(config, round(mean_length)) * windows
    peak = modeling.matmul_flops_per_second(torch.get_num_threads()) * world
    return {"steps_timed": table.steps, "windows_per_second": windows / seconds,
            "tokens_per_second": windows * mean_length / seconds, "model_flops_per_second": flops / seconds,
            "matmul_peak_flops_per_second": peak, "fraction_of_peak": flops / seconds / peak,
            "precision": precision(cfg), "threads": torch.get_num_threads(), "processes": world}


def write_table(rows: list[dict], directory: Path) -> None:
    (directory / "eval_table.json").write_text(json.dumps(rows, indent=2) + "\n")
    with open(directory / "eval_table.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=TABLE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def plot_curves(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("train_loss", "val_loss"):
        left.plot(steps, [r[key] for r in rows], marker="o", label=key)
    left.set_xlabel("step"), left.set_ylabel("loss"), left.legend(), left.grid(alpha=0.3)
    for key in ("start_acc", "end_acc", "position_exact"):
        right.plot(steps, [100 * r[key] for r in rows], marker="o", label=key)
    for key in ("exact", "f1"):
        right.plot(steps, [r[key] for r in rows], marker="s", linestyle="--", label=f"SQuAD {key}")
    right.set_xlabel("step"), right.set_ylabel("%"), right.legend(), right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def model_card(cfg: TrainConfig, manifest: dict) -> str:
    tuned = manifest["final_metrics"]["tuned"]
    lora = manifest["init_adapter"] or {"lora_r": cfg.lora_r, "lora_alpha": cfg.lora_alpha}
    kind = "full fine-tune" if cfg.full_finetune else f"LoRA r={lora['lora_r']}, alpha={lora['lora_alpha']}"
    lines = [
        "---", "library_name: " + ("transformers" if cfg.full_finetune else "peft"),
        "pipeline_tag: question-answering", "tags: [extractive-qa, squad, qa-toolkit]", "---", "",
        f"# Extractive QA: {cfg.model} ({kind})", "",
        f"Trained with `qa-toolkit train` on {manifest['counts']['train_examples']} questions "
        f"({', '.join(cfg.train_files)}); evaluated on {manifest['counts']['eval_examples']} questions "
        f"({cfg.eval_file}).", "",
        *([f"Continued from the adapter {manifest['init_adapter']['path']} (LoRA r={manifest['init_adapter']['lora_r']}, "
           f"alpha={manifest['init_adapter']['lora_alpha']}; {manifest['init_adapter']['steps']} steps on "
           f"{', '.join(manifest['init_adapter']['trained_on'] or ['?'])}) with `--init-adapter`.", ""]
          if manifest["init_adapter"] else []),
        f"- trainable parameters: {manifest['parameters']['trainable']:,} of {manifest['parameters']['total']:,} "
        f"({manifest['parameters']['percent']:.2f}%)",
        f"- steps: {manifest['timing']['global_step']}, {manifest['timing']['seconds_per_step']:.3f} s/step "
        f"on {manifest['device']} ({manifest['speed']['precision']}, {manifest['speed']['tokens_per_second']:.0f} "
        f"tokens/s, {100 * manifest['speed']['fraction_of_peak']:.0f}% of the fp32 matmul peak)",
        f"- no-answer threshold: {manifest['null_threshold']['value']:.4f} ({manifest['null_threshold']['how']}: "
        f"{cfg.eval_file}); serve with `--no-answer-threshold never` for questions that always have an answer", "",
        "| metric | value |", "|---|---|",
    ]
    lines += [f"| {k} | {v:.2f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in tuned.items()]
    lines += ["", "Load it with `qa-toolkit serve-batch --engine torch --model <this dir>` or export it with "
              "`qa-toolkit export --merge --adapter <this dir>`.", ""]
    return "\n".join(lines)
