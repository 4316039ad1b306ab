"""Calibration of an adapter's probabilities, before and after fitting: serve-batch answers the held-out questions
with the uncalibrated fallback, `calibrate` fits Platt scaling (and, for comparison, temperature scaling) on the
threshold-tuning questions, serve-batch answers again, and `score` reports ECE and draws the reliability diagrams.

    python bench/calibration.py --adapter models/minilm-squad2-lora/adapter --name calibration-minilm-squad2 [--write]
    python bench/calibration.py --adapter models/mpnet-squad2-lora/adapter --served-by models/mpnet-squad2-lora/export \
        --name calibration-mpnet-squad2-lora [--write]

The fit always uses the adapter's fp32 weights; --served-by answers the held-out sets with the adapter's export (its
default CPU variant, as serve-batch would) instead of PyTorch fp32: what a user of the export is served, and for a
large base several times faster. The export is not copied: its files are linked, with the calibration swapped in.

--write stores the fitted calibration in the adapter's qa_config.json (the shipped adapters are refitted so), and
the held-out figures and the reliability diagram in its model card (README.md, reports/reliability.png).
Writes bench/results/<name>/results.json, results.md and reliability-{before,after}-<set>.png.
"""

import argparse
import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from toolkit import data, load
from toolkit.benchmarking.results import machine_line, stamp, write_results
from toolkit.benchmarking.sets import SLICE_HELDOUT, SLICE_TUNE, V11_DEV_29
from toolkit.calibrating import CARD_SECTION, calibrate_model, write_card_section
from toolkit.calibration import expected_calibration_error
from toolkit.config import QA_CONFIG_FILE, QAConfig
from toolkit.runtime import default_threads
from toolkit.scoring import score_answer_file
from toolkit.serving import serve_batch

SETS = {"slice-heldout": SLICE_HELDOUT, "v1.1-dev-29": f"{V11_DEV_29}&samples=2000"}


def answer_and_score(model_dir: Path, source: str, work: Path, tag: str, png: Path) -> dict:
    examples, _ = data.load_examples([source], cache_dir=data.default_cache_dir(), seed=42,
                                     limit=None, default_split="validation")
    questions = work / f"{tag}.jsonl"
    if not questions.exists():
        data.write_jsonl(examples, questions)
    answers = work / f"{tag}.answers.jsonl"
    engine = load(model_dir, device="cpu")
    serve_batch(engine, str(questions), str(answers), progress=False)
    scores = score_answer_file(str(answers), data.references(examples), reliability_png=str(png))
    scores["variant"] = engine.served().predictor.variant
    rows = [json.loads(line) for line in answers.read_text().splitlines()]
    scores["temperature_only_no_answer_ece"] = temperature_ece(rows, examples)
    return scores


def served_by(export: Path, adapter: Path, into: Path) -> Path:
    """The export's onnx/ directory as links to its files, with qa_config.json carrying the adapter's calibration
    (as the adapter stands now: none before the fit, the fit after it)."""
    onnx, qa = export / "onnx", QAConfig.load(adapter)
    exported = QAConfig.load(onnx)
    if (exported.base_model, exported.null_threshold) != (qa.base_model, qa.null_threshold):
        raise SystemExit(f"--served-by {export} was not exported from {adapter}: base or tuned threshold differs")
    if into.exists():
        shutil.rmtree(into)
    into.mkdir()
    for path in onnx.iterdir():
        if path.name != QA_CONFIG_FILE:
            (into / path.name).symlink_to(path.resolve())
    dataclasses.replace(exported, calibration=qa.calibration).save(into)
    return into


def temperature_ece(rows: list[dict], examples) -> float | None:
    """ECE of the no-answer probability had it been sigmoid(null_score_diff / T), T fitted on these same rows:
    a lower bound for temperature scaling (no bias term), the alternative to Platt scaling."""
    impossible = {e.id: e.is_impossible for e in examples}
    pairs = [(r["null_score_diff"], impossible[r["id"]]) for r in rows if r.get("null_score_diff") is not None]
    if not pairs:
        return None
    diff, y = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs], dtype=float)
    best = min((expected_calibration_error(1 / (1 + np.exp(-diff / t)), y), t) for t in np.linspace(0.2, 10, 200))
    return best[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", required=True, help="an adapter directory (fp32 PyTorch engine)")
    parser.add_argument("--served-by", type=Path, help="answer the held-out sets with this export of the adapter "
                        "(its default CPU variant) instead of PyTorch fp32")
    parser.add_argument("--fit-on", default=SLICE_TUNE)
    parser.add_argument("--name", required=True)
    parser.add_argument("--results-dir", default="bench/results")
    parser.add_argument("--write", action="store_true", help="store the fit in the adapter's qa_config.json")
    args = parser.parse_args()

    out = Path(args.results_dir) / args.name
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "adapter"
        shutil.copytree(args.adapter, model)
        qa = QAConfig.load(model)
        qa = dataclasses.replace(qa, calibration=None)  # the fallback every model had before calibration
        qa.save(model)
        answering = served_by(args.served_by, model, Path(tmp) / "served") if args.served_by else model
        before = {name: answer_and_score(answering, src, Path(tmp), f"{name}-before",
                                         out / f"reliability-before-{name}.png") for name, src in SETS.items()}
        fitted = calibrate_model(str(model), args.fit_on)
        answering = served_by(args.served_by, model, Path(tmp) / "served") if args.served_by else model
        after = {name: answer_and_score(answering, src, Path(tmp), f"{name}-after",
                                        out / f"reliability-after-{name}.png") for name, src in SETS.items()}
        if args.write:
            shutil.copy(model / "qa_config.json", Path(args.adapter) / "qa_config.json")
    served = f"{args.served_by} (its default CPU variant, {before[next(iter(SETS))]['variant']})" if args.served_by \
        else "PyTorch fp32"
    results = {**stamp(args.name, default_threads()), "adapter": args.adapter, "served_by": served, "fit": fitted,
               "sets": SETS, "before": before, "after": after}
    lines = [f"# Calibration of {args.adapter}, {results['date']}", "", machine_line(results), "",
             f"Platt scaling fitted on {args.fit_on} ({fitted['questions']} questions, PyTorch fp32); answers by "
             f"serve-batch ({served}), scored by `qa-toolkit score` (ECE: 10 equal-width bins). 'score' is each line's probability "
             "that its answer (or its 'no answer') is exactly right.", "",
             "| set | questions | EM | F1 | no-answer ECE before | after | temperature-only (fit on the set) | "
             "score ECE before | after | contradicting lines before | after |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in SETS:
        b, a = before[name]["calibration"], after[name]["calibration"]
        lines.append(f"| {name} | {a['questions']} | {after[name]['exact']:.2f} | {after[name]['f1']:.2f} | "
                     f"{b['no_answer_ece']:.3f} | {a['no_answer_ece']:.3f} | "
                     f"{after[name]['temperature_only_no_answer_ece']:.3f} | {b['score_ece']:.3f} | "
                     f"{a['score_ece']:.3f} | {b['decisions_contradicting_probability']} | "
                     f"{a['decisions_contradicting_probability']} |")
    lines += ["", "Reliability diagrams: reliability-before-*.png, reliability-after-*.png beside this file."]
    write_results(args.results_dir, results, "\n".join(lines))
    print("\n".join(lines))
    if args.write:
        adapter = Path(args.adapter)
        shutil.copy(out / "reliability-after-slice-heldout.png", adapter.parent / "reports" / "reliability.png")
        write_card_section(adapter, card_section(results, lines))


def card_section(results: dict, table: list[str]) -> str:
    fit = results["fit"]["calibration"]
    return "\n".join([
        CARD_SECTION, "",
        f"`no_answer_probability` and each answer's `score` are calibrated by Platt scaling, fitted on "
        f"{fit['questions']} questions of {fit['fitted_on']} (the threshold-tuning articles) and stored in "
        "qa_config.json. \"No answer\" is decided as no_answer_probability > no_answer_threshold (the tuned threshold "
        "as a probability), so the number and the decision never contradict. Measured on held-out questions, answered "
        f"by {results['served_by']} ({results['date']}, bench/results/{results['name']}):", "", *table[6:-2], "",
        "The fit is for SQuAD 2.0's mix (about half the questions unanswerable): where every question has an answer "
        "(SQuAD v1.1) the no-answer probability runs high, a shift in the base rate rather than in the scores.", "",
        "Reliability diagram (7 held-out slice articles, after calibration): ../reports/reliability.png", ""])


if __name__ == "__main__":
    main()
