"""PyTorch vs ONNX Runtime: latency, throughput, memory, size and accuracy, measured side by side.

Every variant sees the same windows. Latency batches and accuracy chunks are interleaved across the
variants (rotating who goes first) so that machine drift hits them alike. Peak memory is measured
per variant in a fresh process, so one variant's allocations never hide another's.
"""

import json
import multiprocessing
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from toolkit import data as data_mod
from toolkit.config import QAConfig
from toolkit.modeling import encoder_flops, matmul_flops_per_second
from toolkit.engine import (ONNX_FILES, BatchSettings, OrtPredictor, QAEngine, TorchPredictor, cuda_available,
                            default_threads, feature_logits, pad_batch)
from toolkit.metrics import squad_scores
from toolkit.peers import PEERS, calibration_windows, run_peer
from toolkit.postprocess import answer_all
from toolkit.train import package_versions, peak_rss_mb

VARIANTS = ("torch", "torch-fp16", "onnx-fp32", "onnx-opt", "onnx-int8", "onnx-int8-u8", "onnx-fp16")
GPU_ONLY = {"torch-fp16", "onnx-fp16"}


class BenchError(ValueError):
    """A benchmark that cannot run as asked."""


@dataclass
class BenchConfig:
    model: str  # an export directory (with merged/ and onnx/) or its onnx/ directory
    eval_file: str
    name: str = "latest"
    results_dir: str = "bench/results"
    variants: list[str] = field(default_factory=lambda: ["torch", "onnx-fp32", "onnx-opt", "onnx-int8", "onnx-int8-u8"])
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32])
    seq_lens: list[str] = field(default_factory=lambda: ["real", "384"])
    latency_batches: int = 20  # timed batches per (variant, batch size, length)
    warmup_batches: int = 3
    eval_samples: int | None = None
    accuracy_batch_size: int | None = None  # default: the serving default of the device
    threads: int | None = None
    peers: list[str] = field(default_factory=lambda: list(PEERS))  # toolkit.peers: the ways to serve without us
    calibration_file: str = "squad-v1.1-train"  # training questions whose windows calibrate the int8 peer
    calibration_samples: int = 128
    seed: int = 42
    cache_dir: str | None = None


def locate(model: str) -> tuple[Path, Path]:
    """(onnx dir, torch model dir) of an export directory or of its onnx/ directory."""
    root = Path(model)
    if not root.is_dir():
        raise BenchError(f"model directory not found: {model}")
    onnx_dir = root / "onnx" if (root / "onnx").is_dir() else root
    torch_dir = onnx_dir.parent / "merged"
    if not (onnx_dir / ONNX_FILES["fp32"]).exists():
        raise BenchError(f"{model}: no ONNX export found (run `qa-toolkit export` first)")
    if not torch_dir.is_dir():
        raise BenchError(f"{model}: no merged/ PyTorch model beside the ONNX files to compare with")
    return onnx_dir, torch_dir


def make_predictor(variant: str, onnx_dir: Path, torch_dir: Path, threads: int):
    """A predictor for a bench variant name; torch threads are set by the caller's process."""
    if variant in ("torch", "torch-fp16"):
        from toolkit.modeling import load_for_inference

        model = load_for_inference(torch_dir)[0]
        return TorchPredictor(model, "cuda" if variant == "torch-fp16" or cuda_available() else "cpu",
                              fp16=variant == "torch-fp16")
    kind = variant.removeprefix("onnx-")
    return OrtPredictor(onnx_dir / ONNX_FILES[kind], "cuda" if kind == "fp16" else "cpu", threads, kind)


def file_size(variant: str, onnx_dir: Path, torch_dir: Path) -> int:
    if variant.startswith("torch"):
        return sum(p.stat().st_size for p in torch_dir.glob("*.safetensors"))
    return (onnx_dir / ONNX_FILES[variant.removeprefix("onnx-")]).stat().st_size


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def _memory_probe(args: tuple) -> dict:
    """Run in a fresh process: load one variant, answer a fixed workload, report peak RSS above baseline."""
    variant, onnx_dir, torch_dir, threads, features_inputs, pad_id = args
    import torch

    torch.set_num_threads(threads)
    baseline = peak_rss_mb()
    predictor = make_predictor(variant, Path(onnx_dir), Path(torch_dir), threads)
    from toolkit.features import Features

    features = Features(inputs=features_inputs, example_index=[0] * len(features_inputs["input_ids"]), offsets=[])
    feature_logits(predictor, features, pad_id, BatchSettings.for_device(predictor.device))
    peak = peak_rss_mb()
    return {"peak_rss_mb": peak, "above_baseline_mb": peak - baseline}


def in_fresh_process(fn, args):
    """fn(args) in a spawned process: its imports, allocations and peak RSS are its own."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(fn, (args,))


def machine_info(threads: int) -> dict:
    import psutil

    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "physical_cores": psutil.cpu_count(logical=False), "logical_cores": psutil.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2 ** 30, 1), "threads": threads,
            "cuda": cuda_available()}
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        info["cpu"] = names[0] if names else ""
    except OSError:
        pass
    if info["cuda"]:
        import torch

        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def accuracy_pass(predictors: dict, engine_qa: QAConfig, examples, features, pad_id: int, chunk: int,
                   batch_size: int | None) -> dict:
    """All eval windows through every variant, chunk by chunk in rotating order; answers and timings."""
    from toolkit.features import Features

    names = list(predictors)
    seconds = {n: 0.0 for n in names}
    start = {n: [None] * len(features) for n in names}
    end = {n: [None] * len(features) for n in names}
    settings = BatchSettings.for_device("cuda" if cuda_available() else "cpu", batch_size)
    for c, first in enumerate(range(0, len(features), chunk)):
        rows = list(range(first, min(first + chunk, len(features))))
        part = Features(inputs={k: [v[i] for i in rows] for k, v in features.inputs.items()},
                        example_index=[0] * len(rows), offsets=[])
        for n in names[c % len(names):] + names[:c % len(names)]:
            t = time.perf_counter()
            s, e = feature_logits(predictors[n], part, pad_id, settings)
            seconds[n] += time.perf_counter() - t
            for r, i in enumerate(rows):
                start[n][i], end[n][i] = s[r], e[r]
    out = {}
    refs = data_mod.references(examples)
    contexts = [e.context for e in examples]
    for n in names:
        t = time.perf_counter()
        answers = answer_all(contexts, features.example_index, features.offsets, start[n], end[n],
                             engine_qa.n_best, engine_qa.max_answer_length, engine_qa.null_threshold)
        seconds[n] += time.perf_counter() - t
        scores = squad_scores({e.id: a.prediction for e, a in zip(examples, answers)}, refs)
        out[n] = {"seconds": seconds[n], "questions_per_second": len(examples) / seconds[n],
                  "answers": [a.prediction for a in answers], "spans": [a.text for a in answers], **scores}
    return out


def _latency(predictors: dict, features, pad_id: int, batch_size: int, seq: str, cfg: BenchConfig,
             config) -> dict:
    names = list(predictors)
    needed = (cfg.warmup_batches + cfg.latency_batches) * batch_size
    rows = [i % len(features) for i in range(needed)]
    batches = [rows[i:i + batch_size] for i in range(0, needed, batch_size)]
    times = {n: [] for n in names}
    flops = []
    for b, batch_rows in enumerate(batches):
        batch = pad_batch(features, batch_rows, pad_id, None if seq == "real" else int(seq))
        if b >= cfg.warmup_batches:
            flops.append(batch_size * encoder_flops(config, batch["input_ids"].shape[1]))
        for n in names[b % len(names):] + names[:b % len(names)]:
            t = time.perf_counter()
            predictors[n].logits(batch)
            if b >= cfg.warmup_batches:
                times[n].append(time.perf_counter() - t)
    out = {}
    for n in names:
        total = sum(times[n])
        out[n] = {"p50_ms": 1000 * percentile(times[n], 50), "p95_ms": 1000 * percentile(times[n], 95),
                  "mean_ms": 1000 * statistics.fmean(times[n]),
                  "windows_per_second": batch_size * len(times[n]) / total,
                  "achieved_flops": sum(flops) / total}
    return out


def _onnx_matmul_rate(kind: str, threads: int, n: int = 1024, repeats: int = 10) -> float:
    """Dense n x n x n matmul rate of ONNX Runtime's CPU kernels: MatMul ("fp32") or MatMulInteger with
    u8 activations and s8 ("u8s8") or u8 ("u8u8") weights, the two int8 variants' kernels."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if kind == "fp32":
        a, b = rng.standard_normal((n, n), np.float32), rng.standard_normal((n, n), np.float32)
        node, out_type = helper.make_node("MatMul", ["a", "b"], ["y"]), TensorProto.FLOAT
    else:
        a = rng.integers(0, 255, (n, n), dtype=np.uint8)
        b = rng.integers(-127, 127, (n, n), dtype=np.int8) if kind == "u8s8" else rng.integers(0, 255, (n, n), dtype=np.uint8)
        node, out_type = helper.make_node("MatMulInteger", ["a", "b"], ["y"]), TensorProto.INT32
    graph = helper.make_graph([node], "mm", [helper.make_tensor_value_info("a", helper.np_dtype_to_tensor_dtype(a.dtype), [n, n])],
                              [helper.make_tensor_value_info("y", out_type, [n, n])], [numpy_helper.from_array(b, "b")])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(),
                                   options, providers=["CPUExecutionProvider"])
    session.run(None, {"a": a})
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        session.run(None, {"a": a})
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def machine_peaks(threads: int) -> dict:
    """This machine's dense matmul rates (multiply-add = 2 ops) at each precision, as the runtimes reach
    them: fp32 and int8 through ONNX Runtime, fp32 and bf16 through torch; whether bf16 is native here."""
    import torch

    from toolkit.modeling import cpu_flags

    flags = cpu_flags()
    return {"fp32_torch": matmul_flops_per_second(threads), "fp32_onnxruntime": _onnx_matmul_rate("fp32", threads),
            "int8_u8s8_onnxruntime": _onnx_matmul_rate("u8s8", threads),
            "int8_u8u8_onnxruntime": _onnx_matmul_rate("u8u8", threads),
            "bf16_torch": matmul_flops_per_second(threads, dtype=torch.bfloat16),
            "bf16_native": bool({"avx512_bf16", "amx_bf16"} & flags) or cuda_available(),
            "int8_vnni": bool({"avx512_vnni", "avx_vnni"} & flags)}


def peak_for(variant: str, peaks: dict) -> float:
    """The peak a variant's matmuls can reach: the integer kernel's rate for int8 (u8 weights for the
    -u8 variants, s8 otherwise), fp32 for the others."""
    if "int8" in variant:
        return peaks["int8_u8u8_onnxruntime" if variant.endswith("u8") else "int8_u8s8_onnxruntime"]
    return peaks["fp32_torch"]


def run_bench(cfg: BenchConfig, log=lambda m: print(m, file=sys.stderr)) -> dict:
    """Benchmark the variants; writes results.json, results.md and latency.png; returns the results."""
    import torch

    unknown = set(cfg.variants) - set(VARIANTS)
    if unknown:
        raise BenchError(f"unknown variant(s) {sorted(unknown)}; choose from {list(VARIANTS)}")
    for seq in cfg.seq_lens:
        if seq != "real" and not seq.isdigit():
            raise BenchError(f"--seq-lens takes 'real' or a token count, not '{seq}'")
    onnx_dir, torch_dir = locate(cfg.model)
    qa = QAConfig.load(onnx_dir)
    threads = cfg.threads or default_threads()
    torch.set_num_threads(threads)
    gpu = cuda_available()
    variants = [v for v in cfg.variants if gpu or v not in GPU_ONLY]
    skipped = sorted(set(cfg.variants) - set(variants))
    if skipped:
        log(f"skipping {skipped}: no usable CUDA here")
    missing = [v for v in variants if v.startswith("onnx-") and not (onnx_dir / ONNX_FILES[v[5:]]).exists()]
    if missing:
        raise BenchError(f"{onnx_dir} has no file for {missing}; export those variants first")

    from toolkit.modeling import load_tokenizer

    tokenizer = load_tokenizer(str(onnx_dir))
    cache = Path(cfg.cache_dir) if cfg.cache_dir else data_mod.default_cache_dir()
    examples, _ = data_mod.load_examples([cfg.eval_file], cache, cfg.seed, cfg.eval_samples, "validation")
    features = QAEngine(None, tokenizer, qa).features([e.question for e in examples], [e.context for e in examples])
    log(f"eval set: {len(examples)} questions -> {len(features)} windows; variants {variants}; {threads} threads")

    unknown = set(cfg.peers) - set(PEERS)
    if unknown:
        raise BenchError(f"unknown peer(s) {sorted(unknown)}; choose from {list(PEERS)}")
    predictors = {v: make_predictor(v, onnx_dir, torch_dir, threads) for v in variants}
    peaks = machine_peaks(threads)
    peak = peaks["fp32_torch"]
    log("dense matmul peaks (GOP/s): " + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in peaks.items()
                                                    if isinstance(v, float)))
    log("accuracy and throughput over the eval set (interleaved chunks)")
    accuracy = accuracy_pass(predictors, qa, examples, features, tokenizer.pad_token_id, 256,
                              cfg.accuracy_batch_size)
    from transformers import AutoConfig

    model_config = AutoConfig.from_pretrained(torch_dir)
    latency = {}
    for b in cfg.batch_sizes:
        for seq in cfg.seq_lens:
            log(f"latency: batch {b}, length {seq}")
            latency[f"b{b}-{seq}"] = _latency(predictors, features, tokenizer.pad_token_id, b, seq, cfg, model_config)
    predictors.clear()
    log("peak memory, one fresh process per variant")
    workload = {k: v[:256] for k, v in features.inputs.items()}
    memory = {v: in_fresh_process(_memory_probe, (v, str(onnx_dir), str(torch_dir), threads, workload,
                                                  tokenizer.pad_token_id)) for v in variants}
    calibration = (calibration_windows(tokenizer, qa, cfg.calibration_file, cfg.calibration_samples, cfg.seed)
                   if "pipeline-ov-int8" in cfg.peers else [])
    peers = {}
    for kind in cfg.peers:
        log(f"peer: {kind}")
        peers[kind] = run_peer(kind, onnx_dir, torch_dir, examples, qa, threads, calibration)
        torch.set_num_threads(threads)

    baseline = "torch" if "torch" in variants else variants[0]
    eval_flops = sum(encoder_flops(model_config, len(ids)) for ids in features.inputs["input_ids"])
    rows = {}
    for v in variants:
        agree = sum(a == b for a, b in zip(accuracy[v]["answers"], accuracy[baseline]["answers"]))
        span_agree = sum(a == b for a, b in zip(accuracy[v]["spans"], accuracy[baseline]["spans"]))
        rows[v] = {"size_mb": file_size(v, onnx_dir, torch_dir) / 2 ** 20, "peak_memory": memory[v],
                   **{k: val for k, val in accuracy[v].items() if k not in ("answers", "spans")},
                   "answer_agreement_vs_baseline": 100.0 * agree / len(examples),
                   "span_agreement_vs_baseline": 100.0 * span_agree / len(examples),
                   "latency": {k: latency[k][v] for k in latency},
                   "roofline_fraction": {k: latency[k][v]["achieved_flops"] / peak_for(v, peaks) for k in latency},
                   "eval_roofline_fraction": eval_flops / accuracy[v]["seconds"] / peak_for(v, peaks)}
    for v in variants:
        rows[v]["speedup_vs_baseline"] = {k: rows[baseline]["latency"][k]["mean_ms"] / rows[v]["latency"][k]["mean_ms"]
                                          for k in latency}
        rows[v]["throughput_ratio_vs_baseline"] = (rows[v]["questions_per_second"]
                                                   / rows[baseline]["questions_per_second"])
    results = {"name": cfg.name, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "config": asdict(cfg),
               "machine": machine_info(threads), "versions": package_versions(), "baseline": baseline,
               "eval_set": {"spec": cfg.eval_file, "questions": len(examples), "windows": len(features),
                            "null_threshold": qa.null_threshold},
               "matmul_flops_per_second": peak, "peaks": peaks, "variants": rows, "skipped": skipped,
               "peers": peers}
    ran = [p for p in peers.values() if "skipped" not in p]
    if ran:
        best = max(ran, key=lambda p: p["questions_per_second"])
        results["best_peer"] = next(k for k, p in peers.items() if p is best)
        results["throughput_ratio_ours_best_vs_best_peer"] = (
            max(r["questions_per_second"] for r in rows.values()) / best["questions_per_second"])
    out = Path(cfg.results_dir) / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown(results))
    plot(results, out / "latency.png")
    log(f"results in {out}")
    return results


def markdown(results: dict) -> str:
    rows = results["variants"]
    base = results["baseline"]
    machine = results["machine"]
    keys = list(next(iter(rows.values()))["latency"])
    lines = [f"# Benchmark `{results['name']}` ({results['date']})", "",
             f"Machine: {machine.get('cpu', machine['processor'])}, {machine['physical_cores']} physical cores, "
             f"{machine['memory_gb']} GB, {machine['threads']} threads"
             + (f", GPU {machine['gpu']}" if machine.get("gpu") else ", no GPU") + ".",
             f"Eval set: {results['eval_set']['questions']} questions ({results['eval_set']['spec']}), "
             f"{results['eval_set']['windows']} windows; no-answer threshold {results['eval_set']['null_threshold']:.3f}.",
             f"Dense fp32 matmul (torch): {results['matmul_flops_per_second'] / 1e9:.1f} GFLOP/s. "
             f"Ratios are against `{base}`, measured in the same run.", "",
             "| variant | size MB | peak RSS MB | q/s (eval) | × q/s | EM | F1 | HasAns F1 | NoAns F1 | agree % | span agree % |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for v, r in rows.items():
        lines.append(f"| {v} | {r['size_mb']:.1f} | {r['peak_memory']['above_baseline_mb']:.0f} | "
                     f"{r['questions_per_second']:.1f} | {r['throughput_ratio_vs_baseline']:.2f} | {r['exact']:.2f} | "
                     f"{r['f1']:.2f} | {r.get('HasAns_f1', float('nan')):.2f} | {r.get('NoAns_f1', float('nan')):.2f} | "
                     f"{r['answer_agreement_vs_baseline']:.1f} | {r['span_agreement_vs_baseline']:.1f} |")
    for kind, peer in results.get("peers", {}).items():
        if "skipped" in peer:
            lines.append(f"| peer: {kind} | – | – | not run: {peer['skipped']} | | | | | | | |")
            continue
        lines.append(f"| peer: {kind} | – | – | {peer['questions_per_second']:.1f} | "
                     f"{peer['questions_per_second'] / rows[base]['questions_per_second']:.2f} | {peer['exact']:.2f} | "
                     f"{peer['f1']:.2f} | {peer.get('HasAns_f1', float('nan')):.2f} | "
                     f"{peer.get('NoAns_f1', float('nan')):.2f} | – | – |")
    peaks = results["peaks"]
    lines += ["", "Dense matmul peaks here (GOP/s, multiply-add = 2): "
              f"fp32 {peaks['fp32_torch'] / 1e9:.1f} (torch) / {peaks['fp32_onnxruntime'] / 1e9:.1f} (ONNX Runtime), "
              f"int8 {peaks['int8_u8s8_onnxruntime'] / 1e9:.1f} U8S8 / {peaks['int8_u8u8_onnxruntime'] / 1e9:.1f} U8U8 "
              f"(ONNX Runtime MatMulInteger"
              f"{', VNNI' if peaks['int8_vnni'] else ', no VNNI'}), bf16 {peaks['bf16_torch'] / 1e9:.1f} (torch"
              f"{'' if peaks['bf16_native'] else ', not native on this CPU'}). Fraction of the peak that applies "
              "(int8 for int8 variants, fp32 otherwise) reached over the whole eval pass: "
              + ", ".join(f"{v} {100 * r['eval_roofline_fraction']:.0f}%" for v, r in rows.items()) + "."]
    lines += ["", "Latency per batch (ms, p50 / p95), speed-up of the mean vs the baseline, and fraction of the "
              "matmul peak achieved:", "",
              "| variant | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for v, r in rows.items():
        cells = [f"{r['latency'][k]['p50_ms']:.1f} / {r['latency'][k]['p95_ms']:.1f} "
                 f"(×{r['speedup_vs_baseline'][k]:.2f}, {100 * r['roofline_fraction'][k]:.0f}%)" for k in keys]
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    if results["skipped"]:
        lines += ["", f"Not run (no usable CUDA): {', '.join(results['skipped'])}."]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["variants"]
    seqs = results["config"]["seq_lens"]
    sizes = results["config"]["batch_sizes"]
    fig, axes = plt.subplots(1, len(seqs) + 1, figsize=(5 * (len(seqs) + 1), 4))
    for ax, seq in zip(axes, seqs):
        for v, r in rows.items():
            ax.plot(sizes, [r["latency"][f"b{b}-{seq}"]["mean_ms"] for b in sizes], marker="o", label=v)
        ax.set_xscale("log", base=2), ax.set_yscale("log")
        ax.set_xlabel("batch size"), ax.set_ylabel("mean latency per batch (ms)"), ax.set_title(f"length: {seq}")
        ax.grid(alpha=0.3), ax.legend(fontsize=8)
    ax = axes[-1]
    names = list(rows) + (["peer"] if results.get("peer") else [])
    f1 = [rows[v]["f1"] for v in rows] + ([results["peer"]["f1"]] if results.get("peer") else [])
    em = [rows[v]["exact"] for v in rows] + ([results["peer"]["exact"]] if results.get("peer") else [])
    x = np.arange(len(names))
    ax.bar(x - 0.2, em, 0.4, label="EM"), ax.bar(x + 0.2, f1, 0.4, label="F1")
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8), ax.set_ylabel("%"), ax.set_title("accuracy")
    ax.legend(), ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
