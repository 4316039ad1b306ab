"""The parity gate's uncertainty: a paired bootstrap interval for each change, and, where the interval holds both
sides of the gate's limit, about how many questions would decide it."""

import numpy as np

from toolkit.exporting.parity import describe, gate, paired_interval, questions_to_decide, undecided


def borderline(n: int, seed: int = 0) -> np.ndarray:
    """Per-question F1 changes like an int8 variant's on n questions: most answers unchanged, 9 % moved by up to
    100 points either way, a mean drop near the 1-point limit."""
    rng = np.random.default_rng(seed)
    d = np.zeros(n)
    moved = rng.choice(n, size=int(0.09 * n), replace=False)
    d[moved] = rng.choice([-100.0, -50.0, 50.0, 100.0], size=len(moved), p=[0.35, 0.2, 0.2, 0.25])
    return d


def test_unchanged_answers_have_a_zero_interval_and_are_decided():
    assert paired_interval(np.zeros(300)) == (0.0, 0.0)
    assert questions_to_decide(np.zeros(300), max_drop=1.0) is None


def test_a_clear_drop_is_decided_on_few_questions():
    d = np.full(200, -5.0)
    d[::10] = 0.0
    low, high = paired_interval(d)
    assert high < -1.0 and questions_to_decide(d, max_drop=1.0) is None


def test_a_borderline_change_says_how_many_questions_would_decide_it_and_that_many_do():
    d = borderline(300)
    low, high = paired_interval(d)
    assert low < -1.0 < high  # 300 questions cannot tell
    needed = questions_to_decide(d, max_drop=1.0)
    assert needed > 300
    more = np.tile(d, -(-2 * needed // len(d)))  # the same spread of changes on twice the questions named
    low, high = paired_interval(more)
    assert not low < -1.0 < high and questions_to_decide(more, max_drop=1.0) is None


def test_the_interval_is_paired_and_seeded():
    d = borderline(300, seed=3)
    assert paired_interval(d) == paired_interval(d)
    low, high = paired_interval(d)
    assert low < d.mean() < high


def test_undecided_names_each_metric_and_the_log_line_prints_intervals():
    d = borderline(300)
    flat = np.zeros(300)
    differences = {"delta_exact": flat, "delta_f1": d, "forced_delta_exact": flat, "forced_delta_f1": flat}
    unsure = undecided(differences, max_drop=1.0)
    assert list(unsure) == ["F1"] and unsure["F1"] > 300
    result = {"max_abs_logit_diff": 0.1, "answer_agreement": 91.0, "span_agreement": 92.0, "exact": 50.0,
              "f1": 55.0, "forced_exact": 60.0, "questions_per_second": 40.0, "undecided": unsure, "questions": 300,
              **{key: float(v.mean()) for key, v in differences.items()},
              "intervals": {key: paired_interval(v) for key, v in differences.items()}}
    result["verdict"], result["reason"] = gate(result, 1.0)
    result["passed"] = False
    line = describe("int8", result)
    low, high = result["intervals"]["delta_f1"]
    assert f"F1 55.00 ({d.mean():+.2f} [{low:+.2f}, {high:+.2f}])" in line
    assert (f"UNDECIDED: not shown to lose at most 1.0 points on 300 questions (F1 {d.mean():+.2f} [{low:+.2f}, "
            f"{high:+.2f}]: ~{unsure['F1']} questions would decide)") in line
