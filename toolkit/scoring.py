"""Official SQuAD v1.1/v2.0 scoring, no-answer threshold search and position metrics.

The normalisation and EM/F1 follow the official SQuAD v2.0 evaluation script: an empty prediction
means "no answer", an unanswerable question's only reference is the empty string, and a prediction
is scored against the best-matching reference.
"""

import collections
import json
import re
import string
from dataclasses import dataclass

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation and articles, collapse whitespace (official SQuAD)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_score(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def f1_score(prediction: str, reference: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    ref_tokens = normalize_answer(reference).split()
    if not pred_tokens or not ref_tokens:
        # No answer on either side: right only if both are empty.
        return float(pred_tokens == ref_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(ref_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def best_over_references(prediction: str, references: list[str]) -> tuple[float, float]:
    """(EM, F1) of one prediction, each the max over its references ([] = unanswerable)."""
    golds = [r for r in references if normalize_answer(r)] or [""]
    return (
        max(exact_score(prediction, g) for g in golds),
        max(f1_score(prediction, g) for g in golds),
    )


def squad_scores(predictions: dict[str, str], references: dict[str, list[str]]) -> dict:
    """EM/F1 in percent over every referenced question, with HasAns/NoAns breakdown.

    A question without a prediction counts as answered with "" (no answer).
    """
    if not references:
        raise ValueError("no references to score against")
    exact, f1, has_answer = {}, {}, {}
    for qid, refs in references.items():
        exact[qid], f1[qid] = best_over_references(predictions.get(qid, ""), refs)
        has_answer[qid] = any(normalize_answer(r) for r in refs)
    scores = _aggregate(exact, f1, list(references))
    for name, wanted in (("HasAns", True), ("NoAns", False)):
        ids = [q for q in references if has_answer[q] is wanted]
        if ids:
            part = _aggregate(exact, f1, ids)
            scores.update({f"{name}_exact": part["exact"], f"{name}_f1": part["f1"],
                           f"{name}_total": part["total"]})
    return scores


def _aggregate(exact: dict, f1: dict, ids: list[str]) -> dict:
    return {
        "exact": 100.0 * sum(exact[q] for q in ids) / len(ids),
        "f1": 100.0 * sum(f1[q] for q in ids) / len(ids),
        "total": len(ids),
    }


@dataclass
class ThresholdResult:
    threshold: float
    exact: float
    f1: float


def best_null_threshold(
    span_texts: dict[str, str],
    null_score_diffs: dict[str, float],
    references: dict[str, list[str]],
) -> ThresholdResult:
    """Threshold on (null score - best span score) that maximises F1 (official find_best_thresh).

    A question is answered "no answer" when its diff is above the threshold. Starting from
    "answer everything", the sweep switches questions to no-answer in decreasing diff order.
    """
    ids = list(references)
    span_em, span_f1, null_em, null_f1 = {}, {}, {}, {}
    for qid in ids:
        span_em[qid], span_f1[qid] = best_over_references(span_texts.get(qid, ""), references[qid])
        null_em[qid], null_f1[qid] = best_over_references("", references[qid])
    em = sum(span_em.values())
    f1 = sum(span_f1.values())
    order = sorted(ids, key=lambda q: -null_score_diffs[q])
    diffs = [null_score_diffs[q] for q in order]
    best = ThresholdResult(threshold=diffs[0] + 1.0, exact=em, f1=f1)  # never abstain
    for i, qid in enumerate(order):
        em += null_em[qid] - span_em[qid]
        f1 += null_f1[qid] - span_f1[qid]
        below = diffs[i + 1] if i + 1 < len(diffs) else diffs[i] - 2.0
        if below < diffs[i] and f1 > best.f1:
            # Abstain on this one and every question with a larger diff, none with a smaller one.
            best = ThresholdResult(threshold=(diffs[i] + below) / 2, exact=em, f1=f1)
    n = len(ids)
    return ThresholdResult(best.threshold, 100.0 * best.exact / n, 100.0 * best.f1 / n)


def no_answer_auc(null_score_diffs: dict[str, float], references: dict[str, list[str]]) -> float:
    """How well (null score - best span score) separates unanswerable from answerable questions: the
    probability that a random unanswerable question has a larger diff than a random answerable one
    (ROC AUC, ties count half; 50 = no separation, 100 = a threshold that splits them exactly), in percent."""
    unanswerable = np.array([null_score_diffs[q] for q, refs in references.items()
                             if not any(normalize_answer(r) for r in refs)])
    answerable = np.array([null_score_diffs[q] for q, refs in references.items()
                           if any(normalize_answer(r) for r in refs)])
    if not len(unanswerable) or not len(answerable):
        raise ValueError("the AUC needs answerable and unanswerable questions")
    answerable.sort()
    below = np.searchsorted(answerable, unanswerable, side="left")  # answerable diffs smaller than each
    ties = np.searchsorted(answerable, unanswerable, side="right") - below
    return 100.0 * float((below + ties / 2).sum()) / (len(unanswerable) * len(answerable))


def position_metrics(
    start_logits: np.ndarray, end_logits: np.ndarray, start_labels: np.ndarray, end_labels: np.ndarray
) -> dict:
    """Per-feature accuracy of the argmax start, end, and both (the reference recipe's table)."""
    start_pred = start_logits.argmax(-1)
    end_pred = end_logits.argmax(-1)
    start_ok = start_pred == start_labels
    end_ok = end_pred == end_labels
    return {
        "start_acc": float(start_ok.mean()),
        "end_acc": float(end_ok.mean()),
        "position_exact": float((start_ok & end_ok).mean()),
    }


def score_answer_file(path: str, references: dict[str, list[str]], best_span: bool = False,
                      reliability_png: str | None = None) -> dict:
    """Score a serve-batch output (JSONL: id, answer or null, or error) against references.

    Lines with an error or a null answer count as "no answer"; ids not in the references are
    reported, not scored. ``best_span`` scores each line's best span whatever the no-answer
    threshold said (the SQuAD v1.1 convention: every question has an answer). Where the scored lines hold
    answerable and unanswerable questions, ``no_answer_auc`` says how well their null_score_diff separates
    the two, whatever the threshold. ``calibration`` says how well the lines' probabilities match what
    happened (expected calibration error, 10 bins), and how many decisions contradict their probability and
    threshold; reliability_png gets the reliability diagram.
    """
    predictions, diffs, rows, errors, unknown = {}, {}, {}, 0, 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row["id"] not in references:
                unknown += 1
                continue
            errors += "error" in row
            predictions[row["id"]] = row.get("best_span" if best_span else "answer") or ""
            if "null_score_diff" in row:  # None: no span was possible
                diffs[row["id"]] = float("inf") if row["null_score_diff"] is None else row["null_score_diff"]
            if "no_answer_threshold" in row:  # written since answers carry calibrated probabilities
                rows[row["id"]] = row
    scores = squad_scores(predictions, references)
    scores.update(lines_scored=len(predictions), error_lines=errors, unknown_ids=unknown,
                  missing_ids=len(set(references) - set(predictions)))
    kinds = {any(normalize_answer(r) for r in references[q]) for q in diffs}
    if kinds == {True, False}:
        scores["no_answer_auc"] = no_answer_auc(diffs, {q: references[q] for q in diffs})
    if rows and not best_span:
        scores["calibration"] = calibration_report(rows, predictions, references, reliability_png)
    return scores


def calibration_report(rows: dict[str, dict], predictions: dict[str, str], references: dict[str, list[str]],
                       reliability_png: str | None) -> dict:
    """ECE of the no-answer probability (against: is the question unanswerable) and of each line's score
    (against: is its answer, or its "no answer", exactly right); decisions that contradict their numbers."""
    from toolkit.calibration import expected_calibration_error, reliability_bins

    ids = list(rows)
    p_none = [rows[q]["no_answer_probability"] for q in ids]
    unanswerable = [not any(normalize_answer(r) for r in references[q]) for q in ids]
    confidence = [rows[q]["score"] if rows[q]["score"] is not None else 0.0 for q in ids]
    right = [best_over_references(predictions[q], references[q])[0] for q in ids]
    contradictions = sum(r["no_answer"] != (r["no_answer_probability"] > r["no_answer_threshold"])
                         for r in rows.values())
    report = {"calibrated": all(r.get("calibrated", False) for r in rows.values()), "questions": len(ids),
              "no_answer_ece": expected_calibration_error(p_none, unanswerable),
              "score_ece": expected_calibration_error(confidence, right),
              "decisions_contradicting_probability": contradictions}
    if reliability_png:  # the diagram and its bins
        report.update(no_answer_bins=reliability_bins(p_none, unanswerable), score_bins=reliability_bins(confidence, right))
        plot_reliability(report, reliability_png)
        report["reliability_png"] = reliability_png
    return report


def plot_reliability(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    for ax, key, title in ((axes[0], "no_answer", "no-answer probability"), (axes[1], "score", "answer score")):
        bins = [b for b in report[f"{key}_bins"] if b["count"]]
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
        ax.bar([(b["low"] + b["high"]) / 2 for b in bins], [b["observed"] for b in bins], width=0.09,
               alpha=0.6, label="observed frequency")
        ax.plot([b["mean_probability"] for b in bins], [b["observed"] for b in bins], marker="o", color="C1",
                label="bin mean")
        for b in bins:
            ax.annotate(str(b["count"]), ((b["low"] + b["high"]) / 2, 0.02), ha="center", fontsize=7)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel=f"predicted {title}", ylabel="observed frequency",
               title=f"{title}: ECE {report[f'{key}_ece']:.3f}")
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"reliability, {report['questions']} questions"
                 + ("" if report["calibrated"] else " (uncalibrated fallback)"))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def sample_answers(path: str, examples: list, n: int) -> list[str]:
    """A readable line for each of the first n answered lines of a serve-batch output: the question,
    the answer with its start/end confidences, and the reference answers."""
    by_id = {e.id: e for e in examples}
    lines: list[str] = []
    if n <= 0:
        return lines
    with open(path, encoding="utf-8") as f:
        for raw in f:
            row = json.loads(raw)
            example = by_id.get(row["id"])
            if example is None or "error" in row:
                continue
            answer = "(no answer)" if row["answer"] is None else repr(row["answer"])
            gold = " | ".join(repr(t) for t in dict.fromkeys(example.answer_texts)) or "(unanswerable)"
            if "no_answer_threshold" in row:
                how = (f"probability right {row['score'] or 0:.2f}; best span {row['best_span']!r}; no-answer "
                       f"probability {row['no_answer_probability']:.2f}, 'no answer' above "
                       f"{row['no_answer_threshold']:.2f}{'' if row.get('calibrated') else ', uncalibrated'}")
            else:  # written before answers carried calibrated probabilities
                how = (f"best span {row['best_span']!r}: start {row['start_confidence']:.2f}, end "
                       f"{row['end_confidence']:.2f}")
            lines.append(f"Q: {example.question}\n   answer: {answer} ({how})\n   reference: {gold}")
            if len(lines) == n:
                break
    return lines
