"""Parity: every exported variant answers the parity set and is compared with PyTorch on the same windows;
the gate on EM/F1 (with the threshold and on best spans) decides which variants may become a default."""

import time

from toolkit import data as data_mod
from toolkit.exporting.common import max_diff
from toolkit.inference import Engine
from toolkit.scoring import squad_scores


def reference_run(engine: Engine, examples, features) -> dict:
    """The PyTorch answers and logits every exported variant is compared with."""
    answers, start, end = engine.run([e.context for e in examples], features)
    refs = data_mod.references(examples)
    return {"answers": answers, "start": start, "end": end,
            "scores": squad_scores({e.id: a.text for e, a in zip(examples, answers)}, refs),
            "forced": squad_scores({e.id: a.best_span_text for e, a in zip(examples, answers)}, refs)}


def parity(reference: dict, engine: Engine, examples, features) -> dict:
    """Logit |Δ|, answer agreement and EM/F1 of one predictor against the PyTorch reference."""
    started = time.perf_counter()
    answers, start, end = engine.run([e.context for e in examples], features)
    seconds = time.perf_counter() - started
    refs = data_mod.references(examples)
    scores = squad_scores({e.id: a.text for e, a in zip(examples, answers)}, refs)
    forced = squad_scores({e.id: a.best_span_text for e, a in zip(examples, answers)}, refs)
    agree = sum(a.text == b.text for a, b in zip(answers, reference["answers"]))
    span_agree = sum(a.best_span_text == b.best_span_text for a, b in zip(answers, reference["answers"]))
    return {
        "max_abs_logit_diff": max(max_diff(start, reference["start"]), max_diff(end, reference["end"])),
        "answer_agreement": 100.0 * agree / len(examples),
        "span_agreement": 100.0 * span_agree / len(examples),
        "exact": scores["exact"], "f1": scores["f1"],
        "delta_exact": scores["exact"] - reference["scores"]["exact"],
        "delta_f1": scores["f1"] - reference["scores"]["f1"],
        "forced_exact": forced["exact"], "forced_delta_exact": forced["exact"] - reference["forced"]["exact"],
        "forced_f1": forced["f1"], "forced_delta_f1": forced["f1"] - reference["forced"]["f1"],
        "seconds": seconds, "questions_per_second": len(examples) / seconds,
    }


def gate(result: dict, max_drop: float) -> str | None:
    """Why a variant fails the parity gate (None when it passes): EM or F1 falling more than max_drop
    points below PyTorch's, with the no-answer threshold or on best spans alone."""
    drops = {"EM": -result["delta_exact"], "F1": -result["delta_f1"],
             "best-span EM": -result["forced_delta_exact"], "best-span F1": -result["forced_delta_f1"]}
    worst = max(drops, key=drops.get)
    if drops[worst] <= max_drop:
        return None
    return f"{worst} drops {drops[worst]:.2f} points vs PyTorch (> {max_drop}); not used as a default"


def ranking(variants: dict, candidates: tuple[str, ...]) -> list[str]:
    """The candidates that passed their gate, fastest first (measured throughput on the parity set)."""
    passed = [v for v in candidates if variants.get(v, {}).get("passed")]
    return sorted(passed, key=lambda v: -variants[v]["questions_per_second"])


def fastest(variants: dict, candidates: tuple[str, ...]) -> str:
    """The candidate that passed its gate with the highest measured throughput on the parity set."""
    return (ranking(variants, candidates) or ["fp32"])[0]


def describe(name: str, result: dict) -> str:
    """One log line for a variant's parity result."""
    return (f"{name:>5}: |Δlogit| {result['max_abs_logit_diff']:.2e}, agreement {result['answer_agreement']:.2f}% "
            f"(best span {result['span_agreement']:.2f}%), EM {result['exact']:.2f} ({result['delta_exact']:+.2f}), "
            f"F1 {result['f1']:.2f} ({result['delta_f1']:+.2f}), best-span EM {result['forced_exact']:.2f} "
            f"({result['forced_delta_exact']:+.2f}), {result['questions_per_second']:.1f} q/s"
            + ("" if result["passed"] else f" FAILED: {result['reason']}"))
