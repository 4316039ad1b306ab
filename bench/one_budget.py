"""Models continued on one training budget: each run continues a shipped adapter (`train --init-adapter`) on the
same data mix for about the same training time on the same box; this serves every run's export and the export of
the adapter it continued, scores both, and puts what the budget bought side by side.

    python bench/one_budget.py --run models/budget/minilm --run models/budget/mpnet --v11-samples 600 \\
        --name one-budget-xeon-amx

A run's export is RUN/export; the adapter it continued must have one beside it (ADAPTER/../export), as
`qa-toolkit export --merge --adapter ...` makes them. Training time is the run manifest's, evaluations excluded.
Sets: the 7 held-out SQuAD 2.0 slice articles (tuned threshold) and SQuAD v1.1 dev without the 19 training
articles (best span). Writes bench/results/<name>/results.json and results.md.
"""

import argparse
import json
from pathlib import Path

from toolkit.benchmarking.results import machine_line, stamp, write_results
from toolkit.benchmarking.served import held_out_sets, serve_and_score, work_dir
from toolkit.runtime import default_threads


def exports(run: Path) -> tuple[dict, Path, Path]:
    """The run's manifest, the export it continued from and its own export; a clear error where one is missing."""
    manifest = json.loads((run / "manifest.json").read_text())
    if not manifest.get("init_adapter"):
        raise SystemExit(f"{run} did not continue an adapter (no --init-adapter): nothing to compare it with")
    before, after = Path(manifest["init_adapter"]["path"]).parent / "export", run / "export"
    for export in (before, after):
        if not (export / "onnx").is_dir():
            raise SystemExit(f"{export}: no export; make it with `qa-toolkit export --merge --adapter "
                             f"{export.parent / 'adapter'}`")
    return manifest, before, after


def row(name: str, timing: dict, before: dict, after: dict) -> str:
    b, a = before["slice-heldout"], after["slice-heldout"]
    return (f"| {name} | {timing['global_step']:,} | {timing['train_seconds_excluding_eval'] / 60:.1f} | "
            f"{timing['seconds_per_step']:.2f} | {b['exact']:.2f} / {b['f1']:.2f} | **{a['exact']:.2f} / {a['f1']:.2f}** "
            f"| {a['f1'] - b['f1']:+.2f} | {b['no_answer_auc']:.1f} -> {a['no_answer_auc']:.1f} | "
            f"{before['v1.1-dev-29']['f1']:.2f} -> {after['v1.1-dev-29']['f1']:.2f} | {after['variant']} | "
            f"{a['questions_per_second']:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, type=Path, help="a finished run directory")
    parser.add_argument("--v11-samples", type=int, help="seeded subset of the 7,532 v1.1 dev questions")
    parser.add_argument("--name", default="one-budget")
    parser.add_argument("--results-dir", default="bench/results")
    args = parser.parse_args()

    sets, work = held_out_sets(args.v11_samples), work_dir(args.name)
    runs = {}
    for run in args.run:
        manifest, before, after = exports(run)
        runs[run.name] = {"run": str(run), "manifest_timing": manifest["timing"], "config": manifest["config"],
                          "before": serve_and_score(before, f"{run.name}-before", sets, work),
                          "after": serve_and_score(after, f"{run.name}-after", sets, work)}
    results = {**stamp(args.name, default_threads()), "sets": sets, "runs": runs}
    lines = [f"# Continued on one budget, {results['date']}", "", machine_line(results), "",
             "Each run continues its shipped adapter on the same data for about the same training time on this box "
             "(evaluations excluded); each export's default CPU variant, served with serve-batch one after the other on "
             "the same questions, output scored with `qa-toolkit score` (slice: tuned threshold; v1.1: best span).", "",
             "| run | steps | training min | s/step | held-out EM / F1 before | after | ΔF1 | no-answer AUC | "
             "v1.1 best-span F1 | variant | q/s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in runs.items():
        lines.append(row(name, r["manifest_timing"], r["before"], r["after"]))
    write_results(args.results_dir, results, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
