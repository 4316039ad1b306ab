"""OpenVINO on the CPU behind the Predictor protocol (the `peers` extra): our padded batches in, logits out."""

from pathlib import Path

import numpy as np

from toolkit.inference.predictors import EngineError


class OpenVinoPredictor:
    """An OpenVINO CPU model (an ov.Model or an IR/ONNX path) on our padded batches. precision "f32" pins fp32
    (so that only int8 differs from PyTorch); None keeps OpenVINO's default (bf16 where the CPU has it)."""

    def __init__(self, model, threads: int, variant: str, precision: str | None = "f32"):
        try:
            import openvino as ov
        except ImportError as e:
            raise EngineError(f"OpenVINO needs the peers extra: pip install 'qa-toolkit[peers]' ({e})") from None
        config = {"INFERENCE_NUM_THREADS": str(threads), "PERFORMANCE_HINT": "LATENCY"}
        if precision:
            config["INFERENCE_PRECISION_HINT"] = precision
        core = ov.Core()
        source = core.read_model(str(model)) if isinstance(model, (str, Path)) else model
        self.compiled = core.compile_model(source, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.names = [i.get_any_name() for i in self.compiled.inputs]
        self.provider, self.variant, self.device = "OpenVINO-CPU", variant, "cpu"

    def logits(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        out = self.request.infer({k: batch[k] for k in self.names})  # arrays reused by the next call: copy
        return (np.array(out[self.compiled.output("start_logits")], np.float32),
                np.array(out[self.compiled.output("end_logits")], np.float32))
