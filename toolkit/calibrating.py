"""Fitting a model's calibration (toolkit.calibration) on held-out questions and storing it in its
qa_config.json: after training (on the eval set the threshold is tuned on), or for an existing adapter or
export (`qa-toolkit calibrate`)."""

import dataclasses
from pathlib import Path

from toolkit import data
from toolkit.calibration import Calibration, fit
from toolkit.config import QAConfig
from toolkit.features import question_lengths
from toolkit.postprocess import Answer
from toolkit.scoring import best_null_threshold, best_over_references


def fit_answers(examples, answers: list[Answer], fitted_on: str) -> Calibration:
    """Platt scaling of the answers' scores against what the examples' references say."""
    references = data.references(examples)
    return fit([a.null_score_diff for a in answers],
               [a.best_span.start_confidence if a.best_span else 0.0 for a in answers],
               [a.best_span.end_confidence if a.best_span else 0.0 for a in answers],
               [e.is_impossible for e in examples],
               [best_over_references(a.best_span_text, references[e.id])[0] == 1.0 for e, a in zip(examples, answers)],
               fitted_on)


def tuned_threshold(examples, answers: list[Answer]) -> float:
    """The no-answer threshold with the best F1 on these questions."""
    return best_null_threshold({e.id: a.best_span_text for e, a in zip(examples, answers)},
                               {e.id: a.null_score_diff for e, a in zip(examples, answers)},
                               data.references(examples)).threshold


def calibrate_model(model_dir: str, eval_file: str, retune: bool = False) -> dict:
    """Fit (and with retune, tune the threshold) on eval_file with the model's fp32 weights, then rewrite
    model_dir/qa_config.json with the fit. Returns what was stored and the fit's figures."""
    from toolkit.inference import EngineSpec, load_engine
    from toolkit.inference.loading import runs_on_onnxruntime

    onnx = runs_on_onnxruntime(EngineSpec(model=model_dir))
    engine = load_engine(EngineSpec(model=model_dir, variant="fp32" if onnx else "torch-fp32"))
    examples, _ = data.load_examples([eval_file], cache_dir=data.default_cache_dir(), seed=42,
                                     limit=None, default_split="validation")
    if not any(e.is_impossible for e in examples):
        raise ValueError(f"{eval_file} holds no unanswerable question: the no-answer probability cannot be fitted")
    qa = QAConfig.load(model_dir)
    lengths = question_lengths(engine.tokenizer, [e.question for e in examples])
    examples = [e for e, n in zip(examples, lengths) if n <= qa.max_question_tokens]  # as training drops them
    answers = engine.answer([e.question for e in examples], [e.context for e in examples])
    changes = {"calibration": fit_answers(examples, answers, eval_file).to_dict()}
    if retune:
        changes.update(null_threshold=tuned_threshold(examples, answers), null_threshold_tuned_on=eval_file)
    dataclasses.replace(qa, **changes).save(Path(model_dir))
    return {"model_dir": model_dir, "questions": len(examples), **changes,
            "null_threshold": changes.get("null_threshold", qa.null_threshold)}


CARD_SECTION = "## Calibration"


def write_card_section(model_dir: Path, section: str) -> None:
    """Put section (starting with CARD_SECTION) into the model card (README.md), replacing an earlier one."""
    card = Path(model_dir) / "README.md"
    text = card.read_text() if card.exists() else ""
    if CARD_SECTION in text:
        start = text.index(CARD_SECTION)
        end = text.find("\n## ", start + len(CARD_SECTION))
        text = text[:start] + text[end + 1:] if end != -1 else text[:start]
    card.write_text(text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n")
