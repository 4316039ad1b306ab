"""Real unanswerable questions on one budget: the shipped adapter as is, continued from it on the 19 SQuAD 2.0
training articles mixed with SQuAD v1.1 train (the articles' share of the mix raised by repeating them),
and trained from the base on the same mix.

    python bench/unanswerable.py [--train] [--steps 1000] [--runs-dir models/compare] [--name unanswerable]

Every row is trained with `qa-toolkit train` (same steps, batch 8, same eval set: the 3 tuning articles of
the slice, on which the no-answer threshold is tuned) and scored from serve-batch output files (torch
engine) with the official metric: on the 7 held-out slice articles at the tuned threshold (EM/F1, HasAns
F1, NoAns accuracy, no-answer AUC) and, best span, on SQuAD v1.1 dev without the 19 training articles
(a seeded sample of --v11-samples questions; their answerable questions are v1.1 dev questions).
Writes bench/results/<name>/results.json and results.md.
"""

import json
import subprocess
import sys
from pathlib import Path

from recipes import run, write_results

from toolkit import data, load
from toolkit.benchmarking.results import qa_command
from toolkit.benchmarking.sets import SLICE_HELDOUT, SLICE_TUNE
from toolkit.scoring import score_answer_file
from toolkit.serving import serve_batch

ARTICLES = "squad2-dev-train"
TRAIN_TITLES = ("Southern_California,Sky_(United_Kingdom),Victoria_(Australia),Oxygen,Amazon_rainforest,Ctenophora,"
                "Fresno,_California,Black_Death,Geology,Pharmacy,Civil_disobedience,Construction,Private_school,"
                "Jacksonville,_Florida,Economic_inequality,University_of_Chicago,"
                "Intergovernmental_Panel_on_Climate_Change,Prime_number,Rhine")
V11_DEV = f"squad-v1.1-dev?exclude-articles={TRAIN_TITLES}"
SHIPPED = Path("models/minilm-squad-lora/adapter")
V11 = "squad-v1.1-train?samples=12000"
CONTINUE = ["--init-adapter", str(SHIPPED), "--lr", "3e-4"]
BASE = ["--lr", "1e-3"]  # the shipped recipe's rate for a new adapter
ROWS = {  # label -> (run directory or None: the shipped adapter as is, training flags)
    "shipped adapter as is (v1.1 train + synthetic negatives)": (None, []),
    "continued: 19 articles x1 + 12k v1.1": ("unans-cont-r1", [*CONTINUE, "--train-file", f"{ARTICLES}?repeat=1",
                                                                "--train-file", V11]),
    "continued: 19 articles x2 + 12k v1.1": ("unans-cont-r2", [*CONTINUE, "--train-file", f"{ARTICLES}?repeat=2",
                                                                "--train-file", V11]),
    "from the base: 19 articles x2 + 12k v1.1": ("unans-base-r2", [*BASE, "--train-file", f"{ARTICLES}?repeat=2",
                                                                    "--train-file", V11]),
}


def train(runs: Path, steps: int) -> None:
    for directory, flags in ROWS.values():
        if directory is None or (runs / directory / "manifest.json").exists():
            continue
        command = [*qa_command(), "train", *flags, "--train-samples", str(steps * 8), "--eval-file", SLICE_TUNE,
                   "--max-steps", str(steps), "--eval-steps", str(steps // 2), "--warmup-steps", "100",
                   "--output-dir", str(runs / directory)]
        with open(runs / f"{directory}.log", "w") as log:
            subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True)


def served_scores(model_dir: Path, source: str, work: Path, samples: int | None = None) -> dict:
    """serve-batch (torch engine) over a source, scored from the output file: tuned threshold and best span."""
    examples, _ = data.load_examples([source], cache_dir=data.default_cache_dir(), seed=42,
                                     limit=samples, default_split="validation")
    name = f"{model_dir.parent.name}-{abs(hash(source)) % 10 ** 8}"
    questions, answers = work / f"{name}.jsonl", work / f"{name}.answers.jsonl"
    data.write_jsonl(examples, questions)
    serve_batch(load(model_dir, engine="torch", device="cpu"), str(questions), str(answers), progress=False)
    refs = data.references(examples)
    return {"tuned": score_answer_file(str(answers), refs), "best_span": score_answer_file(str(answers), refs, True),
            "answers": str(answers)}


def row(label: str, runs: Path, work: Path, v11_samples: int) -> dict:
    directory = ROWS[label][0]
    model_dir = SHIPPED if directory is None else runs / directory / "adapter"
    manifest = json.loads((model_dir / "manifest.json").read_text())
    print(f"{label}: serve-batch over the held-out articles and v1.1 dev", file=sys.stderr)
    held_out = served_scores(model_dir, SLICE_HELDOUT, work)
    v11 = served_scores(model_dir, V11_DEV, work, v11_samples)
    return {"row": label, "model": str(model_dir), "train_files": manifest["config"]["train_files"],
            "steps": manifest["timing"]["global_step"], "seconds_per_step": manifest["timing"]["seconds_per_step"],
            "precision": manifest.get("precision"), "threshold": manifest["null_threshold"]["value"],
            "train_tuned": manifest["final_metrics"]["tuned"], "held_out": held_out["tuned"],
            "v11_best_span": v11["best_span"]["f1"], "v11_best_span_exact": v11["best_span"]["exact"],
            "v11_questions": v11["best_span"]["total"], "table": manifest["table"]}


def summarise(runs: Path, name: str, results_dir: Path, v11_samples: int = 2000) -> None:
    work = runs / "serve-unanswerable"
    work.mkdir(parents=True, exist_ok=True)
    rows = [row(label, runs, work, v11_samples) for label in ROWS
            if ROWS[label][0] is None or (runs / ROWS[label][0] / "manifest.json").exists()]
    lines = ["| row | steps | s/step | tuned thr | 3 tuning articles EM / F1 (train) | 7 held-out: EM / F1 | "
             "HasAns F1 | NoAns acc | no-answer AUC | v1.1 dev w/o the 19, best span EM / F1 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t, h = r["train_tuned"], r["held_out"]
        lines.append(f"| {r['row']} | {r['steps']} | {r['seconds_per_step']:.2f} | {r['threshold']:.2f} | "
                     f"{t['exact']:.2f} / {t['f1']:.2f} | {h['exact']:.2f} / {h['f1']:.2f} | {h['HasAns_f1']:.1f} | "
                     f"{h['NoAns_exact']:.1f} | {h['no_answer_auc']:.1f} | "
                     f"{r['v11_best_span_exact']:.2f} / {r['v11_best_span']:.2f} |")
    write_results(results_dir / name, rows, lines, SLICE_HELDOUT)


def main() -> None:
    run(__doc__, "unanswerable", "train the rows whose run is missing first", train, summarise)


if __name__ == "__main__":
    main()
