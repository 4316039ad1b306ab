"""The SQuAD 2.0 articles shipped in the package: loaded by name, checked on load, old '../shared' paths mapped to
them, and nothing in the repository that needs a folder beside the checkout."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from toolkit import data
from toolkit.config import QAConfig
from toolkit.data import builtin
from toolkit.exporting import merged

ROOT = Path(__file__).resolve().parents[1]
OLD_SLICE = "../shared/data/squad2-dev-slice.json"  # how runs before the data was built in named it


def load(spec: str, tmp_path: Path):
    return data.load_examples([spec], cache_dir=tmp_path, seed=42, limit=None, default_split="validation")


@pytest.mark.parametrize("name, questions, unanswerable, articles", [
    ("squad2-slice", 3710, 1908, 10), ("squad2-dev-train", 5795, 2777, 19), ("squad2-train-first10", 4719, 348, 10)])
def test_each_builtin_loads_by_name_with_its_counts(tmp_path, name, questions, unanswerable, articles):
    examples, [report] = load(name, tmp_path)
    assert len(examples) == questions and sum(e.is_impossible for e in examples) == unanswerable
    assert len({e.title for e in examples}) == articles
    assert report.sha256 == builtin.PACKAGED[name].sha256 and report.path.startswith(name)


def test_slice_splits_are_its_tuning_and_held_out_articles(tmp_path):
    tune, _ = load("squad2-slice?split=tune", tmp_path)
    held_out, _ = load("squad2-slice?split=heldout", tmp_path)
    by_articles, _ = load("squad2-slice?exclude-articles=Huguenot,European_Union_law,Yuan_dynasty", tmp_path)
    assert (len(tune), len(held_out)) == (1290, 2420)
    assert {e.title for e in tune} == {"Huguenot", "European_Union_law", "Yuan_dynasty"}
    assert [e.id for e in held_out] == [e.id for e in by_articles]
    sampled, _ = load("squad2-slice?split=heldout&samples=300", tmp_path)
    assert {e.id for e in sampled} <= {e.id for e in held_out} and len(sampled) == 300


@pytest.mark.parametrize("spec, message", [
    ("squad2-slice?split=dev", "no split 'dev'; its splits: tune, heldout"),
    ("squad2-slice?split=tune&articles=Warsaw", "give one"),
    ("squad2-dev-train?split=tune", "this source has none"),
])
def test_bad_splits_are_refused_by_name(tmp_path, spec, message):
    with pytest.raises(data.DataError, match=message):
        load(spec, tmp_path)


def test_split_of_a_file_is_refused(tmp_path, squad_file):
    with pytest.raises(data.DataError, match="this source has none"):
        load(f"{squad_file}?split=tune", tmp_path)


def test_a_changed_file_is_refused(tmp_path, monkeypatch):
    copy = tmp_path / "squad2"
    shutil.copytree(builtin.PACKAGED_DIR, copy)
    path = copy / builtin.PACKAGED["squad2-slice"].file
    path.write_text(path.read_text().replace("Normandy", "Normandie", 1))
    monkeypatch.setattr(builtin, "PACKAGED_DIR", copy)
    with pytest.raises(data.DataError, match="does not have its recorded sha256"):
        load("squad2-slice", tmp_path)


def test_an_old_shared_path_loads_the_builtin_where_it_is_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no ../shared beside it
    old, _ = load(f"{OLD_SLICE}?articles=Huguenot,European_Union_law,Yuan_dynasty", tmp_path)
    new, _ = load("squad2-slice?split=tune", tmp_path)
    assert [e.id for e in old] == [e.id for e in new]
    assert "reading the built-in 'squad2-slice'" in capsys.readouterr().err
    with pytest.raises(data.DataError, match="file not found"):  # any other missing file is still an error
        load("../shared/data/my-own.json", tmp_path)


def test_a_file_that_is_there_is_read_even_with_a_builtin_name(tmp_path, monkeypatch, squad_file):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "squad2-dev-slice.json").write_bytes(squad_file.read_bytes())
    examples, [report] = load("squad2-dev-slice.json", tmp_path)
    assert report.path == str(tmp_path / "squad2-dev-slice.json") and len(examples) < 100


def sources_named_by(path: Path) -> list[str]:
    """Every data source a config, training manifest or qa_config names."""
    record = json.loads(path.read_text())
    config = record.get("config", record)
    calibration = record.get("calibration") or {}
    specs = [*config.get("train_files", []), config.get("eval_file"), record.get("null_threshold_tuned_on"),
             calibration.get("fitted_on")]
    return [spec for spec in specs if spec]


def test_every_shipped_config_and_adapter_names_sources_that_resolve_anywhere():
    named = [*ROOT.glob("configs/*.json"), *ROOT.glob("models/*/train_config.json"),
             *ROOT.glob("models/*/adapter/qa_config.json")]
    manifests = [*ROOT.glob("models/*/adapter/manifest.json")]  # provenance: the paths they were run with
    packaged_files = {packaged.file for packaged in builtin.PACKAGED.values()}
    assert len(named) > 10 and len(manifests) == 3
    for path in named + manifests:
        for spec in sources_named_by(path):
            base, _ = data.parse_spec(spec)
            resolves = base in builtin.NAMES or (path in manifests and Path(base).name in packaged_files)
            assert resolves, f"{path.relative_to(ROOT)} names {spec}: not a built-in source"


def test_nothing_reads_a_folder_beside_the_checkout():
    """The grep of the issue that built the data in: a path outside the checkout in code, bench, the Makefile,
    docs, configs or a shipped adapter's settings is a machine-specific dependency."""
    places = ["toolkit", *map(str, ROOT.glob("bench/*.py")), "Makefile", "docs", "configs",
              *map(str, ROOT.glob("models/*/adapter/qa_config.json"))]
    found = subprocess.run(["grep", "-rln", "--exclude-dir=__pycache__", r"\.\./shared", *places], cwd=ROOT,
                           capture_output=True, text=True)
    assert found.returncode == 1, f"these name ../shared: {found.stdout}"


def test_export_calibrates_on_a_source_that_exists_when_the_recorded_one_is_gone(tokenizer, tmp_path, squad_file,
                                                                                  monkeypatch):
    monkeypatch.setattr(merged, "CALIBRATION_FALLBACK", str(squad_file))
    cfg = merged.ExportConfig(adapter="unused", variants=["fp32", "ov-int8"], calibration_samples=4)
    manifest = {"config": {"train_files": [str(tmp_path / "left-on-another-machine.json")]}}
    said = []
    spec, windows = merged.calibration(cfg, manifest, tokenizer, QAConfig(base_model="tiny", model_type="bert"), said.append)
    assert spec == str(squad_file) and len(windows) >= 4
    assert "left-on-another-machine.json" in said[0] and f"calibrated on {squad_file}" in said[0]
    asked = merged.ExportConfig(adapter="unused", variants=["fp32", "ov-int8"], calibration_file=str(tmp_path / "x.json"))
    with pytest.raises(data.DataError, match="file not found"):  # one the user named is never replaced
        merged.calibration(asked, manifest, tokenizer, QAConfig(base_model="tiny", model_type="bert"), said.append)
