"""Every variant the toolkit builds, gates and runs, in one table: the only place a variant's facts live.

A variant is one way to run a model: a runtime (ONNX Runtime, OpenVINO or PyTorch), the file it runs from, the
devices it runs on, its precision, whether a window's answer can depend on what it is batched with, how export
builds its file, and what the CPU must have for it to run as it was gated. Loading, export, the parity gate, the
server's choice, bench and the CLI read this table. Adding an engine is one predictor file and its entries here.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from toolkit.inference.padding import BatchSettings
from toolkit.inference.predictors import EngineError, Predictor
from toolkit.runtime import cuda_available, default_threads, native_bf16


@dataclass(frozen=True)
class Runtime:
    """An inference engine: why it cannot run here (None when it can), how it opens a variant's model and how
    it batches by default."""
    name: str
    missing: Callable[[str], str | None]  # device -> why this runtime cannot run there
    open: Callable[["Variant", Path, str, int | None, bool], Predictor]  # variant, directory, device, threads, spin
    batching: Callable[[str, int | None, int | None], BatchSettings]  # device, batch size, batch tokens


@dataclass(frozen=True)
class Variant:
    name: str
    runtime: Runtime
    precision: str  # what the matmuls compute in: fp32, fp16, bf16, int8, int8+bf16
    devices: tuple[str, ...]  # where it runs; export gates it on the first
    file: str | None = None  # in the export's onnx/ directory; None: the merged PyTorch model beside it
    build: str | None = None  # how export makes the file (exporting.variants.BUILDERS); None: not exported
    batch_invariant: bool = True  # a window's answer never depends on what it is batched with
    needs_native_bf16: bool = False  # on a CPU without it bf16 is emulated: slower, and not what was gated
    peak: str = "fp32"  # the runtime.machine_peaks rate its matmuls are bounded by ("fp32": the faster fp32 one)
    cuda_preference: int = 0  # export's CUDA default: the passed variant with the highest

    @property
    def exported(self) -> bool:
        return self.build is not None

    def unusable(self, device: str | None = None) -> str | None:
        """Why this variant cannot run as gated on device (default: where it is gated) here; None when it can."""
        device = device or self.devices[0]
        if device not in self.devices:
            return f"{self.name} runs on {' or '.join(self.devices)}, not {device}"
        if self.needs_native_bf16 and device == "cpu" and not native_bf16():
            return f"{self.name} needs a CPU with native bf16 (AVX512-BF16 or AMX); this one would emulate it"
        return self.runtime.missing(device)

    def predictor(self, directory: str | Path, device: str, threads: int | None = None,
                  spinning: bool = True) -> Predictor:
        """The predictor of this variant from a model directory (an export's onnx/ directory, or for torch
        variants a merged or adapter directory), refused with the reason when it cannot run there."""
        reason = self.unusable(device)
        if reason:
            raise EngineError(reason)
        return self.runtime.open(self, Path(directory), device, threads, spinning)

    def batch_settings(self, device: str, batch_size: int | None = None,
                       max_batch_tokens: int | None = None) -> BatchSettings:
        return self.runtime.batching(device, batch_size, max_batch_tokens)


def _onnxruntime_missing(device: str) -> str | None:
    if device == "cuda" and not cuda_available():
        return "ONNX Runtime's CUDA provider is not usable here (pip install 'qa-toolkit[gpu]' on a machine with a GPU)"
    return None


def _open_onnxruntime(variant: Variant, directory: Path, device: str, threads: int | None,
                      spinning: bool) -> Predictor:
    from toolkit.inference.predictors import OrtPredictor

    return OrtPredictor(directory / variant.file, device, threads, variant.name, spinning)


def _openvino_missing(device: str) -> str | None:
    from toolkit.inference.openvino import openvino_missing

    return openvino_missing()


def _open_openvino(variant: Variant, directory: Path, device: str, threads: int | None, spinning: bool) -> Predictor:
    from toolkit.inference.openvino import OpenVinoPredictor

    if not (directory / variant.file).exists():
        raise EngineError(f"{directory} has no {variant.file} for {variant.name}: export it with "
                          f"`qa-toolkit export --variants fp32,{variant.name}`")
    precision = "bf16" if "bf16" in variant.precision else "f32"
    return OpenVinoPredictor(directory / variant.file, threads or default_threads(), variant.name, precision)


def _torch_missing(device: str) -> str | None:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        return "PyTorch sees no CUDA GPU here"
    return None


def _open_torch(variant: Variant, directory: Path, device: str, threads: int | None, spinning: bool) -> Predictor:
    from toolkit.inference.predictors import TorchPredictor
    from toolkit.modeling import load_for_inference

    model = load_for_inference(directory)[0]  # torch's threads are the process's: the caller sets them
    return TorchPredictor(model, device, fp16=variant.precision == "fp16", bf16=variant.precision == "bf16")


ONNXRUNTIME = Runtime("onnxruntime", _onnxruntime_missing, _open_onnxruntime, BatchSettings.for_device)
OPENVINO = Runtime("openvino", _openvino_missing, _open_openvino, lambda device, size, tokens:
                   BatchSettings.for_openvino(size, tokens))
TORCH = Runtime("torch", _torch_missing, _open_torch, BatchSettings.for_device)

# Dynamic int8 quantises activations per batch: a window's answer moves with its batch-mates (not batch-invariant).
# OpenVINO's bf16 and static int8 would move with the batch's padding, but their batching pads each window to
# its own multiple of 16 tokens (BatchSettings.for_openvino), which makes them invariant (tested).
VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("fp32", ONNXRUNTIME, "fp32", ("cpu", "cuda"), "model.onnx", "onnx", cuda_preference=1),
    Variant("opt", ONNXRUNTIME, "fp32", ("cpu", "cuda"), "model_optimized.onnx", "fuse", cuda_preference=2),
    Variant("int8", ONNXRUNTIME, "int8", ("cpu",), "model_quantized.onnx", "quantize-s8", batch_invariant=False,
            peak="int8_u8s8_onnxruntime"),
    Variant("int8-u8", ONNXRUNTIME, "int8", ("cpu",), "model_quantized_u8.onnx", "quantize-u8",
            batch_invariant=False, peak="int8_u8u8_onnxruntime"),
    Variant("fp16", ONNXRUNTIME, "fp16", ("cuda",), "model_fp16.onnx", "fp16", cuda_preference=3),
    Variant("ov-fp32", OPENVINO, "fp32", ("cpu",), "openvino_model.xml", "openvino-ir"),
    Variant("ov-bf16", OPENVINO, "bf16", ("cpu",), "openvino_model.xml", "openvino-ir", needs_native_bf16=True,
            peak="bf16_torch"),
    Variant("ov-int8", OPENVINO, "int8", ("cpu",), "openvino_model_int8.xml", "openvino-int8",
            peak="int8_u8s8_onnxruntime"),
    Variant("ov-int8-bf16", OPENVINO, "int8+bf16", ("cpu",), "openvino_model_int8.xml", "openvino-int8",
            needs_native_bf16=True, peak="int8_u8s8_onnxruntime"),
    Variant("torch-fp32", TORCH, "fp32", ("cpu", "cuda")),
    Variant("torch-fp16", TORCH, "fp16", ("cuda",)),
    Variant("torch-bf16", TORCH, "bf16", ("cpu", "cuda"), needs_native_bf16=True, peak="bf16_torch"),
)}
EXPORTED = tuple(name for name, v in VARIANTS.items() if v.exported)
TORCH_VARIANTS = tuple(name for name, v in VARIANTS.items() if v.runtime is TORCH)


def variant(name: str, among: tuple[str, ...] = tuple(VARIANTS)) -> Variant:
    """The registry entry of a variant name, or an error listing the names that would do."""
    if name not in among:
        raise EngineError(f"unknown variant '{name}'; choose from {', '.join(among)}")
    return VARIANTS[name]


def export_files() -> tuple[str, ...]:
    """Every file an exported variant runs from (what marks a directory as an ONNX export)."""
    return tuple(dict.fromkeys(v.file for v in VARIANTS.values() if v.file))


def cpu_candidates() -> tuple[str, ...]:
    """The exported variants that may become the CPU default, ranked by measured speed."""
    return tuple(name for name in EXPORTED if "cpu" in VARIANTS[name].devices)


def cuda_default(passed: list[str]) -> str | None:
    """The CUDA default among the variants that passed their gate: the most preferred that runs on CUDA."""
    usable = [VARIANTS[v] for v in passed if "cuda" in VARIANTS[v].devices and VARIANTS[v].cuda_preference]
    return max(usable, key=lambda v: v.cuda_preference).name if usable else None


def listing(names: tuple[str, ...]) -> str:
    """Variant names grouped by runtime, with where each runs, for help texts."""
    groups: dict[str, list[str]] = {}
    for name in names:
        v = VARIANTS[name]
        needs = ("native bf16" if v.devices == ("cpu",) else "native bf16 on cpu") if v.needs_native_bf16 else ""
        where = ", ".join(filter(None, ("" if v.devices == ("cpu", "cuda") else "/".join(v.devices), needs)))
        where = f" ({where})" if where else ""
        groups.setdefault(v.runtime.name, []).append(name + where)
    return "; ".join(f"{runtime}: {', '.join(items)}" for runtime, items in groups.items())
