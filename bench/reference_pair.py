"""The fast and the accurate reference side by side, from one run: each export's default (fastest gated) CPU variant
answers the same held-out questions with serve-batch, each output file is scored with `qa-toolkit score`, and
the questions per second are measured on the same box, one model after the other.

    python bench/reference_pair.py --fast models/minilm-squad2-lora/export --accurate models/mpnet-squad2-lora/export

--distilled adds a third row: a fast model distilled from the accurate one (`train --teacher`), in the same run.

Sets: the 7 held-out SQuAD 2.0 slice articles (tuned threshold) and SQuAD v1.1 dev without the 19 training
articles (best span). Writes bench/results/<name>/results.json and results.md.
"""

import argparse
from pathlib import Path

from toolkit.benchmarking.results import machine_line, stamp, write_results
from toolkit.benchmarking.served import held_out_sets, serve_and_score, work_dir
from toolkit.runtime import default_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", required=True, help="the MiniLM export directory (merged/ + onnx/)")
    parser.add_argument("--accurate", required=True, help="the MPNet export directory")
    parser.add_argument("--distilled", help="optional: the export of a fast model distilled from the accurate one")
    parser.add_argument("--v11-samples", type=int, help="seeded subset of the 7,532 v1.1 dev questions")
    parser.add_argument("--name", default="reference-pair")
    parser.add_argument("--results-dir", default="bench/results")
    args = parser.parse_args()

    sets, work = held_out_sets(args.v11_samples), work_dir(args.name)
    exports = {"fast": args.fast, **({"distilled": args.distilled} if args.distilled else {}), "accurate": args.accurate}
    rows = {name: serve_and_score(Path(export), name, sets, work) for name, export in exports.items()}
    results = {**stamp(args.name, default_threads()), "sets": sets, "rows": rows}
    lines = [f"# The fast and the accurate reference, {results['date']}", "", machine_line(results), "",
             "serve-batch with each export's default CPU variant, one model after the other on the same questions; "
             "EM/F1 from `qa-toolkit score` on the output files (slice: tuned threshold; v1.1: best span).", "",
             "| model | variant | slice q/s | slice EM | slice F1 | HasAns F1 | no-answer AUC | no-answer ECE | "
             "v1.1 q/s | v1.1 EM | v1.1 F1 |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        s, v = r["slice-heldout"], r["v1.1-dev-29"]
        lines.append(f"| {name} ({r['export']}) | {r['variant']} | {s['questions_per_second']:.1f} | {s['exact']:.2f} | "
                     f"{s['f1']:.2f} | {s['HasAns_f1']:.2f} | {s['no_answer_auc']:.2f} | {s['no_answer_ece']:.3f} | "
                     f"{v['questions_per_second']:.1f} | {v['exact']:.2f} | {v['f1']:.2f} |")
    fast, accurate = rows["fast"]["slice-heldout"], rows["accurate"]["slice-heldout"]
    lines += ["", f"Accurate vs fast: {accurate['f1'] - fast['f1']:+.2f} F1 on the slice, "
              f"{fast['questions_per_second'] / accurate['questions_per_second']:.1f}x the cost per question."]
    if args.distilled:
        distilled = rows["distilled"]["slice-heldout"]
        lines.append(f"Distilled vs fast: {distilled['f1'] - fast['f1']:+.2f} F1 and {distilled['exact'] - fast['exact']:+.2f} "
                     f"EM on the slice, {rows['distilled']['v1.1-dev-29']['f1'] - rows['fast']['v1.1-dev-29']['f1']:+.2f} "
                     "best-span F1 on v1.1.")
    write_results(args.results_dir, results, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
