"""The CUDA engines on the real models, checked on a machine with an NVIDIA GPU in a few minutes, from a payload
built on a CPU machine (bench/gpu_payload.py: the merged models, held-out questions, the CPU's fp32 answers):

1. training on CUDA (fp16 autocast): a 2-layer BERT, 150 steps on synthetic questions;
2. parity: every engine of every payload model answers the payload's questions through serve-batch's own code,
   compared with the CPU's fp32 answers: best span and decision agreement, ΔEM / ΔF1. Engines: ONNX Runtime's
   CUDA provider, fp32 and fp16 (IO binding), and torch on CUDA, fp32, fp16 and bf16 (its default attention, SDPA);
3. speed: each engine on length-bucketed batches of 1, 8, 32 and 128 windows of those questions, warmed up,
   --rounds rounds in a random order, medians: windows/s, batch latency p50/p99, GPU memory, the fraction of the
   GPU's dense fp16 tensor peak the matmuls reach;
4. serve-batch (the command, end to end) and serve under concurrency 64 on CUDA, each model's export choosing
   its variant: q/s, p99, and whether serve's answers are serve-batch's.

    python3 bench/gpu_payload.py join .gpu-payload --target /tmp/gpu && export PYTHONPATH=/tmp/gpu/site:$PWD
    python3 bench/gpu_check.py --payload /tmp/gpu/payload --out $OUT/gpu-check   # exit 2 where no GPU is visible

Results are written after every step, so a step that stops the check keeps what the earlier ones measured.

--device cpu runs the same steps on the CPU (what the tests do with a tiny payload: its figures rank nothing).
Writes DIR/results.json and DIR/results.md.
"""

import argparse
import asyncio
import importlib.util
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from toolkit.benchmarking.results import machine_line, qa_command, stamp, write_results

ROOT = Path(__file__).resolve().parents[1]
VOCAB = ROOT / "models" / "minilm-squad2-lora" / "adapter" / "vocab.txt"
BATCHES = (1, 8, 32, 128)
# Dense fp16 tensor-core peaks (FLOP/s, no sparsity), from NVIDIA's data sheets, by the name torch reports.
FP16_PEAKS = {"H100": 989.4e12, "H200": 989.4e12}
# (engine name, model subdirectory, load() options); an engine whose files the payload lacks is left out.
ENGINES = (("ort-fp32", ".", {"engine": "onnx", "variant": "fp32"}, "model.onnx"),
           ("ort-fp16", ".", {"engine": "onnx", "variant": "fp16"}, "model_fp16.onnx"),
           ("torch-fp32", "merged", {"engine": "torch", "variant": "torch-fp32"}, "model.safetensors"),
           ("torch-fp16", "merged", {"engine": "torch", "variant": "torch-fp16"}, "model.safetensors"),
           ("torch-bf16", "merged", {"engine": "torch", "variant": "torch-bf16"}, "model.safetensors"))


def cuda_or_exit(device: str) -> str:
    import torch

    if device == "cpu":
        return "none (--device cpu)"
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here (torch.cuda.is_available() is False); run it on a machine with an "
              "NVIDIA GPU and a CUDA build of torch, or pass --device cpu to try the steps on the CPU", file=sys.stderr)
        sys.exit(2)
    return torch.cuda.get_device_name(0)


def qa(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    done = subprocess.run([*qa_command(), *args], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"qa-toolkit {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done


def rows_of(path: Path) -> dict[str, dict]:
    return {row["id"]: row for row in map(json.loads, path.read_text().splitlines())}


# --- 1. training ------------------------------------------------------------------------------------------------


def synthetic_squad(n: int, seed: int) -> dict:
    """Questions whose answer is a name or a city in a short generated context, a third unanswerable."""
    names, cities = ["Maria Rossi", "Luigi Verdi", "Anna Bianchi", "Marco Neri"], ["Turin", "Genoa", "Bologna", "Padua"]
    rng = random.Random(seed)
    paragraphs = []
    for i in range(n):
        name, city = rng.choice(names), rng.choice(cities)
        context = f"The bakery on the main square of {city} was opened in {1900 + i % 100} by {name}. " * rng.randint(1, 3)
        qas = [{"id": f"q{seed}-{i}-who", "question": f"Who opened the bakery in {city}?", "is_impossible": False,
                "answers": [{"text": name, "answer_start": context.index(name)}]},
               {"id": f"q{seed}-{i}-where", "question": f"Where did {name} open the bakery?", "is_impossible": False,
                "answers": [{"text": city, "answer_start": context.index(city)}]}]
        if i % 2:
            qas.append({"id": f"q{seed}-{i}-none", "question": "Who painted the ceiling of the bakery?",
                        "is_impossible": True, "answers": []})
        paragraphs.append({"context": context, "qas": qas})
    return {"version": "v2.0", "data": [{"title": f"synthetic-{seed}", "paragraphs": paragraphs}]}


def training(work: Path) -> dict:
    import torch
    from transformers import BertConfig, BertForQuestionAnswering, BertTokenizerFast

    torch.manual_seed(0)
    small = work / "small"
    config = BertConfig(vocab_size=30522, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=512)
    BertForQuestionAnswering(config).save_pretrained(small)
    BertTokenizerFast(vocab_file=str(VOCAB)).save_pretrained(small)
    train_file, eval_file = work / "train.json", work / "eval.json"
    train_file.write_text(json.dumps(synthetic_squad(600, 1)))
    eval_file.write_text(json.dumps(synthetic_squad(60, 2)))
    started = time.perf_counter()
    qa("train", "--model", str(small), "--train-file", str(train_file), "--eval-file", str(eval_file),
       "--output-dir", str(work / "run"), "--max-steps", "150", "--batch-size", "32", "--eval-steps", "75",
       "--lr", "1e-3", "--max-length", "128", "--doc-stride", "32", "--full-finetune")
    manifest = json.loads((work / "run" / "manifest.json").read_text())
    return {"device": manifest["device"], "precision": manifest["precision"],
            "seconds": time.perf_counter() - started, "final": manifest["final_metrics"]["tuned"]}


# --- 2. parity ----------------------------------------------------------------------------------------------------


def engines_of(model_dir: Path) -> list[tuple[str, Path, dict]]:
    return [(name, model_dir / sub, options) for name, sub, options, needs in ENGINES if (model_dir / sub / needs).exists()]


def parity(engine, payload: Path, label: str, out: Path, references: dict) -> dict:
    """serve_batch over the payload's questions; agreement with the CPU fp32 answers and the scores' change."""
    from toolkit.scoring import score_answer_file
    from toolkit.serving import serve_batch

    summary = serve_batch(engine, str(payload / "questions.jsonl"), str(out), progress=False)
    cpu_path = payload / "answers" / f"{label}.cpu-fp32.jsonl"
    cpu, here = rows_of(cpu_path), rows_of(out)
    same_span = sum(here[q].get("best_span") == row.get("best_span") for q, row in cpu.items())
    same_decision = sum(here[q].get("no_answer") == row.get("no_answer") for q, row in cpu.items())
    ours, theirs = score_answer_file(str(out), references), score_answer_file(str(cpu_path), references)
    return {"provider": summary.provider, "variant": summary.variant, "questions": len(cpu),
            "same_best_span": same_span / len(cpu), "same_decision": same_decision / len(cpu),
            "exact": ours["exact"], "f1": ours["f1"], "delta_exact": ours["exact"] - theirs["exact"],
            "delta_f1": ours["f1"] - theirs["f1"], "serve_batch_questions_per_second": summary.questions_per_second}


# --- 3. speed -----------------------------------------------------------------------------------------------------


def windows(engine, payload: Path):
    """The payload questions' token windows, as the engine's model builds them."""
    from toolkit.features import build_features

    rows = [json.loads(line) for line in (payload / "questions.jsonl").read_text().splitlines()]
    served = engine.served()
    return build_features(engine.tokenizer, [r["question"] for r in rows], [r["context"] for r in rows],
                          served.qa.features())


def bucketed_batches(features, pad_id: int, size: int) -> list[dict]:
    """Every window once, sorted by length and cut into batches of `size`, each padded to its longest."""
    from toolkit.inference.padding import pad_batch

    order = sorted(range(len(features)), key=lambda i: len(features.inputs["input_ids"][i]))
    return [pad_batch(features, order[i:i + size], pad_id) for i in range(0, len(order), size)]


def gpu_memory_mb(device: str) -> float | None:
    if device != "cuda":
        return None
    used = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                          capture_output=True, text=True)
    return float(used.stdout.split()[0]) if used.returncode == 0 else None


def time_batches(predictor, batches: list[dict], sync) -> dict:
    """Each batch through the predictor (logits back on the host, as the engine needs them): seconds per batch."""
    for batch in batches[:3]:  # warm-up: kernels chosen, arenas grown
        predictor.logits(batch)
    sync()
    seconds = []
    for batch in batches:
        started = time.perf_counter()
        predictor.logits(batch)
        sync()
        seconds.append(time.perf_counter() - started)
    return {"seconds": sum(seconds), "p50_ms": 1000 * statistics.median(seconds),
            "p99_ms": 1000 * statistics.quantiles(seconds, n=100)[98] if len(seconds) > 1 else 1000 * seconds[0]}


def speed(loaded: dict, payload: Path, *, device: str, gpu: str, rounds: int, seed: int) -> dict:
    """windows/s and batch latency of each engine at each batch size: rounds in a random order, medians."""
    import torch
    from transformers import AutoConfig

    from toolkit.runtime import encoder_flops

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    peak = next((p for name, p in FP16_PEAKS.items() if name in gpu), None)
    plans = {}
    for key, (engine, model_dir) in loaded.items():
        features = windows(engine, payload)
        config = AutoConfig.from_pretrained(model_dir)
        for size in BATCHES:
            batches = bucketed_batches(features, engine.tokenizer.pad_token_id, size)
            flops = sum(encoder_flops(config, b["input_ids"].shape[1]) * len(b["input_ids"]) for b in batches)
            plans[(key, size)] = (engine.served().predictor, batches, flops, len(features))
    rng = random.Random(seed)
    measured: dict[tuple, list[dict]] = {k: [] for k in plans}
    for _ in range(rounds):
        order = list(plans)
        rng.shuffle(order)
        for k in order:
            predictor, batches, _, _ = plans[k]
            measured[k].append(time_batches(predictor, batches, sync))
    rows = []
    for (key, size), runs in measured.items():
        _, _, flops, n = plans[(key, size)]
        seconds = statistics.median(r["seconds"] for r in runs)
        rows.append({"engine": key, "batch": size, "windows": n, "windows_per_second": n / seconds,
                     "p50_ms": statistics.median(r["p50_ms"] for r in runs),
                     "p99_ms": statistics.median(r["p99_ms"] for r in runs),
                     "fp16_peak_fraction": flops / seconds / peak if peak else None, "rounds": len(runs)})
    return {"rows": rows, "fp16_peak_flops": peak}


# --- 4. serve-batch and serve ---------------------------------------------------------------------------------------


def serve_load_module():
    spec = importlib.util.spec_from_file_location("serve_load", ROOT / "bench" / "serve_load.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def served_variant(label: str, parity_rows: dict, speed_rows: list[dict], *, max_drop: float) -> str:
    """The ONNX Runtime variant to serve a model with here: the fastest at batch 32 of those whose answers keep
    to the CPU's (best span on >= 99 % of the questions, EM and F1 no more than max_drop below, as export's gate)."""
    rate = {row["engine"]: row["windows_per_second"] for row in speed_rows if row["batch"] == 32}
    passed = [key for key, p in parity_rows.items() if key.startswith(f"{label}/ort-") and p["same_best_span"] >= 0.99
              and -p["delta_exact"] <= max_drop and -p["delta_f1"] <= max_drop]
    if not passed:
        raise SystemExit(f"gpu_check: no ONNX Runtime variant of {label} keeps the CPU's answers here: {parity_rows}")
    return max(passed, key=lambda key: rate[key]).split("/ort-")[1]


def serving(model_dir: Path, variant: str, payload: Path, work: Path, *, device: str, concurrency: int) -> dict:
    """serve-batch (the command) and serve under a closed loop, on the same variant."""
    from toolkit import data

    batch_out, summary = work / "serve-batch.jsonl", work / "serve-batch.summary.json"
    qa("serve-batch", str(payload / "questions.jsonl"), "--model", str(model_dir), "--device", device,
       "--variant", variant, "-o", str(batch_out), "--summary-json", str(summary))
    offline = json.loads(summary.read_text())
    examples, _ = data.load_examples([str(payload / "questions.jsonl")], cache_dir=data.default_cache_dir(), seed=42,
                                     limit=None, default_split="validation")
    serve_load = serve_load_module()
    server = serve_load.Server([*qa_command(), "serve", "--model", str(model_dir), "--device", device,
                                "--variant", variant, "--max-queue", "1024"])
    try:
        asyncio.run(serve_load.closed_loop(server.url, examples[:100], concurrency))  # warm-up
        online = asyncio.run(serve_load.closed_loop(server.url, examples, concurrency))
    finally:
        server.stop()
    expected = rows_of(batch_out)
    same = sum(expected[q]["best_span"] == a["best_span"] and expected[q]["no_answer"] == a["no_answer"]
               for q, a in online.pop("answers").items())
    return {"serve_batch": {k: offline[k] for k in ("questions_per_second", "provider", "variant", "lines")},
            "serve": {**online, "same_as_serve_batch": same},
            "serve_vs_serve_batch": online["questions_per_second"] / offline["questions_per_second"]}


# --- the check ----------------------------------------------------------------------------------------------------


def models_of(payload: Path) -> list[Path]:
    return sorted(p for p in (payload / "models").iterdir() if p.is_dir())


def parity_all(payload: Path, references: dict, work: Path, loaded: dict, *, device: str) -> tuple[dict, dict]:
    """(parity row per model/engine, why each engine that cannot run here did not); loaded gets the engines."""
    from toolkit import load

    rows, skipped = {}, {}
    for model_dir in models_of(payload):
        for name, directory, options in engines_of(model_dir):
            key = f"{model_dir.name}/{name}"
            before = gpu_memory_mb(device)
            try:
                engine = load(directory, device=device, **options)
            except Exception as e:  # noqa: BLE001 - an engine that cannot run here is a row, not a stop
                skipped[key] = f"{type(e).__name__}: {e}"
                continue
            print(f"parity: {key}", file=sys.stderr, flush=True)
            rows[key] = parity(engine, payload, model_dir.name, work / f"{model_dir.name}-{name}.jsonl", references)
            after = gpu_memory_mb(device)
            rows[key]["gpu_memory_mb"] = after - before if after is not None and before is not None else None
            loaded[key] = (engine, directory)
    return rows, skipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payload", required=True, help="a joined payload (bench/gpu_payload.py join)")
    parser.add_argument("--out", default="bench/results/gpu-check")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--max-drop", type=float, default=1.0, help="EM/F1 points a served variant may lose")
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args()
    gpu = cuda_or_exit(args.device)
    import torch

    payload = Path(args.payload)
    references = json.loads((payload / "references.json").read_text())
    results = {**stamp(Path(args.out).name, torch.get_num_threads()), "gpu": gpu, "device": args.device,
               "payload": json.loads((payload / "about.json").read_text())}
    started = time.perf_counter()

    def save() -> None:  # after every step: a later step that stops the check keeps what this one measured
        results["wall_seconds"] = time.perf_counter() - started
        write_results(Path(args.out).parent, results, markdown(results))

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.skip_training:
            print("training on the device", file=sys.stderr, flush=True)
            results["train"] = training(work)
            save()
        loaded = {}
        results["parity"], results["skipped"] = parity_all(payload, references, work, loaded, device=args.device)
        save()
        print(f"speed: {len(loaded)} engines x batches {BATCHES}, {args.rounds} rounds", file=sys.stderr, flush=True)
        results["speed"] = speed(loaded, payload, device=args.device, gpu=gpu, rounds=args.rounds, seed=0)
        results["gpu_memory_mb_after_speed"] = gpu_memory_mb(args.device)
        save()
        loaded.clear()
        results["serving"] = {}
        for model_dir in models_of(payload):
            print(f"serve-batch and serve at concurrency {args.concurrency}: {model_dir.name}", file=sys.stderr,
                  flush=True)
            (work / model_dir.name).mkdir()
            variant = served_variant(model_dir.name, results["parity"], results["speed"]["rows"],
                                     max_drop=args.max_drop)
            results["serving"][model_dir.name] = serving(model_dir, variant, payload, work / model_dir.name,
                                                         device=args.device, concurrency=args.concurrency)
            save()
    print(markdown(results))


def markdown(r: dict) -> str:
    lines = [f"# The CUDA engines on the real models: {r['gpu']} ({r['date']})", "", machine_line(r), "",
             f"Questions: {r['payload']['questions']} of {r['payload']['source']}; wall time {r['wall_seconds']:.0f} s.",
             ""]
    if "train" in r:
        t = r["train"]
        lines += [f"Training on {t['device']} ({t['precision']}): {t['seconds']:.0f} s for 150 steps of a 2-layer "
                  f"BERT on synthetic questions; eval EM {t['final']['exact']:.1f} / F1 {t['final']['f1']:.1f}.", ""]
    if "parity" not in r:
        return "\n".join(lines) + "\n"
    lines += ["| parity with the CPU's fp32 answers | provider | same best span | same decision | EM | F1 | ΔEM | ΔF1 |",
              "|---|---|---|---|---|---|---|---|"]
    for key, p in r["parity"].items():
        lines.append(f"| {key} | {p['provider']} | {100 * p['same_best_span']:.1f} % | {100 * p['same_decision']:.1f} % "
                     f"| {p['exact']:.2f} | {p['f1']:.2f} | {p['delta_exact']:+.2f} | {p['delta_f1']:+.2f} |")
    for key, why in r["skipped"].items():
        lines.append(f"| {key} | not run: {why} | | | | | | |")
    if "speed" not in r:
        return "\n".join(lines) + "\n"
    lines += ["", f"| speed (medians of {r['speed']['rows'][0]['rounds'] if r['speed']['rows'] else 0} rounds, random "
              "order) | batch | windows/s | batch p50 ms | batch p99 ms | of the fp16 tensor peak |",
              "|---|---|---|---|---|---|"]
    for row in r["speed"]["rows"]:
        fraction = f"{100 * row['fp16_peak_fraction']:.1f} %" if row["fp16_peak_fraction"] is not None else "n/a"
        lines.append(f"| {row['engine']} | {row['batch']} | {row['windows_per_second']:.0f} | {row['p50_ms']:.2f} | "
                     f"{row['p99_ms']:.2f} | {fraction} |")
    lines += ["", "GPU memory per engine (nvidia-smi, after its parity pass, less before its load): " + (", ".join(
        f"{key} {p['gpu_memory_mb']:.0f} MB" for key, p in r["parity"].items() if p.get("gpu_memory_mb") is not None)
        or "not measured (no GPU)") + "."]
    lines += ["", "| serving | variant | serve-batch q/s | serve q/s (concurrency) | serve p99 ms | serve / serve-batch "
              "| serve's answers = serve-batch's |", "|---|---|---|---|---|---|---|"]
    for label, s in r.get("serving", {}).items():
        lines.append(f"| {label} | {s['serve_batch']['variant']} on {s['serve_batch']['provider']} | "
                     f"{s['serve_batch']['questions_per_second']:.1f} | {s['serve']['questions_per_second']:.1f} "
                     f"({s['serve']['concurrency']}) | {s['serve']['p99_ms']:.1f} | {s['serve_vs_serve_batch']:.2f} | "
                     f"{s['serve']['same_as_serve_batch']} of {s['serve']['questions']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
