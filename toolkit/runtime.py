"""Facts about this process and this machine: package versions, peak memory, CPU features, dense matmul
rates per precision, and the FLOPs of a model pass. Nothing here imports the rest of the toolkit."""

import os
import platform
import resource
import time
from pathlib import Path

import numpy as np

VERSIONED_PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets", "optimum", "optimum-onnx",
                      "onnxruntime", "onnxruntime-gpu", "openvino", "nncf", "optimum-intel", "numpy", "tokenizers")
NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}
VNNI_FLAGS = {"avx512_vnni", "avx_vnni"}
INFERENCE_FLAGS = {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", *NATIVE_BF16_FLAGS, *VNNI_FLAGS}


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM: unlike ru_maxrss, not inherited across exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_flags() -> set[str]:
    """This CPU's feature flags (avx512_vnni, avx512_bf16, amx_bf16, ...); empty where unknown."""
    try:
        return set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return set()


def native_bf16() -> bool:
    """bf16 matmuls in hardware (AVX512-BF16 or AMX); elsewhere torch emulates them, slower than fp32."""
    return bool(NATIVE_BF16_FLAGS & cpu_flags())


def int8_vnni() -> bool:
    return bool(VNNI_FLAGS & cpu_flags())


def amx() -> bool:
    """Intel AMX tiles (bf16 and int8 matmuls), which OpenVINO's bf16 and int8 variants use."""
    return any(f.startswith("amx") for f in cpu_flags())


def cpu_features() -> list[str]:
    """The CPU features the inference variants' speed and numerics depend on, as named in /proc/cpuinfo."""
    return sorted(f for f in cpu_flags() if f in INFERENCE_FLAGS or f.startswith("amx"))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def default_threads() -> int:
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def cuda_available() -> bool:
    """CUDA that really works: a device torch can see and onnxruntime built with the CUDA provider."""
    import onnxruntime as ort
    import torch

    return torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers()


def machine_info(threads: int) -> dict:
    """The machine a measurement ran on, for every results file."""
    import psutil

    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu": cpu_name(), "physical_cores": psutil.cpu_count(logical=False), "logical_cores": psutil.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2 ** 30, 1), "threads": threads,
            "native_bf16": native_bf16(), "int8_vnni": int8_vnni(), "amx": amx(), "cuda": cuda_available()}
    import torch

    if torch.cuda.is_available():  # a GPU torch can use, with or without ONNX Runtime's CUDA provider ("cuda")
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def encoder_flops(config, seq_len: int) -> float:
    """Multiply-add FLOPs (x2) of one window through the encoder and QA head (embeddings excluded)."""
    h = getattr(config, "hidden_size", None) or config.dim
    inner = getattr(config, "intermediate_size", None) or config.hidden_dim
    layers = getattr(config, "num_hidden_layers", None) or config.n_layers
    per_layer = 2 * seq_len * (4 * h * h + 2 * h * inner) + 2 * 2 * seq_len * seq_len * h
    return layers * per_layer + 2 * seq_len * h * 2


def _best_seconds(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def matmul_flops_per_second(threads: int, n: int = 1024, repeats: int = 10, dtype=None) -> float:
    """This machine's dense matmul rate through torch at dtype, fp32 by default (best of several runs)."""
    import torch

    torch.set_num_threads(threads)
    dtype = dtype or torch.float32
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n ** 3 / _best_seconds(lambda: torch.mm(a, b), repeats)


def onnx_matmul_rate(kind: str, threads: int, n: int = 1024, repeats: int = 10) -> float:
    """Dense n x n x n matmul rate of ONNX Runtime's CPU kernels: MatMul ("fp32") or MatMulInteger with
    u8 activations and s8 ("u8s8") or u8 ("u8u8") weights, the two int8 variants' kernels."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if kind == "fp32":
        a, b = rng.standard_normal((n, n), np.float32), rng.standard_normal((n, n), np.float32)
        node, out_type = helper.make_node("MatMul", ["a", "b"], ["y"]), TensorProto.FLOAT
    else:
        a = rng.integers(0, 255, (n, n), dtype=np.uint8)
        b = rng.integers(-127, 127, (n, n), dtype=np.int8) if kind == "u8s8" else rng.integers(0, 255, (n, n), dtype=np.uint8)
        node, out_type = helper.make_node("MatMulInteger", ["a", "b"], ["y"]), TensorProto.INT32
    graph = helper.make_graph([node], "mm", [helper.make_tensor_value_info("a", helper.np_dtype_to_tensor_dtype(a.dtype), [n, n])],
                              [helper.make_tensor_value_info("y", out_type, [n, n])], [numpy_helper.from_array(b, "b")])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(),
                                   options, providers=["CPUExecutionProvider"])
    return 2 * n ** 3 / _best_seconds(lambda: session.run(None, {"a": a}), repeats)


def machine_peaks(threads: int) -> dict:
    """This machine's dense matmul rates (multiply-add = 2 ops) at each precision, as the runtimes reach
    them: fp32 and int8 through ONNX Runtime, fp32 and bf16 through torch; whether bf16 and VNNI are native."""
    import torch

    return {"fp32_torch": matmul_flops_per_second(threads), "fp32_onnxruntime": onnx_matmul_rate("fp32", threads),
            "int8_u8s8_onnxruntime": onnx_matmul_rate("u8s8", threads),
            "int8_u8u8_onnxruntime": onnx_matmul_rate("u8u8", threads),
            "bf16_torch": matmul_flops_per_second(threads, dtype=torch.bfloat16),
            "bf16_native": native_bf16() or cuda_available(), "int8_vnni": int8_vnni()}


def peak_rate(kind: str, peaks: dict) -> float:
    """The matmul rate a computation is bounded by: a machine_peaks key (a variant's `peak`), or "fp32" for the
    faster of torch's and ONNX Runtime's fp32 kernels."""
    if kind == "fp32":
        return max(peaks["fp32_torch"], peaks.get("fp32_onnxruntime", 0.0))
    return peaks[kind]
