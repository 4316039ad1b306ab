"""What to serve, as one typed spec, and the engine it loads: an export's ONNX directory, an `export
--adapters` directory (several adapters on one ONNX base graph), an adapter or merged model directory
(PyTorch), or several adapter directories on one PyTorch base."""

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from toolkit.config import QAConfig
from toolkit.inference.engine import Engine, Served
from toolkit.inference.padding import BatchSettings
from toolkit.inference.predictors import (
    ADAPTERS_FILE,
    LORA_GRAPH,
    EngineError,
    OrtPredictor,
    TorchPredictor,
    resolve_device,
)
from toolkit.inference.variants import EXPORTED, TORCH_VARIANTS, VARIANTS, export_files, variant


@dataclass
class EngineSpec:
    """Every choice that shapes an engine; checked once, by check(), whoever builds it (CLI, Ray, server)."""
    model: str | None = None  # a model directory (see the module docstring)
    adapters: dict[str, str] | None = None  # instead of model: name -> adapter directory, one PyTorch base
    engine: str = "auto"  # auto: ONNX where the directory holds ONNX files, torch otherwise
    device: str = "auto"  # auto, cpu or cuda
    variant: str | None = None  # a variants.VARIANTS name; None: the export's choice, or torch-fp32
    default_adapter: str | None = None  # the adapter for requests naming none; None: the first
    batch_size: int | None = None  # None: the device's default
    max_batch_tokens: int | None = None
    threads: int | None = None  # intra-op threads; None: physical cores
    no_answer_threshold: float | None = None  # None: each model's tuned threshold
    spinning: bool = True  # ONNX Runtime threads spin-wait between ops; off for the server (measured faster there)
    bucket: int | None = None  # pad each window to a multiple of this many tokens and batch equal lengths only, in
    # every engine (the server: a call of a few questions otherwise pads them to its longest); None: the default

    def check(self) -> None:
        if (self.model is None) == (self.adapters is None):
            raise EngineError("pass either --model DIR or --adapters name=DIR,... (not both, not neither)")
        if self.engine not in ("auto", "onnx", "torch"):
            raise EngineError(f"--engine must be auto, onnx or torch, not '{self.engine}'")
        if self.adapters is not None and (self.engine == "onnx" or self.variant not in (None, "torch-fp32")):
            raise EngineError("adapter directories run on the torch engine in fp32; for ONNX, serve an "
                              "`export --adapters` directory as the model")
        for name in ("batch_size", "max_batch_tokens", "threads", "bucket"):
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
    if spec.bucket is not None:  # whatever the engine: the padding is the engine's, not the runtime's
        engine.settings = dataclasses.replace(engine.settings, bucket=spec.bucket)
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
    return next((v for v in ranked if v in VARIANTS and VARIANTS[v].unusable("cpu") is None), "fp32")


def batch_invariant_variant(model_dir: Path, device: str) -> str:
    """The export's default for device when a window's answer cannot depend on its batch-mates there, else the
    fastest gated variant that cannot and runs here as gated (the online server batches strangers together)."""
    chosen = default_variant(QAConfig.load(model_dir), device)
    if VARIANTS[chosen].batch_invariant:
        return chosen
    record = json.loads((model_dir / "export_manifest.json").read_text())
    passed = {name: r for name, r in record["variants"].items() if r.get("passed") and name in VARIANTS
              and VARIANTS[name].batch_invariant and VARIANTS[name].unusable(device) is None}
    return max(passed, key=lambda v: passed[v]["questions_per_second"]) if passed else "fp32"


def _onnx_model(spec: EngineSpec, model_dir: Path, device: str, settings: BatchSettings, source: dict) -> Engine:
    from toolkit.modeling import load_tokenizer

    qa = QAConfig.load(model_dir)
    chosen = variant(spec.variant or default_variant(qa, device), among=EXPORTED)
    predictor = chosen.predictor(model_dir, device, spec.threads, spec.spinning)
    settings = chosen.batch_settings(device, spec.batch_size, spec.max_batch_tokens)
    return Engine.single(predictor, load_tokenizer(str(model_dir)), qa, settings=settings, source=source)


def _torch_model(spec: EngineSpec, model_dir: Path, device: str, settings: BatchSettings, source: dict) -> Engine:
    from toolkit.modeling import load_tokenizer

    chosen = variant(spec.variant or "torch-fp32", among=TORCH_VARIANTS)
    _set_torch_threads(spec.threads)
    predictor = chosen.predictor(model_dir, device)
    return Engine.single(predictor, load_tokenizer(str(model_dir)), QAConfig.load(model_dir), settings=settings,
                         source=source)


def runs_on_onnxruntime(spec: EngineSpec) -> bool:
    """Whether the engine spec describes will run on ONNX Runtime (CUDA there needs its CUDA provider)
    rather than PyTorch (CUDA there needs a GPU torch can see): as _model_dir decides."""
    if spec.adapters is not None or spec.engine == "torch":
        return False
    model_dir = Path(spec.model)
    return spec.engine == "onnx" or (model_dir / ADAPTERS_FILE).exists() or any(
        (model_dir / f).exists() for f in export_files())


def _model_dir(spec: EngineSpec, model_dir: Path, device: str, settings: BatchSettings) -> Engine:
    if not model_dir.is_dir():
        raise EngineError(f"model directory not found: {model_dir}")
    source = {"dir": str(model_dir.resolve()), "engine": spec.engine, "device": spec.device, "variant": spec.variant,
              "threads": spec.threads, "files": _files(model_dir)}
    if (model_dir / ADAPTERS_FILE).exists():
        return _onnx_adapters(spec, model_dir, device, settings, source)
    if spec.default_adapter:
        raise EngineError(f"--default-adapter: {model_dir} holds one model, not several adapters")
    has_onnx = any((model_dir / f).exists() for f in export_files())
    engine = spec.engine if spec.engine != "auto" else "onnx" if has_onnx else "torch"
    if engine == "onnx":
        if not has_onnx:
            raise EngineError(f"{model_dir} holds no ONNX model; export one with `qa-toolkit export`, "
                              "or use --engine torch for an adapter or merged model directory")
        return _onnx_model(spec, model_dir, device, settings, source)
    return _torch_model(spec, model_dir, device, settings, source)


def server_variant(spec: EngineSpec) -> str | None:
    """The variant the online server runs when none is asked for: for an export, one whose answers cannot depend
    on what a request is batched with (batch_invariant_variant); otherwise the engine's own default."""
    if spec.variant is not None or spec.model is None:
        return spec.variant
    model_dir = Path(spec.model)
    if not (model_dir / "export_manifest.json").exists():
        return None  # not a merged export (adapters, torch): the engine's own default
    return batch_invariant_variant(model_dir, "cuda" if spec.device == "cuda" else "cpu")


SERVER_BUCKET = 16  # tokens: the server's ONNX Runtime windows padded to a multiple of it, batched by length


def server_spec(spec: EngineSpec) -> EngineSpec:
    """The engine the online server runs: a batch-invariant variant, ONNX Runtime threads that do not spin-wait
    (the event loop shares their cores; bench/results/serve-load-*), and windows batched by their own length: a
    call holds the few questions that arrived together, and padding them all to the longest cost a quarter of
    the engine's speed at 16 questions per call (bench/results/serve-sweep-*)."""
    return dataclasses.replace(spec, variant=server_variant(spec), spinning=False,
                               bucket=SERVER_BUCKET if spec.bucket is None else spec.bucket)
