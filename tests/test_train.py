import json

import pytest
from click.testing import CliRunner
from transformers import AlbertConfig, AlbertForQuestionAnswering, BertTokenizer

from tests.conftest import TINY_TRAIN_FLAGS, run_train
from toolkit import modeling
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
    assert qa.max_length == 64 and qa.doc_stride == 16


def test_adapter_reloads_with_the_trained_weights(trained_bert):
    model, tokenizer, qa = modeling.load_adapter(trained_bert / "adapter")
    trained_a = [p for n, p in model.named_parameters() if "lora_A" in n]
    assert trained_a and tokenizer.is_fast and qa.model_type == "bert"
    head = model.base_model.model.qa_outputs.modules_to_save["default"].weight
    assert head.abs().sum() > 0


def test_resume_continues_and_refuses_changed_settings(tiny_bert, files, tmp_path):
    run = tmp_path / "r"
    assert run_train(tiny_bert, files, run).exit_code == 0
    result = run_train(tiny_bert, files, run, "--resume", "--max-steps", "4")
    assert result.exit_code == 0, result.output
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["timing"]["global_step"] == 4 and manifest["resumed"]
    changed = run_train(tiny_bert, files, run, "--resume", "--lr", "1e-3")
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
