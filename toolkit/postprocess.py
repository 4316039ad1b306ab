"""Start/end logits of token windows -> one answer per question. numpy only, no torch.

For each window (feature) of a question, spans are searched among the top ``n_best`` start and end tokens
that lie in the context, with end >= start and at most ``max_answer_length`` tokens. Windows of one question
are combined: the best spans over all windows against the smallest null score (start + end logit of the
[CLS] token at position 0). ``null_score_diff`` is the null score minus the best span's score; its calibrated
no-answer probability (toolkit.calibration) above the threshold's probability means "no answer" (the same
decision as null_score_diff above the threshold, stated as probabilities that cannot contradict it).

With ``align_to_words``, a span that starts or ends inside a word is widened to whole words (the tokenizer's
words), as the transformers pipeline does. With ``top_k`` > 1, the next best distinct spans come as
alternatives, most probable first.
"""

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from toolkit.calibration import Calibration, Uncalibrated

Offsets = Sequence[tuple[int, int] | None]  # per token: char span in the context, None outside it
Words = Sequence[int | None]  # per token: the index of its word in the context, None outside it


@dataclass(frozen=True, kw_only=True)
class Decoding:
    """How logits become answers: span search, no-answer decision, how many spans, word alignment."""
    n_best: int = 20
    max_answer_length: int = 30
    null_threshold: float = 0.0  # null score - span score above it: no answer (inf: never)
    top_k: int = 1
    align_to_words: bool = True  # needs the windows' word indices (without them, spans keep their token bounds)
    calibration: Calibration | Uncalibrated = field(default_factory=Uncalibrated)


@dataclass
class Span:
    text: str
    start: int  # char offsets in the context (code points)
    end: int
    score: float  # start + end logit
    start_confidence: float  # softmax probability of the start token in its window
    end_confidence: float
    probability: float  # calibrated probability that this span is exactly right


@dataclass
class Answer:
    best_span: Span | None  # the best span, kept when no_answer is true (None: no span is possible)
    null_score_diff: float  # null score - best span score (inf when no span is possible)
    no_answer: bool  # no_answer_probability > no_answer_threshold
    no_answer_probability: float  # calibrated P(the question has no answer in the context)
    no_answer_threshold: float  # the threshold, as a probability
    calibrated: bool  # False: probabilities are the uncalibrated fallback (a model fitted before calibration)
    alternatives: list[Span] = field(default_factory=list)  # the next best distinct spans, for top_k > 1

    @property
    def text(self) -> str:
        """The answer: "" when the question is judged unanswerable."""
        return "" if self.no_answer or self.best_span is None else self.best_span.text

    @property
    def best_span_text(self) -> str:
        return "" if self.best_span is None else self.best_span.text

    @property
    def start(self) -> int | None:
        return None if self.no_answer or self.best_span is None else self.best_span.start

    @property
    def end(self) -> int | None:
        return None if self.no_answer or self.best_span is None else self.best_span.end

    @property
    def confidence(self) -> float:
        """The probability that this answer is right: of "no answer", or of the span."""
        return self.no_answer_probability if self.no_answer else self.best_span.probability


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _top_spans(start: np.ndarray, end: np.ndarray, in_context: np.ndarray, n_best: int, max_answer_length: int,
               k: int) -> list[tuple[float, int, int]]:
    """Up to k (score, start token, end token), best first."""
    starts = np.argsort(start)[::-1][:n_best]
    ends = np.argsort(end)[::-1][:n_best]
    length = ends[None, :] - starts[:, None] + 1
    valid = (in_context[starts][:, None] & in_context[ends][None, :]
             & (length >= 1) & (length <= max_answer_length))
    if not valid.any():
        return []
    scores = np.where(valid, start[starts][:, None] + end[ends][None, :], -np.inf)
    flat = np.argsort(-scores, axis=None, kind="stable")[:min(k, int(valid.sum()))]  # ties: the first found first
    return [(float(scores.flat[f]), int(starts[f // scores.shape[1]]), int(ends[f % scores.shape[1]])) for f in flat]


def _widen(s: int, e: int, words: Words | None) -> tuple[int, int]:
    """The first and last token of the words that tokens s and e belong to, within the window."""
    if words is None:
        return s, e
    while s > 0 and words[s - 1] is not None and words[s - 1] == words[s]:
        s -= 1
    while e + 1 < len(words) and words[e + 1] is not None and words[e + 1] == words[e]:
        e += 1
    return s, e


def answer_question(context: str, windows: Sequence[tuple], decoding: Decoding = Decoding()) -> Answer:
    """Combine the windows (start logits, end logits, offsets[, words]) of one question into its answer.

    Logits may be longer than the offsets (batch padding); only the first len(offsets) count.
    """
    if not windows:
        raise ValueError("a question needs at least one window")
    # With top_k > 1, every valid pair: overlapping windows give the same span twice, and word alignment can
    # merge many pairs into one span.
    wanted = 1 if decoding.top_k == 1 else decoding.n_best * decoding.n_best
    candidates = []  # (score, char start, char end, start confidence, end confidence)
    min_null = None
    for window in windows:
        start_logits, end_logits, offsets = window[:3]
        words = window[3] if decoding.align_to_words and len(window) > 3 else None
        n = len(offsets)
        start, end = np.asarray(start_logits[:n], dtype=np.float64), np.asarray(end_logits[:n], dtype=np.float64)
        null = float(start[0] + end[0])
        min_null = null if min_null is None else min(min_null, null)
        in_context = np.array([o is not None for o in offsets], dtype=bool)
        spans = _top_spans(start, end, in_context, decoding.n_best, decoding.max_answer_length, wanted)
        if spans:
            p_start, p_end = _softmax(start), _softmax(end)
            for score, s, e in spans:
                ws, we = _widen(s, e, words)
                candidates.append((score, offsets[ws][0], offsets[we][1], float(p_start[s]), float(p_end[e])))
    calibration = decoding.calibration
    threshold = calibration.no_answer_probability(decoding.null_threshold)
    calibrated = isinstance(calibration, Calibration)
    if not candidates:
        return Answer(None, float("inf"), True, 1.0, threshold, calibrated)
    candidates.sort(key=lambda c: -c[0])
    spans, seen = [], set()
    for score, char_start, char_end, p_start, p_end in candidates:
        if (char_start, char_end) in seen:
            continue
        seen.add((char_start, char_end))
        diff = min_null - score
        spans.append(Span(context[char_start:char_end], char_start, char_end, score, p_start, p_end,
                          calibration.answer_probability(diff, p_start, p_end)))
        if len(spans) == decoding.top_k:
            break
    diff = min_null - spans[0].score
    p_no_answer = calibration.no_answer_probability(diff)
    alternatives = sorted(spans[1:], key=lambda s: -s.probability)
    return Answer(spans[0], diff, p_no_answer > threshold, p_no_answer, threshold, calibrated, alternatives)


def answer_all(
    contexts: Sequence[str],
    feature_example: Sequence[int],
    feature_offsets: Sequence[Offsets],
    start_logits: Sequence[np.ndarray],
    end_logits: Sequence[np.ndarray],
    decoding: Decoding = Decoding(),
    feature_words: Sequence[Words] | None = None,
) -> list[Answer]:
    """Answers for every question, given each feature's question index, offsets, logits and (for
    align_to_words) word indices."""
    windows: list[list] = [[] for _ in contexts]
    for i, example in enumerate(feature_example):
        words = feature_words[i] if feature_words is not None else None
        windows[example].append((start_logits[i], end_logits[i], feature_offsets[i], words))
    return [answer_question(c, w, decoding) for c, w in zip(contexts, windows)]
