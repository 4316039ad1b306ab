import numpy as np
import pytest

from toolkit.postprocess import answer_all, answer_question

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
    assert a.score == pytest.approx(7.0)
    assert a.null_score_diff == pytest.approx(2.0 - 7.0)
    probs = np.exp(start) / np.exp(start).sum()
    assert a.start_confidence == pytest.approx(probs[3])
    assert CONTEXT[a.start:a.end] == a.text


def test_end_before_start_and_too_long_spans_are_invalid():
    start, end = logits({8: 5.0, 3: 1.0}), logits({3: 5.0, 8: 1.0})  # best raw pair is end < start
    a = answer_question(CONTEXT, [(start, end, OFFSETS)])
    assert a.text in ("France", "Paris is the capital of France")
    a = answer_question(CONTEXT, [(start, end, OFFSETS)], max_answer_length=1)
    assert a.text in ("France", "Paris")


def test_max_answer_length_bounds_the_span():
    """The best pair spans 6 tokens ("Paris is the capital of France"); a limit of 2 tokens must pick the best
    pair within it ("of France": 1.0 + 3.0 beats every other short pair), a limit of 1 a single token."""
    start, end = logits({3: 4.0, 7: 1.0, 8: 0.5}), logits({8: 3.0, 3: -1.0})
    assert answer_question(CONTEXT, [(start, end, OFFSETS)]).text == "Paris is the capital of France"
    two = answer_question(CONTEXT, [(start, end, OFFSETS)], max_answer_length=2)
    assert two.text == "of France" and two.score == pytest.approx(4.0)
    one = answer_question(CONTEXT, [(start, end, OFFSETS)], max_answer_length=1)
    assert one.text == "France" and one.score == pytest.approx(3.5)


def test_question_tokens_are_never_answers():
    start, end = logits({1: 9.0, 5: 1.0}), logits({2: 9.0, 6: 1.0})
    a = answer_question(CONTEXT, [(start, end, OFFSETS)])
    assert a.text == "the capital"


def test_null_threshold_decides_no_answer():
    start, end = logits({0: 5.0, 3: 3.0}), logits({0: 5.0, 3: 3.0})  # null 10, span 6 -> diff 4
    assert answer_question(CONTEXT, [(start, end, OFFSETS)]).no_answer
    a = answer_question(CONTEXT, [(start, end, OFFSETS)], null_threshold=4.5)
    assert not a.no_answer and a.prediction == "Paris"
    no = answer_question(CONTEXT, [(start, end, OFFSETS)])
    assert no.prediction == "" and no.text == "Paris"  # best span kept for inspection


def test_a_no_answer_keeps_its_best_spans_confidences_and_says_its_own_probability():
    """The confidences always describe the best span; how likely "no answer" is, is a field of its own:
    sigmoid(null score - span score), above 0.5 exactly when the null score wins at threshold 0."""
    start, end = logits({0: 5.0, 3: 3.0}), logits({0: 5.0, 3: 3.0})  # null 10, span 6 -> diff 4
    no = answer_question(CONTEXT, [(start, end, OFFSETS)])
    probs = np.exp(start) / np.exp(start).sum()
    assert no.no_answer and no.start_confidence == pytest.approx(probs[3]) != pytest.approx(probs[0])
    assert no.no_answer_probability == pytest.approx(1 / (1 + np.exp(-4.0)))
    yes = answer_question(CONTEXT, [(logits({3: 4.0, 0: 1.0}), logits({3: 3.0, 0: 1.0}), OFFSETS)])
    assert not yes.no_answer and yes.no_answer_probability == pytest.approx(1 / (1 + np.exp(5.0)))
    nothing = answer_question("", [(np.zeros(4), np.zeros(4), [None] * 4)])
    assert (nothing.start_confidence, nothing.end_confidence, nothing.no_answer_probability) == (0.0, 0.0, 1.0)


def test_windows_combined_best_span_min_null():
    w1 = (logits({0: 3.0, 3: 1.0}), logits({0: 3.0, 3: 1.0}), OFFSETS)
    w2 = (logits({0: -1.0, 8: 4.0}), logits({0: -1.0, 8: 4.0}), OFFSETS)
    a = answer_question(CONTEXT, [w1, w2])
    assert a.text == "France" and a.null_score_diff == pytest.approx(-2.0 - 8.0)


def test_padded_logits_are_cut_to_the_window():
    start = np.concatenate([logits({3: 4.0}), [50.0, 50.0]])
    end = np.concatenate([logits({3: 4.0}), [50.0, 50.0]])
    assert answer_question(CONTEXT, [(start, end, OFFSETS)]).text == "Paris"


def test_no_context_token_gives_no_answer():
    offsets = [None] * 4
    a = answer_question("", [(np.zeros(4), np.zeros(4), offsets)])
    assert a.no_answer and a.text == "" and a.start is None


def test_answer_all_groups_windows_by_question():
    s, e = logits({3: 4.0}), logits({3: 4.0})
    s2, e2 = logits({8: 6.0}), logits({8: 6.0})
    out = answer_all([CONTEXT, CONTEXT], [0, 1, 1], [OFFSETS] * 3, [s, s2, s], [e, e2, e])
    assert [a.text for a in out] == ["Paris", "France"]
