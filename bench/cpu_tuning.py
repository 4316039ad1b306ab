"""Per-engine tuning on this CPU, by measurement: batch size x token budget for each fast CPU variant, OpenVINO's
streams (latency mode, one stream over every thread, against throughput mode, N streams with N batches in
flight), and ONNX Runtime's thread spinning; then the top operations of each engine's profile (ONNX Runtime's
profiler, OpenVINO's per-layer counters), summed over the same batches.

    python bench/cpu_tuning.py --export models/minilm-squad2-lora/export [--samples 600] [--name cpu-tuning]

q/s counts questions answered per second over the held-out slice questions, logits and post-processing (what
serve-batch does after tokenising), on a second pass over the same batches. Writes bench/results/<name>/results.json and results.md.
"""

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np

from toolkit import data
from toolkit.benchmarking.results import machine_line, stamp, write_results
from toolkit.benchmarking.sets import SLICE_HELDOUT
from toolkit.calibration import from_config
from toolkit.config import QAConfig
from toolkit.features import build_features
from toolkit.inference import VARIANTS as REGISTRY
from toolkit.inference import BatchSettings, Engine, OrtPredictor
from toolkit.inference.padding import batches, pad_batch
from toolkit.modeling import load_tokenizer
from toolkit.options import DEFAULT_OPTIONS
from toolkit.postprocess import answer_all
from toolkit.runtime import default_threads

VARIANTS = ("int8", "ov-bf16", "ov-int8", "ov-int8-bf16")
BATCHES = (4, 8, 16, 32)
BUDGETS = (4096, 8192, 16384)


def questions_per_second(engine: Engine, examples, features) -> float:
    """Measured on a second pass: OpenVINO prepares its kernels per input shape on first sight, and a first pass
    over new batch shapes measured up to a third slower than the same pass repeated."""
    engine.run([e.context for e in examples], features)
    started = time.perf_counter()
    engine.run([e.context for e in examples], features)
    return len(examples) / (time.perf_counter() - started)


def sweep(onnx_dir: Path, variant: str, tokenizer, qa, examples, features, threads: int) -> list[dict]:
    predictor = REGISTRY[variant].predictor(onnx_dir, "cpu", threads)
    engine = Engine.single(predictor, tokenizer, qa)
    rows = []
    for size in BATCHES:
        for budget in BUDGETS:
            engine.settings = BatchSettings(size, budget)
            rows.append({"variant": variant, "batch_size": size, "max_batch_tokens": budget,
                         "questions_per_second": questions_per_second(engine, examples, features)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def openvino_streams(onnx_dir: Path, variant: str, streams: int, threads: int, features, pad_id: int,
                     settings: BatchSettings, n_questions: int, qa) -> float:
    """q/s with `streams` OpenVINO streams (throughput mode) and as many batches in flight (AsyncInferQueue)."""
    import openvino as ov

    file, precision = REGISTRY[variant].file, "bf16" if "bf16" in REGISTRY[variant].precision else "f32"
    hint = {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": str(streams)} if streams > 1 else {"PERFORMANCE_HINT": "LATENCY"}
    compiled = ov.Core().compile_model(str(onnx_dir / file), "CPU", {**hint, "INFERENCE_NUM_THREADS": str(threads),
                                                                     "INFERENCE_PRECISION_HINT": precision})
    names = [i.get_any_name() for i in compiled.inputs]
    lengths = [len(ids) for ids in features.inputs["input_ids"]]
    groups = batches(lengths, settings.batch_size, settings.max_batch_tokens)
    start, end = [None] * len(features), [None] * len(features)

    def done(request, rows):
        s, e = request.get_tensor("start_logits").data, request.get_tensor("end_logits").data
        for r, i in enumerate(rows):
            start[i], end[i] = s[r, :lengths[i]].copy(), e[r, :lengths[i]].copy()

    queue = ov.AsyncInferQueue(compiled, streams)
    queue.set_callback(done)
    for _ in range(2):  # the second pass is timed (see questions_per_second)
        started = time.perf_counter()
        for rows in groups:
            batch = pad_batch(features, rows, pad_id)
            queue.start_async({k: batch[k] for k in names}, rows)
        queue.wait_all()
        answer_all([""] * n_questions, features.example_index, features.offsets, start, end,
                   DEFAULT_OPTIONS.decoding(qa, from_config(qa.calibration)), features.words)
    return n_questions / (time.perf_counter() - started)


def ort_profile(path: Path, threads: int, features, pad_id: int, settings: BatchSettings) -> dict[str, float]:
    """Milliseconds per operator type over the batches, from ONNX Runtime's profiler."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.intra_op_num_threads = threads
    options.profile_file_prefix = "/tmp/qa-toolkit-ort-profile"
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    lengths = [len(ids) for ids in features.inputs["input_ids"]]
    for rows in batches(lengths, settings.batch_size, settings.max_batch_tokens):
        batch = pad_batch(features, rows, pad_id)
        session.run(None, {k: batch[k] for k in names})
    events = json.loads(Path(session.end_profiling()).read_text())
    totals = Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            totals[event["args"]["op_name"]] += event["dur"] / 1000.0
    return dict(totals)


def openvino_profile(onnx_dir: Path, variant: str, threads: int, features, pad_id: int,
                     settings: BatchSettings) -> dict[str, float]:
    """Milliseconds per executed layer type (its kernel in brackets) over the batches, from OpenVINO's counters."""
    import openvino as ov

    file, precision = REGISTRY[variant].file, "bf16" if "bf16" in REGISTRY[variant].precision else "f32"
    compiled = ov.Core().compile_model(str(onnx_dir / file), "CPU", {
        "PERF_COUNT": "YES", "INFERENCE_NUM_THREADS": str(threads), "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": precision})
    request = compiled.create_infer_request()
    names = [i.get_any_name() for i in compiled.inputs]
    lengths = [len(ids) for ids in features.inputs["input_ids"]]
    totals = Counter()
    for rows in batches(lengths, settings.batch_size, settings.max_batch_tokens):
        batch = pad_batch(features, rows, pad_id)
        request.infer({k: batch[k] for k in names})
        for layer in request.profiling_info:
            if layer.status == layer.Status.EXECUTED:
                totals[f"{layer.node_type} [{layer.exec_type}]"] += layer.real_time.total_seconds() * 1000.0
    return dict(totals)


def top(totals: dict[str, float], n: int = 8) -> list[dict]:
    whole = sum(totals.values())
    return [{"op": op, "ms": ms, "percent": 100.0 * ms / whole} for op, ms in Counter(totals).most_common(n)]


def markdown(results: dict) -> str:
    lines = [f"# {results['name']}", "", machine_line(results), "",
             f"{results['questions']} held-out slice questions ({results['windows']} windows), {results['threads']} "
             "threads, q/s of logits + post-processing. Batch size x token budget per variant:", "",
             "| variant | " + " | ".join(f"{b} / {t}" for b in BATCHES for t in BUDGETS) + " | best |",
             "|---|" + "---|" * (len(BATCHES) * len(BUDGETS) + 1)]
    for variant in results["variants"]:
        rows = [r for r in results["sweep"] if r["variant"] == variant]
        best = max(rows, key=lambda r: r["questions_per_second"])
        lines.append(f"| {variant} | " + " | ".join(f"{r['questions_per_second']:.1f}" for r in rows)
                     + f" | {best['batch_size']} / {best['max_batch_tokens']} |")
    lines += ["", "OpenVINO streams at batch 8 / 4096 (1 = latency mode, N = throughput mode with N batches in flight):", "",
              "| variant | streams | q/s |", "|---|---|---|"]
    lines += [f"| {r['variant']} | {r['streams']} | {r['questions_per_second']:.1f} |" for r in results["streams"]]
    lines += ["", "ONNX Runtime int8 at batch 8 / 4096, intra-op threads spinning between operators or not:", "",
              "| spinning | q/s |", "|---|---|"]
    lines += [f"| {r['spinning']} | {r['questions_per_second']:.1f} |" for r in results["spinning"]]
    for name, rows in results["profiles"].items():
        lines += ["", f"Top operators, {name}:", "", "| operator | ms | % |", "|---|---|---|"]
        lines += [f"| {r['op']} | {r['ms']:.0f} | {r['percent']:.1f} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--export", default="models/minilm-squad2-lora/export")
    parser.add_argument("--samples", type=int, default=600)
    parser.add_argument("--results-dir", default="bench/results")
    parser.add_argument("--name", default="cpu-tuning")
    args = parser.parse_args()
    onnx_dir = Path(args.export) / "onnx"
    threads = default_threads()
    qa, tokenizer = QAConfig.load(onnx_dir), load_tokenizer(str(onnx_dir))
    examples, _ = data.load_examples([SLICE_HELDOUT], cache_dir=data.default_cache_dir(), seed=42,
                                     limit=args.samples, default_split="validation")
    features = build_features(tokenizer, [e.question for e in examples], [e.context for e in examples], qa.features())
    variants = [v for v in VARIANTS if REGISTRY[v].unusable() is None]
    pad = tokenizer.pad_token_id
    results = {**stamp(args.name, threads), "questions": len(examples), "windows": len(features), "threads": threads,
               "variants": variants, "sweep": [], "streams": [], "spinning": [], "profiles": {}}
    for variant in variants:
        results["sweep"] += sweep(onnx_dir, variant, tokenizer, qa, examples, features, threads)
    default = BatchSettings(8, 4096)
    for variant in (v for v in variants if v.startswith("ov-")):
        for streams in (1, 2):
            qps = openvino_streams(onnx_dir, variant, streams, threads, features, pad, default, len(examples), qa)
            results["streams"].append({"variant": variant, "streams": streams, "questions_per_second": qps})
            print(json.dumps(results["streams"][-1]), flush=True)
    for spinning in (True, False):
        engine = Engine.single(OrtPredictor(onnx_dir / REGISTRY["int8"].file, "cpu", threads, "int8", spinning),
                               tokenizer, qa, settings=default)
        results["spinning"].append({"spinning": spinning, "questions_per_second": questions_per_second(engine, examples, features)})
    results["profiles"][f"ONNX Runtime int8 ({REGISTRY['int8'].file})"] = top(
        ort_profile(onnx_dir / REGISTRY["int8"].file, threads, features, pad, default))
    for variant in (v for v in ("ov-int8-bf16", "ov-bf16", "ov-int8") if v in variants):
        results["profiles"][f"OpenVINO {variant}"] = top(openvino_profile(onnx_dir, variant, threads, features, pad, default))
    print(write_results(args.results_dir, results, markdown(results)))
    print(np.round([r["questions_per_second"] for r in results["sweep"]], 1))


if __name__ == "__main__":
    main()
