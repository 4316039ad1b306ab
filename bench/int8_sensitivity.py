"""Which nodes cost ONNX Runtime's dynamic int8 its answers, and what keeping them in fp32 buys back.

    python bench/int8_sensitivity.py --export RUN/export [--tune SPEC] [--check SPEC] [--keep 0,1,2,4,8]
        [--rank-questions 64] [--name int8-sensitivity-cpu]

ONNX Runtime's own lever (quantize_dynamic's nodes_to_exclude), ranked the way NNCF's accuracy control ranks
layers: starting from the export's int8 recipe (the fused graph, per channel, U8S8), each quantised node is kept in
fp32 on its own and the logit error against the fp32 graph is measured on tuning windows; then the k nodes whose
exclusion removed the most error are kept in fp32 together, for each k of --keep, and each model is gated against
PyTorch on the tuning questions. The held-out questions are only read at the end: the chosen k (the smallest whose
gate passes on the tuning questions, else the best) and k=0 are gated on two disjoint halves of them.
Writes bench/results/<name>/results.json and results.md.
"""

import argparse
import json
import random
import shutil
import time
from pathlib import Path

import numpy as np

from toolkit import data
from toolkit.benchmarking.results import machine_line, stamp, write_results
from toolkit.benchmarking.sets import SLICE_HELDOUT, SLICE_TUNE
from toolkit.exporting.parity import METRICS, gate, parity, reference_run
from toolkit.exporting.variants import QUANTIZED_OPS, quantize_int8
from toolkit.features import build_features
from toolkit.inference import VARIANTS, BatchSettings, Engine, OrtPredictor, TorchPredictor
from toolkit.inference.padding import feature_logits
from toolkit.modeling import load_for_inference
from toolkit.runtime import default_threads


def quantised_nodes(fused: Path) -> list[str]:
    """The names of the fused graph's nodes that the int8 recipe quantises, in graph order."""
    import onnx

    graph = onnx.load(str(fused), load_external_data=False).graph
    return [node.name for node in graph.node if node.op_type in QUANTIZED_OPS]


def logit_error(path: Path, windows, pad_id: int, reference: tuple) -> float:
    """Mean |Δ| of the start and end logits of one int8 model against the fp32 graph, over the windows' tokens."""
    start, end = feature_logits(OrtPredictor(path, "cpu", default_threads()), windows, pad_id, BatchSettings.for_device("cpu"))
    return float(np.mean([np.abs(a - b).mean() for got, ref in ((start, reference[0]), (end, reference[1]))
                          for a, b in zip(got, ref)]))


def rank(fused: Path, work: Path, windows, pad_id: int, log) -> list[dict]:
    """Every quantised node with the logit error of the int8 model that keeps it alone in fp32, most helpful first."""
    reference = feature_logits(OrtPredictor(fused, "cpu", default_threads()), windows, pad_id, BatchSettings.for_device("cpu"))
    target = work / "candidate.onnx"
    quantize_int8(fused, target, signed_weights=True)
    full = logit_error(target, windows, pad_id, reference)
    rows = []
    for node in quantised_nodes(fused):
        quantize_int8(fused, target, signed_weights=True, keep_fp32=(node,))
        rows.append({"node": node, "error": logit_error(target, windows, pad_id, reference)})
        log(f"{node}: {rows[-1]['error']:.4f} (all quantised: {full:.4f})")
    return [{**row, "removed": full - row["error"]} for row in sorted(rows, key=lambda r: r["error"])]


def against_torch(loaded: tuple, examples: list) -> tuple:
    """(features, PyTorch's reference run) of these questions: what every int8 model is gated against."""
    model, tokenizer, qa = loaded
    features = build_features(tokenizer, [e.question for e in examples], [e.context for e in examples], qa.features())
    return features, reference_run(Engine.single(TorchPredictor(model), tokenizer, qa, settings=BatchSettings()), examples,
                                   features)


def gated(path: Path, loaded: tuple, examples: list, torch_run: tuple, max_drop: float) -> dict:
    """One int8 model against PyTorch on these questions: the parity result with its gate verdict."""
    _, tokenizer, qa = loaded
    features, reference = torch_run
    engine = Engine.single(OrtPredictor(path, "cpu", default_threads()), tokenizer, qa,
                           settings=VARIANTS["int8"].batch_settings("cpu"))
    result = parity(reference, engine, examples, features, max_drop=max_drop)
    result["verdict"], result["reason"] = gate(result, max_drop)
    return {k: result[k] for k in (*METRICS, "intervals", "verdict", "reason", "answer_agreement", "span_agreement",
                                   "questions", "questions_per_second")}


def questions(spec: str, seed: int) -> list:
    return data.load_examples([spec], cache_dir=data.default_cache_dir(), seed=seed, limit=None,
                              default_split="validation")[0]


def halves(examples: list, seed: int) -> list[list]:
    order = random.Random(seed).sample(range(len(examples)), len(examples))
    half = len(order) // 2
    return [[examples[i] for i in sorted(part)] for part in (order[:half], order[half:2 * half])]


def change(row: dict, key: str) -> str:
    low, high = row["intervals"][key]
    return f"{row[key]:+.2f} [{low:+.2f}, {high:+.2f}]"


def markdown(r: dict) -> str:
    head = ("| fp32 nodes | set | verdict | agreement % | ΔEM [95 %] | ΔF1 [95 %] | best-span ΔEM | best-span ΔF1 "
            "| int8 q/s |")
    lines = [f"# ONNX Runtime int8: the nodes worth keeping in fp32 ({r['date']})", "", machine_line(r), "",
             f"Export: `{r['export']}` (adapter `{r['adapter']}`). Ranking on {r['rank_windows']} windows ({r['rank_questions']} questions) of "
             f"`{r['tune']}`; gate limit {r['max_drop']} points, each change with its 95 % paired-bootstrap interval.",
             "", "Most helpful nodes to keep in fp32 (mean |Δlogit| of the int8 model keeping only that node; "
             f"all quantised: {r['all_quantised_error']:.4f}):", "", "| node | error | removed |", "|---|---|---|"]
    lines += [f"| {row['node']} | {row['error']:.4f} | {row['removed']:+.4f} |" for row in r["ranking"][:10]]
    lines += ["", head, "|" + "---|" * 9]
    for row in r["gates"]:
        lines.append(f"| {row['keep']} | {row['set']} | {row['verdict']} | {row['answer_agreement']:.2f} | "
                     f"{change(row, 'delta_exact')} | {change(row, 'delta_f1')} | {change(row, 'forced_delta_exact')} | "
                     f"{change(row, 'forced_delta_f1')} | {row['questions_per_second']:.1f} |")
    lines += ["", f"Chosen: keep {r['chosen']} node(s) in fp32: {', '.join(r['kept']) or 'none'}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", required=True, help="export directory (merged/ + onnx/ with the fused graph)")
    parser.add_argument("--tune", default=SLICE_TUNE, help="questions the ranking and the choice of k may see")
    parser.add_argument("--check", default=SLICE_HELDOUT, help="held-out questions, read once at the end")
    parser.add_argument("--keep", default="0,1,2,4,8", help="comma list of how many nodes to keep in fp32")
    parser.add_argument("--rank-questions", type=int, default=64)
    parser.add_argument("--max-drop", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--name", default="int8-sensitivity-cpu")
    parser.add_argument("--results-dir", default="bench/results")
    args = parser.parse_args()
    export = Path(args.export)
    fused = export / "onnx" / VARIANTS["opt"].file
    if not fused.exists():
        raise SystemExit(f"{fused} not found: export with --variants fp32,opt,int8")
    work = Path(args.results_dir) / args.name / "work"
    work.mkdir(parents=True, exist_ok=True)
    loaded = load_for_inference(export / "merged")
    tokenizer, qa = loaded[1], loaded[2]
    tune = questions(args.tune, args.seed)
    log = lambda message: print(message, flush=True)  # noqa: E731
    sample = random.Random(args.seed).sample(tune, min(args.rank_questions, len(tune)))
    windows = build_features(tokenizer, [e.question for e in sample], [e.context for e in sample], qa.features())
    started = time.perf_counter()
    ranking = rank(fused, work, windows, tokenizer.pad_token_id, log)
    results = {**stamp(args.name, default_threads()), "export": str(export), "tune": args.tune, "check": args.check,
               "adapter": json.loads((export / "export_manifest.json").read_text())["source"],
               "rank_windows": len(windows), "rank_questions": len(sample), "max_drop": args.max_drop, "ranking": ranking,
               "all_quantised_error": ranking[0]["error"] + ranking[0]["removed"],
               "ranking_seconds": time.perf_counter() - started, "gates": []}
    models, tune_run = {}, against_torch(loaded, tune)
    for keep in sorted({0, *(int(k) for k in args.keep.split(","))}):  # k=0 too: the held-out halves compare with it
        models[keep] = work / f"keep{keep}.onnx"
        quantize_int8(fused, models[keep], signed_weights=True, keep_fp32=tuple(row["node"] for row in ranking[:keep]))
        results["gates"].append({"keep": keep, "set": "tune", **gated(models[keep], loaded, tune, tune_run,
                                                                      args.max_drop)})
        log(f"keep {keep}: {results['gates'][-1]['verdict']} {results['gates'][-1]['reason'] or ''}")
    passing = [row["keep"] for row in results["gates"] if row["verdict"] == "pass"]
    chosen = min(passing) if passing else max(results["gates"], key=lambda row: row["delta_f1"])["keep"]
    results.update(chosen=chosen, kept=[row["node"] for row in ranking[:chosen]])
    for n, part in enumerate(halves(questions(args.check, args.seed), args.seed), start=1):
        part_run = against_torch(loaded, part)
        for keep in sorted({0, chosen}):
            results["gates"].append({"keep": keep, "set": f"held-out half {n}",
                                     **gated(models[keep], loaded, part, part_run, args.max_drop)})
    shutil.rmtree(work)
    write_results(args.results_dir, results, markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
