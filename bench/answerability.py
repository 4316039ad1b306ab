"""Does a verifier on the [CLS] vector decide "no answer" better than the null score (issue 19, item 3)?

    python bench/answerability.py [--train] [--steps 1500] [--weight 1.0] [--runs-dir models/compare]
                                  [--name answerability-cpu]

Rows, each continued from the shipped adapter (models/minilm-squad2-lora) like `make reference`'s second stage
(configs/reference-squad2.json, seed 43, --steps steps):
- the shipped adapter as is, and the control run trained without a verifier (`qa-toolkit train`, made by
  --train as RUNS/epoch2-plain);
- a frozen verifier on each: logistic regression on the final layer's [CLS] vectors of 2,500 questions of
  the 19 training articles, alone and combined with the null score;
- a verifier trained jointly (RUNS/epoch2-head): a linear head on [CLS] trained with the span loss plus
  --weight x binary cross-entropy on "this window holds the answer", alone and combined with the null score.
Combinations are logistic regressions on (null score difference, verifier logit) fitted on the 3 tuning
articles; every AUC is on the 7 held-out slice articles, per question (null_score_diff as served: min null
over windows - best span; a verifier: its largest "answer here" logit over the windows, negated). F1 is at
the threshold tuned (max F1) on the tuning articles. Writes bench/results/<name>/results.json and results.md.
"""

import argparse
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from transformers import DataCollatorWithPadding, TrainingArguments

from toolkit import data, modeling
from toolkit.benchmarking.results import machine_line, qa_command, stamp, write_results
from toolkit.benchmarking.sets import SLICE_HELDOUT, SLICE_TUNE
from toolkit.config import TrainConfig
from toolkit.features import build_features
from toolkit.inference.padding import batches, pad_batch
from toolkit.postprocess import Decoding, answer_all
from toolkit.scoring import best_null_threshold, no_answer_auc, squad_scores
from toolkit.training.run import build_model, load_data, save_model
from toolkit.training.trainer import QATrainer, precision

SETS = {"fit": ("squad2-dev-train", 2500), "tune": (SLICE_TUNE, None), "eval": (SLICE_HELDOUT, None)}
SHIPPED = "models/minilm-squad2-lora/adapter"
HEAD_FILE = "answerability.pt"


def recipe(steps: int, output_dir: Path) -> TrainConfig:
    settings = json.loads(Path("configs/reference-squad2.json").read_text())
    return TrainConfig(**{**settings, "init_adapter": SHIPPED, "seed": 43, "max_steps": steps,
                          "output_dir": str(output_dir)})


class JointTrainer(QATrainer):
    """The span loss plus weight x binary cross-entropy of the model's answerability head on [CLS]."""

    weight = 1.0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = model(**inputs, output_hidden_states=True)
        logit = model.answerability(out.hidden_states[-1][:, 0]).squeeze(-1).float()
        target = (inputs["start_positions"] != 0).float()  # the window holds the answer
        loss = out.loss + self.weight * torch.nn.functional.binary_cross_entropy_with_logits(logit, target)
        return (loss, out) if return_outputs else loss


def train_joint(cfg: TrainConfig, weight: float) -> None:
    """The control run's recipe with a jointly trained head; saves the adapter and the head's weights."""
    tokenizer = modeling.load_tokenizer(cfg.model)
    run_data = load_data(cfg, tokenizer)
    model, _ = build_model(cfg)
    model.answerability = torch.nn.Linear(model.config.hidden_size, 1)
    mixed = precision(cfg)
    args = TrainingArguments(
        output_dir=str(Path(cfg.output_dir) / "checkpoints"), seed=cfg.seed, learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size, max_steps=cfg.max_steps, warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay, bf16=mixed == "bf16", eval_strategy="no", save_strategy="no",
        logging_steps=100, label_names=["start_positions", "end_positions"], remove_unused_columns=False,
        group_by_length=cfg.group_by_length, report_to=[], dataloader_num_workers=0, use_cpu=True)
    JointTrainer.weight = weight
    trainer = JointTrainer(model=model, args=args, train_dataset=run_data.train_features.rows(),
                           data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8))
    trainer.train()
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    adapter = save_model(model, tokenizer, cfg, threshold=0.0, tuned_on="", calibration=None, out=Path(cfg.output_dir))
    torch.save(model.answerability.state_dict(), adapter / HEAD_FILE)


@dataclass
class Scores:
    """Per question of one set: null_score_diff, best span, [CLS] vector (mean over windows), verifier
    logit (max over windows; None without a head), and whether it is unanswerable."""
    diff: np.ndarray
    spans: list[str]
    cls: np.ndarray
    head: np.ndarray | None
    unanswerable: np.ndarray
    references: dict
    ids: list[str]


def question_scores(adapter: Path, spec: str, samples: int | None) -> Scores:
    model, tokenizer, qa = modeling.load_adapter(adapter)
    model = model.merge_and_unload().eval()
    head = None
    if (adapter / HEAD_FILE).exists():
        head = torch.nn.Linear(model.config.hidden_size, 1)
        head.load_state_dict(torch.load(adapter / HEAD_FILE, weights_only=True))
    examples, _ = data.load_examples([spec], cache_dir=data.default_cache_dir(), seed=42,
                                     limit=samples, default_split="validation")
    features = build_features(tokenizer, [e.question for e in examples], [e.context for e in examples], qa.features())
    lengths = [len(ids) for ids in features.inputs["input_ids"]]
    start, end, cls, verifier = [None] * len(features), [None] * len(features), [None] * len(features), np.zeros(len(features))
    with torch.inference_mode():
        for rows in batches(lengths, 16, 8192):
            batch = {k: torch.from_numpy(v) for k, v in pad_batch(features, rows, tokenizer.pad_token_id).items()}
            out = model(**batch, output_hidden_states=True)
            last = out.hidden_states[-1][:, 0]
            logits = head(last).squeeze(-1).numpy() if head is not None else np.zeros(len(rows))
            for r, i in enumerate(rows):
                start[i], end[i] = out.start_logits[r, :lengths[i]].numpy(), out.end_logits[r, :lengths[i]].numpy()
                cls[i], verifier[i] = last[r].numpy(), logits[r]
    answers = answer_all([e.context for e in examples], features.example_index, features.offsets, start, end,
                         Decoding(n_best=qa.n_best, max_answer_length=qa.max_answer_length, null_threshold=0.0),
                         features.words)
    n = len(examples)
    mean_cls, counts, best = np.zeros((n, len(cls[0]))), np.zeros(n), np.full(n, -np.inf)
    for i, q in enumerate(features.example_index):
        mean_cls[q] += cls[i]
        counts[q] += 1
        best[q] = max(best[q], verifier[i])
    return Scores(np.array([min(a.null_score_diff, 1e3) for a in answers]), [a.best_span_text for a in answers],
                  mean_cls / counts[:, None], -best if head is not None else None,
                  np.array([e.is_impossible for e in examples]), data.references(examples), [e.id for e in examples])


def decision(tune: Scores, ev: Scores, tune_score: np.ndarray, eval_score: np.ndarray) -> dict:
    """AUC on the held-out set, and EM/F1 there at the threshold that maximises F1 on the tuning set."""
    chosen = best_null_threshold(dict(zip(tune.ids, tune.spans)), dict(zip(tune.ids, tune_score)), tune.references)
    predictions = {q: "" if s > chosen.threshold else span for q, s, span in zip(ev.ids, eval_score, ev.spans)}
    scores = squad_scores(predictions, ev.references)
    return {"auc": no_answer_auc(dict(zip(ev.ids, eval_score)), ev.references), "exact": scores["exact"],
            "f1": scores["f1"], "HasAns_f1": scores.get("HasAns_f1"), "NoAns_exact": scores.get("NoAns_exact")}


def combined(tune: Scores, ev: Scores, tune_v: np.ndarray, eval_v: np.ndarray) -> dict:
    """Null score difference and a verifier score, weighted by a logistic regression fitted on the tuning set."""
    fit = LogisticRegression().fit(np.c_[tune.diff, tune_v], tune.unanswerable)
    row = decision(tune, ev, fit.decision_function(np.c_[tune.diff, tune_v]), fit.decision_function(np.c_[ev.diff, eval_v]))
    return {**row, "weights": fit.coef_[0].tolist()}


def rows_for(label: str, adapter: Path) -> list[dict]:
    sets = {name: question_scores(adapter, spec, samples) for name, (spec, samples) in SETS.items()}
    fit, tune, ev = sets["fit"], sets["tune"], sets["eval"]
    probe = LogisticRegression(C=0.1, max_iter=3000).fit(fit.cls, fit.unanswerable)
    out = [{"model": label, "decision": "null score (served today)", **decision(tune, ev, tune.diff, ev.diff)},
           {"model": label, "decision": "frozen [CLS] verifier alone",
            **decision(tune, ev, probe.decision_function(tune.cls), probe.decision_function(ev.cls))},
           {"model": label, "decision": "null score + frozen [CLS] verifier",
            **combined(tune, ev, probe.decision_function(tune.cls), probe.decision_function(ev.cls))}]
    if ev.head is not None:
        out += [{"model": label, "decision": "joint verifier alone", **decision(tune, ev, tune.head, ev.head)},
                {"model": label, "decision": "null score + joint verifier", **combined(tune, ev, tune.head, ev.head)}]
    for row in out:
        print(json.dumps(row), flush=True)
    return out


def markdown(results: dict) -> str:
    lines = [f"# {results['name']}", "", machine_line(results), "",
             f"Verifiers on [CLS] against the null score; {results['steps']} steps each from the shipped adapter, "
             f"joint loss weight {results['weight']}. AUC, EM/F1, HasAns F1 and NoAns accuracy on the 7 held-out "
             "slice articles (2,420 questions), threshold tuned on the 3 tuning articles.", "",
             "| model | decision | no-answer AUC | EM | F1 | HasAns F1 | NoAns acc |", "|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        lines.append(f"| {r['model']} | {r['decision']} | {r['auc']:.2f} | {r['exact']:.2f} | {r['f1']:.2f} | "
                     f"{r['HasAns_f1']:.2f} | {r['NoAns_exact']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", action="store_true", help="train the missing runs first")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--weight", type=float, default=1.0)
    parser.add_argument("--runs-dir", default="models/compare")
    parser.add_argument("--results-dir", default="bench/results")
    parser.add_argument("--name", default="answerability-cpu")
    args = parser.parse_args()
    runs = Path(args.runs_dir)
    plain, joint = runs / "epoch2-plain", runs / "epoch2-head"
    if args.train and not (plain / "manifest.json").exists():
        cfg = recipe(args.steps, plain)
        subprocess.run([*qa_command(), "train", "--config", "configs/reference-squad2.json", "--init-adapter", SHIPPED,
                        "--seed", str(cfg.seed), "--max-steps", str(args.steps), "--eval-steps", "500",
                        "--output-dir", str(plain)], check=True)
    if args.train and not (joint / "adapter" / HEAD_FILE).exists():
        train_joint(recipe(args.steps, joint), args.weight)
    rows = rows_for("shipped adapter", Path(SHIPPED))
    rows += rows_for(f"continued {args.steps} steps, no verifier", plain / "adapter")
    rows += rows_for(f"continued {args.steps} steps, joint verifier", joint / "adapter")
    results = {**stamp(args.name, torch.get_num_threads()), "steps": args.steps, "weight": args.weight, "rows": rows}
    print(write_results(args.results_dir, results, markdown(results)))


if __name__ == "__main__":
    main()
