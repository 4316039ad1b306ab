"""serve-batch over SQuAD v1.1 dev (10,570 questions as JSONL), every engine/variant in one run, each
output file scored with the official metric, against the peers (transformers pipelines, toolkit.peers)
on the same questions, and with serve-batch's wall time split by stage.

    python bench/serve_squad_dev.py --export models/minilm-squad-lora/export [--samples N] [--peers ...]

Writes bench/results/<name>/results.json and results.md. Uses the same library calls as
`qa-toolkit to-jsonl`, `serve-batch` and `score`.
"""

import argparse
import json
from pathlib import Path

from toolkit import data, load
from toolkit.benchmarking.peers import PEERS, run_peer
from toolkit.benchmarking.results import machine_line, stamp, write_results
from toolkit.config import QAConfig
from toolkit.exporting.common import calibration_windows
from toolkit.inference import VARIANTS
from toolkit.modeling import load_tokenizer
from toolkit.runtime import default_threads
from toolkit.scoring import score_answer_file
from toolkit.serving import serve_batch

RUNS = ["fp32", "opt", "int8", "int8-u8", "ov-bf16", "ov-int8", "ov-int8-bf16", "torch-fp32"]  # those that
# cannot run here as gated are left out


STAGES = ("read", "checks", "tokenise", "infer", "postprocess", "format", "write", "other")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", required=True, help="export directory (merged/ + onnx/)")
    parser.add_argument("--source", default="squad-v1.1-dev")
    parser.add_argument("--samples", type=int, help="seeded subset (default: all questions)")
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated, or 'none'")
    parser.add_argument("--name", default="serve-squad-v1.1-dev")
    parser.add_argument("--results-dir", default="bench/results")
    args = parser.parse_args()

    work = Path(args.export) / "serve-bench"
    work.mkdir(parents=True, exist_ok=True)
    examples, _ = data.load_examples([args.source], cache_dir=data.default_cache_dir(), seed=42,
                                     limit=args.samples, default_split="validation")
    questions = work / "questions.jsonl"
    data.write_jsonl(examples, questions)
    references = data.references(examples)
    rows = []
    for variant in RUNS:
        entry = VARIANTS[variant]
        if entry.unusable() or entry.file and not (Path(args.export) / "onnx" / entry.file).exists():
            continue
        engine = "onnx" if entry.file else "torch"
        model = Path(args.export) / ("onnx" if entry.file else "merged")
        qa_engine = load(model, engine=engine, device="cpu", variant=variant)
        served = qa_engine.served().predictor.variant
        answers = work / f"answers-{served}.jsonl"
        print(f"{served}: {len(examples)} questions", flush=True)
        summary = serve_batch(qa_engine, str(questions), str(answers), progress=False)
        scores = score_answer_file(str(answers), references)
        forced = score_answer_file(str(answers), references, best_span=True)
        rows.append({"engine": engine, "variant": served, "provider": summary.provider,
                     "lines": summary.lines, "errors": summary.errors, "no_answer": summary.no_answer,
                     "seconds": summary.seconds, "questions_per_second": summary.questions_per_second,
                     "exact": scores["exact"], "f1": scores["f1"], "forced_exact": forced["exact"],
                     "forced_f1": forced["f1"], "stage_seconds": summary.stage_seconds})
        print(json.dumps(rows[-1]), flush=True)
    onnx_dir = Path(args.export) / "onnx"
    qa, tokenizer = QAConfig.load(onnx_dir), load_tokenizer(str(onnx_dir))
    peers = {}
    for kind in ([] if args.peers == "none" else args.peers.split(",")):
        print(f"peer {kind}: {len(examples)} questions", flush=True)
        calibration = calibration_windows(tokenizer, qa, "squad-v1.1-train", 128, 42) if kind == "pipeline-ov-int8" else []
        peers[kind] = run_peer(kind, onnx_dir, Path(args.export) / "merged", examples, qa, default_threads(), calibration)
        print(json.dumps(peers[kind]), flush=True)
    results = {**stamp(args.name, default_threads()), "source": args.source, "questions": len(examples),
               "rows": rows, "peers": peers}
    base = next(r for r in rows if r["engine"] == "torch")
    lines = [f"# serve-batch over {args.source} ({len(examples)} questions), {results['date']}", "",
             machine_line(results) + " EM/F1 scored from each output file; 'forced' ignores the no-answer threshold (SQuAD v1.1 has "
             "only answerable questions).", "",
             "| engine | variant | q/s | × torch | no-answer lines | EM | F1 | forced EM | forced F1 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['engine']} | {r['variant']} | {r['questions_per_second']:.1f} | "
                     f"{r['questions_per_second'] / base['questions_per_second']:.2f} | {r['no_answer']} | "
                     f"{r['exact']:.2f} | {r['f1']:.2f} | {r['forced_exact']:.2f} | {r['forced_f1']:.2f} |")
    ran = {k: p for k, p in peers.items() if "skipped" not in p}
    if peers:
        best = max(r["questions_per_second"] for r in rows)
        lines += ["", "Peers on the same questions (transformers pipeline, handle_impossible_answer=True; EM/F1 "
                  "with the pipeline's own no-answer rule):", "",
                  "| peer | q/s | serve-batch best ÷ peer | EM | F1 | note |", "|---|---|---|---|---|---|"]
        for k, p in peers.items():
            lines.append(f"| {k} | not run | | | | {p['skipped']} |" if k not in ran else
                         f"| {k} | {p['questions_per_second']:.1f} | {best / p['questions_per_second']:.2f} | "
                         f"{p['exact']:.2f} | {p['f1']:.2f} | {p['note']} |")
    lines += ["", "Where serve-batch's wall time goes (% of each run; read = reading and parsing lines, checks = "
              "token limits, format = answer lines as JSON):", "",
              "| variant | " + " | ".join(STAGES) + " | outside inference |", "|---|" + "---|" * (len(STAGES) + 1)]
    for r in rows:
        share = {k: 100 * r["stage_seconds"].get(k, 0.0) / r["seconds"] for k in STAGES}
        lines.append(f"| {r['variant']} | " + " | ".join(f"{share[k]:.1f}" for k in STAGES)
                     + f" | {100 - share['infer']:.1f} |")
    write_results(args.results_dir, results, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
