import json
import os

import pytest
from click.testing import CliRunner
from transformers import BertTokenizerFast

from tests.conftest import LONG_CONTEXT, fixture_lines, write_jsonl
from tests.fakes import AnswerFinder, FailsAfter
from toolkit import load
from toolkit.cli import main
from toolkit.config import QAConfig
from toolkit.inference import BatchSettings, Engine
from toolkit.inference.padding import batches, pad_batch
from toolkit.serving import parse_line


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


def test_no_answer_threshold_tuned_never_and_a_number(exported_bert, tmp_path):
    """never answers every question with its best span; a number re-decides each line from its null_score_diff;
    the spans, confidences and no-answer probabilities do not depend on the threshold."""
    src = write_jsonl(tmp_path / "in.jsonl", fixture_lines())
    rows = {}
    for value in ("tuned", "never", "0.5", "-1e9"):
        out = tmp_path / f"{value}.jsonl"
        result = serve(str(src), "--model", str(exported_bert / "onnx"), "--variant", "fp32", "-o", str(out),
                       "--no-answer-threshold", value)
        assert result.exit_code == 0, result.output
        rows[value] = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["answer"] == r["best_span"] and not r["no_answer"] for r in rows["never"])
    assert all(r["no_answer"] for r in rows["-1e9"])
    assert [r["no_answer"] for r in rows["0.5"]] == [r["null_score_diff"] > 0.5 for r in rows["0.5"]]
    key = ("best_span", "start_confidence", "end_confidence", "null_score_diff", "no_answer_probability")
    assert len({tuple(tuple(r[k] for k in key) for r in v) for v in rows.values()}) == 1
    bad = serve(str(src), "--model", str(exported_bert / "onnx"), "--no-answer-threshold", "sometimes")
    assert bad.exit_code != 0 and "tuned, never or a number" in bad.output


def test_answer_options_from_flags_and_per_line_parameters(exported_bert, tmp_path):
    """--top-k and the other HF parameters are every line's defaults; a line's "parameters" win for that line;
    a parameter that cannot be honoured is that line's error (kind "invalid"), never ignored. The first of the
    top_k answers is the top_k=1 answer, whatever else is in the chunk."""
    lines = fixture_lines()
    with_params = [{**lines[0], "parameters": {"top_k": 1}}, {**lines[1], "parameters": {"max_answer_len": 1}},
                   {**lines[2], "parameters": {"top_k": "2"}}, {**lines[3], "parameters": {"max_seq_len": 9999}},
                   {**lines[4], "parameters": {"align_to_words": False, "doc_stride": 32, "max_seq_len": 128}}]
    src = write_jsonl(tmp_path / "in.jsonl", lines)
    mixed = write_jsonl(tmp_path / "mixed.jsonl", with_params)
    model = ["--model", str(exported_bert / "onnx"), "--variant", "fp32", "--always-answer"]
    outputs = {}
    for name, source, flags in (("one", src, []), ("three", src, ["--top-k", "3"]), ("mixed", mixed, ["--top-k", "3"])):
        out = tmp_path / f"{name}.answers.jsonl"
        result = serve(str(source), *model, "-o", str(out), *flags)
        assert result.exit_code == 0, result.output
        outputs[name] = [json.loads(line) for line in out.read_text().splitlines()]
    for one, three in zip(outputs["one"], outputs["three"]):
        assert "alternatives" not in one and {k: v for k, v in three.items() if k != "alternatives"} == one
        spans = [(one["start"], one["end"])] + [(a["start"], a["end"]) for a in three["alternatives"]]
        assert len(spans) == len(set(spans)) == 3
    first, short, wrong, too_long, windows = outputs["mixed"]
    assert "alternatives" not in first and first["answer"] == outputs["one"][0]["answer"]
    assert len(short["answer"].split()) == 1 and len(short["alternatives"]) == 2
    assert wrong["error"] == "parameter 'top_k' must be an integer, got string" and wrong["error_kind"] == "invalid"
    assert "max_seq_len 9999 is over the" in too_long["error"]
    assert "answer" in windows and len(windows["alternatives"]) == 2
    bad = serve(str(src), *model, "--top-k", "0")
    assert bad.exit_code != 0 and "top_k' must be at least 1" in bad.output


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
    stages = s["stage_seconds"]  # the profile of the run: every stage timed, none counted twice
    assert set(stages) == {"read", "checks", "tokenise", "infer", "postprocess", "format", "write", "other"}
    assert all(v > 0 for k, v in stages.items() if k != "other")
    assert 0 <= stages["other"] < s["seconds"]  # the named stages fit inside the wall time


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


def test_long_context_answer_in_a_later_window(vocab_file):
    tokenizer = BertTokenizerFast(vocab_file=vocab_file)
    context = LONG_CONTEXT * 3  # ~ 1,000 tokens: several 384-token windows
    context += " The keeper of the lighthouse is called Aurelio Quintanilla."
    target = "Aurelio Quintanilla"
    ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    qa = QAConfig(base_model="test", model_type="bert", null_threshold=0.0)
    engine = Engine.single(AnswerFinder(ids[0], ids[-1]), tokenizer, qa, settings=BatchSettings(batch_size=2))
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
    from toolkit.inference import EngineError

    with pytest.raises(EngineError, match="not found"):
        load(tmp_path / "nope")


def test_output_that_is_the_input_is_refused_before_reading(exported_bert, tmp_path):
    src = write_jsonl(tmp_path / "q.jsonl", fixture_lines()[:2])
    before = src.read_bytes()
    (tmp_path / "link.jsonl").symlink_to(src)
    os.link(src, tmp_path / "hard.jsonl")
    for output in (src, tmp_path / "link.jsonl", tmp_path / "hard.jsonl", tmp_path / "sub" / ".." / "q.jsonl"):
        result = serve(str(src), "--model", str(exported_bert / "onnx"), "-o", str(output))
        assert result.exit_code != 0 and "is the input file" in result.output, output
    assert src.read_bytes() == before and not list(tmp_path.glob(".*partial*"))


def test_line_bytes_and_context_tokens_are_bounded_per_line(exported_bert, tmp_path):
    good = fixture_lines()
    rows = [good[0], {"id": "huge", "question": "q?", "context": "word " * 5000}, good[1],
            {"id": "long", "question": "q?", "context": "word " * 900}, good[3]]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    result = serve(str(src), "--model", str(exported_bert / "onnx"), "-o", str(out),
                   "--max-line-bytes", "20000", "--max-context-tokens", "800")
    assert result.exit_code == 0, result.output
    got = [json.loads(line) for line in out.read_text().splitlines()]
    size = len(json.dumps(rows[1]).encode())
    assert got[1]["error"] == f"line too long: {size} bytes (at most 20000; see --max-line-bytes)"
    assert got[3]["error"] == "context too long: 900 tokens (at most 800; see --max-context-tokens)"
    assert [("error" in r) for r in got] == [False, True, False, True, False]
    assert [r["line"] for r in got] == [1, 2, 3, 4, 5] and got[4]["id"] == good[3]["id"]


def test_resume_after_a_crash_gives_the_uninterrupted_file(exported_bert, tmp_path):
    from toolkit.serving import ServeConfig, ServeError, partial_paths, serve_batch

    lines = fixture_lines() * 7 + [{"id": "bad", "question": 3}]
    src = write_jsonl(tmp_path / "in.jsonl", lines)
    cfg = ServeConfig(chunk_size=5)
    engine = load(exported_bert / "onnx", device="cpu", batch_size=2)
    whole = tmp_path / "whole.jsonl"
    serve_batch(engine, str(src), str(whole), cfg, progress=False)

    out = tmp_path / "out.jsonl"
    real = engine.served().predictor
    engine.served().predictor = FailsAfter(real, 9)
    with pytest.raises(RuntimeError, match="simulated crash"):
        serve_batch(engine, str(src), str(out), cfg, progress=False)
    partial, meta = partial_paths(str(out))
    assert not out.exists() and partial.exists() and meta.exists()
    with open(partial, "a") as f:
        f.write('{"id": "half a li')  # a kill in the middle of a write
    engine.served().predictor = real
    with pytest.raises(ServeError, match="belongs to another job.*settings"):
        serve_batch(engine, str(src), str(out), ServeConfig(chunk_size=4, resume=True), progress=False)
    summary = serve_batch(engine, str(src), str(out), ServeConfig(chunk_size=5, resume=True), progress=False)
    assert out.read_bytes() == whole.read_bytes()
    assert summary.resumed_lines > 0 and summary.resumed_lines % 5 == 0 and summary.lines == len(lines)
    assert summary.errors == 1 and not partial.exists() and not meta.exists()


def test_resume_refuses_another_input(exported_bert, tmp_path):
    from toolkit.serving import ServeConfig, ServeError, partial_paths, serve_batch

    src = write_jsonl(tmp_path / "in.jsonl", fixture_lines())
    out = tmp_path / "out.jsonl"
    engine = load(exported_bert / "onnx", device="cpu")
    engine.served().predictor = FailsAfter(engine.served().predictor, 0)
    with pytest.raises(RuntimeError):
        serve_batch(engine, str(src), str(out), ServeConfig(chunk_size=2), progress=False)
    write_jsonl(src, fixture_lines()[::-1])
    with pytest.raises(ServeError, match="belongs to another job.*input"):
        serve_batch(load(exported_bert / "onnx", device="cpu"), str(src), str(out),
                    ServeConfig(chunk_size=2, resume=True), progress=False)
    assert partial_paths(str(out))[0].exists()


FUZZ_ERRORS = ("malformed JSON", "expected a JSON object", "missing field", "must be a string", "empty field",
               "invalid UTF-8", "empty line", "question too long", "line too long", "context too long",
               "field 'id' must be")


def fuzz_lines(n: int, seed: int = 0) -> list[bytes]:
    """Valid and broken lines of every kind serve-batch must survive."""
    import random

    rng = random.Random(seed)
    good = fixture_lines()
    makers = [
        lambda: json.dumps(rng.choice(good), ensure_ascii=False).encode(),
        lambda: json.dumps(rng.choice(good)).encode()[:rng.randrange(1, 60)],  # truncated JSON
        lambda: json.dumps({"id": rng.choice([None, 1.5, True, [1]]), "question": "q?", "context": "c"}).encode(),
        lambda: json.dumps({"question": rng.choice([1, None, ["q"], {"a": 1}]), "context": "c"}).encode(),
        lambda: json.dumps({"question": "q?", "context": rng.choice(["", "   ", "\t"])}).encode(),
        lambda: json.dumps({"question": "What\x00 is\x07 this\x1b?", "context": "Control\x01 chars\x7f here."}).encode(),
        lambda: bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))),  # binary noise
        lambda: b'{"question": "caf\xe9?", "context": "invalid \xff utf-8"}',
        lambda: json.dumps({"id": "dup", "question": "Who?", "context": "Ann saw Bob."}).encode(),
        lambda: json.dumps({**rng.choice(good), "extra": {"nested": [1, 2]}, "answers": "x"}).encode() + b"\r",
        lambda: json.dumps({"question": "q?", "context": "word " * rng.choice([5000, 60000])}).encode(),  # huge
        lambda: json.dumps({"question": "why " * 100, "context": "because"}).encode(),
        lambda: b"",
        lambda: b"[]",
        lambda: json.dumps("just a string").encode(),
    ]
    return [makers[i % len(makers)]() if i % 3 else makers[0]() for i in rng.sample(range(n), n)]


def _peak_rss_mb(args) -> float:
    import subprocess
    import sys

    code = ("import resource, sys; from toolkit.cli import main\n"
            "try:\n    main(sys.argv[1:], standalone_mode=False)\n"
            "finally:\n    print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stderr.rsplit("PEAK", 1)[1].split()[0]) / 1024


def test_fuzz_one_line_out_per_line_in_and_bounded_memory(exported_bert, tmp_path):
    lines = fuzz_lines(3000)
    huge = json.dumps({"id": "huge", "question": "q?", "context": "x" * (64 << 20)}).encode()
    src = tmp_path / "fuzz.jsonl"
    src.write_bytes(b"\n".join(lines[:1500] + [huge] + lines[1500:]) + b"\n")
    small = write_jsonl(tmp_path / "small.jsonl", fixture_lines())
    model = ["--model", str(exported_bert / "onnx"), "--device", "cpu"]
    baseline = _peak_rss_mb(["serve-batch", str(small), *model, "-o", str(tmp_path / "small.out")])
    peak = _peak_rss_mb(["serve-batch", str(src), *model, "-o", str(tmp_path / "fuzz.out"), "--chunk-size", "256"])
    rows = [json.loads(line) for line in (tmp_path / "fuzz.out").read_text(encoding="utf-8").splitlines()]
    assert [r["line"] for r in rows] == list(range(1, len(lines) + 2))
    for row in rows:
        if "error" in row:
            assert any(e in row["error"] for e in FUZZ_ERRORS), row
        else:
            assert {"answer", "start", "end", "start_confidence", "no_answer"} <= set(row), row
    assert rows[1500]["error"].startswith(f"line too long: {len(huge)} bytes")
    assert sum("error" not in r for r in rows) > 1000  # the valid two thirds were answered
    assert peak - baseline < 64, (peak, baseline)  # the 64 MB line was never held in memory


def test_score_best_span_and_examples(tmp_path, squad_file):
    rows = [{"id": "z1", "line": 1, "answer": None, "best_span": "Zürich", "start_confidence": 0.4,
             "end_confidence": 0.3, "no_answer": True},
            {"id": "z3", "line": 2, "answer": None, "best_span": "ETH", "start_confidence": 0.9,
             "end_confidence": 0.9, "no_answer": True}]
    out = write_jsonl(tmp_path / "a.jsonl", rows)
    refs = str(squad_file) + "?articles=Zurich"
    plain = CliRunner().invoke(main, ["score", str(out), "--references", refs])
    forced = CliRunner().invoke(main, ["score", str(out), "--references", refs, "--best-span", "--examples", "1"])
    assert plain.exit_code == forced.exit_code == 0, plain.output + forced.output
    assert "Q:" not in plain.output and forced.output.count("Q:") == 1
    as_json = lambda r: json.loads(r.output[r.output.index("{"):])  # noqa: E731
    assert as_json(plain)["HasAns_exact"] == 0 and as_json(plain)["NoAns_exact"] == 100
    assert as_json(forced)["HasAns_exact"] == 50 and as_json(forced)["NoAns_exact"] == 0
    assert "Q: What is the largest city in Switzerland?" in forced.output and "reference: 'Zürich'" in forced.output


def test_calibrate_stores_the_fit_and_serve_batch_answers_with_it(trained_bert, squad_file, tmp_path):
    """`calibrate` fits on held-out questions and rewrites qa_config.json; answers then say calibrated, their
    decisions are unchanged (the threshold is mapped by the same function), and none contradicts its numbers.
    Too few questions is a clear error that leaves the model as it was."""
    import shutil

    from tests.conftest import squad_fixture

    fixture = squad_fixture()
    for article in fixture["data"]:
        for paragraph in article["paragraphs"]:
            paragraph["qas"] = [{**qa, "id": f"{qa['id']}-{n}"} for n in range(4) for qa in paragraph["qas"]]
    many = tmp_path / "many.json"
    many.write_text(json.dumps(fixture, ensure_ascii=False))
    model = tmp_path / "adapter"
    shutil.copytree(trained_bert / "adapter", model)
    src = write_jsonl(tmp_path / "in.jsonl", fixture_lines())
    before = serve(str(src), "--model", str(model), "-o", str(tmp_path / "before.jsonl"))
    assert before.exit_code == 0, before.output
    small = CliRunner().invoke(main, ["calibrate", str(model), "--eval-file", str(squad_file)])
    assert small.exit_code != 0 and "at least 20 questions" in small.output
    assert QAConfig.load(model).calibration is None
    result = CliRunner().invoke(main, ["calibrate", str(model), "--eval-file", str(many)])
    assert result.exit_code == 0, result.output
    assert QAConfig.load(model).calibration["questions"] == 36
    after = serve(str(src), "--model", str(model), "-o", str(tmp_path / "after.jsonl"))
    assert after.exit_code == 0, after.output
    rows = {name: [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
            for name in ("before", "after")}
    assert [r["calibrated"] for r in rows["before"]] == [False] * 9 and all(r["calibrated"] for r in rows["after"])
    assert [r["no_answer"] for r in rows["before"]] == [r["no_answer"] for r in rows["after"]]
    assert all(r["no_answer"] == (r["no_answer_probability"] > r["no_answer_threshold"]) for r in rows["after"])
