"""The scripts under bench/ kept runnable: each one starts (its imports and arguments), and those that need only an
export run end to end on the tiny model, writing their results JSON and table."""

import dataclasses
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_train

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in (ROOT / "bench").glob("*.py"))

pytestmark = pytest.mark.slow


def run_script(name: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / name), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_bench_script_starts(name):
    done = run_script(name, "--help", timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


@pytest.fixture
def export_copy(exported_bert, tmp_path) -> Path:
    """The tiny export, copied: the scripts write their work files beside it."""
    return Path(shutil.copytree(exported_bert, tmp_path / "export"))


def results_of(results_dir: Path, name: str) -> dict:
    assert (results_dir / name / "results.md").read_text().strip()
    return json.loads((results_dir / name / "results.json").read_text())


def test_serve_squad_dev_runs_every_variant_here_and_scores_them(export_copy, eval_file, tmp_path):
    done = run_script("serve_squad_dev.py", "--export", str(export_copy), "--source", str(eval_file), "--samples", "4",
                      "--peers", "none", "--results-dir", str(tmp_path), "--name", "t")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = results_of(tmp_path, "t")["rows"]
    assert {"fp32", "torch-fp32"} <= {r["variant"] for r in rows}
    assert all(r["questions_per_second"] > 0 and 0 <= r["f1"] <= 100 for r in rows)


def test_batch_shapes_runs(export_copy, eval_file, tmp_path):
    done = run_script("batch_shapes.py", "--export", str(export_copy), "--source", str(eval_file), "--questions", "4",
                      "--per-call", "2", "--rounds", "1", "--threads", "1", "--results-dir", str(tmp_path),
                      "--name", "t")
    assert done.returncode == 0, done.stderr[-3000:]
    assert results_of(tmp_path, "t")


def test_serve_load_sweep_says_where_the_servers_seconds_go(export_copy, eval_file, tmp_path):
    done = run_script("serve_load.py", "--export", str(export_copy), "--source", str(eval_file), "--questions", "8",
                      "--threads", "1", "--levels", "1,4", "--rounds", "1", "--only-sweep", "--results-dir",
                      str(tmp_path), "--name", "t")
    assert done.returncode == 0, done.stderr[-3000:]
    results = results_of(tmp_path, "t")
    assert [row["concurrency"] for row in results["sweep"]] == [1, 4] and results["same_as_serve_batch"] == 8
    for row in results["sweep"]:
        stages = row["stage_share"]
        assert set(stages) == {"checks", "tokenise", "infer", "postprocess"} and stages["infer"] > 0
        assert sum(stages.values()) <= row["engine_busy_share"] <= 1  # the stages are parts of the engine calls
    assert "engine waiting" in (tmp_path / "t" / "results.md").read_text()


def test_serve_load_overload_runs_and_sheds_nothing_it_accepted_late(export_copy, eval_file, tmp_path):
    done = run_script("serve_load.py", "--export", str(export_copy), "--source", str(eval_file), "--questions", "8",
                      "--threads", "1", "--only-overload", "--overload-seconds", "2", "--timeout", "2",
                      "--results-dir", str(tmp_path), "--name", "t")
    assert done.returncode == 0, done.stderr[-3000:]
    overload = results_of(tmp_path, "t")["overload"]
    assert overload["sent"] > 0 and overload["wrong_answers"] == 0
    assert "504" not in overload["statuses"], overload["statuses"]


def bench_module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_calibration_served_by_links_the_export_with_the_adapters_calibration(trained_bert, exported_bert, tmp_path):
    from toolkit.config import QAConfig

    served_by = bench_module("calibration").served_by
    adapter = Path(shutil.copytree(trained_bert / "adapter", tmp_path / "adapter"))
    fitted = {"method": "platt", "no_answer": [1.5, -0.25], "answer": [0.1, 0.2, 0.3]}
    QAConfig.save(dataclasses.replace(QAConfig.load(adapter), calibration=fitted), adapter)
    served = served_by(exported_bert, adapter, tmp_path / "served")
    assert QAConfig.load(served).calibration == fitted
    assert QAConfig.load(exported_bert / "onnx").calibration != fitted  # the export itself is untouched
    assert (served / "model.onnx").is_symlink() and not (served / "qa_config.json").is_symlink()
    assert QAConfig.load(served).cpu_ranking == QAConfig.load(exported_bert / "onnx").cpu_ranking

    QAConfig.save(dataclasses.replace(QAConfig.load(adapter), null_threshold=123.0), adapter)
    with pytest.raises(SystemExit, match="was not exported from"):
        served_by(exported_bert, adapter, tmp_path / "served")


def test_one_budget_names_what_a_run_lacks(trained_bert, exported_bert, tiny_bert, files, tmp_path):
    exports = bench_module("one_budget").exports
    with pytest.raises(SystemExit, match="did not continue an adapter"):
        exports(trained_bert)
    continued = tmp_path / "continued"
    result = run_train(tiny_bert, files, continued, "--init-adapter", str(trained_bert / "adapter"))
    assert result.exit_code == 0, result.output
    with pytest.raises(SystemExit, match=f"{continued / 'export'}: no export"):
        exports(continued)
    shutil.copytree(exported_bert, continued / "export")
    manifest, before, after = exports(continued)
    assert (before, after) == (exported_bert, continued / "export") and manifest["timing"]["global_step"] > 0


def test_gate_noise_gates_each_variant_on_disjoint_samples(export_copy, eval_file, tmp_path):
    done = run_script("gate_noise.py", "--export", str(export_copy), "--variants", "fp32,int8", "--source",
                      str(eval_file), "--samples", "3", "--splits", "2", "--results-dir", str(tmp_path), "--name", "t")
    assert done.returncode == 0, done.stderr[-3000:]
    results = results_of(tmp_path, "t")
    assert len(results["results"]) == 2
    for split in results["results"]:
        fp32 = split["fp32"]  # the plain graph answers as PyTorch does: no change, a zero interval, decided
        assert fp32["verdict"] == "pass" and fp32["delta_f1"] == 0 and fp32["intervals"]["delta_f1"] == [0.0, 0.0]
        assert fp32["undecided"] == {} and split["int8"]["verdict"] in ("pass", "fail", "undecided")
    too_many = run_script("gate_noise.py", "--export", str(export_copy), "--variants", "fp32", "--source",
                          str(eval_file), "--samples", "100", "--splits", "2", "--results-dir", str(tmp_path))
    assert too_many.returncode != 0 and "fewer than 2 x 100" in too_many.stderr


def test_int8_sensitivity_ranks_every_quantised_node_then_gates_on_tune_and_held_out_halves(export_copy, eval_file,
                                                                                            tmp_path):
    import onnx

    from toolkit.exporting.variants import QUANTIZED_OPS

    done = run_script("int8_sensitivity.py", "--export", str(export_copy), "--tune", str(eval_file), "--check",
                      str(eval_file), "--keep", "2", "--rank-questions", "4", "--results-dir", str(tmp_path),
                      "--name", "t")
    assert done.returncode == 0, done.stderr[-3000:]
    results = results_of(tmp_path, "t")
    graph = onnx.load(str(export_copy / "onnx" / "model_optimized.onnx"), load_external_data=False).graph
    assert sorted(row["node"] for row in results["ranking"]) == sorted(
        node.name for node in graph.node if node.op_type in QUANTIZED_OPS)
    errors = [row["error"] for row in results["ranking"]]
    assert errors == sorted(errors) and results["all_quantised_error"] > 0
    assert [(g["keep"], g["set"]) for g in results["gates"][:2]] == [(0, "tune"), (2, "tune")]  # k=0 always
    held = {(g["keep"], g["set"]) for g in results["gates"][2:]}
    assert held == {(k, f"held-out half {n}") for k in {0, results["chosen"]} for n in (1, 2)}
    assert results["kept"] == [row["node"] for row in results["ranking"][:results["chosen"]]]
    assert all(g["verdict"] in ("pass", "fail", "undecided") for g in results["gates"])
    assert not (tmp_path / "t" / "work").exists()  # the candidate models are removed
