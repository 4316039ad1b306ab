"""Peers: how a user would answer the same questions without qa-toolkit. The transformers
question-answering pipeline over PyTorch, over Optimum's ORTModelForQuestionAnswering (ONNX Runtime) and
over optimum-intel's OVModelForQuestionAnswering (OpenVINO, fp32 and NNCF int8), each on the same merged
weights with the same window settings and thread count. A peer that cannot run here says why instead of
giving a row (OpenVINO needs the `peers` extra).
"""

import time
from pathlib import Path

import numpy as np

from toolkit import data as data_mod
from toolkit.config import QAConfig
from toolkit.inference import VARIANTS
from toolkit.scoring import squad_scores

PEERS = ("pipeline-torch", "pipeline-ort", "pipeline-ov-fp32", "pipeline-ov-int8")


class PeerUnavailable(RuntimeError):
    """A peer that cannot run on this machine or in this environment; the message says why."""


def _openvino(torch_dir: Path, threads: int, calibration: list[dict[str, np.ndarray]] | None):
    """OVModelForQuestionAnswering exported from the merged weights; int8 by NNCF's post-training
    quantisation (transformer preset) on the calibration windows when they are given."""
    try:
        import nncf
        from optimum.intel import OVModelForQuestionAnswering
    except ImportError as e:
        raise PeerUnavailable(f"needs the peers extra, pip install 'qa-toolkit[peers]' ({e})") from None
    ov_config = {"INFERENCE_NUM_THREADS": str(threads), "PERFORMANCE_HINT": "LATENCY"}
    model = OVModelForQuestionAnswering.from_pretrained(torch_dir, export=True, compile=False, ov_config=ov_config)
    if calibration is not None:
        names = [i.get_any_name() for i in model.model.inputs]
        dataset = nncf.Dataset(calibration, lambda window: {k: window[k] for k in names})
        quantized = nncf.quantize(model.model, dataset, model_type=nncf.ModelType.TRANSFORMER,
                                  subset_size=len(calibration))
        model = OVModelForQuestionAnswering(quantized, config=model.config, ov_config=ov_config, compile=False)
    model.compile()
    return model


def _precision(model) -> str:
    """The precision OpenVINO runs the non-quantised operations at (bf16 by default where it is native)."""
    return f"{model.request.get_property('INFERENCE_PRECISION_HINT').get_type_name()} inference precision"


def load_peer(kind: str, onnx_dir: Path, torch_dir: Path, threads: int,
              calibration: list[dict[str, np.ndarray]]):
    """The model object the pipeline runs over, and a note saying what it is."""
    if kind == "pipeline-torch":
        import torch
        from transformers import AutoModelForQuestionAnswering

        torch.set_num_threads(threads)
        return AutoModelForQuestionAnswering.from_pretrained(torch_dir).eval(), "AutoModelForQuestionAnswering, fp32"
    if kind == "pipeline-ort":
        import onnxruntime as ort
        from optimum.onnxruntime import ORTModelForQuestionAnswering

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        model = ORTModelForQuestionAnswering.from_pretrained(onnx_dir, file_name=VARIANTS["fp32"].file,
                                                             session_options=options)
        return model, "ORTModelForQuestionAnswering (model.onnx), CPUExecutionProvider"
    if kind == "pipeline-ov-fp32":
        model = _openvino(torch_dir, threads, None)
        return model, f"OVModelForQuestionAnswering, {_precision(model)}"
    if kind == "pipeline-ov-int8":
        model = _openvino(torch_dir, threads, calibration)
        return model, f"OVModelForQuestionAnswering, NNCF int8 ({len(calibration)} training windows), {_precision(model)}"
    raise PeerUnavailable(f"unknown peer '{kind}'; choose from {list(PEERS)}")


def run_peer(kind: str, onnx_dir: Path, torch_dir: Path, examples, qa: QAConfig, threads: int,
             calibration: list[dict[str, np.ndarray]]) -> dict:
    """q/s and SQuAD scores of one peer over the examples, or {"skipped": reason}."""
    from transformers import AutoTokenizer, pipeline

    try:
        model, note = load_peer(kind, onnx_dir, torch_dir, threads, calibration)
    except PeerUnavailable as e:
        return {"skipped": str(e)}
    qa_pipe = pipeline("question-answering", model=model, tokenizer=AutoTokenizer.from_pretrained(onnx_dir))
    started = time.perf_counter()
    results = qa_pipe(question=[e.question for e in examples], context=[e.context for e in examples],
                      handle_impossible_answer=True, max_seq_len=qa.max_length, doc_stride=qa.doc_stride,
                      max_answer_len=qa.max_answer_length, max_question_len=qa.max_question_tokens)
    seconds = time.perf_counter() - started
    results = results if isinstance(results, list) else [results]
    scores = squad_scores({e.id: r["answer"] for e, r in zip(examples, results)}, data_mod.references(examples))
    return {"seconds": seconds, "questions_per_second": len(examples) / seconds, **scores,
            "note": f"transformers pipeline, {note}, handle_impossible_answer=True"}
