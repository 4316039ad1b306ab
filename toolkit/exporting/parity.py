"""Parity: every exported variant answers the parity set and is compared with PyTorch on the same windows;
the gate on EM/F1 (with the threshold and on best spans) decides which variants may become a default.

Each change of a score comes with its 95 % interval from a paired bootstrap over the questions (the variant and
PyTorch scored on the same resampled questions). The gate decides on the interval, not on the mean: a variant
passes when it is shown to lose at most the limit, fails when it is shown to lose more, and is undecided (never a
default) when the parity set is too small to tell, with about how many questions would decide it."""

import math
import time

import numpy as np

from toolkit import data as data_mod
from toolkit.exporting.common import max_diff
from toolkit.inference import Engine
from toolkit.scoring import best_over_references, squad_scores

METRICS = {"delta_exact": "EM", "delta_f1": "F1", "forced_delta_exact": "best-span EM", "forced_delta_f1": "best-span F1"}
BOOTSTRAP_ROUNDS = 2000


def per_question(examples, answers) -> dict[str, np.ndarray]:
    """Each question's EM and F1 (0-100) with the threshold's answer and with its best span: the paired samples
    behind the intervals."""
    scored = {"delta_exact": [], "delta_f1": [], "forced_delta_exact": [], "forced_delta_f1": []}
    for example, answer in zip(examples, answers):
        exact, f1 = best_over_references(answer.text, example.answer_texts)
        forced_exact, forced_f1 = best_over_references(answer.best_span_text, example.answer_texts)
        for key, value in zip(scored, (exact, f1, forced_exact, forced_f1)):
            scored[key].append(100.0 * value)
    return {key: np.array(values) for key, values in scored.items()}


def paired_interval(differences: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """The 95 % interval of the mean difference, by a paired bootstrap over the questions."""
    rng = np.random.default_rng(seed)
    means = differences[rng.integers(0, len(differences), (BOOTSTRAP_ROUNDS, len(differences)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def questions_to_decide(differences: np.ndarray, *, max_drop: float,
                        interval: tuple[float, float] | None = None) -> int | None:
    """About how many questions would put the 95 % interval of the mean difference (paired_interval's, unless
    given) wholly on one side of -max_drop, at the variance measured here (None: already decided; 0: no number of
    questions would, the mean being on the limit)."""
    low, high = interval or paired_interval(differences)
    if low >= -max_drop or high < -max_drop:
        return None
    margin = abs(differences.mean() + max_drop)
    return 0 if margin == 0 else math.ceil((1.96 * differences.std(ddof=1) / margin) ** 2)


def reference_run(engine: Engine, examples, features, *, run: tuple | None = None) -> dict:
    """The PyTorch answers and logits every exported variant is compared with; run: engine.run's result on these
    features when it is already at hand (the merge check's)."""
    answers, start, end = run or engine.run([e.context for e in examples], features)
    refs = data_mod.references(examples)
    return {"answers": answers, "start": start, "end": end,
            "scores": squad_scores({e.id: a.text for e, a in zip(examples, answers)}, refs),
            "forced": squad_scores({e.id: a.best_span_text for e, a in zip(examples, answers)}, refs),
            "per_question": per_question(examples, answers)}


def parity(reference: dict, engine: Engine, examples, features, *, max_drop: float | None = None) -> dict:
    """Logit |Δ|, answer agreement and EM/F1 of one predictor against the PyTorch reference, each change with its
    95 % interval; with max_drop, also the changes that interval leaves undecided against the gate's limit."""
    started = time.perf_counter()
    answers, start, end = engine.run([e.context for e in examples], features)
    seconds = time.perf_counter() - started
    refs = data_mod.references(examples)
    scores = squad_scores({e.id: a.text for e, a in zip(examples, answers)}, refs)
    forced = squad_scores({e.id: a.best_span_text for e, a in zip(examples, answers)}, refs)
    agree = sum(a.text == b.text for a, b in zip(answers, reference["answers"]))
    span_agree = sum(a.best_span_text == b.best_span_text for a, b in zip(answers, reference["answers"]))
    mine = per_question(examples, answers)
    differences = {key: mine[key] - reference["per_question"][key] for key in METRICS}
    intervals = {key: paired_interval(d) for key, d in differences.items()}
    return {
        "intervals": intervals,
        "undecided": None if max_drop is None else undecided(differences, max_drop=max_drop, intervals=intervals),
        "max_abs_logit_diff": max(max_diff(start, reference["start"]), max_diff(end, reference["end"])),
        "answer_agreement": 100.0 * agree / len(examples),
        "span_agreement": 100.0 * span_agree / len(examples),
        "exact": scores["exact"], "f1": scores["f1"],
        "delta_exact": scores["exact"] - reference["scores"]["exact"],
        "delta_f1": scores["f1"] - reference["scores"]["f1"],
        "forced_exact": forced["exact"], "forced_delta_exact": forced["exact"] - reference["forced"]["exact"],
        "forced_f1": forced["f1"], "forced_delta_f1": forced["f1"] - reference["forced"]["f1"],
        "questions": len(examples), "seconds": seconds, "questions_per_second": len(examples) / seconds,
    }


def gate(result: dict, max_drop: float) -> tuple[str, str | None]:
    """(verdict, why) of the parity gate on EM and F1, with the threshold and on best spans alone, each change
    judged by its 95 % interval against -max_drop: "pass" when every interval lies at or above it (the variant
    shown to lose at most max_drop points), "fail" when one lies wholly below it, "undecided" otherwise (this many
    questions cannot tell; the reason says about how many would). Only a pass makes a variant a default."""
    lows = {label: result["intervals"][key][0] for key, label in METRICS.items()}
    highs = {label: result["intervals"][key][1] for key, label in METRICS.items()}
    changes = {label: result[key] for key, label in METRICS.items()}
    failed = [label for label, high in highs.items() if high < -max_drop]
    if failed:
        label = min(failed, key=changes.get)
        return "fail", (f"{label} drops {-changes[label]:.2f} points vs PyTorch [95 %: {lows[label]:+.2f}, "
                        f"{highs[label]:+.2f}], wholly beyond -{max_drop}; not used as a default")
    unsure = [label for label, low in lows.items() if low < -max_drop]
    if not unsure:
        return "pass", None
    needs = result.get("undecided") or {}

    def why(label: str) -> str:
        said = f"{label} {changes[label]:+.2f} [{lows[label]:+.2f}, {highs[label]:+.2f}]"
        if label not in needs:
            return said
        return said + (f": ~{needs[label]} questions would decide" if needs[label] else ": its mean on the limit")

    return "undecided", (f"not shown to lose at most {max_drop} points on {result['questions']} questions ("
                         + ", ".join(why(label) for label in unsure) + "); not used as a default")


def undecided(differences: dict[str, np.ndarray], *, max_drop: float,
              intervals: dict[str, tuple[float, float]] | None = None) -> dict[str, int]:
    """The metrics whose 95 % interval holds both sides of -max_drop, with about how many questions would decide
    each: a verdict on them that another sample of this size could reverse."""
    needs = {label: questions_to_decide(differences[key], max_drop=max_drop,
                                        interval=intervals[key] if intervals else None)
             for key, label in METRICS.items()}
    return {label: n for label, n in needs.items() if n is not None}


def ranking(variants: dict, candidates: tuple[str, ...]) -> list[str]:
    """The candidates that passed their gate, fastest first (measured throughput on the parity set)."""
    passed = [v for v in candidates if variants.get(v, {}).get("passed")]
    return sorted(passed, key=lambda v: -variants[v]["questions_per_second"])


def fastest(variants: dict, candidates: tuple[str, ...]) -> str:
    """The candidate that passed its gate with the highest measured throughput on the parity set."""
    return (ranking(variants, candidates) or ["fp32"])[0]


def describe(name: str, result: dict) -> str:
    """One log line for a variant's parity result, each change with its 95 % interval."""
    def change(key: str) -> str:
        low, high = result["intervals"][key]
        return f"{result[key]:+.2f} [{low:+.2f}, {high:+.2f}]"

    return (f"{name:>5}: |Δlogit| {result['max_abs_logit_diff']:.2e}, agreement {result['answer_agreement']:.2f}% "
            f"(best span {result['span_agreement']:.2f}%), EM {result['exact']:.2f} ({change('delta_exact')}), "
            f"F1 {result['f1']:.2f} ({change('delta_f1')}), best-span EM {result['forced_exact']:.2f} "
            f"({change('forced_delta_exact')}), best-span F1 {change('forced_delta_f1')}, "
            f"{result['questions_per_second']:.1f} q/s"
            + ("" if result["passed"] else f" {result['verdict'].upper()}: {result['reason']}"))
