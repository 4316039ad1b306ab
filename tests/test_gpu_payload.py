"""bench/gpu_payload.py on the tiny model: built, split into pieces, joined, verified and installed into a private
directory; a missing or corrupt piece named before anything is joined."""

import base64
import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_payload.py"

pytestmark = pytest.mark.slow


def probe_wheel(directory: Path) -> Path:
    """A one-module wheel, built by hand, for the join step to install."""
    files = {"qa_payload_probe/__init__.py": b"ANSWER = 42\n",
             "qa_payload_probe-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: qa-payload-probe\nVersion: 1.0\n",
             "qa_payload_probe-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                     b"Tag: py3-none-any\n"}
    record = "".join(f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
                     f"{len(data)}\n" for name, data in files.items())
    path = directory / "qa_payload_probe-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
        wheel.writestr("qa_payload_probe-1.0.dist-info/RECORD", record + "qa_payload_probe-1.0.dist-info/RECORD,,\n")
    return path


def payload(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def built(trained_bert, eval_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("payload") / "pieces"
    wheel = probe_wheel(tmp_path_factory.mktemp("wheels"))
    done = payload("build", "--out", str(out), "--adapter", f"tiny={trained_bert / 'adapter'}:fp32,fp16,torch",
                   "--source", str(eval_file), "--questions", "4", "--wheels", "none", "--wheel", str(wheel),
                   "--piece-mb", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "join" in done.stdout and "carry" in done.stdout  # the carry sequence
    return out


def test_built_pieces_join_into_the_models_answers_and_installed_wheels(built, tmp_path):
    manifest = json.loads((built / "payload.json").read_text())
    assert len(manifest["pieces"]) >= 2 and all(p["bytes"] <= 1 << 20 for p in manifest["pieces"])
    assert manifest["wheels"] == ["qa_payload_probe-1.0-py3-none-any.whl"]
    done = payload("join", str(built), "--target", str(tmp_path / "gpu"))
    assert done.returncode == 0, done.stderr[-3000:]
    joined = tmp_path / "gpu" / "payload"
    model = joined / "models" / "tiny"
    assert {"model.onnx", "model_fp16.onnx", "qa_config.json", "tokenizer.json"} <= {f.name for f in model.iterdir()}
    assert not list(model.glob("*.xml")) and not list(model.glob("model_quantized*"))  # only what was asked for
    assert {"model.safetensors", "config.json", "qa_config.json"} <= {f.name for f in (model / "merged").iterdir()}
    answers = [json.loads(line) for line in (joined / "answers" / "tiny.cpu-fp32.jsonl").read_text().splitlines()]
    questions = [json.loads(line) for line in (joined / "questions.jsonl").read_text().splitlines()]
    references = json.loads((joined / "references.json").read_text())
    assert [a["id"] for a in answers] == [q["id"] for q in questions] == list(references) and len(answers) == 4
    assert all("best_span" in a and "error" not in a for a in answers)
    installed = subprocess.run([sys.executable, "-c", "import qa_payload_probe; print(qa_payload_probe.ANSWER)"],
                               env={"PYTHONPATH": str(tmp_path / "gpu" / "site")}, capture_output=True, text=True)
    assert installed.stdout.strip() == "42", installed.stderr


def test_a_corrupt_or_missing_piece_is_named_and_nothing_is_joined(built, tmp_path):
    pieces = tmp_path / "pieces"
    pieces.mkdir()
    for f in built.iterdir():
        (pieces / f.name).write_bytes(f.read_bytes())
    corrupt = bytearray((pieces / "payload.tar.001").read_bytes())
    corrupt[100] ^= 0xFF
    (pieces / "payload.tar.001").write_bytes(bytes(corrupt))
    (pieces / "payload.tar.000").unlink()
    done = payload("join", str(pieces), "--target", str(tmp_path / "gpu"))
    assert done.returncode == 2
    assert "payload.tar.000 is missing" in done.stderr and "payload.tar.001 is corrupt" in done.stderr
    assert not (tmp_path / "gpu" / "payload").exists()


def test_bad_adapter_argument_is_refused(tmp_path):
    done = payload("build", "--out", str(tmp_path / "p"), "--adapter", "fast=models/minilm-squad2-lora/adapter:int4",
                   "--wheels", "none")
    assert done.returncode == 2 and "LABEL=DIR:PRECISIONS" in done.stderr


def test_gpu_check_runs_its_steps_on_the_cpu_from_a_joined_payload(built, tmp_path):
    """The check on --device cpu: every engine the payload holds answers or says why not, the speed and serving
    steps write their rows; on a GPU the same code runs on CUDA."""
    joined = payload("join", str(built), "--target", str(tmp_path / "gpu"))
    assert joined.returncode == 0, joined.stderr[-3000:]
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--payload",
                           str(tmp_path / "gpu" / "payload"), "--device", "cpu", "--skip-training", "--rounds", "1",
                           "--concurrency", "4", "--out", str(tmp_path / "results" / "gpu-check-t")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results" / "gpu-check-t" / "results.json").read_text())
    parity = results["parity"]
    assert parity["tiny/ort-fp32"]["same_best_span"] == 1.0 and parity["tiny/ort-fp32"]["delta_f1"] == 0.0
    assert "tiny/torch-fp32" in parity and "fp16 runs on cuda" in results["skipped"]["tiny/ort-fp16"]
    assert {(r["engine"], r["batch"]) for r in results["speed"]["rows"]} >= {("tiny/ort-fp32", b) for b in (1, 8, 32, 128)}
    serving = results["serving"]["tiny"]
    assert serving["serve_batch"]["variant"] == "fp32" and serving["serve"]["same_as_serve_batch"] == 4
    assert "| tiny/ort-fp32 |" in (tmp_path / "results" / "gpu-check-t" / "results.md").read_text()

