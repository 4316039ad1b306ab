import json

import numpy as np
import pytest
import torch

from tests.conftest import run_train
from toolkit.config import QAConfig
from toolkit.features import build_features
from toolkit.inference.loading import EngineSpec, load_engine
from toolkit.inference.padding import feature_logits
from toolkit.training.distill import (
    DistillCollator,
    DistillSettings,
    best_window,
    carry_over,
    distill_loss,
    soft_loss,
    targets,
)

INF = float("-inf")


def test_carry_over_matches_tokens_by_their_characters():
    """Context 'unbelievable cat' (chars 0-12 and 13-16). The teacher has 4 specials around a 1-token question
    and splits the first word as 'un' + 'believable'; the student has 3 specials and keeps it whole."""
    teacher_offsets = [None, None, None, None, (0, 2), (2, 12), (13, 16), None]
    teacher_start = np.array([9.0, 1, 1, 1, 5.0, 6.0, 7.0, 1], dtype=np.float32)
    teacher_end = np.array([8.0, 1, 1, 1, 2.0, 3.0, 4.0, 1], dtype=np.float32)
    student_offsets = [None, None, None, (0, 12), (13, 16), None]
    start, end = carry_over(student_offsets, teacher_offsets, teacher_start, teacher_end)
    assert start.tolist() == [9.0, INF, INF, 5.0, 7.0, INF]  # 'unbelievable' starts where 'un' starts
    assert end.tolist() == [8.0, INF, INF, 3.0, 4.0, INF]  # ... and ends where 'believable' ends
    # The other way round: a student token inside a teacher token gets neither a start nor an end there.
    start, end = carry_over([None, (0, 2), (2, 12), None], [None, (0, 12), None], np.array([0.0, 5, 0]),
                            np.array([0.0, 6, 0]))
    assert start.tolist() == [0.0, 5.0, INF, INF] and end.tolist() == [0.0, INF, 6.0, INF]


def test_best_window_is_the_one_overlapping_most():
    assert best_window((100, 300), [(0, (0, 180)), (1, (120, 320)), (2, (250, 400))]) == 1
    assert best_window((0, 0), [(0, (0, 50)), (1, (40, 90))]) == 0  # no context at all: the first


def test_a_model_taught_by_itself_gets_its_own_logits(trained_bert):
    """With the same tokenizer and windows, carrying over is the identity on [CLS] and the context, and a
    question asked twice is answered by the teacher once but targets every window."""
    teacher = load_engine(EngineSpec(model=str(trained_bert / "adapter")))
    qa = QAConfig.load(trained_bert / "adapter")
    context = " ".join(f"word{i} is here." for i in range(40))  # long enough for several windows
    questions, contexts = ["where is word7?", "where is word7?", "what is it?"], [context, context, "It is a cat."]
    student = build_features(teacher.tokenizer, questions, contexts, qa.features())
    assert student.example_index.count(0) > 1
    start, end = targets(teacher, questions, contexts, student)
    own_start, own_end = feature_logits(teacher.served().predictor, student, teacher.tokenizer.pad_token_id,
                                        teacher.settings)
    for i, offsets in enumerate(student.offsets):
        kept = [0] + [t for t, o in enumerate(offsets) if o is not None]
        np.testing.assert_allclose(start[i][kept], own_start[i][kept], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(end[i][kept], own_end[i][kept], rtol=1e-5, atol=1e-5)
        dropped = [t for t in range(len(offsets)) if t not in kept]
        assert dropped and np.isneginf(start[i][dropped]).all() and np.isneginf(end[i][dropped]).all()


def test_soft_loss_is_zero_only_for_the_teachers_distribution_and_its_gradient_is_finite():
    teacher = torch.tensor([[2.0, INF, 1.0, 0.5, INF]])
    assert soft_loss(teacher.clone(), teacher, 2.0).item() == pytest.approx(0.0, abs=1e-7)
    student = torch.tensor([[0.0, 3.0, 1.0, 0.5, -1.0]], requires_grad=True)
    loss = soft_loss(student, teacher, 2.0)
    loss.backward()
    assert loss.item() > 0.1 and torch.isfinite(student.grad).all()
    assert student.grad[0, 1] > 0  # mass where the teacher puts none is pushed down


def test_distill_loss_mixes_gold_and_teacher_terms():
    class Outputs:
        loss = torch.tensor(3.0)
        start_logits = torch.tensor([[0.0, 1.0, 2.0]])
        end_logits = torch.tensor([[1.0, 0.0, 0.0]])

    start_t, end_t = torch.tensor([[2.0, 1.0, INF]]), torch.tensor([[INF, 0.0, 3.0]])
    soft = (soft_loss(Outputs.start_logits, start_t, 2.0) + soft_loss(Outputs.end_logits, end_t, 2.0)) / 2
    mixed = distill_loss(Outputs, start_t, end_t, DistillSettings(alpha=0.25, temperature=2.0))
    assert mixed.item() == pytest.approx(0.75 * 3.0 + 0.25 * 4 * soft.item())
    assert distill_loss(Outputs, start_t, end_t, DistillSettings(1.0, 2.0)).item() == pytest.approx(4 * soft.item())


def test_collator_pads_the_targets_with_no_mass(tokenizer):
    from transformers import DataCollatorWithPadding

    collate = DistillCollator(DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8))
    rows = [{"input_ids": [101, 7, 102], "attention_mask": [1, 1, 1], "start_positions": 0, "end_positions": 0,
             "teacher_start": np.array([1.0, 2.0, 3.0], dtype=np.float32),
             "teacher_end": np.array([1.0, INF, 3.0], dtype=np.float32)},
            {"input_ids": [101, 102], "attention_mask": [1, 1], "start_positions": 0, "end_positions": 0,
             "teacher_start": np.array([4.0, 5.0], dtype=np.float32),
             "teacher_end": np.array([6.0, 7.0], dtype=np.float32)}]
    batch = collate(rows)
    assert batch["input_ids"].shape == batch["teacher_start"].shape == (2, 8)
    assert batch["teacher_start"][1, :2].tolist() == [4.0, 5.0] and torch.isneginf(batch["teacher_start"][1, 2:]).all()
    assert batch["teacher_end"][0, 1].item() == INF
    plain = collate([{k: v for k, v in r.items() if not k.startswith("teacher_")} for r in rows])
    assert "teacher_start" not in plain and plain["input_ids"].shape == (2, 8)


def test_training_with_a_teacher_of_another_architecture(tiny_bert, trained_distilbert, files, tmp_path):
    """A BERT student distilled from a DistilBERT teacher: the teacher's term changes what is learned (same
    seed, same data, another adapter than without it), and the run records its teacher."""
    from safetensors.torch import load_file

    plain, taught = tmp_path / "plain", tmp_path / "taught"
    assert run_train(tiny_bert, files, plain, "--lr", "1e-2").exit_code == 0
    teacher = trained_distilbert / "adapter"
    result = run_train(tiny_bert, files, taught, "--lr", "1e-2", "--teacher", str(teacher), "--distill-alpha", "1")
    assert result.exit_code == 0, result.output
    manifest = json.loads((taught / "manifest.json").read_text())
    assert manifest["teacher"]["path"] == str(teacher.resolve()) and manifest["teacher"]["alpha"] == 1.0
    assert manifest["teacher"]["base_model"] == str(QAConfig.load(teacher).base_model)
    assert manifest["teacher"]["variant"] == "torch-fp32"  # an adapter directory is answered by PyTorch
    assert "Distilled from the teacher" in (taught / "adapter" / "README.md").read_text()
    a, b = (load_file(str(d / "adapter" / "adapter_model.safetensors")) for d in (plain, taught))
    assert a.keys() == b.keys() and not all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((plain / "manifest.json").read_text())["teacher"] is None


@pytest.mark.parametrize("flags, message", [
    (["--distill-alpha", "0.3"], "need a --teacher"),
    (["--teacher", "{teacher}", "--distill-alpha", "0"], "--distill-alpha must be in (0, 1]"),
    (["--teacher", "{teacher}", "--distill-temperature", "-1"], "--distill-temperature must be above 0"),
    (["--teacher", "no/such/dir"], "no such model directory"),
])
def test_distillation_mistakes_are_named_before_anything_is_written(tiny_bert, trained_bert, files, tmp_path,
                                                                    flags, message):
    out = tmp_path / "run"
    flags = [f.format(teacher=trained_bert / "adapter") for f in flags]
    result = run_train(tiny_bert, files, out, *flags)
    assert result.exit_code != 0 and message in result.output
    assert not out.exists()
