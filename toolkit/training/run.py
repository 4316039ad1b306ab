"""One training run end to end, as a list of named steps: check the run directory and the data, build the
model (new LoRA adapter, full fine-tune, or --init-adapter), train with the Trainer, tune the no-answer
threshold on the eval set, save the model and the run's records."""

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import DataCollatorWithPadding

from toolkit import data as data_mod
from toolkit import modeling
from toolkit.calibrating import fit_answers, tuned_threshold
from toolkit.calibration import Calibration, CalibrationError
from toolkit.config import QAConfig, TrainConfig
from toolkit.features import Features, build_features, check_config
from toolkit.inference.loading import EngineSpec, load_engine
from toolkit.runtime import package_versions, peak_rss_mb
from toolkit.training import distill
from toolkit.training.reports import print_row, table_row, table_rows, training_speed, write_manifest, write_reports
from toolkit.training.trainer import (
    CadenceCallback,
    EvalSet,
    QATrainer,
    TableCallback,
    TrainError,
    drop_long_questions,
    first_answer,
    precision,
    training_arguments,
)

# Settings that may change between a run and its --resume; anything else must match.
RESUMABLE = {"epochs", "max_steps", "eval_steps", "save_total_limit"}


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


@dataclass
class RunData:
    train_examples: list
    train_features: Features
    evalset: EvalSet
    reports: dict  # "train" / "eval": the sources' SourceReports
    long_questions_dropped: dict


def load_data(cfg: TrainConfig, tokenizer) -> RunData:
    """The training windows and the eval set; refuses SQuAD v1.1 dev and questions shared by both sets."""
    check_config(cfg.features(), tokenizer.num_special_tokens_to_add(pair=True))
    for spec in cfg.train_files:
        if data_mod.parse_spec(spec)[0] == "squad-v1.1-dev":
            raise TrainError("refusing to train on squad-v1.1-dev: its questions reappear in SQuAD 2.0 dev")
    cache = Path(cfg.cache_dir) if cfg.cache_dir else data_mod.default_cache_dir()
    train_examples, train_reports = data_mod.load_examples(cfg.train_files, cache_dir=cache, seed=cfg.seed,
                                                           limit=cfg.train_samples, default_split="train")
    eval_examples, eval_reports = data_mod.load_examples([cfg.eval_file], cache_dir=cache, seed=cfg.seed,
                                                         limit=cfg.eval_samples, default_split="validation")
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
    return RunData(train_examples, train_features, evalset, {"train": train_reports, "eval": eval_reports},
                   {"train": long_train, "eval": long_eval})


def distill_settings(cfg: TrainConfig) -> distill.DistillSettings | None:
    """The distillation settings, checked before anything is loaded; None without a teacher."""
    settings = distill.DistillSettings(cfg.distill_alpha, cfg.distill_temperature)
    if cfg.teacher is None:
        if settings != distill.DistillSettings():
            raise TrainError("--distill-alpha and --distill-temperature need a --teacher")
        return None
    settings.check()
    if not Path(cfg.teacher).is_dir():
        raise TrainError(f"--teacher {cfg.teacher}: no such model directory")
    return settings


def attach_teacher(cfg: TrainConfig, run_data: RunData, rows: list[dict], settings: distill.DistillSettings) -> dict:
    """Adds the teacher's target logits to each training row; returns the record of the teacher."""
    started = time.perf_counter()
    teacher = load_engine(EngineSpec(model=cfg.teacher))
    examples = run_data.train_examples
    start, end = distill.targets(teacher, [e.question for e in examples], [e.context for e in examples],
                                 run_data.train_features)
    for row, s, e in zip(rows, start, end):
        row[distill.TARGET_KEYS[0]], row[distill.TARGET_KEYS[1]] = s, e
    return {"path": str(Path(cfg.teacher).resolve()), "base_model": teacher.served().qa.base_model,
            "variant": teacher.served().predictor.variant, "source": teacher.source, "alpha": settings.alpha,
            "temperature": settings.temperature, "seconds": time.perf_counter() - started}


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
    # While training, the base is the one loaded here: PEFT's checkpoint saving looks the named base up (on the
    # hub for a hub id, retrying for half a minute where it is unreachable). save_model writes the portable name.
    lora.base_model_name_or_path = modeling.resolve(cfg.model)
    manifest = adapter / "manifest.json"
    earlier = json.loads(manifest.read_text()) if manifest.exists() else {}
    return model, {"path": str(adapter.resolve()), "lora_r": lora.r, "lora_alpha": lora.lora_alpha,
                   "lora_targets": sorted(lora.target_modules),
                   "weights_sha256": data_mod.sha256_file(adapter / "adapter_model.safetensors"),
                   "trained_on": earlier.get("config", {}).get("train_files"),
                   "steps": earlier.get("timing", {}).get("global_step")}


def final_rows(trainer: QATrainer, evalset: EvalSet, main_process: bool) -> list[dict]:
    """The evaluation table, with a last row for the final weights when no evaluation fell on the last step
    (which also leaves evalset.last_logits those of the final weights)."""
    state = trainer.state
    rows = table_rows(state.log_history)
    if not rows or rows[-1]["step"] != state.global_step or evalset.last_logits is None:
        final = trainer.predict(evalset.rows(), metric_key_prefix="eval")
        if not rows or rows[-1]["step"] != state.global_step:
            rows.append(table_row(state.log_history, state.global_step, final.metrics))
            if main_process:
                print_row(rows[-1], header=len(rows) == 1)
    return rows


def tune_threshold(evalset: EvalSet) -> tuple[float, str, Calibration | None]:
    """The no-answer threshold with the best F1 on the eval set, how it was chosen, and the calibration
    fitted there (None without unanswerable questions to fit it on)."""
    if not evalset.has_unanswerable():
        return 0.0, "default 0.0: the eval set has no unanswerable question to tune on", None
    answers = evalset.answers(*evalset.last_logits, 0.0)
    try:
        calibration = fit_answers(evalset.examples, answers, evalset.cfg.eval_file)
    except CalibrationError as e:  # the model is kept; it answers with the uncalibrated fallback
        print(f"calibration not fitted: {e}", file=sys.stderr)
        calibration = None
    return tuned_threshold(evalset.examples, answers), "tuned on the eval set (max F1)", calibration


def save_model(model, tokenizer, cfg: TrainConfig, *, threshold: float, tuned_on: str,
               calibration: Calibration | None, out: Path) -> Path:
    qa = QAConfig(base_model=cfg.model, model_type=model.config.model_type,
                  max_length=cfg.max_length, doc_stride=cfg.doc_stride, max_question_tokens=cfg.max_question_tokens,
                  max_answer_length=cfg.max_answer_length, n_best=cfg.n_best, null_threshold=threshold,
                  null_threshold_tuned_on=tuned_on, calibration=calibration.to_dict() if calibration else None)
    model_dir = out / ("model" if cfg.full_finetune else "adapter")
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    qa.save(model_dir)
    if not cfg.full_finetune:  # a base name that loads anywhere, not this machine's path of the base; written
        # after saving, since PEFT's save looks a hub id up (retrying for half a minute where it is unreachable)
        config = model_dir / "adapter_config.json"
        saved = json.loads(config.read_text())
        saved["base_model_name_or_path"] = modeling.portable_name(cfg.model)
        config.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    return model_dir


def train(cfg: TrainConfig, resume: bool = False) -> dict | None:
    """Run one training job end to end; returns the manifest (also written to the output dir).

    Under a launcher (``torchrun --nproc_per_node N -m toolkit.cli train ...``) every process trains a
    shard of each global batch (DDP: gloo on CPU, NCCL on GPUs) and takes part in each evaluation; the
    first process alone writes the run directory, and the others return None."""
    started = time.time()
    out = Path(cfg.output_dir)
    args = training_arguments(cfg, out / "checkpoints")  # under a launcher: joins the process group
    check_resume(cfg, out, resume)
    distilling = distill_settings(cfg)
    if args.world_size > 1:
        torch.distributed.barrier()  # every process has checked the run directory before the first writes to it
    main_process = args.process_index == 0
    tokenizer = modeling.load_tokenizer(cfg.model)
    run_data = load_data(cfg, tokenizer)
    evalset = run_data.evalset
    model, init = build_model(cfg)
    params = modeling.count_parameters(model)
    print(params, file=sys.stderr)
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    train_rows = run_data.train_features.rows()
    teacher = attach_teacher(cfg, run_data, train_rows, distilling) if distilling else None
    table = TableCallback()
    trainer = QATrainer(
        model=model, args=args, train_dataset=train_rows, eval_dataset=evalset.rows(),
        data_collator=distill.DistillCollator(DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)),
        compute_metrics=evalset.compute_metrics, callbacks=[table, CadenceCallback()], distill=distilling)
    result = trainer.train(resume_from_checkpoint=str(latest_checkpoint(out / "checkpoints")) if resume else None)
    rows = final_rows(trainer, evalset, main_process)
    if not main_process:
        return None
    threshold, how, calibration = tune_threshold(evalset)
    model_dir = save_model(trainer.model, tokenizer, cfg, threshold=threshold, calibration=calibration, out=out,
                           tuned_on=cfg.eval_file if evalset.has_unanswerable() else "")
    predictions = evalset.answers(*evalset.last_logits, threshold, calibration)
    write_reports(rows, {e.id: {"text": a.text, **dataclasses.asdict(a)} for e, a in zip(evalset.examples, predictions)},
                  out / "reports")
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    mixed = precision(cfg)
    manifest = {
        "config": dataclasses.asdict(cfg), "resumed": resume, "init_adapter": init, "teacher": teacher,
        "sources": {kind: [dataclasses.asdict(r) for r in reports] for kind, reports in run_data.reports.items()},
        "counts": {"train_examples": len(run_data.train_examples), "train_features": len(run_data.train_features),
                   "eval_examples": len(evalset.examples), "eval_features": len(evalset.features),
                   "long_questions_dropped": run_data.long_questions_dropped},
        "seed": cfg.seed,
        "parameters": {"trainable": params.trainable, "total": params.total, "percent": params.percent},
        "device": "cuda" if torch.cuda.is_available() else "cpu", "precision": mixed,
        "versions": package_versions(),
        "timing": {"global_step": trainer.state.global_step, "train_seconds_excluding_eval": table.step_seconds,
                   "seconds_per_step": table.step_seconds / max(table.steps, 1),
                   "trainer_runtime": result.metrics["train_runtime"], "wall_seconds": time.time() - started},
        "speed": training_speed(model.config, [len(ids) for ids in run_data.train_features.inputs["input_ids"]], cfg,
                                table.steps, table.step_seconds, mixed, torch.get_num_threads(), world),
        "peak_rss_mb": peak_rss_mb(),
        "null_threshold": {"value": threshold, "how": how},
        "calibration": calibration.to_dict() if calibration else None,
        "final_metrics": {"threshold_0": evalset.score(*evalset.last_logits, 0.0),
                          "tuned": evalset.score_answers(predictions, *evalset.last_logits)},
        "table": rows,
    }
    write_manifest(manifest, cfg, out, model_dir)
    return manifest
