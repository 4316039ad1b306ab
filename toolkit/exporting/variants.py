"""The variants built from the plain export: fused by ONNX Runtime's transformer optimizer, int8 of the fused
graph (weights s8 or u8), fp16 for CUDA; OpenVINO IR (fp32 weights) and NNCF's static int8 of it."""

from pathlib import Path

from toolkit.inference import ONNX_FILES
from toolkit.inference.openvino import OPENVINO_VARIANTS, unusable_here
from toolkit.runtime import cuda_available

INT8_VARIANTS = ("int8", "int8-u8")


def quantize_int8(source: Path, target: Path, signed_weights: bool) -> None:
    """ONNX Runtime's dynamic int8 quantisation of a fused graph (Attention -> QAttention, MatMul ->
    DynamicQuantizeMatMul, embeddings included), symmetric weights per channel, u8 activations; weights s8
    (U8S8: the VNNI kernels) or u8 (U8U8: immune to the saturation of AVX2's VPMADDUBSW)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(source, target, per_channel=True, weight_type=QuantType.QInt8 if signed_weights else QuantType.QUInt8,
                     op_types_to_quantize=["MatMul", "Attention", "Gather", "EmbedLayerNormalization"],
                     extra_options={"WeightSymmetric": True, "ActivationSymmetric": False,
                                    # the fused contrib ops defeat ONNX shape inference: their outputs are float
                                    "DefaultTensorType": onnx.TensorProto.FLOAT})


def build_variants(wanted: list[str], onnx_dir: Path, optimization_level: int, log) -> dict[str, str]:
    """Write the wanted ONNX variants beside model.onnx; returns variant -> reason for those skipped.

    ONNX Runtime's guidance, measured here too: fuse first (its transformer optimizer: Attention,
    SkipLayerNormalization, BiasGelu, EmbedLayerNormalization), then quantise the fused graph per channel."""
    from optimum.onnxruntime import OptimizationConfig, ORTOptimizer

    skipped = {}
    int8 = [v for v in INT8_VARIANTS if v in wanted]
    if "opt" in wanted or int8:
        log(f"fusing (ONNX Runtime transformer optimizer, level O{optimization_level})")
        ORTOptimizer.from_pretrained(onnx_dir).optimize(
            OptimizationConfig(optimization_level=optimization_level, optimize_for_gpu=False), save_dir=onnx_dir)
    for name in int8:
        log(f"quantising the fused graph: dynamic int8, per channel, {'U8S8' if name == 'int8' else 'U8U8'}")
        quantize_int8(onnx_dir / ONNX_FILES["opt"], onnx_dir / ONNX_FILES[name], signed_weights=name == "int8")
    if int8 and "opt" not in wanted:
        (onnx_dir / ONNX_FILES["opt"]).unlink()
    if "fp16" in wanted:
        if cuda_available():
            log("converting to fp16 for CUDA")
            ORTOptimizer.from_pretrained(onnx_dir).optimize(
                OptimizationConfig(optimization_level=optimization_level, optimize_for_gpu=True, fp16=True),
                save_dir=onnx_dir, file_suffix="fp16")
        else:
            skipped["fp16"] = "needs a CUDA GPU (none usable here); export again on a GPU machine for fp16"
            log(f"fp16 skipped: {skipped['fp16']}")
    (onnx_dir / "ort_config.json").unlink(missing_ok=True)  # Optimum's record; ours is export_manifest.json
    return skipped


def build_openvino(wanted: list[str], onnx_dir: Path, calibration, log) -> dict[str, str]:
    """The OpenVINO IR files the wanted ov-* variants run on, beside model.onnx: the plain graph (fp32 weights)
    and NNCF's int8 of it (transformer preset, calibrated on training windows); returns variant -> reason for
    those skipped (OpenVINO missing, or bf16 inference on a CPU that would emulate it)."""
    wanted = [v for v in wanted if v in OPENVINO_VARIANTS]
    skipped = {v: reason for v in wanted if (reason := unusable_here(v))}
    files = {OPENVINO_VARIANTS[v][0] for v in wanted if v not in skipped}
    for name, reason in skipped.items():
        log(f"{name} skipped: {reason}")
    if not files:
        return skipped
    import openvino as ov

    model = ov.convert_model(str(onnx_dir / ONNX_FILES["fp32"]))
    plain, int8 = OPENVINO_VARIANTS["ov-fp32"][0], OPENVINO_VARIANTS["ov-int8"][0]
    if plain in files:
        log("converting to OpenVINO IR (fp32 weights)")
        ov.save_model(model, str(onnx_dir / plain), compress_to_fp16=False)
    if int8 in files:
        import nncf

        log(f"quantising for OpenVINO: NNCF static int8, transformer preset, {len(calibration)} training windows")
        names = [i.get_any_name() for i in model.inputs]
        quantized = nncf.quantize(model, nncf.Dataset(calibration, lambda window: {k: window[k] for k in names}),
                                  model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration))
        ov.save_model(quantized, str(onnx_dir / int8), compress_to_fp16=False)
    return skipped
