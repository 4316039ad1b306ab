"""The scripts under bench/ kept runnable: each one starts (its imports and arguments), and those that need only an
export run end to end on the tiny model, writing their results JSON and table."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_serve_load_overload_runs_and_sheds_nothing_it_accepted_late(export_copy, eval_file, tmp_path):
    done = run_script("serve_load.py", "--export", str(export_copy), "--source", str(eval_file), "--questions", "8",
                      "--threads", "1", "--only-overload", "--overload-seconds", "2", "--timeout", "2",
                      "--results-dir", str(tmp_path), "--name", "t")
    assert done.returncode == 0, done.stderr[-3000:]
    overload = results_of(tmp_path, "t")["overload"]
    assert overload["sent"] > 0 and overload["wrong_answers"] == 0
    assert "504" not in overload["statuses"], overload["statuses"]
