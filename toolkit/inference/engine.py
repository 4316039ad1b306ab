"""The engine: questions and contexts in, answers out, for one model or for several adapters of one base.

Features (token windows) are built once per request batch, their logits computed in length-bucketed
batches by the chosen model's predictor, and post-processed into one answer per question.
"""

import dataclasses
from dataclasses import dataclass, field

from toolkit.config import QAConfig
from toolkit.features import Features, build_features
from toolkit.inference.batching import BatchSettings, Stopwatch, feature_logits
from toolkit.inference.predictors import EngineError, Predictor
from toolkit.postprocess import Answer, answer_all

SINGLE = ""  # the name a single model is served under: requests cannot name it


@dataclass
class Served:
    """One model an engine answers with: its predictor, its settings (windows, n-best, no-answer threshold)
    and where its weights came from (what a resumed job must find again)."""
    predictor: Predictor
    qa: QAConfig
    source: dict = field(default_factory=dict)


class Engine:
    """Tokenizer + one Served model per adapter name + post-processing. A single model is served under
    SINGLE; several adapters of one base under their names, one of them the default for requests naming none.
    A request is answered by one model only: adapters are never mixed in a batch."""

    def __init__(self, models: dict[str, Served], tokenizer, settings: BatchSettings | None = None,
                 default: str | None = None):
        if not models:
            raise EngineError("an engine needs at least one model")
        self.models = models
        self.tokenizer = tokenizer
        self.settings = settings or BatchSettings()
        self.default = next(iter(models)) if default is None else default
        if self.default not in models:
            raise EngineError(f"--default-adapter '{self.default}' is not among the adapters {list(models)}")

    @classmethod
    def single(cls, predictor: Predictor, tokenizer, qa: QAConfig, settings: BatchSettings | None = None,
               source: dict | None = None) -> "Engine":
        return cls({SINGLE: Served(predictor, qa, source or {})}, tokenizer, settings)

    @property
    def adapters(self) -> list[str]:
        """The adapter names a request may pick; empty for a single model."""
        return [] if SINGLE in self.models else list(self.models)

    def resolve(self, adapter: str | None) -> str:
        """The name of the model answering a request that names this adapter (None: the default)."""
        if adapter is None:
            return self.default
        if SINGLE in self.models:
            raise EngineError(f"unknown adapter '{adapter}': this model serves no adapters")
        if adapter not in self.models:
            raise EngineError(f"unknown adapter '{adapter}' (served: {', '.join(self.models)})")
        return adapter

    def served(self, adapter: str | None = None) -> Served:
        return self.models[self.resolve(adapter)]

    @property
    def source(self) -> dict:
        if SINGLE in self.models:
            return self.models[SINGLE].source
        return {"default": self.default, "adapters": {name: s.source for name, s in self.models.items()}}

    def with_threshold(self, threshold: float | None) -> "Engine":
        """This engine answering with one no-answer threshold instead of each model's tuned one (None: tuned)."""
        if threshold is not None:
            for served in self.models.values():
                served.qa = dataclasses.replace(served.qa, null_threshold=threshold)
        return self

    def features(self, questions: list[str], contexts: list[str], adapter: str | None = None) -> Features:
        return build_features(self.tokenizer, questions, contexts, self.served(adapter).qa.features())

    def run(self, contexts: list[str], features: Features, adapter: str | None = None,
            watch: Stopwatch | None = None, threshold: float | None = None):
        """(answers, start logits, end logits) for the features of these contexts; stage times go to watch.
        threshold replaces the model's no-answer threshold for these answers (None: the model's)."""
        served = self.served(adapter)
        watch = watch or Stopwatch()
        with watch("infer"):
            start, end = feature_logits(served.predictor, features, self.tokenizer.pad_token_id, self.settings)
        watch.windows += len(features)
        with watch("postprocess"):
            qa = served.qa
            answers = answer_all(contexts, features.example_index, features.offsets, start, end, qa.n_best,
                                 qa.max_answer_length, qa.null_threshold if threshold is None else threshold)
        return answers, start, end

    def answer(self, questions: list[str], contexts: list[str], adapter: str | None = None,
               watch: Stopwatch | None = None, threshold: float | None = None) -> list[Answer]:
        """One answer per question, in order, with its best span, confidences and no-answer decision."""
        if len(questions) != len(contexts):
            raise ValueError(f"{len(questions)} questions but {len(contexts)} contexts")
        if not questions:
            return []
        watch = watch or Stopwatch()
        with watch("tokenise"):
            features = self.features(questions, contexts, adapter)
        return self.run(contexts, features, adapter, watch, threshold)[0]
