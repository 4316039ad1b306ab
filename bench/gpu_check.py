"""The CUDA paths, checked on a machine with an NVIDIA GPU, in a few minutes:

1. training on CUDA (fp16 autocast) of a small BERT with the shipped vocabulary, on synthetic SQuAD-format data;
2. serve-batch with the torch engine on CUDA (fp32 and fp16) against the CPU's fp32 answers for the same model;
3. serve-batch throughput of a BERT-base-sized model (random weights: speed only) on CUDA, fp32 vs fp16, against
   the CPU, from one run;
4. ONNX Runtime on CUDA (fp16 export, parity gate, IO binding) where onnxruntime-gpu (the 'gpu' extra) is
   installed; otherwise the reason it was not run.

    python bench/gpu_check.py [--out DIR]        # refuses (exit 2) where no CUDA GPU is visible

Writes DIR/results.json and DIR/results.md (default bench/results/gpu-check).
"""

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from toolkit.benchmarking.results import machine_line, qa_command, stamp, write_results

VOCAB = Path(__file__).resolve().parents[1] / "models" / "minilm-squad2-lora" / "adapter" / "vocab.txt"
NAMES = ["Maria Rossi", "Luigi Verdi", "Anna Bianchi", "Marco Neri", "Sofia Russo", "Paolo Gallo"]
CITIES = ["Turin", "Genoa", "Bologna", "Verona", "Padua", "Trieste"]


def cuda_or_exit() -> str:
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here (torch.cuda.is_available() is False); run it on a machine with an "
              "NVIDIA GPU and a CUDA build of torch", file=sys.stderr)
        sys.exit(2)
    return torch.cuda.get_device_name(0)


def synthetic_squad(n: int, seed: int) -> dict:
    """Questions whose answer is a name or a city in a short generated context, a quarter unanswerable."""
    rng = random.Random(seed)
    paragraphs = []
    for i in range(n):
        name, city, other = rng.choice(NAMES), rng.choice(CITIES), rng.choice(NAMES)
        context = (f"The bakery on the main square of {city} was opened in {1900 + i % 100} by {name}. "
                   f"Years later {other} bought the shop next door. " * rng.randint(1, 3))
        qas = [{"id": f"q{seed}-{i}-who", "question": f"Who opened the bakery in {city}?", "is_impossible": False,
                "answers": [{"text": name, "answer_start": context.index(name)}]},
               {"id": f"q{seed}-{i}-where", "question": f"Where did {name} open the bakery?", "is_impossible": False,
                "answers": [{"text": city, "answer_start": context.index(city)}]}]
        if i % 2:
            qas.append({"id": f"q{seed}-{i}-none", "question": "Who painted the ceiling of the bakery?",
                        "is_impossible": True, "answers": []})
        paragraphs.append({"context": context, "qas": qas})
    return {"version": "v2.0", "data": [{"title": f"synthetic-{seed}", "paragraphs": paragraphs}]}


def bert(directory: Path, hidden: int, layers: int, heads: int) -> Path:
    import torch
    from transformers import BertConfig, BertForQuestionAnswering, BertTokenizerFast

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=4 * hidden, max_position_embeddings=512)
    BertForQuestionAnswering(config).save_pretrained(directory)
    BertTokenizerFast(vocab_file=str(VOCAB)).save_pretrained(directory)
    return directory


def qa(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    done = subprocess.run([*qa_command(), *args], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"qa-toolkit {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done


def answers(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def serve_rows(model: Path, questions: Path, out: Path, *flags: str) -> tuple[list[dict], dict]:
    summary = out.with_suffix(".summary.json")
    qa("serve-batch", str(questions), "--model", str(model), "--engine", "torch", "-o", str(out),
       "--summary-json", str(summary), *flags)
    return answers(out), json.loads(summary.read_text())


def agreement(a: list[dict], b: list[dict]) -> dict:
    same = sum(x.get("best_span") == y.get("best_span") and x.get("no_answer") == y.get("no_answer") for x, y in zip(a, b))
    diffs = [abs(x["null_score_diff"] - y["null_score_diff"]) for x, y in zip(a, b)
             if x.get("null_score_diff") is not None and y.get("null_score_diff") is not None]
    return {"same_answers": same, "of": len(a), "max_null_score_diff_change": max(diffs, default=0.0)}


def onnx_runtime_on_cuda(run: Path, eval_file: Path, questions: Path, work: Path) -> dict:
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return {"skipped": f"onnxruntime {onnxruntime.__version__} has no CUDAExecutionProvider (providers: "
                           f"{onnxruntime.get_available_providers()}); install the gpu extra (onnxruntime-gpu) "
                           "instead of onnxruntime"}
    qa("export", "--no-merge", "--model", str(run / "model"), "--variants", "fp32,fp16", "--eval-file", str(eval_file),
       "--output-dir", str(work / "export"))
    manifest = json.loads((work / "export" / "onnx" / "export_manifest.json").read_text())
    rows, summary = serve_rows(work / "export" / "onnx", questions, work / "ort-cuda.jsonl", "--device", "cuda")
    return {"fp16_gate": manifest["variants"].get("fp16"), "serve_batch": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/gpu-check")
    parser.add_argument("--speed-questions", type=int, default=2000)
    args = parser.parse_args()
    gpu = cuda_or_exit()
    import torch

    results = {**stamp(Path(args.out).name, torch.get_num_threads()), "gpu": gpu}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        train_file, eval_file = work / "train.json", work / "eval.json"
        train_file.write_text(json.dumps(synthetic_squad(600, 1)))
        eval_file.write_text(json.dumps(synthetic_squad(60, 2)))
        small = bert(work / "small", 128, 2, 2)
        started = time.perf_counter()
        qa("train", "--model", str(small), "--train-file", str(train_file), "--eval-file", str(eval_file),
           "--output-dir", str(work / "run"), "--max-steps", "150", "--batch-size", "32", "--eval-steps", "75",
           "--lr", "1e-3", "--max-length", "128", "--doc-stride", "32", "--full-finetune")
        manifest = json.loads((work / "run" / "manifest.json").read_text())
        results["train"] = {"device": manifest["device"], "precision": manifest["precision"],
                            "seconds": time.perf_counter() - started, "final": manifest["final_metrics"]["tuned"]}
        questions = work / "questions.jsonl"
        qa("to-jsonl", str(eval_file), str(questions))
        model = work / "run" / "model"
        cpu, _ = serve_rows(model, questions, work / "cpu.jsonl", "--device", "cpu")
        results["serve_batch_small"] = {}
        for variant in ("fp32", "fp16"):
            rows, summary = serve_rows(model, questions, work / f"cuda-{variant}.jsonl", "--device", "cuda",
                                       "--variant", variant)
            results["serve_batch_small"][variant] = {"provider": summary["provider"], "variant": summary["variant"],
                                                     **agreement(rows, cpu)}
        base = bert(work / "base", 768, 12, 12)
        (base / "qa_config.json").write_text((model / "qa_config.json").read_text().replace(
            '"max_length": 128', '"max_length": 384').replace('"doc_stride": 32', '"doc_stride": 128'))
        speed = work / "speed.jsonl"
        lines = questions.read_text().splitlines()
        speed.write_text("\n".join(lines[i % len(lines)] for i in range(args.speed_questions)) + "\n")
        results["speed_bert_base"] = {}
        for name, flags in (("cuda-fp16", ("--device", "cuda", "--variant", "fp16")),
                            ("cuda-fp32", ("--device", "cuda", "--variant", "fp32")),
                            ("cpu-fp32", ("--device", "cpu", "--variant", "fp32"))):
            source = speed if name.startswith("cuda") else work / "speed-cpu.jsonl"
            if name == "cpu-fp32":
                source.write_text("\n".join(lines[i % len(lines)] for i in range(200)) + "\n")
            _, summary = serve_rows(base, source, work / f"speed-{name}.jsonl", *flags)
            results["speed_bert_base"][name] = {"questions": summary["lines"],
                                                "questions_per_second": summary["questions_per_second"],
                                                "provider": summary["provider"], "variant": summary["variant"]}
        results["onnxruntime_cuda"] = onnx_runtime_on_cuda(work / "run", eval_file, questions, work)
    write_results(Path(args.out).parent, results, markdown(results))
    print(markdown(results))


def markdown(r: dict) -> str:
    t, s = r["train"], r["speed_bert_base"]
    lines = [f"# The CUDA paths on {r['gpu']} ({r['date']})", "", machine_line(r), "",
             f"Training on CUDA: device {t['device']}, precision {t['precision']}, {t['seconds']:.0f} s for 150 steps of "
             f"a 2-layer BERT on synthetic questions; eval EM {t['final']['exact']:.1f} / F1 {t['final']['f1']:.1f}.", "",
             "| serve-batch, torch on CUDA vs CPU fp32 (same model) | provider | same best span and decision | "
             "max Δ null_score_diff |", "|---|---|---|---|"]
    for variant, row in r["serve_batch_small"].items():
        lines.append(f"| {variant} | {row['provider']} | {row['same_answers']} of {row['of']} | "
                     f"{row['max_null_score_diff_change']:.2e} |")
    lines += ["", "| serve-batch, BERT-base size (random weights: speed only) | questions | q/s | × CPU fp32 |",
              "|---|---|---|---|"]
    for name, row in s.items():
        lines.append(f"| {name} | {row['questions']} | {row['questions_per_second']:.1f} | "
                     f"{row['questions_per_second'] / s['cpu-fp32']['questions_per_second']:.1f} |")
    ort = r["onnxruntime_cuda"]
    lines += ["", "ONNX Runtime on CUDA: " + (ort["skipped"] if "skipped" in ort else json.dumps(ort))]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
