import json

import pytest
from click.testing import CliRunner

from toolkit.cli import main
from toolkit.runtime import cpu_flags, native_bf16
from toolkit.scoring import score_answer_file


def test_bench_writes_json_markdown_and_plot(exported_bert, eval_file, squad_file, tmp_path):
    result = CliRunner().invoke(main, ["bench", "--model", str(exported_bert), "--eval-file", str(eval_file),
                                       "--calibration-file", str(squad_file),
                                       "--batch-sizes", "1,2", "--seq-lens", "real,64", "--latency-batches", "2",
                                       "--results-dir", str(tmp_path), "--name", "t"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = tmp_path / "t"
    results = json.loads((out / "results.json").read_text())
    bf16 = {"torch-bf16", "ov-bf16", "ov-int8-bf16"}  # run where bf16 is native, else skipped, saying why
    assert set(results["variants"]) == {"torch-fp32", "fp32", "opt", "int8", "int8-u8", "ov-int8",
                                        *(bf16 if native_bf16() else ())}
    assert results["skipped"] == sorted({"fp16", *(() if native_bf16() else bf16)}) and results["baseline"] == "torch-fp32"
    assert all("native bf16" in results["skipped_why"][v] for v in bf16 & set(results["skipped"]))
    assert results["matmul_flops_per_second"] > 1e8
    for _name, row in results["variants"].items():
        assert set(row["latency"]) == {"b1-real", "b1-64", "b2-real", "b2-64"}
        cell = row["latency"]["b2-64"]
        assert 0 < cell["p50_ms"] <= cell["p95_ms"] and cell["achieved_flops"] > 0
        assert row["peak_memory"]["above_baseline_mb"] > 0 and row["size_mb"] > 0
        assert row["questions_per_second"] > 0 and {"exact", "f1", "HasAns_f1", "NoAns_f1"} <= set(row)
    torch_ms = results["variants"]["torch-fp32"]["latency"]
    for _name, row in results["variants"].items():  # each variant's speed-up: torch's mean latency over its own
        for cell, speedup in row["speedup_vs_baseline"].items():
            assert speedup == pytest.approx(torch_ms[cell]["mean_ms"] / row["latency"][cell]["mean_ms"])
    assert results["variants"]["fp32"]["answer_agreement_vs_baseline"] == 100.0
    assert results["variants"]["fp32"]["span_agreement_vs_baseline"] == 100.0
    peers = results["peers"]
    assert set(peers) == {"pipeline-torch", "pipeline-ort", "pipeline-ov-fp32", "pipeline-ov-int8"}
    for kind, peer in peers.items():  # every peer runs or says why not (OpenVINO without the peers extra)
        assert peer.get("questions_per_second", 0) > 0 and "f1" in peer or "peers extra" in peer["skipped"], kind
    assert results["best_peer"] in peers and results["throughput_ratio_ours_best_vs_best_peer"] > 0
    peaks = results["peaks"]
    assert min(peaks["fp32_torch"], peaks["fp32_onnxruntime"], peaks["int8_u8s8_onnxruntime"],
               peaks["int8_u8u8_onnxruntime"], peaks["bf16_torch"]) > 1e8
    assert all(0 < row["eval_roofline_fraction"] < 1.5 for row in results["variants"].values())
    assert "| int8 |" in (out / "results.md").read_text()
    assert (out / "latency.png").stat().st_size > 0


def test_bench_train_modes_and_eval_pass(tiny_bert, eval_file, tmp_path):
    modes = "lora,full,seed-lora,lora-fused,lora-bf16"  # one process each; lora-compile: a minute of compiling
    result = CliRunner().invoke(main, ["bench", "--train", "--model", str(tiny_bert), "--eval-file", str(eval_file),
                                       "--train-modes", modes, "--steps", "2", "--batch-size", "4",
                                       "--results-dir", str(tmp_path), "--name", "tr"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "tr" / "results.json").read_text())
    ran = {name: r for name, r in results["modes"].items() if "skipped" not in r}
    assert set(results["modes"]) == set(modes.split(","))
    assert ("lora-bf16" in ran) == bool({"avx512_bf16", "amx_bf16"} & cpu_flags())  # emulated bf16 is not timed
    lora, full, seed = ran["lora"], ran["full"], ran["seed-lora"]
    assert seed["trainable"] < lora["trainable"] < full["trainable"] == full["total"]
    assert ran["lora-fused"]["mode"]["adamw"] == "fused" and ran["lora-fused"]["trainable"] == lora["trainable"]
    assert all(r["seconds_per_step"] > 0 and r["batch_shape"] == lora["batch_shape"] for r in ran.values())
    for name, r in ran.items():  # each mode's cost in LoRA steps
        assert results["x_lora"][name] == pytest.approx(r["seconds_per_step"] / lora["seconds_per_step"])
    assert set(results["eval"]["windows_per_second"]) == {"8", "32", "64"}
    assert all(rate > 0 for rate in results["eval"]["windows_per_second"].values())
    assert "| lora-fused |" in (tmp_path / "tr" / "results.md").read_text()
    bad = CliRunner().invoke(main, ["bench", "--train", "--model", str(tiny_bert), "--eval-file", str(eval_file),
                                    "--train-modes", "lora,warp", "--results-dir", str(tmp_path)])
    assert bad.exit_code != 0 and "warp" in bad.output


def test_bench_refuses_a_dir_without_export(trained_bert, eval_file):
    result = CliRunner().invoke(main, ["bench", "--model", str(trained_bert / "adapter"), "--eval-file",
                                       str(eval_file)])
    assert result.exit_code != 0 and "no ONNX export" in result.output


def test_to_jsonl_serve_and_score_round_trip(exported_bert, eval_file, tmp_path):
    src = tmp_path / "q.jsonl"
    runner = CliRunner()
    assert runner.invoke(main, ["to-jsonl", str(eval_file), str(src)]).exit_code == 0
    assert len(src.read_text().splitlines()) == 9
    out = tmp_path / "a.jsonl"
    assert runner.invoke(main, ["serve-batch", str(src), "--model", str(exported_bert / "onnx"), "-o", str(out)]).exit_code == 0
    result = runner.invoke(main, ["score", str(out), "--references", str(eval_file)])
    scores = json.loads(result.output)
    assert scores["total"] == 9 and scores["missing_ids"] == 0 and scores["error_lines"] == 0


def test_score_answer_file_hand_worked(tmp_path):
    out = tmp_path / "a.jsonl"
    rows = [{"id": "a", "answer": "Denver Broncos"}, {"id": "b", "answer": None, "no_answer": True},
            {"id": "c", "error": "malformed JSON"}, {"id": "zzz", "answer": "x"}]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scores = score_answer_file(str(out), {"a": ["Denver Broncos"], "b": [], "c": ["x"], "d": ["y"]})
    assert scores["exact"] == 50.0 and scores["error_lines"] == 1 and scores["unknown_ids"] == 1
    assert scores["missing_ids"] == 1 and "no_answer_auc" not in scores  # no line has a null_score_diff
    rows = [{"id": "a", "answer": "Denver Broncos", "null_score_diff": -2.0},
            {"id": "b", "answer": None, "null_score_diff": 1.5}, {"id": "c", "answer": None, "null_score_diff": None},
            {"id": "d", "answer": "y", "null_score_diff": 3.0}]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # b (unanswerable, 1.5) is above a (-2.0), below d (3.0); c has no span at all (+inf)
    assert score_answer_file(str(out), {"a": ["Avon"], "b": [], "c": ["x"], "d": ["y"]})["no_answer_auc"] == 100 / 3


def test_accuracy_panel_shows_the_peers_that_ran():
    """The latency figure's accuracy panel: every variant, and every peer that ran (results store them under
    "peers"; one that was skipped has no scores to show)."""
    from toolkit.benchmarking.report import accuracy_bars

    results = {"variants": {"torch-fp32": {"exact": 60.0, "f1": 70.0}, "int8": {"exact": 59.0, "f1": 69.5}},
               "peers": {"pipeline-ort": {"exact": 58.0, "f1": 68.0, "questions_per_second": 9.0},
                         "pipeline-ov-fp32": {"skipped": "needs the peers extra"}}}
    assert accuracy_bars(results) == (["torch-fp32", "int8", "peer: pipeline-ort"], [60.0, 59.0, 58.0],
                                      [70.0, 69.5, 68.0])


def test_gpu_check_refuses_clearly_without_a_gpu_and_its_data_loads(tmp_path):
    """bench/gpu_check.py runs on a GPU machine; here its refusal and its synthetic data are checked."""
    import subprocess
    import sys

    import torch

    from toolkit import data

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: run bench/gpu_check.py itself")
    done = subprocess.run([sys.executable, "bench/gpu_check.py", "--payload", str(tmp_path), "--out",
                           str(tmp_path / "g")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "no CUDA GPU here" in done.stderr and not (tmp_path / "g").exists()
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", "bench/gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    synthetic_squad = gpu_check.synthetic_squad

    path = tmp_path / "s.json"
    path.write_text(json.dumps(synthetic_squad(20, 1)))
    examples, _ = data.load_examples([str(path)], cache_dir=tmp_path, seed=42, limit=None, default_split="validation")
    assert len(examples) == 50 and sum(e.is_impossible for e in examples) == 10
    assert all(e.context[e.answer_starts[0]:].startswith(e.answer_texts[0]) for e in examples if not e.is_impossible)
