"""Many adapters on one base vs merged models: peak RSS and q/s of serve-batch, torch and ONNX Runtime.

    python bench/adapters.py [--questions 600] [--name adapters-cpu]

Ten adapters: the shipped reference, two trained recipe adapters (models/compare, from bench/recipes.py)
and seven made from the reference by scaling its LoRA B matrices (distinct weights, distinct answers; for
memory and speed, not accuracy). Every row is one serve-batch process (2 threads); peak RSS from wait4.
The alternating file gives line i to adapter i % 10. Checked: every alternating line equals its adapter
served alone on the shared graph; the reference on the shared graph equals its merged ONNX model; torch
(PEFT) alternating equals ONNX alternating.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from toolkit.benchmarking.results import qa_command, stamp, write_results

ROOT = Path(__file__).resolve().parents[1]
QA = qa_command()
REFERENCE = ROOT / "models" / "minilm-squad-lora"
TRAINED = {"reference": REFERENCE / "adapter",
           "recipe-lora": ROOT / "models" / "compare" / "lora-all-r32-lr1e-3" / "adapter",
           "recipe-seed": ROOT / "models" / "compare" / "seed-lora-attn-r16-lr3e-4" / "adapter"}


def run(args: list[str]) -> dict:
    """One process; its wall seconds and peak RSS (MB)."""
    started = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read()
    if status != 0:
        raise SystemExit(f"failed: {' '.join(args)}\n{err[-2000:]}")
    summary = json.loads([line for line in err.splitlines() if line.startswith("{")][-1])
    return {"wall_seconds": time.perf_counter() - started, "peak_rss_mb": usage.ru_maxrss / 1024,
            "questions_per_second": summary["questions_per_second"], "lines": summary["lines"]}


def derived_adapters(work: Path) -> dict[str, Path]:
    from safetensors.numpy import load_file, save_file

    out = dict(TRAINED)
    weights = load_file(str(REFERENCE / "adapter" / "adapter_model.safetensors"))
    for k in range(1, 8):
        target = work / f"scaled-{k}"
        shutil.copytree(REFERENCE / "adapter", target, dirs_exist_ok=True)
        scale = 1.0 - 0.06 * k
        save_file({n: (w * scale if "lora_B" in n else w) for n, w in weights.items()},
                  str(target / "adapter_model.safetensors"), metadata={"format": "pt"})
        out[f"scaled-{k}"] = target
    return out


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--questions", type=int, default=600)
    parser.add_argument("--name", default="adapters-cpu")
    parser.add_argument("--work", default=str(ROOT / "models" / "bench-adapters"))
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    adapters = derived_adapters(work)
    names = list(adapters)
    spec = ",".join(f"{n}={p}" for n, p in adapters.items())
    merged = REFERENCE / "export"
    if not (merged / "onnx" / "model.onnx").exists():
        raise SystemExit(f"{merged}: export the reference first (make demo or qa-toolkit export --merge ...)")

    questions = work / "questions.jsonl"
    subprocess.run([*QA, "to-jsonl", f"squad-v1.1-dev?samples={args.questions}", str(questions)], check=True)
    lines = rows(questions)
    alternating = work / "alternating.jsonl"
    alternating.write_text("".join(json.dumps({**r, "adapter": names[i % len(names)]}) + "\n" for i, r in enumerate(lines)))
    reference_only = work / "reference.jsonl"
    reference_only.write_text("".join(json.dumps({**r, "adapter": "reference"}) + "\n" for r in lines))

    shared = work / "shared-export"
    if not shared.exists():
        subprocess.run([*QA, "export", "--adapters", spec, "--output-dir", str(shared),
                        "--eval-file", "squad-v1.1-train?samples=60", "--eval-samples", "60"], check=True)
    one = work / "shared-export-1"
    if not one.exists():
        subprocess.run([*QA, "export", "--adapters", f"reference={adapters['reference']}", "--output-dir", str(one),
                        "--eval-file", "squad-v1.1-train?samples=60", "--eval-samples", "60"], check=True)

    serve = [*QA, "serve-batch", "--threads", "2", "--device", "cpu"]
    cases = {
        "onnx merged, 1 model": [*serve, str(questions), "--model", str(merged / "onnx"), "--variant", "fp32"],
        "onnx shared base, 1 adapter": [*serve, str(reference_only), "--model", str(one / "onnx")],
        "onnx shared base, 10 adapters, reference only": [*serve, str(reference_only), "--model", str(shared / "onnx")],
        "onnx shared base, 10 adapters, alternating": [*serve, str(alternating), "--model", str(shared / "onnx")],
        "torch merged, 1 model": [*serve, str(questions), "--model", str(merged / "merged"), "--engine", "torch"],
        "torch PEFT, 1 adapter": [*serve, str(reference_only), "--adapters", f"reference={adapters['reference']}"],
        "torch PEFT, 10 adapters, alternating": [*serve, str(alternating), "--adapters", spec],
    }
    results = {}
    for label, command in cases.items():
        out = work / (label.replace(" ", "_").replace(",", "") + ".answers.jsonl")
        results[label] = run([*command, "-o", str(out)]) | {"output": str(out)}
        print(label, results[label], file=sys.stderr)

    # parity: every alternating line equals the same adapter alone on the shared graph; the reference's
    # lines also equal its merged ONNX model's
    alt = rows(Path(results["onnx shared base, 10 adapters, alternating"]["output"]))
    alone = {}
    for name in names:
        subset = work / f"alone-{name}.jsonl"
        subset.write_text("".join(json.dumps({**r, "adapter": name}) + "\n" for i, r in enumerate(lines)
                                  if i % len(names) == names.index(name)))
        out = work / f"alone-{name}.answers.jsonl"
        subprocess.run([*serve, str(subset), "--model", str(shared / "onnx"), "-o", str(out)], check=True,
                       stderr=subprocess.DEVNULL)
        alone[name] = iter(rows(out))
    key = ("answer", "best_span", "no_answer", "start", "end")
    same = sum(all(r[k] == next_r[k] for k in key) for r, next_r in ((r, next(alone[r["adapter"]])) for r in alt))
    merged_rows = rows(Path(results["onnx merged, 1 model"]["output"]))
    ref_shared = rows(Path(results["onnx shared base, 10 adapters, reference only"]["output"]))
    same_merged = sum(all(a[k] == b[k] for k in key) for a, b in zip(merged_rows, ref_shared))
    torch_alt = rows(Path(results["torch PEFT, 10 adapters, alternating"]["output"]))
    same_torch = sum(all(a[k] == b[k] for k in key) for a, b in zip(alt, torch_alt))
    score_diff = max(abs(a["score"] - b["score"]) for a, b in zip(merged_rows, ref_shared))

    base = {e: results[f"{e} merged, 1 model"] for e in ("onnx", "torch")}
    summary = {
        "questions": len(lines), "adapters": names, "threads": 2,
        "rows": {k: {kk: v[kk] for kk in ("questions_per_second", "peak_rss_mb", "wall_seconds")} for k, v in results.items()},
        "onnx_rss_10_vs_merged": results["onnx shared base, 10 adapters, alternating"]["peak_rss_mb"] / base["onnx"]["peak_rss_mb"],
        "torch_rss_10_vs_merged": results["torch PEFT, 10 adapters, alternating"]["peak_rss_mb"] / base["torch"]["peak_rss_mb"],
        "onnx_alternating_vs_single_adapter": results["onnx shared base, 10 adapters, alternating"]["questions_per_second"]
        / results["onnx shared base, 1 adapter"]["questions_per_second"],
        "torch_alternating_vs_single_adapter": results["torch PEFT, 10 adapters, alternating"]["questions_per_second"]
        / results["torch PEFT, 1 adapter"]["questions_per_second"],
        "onnx_shared_vs_merged_speed": results["onnx shared base, 1 adapter"]["questions_per_second"] / base["onnx"]["questions_per_second"],
        "alternating_equal_to_alone_lines": f"{same}/{len(alt)}",
        "reference_shared_equal_to_merged_lines": f"{same_merged}/{len(merged_rows)}",
        "reference_shared_vs_merged_max_score_diff": score_diff,
        "torch_alternating_equal_to_onnx_alternating_lines": f"{same_torch}/{len(alt)}",
        "export_manifest": json.loads((shared / "export_manifest.json").read_text())["adapters"],
    }
    summary = {**stamp(args.name, 2), **summary}
    table = ["| row | q/s | peak RSS MB |", "|---|---|---|"]
    table += [f"| {k} | {v['questions_per_second']:.1f} | {v['peak_rss_mb']:.0f} |" for k, v in summary["rows"].items()]
    table += ["", *(f"- {k}: {v}" for k, v in summary.items()
                    if k not in ("rows", "export_manifest", "adapters", "machine", "versions"))]
    write_results(ROOT / "bench" / "results", summary, "\n".join(table))
    print("\n".join(table))


if __name__ == "__main__":
    main()
