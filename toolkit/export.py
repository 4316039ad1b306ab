"""Adapter -> merged model -> ONNX variants through Optimum, each checked against PyTorch.

The export is built in a temporary sibling directory and renamed into place only when complete,
so a failed export never leaves a directory that looks finished.
"""

import dataclasses
import json
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from toolkit import data as data_mod
from toolkit import modeling
from toolkit.config import QAConfig
from toolkit.engine import ONNX_FILES, BatchSettings, OrtPredictor, QAEngine, TorchPredictor, cuda_available
from toolkit.metrics import squad_scores



class ExportError(RuntimeError):
    """An export that cannot be done or whose result does not answer like PyTorch."""


@dataclass
class ExportConfig:
    adapter: str | None = None  # with merge: the training run's adapter directory
    model: str | None = None  # without merge: a merged/full model directory or hub name
    output_dir: str | None = None  # default: <run>/export beside the adapter
    merge: bool = True
    variants: list[str] = field(default_factory=lambda: ["fp32", "opt", "int8", "int8-u8", "fp16"])
    optimization_level: int = 2  # O2 fuses attention/LayerNorm/GELU exactly; O3 approximates GELU
    eval_file: str | None = None  # parity set; default: the eval set of the training run
    eval_samples: int | None = 2000
    max_drop: float = 1.0  # points of EM or F1 (with the threshold, or best span alone) a variant may lose vs PyTorch
    merge_tolerance: float = 1e-3  # max |merged - unmerged| logit difference
    overwrite: bool = False
    seed: int = 42
    cache_dir: str | None = None


def check_source(cfg: ExportConfig) -> None:
    if cfg.merge:
        if not cfg.adapter:
            raise ExportError("--merge needs --adapter DIR (a training run's adapter directory)")
        if not Path(cfg.adapter).is_dir():
            raise ExportError(f"adapter directory not found: {cfg.adapter}")
    elif not cfg.model:
        raise ExportError("without --merge, pass --model (a merged or fully fine-tuned model directory or hub name)")
    elif Path(cfg.model).is_dir() and modeling.is_adapter_dir(cfg.model):
        raise ExportError(f"{cfg.model} is an adapter directory: use --merge --adapter {cfg.model}")


def _source_model(cfg: ExportConfig):
    """(torch model, tokenizer, QAConfig, training manifest or {}); a PEFT model when merging."""
    if cfg.merge:
        peft_model, tokenizer, qa = modeling.load_adapter(cfg.adapter)
        manifest_path = Path(cfg.adapter) / "manifest.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
        return peft_model, tokenizer, qa, manifest
    if Path(cfg.model).is_dir() and (Path(cfg.model) / "qa_config.json").exists():
        model, tokenizer, qa = modeling.load_for_inference(cfg.model)
    else:
        model, tokenizer = modeling.load_base(cfg.model).eval(), modeling.load_tokenizer(cfg.model)
        qa = QAConfig(base_model=cfg.model, model_type=model.config.model_type)
    manifest_path = Path(cfg.model) / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    return model, tokenizer, qa, manifest


def _parity_examples(cfg: "ExportConfig | AdapterExportConfig", manifest: dict):
    spec = cfg.eval_file or manifest.get("config", {}).get("eval_file")
    if not spec:
        raise ExportError("no parity set: pass --eval-file (the training manifest names none)")
    cache = Path(cfg.cache_dir) if cfg.cache_dir else data_mod.default_cache_dir()
    examples, _ = data_mod.load_examples([spec], cache, cfg.seed, cfg.eval_samples, "validation")
    return spec, examples


def _max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return float(max(np.abs(x - y).max() for x, y in zip(a, b)))


def reference_run(engine: QAEngine, examples, features) -> dict:
    """The PyTorch answers and logits every exported variant is compared with."""
    answers, start, end = engine.run([e.context for e in examples], features)
    refs = data_mod.references(examples)
    return {"answers": answers, "start": start, "end": end,
            "scores": squad_scores({e.id: a.prediction for e, a in zip(examples, answers)}, refs),
            "forced": squad_scores({e.id: a.text for e, a in zip(examples, answers)}, refs)}


def parity(reference: dict, engine: QAEngine, examples, features) -> dict:
    """Logit |Δ|, answer agreement and EM/F1 of one predictor against the PyTorch reference."""
    started = time.perf_counter()
    answers, start, end = engine.run([e.context for e in examples], features)
    seconds = time.perf_counter() - started
    refs = data_mod.references(examples)
    scores = squad_scores({e.id: a.prediction for e, a in zip(examples, answers)}, refs)
    forced = squad_scores({e.id: a.text for e, a in zip(examples, answers)}, refs)
    agree = sum(a.prediction == b.prediction for a, b in zip(answers, reference["answers"]))
    span_agree = sum(a.text == b.text for a, b in zip(answers, reference["answers"]))
    return {
        "max_abs_logit_diff": max(_max_diff(start, reference["start"]), _max_diff(end, reference["end"])),
        "answer_agreement": 100.0 * agree / len(examples),
        "span_agreement": 100.0 * span_agree / len(examples),
        "exact": scores["exact"], "f1": scores["f1"],
        "delta_exact": scores["exact"] - reference["scores"]["exact"],
        "delta_f1": scores["f1"] - reference["scores"]["f1"],
        "forced_exact": forced["exact"], "forced_delta_exact": forced["exact"] - reference["forced"]["exact"],
        "forced_f1": forced["f1"], "forced_delta_f1": forced["f1"] - reference["forced"]["f1"],
        "seconds": seconds, "questions_per_second": len(examples) / seconds,
    }


def quantize_int8(source: Path, target: Path, signed_weights: bool) -> None:
    """ONNX Runtime's dynamic int8 quantisation of a fused graph (Attention -> QAttention, MatMul ->
    DynamicQuantizeMatMul, embeddings included), symmetric weights per channel, u8 activations; weights s8
    (U8S8: the VNNI kernels) or u8 (U8U8: immune to the saturation of AVX2's VPMADDUBSW)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(source, target, per_channel=True, weight_type=QuantType.QInt8 if signed_weights else QuantType.QUInt8,
                     op_types_to_quantize=["MatMul", "Attention", "Gather", "EmbedLayerNormalization"],
                     extra_options={"WeightSymmetric": True, "ActivationSymmetric": False,
                                    # the fused contrib ops defeat ONNX shape inference: their outputs are float
                                    "DefaultTensorType": onnx.TensorProto.FLOAT})


def _build_variants(cfg: ExportConfig, onnx_dir: Path, log) -> dict[str, str]:
    """Write the requested ONNX variants beside model.onnx; returns variant -> reason for those skipped.

    ONNX Runtime's guidance, measured here too: fuse first (its transformer optimizer: Attention,
    SkipLayerNormalization, BiasGelu, EmbedLayerNormalization), then quantise the fused graph per channel."""
    from optimum.onnxruntime import ORTOptimizer, OptimizationConfig

    skipped = {}
    int8 = [v for v in ("int8", "int8-u8") if v in cfg.variants]
    if "opt" in cfg.variants or int8:
        log(f"fusing (ONNX Runtime transformer optimizer, level O{cfg.optimization_level})")
        ORTOptimizer.from_pretrained(onnx_dir).optimize(
            OptimizationConfig(optimization_level=cfg.optimization_level, optimize_for_gpu=False), save_dir=onnx_dir)
    for name in int8:
        log(f"quantising the fused graph: dynamic int8, per channel, {'U8S8' if name == 'int8' else 'U8U8'}")
        quantize_int8(onnx_dir / ONNX_FILES["opt"], onnx_dir / ONNX_FILES[name], signed_weights=name == "int8")
    if int8 and "opt" not in cfg.variants:
        (onnx_dir / ONNX_FILES["opt"]).unlink()
    if "fp16" in cfg.variants:
        if cuda_available():
            log("converting to fp16 for CUDA")
            ORTOptimizer.from_pretrained(onnx_dir).optimize(
                OptimizationConfig(optimization_level=cfg.optimization_level, optimize_for_gpu=True, fp16=True),
                save_dir=onnx_dir, file_suffix="fp16")
        else:
            skipped["fp16"] = "needs a CUDA GPU (none usable here); export again on a GPU machine for fp16"
            log(f"fp16 skipped: {skipped['fp16']}")
    (onnx_dir / "ort_config.json").unlink(missing_ok=True)  # Optimum's record; ours is export_manifest.json
    return skipped


def gate(result: dict, max_drop: float) -> str | None:
    """Why a variant fails the parity gate (None when it passes): EM or F1 falling more than max_drop
    points below PyTorch's, with the no-answer threshold or on best spans alone."""
    drops = {"EM": -result["delta_exact"], "F1": -result["delta_f1"],
             "best-span EM": -result["forced_delta_exact"], "best-span F1": -result["forced_delta_f1"]}
    worst = max(drops, key=drops.get)
    if drops[worst] <= max_drop:
        return None
    return f"{worst} drops {drops[worst]:.2f} points vs PyTorch (> {max_drop}); not used as a default"


def fastest(variants: dict, candidates: tuple[str, ...]) -> str:
    """The candidate that passed its gate with the highest measured throughput on the parity set."""
    passed = [v for v in candidates if variants.get(v, {}).get("passed")]
    return max(passed, key=lambda v: variants[v]["questions_per_second"]) if passed else "fp32"


@contextmanager
def building(out: Path) -> Iterator[Path]:
    """A hidden directory beside out to build in: it replaces out when the block ends, and is removed if it
    raises, so out is never seen half-written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}-partial-", dir=out.parent))
    work.chmod(0o755)
    try:
        yield work
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    work.rename(out)


def export(cfg: ExportConfig, log=lambda m: print(m, file=sys.stderr)) -> dict:
    """Run the export; returns the export manifest (also saved as export_manifest.json)."""
    started = time.time()
    unknown = set(cfg.variants) - set(ONNX_FILES)
    if unknown or "fp32" not in cfg.variants:
        raise ExportError(f"variants must include fp32 and come from {list(ONNX_FILES)}; got {cfg.variants}")
    check_source(cfg)
    out = Path(cfg.output_dir or Path(cfg.adapter or cfg.model).parent / "export")
    if out.exists() and not cfg.overwrite:
        raise ExportError(f"output dir {out} exists; pass --overwrite to replace it")

    model, tokenizer, qa, train_manifest = _source_model(cfg)
    spec, examples = _parity_examples(cfg, train_manifest)
    contexts = [e.context for e in examples]
    features = QAEngine(None, tokenizer, qa).features([e.question for e in examples], contexts)
    settings = BatchSettings.for_device("cpu")
    log(f"parity set: {len(examples)} questions ({spec}) -> {len(features)} windows")

    with building(out) as work:
        manifest = {"source": cfg.adapter if cfg.merge else cfg.model, "config": dataclasses.asdict(cfg),
                    "parity_set": {"spec": spec, "questions": len(examples), "windows": len(features)}}
        if cfg.merge:
            unmerged = QAEngine(TorchPredictor(model), tokenizer, qa, settings)
            _, before_start, before_end = unmerged.run(contexts, features)
            model = model.merge_and_unload()
            merged_engine = QAEngine(TorchPredictor(model), tokenizer, qa, settings)
            _, after_start, after_end = merged_engine.run(contexts, features)
            merge_diff = max(_max_diff(before_start, after_start), _max_diff(before_end, after_end))
            log(f"merge: max |merged - unmerged| logit = {merge_diff:.2e}")
            manifest["merge_max_abs_logit_diff"] = merge_diff
            if merge_diff > cfg.merge_tolerance:
                raise ExportError(f"merged model differs from adapter model by {merge_diff:.2e} "
                                  f"(> tolerance {cfg.merge_tolerance}); not exporting")
            merged_dir = work / "merged"
            model.save_pretrained(merged_dir)
            tokenizer.save_pretrained(merged_dir)
            qa.save(merged_dir)
        reference = reference_run(QAEngine(TorchPredictor(model), tokenizer, qa, settings), examples, features)
        manifest["torch"] = {**reference["scores"], "forced_exact": reference["forced"]["exact"],
                             "forced_f1": reference["forced"]["f1"]}

        from optimum.exporters.onnx import onnx_export_from_model

        onnx_dir = work / "onnx"
        log("exporting to ONNX (optimum, task question-answering, dynamic batch/sequence axes)")
        t0 = time.perf_counter()
        onnx_export_from_model(model, onnx_dir, task="question-answering", do_validation=False)
        tokenizer.save_pretrained(onnx_dir)
        skipped = _build_variants(cfg, onnx_dir, log)
        manifest["onnx_build_seconds"] = time.perf_counter() - t0

        variants = {}
        for name in cfg.variants:
            if name in skipped:
                variants[name] = {"file": None, "passed": False, "reason": skipped[name]}
                continue
            device = "cuda" if name == "fp16" else "cpu"
            engine = QAEngine(OrtPredictor(onnx_dir / ONNX_FILES[name], device, variant=name), tokenizer, qa, settings)
            result = parity(reference, engine, examples, features)
            result.update(file=ONNX_FILES[name], size_bytes=(onnx_dir / ONNX_FILES[name]).stat().st_size,
                          provider=engine.predictor.provider)
            reason = gate(result, cfg.max_drop)
            result["passed"] = reason is None
            if reason:
                result["reason"] = reason
            log(f"{name:>5}: |Δlogit| {result['max_abs_logit_diff']:.2e}, agreement "
                f"{result['answer_agreement']:.2f}% (best span {result['span_agreement']:.2f}%), EM {result['exact']:.2f} ({result['delta_exact']:+.2f}), "
                f"F1 {result['f1']:.2f} ({result['delta_f1']:+.2f}), best-span EM "
                f"{result['forced_exact']:.2f} ({result['forced_delta_exact']:+.2f}), {result['questions_per_second']:.1f} q/s"
                + ("" if result["passed"] else f" FAILED: {result['reason']}"))
            variants[name] = result
        manifest["variants"] = variants
        if not variants["fp32"]["passed"]:
            raise ExportError(f"the plain fp32 ONNX model does not match PyTorch: {variants['fp32']}")
        qa.default_variant = {"cpu": fastest(variants, ("fp32", "opt", "int8", "int8-u8")),
                              "cuda": next(v for v in ("fp16", "opt", "fp32") if variants.get(v, {}).get("passed"))}
        qa.save(onnx_dir)
        manifest["default_variant"] = qa.default_variant
        manifest["wall_seconds"] = time.time() - started
        (work / "export_manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        shutil.copy(work / "export_manifest.json", onnx_dir / "export_manifest.json")
    return manifest


@dataclass
class AdapterExportConfig:
    adapters: dict[str, str]  # name -> a training run's adapter directory; all of one base model
    output_dir: str
    default: str | None = None  # the adapter for lines naming none; default: the first
    eval_file: str | None = None  # parity set for every adapter; default: each adapter's own training eval set
    eval_samples: int | None = 500
    max_logit_diff: float = 1e-4  # against that adapter's merged model, fp32
    overwrite: bool = False
    seed: int = 42
    cache_dir: str | None = None


def lora_weights(model, name: str) -> dict[str, np.ndarray]:
    """Adapter ``name`` of a PEFT model as the LoRA graph's inputs: per adapted module its A and its
    B times the adapter's scaling (the graph scales by 1), and its own QA head."""
    from peft.tuners.lora import LoraLayer

    config = model.peft_config[name]
    if getattr(config, "use_dora", False) or getattr(config, "lora_bias", False):
        raise ExportError(f"adapter '{name}': DoRA and LoRA biases are not supported by the shared-base export")
    out = {}
    for module_name, module in model.base_model.model.named_modules():
        if isinstance(module, LoraLayer) and name in module.lora_A:
            out[f"{module_name}.lora_A.weight"] = module.lora_A[name].weight.detach().float().numpy()
            out[f"{module_name}.lora_B.weight"] = (module.lora_B[name].weight * module.scaling[name]).detach().float().numpy()
    head = getattr(model.base_model.model, modeling.HEAD)
    for attr in ("weight", "bias"):
        out[f"{modeling.HEAD}.{attr}"] = getattr(head.modules_to_save[name], attr).detach().float().numpy()
    return out


def export_lora_graph(base_model: str, targets: list[str], tokenizer, path: Path) -> dict[str, tuple[int, ...]]:
    """The base model as an ONNX graph whose LoRA A/B matrices (on ``targets``) and QA head are graph inputs,
    each with a default initializer of the same name (empty A/B: the base alone; a zero head), so that
    ONNX Runtime's LoraAdapter can supply them per run. Returns each weight input's default shape."""
    import onnx
    import torch
    from onnx import numpy_helper
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    template = get_peft_model(modeling.load_base(base_model, head_from_adapter=True), LoraConfig(
        r=4, lora_alpha=4, lora_dropout=0.0, target_modules=targets, modules_to_save=[modeling.HEAD])).eval()
    swaps = []  # (graph input name, module, attribute): the traced weights that become inputs
    for module_name, module in template.base_model.model.named_modules():
        if isinstance(module, LoraLayer):
            swaps += [(f"{module_name}.lora_A.weight", module.lora_A["default"], "weight"),
                      (f"{module_name}.lora_B.weight", module.lora_B["default"], "weight")]
    head = getattr(template.base_model.model, modeling.HEAD).modules_to_save["default"]
    swaps += [(f"{modeling.HEAD}.{attr}", head, attr) for attr in ("weight", "bias")]
    token_inputs = [n for n in tokenizer.model_input_names if n in ("input_ids", "attention_mask", "token_type_ids")]

    class LoraGraph(torch.nn.Module):
        """forward(token inputs..., weights...): the template with its adapter weights taken from the inputs."""

        def __init__(self):
            super().__init__()
            self.template = template

        def forward(self, *tensors):
            tokens, weights = tensors[:len(token_inputs)], tensors[len(token_inputs):]
            saved = [(module, attr, module._parameters.pop(attr)) for _, module, attr in swaps]
            try:
                for (_, module, attr), value in zip(swaps, weights):
                    setattr(module, attr, value)
                out = self.template(**dict(zip(token_inputs, tokens)))
            finally:
                for module, attr, parameter in saved:
                    delattr(module, attr)
                    module._parameters[attr] = parameter
            return out.start_logits, out.end_logits

    sample = tokenizer(["What is this?"], ["This is a sample context."], return_tensors="pt")
    args = tuple(sample[n] for n in token_inputs) + tuple(getattr(m, a).detach() for _, m, a in swaps)
    axes = {n: {0: "batch", 1: "sequence"} for n in [*token_inputs, "start_logits", "end_logits"]}
    for name, _, _ in swaps:
        if ".lora_A." in name:
            axes[name] = {0: "rank_" + name}
        elif ".lora_B." in name:
            axes[name] = {1: "rank_" + name}
    with torch.no_grad():
        torch.onnx.export(LoraGraph().eval(), args, str(path), input_names=[*token_inputs, *(n for n, _, _ in swaps)],
                          output_names=["start_logits", "end_logits"], dynamic_axes=axes, opset_version=17,
                          dynamo=False)
    graph = onnx.load(str(path))
    shapes = {}
    for (name, module, attr) in swaps:
        shape = tuple(getattr(module, attr).shape)
        if ".lora_A." in name:
            shape = (0, shape[1])
        elif ".lora_B." in name:
            shape = (shape[0], 0)
        graph.graph.initializer.append(numpy_helper.from_array(np.zeros(shape, np.float32), name))
        shapes[name] = shape
    onnx.save(graph, str(path))
    return shapes


def export_adapters(cfg: AdapterExportConfig, log=lambda m: print(m, file=sys.stderr)) -> dict:
    """Several adapters of one base: one ONNX base graph + one .onnx_adapter file and qa_config.json per
    adapter, each checked against that adapter's own merged model. Returns (and saves) the manifest."""
    import onnxruntime as ort

    from toolkit.engine import ADAPTERS_FILE, LORA_GRAPH

    started = time.time()
    out = Path(cfg.output_dir)
    if out.exists() and not cfg.overwrite:
        raise ExportError(f"output dir {out} exists; pass --overwrite to replace it")
    dirs = {name: Path(d) for name, d in cfg.adapters.items()}
    default = cfg.default or next(iter(dirs))
    if default not in dirs:
        raise ExportError(f"--default-adapter '{default}' is not among the adapters {list(dirs)}")
    model, tokenizer, configs = modeling.load_adapters(dirs)
    targets = sorted(set().union(*(model.peft_config[name].target_modules for name in dirs)))
    weights = {name: lora_weights(model, name) for name in dirs}
    settings = BatchSettings.for_device("cpu")

    with building(out) as work:
        onnx_dir = work / "onnx"
        onnx_dir.mkdir()
        log(f"exporting the shared base graph with LoRA inputs on {targets}")
        shapes = export_lora_graph(configs[default].base_model, targets, tokenizer, onnx_dir / LORA_GRAPH)
        tokenizer.save_pretrained(onnx_dir)
        session = OrtPredictor(onnx_dir / LORA_GRAPH, "cpu", variant="fp32-lora")
        index = {"default": default, "graph": LORA_GRAPH, "adapters": {}}
        manifest = {"adapters": {}, "graph_size_bytes": (onnx_dir / LORA_GRAPH).stat().st_size, "targets": targets}
        for name, directory in dirs.items():
            values = {}
            for input_name, shape in shapes.items():  # a module this adapter does not adapt: empty A/B
                value = weights[name].get(input_name, np.zeros(shape, np.float32))
                values[input_name] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value, np.float32))
            unknown = set(weights[name]) - set(shapes)
            if unknown:
                raise ExportError(f"adapter '{name}' has weights the graph has no input for: {sorted(unknown)[:3]}")
            target = onnx_dir / "adapters" / name
            target.mkdir(parents=True)
            adapter_file = ort.AdapterFormat()
            adapter_file.set_adapter_version(1)
            adapter_file.set_model_version(1)
            adapter_file.set_parameters(values)
            adapter_file.export_adapter(str(target / "adapter.onnx_adapter"))
            configs[name].default_variant = {"cpu": "fp32-lora", "cuda": "fp32-lora"}
            configs[name].save(target)

            run_manifest = json.loads((directory / "manifest.json").read_text()) if (directory / "manifest.json").exists() else {}
            spec, examples = _parity_examples(cfg, run_manifest)
            merged, _, qa = modeling.load_adapter(directory)
            merged = merged.merge_and_unload()
            torch_engine = QAEngine(TorchPredictor(merged), tokenizer, qa, settings)
            features = torch_engine.features([e.question for e in examples], [e.context for e in examples])
            reference = reference_run(torch_engine, examples, features)
            engine = QAEngine(session.with_adapter(target / "adapter.onnx_adapter"), tokenizer, qa, settings)
            result = parity(reference, engine, examples, features)
            result.update(parity_set=spec, questions=len(examples), torch_exact=reference["scores"]["exact"],
                          torch_f1=reference["scores"]["f1"], null_threshold=qa.null_threshold,
                          adapter_file_bytes=(target / "adapter.onnx_adapter").stat().st_size)
            log(f"{name}: |Δlogit| vs its merged model {result['max_abs_logit_diff']:.2e}, agreement "
                f"{result['answer_agreement']:.2f}% (best span {result['span_agreement']:.2f}%), EM {result['exact']:.2f}")
            if result["max_abs_logit_diff"] > cfg.max_logit_diff or result["answer_agreement"] < 100.0 \
                    or result["span_agreement"] < 100.0:
                raise ExportError(f"adapter '{name}' on the shared graph does not answer like its merged model: "
                                  f"|Δlogit| {result['max_abs_logit_diff']:.2e} (at most {cfg.max_logit_diff}), "
                                  f"agreement {result['answer_agreement']:.2f}%")
            manifest["adapters"][name] = result
            index["adapters"][name] = {"dir": f"adapters/{name}", "file": "adapter.onnx_adapter",
                                       "source": str(directory.resolve())}
        (onnx_dir / ADAPTERS_FILE).write_text(json.dumps(index, indent=2) + "\n")
        manifest.update(config=dataclasses.asdict(cfg), default=default, wall_seconds=time.time() - started)
        (work / "export_manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
