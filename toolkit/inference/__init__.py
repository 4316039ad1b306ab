"""Inference: predictors (PyTorch, ONNX Runtime, OpenVINO) behind one Predictor protocol, length-bucketed
batching, the engine (token windows -> logits -> answers) and loading it from what `train` and `export` wrote.

Layers, each importing only those above it: predictors -> batching -> engine -> loading."""

from toolkit.inference.batching import BatchSettings, Stopwatch
from toolkit.inference.engine import SINGLE, Engine, Served
from toolkit.inference.loading import EngineSpec, load_engine
from toolkit.inference.predictors import ONNX_FILES, EngineError, OrtPredictor, Predictor, TorchPredictor

__all__ = ["BatchSettings", "Engine", "EngineError", "EngineSpec", "ONNX_FILES", "OrtPredictor", "Predictor",
           "SINGLE", "Served", "Stopwatch", "TorchPredictor", "load_engine"]
