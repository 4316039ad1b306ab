"""What to serve, as one typed spec, and the engine it loads: an export's ONNX directory, an `export
--adapters` directory (several adapters on one ONNX base graph), an adapter or merged model directory
(PyTorch), or several adapter directories on one PyTorch base."""

import json
from dataclasses import dataclass
from pathlib import Path

from toolkit.config import QAConfig
from toolkit.inference.batching import BatchSettings
from toolkit.inference.engine import Engine, Served
from toolkit.inference.openvino import OPENVINO_VARIANTS, OpenVinoPredictor, unusable_here
from toolkit.inference.predictors import (
    ADAPTERS_FILE,
    LORA_GRAPH,
    ONNX_FILES,
    EngineError,
    OrtPredictor,
    TorchPredictor,
    resolve_device,
)
from toolkit.runtime import default_threads, native_bf16


@dataclass
class EngineSpec:
    """Every choice that shapes an engine; checked once, by check(), whoever builds it (CLI, Ray, server)."""
    model: str | None = None  # a model directory (see the module docstring)
    adapters: dict[str, str] | None = None  # instead of model: name -> adapter directory, one PyTorch base
    engine: str = "auto"  # auto: ONNX where the directory holds ONNX files, torch otherwise
    device: str = "auto"  # auto, cpu or cuda
    variant: str | None = None  # exported variant (ONNX Runtime or ov-*) or torch fp32/fp16/bf16; None: the export's choice
    default_adapter: str | None = None  # the adapter for requests naming none; None: the first
    batch_size: int | None = None  # None: the device's default
    max_batch_tokens: int | None = None
    threads: int | None = None  # intra-op threads; None: physical cores
    no_answer_threshold: float | None = None  # None: each model's tuned threshold
    spinning: bool = True  # ONNX Runtime threads spin-wait between ops; off for the server (measured faster there)

    def check(self) -> None:
        if (self.model is None) == (self.adapters is None):
            raise EngineError("pass either --model DIR or --adapters name=DIR,... (not both, not neither)")
        if self.engine not in ("auto", "onnx", "torch"):
            raise EngineError(f"--engine must be auto, onnx or torch, not '{self.engine}'")
        if self.adapters is not None and (self.engine == "onnx" or self.variant not in (None, "fp32")):
            raise EngineError("adapter directories run on the torch engine in fp32; for ONNX, serve an "
                              "`export --adapters` directory as the model")
        for name in ("batch_size", "max_batch_tokens", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise EngineError(f"{name.replace('_', '-')} must be at least 1, not {value}")


def load_engine(spec: EngineSpec) -> Engine:
    spec.check()
    device = resolve_device(spec.device, onnxruntime=runs_on_onnxruntime(spec))
    settings = BatchSettings.for_device(device, spec.batch_size, spec.max_batch_tokens)
    if spec.adapters is not None:
        engine = _torch_adapters(spec, device, settings)
    else:
        engine = _model_dir(spec, Path(spec.model), device, settings)
    return engine.with_threshold(spec.no_answer_threshold)


def _files(directory: Path) -> dict:
    """Size and mtime of the model's files (its adapters/ folder included): what a resumed job must find."""
    files = [f for f in sorted(directory.iterdir()) if f.is_file()]
    files += sorted(f for f in (directory / "adapters").rglob("*") if f.is_file())
    return {str(f.relative_to(directory)): [f.stat().st_size, f.stat().st_mtime_ns] for f in files}


def _set_torch_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def _torch_adapters(spec: EngineSpec, device: str, settings: BatchSettings) -> Engine:
    """PEFT adapters loaded onto one base model, one view of it per adapter."""
    from toolkit.modeling import load_adapters

    dirs = {name: Path(d) for name, d in spec.adapters.items()}
    model, tokenizer, configs = load_adapters(dirs)
    _set_torch_threads(spec.threads)
    shared = TorchPredictor(model, device)
    models = {name: Served(shared.with_adapter(name), qa,
                           {"dir": str(dirs[name].resolve()), "engine": "torch", "device": device,
                            "threads": spec.threads, "files": _files(dirs[name])})
              for name, qa in configs.items()}
    return Engine(models, tokenizer, settings, spec.default_adapter)


def _onnx_adapters(spec: EngineSpec, model_dir: Path, device: str, settings: BatchSettings, source: dict) -> Engine:
    """An `export --adapters` directory: one base graph in one ONNX Runtime session, an adapter file each."""
    from toolkit.modeling import load_tokenizer

    if spec.engine == "torch" or spec.variant not in (None, "fp32"):
        raise EngineError(f"{model_dir} holds several adapters on one ONNX base graph (fp32, engine onnx); "
                          "for the torch engine pass the adapter directories with --adapters name=DIR,...")
    index = json.loads((model_dir / ADAPTERS_FILE).read_text())
    session = OrtPredictor(model_dir / LORA_GRAPH, device, spec.threads, "fp32-lora", spec.spinning)
    models = {}
    for name, entry in index["adapters"].items():
        directory = model_dir / entry["dir"]
        models[name] = Served(session.with_adapter(directory / entry["file"]), QAConfig.load(directory),
                              {**source, "adapter": name})
    return Engine(models, load_tokenizer(str(model_dir)), settings, spec.default_adapter or index["default"])


def default_variant(qa: QAConfig, device: str) -> str:
    """The export's choice for this device: on the CPU, the fastest variant that passed the parity gate and runs
    here as it was gated (an export measured on a CPU with native bf16 ranks bf16 variants first; on one without,
    the next gated variant serves, never one that was not gated). Exports without a ranking: their one default."""
    if device == "cuda":
        return qa.default_variant.get("cuda") or "fp32"
    ranked = qa.cpu_ranking or [qa.default_variant.get("cpu") or "fp32"]
    return next((v for v in ranked if unusable_here(v) is None), "fp32")


def variant_file(variant: str) -> str:
    """The file an exported variant runs from, in the export's onnx/ directory."""
    return OPENVINO_VARIANTS[variant][0] if variant in OPENVINO_VARIANTS else ONNX_FILES[variant]


def variant_settings(variant: str, device: str, batch_size: int | None = None,
                     max_batch_tokens: int | None = None) -> BatchSettings:
    """How a variant batches, as measured per engine: OpenVINO's own defaults for ov-*, the device's otherwise."""
    if variant in OPENVINO_VARIANTS:
        return BatchSettings.for_openvino(batch_size, max_batch_tokens)
    return BatchSettings.for_device(device, batch_size, max_batch_tokens)


def onnx_predictor(model_dir: Path, variant: str, device: str, threads: int | None, spinning: bool = True):
    """The predictor of one exported variant: an ONNX Runtime session, or OpenVINO for the ov-* variants."""
    if variant in OPENVINO_VARIANTS:
        if device == "cuda":
            raise EngineError(f"the {variant} variant runs on the CPU (OpenVINO); use fp16 or fp32 on CUDA")
        reason = unusable_here(variant)
        if reason:
            raise EngineError(reason)
        file, precision = OPENVINO_VARIANTS[variant]
        if not (model_dir / file).exists():
            raise EngineError(f"{model_dir} has no {file} for {variant}: export it with "
                              f"`qa-toolkit export --variants fp32,{variant}`")
        return OpenVinoPredictor(model_dir / file, threads or default_threads(), variant, precision)
    if variant not in ONNX_FILES:
        raise EngineError(f"unknown variant '{variant}'; choose from {[*ONNX_FILES, *OPENVINO_VARIANTS]}")
    if variant.startswith("int8") and device == "cuda":
        raise EngineError(f"the {variant} variant runs on the CPU provider only; use fp16 or fp32 on CUDA")
    return OrtPredictor(model_dir / ONNX_FILES[variant], device, threads, variant, spinning)


def _onnx_model(spec: EngineSpec, model_dir: Path, device: str, settings: BatchSettings, source: dict) -> Engine:
    from toolkit.modeling import load_tokenizer

    qa = QAConfig.load(model_dir)
    variant = spec.variant or default_variant(qa, device)
    predictor = onnx_predictor(model_dir, variant, device, spec.threads, spec.spinning)
    settings = variant_settings(variant, device, spec.batch_size, spec.max_batch_tokens)
    return Engine.single(predictor, load_tokenizer(str(model_dir)), qa, settings, source)


def _torch_model(spec: EngineSpec, model_dir: Path, device: str, settings: BatchSettings, source: dict) -> Engine:
    from toolkit.modeling import load_for_inference

    if spec.variant not in (None, "fp32", "fp16", "bf16"):
        raise EngineError(f"the torch engine runs fp32, fp16 (CUDA) or bf16 (CPU with native bf16), not '{spec.variant}'")
    if spec.variant == "fp16" and device != "cuda":
        raise EngineError("fp16 needs CUDA; the torch engine runs fp32 or bf16 on the CPU")
    if spec.variant == "bf16" and (device != "cpu" or not native_bf16()):
        raise EngineError("bf16 runs on a CPU with native bf16 (AVX512-BF16 or AMX) only; elsewhere it would be "
                          "emulated, slower than fp32")
    model, tokenizer, qa = load_for_inference(model_dir)
    _set_torch_threads(spec.threads)
    predictor = TorchPredictor(model, device, fp16=spec.variant == "fp16", bf16=spec.variant == "bf16")
    return Engine.single(predictor, tokenizer, qa, settings, source)


def runs_on_onnxruntime(spec: EngineSpec) -> bool:
    """Whether the engine spec describes will run on ONNX Runtime (CUDA there needs its CUDA provider)
    rather than PyTorch (CUDA there needs a GPU torch can see): as _model_dir decides."""
    if spec.adapters is not None or spec.engine == "torch":
        return False
    model_dir = Path(spec.model)
    return spec.engine == "onnx" or (model_dir / ADAPTERS_FILE).exists() or any(
        (model_dir / f).exists() for f in ONNX_FILES.values())


def _model_dir(spec: EngineSpec, model_dir: Path, device: str, settings: BatchSettings) -> Engine:
    if not model_dir.is_dir():
        raise EngineError(f"model directory not found: {model_dir}")
    source = {"dir": str(model_dir.resolve()), "engine": spec.engine, "device": spec.device, "variant": spec.variant,
              "threads": spec.threads, "files": _files(model_dir)}
    if (model_dir / ADAPTERS_FILE).exists():
        return _onnx_adapters(spec, model_dir, device, settings, source)
    if spec.default_adapter:
        raise EngineError(f"--default-adapter: {model_dir} holds one model, not several adapters")
    has_onnx = any((model_dir / f).exists() for f in ONNX_FILES.values())
    engine = spec.engine if spec.engine != "auto" else "onnx" if has_onnx else "torch"
    if engine == "onnx":
        if not has_onnx:
            raise EngineError(f"{model_dir} holds no ONNX model; export one with `qa-toolkit export`, "
                              "or use --engine torch for an adapter or merged model directory")
        return _onnx_model(spec, model_dir, device, settings, source)
    return _torch_model(spec, model_dir, device, settings, source)
