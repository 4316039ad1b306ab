"""qa-toolkit: extractive question answering end to end.

The few names an application needs; everything else is internal by convention::

    import toolkit

    qa = toolkit.load("models/minilm-squad2-lora/adapter")  # or an export's onnx/ directory
    answer = qa.answer("Where is the Eiffel Tower?", "The Eiffel Tower is in Paris, France.")
    print(answer.text, answer.confidence, answer.no_answer_probability, answer.no_answer)
    top3 = qa.answer("Where is it?", "...", options=toolkit.AnswerOptions(top_k=3)).alternatives

Layers (each imports only the ones before it): config, features, postprocess, scoring, data, runtime,
modeling -> inference -> training, exporting, serving -> benchmarking -> cli.
"""

from toolkit.config import TrainConfig
from toolkit.options import AnswerOptions
from toolkit.postprocess import Answer, Span

__all__ = ["Answer", "AnswerOptions", "Span", "TrainConfig", "export", "load", "score", "train"]


def load(model: str | None = None, **options):
    """An Engine answering questions with a trained or exported model.

    model: an export's onnx/ directory (ONNX Runtime, the export's default variant for this device), an
    `export --adapters` directory, or an adapter/merged model directory (PyTorch). options are EngineSpec's:
    adapters={name: dir} instead of model, engine, device, variant, default_adapter, batch_size,
    max_batch_tokens, threads, no_answer_threshold (None: the tuned one; float("inf"): always the best span).
    engine.answer(questions, contexts, adapter=None, options=AnswerOptions(...)) returns one toolkit.Answer per
    question (one Answer for a question and a context given as strings)."""
    from toolkit.inference import EngineSpec, load_engine

    return load_engine(EngineSpec(model=None if model is None else str(model), **options))


def train(config: TrainConfig, resume: bool = False) -> dict:
    """Fine-tune (LoRA by default) as `qa-toolkit train` does; returns the run manifest (scores, timing, paths)."""
    from toolkit.training import train as run

    return run(config, resume=resume)


def export(adapter: str | None = None, **settings) -> dict:
    """Merge an adapter (or, with merge=False and model=..., take a merged model) and export it to ONNX variants,
    each gated on parity with PyTorch, as `qa-toolkit export --merge` does; returns the export manifest.
    settings are ExportConfig's: output_dir, variants, eval_file, eval_samples, max_drop, overwrite, ..."""
    from toolkit.exporting import ExportConfig
    from toolkit.exporting import export as run

    return run(ExportConfig(adapter=adapter, **settings))


def score(answers_path: str, references: str, best_span: bool = False) -> dict:
    """Official SQuAD EM/F1 (HasAns/NoAns, no-answer AUC) of a serve-batch output file against a source
    (a SQuAD file, squad-v1.1-dev, ...), as `qa-toolkit score` does."""
    from toolkit import data
    from toolkit.scoring import score_answer_file

    examples, _ = data.load_examples([references], cache_dir=data.default_cache_dir(), seed=42,
                                     limit=None, default_split="validation")
    return score_answer_file(answers_path, data.references(examples), best_span)
