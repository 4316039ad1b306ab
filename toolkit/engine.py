"""One predictor interface, two implementations (PyTorch and ONNX Runtime), one inference path.

Both predictors take the same padded batches built from the same features and return start/end
logits as float32 numpy arrays, so that their answers can be compared one to one.
"""

import copy
import dataclasses
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from toolkit.config import QAConfig
from toolkit.features import Features, build_features
from toolkit.postprocess import Answer, answer_all

ONNX_FILES = {"fp32": "model.onnx", "opt": "model_optimized.onnx", "int8": "model_quantized.onnx",
              "int8-u8": "model_quantized_u8.onnx", "fp16": "model_fp16.onnx"}
# Several adapters on one exported base: the base graph takes every LoRA A/B matrix and the QA head as
# inputs (empty/zero defaults), each adapter is an ONNX Runtime .onnx_adapter file with its own qa_config.json.
LORA_GRAPH = "model_lora.onnx"
ADAPTERS_FILE = "adapters.json"


TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class Stopwatch:
    """Seconds spent per named stage, summed over calls: ``with watch("infer"): ...``."""
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def __call__(self, stage: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - started


class EngineError(RuntimeError):
    """A predictor that cannot be built as asked (device, provider, variant, files)."""


def cuda_available() -> bool:
    """CUDA that really works: a device torch can see and onnxruntime built with the CUDA provider."""
    import onnxruntime as ort
    import torch

    return torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers()


def resolve_device(device: str) -> str:
    if device not in ("auto", "cpu", "cuda"):
        raise EngineError(f"--device must be auto, cpu or cuda, not '{device}'")
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device == "cuda" and not cuda_available():
        import onnxruntime as ort
        import torch

        raise EngineError("--device cuda: no usable CUDA here (torch.cuda.is_available()="
                          f"{torch.cuda.is_available()}, onnxruntime providers={ort.get_available_providers()}); "
                          "install qa-toolkit[gpu] on a machine with an NVIDIA GPU, or use --device cpu")
    return device


def default_threads() -> int:
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


class TorchPredictor:
    """A transformers or PEFT model (merged or not) on CPU or CUDA."""

    def __init__(self, model, device: str = "cpu", fp16: bool = False):
        import torch

        self.torch = torch
        self.device = device
        self.model = model.to(device).eval()
        if fp16:
            self.model = self.model.half()
        self.provider = f"torch-{device}"
        self.variant = "torch-fp16" if fp16 else "torch-fp32"
        self.adapter: str | None = None

    def with_adapter(self, name: str) -> "TorchPredictor":
        """A view of this PEFT model that activates one of its loaded adapters before each batch."""
        view = copy.copy(self)
        view.adapter = name
        return view

    def logits(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        inputs = {k: torch.from_numpy(v).to(self.device) for k, v in batch.items()}
        if self.adapter is not None and self.model.active_adapter != self.adapter:
            self.model.set_adapter(self.adapter)
        with torch.inference_mode():
            out = self.model(**inputs)
        return out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()


class OrtPredictor:
    """An ONNX Runtime session on one provider, checked after creation; IO binding on CUDA."""

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None, variant: str = "fp32"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        wanted = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
        providers = [wanted] if device == "cpu" else [wanted, "CPUExecutionProvider"]
        if not Path(path).exists():
            raise EngineError(f"ONNX file not found: {path}")
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        got = self.session.get_providers()[0]
        if got != wanted:
            raise EngineError(f"asked ONNX Runtime for {wanted} but the session runs on {got}")
        self.ort = ort
        self.device = device
        self.provider = got
        self.variant = variant
        self.input_names = [i.name for i in self.session.get_inputs() if i.name in TOKEN_INPUTS]
        self.run_options = None  # with an active LoRA adapter (with_adapter)

    def with_adapter(self, path: str | Path) -> "OrtPredictor":
        """A view of this session that runs with one .onnx_adapter file active (ONNX Runtime's LoRA support)."""
        adapter = self.ort.LoraAdapter()
        adapter.Load(str(path))
        view = copy.copy(self)
        view.run_options = self.ort.RunOptions()
        view.run_options.add_active_adapter(adapter)
        view.adapter = adapter  # the run options refer to it: keep it alive
        return view

    def logits(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        feed = {k: batch[k] for k in self.input_names}
        if self.device != "cuda" or self.run_options is not None:  # active adapters do not apply under IO binding
            start, end = self.session.run(["start_logits", "end_logits"], feed, self.run_options)
            return start.astype(np.float32, copy=False), end.astype(np.float32, copy=False)
        binding = self.session.io_binding()
        for name, array in feed.items():
            binding.bind_ortvalue_input(name, self.ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0))
        binding.bind_output("start_logits", "cuda")
        binding.bind_output("end_logits", "cuda")
        self.session.run_with_iobinding(binding)
        start, end = binding.copy_outputs_to_cpu()
        return start.astype(np.float32), end.astype(np.float32)


def batches(lengths: list[int], batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Indices grouped by similar length: at most batch_size rows and max_batch_tokens padded tokens."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    out, current = [], []
    for i in order:
        longest = max(lengths[i], max((lengths[j] for j in current), default=0))
        if current and (len(current) + 1 > batch_size or longest * (len(current) + 1) > max_batch_tokens):
            out.append(current)
            current = []
        current.append(i)
    if current:
        out.append(current)
    return out


def pad_batch(features: Features, rows: list[int], pad_id: int, pad_to: int | None = None) -> dict[str, np.ndarray]:
    width = pad_to or max(len(features.inputs["input_ids"][i]) for i in rows)
    out = {}
    for name, values in features.inputs.items():
        fill = pad_id if name == "input_ids" else 0
        array = np.full((len(rows), width), fill, dtype=np.int64)
        for r, i in enumerate(rows):
            array[r, :len(values[i])] = values[i]
        out[name] = array
    return out


@dataclass
class BatchSettings:
    batch_size: int = 8
    max_batch_tokens: int = 4096
    pad_to: int | None = None  # pad every batch to this length (benchmarks); None = per batch

    @classmethod
    def for_device(cls, device: str, batch_size: int | None = None, max_batch_tokens: int | None = None):
        """Defaults that measured best: small batches on CPU (attention memory traffic), large on CUDA."""
        default = cls(64, 32768) if device == "cuda" else cls(8, 4096)
        return cls(batch_size or default.batch_size, max_batch_tokens or default.max_batch_tokens)


def feature_logits(predictor, features: Features, pad_id: int, settings: BatchSettings):
    """Start/end logits of every feature, each cut to its own length, in feature order."""
    lengths = [len(ids) for ids in features.inputs["input_ids"]]
    start: list = [None] * len(features)
    end: list = [None] * len(features)
    for rows in batches(lengths, settings.batch_size, settings.max_batch_tokens):
        s, e = predictor.logits(pad_batch(features, rows, pad_id, settings.pad_to))
        for r, i in enumerate(rows):
            start[i], end[i] = s[r, :lengths[i]], e[r, :lengths[i]]
    return start, end


class QAEngine:
    """Tokenizer + predictor + post-processing: questions and contexts in, answers out."""

    def __init__(self, predictor, tokenizer, qa: QAConfig, settings: BatchSettings | None = None,
                 source: dict | None = None):
        self.predictor = predictor
        self.tokenizer = tokenizer
        self.qa = qa
        self.settings = settings or BatchSettings()
        self.source = source or {}  # where the weights came from (load_engine): what a resumed job must match

    def features(self, questions: list[str], contexts: list[str]) -> Features:
        return build_features(self.tokenizer, questions, contexts, self.qa.features())

    def run(self, contexts: list[str], features: Features, watch: Stopwatch | None = None):
        """(answers, start logits, end logits) for the features of these contexts; stage times go to watch."""
        watch = watch or Stopwatch()
        with watch("infer"):
            start, end = feature_logits(self.predictor, features, self.tokenizer.pad_token_id, self.settings)
        with watch("postprocess"):
            answers = answer_all(contexts, features.example_index, features.offsets, start, end,
                                 self.qa.n_best, self.qa.max_answer_length, self.qa.null_threshold)
        return answers, start, end

    def answer(self, questions: list[str], contexts: list[str], watch: Stopwatch | None = None) -> list[Answer]:
        if not questions:
            return []
        watch = watch or Stopwatch()
        with watch("tokenise"):
            features = self.features(questions, contexts)
        return self.run(contexts, features, watch)[0]


@dataclass
class AdapterEngines:
    """Several adapters over one shared base model: one QAEngine per adapter, each with its own QAConfig
    (no-answer threshold), all sharing the base weights, the tokenizer and the process. A line of input
    names its adapter; lines for one adapter are answered together, never in a batch with another's."""
    engines: dict[str, QAEngine]
    default: str

    def __post_init__(self):
        if self.default not in self.engines:
            raise EngineError(f"--default-adapter '{self.default}' is not among the adapters {list(self.engines)}")

    @property
    def predictor(self):
        return self.engines[self.default].predictor

    @property
    def source(self) -> dict:
        return {"default": self.default, "adapters": {name: e.source for name, e in self.engines.items()}}


def override_threshold(engine: "QAEngine | AdapterEngines", threshold: float | None):
    """The engine answering with this no-answer threshold instead of each model's tuned one (None: tuned)."""
    if threshold is not None:
        for one in [engine] if isinstance(engine, QAEngine) else engine.engines.values():
            one.qa = dataclasses.replace(one.qa, null_threshold=threshold)
    return engine


def _files(directory: Path) -> dict:
    """Size and mtime of the model's files (its adapters/ folder included): what a resumed job must find."""
    files = [f for f in sorted(directory.iterdir()) if f.is_file()]
    files += sorted(f for f in (directory / "adapters").rglob("*") if f.is_file())
    return {str(f.relative_to(directory)): [f.stat().st_size, f.stat().st_mtime_ns] for f in files}


def load_torch_adapters(adapter_dirs: dict[str, Path], device: str = "auto", default: str | None = None,
                        batch_size: int | None = None, max_batch_tokens: int | None = None,
                        threads: int | None = None, no_answer_threshold: float | None = None) -> AdapterEngines:
    """PEFT adapters (name -> training run's adapter dir) loaded onto one base model."""
    from toolkit.modeling import load_adapters

    device = resolve_device(device)
    settings = BatchSettings.for_device(device, batch_size, max_batch_tokens)
    model, tokenizer, configs = load_adapters(adapter_dirs)
    if threads:
        import torch

        torch.set_num_threads(threads)
    shared = TorchPredictor(model, device)
    engines = {name: QAEngine(shared.with_adapter(name), tokenizer, qa, settings,
                              {"dir": str(Path(adapter_dirs[name]).resolve()), "engine": "torch", "device": device,
                               "threads": threads, "files": _files(Path(adapter_dirs[name]))})
               for name, qa in configs.items()}
    return override_threshold(AdapterEngines(engines, default or next(iter(engines))), no_answer_threshold)


def load_onnx_adapters(model_dir: Path, device: str, default: str | None, settings: BatchSettings,
                       threads: int | None, source: dict) -> AdapterEngines:
    """An `export --adapters` directory: one base graph in one ONNX Runtime session, an adapter file each."""
    from toolkit.modeling import load_tokenizer

    index = json.loads((model_dir / ADAPTERS_FILE).read_text())
    session = OrtPredictor(model_dir / LORA_GRAPH, device, threads, "fp32-lora")
    tokenizer = load_tokenizer(str(model_dir))
    engines = {}
    for name, entry in index["adapters"].items():
        directory = model_dir / entry["dir"]
        engines[name] = QAEngine(session.with_adapter(directory / entry["file"]), tokenizer,
                                 QAConfig.load(directory), settings, {**source, "adapter": name})
    return AdapterEngines(engines, default or index["default"])


def load_engine(model_dir: str | Path, engine: str = "auto", device: str = "auto", variant: str | None = None,
                batch_size: int | None = None, max_batch_tokens: int | None = None,
                threads: int | None = None, default_adapter: str | None = None,
                no_answer_threshold: float | None = None) -> "QAEngine | AdapterEngines":
    """An engine for an export dir (ONNX) or an adapter/merged/full model dir (torch); for an export of
    several adapters (`export --adapters`), one engine per adapter over the shared base graph.
    no_answer_threshold replaces the tuned threshold(s) of qa_config.json (None: keep them)."""
    return override_threshold(_load_engine(model_dir, engine, device, variant, batch_size, max_batch_tokens,
                                           threads, default_adapter), no_answer_threshold)


def _load_engine(model_dir, engine, device, variant, batch_size, max_batch_tokens, threads, default_adapter):
    from toolkit.modeling import load_for_inference, load_tokenizer

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise EngineError(f"model directory not found: {model_dir}")
    source = {"dir": str(model_dir.resolve()), "engine": engine, "device": device, "variant": variant,
              "threads": threads, "files": _files(model_dir)}
    device = resolve_device(device)
    settings = BatchSettings.for_device(device, batch_size, max_batch_tokens)
    if (model_dir / ADAPTERS_FILE).exists():
        if engine == "torch" or variant not in (None, "fp32"):
            raise EngineError(f"{model_dir} holds several adapters on one ONNX base graph (fp32, engine onnx); "
                              "for the torch engine pass the adapter directories with --adapters name=DIR,...")
        return load_onnx_adapters(model_dir, device, default_adapter, settings, threads, source)
    if default_adapter:
        raise EngineError(f"--default-adapter: {model_dir} holds one model, not several adapters")
    has_onnx = any((model_dir / f).exists() for f in ONNX_FILES.values())
    if engine == "auto":
        engine = "onnx" if has_onnx else "torch"
    if engine == "onnx":
        if not has_onnx:
            raise EngineError(f"{model_dir} holds no ONNX model; export one with `qa-toolkit export`, "
                              "or use --engine torch for an adapter or merged model directory")
        qa = QAConfig.load(model_dir)
        variant = variant or qa.default_variant.get(device) or "fp32"
        if variant not in ONNX_FILES:
            raise EngineError(f"unknown variant '{variant}'; choose from {list(ONNX_FILES)}")
        if variant.startswith("int8") and device == "cuda":
            raise EngineError(f"the {variant} variant runs on the CPU provider only; use fp16 or fp32 on CUDA")
        predictor = OrtPredictor(model_dir / ONNX_FILES[variant], device, threads, variant)
        return QAEngine(predictor, load_tokenizer(str(model_dir)), qa, settings, source)
    if engine != "torch":
        raise EngineError(f"--engine must be auto, onnx or torch, not '{engine}'")
    if variant not in (None, "fp32", "fp16"):
        raise EngineError(f"the torch engine runs fp32 or fp16 (CUDA), not '{variant}'")
    if variant == "fp16" and device != "cuda":
        raise EngineError("fp16 needs CUDA; the torch engine runs fp32 on the CPU")
    model, tokenizer, qa = load_for_inference(model_dir)
    if threads:
        import torch

        torch.set_num_threads(threads)
    return QAEngine(TorchPredictor(model, device, fp16=variant == "fp16"), tokenizer, qa, settings, source)
