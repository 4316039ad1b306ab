"""The `qa-toolkit` command: parse options, call the library, print. Nothing else lives here."""

import dataclasses
import json
import sys

import click

from toolkit.config import DEFAULT_MODEL, TrainConfig
from toolkit.data import DataError
from toolkit.modeling import ModelError

USER_ERRORS = (DataError, ModelError, ValueError, FileNotFoundError, FileExistsError)


def fail_clearly(fn):
    """Turn the library's user-facing errors into one 'Error: ...' line and exit code 2."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            raise click.ClickException(str(e)) from None
    return wrapper


@click.group()
@click.version_option(package_name="qa-toolkit")
def main():
    """Extractive question answering: LoRA fine-tuning, ONNX export, batch serving, benchmarks."""


@main.command()
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="JSON file of TrainConfig settings (same names as the flags, with _); flags win.")
@click.option("--model", help=f"Base model: local path or hub name. Default: {DEFAULT_MODEL} (offline all-MiniLM-L6-v2).")
@click.option("--train-file", "train_files", multiple=True,
              help="Training source, repeatable: SQuAD .json (v1.1/v2.0), flat .jsonl, hub dataset name, or "
                   "squad-v1.1-train (offline mirror). Selectors: ?articles=A,B&exclude-articles=C&samples=N&split=S. "
                   "Default: squad-v1.1-train.")
@click.option("--eval-file", help="Evaluation source (same forms). Default: squad-v1.1-dev?samples=1000.")
@click.option("--train-samples", type=int, help="Seeded random subset of the mixed training questions. Default 5000.")
@click.option("--eval-samples", type=int, help="Seeded random subset of the eval questions. Default: all.")
@click.option("--epochs", type=float, help="Training epochs. Default 1.")
@click.option("--max-steps", type=int, help="Stop after this many optimiser steps (overrides --epochs).")
@click.option("--eval-steps", type=int, help="Evaluate, log and checkpoint every N steps. Default 200.")
@click.option("--batch-size", type=int, help="Per-device batch size. Default 8.")
@click.option("--grad-accum", "gradient_accumulation_steps", type=int, help="Gradient accumulation steps. Default 1.")
@click.option("--lr", "learning_rate", type=float, help="Peak learning rate. Default 3e-4.")
@click.option("--warmup-steps", type=int, help="Linear warm-up steps. Default 100.")
@click.option("--seed", type=int, help="Seed for subsets, head init and training. Default 42.")
@click.option("--output-dir", help="Run directory (adapter/, reports/, checkpoints/, manifest.json). Default models/run.")
@click.option("--resume", is_flag=True, help="Continue the run in --output-dir from its latest checkpoint.")
@click.option("--lora-targets", help="Comma-separated module names for LoRA (overrides the per-architecture lookup).")
@click.option("--lora-r", type=int, help="LoRA rank. Default 16.")
@click.option("--lora-alpha", type=int, help="LoRA alpha. Default 32.")
@click.option("--full-finetune", is_flag=True, default=None, help="Train every weight instead of a LoRA adapter.")
@click.option("--max-length", type=int, help="Tokens per window. Default 384.")
@click.option("--doc-stride", type=int, help="Overlap between windows of a long context. Default 128.")
@click.option("--max-question-tokens", type=int, help="Longest question kept, in tokens. Default 64.")
@click.option("--cache-dir", help="Cache for the offline SQuAD v1.1 mirror. Default ~/.cache/qa-toolkit.")
@fail_clearly
def train(config_file, resume, lora_targets, **flags):
    """Fine-tune an encoder for extractive QA (LoRA by default) and evaluate it."""
    from toolkit.train import train as run

    cfg = TrainConfig.from_file(config_file) if config_file else TrainConfig()
    given = {k: v for k, v in flags.items() if v is not None and v != ()}
    if "train_files" in given:
        given["train_files"] = list(given["train_files"])
    if lora_targets:
        given["lora_targets"] = [t.strip() for t in lora_targets.split(",") if t.strip()]
    cfg = dataclasses.replace(cfg, **given)
    manifest = run(cfg, resume=resume)
    click.echo(json.dumps({"output_dir": cfg.output_dir, "null_threshold": manifest["null_threshold"],
                           "metrics": manifest["final_metrics"]["tuned"], "timing": manifest["timing"]}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
