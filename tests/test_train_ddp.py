"""Training on several processes (torchrun, DDP over gloo on CPU): the same global batch learns the same."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import TINY_TRAIN_FLAGS, _save_tiny


@pytest.fixture(scope="module")
def tiny_bert_no_dropout(tmp_path_factory, vocab_file):
    """Without dropout, so that two processes and one see exactly the same computation."""
    import torch
    from transformers import BertConfig, BertForQuestionAnswering, BertTokenizerFast

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    return _save_tiny(tmp_path_factory.mktemp("tiny-bert-nodrop"), BertForQuestionAnswering(config),
                      BertTokenizerFast(vocab_file=vocab_file))


def train(tmp_path, model, files, out, processes, *extra):
    """`qa-toolkit train` in `processes` processes (torchrun) or in one (plain interpreter)."""
    settings = tmp_path / "settings.json"  # deterministic: no LoRA dropout, batches not grouped by length
    settings.write_text(json.dumps({"lora_dropout": 0.0, "group_by_length": False, "lora_r": 4, "lora_alpha": 8}))
    flags = list(TINY_TRAIN_FLAGS)
    del flags[flags.index("--batch-size"):flags.index("--batch-size") + 2]
    flags[flags.index("--max-steps") + 1] = "6"
    args = ["-m", "toolkit.cli", "train", "--config", str(settings), "--model", str(model), "--train-file",
            str(files[0]), "--eval-file", str(files[1]), "--output-dir", str(out), "--lr", "5e-3",
            "--eval-batch-size", "1", *flags, *extra]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                "--master_port", str(29500 + os.getpid() % 1000)] if processes > 1 else [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(launcher + args, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def table(run_dir):
    return json.loads((run_dir / "manifest.json").read_text())["table"]


def test_two_processes_learn_like_one_with_the_same_global_batch(tiny_bert_no_dropout, files, tmp_path):
    """2 processes x batch 1 = 1 process x batch 1 x 2 accumulation steps, loss for loss: the same windows,
    padded the same way. Against 1 process x batch 2 the windows are padded together, and BERT's span loss
    also runs over padding positions, so training losses differ by a few percent; the weights stay close,
    which the eval loss (batch 1: no padding) shows."""
    model = tiny_bert_no_dropout
    single = train(tmp_path, model, files, tmp_path / "accumulated", 1, "--batch-size", "1", "--grad-accum", "2")
    train(tmp_path, model, files, tmp_path / "double", 1, "--batch-size", "2")
    two = tmp_path / "two"
    result = train(tmp_path, model, files, two, 2, "--batch-size", "1")
    assert result.stdout.count('"output_dir"') == single.stdout.count('"output_dir"') == 1  # one process reports
    a, b, d = table(tmp_path / "accumulated"), table(two), table(tmp_path / "double")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [r["step"] for r in d] == [2, 4, 6]
    for ra, rb, rd in zip(a, b, d):
        for key in ("train_loss", "val_loss"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-5), (ra["step"], key)
        assert rb["val_loss"] == pytest.approx(rd["val_loss"], rel=2e-3), ra["step"]
    assert a[-1]["val_loss"] < a[0]["val_loss"] - 0.05  # it learns: the comparison is not between two idle runs
    manifest = json.loads((two / "manifest.json").read_text())
    assert manifest["speed"]["processes"] == 2
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["checkpoint-4", "checkpoint-6"]
    assert (two / "adapter" / "adapter_model.safetensors").exists() and (two / "adapter" / "README.md").exists()

    resumed = train(tmp_path, model, files, two, 2, "--batch-size", "1", "--resume", "--max-steps", "8")
    assert resumed.stdout.count('"output_dir"') == 1
    manifest = json.loads((two / "manifest.json").read_text())
    assert manifest["resumed"] and [r["step"] for r in manifest["table"]] == [2, 4, 6, 8]
    assert manifest["table"][:3] == b
