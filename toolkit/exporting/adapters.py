"""Several adapters of one base: one ONNX base graph whose LoRA matrices and QA head are graph inputs, and
one ONNX Runtime .onnx_adapter file (with its qa_config.json) per adapter, each checked against that
adapter's own merged model."""

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from toolkit import modeling
from toolkit.exporting.common import ExportError, building, parity_examples
from toolkit.exporting.parity import parity, reference_run
from toolkit.features import MODEL_INPUTS
from toolkit.inference import BatchSettings, Engine, OrtPredictor, TorchPredictor
from toolkit.inference.predictors import ADAPTERS_FILE, LORA_GRAPH

ADAPTER_FILE = "adapter.onnx_adapter"


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


class LoraGraph(torch.nn.Module):
    """forward(token inputs..., weights...): a PEFT template model whose adapter weights (swaps: graph input
    name, module, attribute) are taken from the inputs for the pass, so that tracing makes them graph inputs."""

    def __init__(self, template, token_inputs: list[str], swaps: list[tuple]):
        super().__init__()
        self.template, self.token_inputs, self.swaps = template, token_inputs, swaps

    def forward(self, *tensors):
        tokens, weights = tensors[:len(self.token_inputs)], tensors[len(self.token_inputs):]
        saved = [(module, attr, module._parameters.pop(attr)) for _, module, attr in self.swaps]
        try:
            for (_, module, attr), value in zip(self.swaps, weights):
                setattr(module, attr, value)
            out = self.template(**dict(zip(self.token_inputs, tokens)))
        finally:
            for module, attr, parameter in saved:
                delattr(module, attr)
                module._parameters[attr] = parameter
        return out.start_logits, out.end_logits


def _template(base_model: str, targets: list[str]):
    """A rank-4 PEFT model of the base on targets, and its weights that become graph inputs."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    template = get_peft_model(modeling.load_base(base_model, head_from_adapter=True), LoraConfig(
        r=4, lora_alpha=4, lora_dropout=0.0, target_modules=targets, modules_to_save=[modeling.HEAD])).eval()
    swaps = []  # (graph input name, module, attribute)
    for module_name, module in template.base_model.model.named_modules():
        if isinstance(module, LoraLayer):
            swaps += [(f"{module_name}.lora_A.weight", module.lora_A["default"], "weight"),
                      (f"{module_name}.lora_B.weight", module.lora_B["default"], "weight")]
    head = getattr(template.base_model.model, modeling.HEAD).modules_to_save["default"]
    swaps += [(f"{modeling.HEAD}.{attr}", head, attr) for attr in ("weight", "bias")]
    return template, swaps


def _empty_default(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The default of a weight input: empty A/B (rank 0: the base alone), the head's own shape (zeros)."""
    if ".lora_A." in name:
        return 0, shape[1]
    if ".lora_B." in name:
        return shape[0], 0
    return shape


def export_lora_graph(base_model: str, targets: list[str], tokenizer, path: Path) -> dict[str, tuple[int, ...]]:
    """The base model as an ONNX graph whose LoRA A/B matrices (on ``targets``) and QA head are graph inputs,
    each with a default initializer of the same name (empty A/B: the base alone; a zero head), so that
    ONNX Runtime's LoraAdapter can supply them per run. Returns each weight input's default shape."""
    import onnx
    from onnx import numpy_helper

    template, swaps = _template(base_model, targets)
    token_inputs = [n for n in tokenizer.model_input_names if n in MODEL_INPUTS]
    sample = tokenizer(["What is this?"], ["This is a sample context."], return_tensors="pt")
    args = tuple(sample[n] for n in token_inputs) + tuple(getattr(m, a).detach() for _, m, a in swaps)
    axes = {n: {0: "batch", 1: "sequence"} for n in [*token_inputs, "start_logits", "end_logits"]}
    for name, _, _ in swaps:
        if ".lora_A." in name:
            axes[name] = {0: "rank_" + name}
        elif ".lora_B." in name:
            axes[name] = {1: "rank_" + name}
    with torch.no_grad():
        torch.onnx.export(LoraGraph(template, token_inputs, swaps).eval(), args, str(path),
                          input_names=[*token_inputs, *(n for n, _, _ in swaps)], output_names=["start_logits", "end_logits"],
                          dynamic_axes=axes, opset_version=17, dynamo=False)
    graph = onnx.load(str(path))
    shapes = {name: _empty_default(name, tuple(getattr(module, attr).shape)) for name, module, attr in swaps}
    for name, shape in shapes.items():
        graph.graph.initializer.append(numpy_helper.from_array(np.zeros(shape, np.float32), name))
    onnx.save(graph, str(path))
    return shapes


def write_adapter_file(weights: dict[str, np.ndarray], shapes: dict, target: Path, name: str) -> None:
    """One adapter's weights as an ONNX Runtime adapter file; modules it does not adapt get empty A/B."""
    import onnxruntime as ort

    unknown = set(weights) - set(shapes)
    if unknown:
        raise ExportError(f"adapter '{name}' has weights the graph has no input for: {sorted(unknown)[:3]}")
    values = {input_name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(
        weights.get(input_name, np.zeros(shape, np.float32)), np.float32)) for input_name, shape in shapes.items()}
    adapter_file = ort.AdapterFormat()
    adapter_file.set_adapter_version(1)
    adapter_file.set_model_version(1)
    adapter_file.set_parameters(values)
    adapter_file.export_adapter(str(target))


def check_adapter(cfg: AdapterExportConfig, name: str, directory: Path, session: OrtPredictor, adapter_file: Path,
                  tokenizer, log) -> dict:
    """The adapter on the shared graph against its own merged model, on its parity set; raises if they differ."""
    spec, examples = parity_examples(cfg.eval_file, json.loads((directory / "manifest.json").read_text())
                                     if (directory / "manifest.json").exists() else {},
                                     cfg.eval_samples, cfg.seed, cfg.cache_dir)
    merged, _, qa = modeling.load_adapter(directory)
    torch_engine = Engine.single(TorchPredictor(merged.merge_and_unload()), tokenizer, qa, settings=BatchSettings())
    features = torch_engine.features([e.question for e in examples], [e.context for e in examples])
    reference = reference_run(torch_engine, examples, features)
    engine = Engine.single(session.with_adapter(adapter_file), tokenizer, qa, settings=BatchSettings())
    result = parity(reference, engine, examples, features)
    result.update(parity_set=spec, questions=len(examples), torch_exact=reference["scores"]["exact"],
                  torch_f1=reference["scores"]["f1"], null_threshold=qa.null_threshold,
                  adapter_file_bytes=adapter_file.stat().st_size)
    log(f"{name}: |Δlogit| vs its merged model {result['max_abs_logit_diff']:.2e}, agreement "
        f"{result['answer_agreement']:.2f}% (best span {result['span_agreement']:.2f}%), EM {result['exact']:.2f}")
    if result["max_abs_logit_diff"] > cfg.max_logit_diff or result["answer_agreement"] < 100.0 \
            or result["span_agreement"] < 100.0:
        raise ExportError(f"adapter '{name}' on the shared graph does not answer like its merged model: "
                          f"|Δlogit| {result['max_abs_logit_diff']:.2e} (at most {cfg.max_logit_diff}), "
                          f"agreement {result['answer_agreement']:.2f}%")
    return result


def export_adapters(cfg: AdapterExportConfig, log=lambda m: print(m, file=sys.stderr)) -> dict:
    """Several adapters of one base: one ONNX base graph + one .onnx_adapter file and qa_config.json per
    adapter, each checked against that adapter's own merged model. Returns (and saves) the manifest."""
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
            target = onnx_dir / "adapters" / name
            target.mkdir(parents=True)
            write_adapter_file(weights[name], shapes, target / ADAPTER_FILE, name)
            configs[name].default_variant = {"cpu": "fp32-lora", "cuda": "fp32-lora"}
            configs[name].save(target)
            manifest["adapters"][name] = check_adapter(cfg, name, directory, session, target / ADAPTER_FILE,
                                                       tokenizer, log)
            index["adapters"][name] = {"dir": f"adapters/{name}", "file": ADAPTER_FILE,
                                       "source": str(directory.resolve())}
        (onnx_dir / ADAPTERS_FILE).write_text(json.dumps(index, indent=2) + "\n")
        manifest.update(config=dataclasses.asdict(cfg), default=default, wall_seconds=time.time() - started)
        (work / "export_manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
