import json

import numpy as np
import pytest
from click.testing import CliRunner
from transformers import AlbertConfig, AlbertForQuestionAnswering, BertTokenizer

from tests.conftest import TINY_TRAIN_FLAGS, run_train
from toolkit import modeling, runtime
from toolkit.cli import main
from toolkit.config import QAConfig


def test_train_writes_adapter_manifest_reports(trained_bert):
    adapter = trained_bert / "adapter"
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "qa_config.json",
                 "README.md", "manifest.json"):
        assert (adapter / name).exists(), name
    assert (adapter / "adapter_model.safetensors").stat().st_size < 5e6  # apart from the base
    assert not (adapter / "model.safetensors").exists()
    for name in ("eval_table.csv", "eval_table.json", "curves.png", "eval_predictions.json"):
        assert (trained_bert / "reports" / name).exists(), name
    manifest = json.loads((trained_bert / "manifest.json").read_text())
    assert manifest["sources"]["train"][0]["sha256"] and manifest["counts"]["train_examples"] == 9
    assert manifest["counts"]["train_features"] > 9  # long context split with stride
    assert manifest["timing"]["global_step"] == 2 and manifest["versions"]["transformers"].startswith("4.57")
    row = manifest["table"][-1]
    assert {"train_loss", "val_loss", "start_acc", "end_acc", "position_exact", "exact", "f1"} <= set(row)
    tuned = manifest["final_metrics"]["tuned"]
    assert tuned["HasAns_total"] == 6 and tuned["NoAns_total"] == 3
    qa = QAConfig.load(adapter)
    assert qa.model_type == "bert" and qa.null_threshold == manifest["null_threshold"]["value"]
    assert qa.null_threshold_tuned_on == manifest["config"]["eval_file"]
    assert qa.max_length == 64 and qa.doc_stride == 16


def test_adapter_reloads_with_the_trained_weights(trained_bert):
    """The reloaded adapter holds the saved tensors, and they were trained: PEFT starts every lora_B at zero,
    so a freshly initialised adapter would fail the second check."""
    from safetensors.torch import load_file

    model, tokenizer, qa = modeling.load_adapter(trained_bert / "adapter")
    assert tokenizer.is_fast and qa.model_type == "bert"
    saved = load_file(trained_bert / "adapter" / "adapter_model.safetensors")
    loaded = {n.replace(".default", ""): p.detach() for n, p in model.named_parameters() if "lora_" in n}
    lora = {n: t for n, t in saved.items() if "lora_" in n}
    assert lora and set(loaded) == set(lora)
    assert all((loaded[n] == t).all() for n, t in lora.items())
    assert all(t.abs().sum() > 0 for n, t in lora.items() if "lora_B" in n)


def test_resume_continues_and_refuses_changed_settings(tiny_bert, files, tmp_path):
    run = tmp_path / "r"
    assert run_train(tiny_bert, files, run).exit_code == 0
    result = run_train(tiny_bert, files, run, "--resume", "--max-steps", "5", "--eval-steps", "1")
    assert result.exit_code == 0, result.output
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["timing"]["global_step"] == 5 and manifest["resumed"]
    assert [r["step"] for r in manifest["table"]] == [2, 3, 4, 5]  # the new --eval-steps, not the checkpoint's
    changed = run_train(tiny_bert, files, run, "--resume", "--lr", "5e-4")
    assert changed.exit_code != 0 and "settings differ" in changed.output and "learning_rate" in changed.output


def test_existing_output_dir_is_not_overwritten(trained_bert, tiny_bert, files):
    before = (trained_bert / "adapter" / "adapter_model.safetensors").read_bytes()
    result = run_train(tiny_bert, files, trained_bert)
    assert result.exit_code != 0 and "not empty" in result.output
    assert (trained_bert / "adapter" / "adapter_model.safetensors").read_bytes() == before


def test_distilbert_lora_targets_and_full_finetune(tiny_distilbert, files, tmp_path):
    result = run_train(tiny_distilbert, files, tmp_path / "d")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "d" / "adapter" / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == {"attention.q_lin", "attention.k_lin", "attention.v_lin",
                                             "attention.out_lin", "ffn.lin1", "ffn.lin2"}  # all-linear default
    seed = run_train(tiny_distilbert, files, tmp_path / "s", "--lora-targets", "attention")
    assert seed.exit_code == 0, seed.output
    config = json.loads((tmp_path / "s" / "adapter" / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == {"q_lin", "k_lin", "v_lin", "out_lin"}
    full = run_train(tiny_distilbert, files, tmp_path / "f", "--full-finetune")
    assert full.exit_code == 0, full.output
    manifest = json.loads((tmp_path / "f" / "manifest.json").read_text())
    assert manifest["parameters"]["trainable"] == manifest["parameters"]["total"]
    assert (tmp_path / "f" / "model" / "model.safetensors").exists()


def test_config_file_and_flags_win(tiny_bert, files, tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"lora_r": 4, "lora_alpha": 8, "seed": 3}))
    result = run_train(tiny_bert, files, tmp_path / "c", "--config", str(cfg), "--lora-r", "2")
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "c" / "train_config.json").read_text())
    assert (saved["lora_r"], saved["lora_alpha"], saved["seed"]) == (2, 8, 3)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"lora_rank": 4}))
    result = run_train(tiny_bert, files, tmp_path / "c2", "--config", str(bad))
    assert result.exit_code != 0 and "unknown setting" in result.output


def test_lora_parameter_counts(tiny_bert, tiny_distilbert):
    for model_dir, per_layer_modules in ((tiny_bert, 4), (tiny_distilbert, 4)):
        model = modeling.add_lora(modeling.load_base(str(model_dir)), 16, 32, 0.1, None)
        count = modeling.count_parameters(model)
        # 2 layers x 4 projections x (A: 16x32 + B: 32x16) + head 32x2 + 2
        assert count.trainable == 2 * per_layer_modules * 2 * 16 * 32 + 66
        assert 0 < count.percent < 100


def test_unknown_architecture_names_its_modules():
    model = AlbertForQuestionAnswering(AlbertConfig(vocab_size=100, embedding_size=16, hidden_size=32,
                                                    num_attention_heads=2, intermediate_size=32))
    with pytest.raises(modeling.ModelError, match="no LoRA targets known for model_type 'albert'.*query"):
        modeling.lora_targets(model)
    assert modeling.lora_targets(model, ["query", "value"]) == ["query", "value"]
    with pytest.raises(modeling.ModelError, match="'q_lin' matches no linear module"):
        modeling.lora_targets(model, ["q_lin"])


def test_slow_tokenizer_is_refused(monkeypatch, vocab_file):
    monkeypatch.setattr(modeling.AutoTokenizer, "from_pretrained",
                        lambda *a, **k: BertTokenizer(vocab_file=vocab_file))
    with pytest.raises(modeling.ModelError, match="no fast tokenizer"):
        modeling.load_tokenizer("anything")


def test_missing_model_and_unreachable_hub_are_clear(squad_file, tmp_path):
    result = CliRunner().invoke(main, ["train", "--model", str(tmp_path / "nope"), "--train-file", str(squad_file),
                                       "--eval-file", str(squad_file), "--output-dir", str(tmp_path / "o")])
    assert result.exit_code != 0 and "no such directory" in result.output
    with pytest.raises(modeling.ModelError, match="Hugging Face Hub"):
        modeling.load_tokenizer("distilbert-base-uncased")


def test_never_trains_on_squad_v11_dev(tmp_path, squad_file):
    result = CliRunner().invoke(main, ["train", "--train-file", "squad-v1.1-dev", "--eval-file", str(squad_file),
                                       "--output-dir", str(tmp_path / "o")])
    assert result.exit_code != 0 and "refusing to train on squad-v1.1-dev" in result.output


def test_train_eval_overlap_is_refused(tiny_bert, squad_file, tmp_path):
    result = CliRunner().invoke(main, ["train", "--model", str(tiny_bert), "--train-file", str(squad_file),
                                       "--eval-file", str(squad_file) + "?articles=Zurich",
                                       "--output-dir", str(tmp_path / "o"), *TINY_TRAIN_FLAGS])
    assert result.exit_code != 0 and "both the training and the eval data" in result.output


@pytest.mark.parametrize("bf16", ["off", "on"])
def test_trainer_eval_equals_the_engine_on_the_saved_weights(tiny_bert, files, tmp_path, bf16):
    """Length-grouped training, eval in several batches of different lengths: the table, the final metrics
    and the stored predictions must be what the serving engine computes from the saved adapter. With bf16
    autocast training (native on AVX512-BF16/AMX, emulated elsewhere) evaluation still runs in fp32, the
    precision the engine serves in."""
    import toolkit
    from toolkit import data
    from toolkit.scoring import position_metrics, squad_scores

    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"eval_batch_size": 3, "group_by_length": True}))
    run = tmp_path / "run"
    result = run_train(tiny_bert, files, run, "--config", str(cfg), "--bf16", bf16)
    assert result.exit_code == 0, result.output
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["counts"]["eval_features"] > 3 * 2  # several eval batches
    assert manifest["precision"] == ("bf16" if bf16 == "on" else "fp32")

    examples, _ = data.load_examples([str(files[1])], cache_dir=data.default_cache_dir(), seed=42, limit=None,
                                     default_split="validation")
    engine = toolkit.load(run / "adapter", engine="torch", device="cpu", batch_size=2)
    features = engine.features([e.question for e in examples], [e.context for e in examples])
    answers, start, end = engine.run([e.context for e in examples], features)
    stored = json.loads((run / "reports" / "eval_predictions.json").read_text())
    for e, a in zip(examples, answers):
        assert (stored[e.id]["text"], stored[e.id]["no_answer"]) == (a.text, a.no_answer), e.id
        assert stored[e.id]["null_score_diff"] == pytest.approx(a.null_score_diff, abs=1e-4), e.id
    refs = data.references(examples)
    assert manifest["final_metrics"]["tuned"]["f1"] == pytest.approx(
        squad_scores({e.id: a.text for e, a in zip(examples, answers)}, refs)["f1"])

    engine.with_threshold(0.0)  # the table is scored at threshold 0
    at_zero = engine.run([e.context for e in examples], features)[0]
    row = manifest["table"][-1]
    assert row["f1"] == pytest.approx(squad_scores({e.id: a.text for e, a in zip(examples, at_zero)}, refs)["f1"])
    width = max(len(s) for s in start)
    padded = [np.pad(x, (0, width - len(x)), constant_values=-100.0) for x in start]
    labelled = build_labels(engine.tokenizer, examples, engine.served().qa)
    positions = position_metrics(np.stack(padded), np.stack([np.pad(x, (0, width - len(x)), constant_values=-100.0)
                                                             for x in end]), *labelled)
    assert row["start_acc"] == pytest.approx(positions["start_acc"])
    assert row["position_exact"] == pytest.approx(positions["position_exact"])


def build_labels(tokenizer, examples, qa):
    from toolkit.features import build_features
    from toolkit.training.trainer import first_answer

    feats = build_features(tokenizer, [e.question for e in examples], [e.context for e in examples], qa.features(),
                           answers=[first_answer(e) for e in examples])
    return np.array(feats.start_positions), np.array(feats.end_positions)


def test_sigkill_after_a_checkpoint_then_resume_matches_an_uninterrupted_run(tiny_bert, files, tmp_path):
    """Kill -9 once the first checkpoint is complete, resume, and compare with a run never interrupted:
    same eval table (losses within 1e-4, EM/F1 and accuracies within 0.01 points) and same final metrics."""
    import os
    import signal
    import subprocess
    import sys
    import time

    flags = ["--max-steps", "30", "--eval-steps", "5", "--warmup-steps", "2"]
    whole = tmp_path / "whole"
    assert run_train(tiny_bert, files, whole, *flags).exit_code == 0

    killed = tmp_path / "killed"
    train_file, eval_file = files
    args = [sys.executable, "-m", "toolkit.cli", "train", "--model", str(tiny_bert), "--train-file", str(train_file),
            "--eval-file", str(eval_file), "--output-dir", str(killed), *TINY_TRAIN_FLAGS, *flags]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    first = killed / "checkpoints" / "checkpoint-5" / "trainer_state.json"
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists() and not (killed / "manifest.json").exists(), "the run ended before it could be killed"

    result = run_train(tiny_bert, files, killed, *flags, "--resume")
    assert result.exit_code == 0, result.output
    a, b = (json.loads((d / "manifest.json").read_text()) for d in (whole, killed))
    assert b["resumed"] and [r["step"] for r in a["table"]] == [r["step"] for r in b["table"]] == [5, 10, 15, 20, 25, 30]
    for row_a, row_b in zip(a["table"], b["table"]):
        for key in ("train_loss", "val_loss"):
            assert row_b[key] == pytest.approx(row_a[key], abs=1e-4), (row_a["step"], key)
        for key in ("start_acc", "end_acc", "position_exact", "exact", "f1"):
            assert row_b[key] == pytest.approx(row_a[key], abs=1e-2), (row_a["step"], key)
    for key, value in a["final_metrics"]["tuned"].items():
        assert b["final_metrics"]["tuned"][key] == pytest.approx(value, abs=1e-2), key
    assert b["null_threshold"]["value"] == pytest.approx(a["null_threshold"]["value"], abs=1e-4)


def test_all_linear_lora_targets_attention_and_feed_forward(tiny_bert, tiny_distilbert):
    bert = modeling.load_base(str(tiny_bert))
    assert modeling.lora_targets(bert, ["all-linear"]) == [
        "attention.output.dense", "attention.self.key", "attention.self.query", "attention.self.value",
        "intermediate.dense", "output.dense"]
    distil = modeling.load_base(str(tiny_distilbert))
    assert modeling.lora_targets(distil, ["all-linear"]) == [
        "attention.k_lin", "attention.out_lin", "attention.q_lin", "attention.v_lin", "ffn.lin1", "ffn.lin2"]
    model = modeling.add_lora(bert, 4, 8, 0.0, ["all-linear"])
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in model.named_parameters() if "lora_A" in n}
    assert len(adapted) == 2 * 6 and not any("qa_outputs" in n for n in adapted)


def test_bf16_setting(monkeypatch):
    from toolkit.config import TrainConfig
    from toolkit.training import TrainError, precision

    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx2"})
    assert precision(TrainConfig(bf16="auto")) == "fp32" and precision(TrainConfig(bf16="on")) == "bf16"
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx512_bf16"})
    assert precision(TrainConfig(bf16="auto")) == "bf16" and precision(TrainConfig(bf16="off")) == "fp32"
    with pytest.raises(TrainError, match="auto, on or off"):
        precision(TrainConfig(bf16="yes"))


def adapter_tensors(adapter_dir):
    from safetensors.torch import load_file

    return load_file(str(adapter_dir / "adapter_model.safetensors"))


def test_init_adapter_continues_its_weights_in_a_new_run(trained_bert, tiny_bert, files, tmp_path):
    """At lr 0 the new run saves exactly the adapter it started from (LoRA weights and head); at a real lr it
    moves away from it, keeps its LoRA settings whatever --lora-r says, and records where it started."""
    import torch

    start = trained_bert / "adapter"
    frozen = tmp_path / "frozen"
    assert run_train(tiny_bert, files, frozen, "--init-adapter", str(start), "--lr", "0").exit_code == 0
    before, after = adapter_tensors(start), adapter_tensors(frozen / "adapter")
    assert before.keys() == after.keys() and any("qa_outputs" in k for k in before)
    assert all(torch.equal(before[k], after[k]) for k in before)

    moved = tmp_path / "moved"
    result = run_train(tiny_bert, files, moved, "--init-adapter", str(start), "--lr", "1e-2", "--lora-r", "4")
    assert result.exit_code == 0, result.output
    trained = adapter_tensors(moved / "adapter")
    assert trained.keys() == before.keys() and not all(torch.equal(before[k], trained[k]) for k in before)
    manifest = json.loads((moved / "manifest.json").read_text())
    rank = json.loads((start / "adapter_config.json").read_text())["r"]
    assert rank != 4 and manifest["init_adapter"]["lora_r"] == rank
    assert manifest["init_adapter"]["path"] == str(start.resolve()) and manifest["init_adapter"]["steps"] == 2
    assert json.loads((moved / "adapter" / "adapter_config.json").read_text())["r"] == rank
    assert "--init-adapter" in (moved / "adapter" / "README.md").read_text()


def test_init_adapter_mistakes_are_named(trained_bert, tiny_bert, tiny_distilbert, files, tmp_path):
    assert "not an adapter directory" in run_train(tiny_bert, files, tmp_path / "a", "--init-adapter",
                                                   str(tmp_path)).output
    assert "--full-finetune" in run_train(tiny_bert, files, tmp_path / "b", "--init-adapter",
                                          str(trained_bert / "adapter"), "--full-finetune").output
    wrong_base = run_train(tiny_distilbert, files, tmp_path / "c", "--init-adapter", str(trained_bert / "adapter"))
    assert wrong_base.exit_code != 0 and "pass --model" in wrong_base.output


def test_saved_adapter_names_a_portable_base(files, tmp_path):
    """The default base is saved under its hub id, which the toolkit resolves to the offline package, never as
    this machine's path into site-packages; the shipped adapters hold no absolute path either."""
    from pathlib import Path

    from toolkit.config import DEFAULT_MODEL, DEFAULT_MODEL_HUB_ID

    result = run_train(DEFAULT_MODEL, files, tmp_path / "run")
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == DEFAULT_MODEL_HUB_ID
    assert modeling.resolve(DEFAULT_MODEL_HUB_ID) == modeling.resolve(DEFAULT_MODEL)
    shipped = list((Path(__file__).parent.parent / "models").glob("*/adapter/adapter_config.json"))
    assert shipped
    for config in [tmp_path / "run" / "adapter" / "adapter_config.json", *shipped]:
        values = [v for v in json.loads(config.read_text()).values() if isinstance(v, str)]
        assert not any(v.startswith("/") or ":\\" in v for v in values), config
