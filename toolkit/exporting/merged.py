"""Adapter -> merged model -> ONNX variants through Optimum and OpenVINO IR, each checked against PyTorch.

The export is built in a hidden sibling directory and renamed into place only when complete, so a failed
export never leaves a directory that looks finished.
"""

import dataclasses
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from toolkit import modeling
from toolkit.config import QAConfig
from toolkit.data import DataError
from toolkit.exporting.common import (
    ExportError,
    building,
    calibration_windows,
    max_diff,
    parity_examples,
    size_bytes,
)
from toolkit.exporting.parity import describe, fastest, gate, parity, ranking, reference_run
from toolkit.exporting.variants import build_files, buildable
from toolkit.features import build_features
from toolkit.inference import VARIANTS, BatchSettings, Engine, TorchPredictor
from toolkit.inference.variants import EXPORTED, cpu_candidates, cuda_default
from toolkit.runtime import cpu_features, cpu_name

CALIBRATION_FALLBACK = "squad-v1.1-train"  # int8 calibration where the run's own training source is not here


@dataclass
class ExportConfig:
    adapter: str | None = None  # with merge: the training run's adapter directory
    model: str | None = None  # without merge: a merged/full model directory or hub name
    output_dir: str | None = None  # default: <run>/export beside the adapter
    merge: bool = True
    variants: list[str] = field(default_factory=lambda: list(EXPORTED))
    optimization_level: int = 2  # O2 fuses attention/LayerNorm/GELU exactly; O3 approximates GELU
    eval_file: str | None = None  # parity set; default: the eval set of the training run
    eval_samples: int | None = 2000
    max_drop: float = 1.0  # points of EM or F1 (with the threshold, or best span alone) a variant may lose vs PyTorch
    merge_tolerance: float = 5e-3  # max |merged - unmerged| logit difference, relative to the largest logit
    calibration_file: str | None = None  # static int8 (ov-int8*): training questions; default: the run's first source
    calibration_samples: int = 128
    overwrite: bool = False
    seed: int = 42
    cache_dir: str | None = None

    def check(self) -> Path:
        """The output directory, once every setting is known to be usable."""
        if set(self.variants) - set(EXPORTED) or "fp32" not in self.variants:
            raise ExportError(f"variants must include fp32 and come from {', '.join(EXPORTED)}; got {self.variants}")
        if self.merge:
            if not self.adapter:
                raise ExportError("--merge needs --adapter DIR (a training run's adapter directory)")
            if not Path(self.adapter).is_dir():
                raise ExportError(f"adapter directory not found: {self.adapter}")
        elif not self.model:
            raise ExportError("without --merge, pass --model (a merged or fully fine-tuned model directory or hub name)")
        elif Path(self.model).is_dir() and modeling.is_adapter_dir(self.model):
            raise ExportError(f"{self.model} is an adapter directory: use --merge --adapter {self.model}")
        out = Path(self.output_dir or Path(self.adapter or self.model).parent / "export")
        if out.exists() and not self.overwrite:
            raise ExportError(f"output dir {out} exists; pass --overwrite to replace it")
        return out


def _manifest_of(directory: str | Path) -> dict:
    path = Path(directory) / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}


def source_model(cfg: ExportConfig):
    """(torch model, tokenizer, QAConfig, training manifest or {}); a PEFT model when merging."""
    if cfg.merge:
        peft_model, tokenizer, qa = modeling.load_adapter(cfg.adapter)
        return peft_model, tokenizer, qa, _manifest_of(cfg.adapter)
    if Path(cfg.model).is_dir() and (Path(cfg.model) / "qa_config.json").exists():
        model, tokenizer, qa = modeling.load_for_inference(cfg.model)
    else:
        model, tokenizer = modeling.load_base(cfg.model).eval(), modeling.load_tokenizer(cfg.model)
        qa = QAConfig(base_model=cfg.model, model_type=model.config.model_type)
    return model, tokenizer, qa, _manifest_of(cfg.model) if Path(cfg.model).is_dir() else {}


def merge_checked(model, tokenizer, qa, examples, features, cfg: ExportConfig, work: Path, log):
    """(the merged model, saved under work/merged, after checking it answers like the adapter model; the largest
    logit difference; the merged model's run on the features, which is PyTorch's reference)."""
    contexts = [e.context for e in examples]
    before = Engine.single(TorchPredictor(model), tokenizer, qa).run(contexts, features)
    model = model.merge_and_unload()
    after = Engine.single(TorchPredictor(model), tokenizer, qa).run(contexts, features)
    diff = max(max_diff(before[1], after[1]), max_diff(before[2], after[2]))
    scale = max(1.0, max(float(abs(x).max()) for x in (*before[1], *before[2])))  # fp32 rounding grows with it
    spans = sum(a.best_span_text != b.best_span_text for a, b in zip(before[0], after[0]))
    log(f"merge: max |merged - unmerged| logit = {diff:.2e} (largest logit {scale:.1f}); best spans changed: {spans}")
    if diff > cfg.merge_tolerance * scale or spans:
        raise ExportError(f"merged model differs from adapter model by {diff:.2e} (> tolerance {cfg.merge_tolerance} "
                          f"x the largest logit {scale:.1f}) or in {spans} best span(s); not exporting")
    merged_dir = work / "merged"
    model.save_pretrained(merged_dir)
    tokenizer.save_pretrained(merged_dir)
    qa.save(merged_dir)
    return model, diff, after


def to_onnx(model, tokenizer, cfg: ExportConfig, onnx_dir: Path, calibration, log) -> dict[str, str]:
    """model.onnx through Optimum and the variants built from it; returns the variants skipped, with why."""
    from optimum.exporters.onnx import onnx_export_from_model

    log("exporting to ONNX (optimum, task question-answering, dynamic batch/sequence axes)")
    onnx_export_from_model(model, onnx_dir, task="question-answering", do_validation=False)
    tokenizer.save_pretrained(onnx_dir)
    wanted, skipped = buildable(cfg.variants)
    for name, reason in skipped.items():
        log(f"{name} skipped: {reason}")
    build_files(wanted, onnx_dir, cfg.optimization_level, calibration, log)
    return skipped


def calibration(cfg: ExportConfig, train_manifest: dict, tokenizer, qa, log) -> tuple[str | None, list]:
    """(source, training windows) for the static int8 variants: --calibration-file, else the run's first training
    source, else (where that cannot be read here: a file left on another machine) SQuAD v1.1 train."""
    if not any(VARIANTS[v].build == "openvino-int8" for v in cfg.variants):
        return None, []
    spec = cfg.calibration_file or (train_manifest.get("config", {}).get("train_files") or [CALIBRATION_FALLBACK])[0]
    try:
        return spec, calibration_windows(tokenizer, qa, spec, samples=cfg.calibration_samples, seed=cfg.seed)
    except DataError as e:
        if cfg.calibration_file:
            raise
        log(f"calibration: the run's first training source cannot be read here ({e}); the static int8 variants "
            f"are calibrated on {CALIBRATION_FALLBACK} instead (--calibration-file chooses another)")
    return CALIBRATION_FALLBACK, calibration_windows(tokenizer, qa, CALIBRATION_FALLBACK,
                                                     samples=cfg.calibration_samples, seed=cfg.seed)


def check_variants(cfg: ExportConfig, onnx_dir: Path, skipped: dict, reference: dict, tokenizer, qa,
                   examples, features, log) -> dict:
    """Every variant's parity result against PyTorch, gated."""
    variants = {}
    for name in cfg.variants:
        if name in skipped:
            variants[name] = {"file": None, "verdict": "skipped", "passed": False, "reason": skipped[name]}
            continue
        variant = VARIANTS[name]
        device = variant.devices[0]  # the variant batched as it will serve
        predictor = variant.predictor(onnx_dir, device)
        result = parity(reference, Engine.single(predictor, tokenizer, qa, settings=variant.batch_settings(device)),
                        examples, features, max_drop=cfg.max_drop)
        file = variant.file
        result.update(file=file, size_bytes=size_bytes(onnx_dir / file), provider=predictor.provider)
        result["verdict"], reason = gate(result, cfg.max_drop)
        result["passed"] = result["verdict"] == "pass"
        if reason:
            result["reason"] = reason
        log(describe(name, result))
        variants[name] = result
    if variants["fp32"]["verdict"] == "fail":  # undecided on a small parity set is no reason to stop the export
        raise ExportError(f"the plain fp32 ONNX model does not answer like PyTorch: {variants['fp32']['reason']}")
    return variants


def export(cfg: ExportConfig, log=lambda m: print(m, file=sys.stderr)) -> dict:
    """Run the export; returns the export manifest (also saved as export_manifest.json)."""
    started = time.time()
    out = cfg.check()
    model, tokenizer, qa, train_manifest = source_model(cfg)
    spec, examples = parity_examples(cfg.eval_file, train_manifest, cfg.eval_samples, cfg.seed, cfg.cache_dir)
    features = build_features(tokenizer, [e.question for e in examples], [e.context for e in examples], qa.features())
    log(f"parity set: {len(examples)} questions ({spec}) -> {len(features)} windows")
    calibration_spec, windows = calibration(cfg, train_manifest, tokenizer, qa, log)
    manifest = {"source": cfg.adapter if cfg.merge else cfg.model, "config": dataclasses.asdict(cfg),
                "parity_set": {"spec": spec, "questions": len(examples), "windows": len(features)},
                "calibration_set": {"spec": calibration_spec, "windows": len(windows)}}
    with building(out) as work:
        merged_run = None
        if cfg.merge:
            model, manifest["merge_max_abs_logit_diff"], merged_run = merge_checked(model, tokenizer, qa, examples,
                                                                                    features, cfg, work, log)
        reference = reference_run(Engine.single(TorchPredictor(model), tokenizer, qa, settings=BatchSettings()),
                                  examples, features, run=merged_run)
        manifest["torch"] = {**reference["scores"], "forced_exact": reference["forced"]["exact"],
                             "forced_f1": reference["forced"]["f1"]}
        onnx_dir = work / "onnx"
        built = time.perf_counter()
        skipped = to_onnx(model, tokenizer, cfg, onnx_dir, windows, log)
        manifest["onnx_build_seconds"] = time.perf_counter() - built
        variants = check_variants(cfg, onnx_dir, skipped, reference, tokenizer, qa, examples, features, log)
        passed = [name for name, result in variants.items() if result["passed"]]
        qa.default_variant = {"cpu": fastest(variants, cpu_candidates()), "cuda": cuda_default(passed)}
        qa.cpu_ranking = ranking(variants, cpu_candidates())
        qa.measured_on = {"cpu": cpu_name(), "features": cpu_features()}
        qa.save(onnx_dir)
        manifest.update(variants=variants, default_variant=qa.default_variant, cpu_ranking=qa.cpu_ranking,
                        measured_on=qa.measured_on, wall_seconds=time.time() - started)
        (work / "export_manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        shutil.copy(work / "export_manifest.json", onnx_dir / "export_manifest.json")
    return manifest
