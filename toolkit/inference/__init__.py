"""Inference: predictors (PyTorch, ONNX Runtime, OpenVINO) behind one Predictor protocol, length-bucketed
batching, the engine (token windows -> logits -> answers) and loading it from what `train` and `export` wrote.

Layers, each importing only those above it: predictors -> padding (batching) -> variants (the registry) -> engine -> loading."""

from toolkit.inference.engine import SINGLE, Engine, Served
from toolkit.inference.loading import EngineSpec, load_engine
from toolkit.inference.padding import BatchSettings, Stopwatch
from toolkit.inference.predictors import EngineError, OrtPredictor, Predictor, TorchPredictor
from toolkit.inference.variants import VARIANTS, Variant, variant

__all__ = ["VARIANTS", "BatchSettings", "Engine", "EngineError", "EngineSpec", "OrtPredictor", "Predictor",
           "SINGLE", "Served", "Stopwatch", "TorchPredictor", "Variant", "load_engine", "variant"]
