"""The Predictor protocol and its implementations: a PyTorch model and an ONNX Runtime session.

Every predictor takes the same padded batch of token inputs (numpy int64, see features.MODEL_INPUTS) and
returns start/end logits as float32 numpy arrays, so that their answers can be compared one to one.
"""

import copy
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from toolkit.features import MODEL_INPUTS
from toolkit.runtime import cuda_available, default_threads

# Several adapters on one exported base: the base graph takes every LoRA A/B matrix and the QA head as
# inputs (empty/zero defaults), each adapter is an ONNX Runtime .onnx_adapter file with its own qa_config.json.
LORA_GRAPH = "model_lora.onnx"
ADAPTERS_FILE = "adapters.json"


class EngineError(RuntimeError):
    """A predictor or engine that cannot be built or used as asked (device, provider, variant, files, adapter)."""


class Predictor(Protocol):
    """Start/end logits for a padded batch; what every engine runs on."""
    provider: str  # where it runs: "CPUExecutionProvider", "torch-cpu", ...
    variant: str  # what runs: "fp32", "int8", "torch-fp32", ...
    device: str  # "cpu" or "cuda"

    def logits(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(start, end) logits, float32, shape (rows, padded length)."""
        ...


@runtime_checkable
class SideBySide(Protocol):
    """A predictor that answers several padded batches at once, side by side, with the logits each would get
    alone (OpenVINO's streams)."""

    def logits_each(self, batches: Iterable[dict[str, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
        ...


def resolve_device(device: str, onnxruntime: bool = True) -> str:
    """cpu or cuda for --device auto/cpu/cuda. CUDA must really work for the engine that runs: a GPU torch can see,
    and for ONNX Runtime also its CUDA provider (onnxruntime-gpu, the gpu extra)."""
    import torch

    if device not in ("auto", "cpu", "cuda"):
        raise EngineError(f"--device must be auto, cpu or cuda, not '{device}'")
    usable = cuda_available() if onnxruntime else torch.cuda.is_available()
    if device == "auto":
        return "cuda" if usable else "cpu"
    if device == "cuda" and not usable:
        import onnxruntime as ort

        raise EngineError("--device cuda: no usable CUDA here (torch.cuda.is_available()="
                          f"{torch.cuda.is_available()}, onnxruntime providers={ort.get_available_providers()}); "
                          "install qa-toolkit[gpu] on a machine with an NVIDIA GPU, or use --device cpu")
    return device


class TorchPredictor:
    """A transformers or PEFT model (merged or not) on CPU or CUDA.

    Views made by with_adapter share the model, and one lock: PEFT switches adapters by setting the model's
    active adapter, so the switch and the forward pass that follows must not interleave with another thread's."""

    def __init__(self, model, device: str = "cpu", fp16: bool = False, bf16: bool = False):
        """fp16: half-precision weights (CUDA); bf16: bf16 autocast (a CPU with native bf16), fp32 weights."""
        import torch

        self.torch = torch
        self.device = device
        self.model = model.to(device).eval()
        if fp16:
            self.model = self.model.half()
        self.bf16 = bf16
        self.provider = f"torch-{device}"
        self.variant = "torch-fp16" if fp16 else "torch-bf16" if bf16 else "torch-fp32"
        self.adapter: str | None = None
        self.lock = threading.Lock()

    def with_adapter(self, name: str) -> "TorchPredictor":
        """A view of this PEFT model that runs one of its loaded adapters."""
        view = copy.copy(self)
        view.adapter = name
        return view

    def logits(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        inputs = {k: torch.from_numpy(v).to(self.device) for k, v in batch.items()}
        with self.lock, torch.inference_mode(), torch.autocast(self.device, torch.bfloat16, enabled=self.bf16):
            if self.adapter is not None and self.model.active_adapter != self.adapter:
                self.model.set_adapter(self.adapter)
            out = self.model(**inputs)
        return out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()


class OrtPredictor:
    """An ONNX Runtime session on one provider, checked after creation; IO binding on CUDA. Sessions are
    safe to run from several threads; an adapter view passes its adapter in its own run options."""

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None, variant: str = "fp32",
                 spinning: bool = True):
        """spinning: ONNX Runtime's intra-op threads spin-wait between ops (its default; fastest when inference
        has the cores to itself, as in serve-batch). Off where other work shares them (the online server)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
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
        self.input_names = [i.name for i in self.session.get_inputs() if i.name in MODEL_INPUTS]
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
