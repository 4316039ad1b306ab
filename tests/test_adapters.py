"""Several LoRA adapters on one base: torch (PEFT) and ONNX Runtime (its LoraAdapter files) agree with
each adapter served alone and with that adapter's merged export."""

import json

import pytest
from click.testing import CliRunner

from tests.conftest import fixture_lines, write_jsonl
from toolkit.cli import main
from toolkit.config import QAConfig

# name -> (LoRA targets, rank, alpha, seed, no-answer threshold): two all-attention adapters and one on the
# query/value projections only, of another rank, so the shared graph must give it empty matrices elsewhere.
ADAPTERS = {"news": (["query", "key", "value", "attention.output.dense"], 8, 16, 1, 0.0),
            "law": (["query", "key", "value", "attention.output.dense"], 8, 16, 2, 0.5),
            "small": (["query", "value"], 4, 4, 3, -0.5)}


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def adapters(tiny_bert, tmp_path_factory):
    """Three adapters of the tiny BERT with random (non-zero) LoRA matrices and heads: distinct answers."""
    import torch
    from peft import LoraConfig, get_peft_model

    from toolkit.modeling import load_base, load_tokenizer

    root = tmp_path_factory.mktemp("adapters")
    dirs = {}
    for name, (targets, r, alpha, seed, threshold) in ADAPTERS.items():
        model = get_peft_model(load_base(str(tiny_bert)), LoraConfig(r=r, lora_alpha=alpha, target_modules=targets,
                                                                     modules_to_save=["qa_outputs"]))
        torch.manual_seed(seed)
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if "lora_B" in pname or "modules_to_save" in pname:
                    p.normal_(0, 0.5)
        dirs[name] = root / name
        model.save_pretrained(dirs[name])
        load_tokenizer(str(tiny_bert)).save_pretrained(dirs[name])
        QAConfig(base_model=str(tiny_bert), model_type="bert", max_length=64, doc_stride=16, max_question_tokens=24,
                 null_threshold=threshold).save(dirs[name])
    return dirs


def spec(dirs):
    return ",".join(f"{name}={path}" for name, path in dirs.items())


def mixed_lines():
    """Every fixture question for every adapter, interleaved line by line, plus an unnamed and an unknown one."""
    rows = []
    for line in fixture_lines():
        for name in ADAPTERS:
            rows.append({**line, "id": f"{line['id']}-{name}", "adapter": name})
    rows.append({**fixture_lines()[0], "id": "unnamed"})
    rows.append({**fixture_lines()[0], "id": "unknown", "adapter": "medicine"})
    return rows


def answers(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def key(row):
    return row["answer"], row["start"], row["end"], row["no_answer"], row["best_span"]


def alone(dirs, tmp_path, engine_args):
    """name -> {question id -> row}: each adapter served by itself."""
    src = write_jsonl(tmp_path / "alone.jsonl", fixture_lines())
    out = {}
    for name in dirs:
        target = tmp_path / f"alone-{name}.jsonl"
        result = run("serve-batch", str(src), *engine_args(name), "-o", str(target), "--device", "cpu")
        assert result.exit_code == 0, result.output
        out[name] = {r["id"]: r for r in answers(target)}
    return out


def check_against_alone(rows, single):
    for row in rows[:-2]:
        qid, name = row["id"].rsplit("-", 1)
        assert row["adapter"] == name
        assert key(row) == key(single[name][qid]), row["id"]
        assert row["score"] == pytest.approx(single[name][qid]["score"], abs=1e-4)
        assert row["start_confidence"] == pytest.approx(single[name][qid]["start_confidence"], abs=1e-4)
    assert rows[-2]["adapter"] == "news" and key(rows[-2]) == key(rows[0])  # the default adapter: the first
    assert "unknown adapter 'medicine'" in rows[-1]["error"]
    spans = {name: [r["best_span"] for r in single[name].values()] for name in single}
    assert len({tuple(s) for s in spans.values()}) == len(spans)  # the adapters really answer differently


def test_torch_adapters_on_one_base_answer_like_each_alone(adapters, tmp_path):
    src = write_jsonl(tmp_path / "mixed.jsonl", mixed_lines())
    out = tmp_path / "mixed.answers.jsonl"
    result = run("serve-batch", str(src), "--adapters", spec(adapters), "-o", str(out), "--device", "cpu",
                 "--chunk-size", "7")
    assert result.exit_code == 0, result.output
    single = alone(adapters, tmp_path, lambda name: ["--model", str(adapters[name]), "--engine", "torch"])
    check_against_alone(answers(out), single)


def test_onnx_adapters_match_each_merged_export(adapters, eval_file, tmp_path):
    export_dir = tmp_path / "shared"
    result = run("export", "--adapters", spec(adapters), "--output-dir", str(export_dir), "--eval-file", str(eval_file))
    assert result.exit_code == 0, result.output
    manifest = json.loads((export_dir / "export_manifest.json").read_text())
    for name in ADAPTERS:
        entry = manifest["adapters"][name]
        assert entry["max_abs_logit_diff"] <= 1e-4 and entry["answer_agreement"] == entry["span_agreement"] == 100.0
        assert QAConfig.load(export_dir / "onnx" / "adapters" / name).null_threshold == ADAPTERS[name][4]
    assert manifest["adapters"]["small"]["adapter_file_bytes"] < manifest["adapters"]["news"]["adapter_file_bytes"]

    merged = {}
    for name, directory in adapters.items():  # each adapter's own merged ONNX export: the reference
        merged[name] = tmp_path / f"merged-{name}"
        result = run("export", "--merge", "--adapter", str(directory), "--output-dir", str(merged[name]),
                     "--eval-file", str(eval_file), "--variants", "fp32")
        assert result.exit_code == 0, result.output
    single = alone(adapters, tmp_path, lambda name: ["--model", str(merged[name] / "onnx"), "--variant", "fp32"])
    src = write_jsonl(tmp_path / "mixed.jsonl", mixed_lines())
    out = tmp_path / "mixed.answers.jsonl"
    result = run("serve-batch", str(src), "--model", str(export_dir / "onnx"), "-o", str(out), "--device", "cpu")
    assert result.exit_code == 0, result.output
    check_against_alone(answers(out), single)

    law = tmp_path / "law.answers.jsonl"
    result = run("serve-batch", str(src), "--model", str(export_dir / "onnx"), "--default-adapter", "law",
                 "-o", str(law), "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert answers(law)[-2]["adapter"] == "law"


def test_adapter_mistakes_are_named(adapters, exported_bert, tiny_distilbert, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{**fixture_lines()[0], "adapter": "news"}])
    result = run("serve-batch", str(src), "--model", str(exported_bert / "onnx"), "-o", str(tmp_path / "o.jsonl"))
    assert result.exit_code == 0, result.output
    assert "this model serves no adapters" in answers(tmp_path / "o.jsonl")[0]["error"]

    result = run("serve-batch", str(src), "--adapters", spec(adapters), "--default-adapter", "sport")
    assert result.exit_code == 1 and "'sport' is not among the adapters" in result.output
    result = run("serve-batch", str(src), "--adapters", f"a={adapters['news']},a={adapters['law']}")
    assert result.exit_code == 1 and "given twice" in result.output
    result = run("serve-batch", str(src), "--adapters", spec(adapters), "--model", str(exported_bert / "onnx"))
    assert result.exit_code != 0 and "either --model" in result.output

    other = tmp_path / "other"  # an adapter of another base model cannot share this one
    (other).mkdir()
    for f in adapters["law"].iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    qa = QAConfig.load(other)
    qa.base_model, qa.model_type = str(tiny_distilbert), "distilbert"
    qa.save(other)
    result = run("serve-batch", str(src), "--adapters", f"news={adapters['news']},other={other}")
    assert result.exit_code == 1 and "different base models" in result.output


def test_an_adapter_on_a_headless_base_loads_its_own_head_without_the_untrained_warning(
        trained_bert, tiny_bert, tmp_path):
    """A base checkpoint without a QA head (as hub encoders are): loading an adapter must not print
    transformers' "newly initialized ... You should probably TRAIN this model", and the adapter's trained
    head answers exactly as it does over a base that has a head."""
    import logging
    import shutil

    import torch
    from transformers import AutoModelForQuestionAnswering
    from transformers.utils import logging as hf_logging

    from toolkit.modeling import load_adapter, load_tokenizer

    headless = tmp_path / "headless"
    AutoModelForQuestionAnswering.from_pretrained(tiny_bert).bert.save_pretrained(headless)
    load_tokenizer(str(tiny_bert)).save_pretrained(headless)
    adapter = tmp_path / "adapter"
    shutil.copytree(trained_bert / "adapter", adapter)
    qa = QAConfig.load(adapter)
    qa.base_model = str(headless)
    qa.save(adapter)

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    library_logger = hf_logging.get_logger("transformers")
    library_logger.addHandler(handler)
    try:
        model, tokenizer, _ = load_adapter(adapter)
        AutoModelForQuestionAnswering.from_pretrained(headless)  # the warning this handler would see
    finally:
        library_logger.removeHandler(handler)
    messages = [record.getMessage() for record in records]
    assert len([m for m in messages if "newly initialized" in m]) == 1, messages
    reference, _, _ = load_adapter(trained_bert / "adapter")
    batch = tokenizer(["Who answered?"], ["Someone answered the question."], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**batch).start_logits, reference(**batch).start_logits)
        assert torch.equal(model(**batch).end_logits, reference(**batch).end_logits)


def test_torch_adapters_answer_right_under_concurrent_threads(adapters):
    """One PEFT model serves every adapter: threads asking different adapters at once must each get their own
    adapter's answers (the switch of the active adapter and the forward pass never interleave)."""
    import threading

    import toolkit

    engine = toolkit.load(adapters={name: str(d) for name, d in adapters.items()}, device="cpu", batch_size=2)
    lines = fixture_lines()
    questions, contexts = [r["question"] for r in lines], [r["context"] for r in lines]
    expected = {name: [(a.text, a.no_answer) for a in engine.answer(questions, contexts, adapter=name)]
                for name in adapters}
    assert len({tuple(v) for v in expected.values()}) == len(adapters)
    wrong, errors = [], []

    def ask(name):
        try:
            for _ in range(6):
                got = [(a.text, a.no_answer) for a in engine.answer(questions, contexts, adapter=name)]
                if got != expected[name]:
                    wrong.append(name)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=ask, args=(name,)) for name in list(adapters) * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and not wrong, (errors, wrong)
