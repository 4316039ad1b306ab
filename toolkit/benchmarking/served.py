"""An export served and scored the way the recorded comparisons do it: serve-batch with the export's default CPU
variant over each set, each output file scored with `qa-toolkit score` (v1.1 sets: best span)."""

from pathlib import Path

from toolkit import data, load
from toolkit.benchmarking.sets import SLICE_HELDOUT, V11_DEV_29
from toolkit.scoring import score_answer_file
from toolkit.serving import serve_batch


def held_out_sets(v11_samples: int | None) -> dict[str, str]:
    """The 7 held-out slice articles and SQuAD v1.1 dev without the 19 training articles (a seeded subset of it)."""
    return {"slice-heldout": SLICE_HELDOUT, "v1.1-dev-29": V11_DEV_29 + (f"&samples={v11_samples}" if v11_samples else "")}


def work_dir(name: str) -> Path:
    """models/<name>-work: where a comparison's questions and answer files go (git-ignored)."""
    work = Path("models") / f"{name}-work"
    work.mkdir(parents=True, exist_ok=True)
    return work


def serve_and_score(export: Path, name: str, sets: dict[str, str], work: Path) -> dict:
    """Answers every set with export's default CPU variant into work/<name>-<set>.answers.jsonl and scores them."""
    engine = load(export / "onnx", device="cpu")
    out = {"export": str(export), "variant": engine.served().predictor.variant}
    for set_name, source in sets.items():
        examples, _ = data.load_examples([source], cache_dir=data.default_cache_dir(), seed=42,
                                         limit=None, default_split="validation")
        questions = work / f"{set_name}.jsonl"
        if not questions.exists():
            data.write_jsonl(examples, questions)
        answers = work / f"{name}-{set_name}.answers.jsonl"
        summary = serve_batch(engine, str(questions), str(answers), progress=False)
        scores = score_answer_file(str(answers), data.references(examples), best_span=set_name.startswith("v1.1"))
        out[set_name] = {"questions": len(examples), "questions_per_second": summary.questions_per_second,
                         **{k: scores.get(k) for k in ("exact", "f1", "HasAns_f1", "NoAns_f1", "no_answer_auc")},
                         "no_answer_ece": scores.get("calibration", {}).get("no_answer_ece"),
                         "score_ece": scores.get("calibration", {}).get("score_ece")}
        print(name, set_name, out[set_name], flush=True)
    return out
