"""PyTorch vs ONNX Runtime: latency, throughput, memory, size and accuracy, measured side by side.

Every variant sees the same windows. Latency batches and accuracy chunks are interleaved across the
variants (rotating who goes first) so that machine drift hits them alike. Peak memory is measured
per variant in a fresh process, so one variant's allocations never hide another's.
"""

import multiprocessing
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from toolkit import data as data_mod
from toolkit.benchmarking.peers import PEERS, run_peer
from toolkit.benchmarking.report import markdown, plot
from toolkit.benchmarking.results import stamp, write_results
from toolkit.calibration import from_config
from toolkit.config import QAConfig
from toolkit.exporting.common import calibration_windows, size_bytes
from toolkit.features import Features, build_features
from toolkit.inference import VARIANTS
from toolkit.inference.padding import feature_logits, pad_batch
from toolkit.options import DEFAULT_OPTIONS
from toolkit.postprocess import answer_all
from toolkit.runtime import (
    default_threads,
    encoder_flops,
    machine_peaks,
    peak_rate,
    peak_rss_mb,
)
from toolkit.scoring import squad_scores


class BenchError(ValueError):
    """A benchmark that cannot run as asked."""


@dataclass
class BenchConfig:
    model: str  # an export directory (with merged/ and onnx/) or its onnx/ directory
    eval_file: str
    name: str = "latest"
    results_dir: str = "bench/results"
    variants: list[str] = field(default_factory=lambda: ["torch-fp32", "torch-bf16", "fp32", "opt", "int8", "int8-u8", "fp16",
                                                         "ov-bf16", "ov-int8", "ov-int8-bf16"])
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32])
    seq_lens: list[str] = field(default_factory=lambda: ["real", "384"])
    latency_batches: int = 20  # timed batches per (variant, batch size, length)
    warmup_batches: int = 3
    eval_samples: int | None = None
    accuracy_batch_size: int | None = None  # default: the serving default of the device
    threads: int | None = None
    peers: list[str] = field(default_factory=lambda: list(PEERS))  # bench.peers: the ways to serve without us
    calibration_file: str = "squad-v1.1-train"  # training questions whose windows calibrate the int8 peer
    calibration_samples: int = 128
    seed: int = 42
    cache_dir: str | None = None

    def check(self) -> None:
        unknown = set(self.variants) - set(VARIANTS)
        if unknown:
            raise BenchError(f"unknown variant(s) {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
        for seq in self.seq_lens:
            if seq != "real" and not seq.isdigit():
                raise BenchError(f"--seq-lens takes 'real' or a token count, not '{seq}'")
        unknown = set(self.peers) - set(PEERS)
        if unknown:
            raise BenchError(f"unknown peer(s) {sorted(unknown)}; choose from {list(PEERS)}")


def locate(model: str) -> tuple[Path, Path]:
    """(onnx dir, torch model dir) of an export directory or of its onnx/ directory."""
    root = Path(model)
    if not root.is_dir():
        raise BenchError(f"model directory not found: {model}")
    onnx_dir = root / "onnx" if (root / "onnx").is_dir() else root
    torch_dir = onnx_dir.parent / "merged"
    if not (onnx_dir / VARIANTS["fp32"].file).exists():
        raise BenchError(f"{model}: no ONNX export found (run `qa-toolkit export` first)")
    if not torch_dir.is_dir():
        raise BenchError(f"{model}: no merged/ PyTorch model beside the ONNX files to compare with")
    return onnx_dir, torch_dir


def make_predictor(variant: str, onnx_dir: Path, torch_dir: Path, threads: int):
    """A predictor for a variant, on the device it is gated on (its first); torch threads are the caller's."""
    v = VARIANTS[variant]
    return v.predictor(torch_dir if v.file is None else onnx_dir, v.devices[0], threads)


def file_size(variant: str, onnx_dir: Path, torch_dir: Path) -> int:
    file = VARIANTS[variant].file
    if file is None:
        return sum(p.stat().st_size for p in torch_dir.glob("*.safetensors"))
    return size_bytes(onnx_dir / file)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def _memory_probe(args: tuple) -> dict:
    """Run in a fresh process: load one variant, answer a fixed workload, report peak RSS above baseline."""
    variant, onnx_dir, torch_dir, threads, features_inputs, pad_id = args
    import torch

    torch.set_num_threads(threads)
    baseline = peak_rss_mb()
    predictor = make_predictor(variant, Path(onnx_dir), Path(torch_dir), threads)
    features = Features(inputs=features_inputs, example_index=[0] * len(features_inputs["input_ids"]), offsets=[])
    feature_logits(predictor, features, pad_id, VARIANTS[variant].batch_settings(predictor.device))
    peak = peak_rss_mb()
    return {"peak_rss_mb": peak, "above_baseline_mb": peak - baseline}


def in_fresh_process(fn, args):
    """fn(args) in a spawned process: its imports, allocations and peak RSS are its own."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(fn, (args,))


def accuracy_pass(predictors: dict, engine_qa: QAConfig, examples, features, pad_id: int, chunk: int,
                  batch_size: int | None) -> dict:
    """All eval windows through every variant, chunk by chunk in rotating order; answers and timings."""
    names = list(predictors)
    seconds = {n: 0.0 for n in names}
    start = {n: [None] * len(features) for n in names}
    end = {n: [None] * len(features) for n in names}
    settings = {n: VARIANTS[n].batch_settings(predictors[n].device, batch_size) for n in names}  # as it serves
    for c, first in enumerate(range(0, len(features), chunk)):
        rows = list(range(first, min(first + chunk, len(features))))
        part = Features(inputs={k: [v[i] for i in rows] for k, v in features.inputs.items()},
                        example_index=[0] * len(rows), offsets=[])
        for n in names[c % len(names):] + names[:c % len(names)]:
            t = time.perf_counter()
            s, e = feature_logits(predictors[n], part, pad_id, settings[n])
            seconds[n] += time.perf_counter() - t
            for r, i in enumerate(rows):
                start[n][i], end[n][i] = s[r], e[r]
    out = {}
    refs = data_mod.references(examples)
    contexts = [e.context for e in examples]
    for n in names:
        t = time.perf_counter()
        answers = answer_all(contexts, features.example_index, features.offsets, start[n], end[n],
                             DEFAULT_OPTIONS.decoding(engine_qa, from_config(engine_qa.calibration)), features.words)
        seconds[n] += time.perf_counter() - t
        scores = squad_scores({e.id: a.text for e, a in zip(examples, answers)}, refs)
        out[n] = {"seconds": seconds[n], "questions_per_second": len(examples) / seconds[n],
                  "answers": [a.text for a in answers], "spans": [a.best_span_text for a in answers], **scores}
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


def runnable_variants(cfg: BenchConfig, onnx_dir: Path, log) -> tuple[list[str], dict[str, str]]:
    """(variants to run, {variant skipped: why}); refuses exported variants the export lacks."""
    skipped = {v: why for v in cfg.variants if (why := VARIANTS[v].unusable())}
    variants = [v for v in cfg.variants if v not in skipped]
    for v, why in skipped.items():
        log(f"skipping {v}: {why}")
    missing = [v for v in variants if VARIANTS[v].file and not (onnx_dir / VARIANTS[v].file).exists()]
    if missing:
        raise BenchError(f"{onnx_dir} has no file for {missing}; export those variants first")
    return variants, skipped


def variant_rows(variants, accuracy, latency, memory, peaks, eval_flops, onnx_dir, torch_dir, n_questions) -> tuple[str, dict]:
    """(baseline, one row per variant): accuracy, agreement, latency, memory, size and ratios to the baseline."""
    baseline = "torch-fp32" if "torch-fp32" in variants else variants[0]
    rows = {}
    for v in variants:
        agree = sum(a == b for a, b in zip(accuracy[v]["answers"], accuracy[baseline]["answers"]))
        span_agree = sum(a == b for a, b in zip(accuracy[v]["spans"], accuracy[baseline]["spans"]))
        rows[v] = {"size_mb": file_size(v, onnx_dir, torch_dir) / 2 ** 20, "peak_memory": memory[v],
                   **{k: val for k, val in accuracy[v].items() if k not in ("answers", "spans")},
                   "answer_agreement_vs_baseline": 100.0 * agree / n_questions,
                   "span_agreement_vs_baseline": 100.0 * span_agree / n_questions,
                   "latency": {k: latency[k][v] for k in latency},
                   "roofline_fraction": {k: latency[k][v]["achieved_flops"] / peak_rate(VARIANTS[v].peak, peaks) for k in latency},
                   "eval_roofline_fraction": eval_flops / accuracy[v]["seconds"] / peak_rate(VARIANTS[v].peak, peaks)}
    for v in variants:
        rows[v]["speedup_vs_baseline"] = {k: rows[baseline]["latency"][k]["mean_ms"] / rows[v]["latency"][k]["mean_ms"]
                                          for k in latency}
        rows[v]["throughput_ratio_vs_baseline"] = (rows[v]["questions_per_second"]
                                                   / rows[baseline]["questions_per_second"])
    return baseline, rows


def best_peer(peers: dict, rows: dict) -> dict:
    ran = {k: p for k, p in peers.items() if "skipped" not in p}
    if not ran:
        return {}
    best = max(ran, key=lambda k: ran[k]["questions_per_second"])
    return {"best_peer": best, "throughput_ratio_ours_best_vs_best_peer":
            max(r["questions_per_second"] for r in rows.values()) / ran[best]["questions_per_second"]}


def run_bench(cfg: BenchConfig, log=lambda m: print(m, file=sys.stderr)) -> dict:
    """Benchmark the variants; writes results.json, results.md and latency.png; returns the results."""
    import torch
    from transformers import AutoConfig

    from toolkit.modeling import load_tokenizer

    cfg.check()
    onnx_dir, torch_dir = locate(cfg.model)
    qa = QAConfig.load(onnx_dir)
    threads = cfg.threads or default_threads()
    torch.set_num_threads(threads)
    variants, skipped = runnable_variants(cfg, onnx_dir, log)
    tokenizer = load_tokenizer(str(onnx_dir))
    cache = Path(cfg.cache_dir) if cfg.cache_dir else data_mod.default_cache_dir()
    examples, _ = data_mod.load_examples([cfg.eval_file], cache_dir=cache, seed=cfg.seed,
                                         limit=cfg.eval_samples, default_split="validation")
    features = build_features(tokenizer, [e.question for e in examples], [e.context for e in examples], qa.features())
    log(f"eval set: {len(examples)} questions -> {len(features)} windows; variants {variants}; {threads} threads")

    predictors = {v: make_predictor(v, onnx_dir, torch_dir, threads) for v in variants}
    peaks = machine_peaks(threads)
    log("dense matmul peaks (GOP/s): " + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in peaks.items()
                                                    if isinstance(v, float)))
    log("accuracy and throughput over the eval set (interleaved chunks)")
    accuracy = accuracy_pass(predictors, qa, examples, features, tokenizer.pad_token_id, 256,
                             cfg.accuracy_batch_size)
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

    eval_flops = sum(encoder_flops(model_config, len(ids)) for ids in features.inputs["input_ids"])
    baseline, rows = variant_rows(variants, accuracy, latency, memory, peaks, eval_flops, onnx_dir, torch_dir,
                                  len(examples))
    results = {**stamp(cfg.name, threads), "config": asdict(cfg), "baseline": baseline,
               "eval_set": {"spec": cfg.eval_file, "questions": len(examples), "windows": len(features),
                            "null_threshold": qa.null_threshold},
               "matmul_flops_per_second": peaks["fp32_torch"], "peaks": peaks, "variants": rows,
               "skipped": sorted(skipped), "skipped_why": skipped,
               "peers": peers, **best_peer(peers, rows)}
    out = write_results(cfg.results_dir, results, markdown(results))
    plot(results, out / "latency.png")
    log(f"results in {out}")
    return results
