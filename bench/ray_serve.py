"""serve-batch in one process vs on a local Ray instance (2 actors x 1 thread), same file, same model.

    python bench/ray_serve.py [--questions 1000] [--name ray-serve-cpu]

Byte-identical outputs are checked; the Ray row's wall time includes starting Ray and its actors.
"""

import argparse
import json
import subprocess
import time
from pathlib import Path

from toolkit.benchmarking.results import qa_command, stamp, write_results

ROOT = Path(__file__).resolve().parents[1]
QA = qa_command()
MODEL = ROOT / "models" / "minilm-squad-lora" / "export" / "onnx"


def timed(args: list[str]) -> dict:
    started = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True, check=True)
    summary = json.loads([line for line in result.stderr.splitlines() if line.startswith("{")][-1])
    return {"wall_seconds": time.perf_counter() - started, "job_seconds": summary["seconds"],
            "questions_per_second": summary["questions_per_second"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--questions", type=int, default=1000)
    parser.add_argument("--name", default="ray-serve-cpu")
    args = parser.parse_args()
    work = ROOT / "models" / "bench-ray"
    work.mkdir(parents=True, exist_ok=True)
    questions = work / "questions.jsonl"
    subprocess.run([*QA, "to-jsonl", f"squad-v1.1-dev?samples={args.questions}", str(questions)], check=True)
    # chunks of 128 lines: 8 chunks to share among the actors (one 1,024-line chunk would keep one busy)
    common = [*QA, "serve-batch", str(questions), "--model", str(MODEL), "--variant", "fp32", "--chunk-size", "128"]
    rows = {
        "single process, 2 threads": timed([*common, "--threads", "2", "-o", str(work / "single2.jsonl")]),
        "single process, 1 thread": timed([*common, "--threads", "1", "-o", str(work / "single1.jsonl")]),
        "ray, 2 workers x 1 thread": timed([*common, "--ray", "--workers", "2", "--threads-per-worker", "1",
                                            "-o", str(work / "ray.jsonl")]),
    }
    identical = (work / "ray.jsonl").read_bytes() == (work / "single1.jsonl").read_bytes()
    results = {**stamp(args.name, 2), "questions": args.questions, "rows": rows,
               "ray_output_identical_to_1_thread_run": identical}
    table = ["| row | job q/s | job s | process wall s |", "|---|---|---|---|"]
    table += [f"| {k} | {v['questions_per_second']:.1f} | {v['job_seconds']:.1f} | {v['wall_seconds']:.1f} |"
              for k, v in rows.items()]
    table += ["", f"Ray output byte-identical to the 1-thread run: {identical}"]
    write_results(ROOT / "bench" / "results", results, "\n".join(table))
    print("\n".join(table))


if __name__ == "__main__":
    main()
