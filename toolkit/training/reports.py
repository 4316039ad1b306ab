"""What a training run leaves behind besides the weights: the evaluation table (printed, CSV, JSON, curves),
the speed figures, the run manifest and the model card."""

import csv
import json
from pathlib import Path

from tqdm.auto import tqdm

from toolkit.config import TrainConfig
from toolkit.runtime import encoder_flops, matmul_flops_per_second

TABLE_COLUMNS = ["step", "train_loss", "val_loss", "start_acc", "end_acc", "position_exact",
                 "exact", "f1", "HasAns_f1", "NoAns_f1"]


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


def write_reports(rows: list[dict], predictions: dict, directory: Path) -> None:
    directory.mkdir(exist_ok=True)
    write_table(rows, directory)
    plot_curves(rows, directory / "curves.png")
    (directory / "eval_predictions.json").write_text(json.dumps(predictions, indent=1, default=str))


def training_speed(config, lengths: list[int], cfg: TrainConfig, steps: int, step_seconds: float, precision: str,
                   threads: int, world: int) -> dict:
    """Tokens/s and achieved FLOP/s of the optimiser steps (eval excluded; all processes of a DDP run), against
    this machine's dense fp32 matmul rate at the same threads (times the processes). Model FLOPs: 3x the forward
    pass (forward + backward), estimated from the mean window length; LoRA's frozen weights skip their weight
    gradients, so for LoRA this overstates the work by up to a third."""
    windows = steps * cfg.batch_size * cfg.gradient_accumulation_steps * world
    mean_length = sum(lengths) / len(lengths)
    seconds = max(step_seconds, 1e-9)
    flops = 3 * encoder_flops(config, round(mean_length)) * windows
    peak = matmul_flops_per_second(threads) * world
    return {"steps_timed": steps, "windows_per_second": windows / seconds,
            "tokens_per_second": windows * mean_length / seconds, "model_flops_per_second": flops / seconds,
            "matmul_peak_flops_per_second": peak, "fraction_of_peak": flops / seconds / peak,
            "precision": precision, "threads": threads, "processes": world}


def model_card(cfg: TrainConfig, manifest: dict) -> str:
    tuned = manifest["final_metrics"]["tuned"]
    init = manifest["init_adapter"]
    teacher = manifest.get("teacher")
    lora = init or {"lora_r": cfg.lora_r, "lora_alpha": cfg.lora_alpha}
    kind = "full fine-tune" if cfg.full_finetune else f"LoRA r={lora['lora_r']}, alpha={lora['lora_alpha']}"
    lines = [
        "---", "library_name: " + ("transformers" if cfg.full_finetune else "peft"),
        "pipeline_tag: question-answering", "tags: [extractive-qa, squad, qa-toolkit]", "---", "",
        f"# Extractive QA: {cfg.model} ({kind})", "",
        f"Trained with `qa-toolkit train` on {manifest['counts']['train_examples']} questions "
        f"({', '.join(cfg.train_files)}); evaluated on {manifest['counts']['eval_examples']} questions "
        f"({cfg.eval_file}).", "",
        *([f"Continued from the adapter {init['path']} (LoRA r={init['lora_r']}, alpha={init['lora_alpha']}; "
           f"{init['steps']} steps on {', '.join(init['trained_on'] or ['?'])}) with `--init-adapter`.", ""]
          if init else []),
        *([f"Distilled from the teacher {teacher['path']} ({teacher['base_model']}): its start/end logits, carried "
           f"over through the context's characters, weigh {teacher['alpha']} against the gold labels at temperature "
           f"{teacher['temperature']}.", ""] if teacher else []),
        f"- trainable parameters: {manifest['parameters']['trainable']:,} of {manifest['parameters']['total']:,} "
        f"({manifest['parameters']['percent']:.2f}%)",
        f"- steps: {manifest['timing']['global_step']}, {manifest['timing']['seconds_per_step']:.3f} s/step "
        f"on {manifest['device']} ({manifest['speed']['precision']}, {manifest['speed']['tokens_per_second']:.0f} "
        f"tokens/s, {100 * manifest['speed']['fraction_of_peak']:.0f}% of the fp32 matmul peak)",
        f"- no-answer threshold: {manifest['null_threshold']['value']:.4f} ({manifest['null_threshold']['how']}: "
        f"{cfg.eval_file}); serve with `--no-answer-threshold never` for questions that always have an answer",
        calibration_line(manifest.get("calibration")), "",
        "| metric | value |", "|---|---|",
    ]
    lines += [f"| {k} | {v:.2f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in tuned.items()]
    lines += ["", "Load it with `qa-toolkit serve-batch --engine torch --model <this dir>` or export it with "
              "`qa-toolkit export --merge --adapter <this dir>`.", ""]
    return "\n".join(lines)


def calibration_line(calibration: dict | None) -> str:
    if calibration is None:
        return "- probabilities: not calibrated (too few eval questions to fit on); answers say calibrated: false"
    return (f"- probabilities: Platt scaling fitted on the same {calibration['questions']} eval questions "
            f"(ECE there: no-answer {calibration['ece_no_answer']:.3f}, answer {calibration['ece_answer']:.3f}; "
            "held-out figures: `bench/calibration.py`)")


def write_manifest(manifest: dict, cfg: TrainConfig, out: Path, model_dir: Path) -> None:
    for directory in (out, model_dir):
        (directory / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    (model_dir / "README.md").write_text(model_card(cfg, manifest))

