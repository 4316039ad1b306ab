"""What the synthetic unanswerable questions do, kind and share, to HasAns and NoAns separately.

    python bench/negatives.py [--train] [--steps 500] [--runs-dir models/compare] [--name negatives]

One recipe (LoRA r32/a64 on every linear layer, lr 1e-3: the shipped one), one budget (the recipes
bench's: 8 x steps questions, that many steps of batch 8, 50 warm-up steps), one eval set (the 3 tuning
articles of the SQuAD 2.0 slice, real unanswerable questions); only the training data's negatives change.
With --train, trains the rows whose run is missing (the "mix" row is the recipes bench's run of the same
command, reused when present). Every figure is then taken from serve-batch output (torch engine) over the
eval questions, scored with the official metric: at threshold 0, at the threshold tuned in training, on
best spans, and the no-answer AUC (how well the null score separates the two kinds of question, whatever
the threshold). Writes bench/results/<name>/results.json and results.md.
"""

import json
import subprocess
import sys
from pathlib import Path

from recipes import EVAL, RECIPES, run, second_path, write_results

from toolkit.benchmarking.results import qa_command
from toolkit.scoring import squad_scores

V11 = "squad-v1.1-train"
LORA = RECIPES["LoRA r32/a64 all linear, lr 1e-3"]
ROWS = {  # label -> (run directory, training source)
    "none": ("negatives-none", V11),
    "mix (paragraph, sentence) 0.33": (LORA[0], f"{V11}?negatives=0.33"),
    "swap 0.33": ("negatives-swap-0.33", f"{V11}?negatives=0.33&negative-kind=swap"),
}


def train(runs: Path, steps: int) -> None:
    for directory, source in ROWS.values():
        if (runs / directory / "manifest.json").exists():
            continue
        command = [*qa_command(), "train", "--train-file", source, "--train-samples", str(steps * 8),
                   "--eval-file", EVAL, "--max-steps", str(steps), "--eval-steps", str(steps // 2),
                   "--warmup-steps", "50", "--output-dir", str(runs / directory), *LORA[1]]
        with open(runs / f"{directory}.log", "w") as log:
            subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True)


def at_threshold(lines: list[dict], references: dict[str, list[str]], threshold: float) -> dict:
    """The served answers re-decided at another no-answer threshold (diff above it = no answer)."""
    predictions = {r["id"]: r["best_span"] or "" for r in lines
                   if r["null_score_diff"] is not None and r["null_score_diff"] <= threshold}
    return squad_scores(predictions, references)


def row(label: str, run: Path, work: Path) -> dict:
    manifest = json.loads((run / "manifest.json").read_text())
    source = manifest["config"]["train_files"][0]
    if source != ROWS[label][1] or manifest["config"]["eval_file"] != EVAL:
        raise SystemExit(f"{run} was trained on {source} / {manifest['config']['eval_file']}, not this row's data")
    print(f"{label}: serve-batch over the eval set", file=sys.stderr)
    served = second_path(run, work)
    lines = [json.loads(line) for line in (work / f"{run.name}.answers.jsonl").read_text().splitlines()]
    references = served["references"]
    return {"row": label, "run": str(run), "train_file": source, "train_examples": manifest["counts"]["train_examples"],
            "source_negatives": manifest["sources"]["train"][0]["synthetic_negatives"],
            "threshold": manifest["null_threshold"]["value"],
            "served_threshold_0": at_threshold(lines, references, 0.0), "served_tuned": served["tuned"],
            "served_best_span": served["best_span"], "no_answer_auc": served["tuned"]["no_answer_auc"],
            "table": manifest["table"]}


def summarise(runs: Path, name: str, results_dir: Path) -> None:
    work = runs / "serve"
    work.mkdir(exist_ok=True)
    rows = [row(label, runs / directory, work) for label, (directory, _) in ROWS.items()]
    lines = ["| negatives | val loss | no-answer AUC | thr 0: EM / F1 | thr 0: HasAns F1 / NoAns | tuned thr | "
             "tuned: EM / F1 | tuned: HasAns F1 / NoAns | best span: HasAns EM / F1 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        z, t, b = r["served_threshold_0"], r["served_tuned"], r["served_best_span"]
        lines.append(f"| {r['row']} | {r['table'][-1]['val_loss']:.3f} | {r['no_answer_auc']:.1f} | "
                     f"{z['exact']:.2f} / {z['f1']:.2f} | {z['HasAns_f1']:.1f} / {z['NoAns_exact']:.1f} | "
                     f"{r['threshold']:.2f} | {t['exact']:.2f} / {t['f1']:.2f} | "
                     f"{t['HasAns_f1']:.1f} / {t['NoAns_exact']:.1f} | {b['HasAns_exact']:.1f} / {b['HasAns_f1']:.1f} |")
    write_results(results_dir / name, rows, lines)


def main() -> None:
    run(__doc__, "negatives", "train the rows whose run is missing first", train, summarise)


if __name__ == "__main__":
    main()
