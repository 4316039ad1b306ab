"""Every int8 recipe tried for the CPU, against PyTorch fp32, in one run on the same windows.

    python bench/int8_variants.py --export models/minilm-squad-lora/export [--samples N]

Builds, from the export's plain fp32 graph, the candidates `qa-toolkit export` could ship: ONNX Runtime's
dynamic int8 of the plain graph (per tensor, as shipped before, and per channel) and of the graph fused by
its transformer optimizer (per channel: U8U8 as Optimum chooses for AVX2, U8S8 as for VNNI, and with
reduce_range), static QDQ int8 calibrated on training windows, and OpenVINO (fp32, NNCF int8) on the
same batches. Each row: file size, eval q/s, x torch, EM/F1 change vs torch with the threshold and on
best spans, and the fraction of the matching matmul peak reached. Writes bench/results/<name>/.
"""

import argparse
import shutil
from pathlib import Path

from toolkit import data
from toolkit.benchmarking.inference import accuracy_pass
from toolkit.benchmarking.results import machine_line, stamp, write_results
from toolkit.benchmarking.sets import SLICE_HELDOUT
from toolkit.config import QAConfig
from toolkit.exporting.common import calibration_windows
from toolkit.exporting.variants import quantize_int8
from toolkit.features import build_features
from toolkit.inference import VARIANTS, OrtPredictor, TorchPredictor
from toolkit.inference.openvino import OpenVinoPredictor
from toolkit.modeling import load_for_inference, load_tokenizer
from toolkit.runtime import default_threads, encoder_flops, machine_peaks, peak_rate
from toolkit.scoring import squad_scores


def build(onnx_dir: Path, work: Path, calibration: list[dict], log) -> dict[str, Path]:
    """The candidate int8 files (and the fused fp32 graph they start from)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process
    from optimum.onnxruntime import OptimizationConfig, ORTOptimizer

    work.mkdir(parents=True, exist_ok=True)
    for f in onnx_dir.iterdir():
        if f.is_file() and f.suffix != ".onnx" or f.name == VARIANTS["fp32"].file:
            shutil.copy(f, work / f.name)
    ORTOptimizer.from_pretrained(work).optimize(OptimizationConfig(optimization_level=2, optimize_for_gpu=False),
                                                 save_dir=work)
    plain, fused = work / VARIANTS["fp32"].file, work / VARIANTS["opt"].file
    files = {"onnx-fp32": plain, "onnx-fused-fp32": fused}
    float_default = {"DefaultTensorType": onnx.TensorProto.FLOAT, "WeightSymmetric": True}
    for name, source, per_channel, reduce_range in [("int8 plain, per tensor (shipped before)", plain, False, False),
                                                    ("int8 plain, per channel", plain, True, False),
                                                    ("int8 fused, per channel, U8U8, reduce_range", fused, True, True)]:
        files[name] = work / f"model_{len(files)}.onnx"
        log(f"building {name}")
        quantize_dynamic(source, files[name], per_channel=per_channel, reduce_range=reduce_range,
                         weight_type=QuantType.QUInt8, extra_options=float_default,
                         op_types_to_quantize=["MatMul", "Attention", "Gather", "EmbedLayerNormalization"])
    for name, signed in (("int8 fused, per channel, U8S8 (export's int8)", True),
                         ("int8 fused, per channel, U8U8 (export's int8-u8)", False)):
        files[name] = work / f"model_{len(files)}.onnx"
        log(f"building {name}")
        quantize_int8(fused, files[name], signed_weights=signed)

    class Windows(CalibrationDataReader):
        def __init__(self):
            self.rows = iter(calibration)

        def get_next(self):
            return next(self.rows, None)

    prepared = work / "model_prepared.onnx"
    quant_pre_process(str(plain), str(prepared), skip_symbolic_shape=True)
    name = f"int8 static QDQ, MinMax on {len(calibration)} training windows"
    log(f"building {name}")
    files[name] = work / "model_static.onnx"
    quantize_static(prepared, files[name], Windows(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=["MatMul", "Gather"],
                    extra_options={"WeightSymmetric": True})
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", required=True, help="export directory (merged/ + onnx/)")
    parser.add_argument("--eval-file", default=SLICE_HELDOUT)
    parser.add_argument("--samples", type=int, help="seeded subset of the eval questions (default: all)")
    parser.add_argument("--calibration-file", default="squad-v1.1-train?samples=128")
    parser.add_argument("--name", default="int8-variants-cpu")
    parser.add_argument("--results-dir", default="bench/results")
    args = parser.parse_args()
    log = lambda m: print(m, flush=True)  # noqa: E731

    threads = default_threads()
    export = Path(args.export)
    onnx_dir, work = export / "onnx", export / "int8-candidates"
    qa, tokenizer = QAConfig.load(onnx_dir), load_tokenizer(str(onnx_dir))
    examples, _ = data.load_examples([args.eval_file], cache_dir=data.default_cache_dir(), seed=42,
                                     limit=args.samples, default_split="validation")
    features = build_features(tokenizer, [e.question for e in examples], [e.context for e in examples], qa.features())
    calibration = calibration_windows(tokenizer, qa, args.calibration_file, None, 7)
    files = build(onnx_dir, work, calibration, log)

    import nncf
    import openvino as ov
    import torch

    torch.set_num_threads(threads)
    model, _, _ = load_for_inference(export / "merged")
    predictors = {"torch": TorchPredictor(model)}
    predictors.update({name: OrtPredictor(path, "cpu", threads, name) for name, path in files.items()})
    ov_fp32 = ov.convert_model(str(files["onnx-fp32"]))
    names = [i.get_any_name() for i in ov_fp32.inputs]
    log("building openvino int8 (NNCF)")
    ov_int8 = nncf.quantize(ov_fp32, nncf.Dataset(calibration, lambda w: {k: w[k] for k in names}),
                            model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration))
    ov.save_model(ov_int8, str(work / "openvino_int8.xml"), compress_to_fp16=False)
    predictors["openvino fp32"] = OpenVinoPredictor(ov_fp32, threads, "openvino fp32")
    predictors["openvino int8 (NNCF)"] = OpenVinoPredictor(ov_int8, threads, "openvino int8")
    sizes = {"torch": sum(p.stat().st_size for p in (export / "merged").glob("*.safetensors")),
             **{name: path.stat().st_size for name, path in files.items()},
             "openvino fp32": files["onnx-fp32"].stat().st_size,
             "openvino int8 (NNCF)": sum((work / f).stat().st_size for f in ("openvino_int8.xml", "openvino_int8.bin"))}

    log(f"{len(examples)} questions, {len(features)} windows, {len(predictors)} variants interleaved, {threads} threads")
    peaks = machine_peaks(threads)
    accuracy = accuracy_pass(predictors, qa, examples, features, tokenizer.pad_token_id, 256, None)
    from transformers import AutoConfig

    flops = sum(encoder_flops(AutoConfig.from_pretrained(export / "merged"), len(ids))
                for ids in features.inputs["input_ids"])
    refs = data.references(examples)
    base = accuracy["torch"]
    base_span = squad_scores(dict(zip((e.id for e in examples), base["spans"])), refs)
    rows = []
    for name, r in accuracy.items():
        span = squad_scores(dict(zip((e.id for e in examples), r["spans"])), refs)
        kind = VARIANTS[("int8-u8" if "U8U8" in name or "plain" in name else "int8") if "int8" in name else "fp32"].peak
        rows.append({"variant": name, "size_mb": sizes[name] / 2 ** 20, "questions_per_second": r["questions_per_second"],
                     "x_torch": r["questions_per_second"] / base["questions_per_second"],
                     "exact": r["exact"], "f1": r["f1"], "delta_exact": r["exact"] - base["exact"],
                     "delta_f1": r["f1"] - base["f1"], "best_span_delta_exact": span["exact"] - base_span["exact"],
                     "best_span_delta_f1": span["f1"] - base_span["f1"],
                     "peak_fraction": flops / r["seconds"] / peak_rate(kind, peaks), "peak": kind})
        rows[-1]["passes_gate"] = min(rows[-1][k] for k in ("delta_exact", "delta_f1", "best_span_delta_exact",
                                                            "best_span_delta_f1")) >= -1.0
    results = {**stamp(args.name, threads), "eval_file": args.eval_file, "questions": len(examples),
               "windows": len(features), "calibration": args.calibration_file, "peaks": peaks, "rows": rows}
    lines = [f"# int8 recipes vs PyTorch fp32 ({results['date']})", "",
             machine_line(results) + f" {len(examples)} questions "
             f"({args.eval_file}), {len(features)} windows, all variants interleaved in one run. Peaks (GOP/s): "
             f"fp32 {peaks['fp32_torch'] / 1e9:.0f}, int8 {peaks['int8_u8s8_onnxruntime'] / 1e9:.0f} U8S8 / "
             f"{peaks['int8_u8u8_onnxruntime'] / 1e9:.0f} U8U8 (ONNX Runtime MatMulInteger), bf16 {peaks['bf16_torch'] / 1e9:.0f}{'' if peaks['bf16_native'] else ' (not native here)'}. "
             "Gate: EM and F1 within 1.0 of torch, with the threshold and on best spans.", "",
             "| variant | size MB | q/s | × torch | EM (Δ) | F1 (Δ) | best-span ΔEM / ΔF1 | gate | % of peak |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['size_mb']:.1f} | {r['questions_per_second']:.1f} | {r['x_torch']:.2f} | "
                     f"{r['exact']:.2f} ({r['delta_exact']:+.2f}) | {r['f1']:.2f} ({r['delta_f1']:+.2f}) | "
                     f"{r['best_span_delta_exact']:+.2f} / {r['best_span_delta_f1']:+.2f} | "
                     f"{'pass' if r['passes_gate'] else 'FAIL'} | {100 * r['peak_fraction']:.0f}% {r['peak']} |")
    write_results(args.results_dir, results, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
