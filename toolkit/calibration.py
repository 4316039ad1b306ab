"""Calibrated probabilities from the model's scores: Platt scaling (a logistic regression) fitted on questions
held out from training, stored in qa_config.json beside the no-answer threshold.

- no-answer probability: P(the question has no answer in the context) = sigmoid(a * null_score_diff + b);
- answer confidence: P(the best span is exactly right) = sigmoid(a * null_score_diff + b * log(p_start * p_end) + c),
  where p_start, p_end are the span's start and end token probabilities in its window.

A model without a fitted calibration (exports made before it existed) falls back to sigmoid(null_score_diff) and
start x end confidence, and says so (``calibrated: false``). Either way the no-answer threshold is also given as a
probability, and "no answer" is decided as no_answer_probability > that threshold, so the two never contradict.
"""

import math
from dataclasses import dataclass

import numpy as np

ECE_BINS = 10


class CalibrationError(ValueError):
    """Calibration that cannot be fitted on the data given; the message says why."""


def sigmoid(x: float) -> float:
    if x == float("inf"):
        return 1.0
    if x == float("-inf"):
        return 0.0
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _log_span_probability(start_confidence: float, end_confidence: float) -> float:
    return math.log(max(start_confidence * end_confidence, 1e-12))


@dataclass(frozen=True)
class Calibration:
    no_answer: tuple[float, float]  # (a, b) over null_score_diff
    answer: tuple[float, float, float]  # (a, b, c) over null_score_diff and log(p_start * p_end)
    fitted_on: str  # the source the questions came from
    questions: int
    ece_no_answer: float  # on the questions it was fitted on
    ece_answer: float

    def no_answer_probability(self, null_score_diff: float) -> float:
        if null_score_diff == float("inf"):
            return 1.0
        a, b = self.no_answer
        return sigmoid(a * null_score_diff + b)

    def answer_probability(self, null_score_diff: float, start_confidence: float, end_confidence: float) -> float:
        a, b, c = self.answer
        return sigmoid(a * null_score_diff + b * _log_span_probability(start_confidence, end_confidence) + c)

    def to_dict(self) -> dict:
        return {"method": "platt", "no_answer": list(self.no_answer), "answer": list(self.answer),
                "fitted_on": self.fitted_on, "questions": self.questions,
                "ece_no_answer": self.ece_no_answer, "ece_answer": self.ece_answer}

    @classmethod
    def from_dict(cls, values: dict) -> "Calibration":
        if values.get("method") != "platt":
            raise CalibrationError(f"unknown calibration method {values.get('method')!r} in qa_config.json")
        if not values["no_answer"][0] > 0:
            raise CalibrationError(f"the calibration's no-answer slope {values['no_answer'][0]} is not positive: "
                                   "it would invert every decision; refit it with `qa-toolkit calibrate`")
        return cls(tuple(values["no_answer"]), tuple(values["answer"]), values["fitted_on"], int(values["questions"]),
                   float(values["ece_no_answer"]), float(values["ece_answer"]))


class Uncalibrated:
    """The fallback for models without a fitted calibration: the scores squashed, not probabilities."""

    def no_answer_probability(self, null_score_diff: float) -> float:
        return sigmoid(null_score_diff)

    def answer_probability(self, null_score_diff: float, start_confidence: float, end_confidence: float) -> float:
        return start_confidence * end_confidence


def expected_calibration_error(probabilities, outcomes, bins: int = ECE_BINS) -> float:
    """Mean |observed frequency - mean probability| over equal-width probability bins, weighted by their size."""
    p, y = np.asarray(probabilities, dtype=float), np.asarray(outcomes, dtype=float)
    if len(p) == 0:
        return float("nan")
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.sum() * abs(y[mask].mean() - p[mask].mean())
    return float(total / len(p))


def reliability_bins(probabilities, outcomes, bins: int = ECE_BINS) -> list[dict]:
    """Per equal-width bin: its range, size, mean probability and observed frequency (the reliability diagram)."""
    p, y = np.asarray(probabilities, dtype=float), np.asarray(outcomes, dtype=float)
    which = np.minimum((p * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        mask = which == b
        out.append({"low": b / bins, "high": (b + 1) / bins, "count": int(mask.sum()),
                    "mean_probability": float(p[mask].mean()) if mask.any() else None,
                    "observed": float(y[mask].mean()) if mask.any() else None})
    return out


def _fit_logistic(features: np.ndarray, outcomes: np.ndarray) -> tuple[np.ndarray, float]:
    from sklearn.linear_model import LogisticRegression

    if len(set(outcomes.tolist())) < 2:
        raise CalibrationError("calibration needs both outcomes among the questions (e.g. answerable and "
                               "unanswerable ones); the eval set has only one")
    model = LogisticRegression(C=1e4, max_iter=1000).fit(features, outcomes)
    return model.coef_[0], float(model.intercept_[0])


def fit(null_score_diffs, start_confidences, end_confidences, unanswerable, span_correct,
        fitted_on: str) -> Calibration:
    """Platt scaling of both probabilities on one set of questions. unanswerable[i]: question i has no answer;
    span_correct[i]: its best span matches a reference exactly. Questions without any span (diff inf) are
    left out of the fit: their no-answer probability is 1 by definition."""
    diff = np.asarray(null_score_diffs, dtype=float)
    keep = np.isfinite(diff)
    if keep.sum() < 20:
        raise CalibrationError(f"calibration needs at least 20 questions with a span, got {int(keep.sum())}")
    diff = diff[keep]
    log_p = np.array([_log_span_probability(s, e) for s, e, k in zip(start_confidences, end_confidences, keep) if k])
    no_answer = np.asarray(unanswerable, dtype=float)[keep]
    correct = np.asarray(span_correct, dtype=float)[keep]
    (a,), b = _fit_logistic(diff[:, None], no_answer)
    if a <= 0:
        raise CalibrationError(f"the no-answer probability would fall as null_score_diff rises (slope {a:.3g}); "
                               "the model's scores do not separate unanswerable questions on this data")
    if len(set(correct.tolist())) == 2:
        coef, c = _fit_logistic(np.stack([diff, log_p], axis=1), correct)
    else:  # every span right, or none (a model that has learnt nothing yet): the observed rate, as a constant
        rate = min(max(correct.mean(), 0.5 / len(correct)), 1 - 0.5 / len(correct))
        coef, c = np.zeros(2), float(np.log(rate / (1 - rate)))
    calibration = Calibration((float(a), b), (float(coef[0]), float(coef[1]), c), fitted_on, int(keep.sum()), 0.0, 0.0)
    ece_na = expected_calibration_error([calibration.no_answer_probability(d) for d in diff], no_answer)
    ece_answer = expected_calibration_error(
        [sigmoid(coef[0] * d + coef[1] * lp + c) for d, lp in zip(diff, log_p)], correct)
    return Calibration(calibration.no_answer, calibration.answer, fitted_on, int(keep.sum()), ece_na, ece_answer)


def from_config(values: dict | None) -> Calibration | Uncalibrated:
    """A model's calibration from its qa_config.json's "calibration" (None: the uncalibrated fallback)."""
    return Uncalibrated() if values is None else Calibration.from_dict(values)
