"""OpenVINO as an engine and the CPU default: the IR variants serve like the ONNX ones, a default measured on one
CPU class falls back to a gated variant on another, and bf16 never runs emulated."""

import dataclasses
import json

import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import fixture_lines, reranked_export, write_jsonl
from toolkit.cli import main
from toolkit.config import QAConfig
from toolkit.inference import EngineError, EngineSpec, load_engine
from toolkit.inference import openvino as ov_mod
from toolkit.inference import variants as variants_mod
from toolkit.inference.loading import default_variant, server_variant


def serve(*args):
    return CliRunner().invoke(main, ["serve-batch", *args, "--device", "cpu"], catch_exceptions=False)


def answers(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_openvino_fp32_answers_like_onnx_runtime_and_int8_serves(exported_bert, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", fixture_lines())
    rows = {}
    for variant in ("fp32", "ov-fp32", "ov-int8"):
        out = tmp_path / f"{variant}.jsonl"
        result = serve(str(src), "--model", str(exported_bert / "onnx"), "--variant", variant, "-o", str(out))
        assert result.exit_code == 0, result.output
        rows[variant] = answers(out)
    key = ("id", "answer", "start", "end", "no_answer", "best_span")
    assert [tuple(r[k] for k in key) for r in rows["ov-fp32"]] == [tuple(r[k] for k in key) for r in rows["fp32"]]
    for a, b in zip(rows["ov-fp32"], rows["fp32"]):
        assert a["start_confidence"] == pytest.approx(b["start_confidence"], abs=1e-4)
    assert [r["id"] for r in rows["ov-int8"]] == [r["id"] for r in rows["fp32"]]
    assert all("error" not in r for r in rows["ov-int8"])


def test_cpu_default_falls_back_to_a_gated_variant_where_bf16_is_not_native(monkeypatch):
    qa = QAConfig(base_model="b", model_type="bert", default_variant={"cpu": "ov-int8-bf16", "cuda": "fp16"},
                  cpu_ranking=["ov-int8-bf16", "ov-bf16", "int8", "fp32"])
    monkeypatch.setattr(variants_mod, "native_bf16", lambda: True)
    assert default_variant(qa, "cpu") == "ov-int8-bf16" and default_variant(qa, "cuda") == "fp16"
    monkeypatch.setattr(variants_mod, "native_bf16", lambda: False)
    assert default_variant(qa, "cpu") == "int8"  # the next gated variant, never an ungated one
    monkeypatch.setattr(ov_mod, "openvino_missing", lambda: "OpenVINO is not installed")
    assert default_variant(dataclasses.replace(qa, cpu_ranking=["ov-int8", "opt"]), "cpu") == "opt"
    assert default_variant(QAConfig(base_model="b", model_type="bert", default_variant={"cpu": "int8"}), "cpu") == "int8"


def test_bf16_is_refused_where_it_would_be_emulated(exported_bert, monkeypatch):
    monkeypatch.setattr(variants_mod, "native_bf16", lambda: False)
    with pytest.raises(EngineError, match="native bf16"):
        load_engine(EngineSpec(model=str(exported_bert / "onnx"), variant="ov-bf16", device="cpu"))
    with pytest.raises(EngineError, match="native bf16"):
        load_engine(EngineSpec(model=str(exported_bert / "merged"), engine="torch", variant="torch-bf16", device="cpu"))
    with pytest.raises(EngineError, match="unknown variant 'ov-int4'"):
        load_engine(EngineSpec(model=str(exported_bert / "onnx"), variant="ov-int4", device="cpu"))


def test_variant_missing_from_the_export_is_named(exported_bert, tmp_path):
    onnx = tmp_path / "onnx"
    onnx.mkdir()
    for f in (exported_bert / "onnx").iterdir():
        if not f.name.startswith("openvino_model_int8"):
            (onnx / f.name).symlink_to(f)
    with pytest.raises(EngineError, match="no openvino_model_int8.xml for ov-int8"):
        load_engine(EngineSpec(model=str(onnx), variant="ov-int8", device="cpu"))


def test_torch_bf16_answers_close_to_fp32(exported_bert):
    if not variants_mod.native_bf16():
        pytest.skip("bf16 is emulated on this CPU: the torch engine refuses it (tested above)")
    lines = fixture_lines()
    q, c = [r["question"] for r in lines], [r["context"] for r in lines]
    fp32 = load_engine(EngineSpec(model=str(exported_bert / "merged"), engine="torch", device="cpu")).answer(q, c)
    engine = load_engine(EngineSpec(model=str(exported_bert / "merged"), engine="torch", variant="torch-bf16", device="cpu"))
    assert engine.served().predictor.variant == "torch-bf16"
    bf16 = engine.answer(q, c)
    assert max(abs(a.best_span.score - b.best_span.score) for a, b in zip(fp32, bf16) if a.start is not None) < 0.5


def test_server_never_defaults_to_a_variant_whose_answers_depend_on_the_batch(exported_bert, tmp_path):
    manifest = json.loads((exported_bert / "onnx" / "export_manifest.json").read_text())
    invariant = [v for v in ("ov-fp32", "ov-bf16", "ov-int8", "ov-int8-bf16", "opt", "fp32")  # by measurement
                 if manifest["variants"].get(v, {}).get("passed") and variants_mod.VARIANTS[v].unusable() is None]
    # dynamic int8 first: activation scales per batch
    onnx = reranked_export(exported_bert / "onnx", tmp_path / "onnx", ["int8", *invariant])
    chosen = server_variant(EngineSpec(model=str(onnx)))
    assert chosen in invariant and chosen == max(invariant, key=lambda v: manifest["variants"][v]["questions_per_second"])


def test_openvino_answers_do_not_depend_on_the_batch(exported_bert):
    """Each window padded to its own multiple of 16 tokens: alone or batched with others, the same logits."""
    lines = fixture_lines()
    q, c = [r["question"] for r in lines], [r["context"] for r in lines]
    engine = load_engine(EngineSpec(model=str(exported_bert / "onnx"), variant="ov-int8", device="cpu"))
    assert engine.settings.bucket == 16
    alone = [engine.answer([a], [b])[0] for a, b in zip(q, c)]
    assert alone == engine.answer(q, c)


def test_batches_side_by_side_on_streams_give_the_logits_each_gets_alone(exported_bert):
    """Several batches at once run one per stream (one thread each); a lone batch on all threads: same logits."""
    from toolkit.inference.openvino import balanced
    from toolkit.inference.padding import batches, bucketed, pad_batch
    from toolkit.inference.predictors import SideBySide

    lines = fixture_lines()
    engine = load_engine(EngineSpec(model=str(exported_bert / "onnx"), variant="ov-int8", device="cpu", threads=2))
    predictor = engine.served().predictor
    assert isinstance(predictor, SideBySide) and predictor.side_by_side is not None
    features = engine.features([r["question"] for r in lines], [r["context"] for r in lines])
    lengths = [len(ids) for ids in features.inputs["input_ids"]]
    padded = [pad_batch(features, rows, 0, bucketed(lengths[rows[0]], 16)) for rows in batches(lengths, 2, 4096, 16)]
    assert len(padded) >= 3
    for (s, e), batch in zip(predictor.logits_each(padded), padded, strict=True):
        alone_s, alone_e = predictor.logits(batch)
        assert np.array_equal(s, alone_s) and np.array_equal(e, alone_e)
    # a batch over 1.25 streams' share of the tokens is cut across the streams: the same logits still
    by_length = {}
    for i, n in enumerate(lengths):
        by_length.setdefault(bucketed(n, 16), []).append(i)
    rows = max(by_length.values(), key=len)
    big, small = (pad_batch(features, r, 0, bucketed(lengths[r[0]], 16)) for r in (rows, rows[:1]))
    assert len(rows) >= 4 and len(balanced([big, small], 2)) > 2
    for (s, e), batch in zip(predictor.logits_each([big, small]), [big, small], strict=True):
        alone_s, alone_e = predictor.logits(batch)
        assert np.array_equal(s, alone_s) and np.array_equal(e, alone_e)


@pytest.mark.parametrize("streams", [2, 3, 4])
def test_a_batch_over_its_share_is_cut_into_consecutive_rows_at_most_one_per_stream(streams):
    from toolkit.inference.openvino import balanced

    def batch(rows, length):
        return {"input_ids": np.arange(rows * length).reshape(rows, length), "attention_mask": np.ones((rows, length))}

    big, lone, equal = batch(14, 160), batch(1, 4000), [batch(8, 160), batch(8, 160)]
    pieces = balanced([big, batch(2, 160)], streams)
    cut = [p for owner, p in pieces if owner == 0]
    assert 1 < len(cut) <= streams and [owner for owner, _ in pieces] == sorted(owner for owner, _ in pieces)
    assert np.array_equal(np.concatenate([p["input_ids"] for p in cut]), big["input_ids"])  # every row, in order
    assert all(p["attention_mask"].shape == p["input_ids"].shape for p in cut)
    assert len(balanced([lone, batch(1, 16)], streams)) == 2  # a one-window batch is never cut
    assert len(balanced(equal, 2)) == 2  # two equal batches are one share each
    assert [len(p["input_ids"]) for _, p in balanced([batch(0, 16), big], streams)][0] == 0  # an empty batch passes


def test_openvino_batching_pads_each_window_to_its_own_length(tokenizer):
    """With logits that move with the batch's padded width (as bf16 and static int8 do on some CPUs), OpenVINO's
    batching (each window padded to its own multiple of 16) still answers a question alone as in any batch."""
    from tests.fakes import Peak
    from toolkit.inference import Engine
    from toolkit.inference.padding import BatchSettings

    class PaddingSensitive(Peak):
        def logits(self, batch):
            start, end = super().logits(batch)
            return start + 0.01 * batch["input_ids"].shape[1], end

    qa = QAConfig(base_model="t", model_type="bert", max_length=64, doc_stride=16, max_question_tokens=24)
    engine = Engine.single(PaddingSensitive(5), tokenizer, qa, settings=BatchSettings.for_openvino())
    lines = fixture_lines()
    q, c = [r["question"] for r in lines], [r["context"] for r in lines]
    assert len({len(ids) for ids in engine.features(q, c).inputs["input_ids"]}) > 2  # windows of several lengths
    alone = [engine.answer([a], [b])[0] for a, b in zip(q, c)]
    assert alone == engine.answer(q, c)
