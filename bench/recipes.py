"""Recipe comparison on one budget: the seed recipe, LoRA on every linear layer, full fine-tuning.

    python bench/recipes.py [--train] [--steps 500] [--runs-dir models/compare] [--name recipes]

With --train, trains each recipe (same data, same steps, same eval set) one after the other with
`qa-toolkit train`; then, for every run, checks the training-side numbers through the second path
(serve-batch over the eval questions with the torch engine, scored with the official metric) and writes
bench/results/<name>/results.json and results.md.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

from toolkit import data, load
from toolkit.benchmarking.results import qa_command, stamp
from toolkit.benchmarking.results import write_results as write_bench
from toolkit.benchmarking.sets import SLICE_TUNE
from toolkit.runtime import default_threads
from toolkit.scoring import score_answer_file
from toolkit.serving import serve_batch

EVAL = SLICE_TUNE
RECIPES = {
    "seed: LoRA r16/a32 attention, lr 3e-4": ("seed-lora-attn-r16-lr3e-4", ["--config", "configs/seed.json"]),
    "LoRA r32/a64 all linear, lr 1e-3": ("lora-all-r32-lr1e-3", ["--lora-targets", "all-linear", "--lora-r", "32",
                                                                 "--lora-alpha", "64", "--lr", "1e-3"]),
    "full fine-tune, lr 1e-4": ("full-lr1e-4", ["--full-finetune", "--lr", "1e-4"]),
}


def train(runs: Path, steps: int) -> None:
    common = ["--train-file", "squad-v1.1-train?negatives=0.33", "--train-samples", str(steps * 8),
              "--eval-file", EVAL, "--max-steps", str(steps), "--eval-steps", str(steps // 2), "--warmup-steps", "50"]
    for directory, flags in RECIPES.values():
        with open(runs / f"{directory}.log", "w") as log:
            subprocess.run([*qa_command(), "train", *common, "--output-dir", str(runs / directory), *flags],
                           stdout=log, stderr=subprocess.STDOUT, check=True)


def second_path(run: Path, work: Path) -> dict:
    """serve-batch (torch engine) over the run's eval questions, scored from the output file."""
    manifest = json.loads((run / "manifest.json").read_text())
    examples, _ = data.load_examples([manifest["config"]["eval_file"]], cache_dir=data.default_cache_dir(), seed=42,
                                     limit=None, default_split="validation")
    questions, answers = work / "eval.jsonl", work / f"{run.name}.answers.jsonl"
    data.write_jsonl(examples, questions)
    model_dir = run / ("model" if manifest["config"]["full_finetune"] else "adapter")
    serve_batch(load(model_dir, engine="torch", device="cpu"), str(questions), str(answers), progress=False)
    refs = data.references(examples)
    return {"tuned": score_answer_file(str(answers), refs), "best_span": score_answer_file(str(answers), refs, True),
            "references": refs}


def summarise(runs: Path, name: str, results_dir: Path) -> None:
    rows = []
    work = runs / "serve"
    work.mkdir(exist_ok=True)
    for label, (directory, _) in RECIPES.items():
        run = runs / directory
        m = json.loads((run / "manifest.json").read_text())
        weights = run / ("model" if m["config"]["full_finetune"] else "adapter")
        size = sum(f.stat().st_size for f in weights.glob("*.safetensors"))
        print(f"{label}: serve-batch over the eval set", file=sys.stderr)
        served = second_path(run, work)
        rows.append({"recipe": label, "run": str(run), "steps": m["timing"]["global_step"],
                     "trainable": m["parameters"]["trainable"], "artifact_mb": size / 1e6,
                     "seconds_per_step": m["timing"]["seconds_per_step"], "peak_rss_mb": m["peak_rss_mb"],
                     "table": m["table"], "threshold": m["null_threshold"]["value"],
                     "train_threshold_0": m["final_metrics"]["threshold_0"], "train_tuned": m["final_metrics"]["tuned"],
                     "served_tuned": served["tuned"], "served_best_span": served["best_span"]})
    lines = ["| recipe | steps | trainable | artifact MB | s/step | peak RSS MB | val loss | start acc | end acc | "
             "pos. EM | HasAns F1 (thr 0) | EM / F1 tuned (train) | EM / F1 tuned (served) | best-span HasAns EM / F1 (served) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        last, t, s, b = r["table"][-1], r["train_tuned"], r["served_tuned"], r["served_best_span"]
        lines.append(
            f"| {r['recipe']} | {r['steps']} | {r['trainable']:,} | {r['artifact_mb']:.1f} | {r['seconds_per_step']:.2f} | "
            f"{r['peak_rss_mb']:.0f} | {last['val_loss']:.3f} | {100 * last['start_acc']:.1f} | {100 * last['end_acc']:.1f} | "
            f"{100 * last['position_exact']:.1f} | {last['HasAns_f1']:.1f} | {t['exact']:.2f} / {t['f1']:.2f} | "
            f"{s['exact']:.2f} / {s['f1']:.2f} | {b['HasAns_exact']:.1f} / {b['HasAns_f1']:.1f} |")
    write_results(results_dir / name, rows, lines)


def write_results(out: Path, rows: list[dict], table: list[str], eval_file: str = EVAL) -> None:
    """results.json (the rows, the eval set, date, machine, versions) and results.md (the table) in out."""
    write_bench(out.parent, {**stamp(out.name, default_threads()), "eval_file": eval_file, "rows": rows},
                "\n".join(table))
    print("\n".join(table))


def run(doc: str, name: str, train_help: str, train_runs, summarise_runs) -> None:
    """The command line shared by the benches that train runs on one budget, then score them."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--train", action="store_true", help=train_help)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--runs-dir", default="models/compare")
    parser.add_argument("--name", default=name)
    parser.add_argument("--results-dir", default="bench/results")
    args = parser.parse_args()
    runs = Path(args.runs_dir)
    runs.mkdir(parents=True, exist_ok=True)
    if args.train:
        train_runs(runs, args.steps)
    summarise_runs(runs, args.name, Path(args.results_dir))


def main() -> None:
    run(__doc__, "recipes", "train the three recipes first", train, summarise)


if __name__ == "__main__":
    main()
