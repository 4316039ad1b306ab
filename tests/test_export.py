import json
import shutil

import onnx as onnx_lib
import pytest
from click.testing import CliRunner

from toolkit.cli import main
from toolkit.config import QAConfig
from toolkit.exporting import ExportConfig, ExportError, export, gate
from toolkit.inference import VARIANTS, OrtPredictor
from toolkit.runtime import cpu_features, cpu_name, native_bf16


def run_export(*args):
    return CliRunner().invoke(main, ["export", *args], catch_exceptions=False)


def test_export_merge_writes_every_cpu_variant_with_parity(exported_bert):
    manifest = json.loads((exported_bert / "export_manifest.json").read_text())
    assert manifest["merge_max_abs_logit_diff"] < 1e-4
    onnx = exported_bert / "onnx"
    # the file names are a contract with every export already made: the registry must not rename them
    assert {n: VARIANTS[n].file for n in ("fp32", "opt", "int8", "int8-u8", "fp16", "ov-fp32", "ov-int8")} == {
        "fp32": "model.onnx", "opt": "model_optimized.onnx", "int8": "model_quantized.onnx",
        "int8-u8": "model_quantized_u8.onnx", "fp16": "model_fp16.onnx", "ov-fp32": "openvino_model.xml",
        "ov-int8": "openvino_model_int8.xml"}
    for name in ("fp32", "opt", "int8", "int8-u8"):
        v = manifest["variants"][name]
        assert (onnx / VARIANTS[name].file).exists() and v["size_bytes"] > 0
        assert {"max_abs_logit_diff", "answer_agreement", "span_agreement", "delta_exact", "delta_f1",
                "forced_delta_exact", "passed"} <= set(v)
        OrtPredictor(onnx / VARIANTS[name].file)  # loads in ONNX Runtime on the CPU
    for name in ("fp32", "opt"):
        assert manifest["variants"][name]["max_abs_logit_diff"] < 1e-4
        assert manifest["variants"][name]["answer_agreement"] == manifest["variants"][name]["span_agreement"] == 100.0
    assert manifest["variants"]["int8"]["max_abs_logit_diff"] < 1.0
    assert manifest["variants"]["fp16"]["passed"] is False and "CUDA" in manifest["variants"]["fp16"]["reason"]
    for name, weights in (("int8", 3), ("int8-u8", 2)):  # onnx TensorProto INT8 = 3, UINT8 = 2
        graph = onnx_lib.load(onnx / VARIANTS[name].file).graph
        ops = {node.op_type for node in graph.node}
        assert {"QAttention", "MatMulInteger"} <= ops, ops
        assert "Attention" not in ops  # quantised from the fused graph: attention runs as an integer kernel
        matmul_weights = {node.input[1] for node in graph.node if node.op_type == "MatMulInteger"}
        assert {t.data_type for t in graph.initializer if t.name in matmul_weights} == {weights}, name
    for name, file in (("ov-fp32", "openvino_model.xml"), ("ov-int8", "openvino_model_int8.xml")):
        v = manifest["variants"][name]  # OpenVINO IR beside the ONNX files, gated like every variant
        assert v["file"] == file and (onnx / file).exists() and (onnx / file).with_suffix(".bin").exists()
        assert "passed" in v and v["provider"] == "OpenVINO-CPU" and v["size_bytes"] > (onnx / file).stat().st_size
    assert manifest["variants"]["ov-fp32"]["max_abs_logit_diff"] < 1e-3
    for name in ("ov-bf16", "ov-int8-bf16"):  # built and gated only where bf16 is native
        v = manifest["variants"][name]
        assert ("native bf16" in v.get("reason", "")) != native_bf16(), v
    qa = QAConfig.load(onnx)
    passed = {k: v for k, v in manifest["variants"].items() if v["passed"] and k != "fp16"}
    assert qa.default_variant["cpu"] == max(passed, key=lambda k: passed[k]["questions_per_second"])
    assert qa.cpu_ranking == sorted(passed, key=lambda k: -passed[k]["questions_per_second"])
    assert qa.measured_on == {"cpu": cpu_name(), "features": cpu_features()} and "avx2" in qa.measured_on["features"]
    assert qa.max_length == 64
    assert qa.null_threshold == QAConfig.load(exported_bert.parent / "adapter").null_threshold
    assert (onnx / "tokenizer.json").exists()
    assert (exported_bert / "merged" / "model.safetensors").exists()


def test_distilbert_export_and_plain_export_of_merged_model(trained_distilbert, eval_file, tmp_path):
    out = tmp_path / "d"
    result = run_export("--merge", "--adapter", str(trained_distilbert / "adapter"), "--eval-file", str(eval_file),
                        "--output-dir", str(out), "--variants", "fp32,opt")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "export_manifest.json").read_text())
    assert manifest["variants"]["fp32"]["max_abs_logit_diff"] < 1e-4
    plain = run_export("--model", str(out / "merged"), "--output-dir", str(tmp_path / "p"), "--eval-file",
                       str(eval_file), "--variants", "fp32")
    assert plain.exit_code == 0, plain.output
    assert (tmp_path / "p" / "onnx" / "model.onnx").exists()


def test_existing_output_dir_needs_overwrite(exported_bert, trained_bert, eval_file):
    before = (exported_bert / "export_manifest.json").read_text()
    result = run_export("--merge", "--adapter", str(trained_bert / "adapter"), "--eval-file", str(eval_file))
    assert result.exit_code != 0 and "--overwrite" in result.output
    assert (exported_bert / "export_manifest.json").read_text() == before


def test_missing_adapter_dir(tmp_path):
    result = run_export("--merge", "--adapter", str(tmp_path / "nope"))
    assert result.exit_code != 0 and "adapter directory not found" in result.output


def test_adapter_whose_base_is_gone(trained_bert, tmp_path):
    adapter = tmp_path / "adapter"
    shutil.copytree(trained_bert / "adapter", adapter)
    qa = QAConfig.load(adapter)
    qa.base_model = str(tmp_path / "deleted-base")
    qa.save(adapter)
    result = run_export("--merge", "--adapter", str(adapter), "--output-dir", str(tmp_path / "o"))
    assert result.exit_code != 0 and "deleted-base" in result.output and "no such directory" in result.output
    assert not (tmp_path / "o").exists()


def test_adapter_from_another_architecture(trained_distilbert, tiny_bert, tmp_path):
    adapter = tmp_path / "adapter"
    shutil.copytree(trained_distilbert / "adapter", adapter)
    qa = QAConfig.load(adapter)
    qa.base_model = str(tiny_bert)  # a BERT base under a DistilBERT adapter
    qa.save(adapter)
    result = run_export("--merge", "--adapter", str(adapter), "--output-dir", str(tmp_path / "o"))
    assert result.exit_code != 0 and "'distilbert'" in result.output and "'bert'" in result.output


def test_failed_export_leaves_nothing_that_looks_complete(trained_bert, eval_file, tmp_path):
    cfg = ExportConfig(adapter=str(trained_bert / "adapter"), output_dir=str(tmp_path / "o"), eval_file=str(eval_file),
                       merge_tolerance=-1.0, variants=["fp32"])
    with pytest.raises(ExportError, match="merged model differs"):
        export(cfg)
    assert list(tmp_path.iterdir()) == []


def test_bad_variant_names(trained_bert):
    result = run_export("--merge", "--adapter", str(trained_bert / "adapter"), "--variants", "fp32,int4")
    assert result.exit_code != 0 and "variants must" in result.output


def test_without_merge_an_adapter_dir_is_pointed_to_merge(trained_bert):
    result = run_export("--model", str(trained_bert / "adapter"))
    assert result.exit_code != 0 and "--merge --adapter" in result.output


def judged(changes: dict, width: float, questions: int = 2000) -> dict:
    """A parity result whose 95 % intervals lie width either side of each change."""
    return {**changes, "questions": questions, "intervals": {k: (v - width, v + width) for k, v in changes.items()}}


def test_gate_decides_on_each_interval_em_or_f1_with_the_threshold_or_on_best_spans():
    fine = {"delta_exact": -0.5, "delta_f1": 0.5, "forced_delta_exact": -0.6, "forced_delta_f1": -0.2}
    assert gate(judged(fine, 0.3), 1.0) == ("pass", None)
    for key, label in (("delta_exact", "EM"), ("delta_f1", "F1"), ("forced_delta_exact", "best-span EM"),
                       ("forced_delta_f1", "best-span F1")):
        verdict, reason = gate(judged({**fine, key: -1.5}, 0.3), 1.0)
        assert verdict == "fail" and reason.startswith(f"{label} drops 1.50 points vs PyTorch [95 %: -1.80, -1.20]")
        # the same mean change on too few questions to tell: never a default, and not a fail either
        verdict, reason = gate({**judged(fine, 0.3), key: -1.5, "intervals": {
            **judged(fine, 0.3)["intervals"], key: (-2.5, -0.5)}, "undecided": {label: 9000}}, 1.0)
        assert verdict == "undecided" and f"{label} -1.50 [-2.50, -0.50]: ~9000 questions would decide" in reason
    # a mean within the limit whose interval reaches beyond it is not a pass
    verdict, reason = gate(judged(fine, 0.7), 1.0)
    assert verdict == "undecided" and "not shown to lose at most 1.0 points on 2000 questions" in reason
