import json

import numpy as np
import pytest
from click.testing import CliRunner
from transformers import BertTokenizerFast

from tests.conftest import LONG_CONTEXT, squad_fixture
from toolkit.cli import main
from toolkit.config import QAConfig
from toolkit.engine import BatchSettings, QAEngine, batches, load_engine, pad_batch
from toolkit.serve import parse_line


def fixture_lines():
    return [{"id": qa["id"], "question": qa["question"], "context": p["context"]}
            for a in squad_fixture()["data"] for p in a["paragraphs"] for qa in p["qas"]]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def serve(*args):
    return CliRunner().invoke(main, ["serve-batch", *args], catch_exceptions=False)


def test_torch_and_onnx_give_identical_answers(exported_bert, trained_bert, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", fixture_lines())
    outputs = {}
    for name, args in {"torch": ["--model", str(trained_bert / "adapter"), "--engine", "torch"],
                       "merged": ["--model", str(exported_bert / "merged"), "--engine", "torch"],
                       "onnx": ["--model", str(exported_bert / "onnx"), "--variant", "fp32"],
                       "opt": ["--model", str(exported_bert / "onnx"), "--variant", "opt"]}.items():
        out = tmp_path / f"{name}.jsonl"
        result = serve(str(src), *args, "-o", str(out), "--device", "cpu")
        assert result.exit_code == 0, result.output
        outputs[name] = [json.loads(line) for line in out.read_text().splitlines()]
    for name in ("merged", "onnx", "opt"):
        assert [(r["answer"], r["start"], r["end"], r["no_answer"], r["best_span"]) for r in outputs[name]] == \
               [(r["answer"], r["start"], r["end"], r["no_answer"], r["best_span"]) for r in outputs["torch"]], name
        for a, b in zip(outputs[name], outputs["torch"]):
            assert a["start_confidence"] == pytest.approx(b["start_confidence"], abs=1e-4)
    for row, line in zip(outputs["onnx"], fixture_lines()):
        assert row["id"] == line["id"]
        if row["answer"] is not None:
            assert line["context"][row["start"]:row["end"]] == row["answer"] == row["best_span"]


def test_every_bad_line_gets_its_own_error_in_order(exported_bert, tmp_path):
    good = fixture_lines()[:3]
    lines = [json.dumps(good[0]).encode(),
             b'{"question": "no context here"}',
             b'{"id": "x", "question": "", "context": "c"}',
             b'{"id": "y", "question": 5, "context": "c"}',
             b'{"id": {"a": 1}, "question": "q", "context": "c"}',
             b'not json at all',
             b'[1, 2]',
             b'\xff\xfe{"question": "q"}',
             b'',
             json.dumps({"question": "why " * 200, "context": "because"}).encode(),
             json.dumps(good[1], ensure_ascii=False).encode(),
             json.dumps({"question": good[2]["question"], "context": good[2]["context"]}).encode()]
    src = tmp_path / "mixed.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "mixed.out.jsonl"
    summary = tmp_path / "summary.json"
    result = serve(str(src), "--model", str(exported_bert / "onnx"), "-o", str(out), "--summary-json", str(summary),
                   "--chunk-size", "4")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["line"] for r in rows] == list(range(1, len(lines) + 1))
    errors = [r.get("error") for r in rows]
    assert errors[0] is None and errors[10] is None and errors[11] is None
    assert rows[0]["id"] == good[0]["id"] and rows[11]["id"] == "12"  # line number when no id
    expected = ["missing field 'context'", "empty field 'question'", "field 'question' must be a string",
                "field 'id' must be", "malformed JSON", "expected a JSON object", "invalid UTF-8", "empty line",
                "question too long"]
    for message, error in zip(expected, errors[1:10]):
        assert error and message in error, (message, error)
    s = json.loads(summary.read_text())
    assert (s["lines"], s["errors"], s["answered"] + s["no_answer"]) == (12, 9, 3)
    assert s["provider"] == "CPUExecutionProvider" and s["variant"] == QAConfig.load(exported_bert / "onnx").default_variant["cpu"]


def test_empty_file_and_missing_input(exported_bert, tmp_path):
    src = tmp_path / "empty.jsonl"
    src.write_text("")
    out = tmp_path / "empty.out.jsonl"
    result = serve(str(src), "--model", str(exported_bert / "onnx"), "-o", str(out))
    assert result.exit_code == 0 and out.read_text() == ""
    result = serve(str(tmp_path / "nope.jsonl"), "--model", str(exported_bert / "onnx"))
    assert result.exit_code != 0 and "input file not found" in result.output


def test_cuda_without_cuda_is_a_clear_error(exported_bert, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", fixture_lines()[:1])
    result = serve(str(src), "--model", str(exported_bert / "onnx"), "--device", "cuda")
    assert result.exit_code != 0 and "no usable CUDA" in result.output


def test_unknown_variant_is_refused(exported_bert, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", fixture_lines()[:1])
    result = serve(str(src), "--model", str(exported_bert / "onnx"), "--variant", "int4")
    assert result.exit_code != 0 and "unknown variant" in result.output


def test_stdout_output(exported_bert, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", fixture_lines()[:2])
    result = serve(str(src), "--model", str(exported_bert / "onnx"), "-o", "-")
    assert result.exit_code == 0
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{\"id\"")]
    assert len(rows) == 2


class AnswerFinder:
    """A stand-in predictor whose logits point at given token ids: tests windowing without training."""

    provider, variant = "test", "test"

    def __init__(self, start_id: int, end_id: int):
        self.start_id, self.end_id = start_id, end_id

    def logits(self, batch):
        ids = batch["input_ids"]
        start = np.where(ids == self.start_id, 10.0, 0.0)
        end = np.where(ids == self.end_id, 10.0, 0.0)
        start[:, 0] = end[:, 0] = 1.0
        return start.astype(np.float32), end.astype(np.float32)


def test_long_context_answer_in_a_later_window(vocab_file):
    tokenizer = BertTokenizerFast(vocab_file=vocab_file)
    context = LONG_CONTEXT * 3  # ~ 1,000 tokens: several 384-token windows
    context += " The keeper of the lighthouse is called Aurelio Quintanilla."
    target = "Aurelio Quintanilla"
    ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    qa = QAConfig(base_model="test", model_type="bert", null_threshold=0.0)
    engine = QAEngine(AnswerFinder(ids[0], ids[-1]), tokenizer, qa, BatchSettings(batch_size=2))
    features = engine.features(["Who keeps the lighthouse?"], [context])
    assert len(features) >= 3 and max(len(x) for x in features.inputs["input_ids"]) == 384
    [answer] = engine.answer(["Who keeps the lighthouse?"], [context])
    assert answer.text == target and context[answer.start:answer.end] == target and not answer.no_answer


def test_batches_bucket_by_length_and_respect_budgets():
    lengths = [5, 100, 7, 98, 6, 99]
    groups = batches(lengths, batch_size=2, max_batch_tokens=1000)
    assert sorted(i for g in groups for i in g) == list(range(6))
    assert all(len(g) <= 2 for g in groups)
    assert [sorted(lengths[i] for i in g) for g in groups] == [[5, 6], [7, 98], [99, 100]]
    assert all(len(g) == 1 for g in batches(lengths, batch_size=8, max_batch_tokens=100) if max(lengths[i] for i in g) > 50)


def test_pad_batch_pads_to_batch_or_fixed_length(vocab_file):
    from toolkit.features import FeatureConfig, build_features

    tokenizer = BertTokenizerFast(vocab_file=vocab_file)
    f = build_features(tokenizer, ["a?", "a longer question?"], ["short", "context"], FeatureConfig())
    batch = pad_batch(f, [0, 1], tokenizer.pad_token_id)
    assert batch["input_ids"].shape == (2, max(len(x) for x in f.inputs["input_ids"]))
    assert pad_batch(f, [0, 1], tokenizer.pad_token_id, pad_to=384)["attention_mask"].shape == (2, 384)


def test_parse_line_keeps_unicode_and_integer_ids():
    q = parse_line(json.dumps({"id": 7, "question": "Où?", "context": "東京"}, ensure_ascii=False).encode(), 3)
    assert (q.id, q.question, q.context, q.error) == ("7", "Où?", "東京", None)


def test_engine_refuses_missing_dir(tmp_path):
    from toolkit.engine import EngineError

    with pytest.raises(EngineError, match="not found"):
        load_engine(tmp_path / "nope")
