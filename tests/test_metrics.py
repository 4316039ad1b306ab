import json

import numpy as np
import pytest

from toolkit.scoring import (
    best_null_threshold,
    best_over_references,
    f1_score,
    no_answer_auc,
    normalize_answer,
    position_metrics,
    squad_scores,
)


def test_normalisation_drops_case_punctuation_articles_and_spaces():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("an apple, a pear") == "apple pear"
    assert normalize_answer("Thea") == "thea"  # 'the' only as a whole word


def test_f1_hand_worked():
    # pred tokens: [eiffel, tower, paris]; ref: [eiffel, tower]; overlap 2 -> p=2/3, r=1 -> f1=0.8
    assert f1_score("the Eiffel Tower, Paris", "Eiffel Tower") == pytest.approx(0.8)
    assert f1_score("", "") == 1.0
    assert f1_score("something", "") == 0.0
    assert f1_score("a", "the") == 1.0  # both normalise to empty


def test_max_over_references_and_empty_reference_list_means_no_answer():
    assert best_over_references("Denver Broncos", ["Broncos", "Denver Broncos"]) == (1.0, 1.0)
    assert best_over_references("", []) == (1.0, 1.0)
    assert best_over_references("Paris", []) == (0.0, 0.0)


def test_squad_scores_with_breakdown():
    refs = {"a": ["Denver Broncos"], "b": ["1999", "in 1999"], "c": [], "d": []}
    preds = {"a": "Broncos", "b": "1999", "c": "", "d": "Paris"}
    s = squad_scores(preds, refs)
    # a: EM 0, F1 2/3 (p=1, r=1/2); b: 1,1; c: 1,1; d: 0,0
    assert s["exact"] == pytest.approx(50.0)
    assert s["f1"] == pytest.approx(100 * (2 / 3 + 1 + 1 + 0) / 4)
    assert (s["HasAns_total"], s["NoAns_total"]) == (2, 2)
    assert s["HasAns_f1"] == pytest.approx(100 * (2 / 3 + 1) / 2)
    assert s["NoAns_exact"] == pytest.approx(50.0)


def test_missing_prediction_counts_as_no_answer():
    assert squad_scores({}, {"a": ["x"], "b": []})["exact"] == pytest.approx(50.0)


def test_best_threshold_splits_answerable_from_unanswerable():
    refs = {"a": ["x"], "b": ["y"], "c": [], "d": []}
    spans = {"a": "x", "b": "y", "c": "z", "d": "w"}
    diffs = {"a": -3.0, "b": -1.0, "c": 2.0, "d": 5.0}
    best = best_null_threshold(spans, diffs, refs)
    assert best.f1 == pytest.approx(100.0) and best.exact == pytest.approx(100.0)
    assert -1.0 < best.threshold < 2.0
    # Applying the threshold reproduces the score.
    preds = {q: "" if diffs[q] > best.threshold else spans[q] for q in refs}
    assert squad_scores(preds, refs)["f1"] == pytest.approx(best.f1)


def test_best_threshold_respects_ties():
    refs = {"a": ["x"], "c": []}
    best = best_null_threshold({"a": "x", "c": "z"}, {"a": 1.0, "c": 1.0}, refs)
    # a tie can only be split as a whole: both abstain (50) or both answer (50)
    assert best.f1 == pytest.approx(50.0)


def test_position_metrics():
    start = np.array([[0.1, 2.0, 0.0], [3.0, 0.0, 0.0]])
    end = np.array([[0.0, 0.0, 5.0], [0.0, 1.0, 0.0]])
    m = position_metrics(start, end, np.array([1, 0]), np.array([2, 0]))
    assert m == {"start_acc": 1.0, "end_acc": 0.5, "position_exact": 0.5}


def test_no_answer_auc():
    refs = {"a1": ["x"], "a2": ["y"], "u1": [""], "u2": []}
    assert no_answer_auc({"a1": -3.0, "a2": -1.0, "u1": 0.5, "u2": 2.0}, refs) == 100.0  # a threshold splits them
    assert no_answer_auc({"a1": 3.0, "a2": 1.0, "u1": 0.5, "u2": -2.0}, refs) == 0.0
    assert no_answer_auc({"a1": -3.0, "a2": 1.0, "u1": 0.5, "u2": 1.0}, refs) == 62.5  # 2.5 of 4 pairs (a tie = 1/2)
    with pytest.raises(ValueError, match="answerable and unanswerable"):
        no_answer_auc({"a1": 0.0}, {"a1": ["x"]})


def test_expected_calibration_error_on_known_bins():
    from toolkit.calibration import expected_calibration_error

    # bin 0.8-0.9: 10 answers at 0.85, 6 right (gap 0.25); bin 0.1-0.2: 10 at 0.15, 1 right (gap 0.05)
    p = [0.85] * 10 + [0.15] * 10
    y = [1] * 6 + [0] * 4 + [1] + [0] * 9
    assert expected_calibration_error(p, y) == pytest.approx((10 * 0.25 + 10 * 0.05) / 20)
    assert expected_calibration_error([1.0, 0.0], [1, 0]) == 0.0  # 1.0 falls in the last bin


def test_platt_fit_recovers_the_slope_and_gives_low_ece_on_its_own_data():
    from toolkit.calibration import CalibrationError, fit

    rng = np.random.default_rng(0)
    diff = rng.normal(0, 4, 4000)
    unanswerable = rng.random(4000) < 1 / (1 + np.exp(-(0.7 * diff - 1.0)))
    confidences = rng.uniform(0.05, 1.0, 4000)
    correct = ~unanswerable & (rng.random(4000) < confidences)
    calibration = fit(diff, confidences, np.ones(4000), unanswerable, correct, "synthetic")
    assert calibration.no_answer[0] == pytest.approx(0.7, abs=0.08) and calibration.no_answer[1] == pytest.approx(-1.0, abs=0.15)
    assert calibration.ece_no_answer < 0.03 and calibration.answer[1] > 0  # more probable spans are more often right
    assert calibration.no_answer_probability(float("inf")) == 1.0
    with pytest.raises(CalibrationError, match="slope"):  # scores that say the opposite are refused
        fit(-diff, confidences, np.ones(4000), unanswerable, correct, "synthetic")
    with pytest.raises(CalibrationError, match="both outcomes"):
        fit(diff, confidences, np.ones(4000), np.zeros(4000, bool), correct, "synthetic")


def test_score_reports_calibration_and_draws_the_reliability_diagram(tmp_path):
    from toolkit.scoring import score_answer_file

    refs = {"a": ["Paris"], "b": ["Rome"], "u": [""], "v": [""]}
    rows = [{"id": "a", "answer": "Paris", "best_span": "Paris", "score": 0.9, "no_answer": False,
             "no_answer_probability": 0.1, "no_answer_threshold": 0.4, "calibrated": True, "null_score_diff": -3.0},
            {"id": "b", "answer": "Milan", "best_span": "Milan", "score": 0.7, "no_answer": False,
             "no_answer_probability": 0.3, "no_answer_threshold": 0.4, "calibrated": True, "null_score_diff": -1.0},
            {"id": "u", "answer": None, "best_span": "x", "score": 0.8, "no_answer": True,
             "no_answer_probability": 0.8, "no_answer_threshold": 0.4, "calibrated": True, "null_score_diff": 2.0},
            {"id": "v", "answer": None, "best_span": "y", "score": 0.2, "no_answer": True,  # contradicts 0.2 < 0.4
             "no_answer_probability": 0.2, "no_answer_threshold": 0.4, "calibrated": True, "null_score_diff": 0.0}]
    path = tmp_path / "a.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    png = tmp_path / "reliability.png"
    report = score_answer_file(str(path), refs, reliability_png=str(png))["calibration"]
    assert report["decisions_contradicting_probability"] == 1 and report["calibrated"]
    # no-answer: 0.1 (answerable), 0.3 (answerable), 0.8 (unanswerable), 0.2 (unanswerable): bins 1, 3, 8, 2
    assert report["no_answer_ece"] == pytest.approx((0.1 + 0.3 + 0.2 + 0.8) / 4)
    # score: 0.9 right, 0.7 wrong (Milan), 0.8 right and 0.2 right (both lines say no answer, both unanswerable)
    assert report["score_ece"] == pytest.approx((0.1 + 0.7 + 0.2 + abs(1 - 0.2)) / 4)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
