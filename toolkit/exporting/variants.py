"""How export builds each variant's file (variants.VARIANTS names the build): Optimum's plain ONNX graph, fused by
ONNX Runtime's transformer optimizer, dynamic int8 of the fused graph (weights s8 or u8), fp16 for CUDA; OpenVINO
IR (fp32 weights) and NNCF's static int8 of it. A file several variants share is built once."""

from pathlib import Path

from toolkit.inference.variants import VARIANTS

QUANTIZED_OPS = ("MatMul", "Attention", "Gather", "EmbedLayerNormalization")  # what the int8 variants quantise


def quantize_int8(source: Path, target: Path, *, signed_weights: bool, keep_fp32: tuple[str, ...] = ()) -> None:
    """ONNX Runtime's dynamic int8 quantisation of a fused graph (Attention -> QAttention, MatMul ->
    DynamicQuantizeMatMul, embeddings included), symmetric weights per channel, u8 activations; weights s8
    (U8S8: the VNNI kernels) or u8 (U8U8: immune to the saturation of AVX2's VPMADDUBSW); the nodes named in
    keep_fp32 stay as they are."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(source, target, per_channel=True, weight_type=QuantType.QInt8 if signed_weights else QuantType.QUInt8,
                     op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_exclude=list(keep_fp32),
                     extra_options={"WeightSymmetric": True, "ActivationSymmetric": False,
                                    # the fused contrib ops defeat ONNX shape inference: their outputs are float
                                    "DefaultTensorType": onnx.TensorProto.FLOAT})


def buildable(wanted: list[str]) -> tuple[list[str], dict[str, str]]:
    """(the wanted variants that can be built and gated here, variant -> why not for the others)."""
    skipped = {name: reason for name in wanted if (reason := VARIANTS[name].unusable())}
    return [name for name in wanted if name not in skipped], skipped


def build_files(wanted: list[str], onnx_dir: Path, optimization_level: int, calibration, log) -> None:
    """Write the files of the wanted variants beside model.onnx (already written by Optimum), in BUILD_ORDER.

    ONNX Runtime's guidance, measured here too: fuse first (Attention, SkipLayerNormalization, BiasGelu,
    EmbedLayerNormalization), then quantise the fused graph per channel; the fused graph is removed again when
    only its int8 children were wanted."""
    kinds = {VARIANTS[name].build for name in wanted}
    fused = onnx_dir / VARIANTS["opt"].file
    if kinds & {"fuse", "quantize-s8", "quantize-u8"}:
        log(f"fusing (ONNX Runtime transformer optimizer, level O{optimization_level})")
        _optimize(onnx_dir, optimization_level, gpu=False)
    for kind, signed in (("quantize-s8", True), ("quantize-u8", False)):
        if kind in kinds:
            log(f"quantising the fused graph: dynamic int8, per channel, {'U8S8' if signed else 'U8U8'}")
            quantize_int8(fused, onnx_dir / _file_of(kind), signed_weights=signed)
    if "fuse" not in kinds and fused.exists():
        fused.unlink()
    if "fp16" in kinds:
        log("converting to fp16 for CUDA")
        _optimize(onnx_dir, optimization_level, gpu=True)
    if kinds & {"openvino-ir", "openvino-int8"}:
        build_openvino(kinds, onnx_dir, calibration, log)
    (onnx_dir / "ort_config.json").unlink(missing_ok=True)  # Optimum's record; ours is export_manifest.json


def _file_of(kind: str) -> str:
    return next(v.file for v in VARIANTS.values() if v.build == kind)


def _optimize(onnx_dir: Path, optimization_level: int, gpu: bool) -> None:
    from optimum.onnxruntime import OptimizationConfig, ORTOptimizer

    config = OptimizationConfig(optimization_level=optimization_level, optimize_for_gpu=gpu, fp16=gpu)
    ORTOptimizer.from_pretrained(onnx_dir).optimize(config, save_dir=onnx_dir, file_suffix="fp16" if gpu else "optimized")


def build_openvino(kinds: set[str], onnx_dir: Path, calibration, log) -> None:
    """The OpenVINO IR files: the plain graph (fp32 weights) and NNCF's int8 of it (transformer preset,
    calibrated on training windows)."""
    import openvino as ov

    model = ov.convert_model(str(onnx_dir / _file_of("onnx")))
    if "openvino-ir" in kinds:
        log("converting to OpenVINO IR (fp32 weights)")
        ov.save_model(model, str(onnx_dir / _file_of("openvino-ir")), compress_to_fp16=False)
    if "openvino-int8" in kinds:
        import nncf

        log(f"quantising for OpenVINO: NNCF static int8, transformer preset, {len(calibration)} training windows")
        names = [i.get_any_name() for i in model.inputs]
        quantized = nncf.quantize(model, nncf.Dataset(calibration, lambda window: {k: window[k] for k in names}),
                                  model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration))
        ov.save_model(quantized, str(onnx_dir / _file_of("openvino-int8")), compress_to_fp16=False)
