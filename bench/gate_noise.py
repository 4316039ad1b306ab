"""Does the parity gate's verdict survive a second sample? Each variant of an export gated on disjoint samples of
the same size from one source, against PyTorch fp32 on the same questions: every change with its 95 % paired
bootstrap interval, the verdict, and, where the interval holds both sides of the limit, about how many questions
would decide it.

    python bench/gate_noise.py --export RUN/export --variants int8,ov-int8 [--source SPEC] [--samples 300]
        [--splits 2] [--max-drop 1.0] [--name gate-noise-cpu]

Writes bench/results/<name>/results.json and results.md.
"""

import argparse
import json
import random
from pathlib import Path

from toolkit import data
from toolkit.benchmarking.results import machine_line, stamp, write_results
from toolkit.benchmarking.sets import SLICE_HELDOUT
from toolkit.exporting.parity import METRICS, gate, parity, reference_run
from toolkit.features import build_features
from toolkit.inference import VARIANTS, BatchSettings, Engine, TorchPredictor
from toolkit.modeling import load_for_inference
from toolkit.runtime import default_threads


def disjoint_samples(source: str, *, samples: int, splits: int, seed: int) -> list[list]:
    examples, _ = data.load_examples([source], cache_dir=data.default_cache_dir(), seed=seed, limit=None,
                                     default_split="validation")
    if samples * splits > len(examples):
        raise SystemExit(f"{source} holds {len(examples)} questions, fewer than {splits} x {samples}")
    order = random.Random(seed).sample(range(len(examples)), samples * splits)
    return [[examples[i] for i in sorted(order[k * samples:(k + 1) * samples])] for k in range(splits)]


def gate_split(export: Path, loaded: tuple, variants: list[str], examples: list, *, max_drop: float) -> dict:
    """Each variant against PyTorch (loaded: the merged model, tokenizer and QAConfig) on one sample."""
    model, tokenizer, qa = loaded
    features = build_features(tokenizer, [e.question for e in examples], [e.context for e in examples], qa.features())
    torch_engine = Engine.single(TorchPredictor(model), tokenizer, qa, settings=BatchSettings())
    reference = reference_run(torch_engine, examples, features)
    rows = {}
    for name in variants:
        variant = VARIANTS[name]
        predictor = variant.predictor(export / "onnx", "cpu", default_threads())
        engine = Engine.single(predictor, tokenizer, qa, settings=variant.batch_settings("cpu"))
        result = parity(reference, engine, examples, features, max_drop=max_drop)
        verdict, _ = gate(result, max_drop)
        rows[name] = {**{k: result[k] for k in (*METRICS, "intervals", "undecided", "answer_agreement",
                                                 "span_agreement")},
                      "verdict": verdict}
    return rows


def change(row: dict, key: str) -> str:
    low, high = row["intervals"][key]
    return f"{row[key]:+.2f} [{low:+.2f}, {high:+.2f}]"


def markdown(r: dict) -> str:
    lines = [f"# Parity gate on {r['splits']} disjoint samples of {r['samples']} questions ({r['date']})", "",
             machine_line(r), "", f"Source: `{r['source']}`; the export of `{r['adapter']}`; limit {r['max_drop']} points.", "",
             "| variant | sample | verdict | ΔEM [95 %] | ΔF1 [95 %] | best-span ΔEM | best-span ΔF1 | undecided: ~questions "
             "to decide |", "|---|---|---|---|---|---|---|---|"]
    for name in r["variants"]:
        for k, split in enumerate(r["results"]):
            row = split[name]
            unsure = ", ".join(f"{label} {n}" for label, n in (row["undecided"] or {}).items()) or "decided"
            lines.append(f"| {name} | {k + 1} | {row['verdict']} | {change(row, 'delta_exact')} | "
                         f"{change(row, 'delta_f1')} | {change(row, 'forced_delta_exact')} | "
                         f"{change(row, 'forced_delta_f1')} | {unsure} |")
    same = {name: len({split[name]["verdict"] for split in r["results"]}) == 1 for name in r["variants"]}
    lines += ["", "Same verdict on every sample: " + ", ".join(f"{n} {'yes' if s else 'NO'}" for n, s in same.items()) + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", required=True, help="export directory (merged/ + onnx/)")
    parser.add_argument("--variants", required=True, help="comma list of exported CPU variants")
    parser.add_argument("--source", default=SLICE_HELDOUT)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--splits", type=int, default=2)
    parser.add_argument("--max-drop", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--name", default="gate-noise-cpu")
    parser.add_argument("--results-dir", default="bench/results")
    args = parser.parse_args()
    variants = args.variants.split(",")
    export = Path(args.export)
    loaded = load_for_inference(export / "merged")  # once: every sample is scored against the same model
    adapter = json.loads((export / "export_manifest.json").read_text())["source"]
    results = {**stamp(args.name, default_threads()), "export": str(export), "adapter": adapter, "source": args.source,
               "samples": args.samples, "splits": args.splits, "max_drop": args.max_drop, "variants": variants,
               "results": [gate_split(export, loaded, variants, split, max_drop=args.max_drop)
                           for split in disjoint_samples(args.source, samples=args.samples, splits=args.splits,
                                                            seed=args.seed)]}
    write_results(args.results_dir, results, markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
