import numpy as np
import pytest

from toolkit.calibration import Calibration
from toolkit.postprocess import Decoding, answer_all, answer_question

CONTEXT = "Paris is the capital of France."
# window: [CLS] q [SEP] Paris is the capital of France . [SEP]
OFFSETS = [None, None, None, (0, 5), (6, 8), (9, 12), (13, 20), (21, 23), (24, 30), (30, 31), None]


def logits(peaks, n=None, base=-5.0):
    x = np.full(len(OFFSETS) if n is None else n, base)
    for i, v in peaks.items():
        x[i] = v
    return x


def test_best_span_and_confidences():
    start, end = logits({3: 4.0, 0: 1.0}), logits({3: 3.0, 0: 1.0})
    a = answer_question(CONTEXT, [(start, end, OFFSETS)])
    assert (a.text, a.start, a.end, a.no_answer) == ("Paris", 0, 5, False)
    assert a.best_span.score == pytest.approx(7.0)
    assert a.null_score_diff == pytest.approx(2.0 - 7.0)
    probs = np.exp(start) / np.exp(start).sum()
    assert a.best_span.start_confidence == pytest.approx(probs[3])
    assert CONTEXT[a.start:a.end] == a.text


def test_end_before_start_is_never_a_span():
    """The best raw pair (start 'France' 5.0, end 'Paris' 5.0 = 10.0) ends before it starts; the best valid
    one is 'Paris' alone (1.5 + 5.0), ahead of 'France' alone (5.0 + 1.0) and 'Paris ... France' (1.5 + 1.0)."""
    start, end = logits({8: 5.0, 3: 1.5}), logits({3: 5.0, 8: 1.0})
    a = answer_question(CONTEXT, [(start, end, OFFSETS)])
    assert a.text == "Paris" and a.best_span.score == pytest.approx(6.5)


def test_max_answer_length_bounds_the_span():
    """The best pair spans 6 tokens ("Paris is the capital of France"); a limit of 2 tokens must pick the best
    pair within it ("of France": 1.0 + 3.0 beats every other short pair), a limit of 1 a single token."""
    start, end = logits({3: 4.0, 7: 1.0, 8: 0.5}), logits({8: 3.0, 3: -1.0})
    assert answer_question(CONTEXT, [(start, end, OFFSETS)]).text == "Paris is the capital of France"
    two = answer_question(CONTEXT, [(start, end, OFFSETS)], Decoding(max_answer_length=2))
    assert two.text == "of France" and two.best_span.score == pytest.approx(4.0)
    one = answer_question(CONTEXT, [(start, end, OFFSETS)], Decoding(max_answer_length=1))
    assert one.text == "France" and one.best_span.score == pytest.approx(3.5)


def test_question_tokens_are_never_answers():
    start, end = logits({1: 9.0, 5: 1.0}), logits({2: 9.0, 6: 1.0})
    a = answer_question(CONTEXT, [(start, end, OFFSETS)])
    assert a.text == "the capital"


def test_null_threshold_decides_no_answer_and_the_probabilities_agree():
    start, end = logits({0: 5.0, 3: 3.0}), logits({0: 5.0, 3: 3.0})  # null 10, span 6 -> diff 4
    no = answer_question(CONTEXT, [(start, end, OFFSETS)])
    assert no.no_answer and no.text == "" and no.start is None and no.best_span_text == "Paris"
    assert no.no_answer_probability > no.no_answer_threshold == pytest.approx(0.5)
    yes = answer_question(CONTEXT, [(start, end, OFFSETS)], Decoding(null_threshold=4.5))
    assert not yes.no_answer and yes.text == "Paris"
    assert yes.no_answer_probability < yes.no_answer_threshold == pytest.approx(1 / (1 + np.exp(-4.5)))
    never = answer_question(CONTEXT, [(start, end, OFFSETS)], Decoding(null_threshold=float("inf")))
    assert not never.no_answer and never.no_answer_threshold == 1.0


def test_calibration_maps_scores_to_probabilities_and_keeps_the_decision():
    """With a calibration, the probabilities come from it, and the threshold is mapped by the same function, so
    the decision is the same as null_score_diff > threshold."""
    calibration = Calibration(no_answer=(0.5, -1.0), answer=(-0.2, 0.3, 0.1), fitted_on="t", questions=100,
                              ece_no_answer=0.0, ece_answer=0.0)
    start, end = logits({0: 5.0, 3: 3.0}), logits({0: 5.0, 3: 3.0})  # diff 4
    for threshold in (3.0, 5.0):
        a = answer_question(CONTEXT, [(start, end, OFFSETS)], Decoding(null_threshold=threshold, calibration=calibration))
        assert a.calibrated and a.no_answer == (4.0 > threshold)
        assert a.no_answer_probability == pytest.approx(1 / (1 + np.exp(-(0.5 * 4.0 - 1.0))))
        assert a.no_answer_threshold == pytest.approx(1 / (1 + np.exp(-(0.5 * threshold - 1.0))))
    span = a.best_span
    log_p = np.log(span.start_confidence * span.end_confidence)
    assert span.probability == pytest.approx(1 / (1 + np.exp(-(-0.2 * 4.0 + 0.3 * log_p + 0.1))))
    assert a.confidence == span.probability and not a.no_answer


def test_uncalibrated_answers_say_so():
    a = answer_question(CONTEXT, [(logits({3: 4.0, 0: 1.0}), logits({3: 3.0, 0: 1.0}), OFFSETS)])
    assert not a.calibrated
    assert a.no_answer_probability == pytest.approx(1 / (1 + np.exp(5.0)))
    assert a.confidence == pytest.approx(a.best_span.start_confidence * a.best_span.end_confidence)
    nothing = answer_question("", [(np.zeros(4), np.zeros(4), [None] * 4)])
    assert nothing.no_answer and nothing.best_span is None and nothing.no_answer_probability == 1.0


def test_top_k_gives_distinct_spans_the_first_being_the_answer():
    start, end = logits({3: 4.0, 8: 3.0, 5: 2.0}), logits({3: 3.0, 8: 3.5, 6: 2.0})
    one = answer_question(CONTEXT, [(start, end, OFFSETS)])
    three = answer_question(CONTEXT, [(start, end, OFFSETS)], Decoding(top_k=3))
    assert three.text == one.text and three.best_span == one.best_span and one.alternatives == []
    spans = [three.best_span, *three.alternatives]
    assert len(spans) == 3 and len({(s.start, s.end) for s in spans}) == 3
    assert [s.probability for s in three.alternatives] == sorted((s.probability for s in three.alternatives), reverse=True)
    # the same span from two overlapping windows is one alternative, not two
    twice = answer_question(CONTEXT, [(start, end, OFFSETS)] * 2, Decoding(top_k=3))
    assert [(s.start, s.end) for s in [twice.best_span, *twice.alternatives]] == [(s.start, s.end) for s in spans]


def test_align_to_words_widens_a_span_inside_a_word():
    context = "Playing chess"
    # window: [CLS] q [SEP] play ##ing chess [SEP]; 'play' and '##ing' are word 0, 'chess' word 1
    offsets = [None, None, None, (0, 4), (4, 7), (8, 13), None]
    words = [None, None, None, 0, 0, 1, None]
    start, end = np.full(7, -5.0), np.full(7, -5.0)
    start[4], end[4] = 5.0, 5.0  # the best span is '##ing' alone
    assert answer_question(context, [(start, end, offsets, words)], Decoding(align_to_words=False)).text == "ing"
    assert answer_question(context, [(start, end, offsets, words)]).text == "Playing"
    assert answer_question(context, [(start, end, offsets)]).text == "ing"  # no word ids: tokens as they are


def test_windows_combined_best_span_min_null():
    w1 = (logits({0: 3.0, 3: 1.0}), logits({0: 3.0, 3: 1.0}), OFFSETS)
    w2 = (logits({0: -1.0, 8: 4.0}), logits({0: -1.0, 8: 4.0}), OFFSETS)
    a = answer_question(CONTEXT, [w1, w2])
    assert a.text == "France" and a.null_score_diff == pytest.approx(-2.0 - 8.0)


def test_padded_logits_are_cut_to_the_window():
    start = np.concatenate([logits({3: 4.0}), [50.0, 50.0]])
    end = np.concatenate([logits({3: 4.0}), [50.0, 50.0]])
    assert answer_question(CONTEXT, [(start, end, OFFSETS)]).text == "Paris"


def test_answer_all_groups_windows_by_question():
    s, e = logits({3: 4.0}), logits({3: 4.0})
    s2, e2 = logits({8: 6.0}), logits({8: 6.0})
    out = answer_all([CONTEXT, CONTEXT], [0, 1, 1], [OFFSETS] * 3, [s, s2, s], [e, e2, e])
    assert [a.text for a in out] == ["Paris", "France"]
