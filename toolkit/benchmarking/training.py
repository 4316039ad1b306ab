"""What a training step costs here, and what makes it cheaper: LoRA vs full fine-tuning, the AdamW
implementation, torch.compile, bf16 autocast; and the eval pass's speed per eval batch size.

Every mode runs in a fresh process on the same fixed batch of training windows, so that one mode's
allocations, compiled graphs or thread state never reach another's.
"""

import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from toolkit import data as data_mod
from toolkit.benchmarking.inference import in_fresh_process, percentile
from toolkit.benchmarking.results import machine_line, stamp, write_results
from toolkit.config import TrainConfig
from toolkit.inference.padding import batches, pad_batch
from toolkit.runtime import default_threads, native_bf16, peak_rss_mb
from toolkit.training.trainer import first_answer


@dataclass(frozen=True)
class TrainMode:
    lora: str | None = "shipped"  # "shipped": r32/a64 on every linear layer; "seed": r16/a32 on attention; None: full
    adamw: str = "default"  # torch's AdamW as it picks on this device ("default"), "foreach" or "fused"
    compile: bool = False  # torch.compile the model (the first steps compile; they are the warm-up)
    bf16: bool = False  # bf16 autocast (skipped on a CPU without native bf16)


TRAIN_MODES = {
    "lora": TrainMode(),
    "full": TrainMode(lora=None),
    "seed-lora": TrainMode(lora="seed"),
    "lora-foreach": TrainMode(adamw="foreach"),
    "lora-fused": TrainMode(adamw="fused"),
    "full-fused": TrainMode(lora=None, adamw="fused"),
    "lora-compile": TrainMode(compile=True),
    "lora-bf16": TrainMode(bf16=True),
}


@dataclass
class TrainBenchConfig:
    model: str
    eval_file: str  # source of the fixed batch (training questions)
    name: str = "train-latest"
    results_dir: str = "bench/results"
    modes: tuple[str, ...] = tuple(TRAIN_MODES)
    batch_size: int = 8
    steps: int = 10
    warmup_steps: int = 3
    eval_batch_sizes: tuple[int, ...] = (8, 32, 64)
    max_length: int = 384
    threads: int | None = None
    seed: int = 42
    cache_dir: str | None = None


def _windows(cfg: TrainBenchConfig, tokenizer, n: int):
    from toolkit.features import FeatureConfig, build_features

    cache = Path(cfg.cache_dir) if cfg.cache_dir else data_mod.default_cache_dir()
    examples, _ = data_mod.load_examples([cfg.eval_file], cache_dir=cache, seed=cfg.seed,
                                         limit=n, default_split="validation")
    return build_features(tokenizer, [e.question for e in examples], [e.context for e in examples],
                          FeatureConfig(max_length=cfg.max_length), [first_answer(e) for e in examples])


def _model(mode: TrainMode, cfg: TrainBenchConfig):
    from toolkit import modeling

    model = modeling.load_base(cfg.model, cfg.seed)
    if mode.lora == "shipped":
        recipe = TrainConfig()
        model = modeling.add_lora(model, recipe.lora_r, recipe.lora_alpha, recipe.lora_dropout, recipe.lora_targets)
    elif mode.lora == "seed":
        model = modeling.add_lora(model, 16, 32, 0.1, None)
    return model


def _train_probe(args: tuple) -> dict:
    """Run in a fresh process: warm-up + timed optimiser steps of one mode on one fixed batch."""
    name, cfg = args
    mode = TRAIN_MODES[name]
    import torch

    from toolkit import modeling

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    tokenizer = modeling.load_tokenizer(cfg.model)
    features = _windows(cfg, tokenizer, cfg.batch_size)
    rows = list(range(min(cfg.batch_size, len(features))))
    batch = {k: torch.from_numpy(v) for k, v in pad_batch(features, rows, tokenizer.pad_token_id).items()}
    batch["start_positions"] = torch.tensor([features.start_positions[i] for i in rows])
    batch["end_positions"] = torch.tensor([features.end_positions[i] for i in rows])
    baseline = peak_rss_mb()
    model = _model(mode, cfg)
    model.train()
    params = modeling.count_parameters(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    options = {"foreach": {"foreach": True}, "fused": {"fused": True}}.get(mode.adamw, {})
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, **options)
    forward = torch.compile(model) if mode.compile else model
    times = []
    for _step in range(cfg.warmup_steps + cfg.steps):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode.bf16):
            loss = forward(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    peak = peak_rss_mb()
    timed = times[cfg.warmup_steps:]
    return {"seconds_per_step": statistics.fmean(timed), "p50_seconds": percentile(timed, 50),
            "warmup_seconds": sum(times[:cfg.warmup_steps]), "peak_rss_mb": peak, "above_baseline_mb": peak - baseline,
            "trainable": params.trainable, "total": params.total, "percent": params.percent,
            "batch_shape": list(batch["input_ids"].shape), "mode": asdict(mode)}


def _eval_probe(cfg: TrainBenchConfig) -> dict:
    """Run in a fresh process: eval forward passes (no gradient) over the same windows, per eval batch size."""
    import torch

    from toolkit import modeling

    torch.set_num_threads(cfg.threads)
    tokenizer = modeling.load_tokenizer(cfg.model)
    features = _windows(cfg, tokenizer, max(cfg.eval_batch_sizes) * 2)
    model = _model(TrainMode(), cfg).eval()
    lengths = [len(ids) for ids in features.inputs["input_ids"]]
    rates = {}
    with torch.inference_mode():
        for size in cfg.eval_batch_sizes:
            groups = batches(lengths, size, size * cfg.max_length)  # sorted by length, as EvalSet orders training's evals
            model(**{k: torch.from_numpy(v) for k, v in pad_batch(features, groups[0], tokenizer.pad_token_id).items()})
            t = time.perf_counter()
            for rows in groups:
                model(**{k: torch.from_numpy(v) for k, v in pad_batch(features, rows, tokenizer.pad_token_id).items()})
            rates[str(size)] = len(lengths) / (time.perf_counter() - t)
    return {"windows": len(lengths), "windows_per_second": rates}


def run_train_bench(cfg: TrainBenchConfig, log=lambda m: print(m, file=sys.stderr)) -> dict:
    """Each mode's s/step and peak memory on the same batch, and the eval pass per batch size, each in a
    fresh process; results.json and results.md under results_dir/name."""
    unknown = [m for m in cfg.modes if m not in TRAIN_MODES]
    if unknown:
        raise ValueError(f"unknown training mode(s) {unknown}; known: {list(TRAIN_MODES)}")
    cfg.threads = cfg.threads or default_threads()
    modes = {}
    for name in cfg.modes:
        if TRAIN_MODES[name].bf16 and not native_bf16():
            modes[name] = {"skipped": "no native bf16 on this CPU (AVX512-BF16 or AMX): its bf16 matmuls are emulated"}
            continue
        log(f"{name}: {cfg.warmup_steps} warm-up + {cfg.steps} timed steps, batch {cfg.batch_size}")
        modes[name] = in_fresh_process(_train_probe, (name, cfg))
    log(f"eval pass at batch sizes {list(cfg.eval_batch_sizes)}")
    evals = in_fresh_process(_eval_probe, cfg)
    results = {**stamp(cfg.name, cfg.threads), "config": asdict(cfg), "modes": modes, "eval": evals}
    if "seconds_per_step" in modes.get("lora", {}):
        results["x_lora"] = {name: r["seconds_per_step"] / modes["lora"]["seconds_per_step"]
                             for name, r in modes.items() if "seconds_per_step" in r}
    out = write_results(cfg.results_dir, results, markdown(results))
    log(f"results in {out}")
    return results


def markdown(results: dict) -> str:
    cfg, modes = results["config"], results["modes"]
    shape = next((r["batch_shape"] for r in modes.values() if "batch_shape" in r), None)
    lines = [f"# Training step and eval pass (`{cfg['model']}`)", "",
             machine_line(results) + f" Same batch {shape} "
             f"(batch x tokens) for every mode, {cfg['steps']} timed steps after {cfg['warmup_steps']} warm-up "
             "(compiling included there), each mode in a fresh process. lora = the shipped recipe (r32/a64, every "
             "linear layer); seed-lora = r16/a32 on the attention projections.", "",
             "| mode | trainable params | s/step | × lora | warm-up s | peak RSS above baseline MB |",
             "|---|---|---|---|---|---|"]
    for name, r in modes.items():
        if "skipped" in r:
            lines.append(f"| {name} | skipped: {r['skipped']} | | | | |")
            continue
        ratio = results.get("x_lora", {}).get(name)
        lines.append(f"| {name} | {r['trainable']:,} | {r['seconds_per_step']:.3f} | "
                     f"{'' if ratio is None else f'{ratio:.2f}'} | {r['warmup_seconds']:.1f} | {r['above_baseline_mb']:.0f} |")
    evals = results["eval"]
    lines += ["", f"Eval pass (no gradient, lora model, {evals['windows']} windows grouped by length):", "",
              "| eval batch size | windows/s |", "|---|---|"]
    lines += [f"| {size} | {rate:.1f} |" for size, rate in evals["windows_per_second"].items()]
    return "\n".join(lines) + "\n"
