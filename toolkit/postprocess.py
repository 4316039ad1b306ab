"""Start/end logits of token windows -> one answer per question. numpy only, no torch.

For each window (feature) of a question, the best span is searched among the top ``n_best`` start
and end tokens that lie in the context, with end >= start and at most ``max_answer_length`` tokens.
Windows of one question are combined: the best span over all windows against the smallest null
score (start + end logit of the [CLS] token at position 0). The question gets "no answer" when
``null score - best span score`` is above the threshold.
"""

from dataclasses import dataclass
from typing import Sequence

import numpy as np

Offsets = Sequence[tuple[int, int] | None]  # per token: char span in the context, None outside it


@dataclass
class Answer:
    text: str  # best span text; "" when no span is possible
    start: int | None  # char offsets of the best span in the context
    end: int | None
    score: float  # start + end logit of the best span
    start_confidence: float  # softmax probability of the best span's start token in its window (0 without a span)
    end_confidence: float  # the same for its end token; both describe the span even when no_answer is true
    null_score_diff: float  # null score - best span score (inf when no span is possible)
    no_answer: bool  # null_score_diff > the no-answer threshold
    no_answer_probability: float = 1.0  # sigmoid(null_score_diff): "no answer" against the best span, 1 without a span

    @property
    def prediction(self) -> str:
        """The text to score: "" when the question is judged unanswerable."""
        return "" if self.no_answer else self.text


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _best_span(start: np.ndarray, end: np.ndarray, in_context: np.ndarray, n_best: int,
               max_answer_length: int) -> tuple[float, int, int] | None:
    starts = np.argsort(start)[::-1][:n_best]
    ends = np.argsort(end)[::-1][:n_best]
    length = ends[None, :] - starts[:, None] + 1
    valid = (in_context[starts][:, None] & in_context[ends][None, :]
             & (length >= 1) & (length <= max_answer_length))
    if not valid.any():
        return None
    scores = np.where(valid, start[starts][:, None] + end[ends][None, :], -np.inf)
    i, j = np.unravel_index(np.argmax(scores), scores.shape)
    return float(scores[i, j]), int(starts[i]), int(ends[j])


def answer_question(
    context: str,
    windows: Sequence[tuple[np.ndarray, np.ndarray, Offsets]],
    n_best: int = 20,
    max_answer_length: int = 30,
    null_threshold: float = 0.0,
) -> Answer:
    """Combine the windows (start logits, end logits, offsets) of one question into its answer.

    Logits may be longer than the offsets (batch padding); only the first len(offsets) count.
    """
    if not windows:
        raise ValueError("a question needs at least one window")
    best = None  # (score, start_tok, end_tok, start_logits, end_logits, offsets)
    min_null = None
    for start_logits, end_logits, offsets in windows:
        n = len(offsets)
        start, end = np.asarray(start_logits[:n], dtype=np.float64), np.asarray(end_logits[:n], dtype=np.float64)
        null = float(start[0] + end[0])
        min_null = null if min_null is None else min(min_null, null)
        in_context = np.array([o is not None for o in offsets], dtype=bool)
        span = _best_span(start, end, in_context, n_best, max_answer_length)
        if span is not None and (best is None or span[0] > best[0]):
            best = (*span, start, end, offsets)
    if best is None:
        return Answer("", None, None, float("-inf"), 0.0, 0.0, float("inf"), True, 1.0)
    score, s, e, start, end, offsets = best
    char_start, char_end = offsets[s][0], offsets[e][1]
    diff = min_null - score
    return Answer(context[char_start:char_end], char_start, char_end, score, float(_softmax(start)[s]),
                  float(_softmax(end)[e]), diff, diff > null_threshold, float(1.0 / (1.0 + np.exp(-diff))))


def answer_all(
    contexts: Sequence[str],
    feature_example: Sequence[int],
    feature_offsets: Sequence[Offsets],
    start_logits: Sequence[np.ndarray],
    end_logits: Sequence[np.ndarray],
    n_best: int = 20,
    max_answer_length: int = 30,
    null_threshold: float = 0.0,
) -> list[Answer]:
    """Answers for every question, given each feature's question index, offsets and logits."""
    windows: list[list] = [[] for _ in contexts]
    for i, example in enumerate(feature_example):
        windows[example].append((start_logits[i], end_logits[i], feature_offsets[i]))
    return [answer_question(c, w, n_best, max_answer_length, null_threshold)
            for c, w in zip(contexts, windows)]
