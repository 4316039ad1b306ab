"""The engine: questions and contexts in, answers out, for one model or for several adapters of one base.

Features (token windows) are built once per request batch, their logits computed in length-bucketed
batches by the chosen model's predictor, and post-processed into one answer per question.
"""

import dataclasses
import threading
from dataclasses import dataclass, field

from toolkit.calibration import from_config
from toolkit.config import QAConfig
from toolkit.features import FeatureConfig, Features, build_features, question_lengths, token_counts
from toolkit.inference.padding import BatchSettings, Stopwatch, feature_logits
from toolkit.inference.predictors import EngineError, Predictor
from toolkit.options import DEFAULT_OPTIONS, AnswerOptions, OptionError
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
        # A fast tokenizer switches its truncation settings per call (counting tokens vs windowing): two threads
        # doing so at once get the Rust side's "Already borrowed". Every tokenizer call of the engine holds this.
        self.tokenizing = threading.Lock()
        self.settings = settings or BatchSettings()
        self.default = next(iter(models)) if default is None else default
        if self.default not in models:
            raise EngineError(f"--default-adapter '{self.default}' is not among the adapters {list(models)}")

    @classmethod
    def single(cls, predictor: Predictor, tokenizer, qa: QAConfig, *, settings: BatchSettings | None = None,
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

    @property
    def max_positions(self) -> int:
        """Tokens a window may hold: the tokenizer's model_max_length (the position embeddings' size)."""
        limit = self.tokenizer.model_max_length
        return limit if 0 < limit < 1_000_000 else 512

    def feature_config(self, options: AnswerOptions, adapter: str | None = None) -> FeatureConfig:
        """The windows options ask for on this model; OptionError when the model cannot take them."""
        return options.features(self.served(adapter).qa, self.max_positions,
                                self.tokenizer.num_special_tokens_to_add(pair=True))

    def features(self, questions: list[str], contexts: list[str], adapter: str | None = None,
                 options: AnswerOptions = DEFAULT_OPTIONS) -> Features:
        windows = self.feature_config(options, adapter)
        with self.tokenizing:
            return build_features(self.tokenizer, questions, contexts, windows)

    def question_lengths(self, questions: list[str]) -> list[int]:
        with self.tokenizing:
            return question_lengths(self.tokenizer, questions)

    def token_counts(self, texts: list[str]) -> list[int]:
        with self.tokenizing:
            return token_counts(self.tokenizer, texts)

    def run(self, contexts: list[str], features: Features, adapter: str | None = None,
            watch: Stopwatch | None = None, options: AnswerOptions = DEFAULT_OPTIONS):
        """(answers, start logits, end logits) for the features of these contexts; stage times go to watch."""
        served = self.served(adapter)
        watch = watch or Stopwatch()
        with watch("infer"):
            start, end = feature_logits(served.predictor, features, self.tokenizer.pad_token_id, self.settings)
        watch.windows += len(features)
        with watch("postprocess"):
            decoding = options.decoding(served.qa, from_config(served.qa.calibration))
            answers = answer_all(contexts, features.example_index, features.offsets, start, end, decoding,
                                 features.words)
        return answers, start, end

    def oversized(self, questions: list[str], contexts: list[str], max_question_tokens: int,
                  max_context_tokens: int | None = None) -> list[str | None]:
        """Why each question cannot be answered for its size (None when it can): a question over
        max_question_tokens, a context over max_context_tokens. A context of at most max_context_tokens UTF-8
        bytes cannot have more tokens, so only longer ones are tokenised."""
        problems: list[str | None] = [None] * len(questions)
        for i, n in enumerate(self.question_lengths(questions)):
            if n > max_question_tokens:
                problems[i] = f"question too long: {n} tokens (at most {max_question_tokens}; see max_question_len)"
        if max_context_tokens:
            suspects = [i for i, c in enumerate(contexts) if problems[i] is None
                        and len(c.encode("utf-8")) > max_context_tokens]
            for i, n in zip(suspects, self.token_counts([contexts[i] for i in suspects])):
                if n > max_context_tokens:
                    problems[i] = (f"context too long: {n} tokens (at most {max_context_tokens}; "
                                   "see --max-context-tokens)")
        return problems

    def answer_each(self, questions: list[str], contexts: list[str], *, adapter: str | None = None,
                    watch: Stopwatch | None = None, options: AnswerOptions = DEFAULT_OPTIONS,
                    max_context_tokens: int | None = None) -> list[Answer | OptionError]:
        """One result per question, in order: its Answer, or the OptionError saying why its size cannot be
        answered (oversized). Each question is checked once; the others are answered together."""
        _check_inputs(questions, contexts)
        watch = watch or Stopwatch()
        with watch("tokenise"):
            limit = self.feature_config(options, adapter).max_question_tokens
            results: list = [OptionError(p) if p else None
                              for p in self.oversized(questions, contexts, limit, max_context_tokens)]
            keep = [i for i, r in enumerate(results) if r is None]
            if not keep:
                return results
            features = self.features([questions[i] for i in keep], [contexts[i] for i in keep], adapter, options)
        answers = self.run([contexts[i] for i in keep], features, adapter, watch, options)[0]
        for i, a in zip(keep, answers):
            results[i] = a
        return results

    def answer(self, questions: list[str] | str, contexts: list[str] | str, *, adapter: str | None = None,
               watch: Stopwatch | None = None, options: AnswerOptions = DEFAULT_OPTIONS) -> list[Answer] | Answer:
        """One answer per question, in order, with its best span, probabilities and no-answer decision; one
        Answer for one question and context given as strings. options: top_k, max_answer_len, ... (AnswerOptions).
        Raises ValueError for an empty question or context, OptionError for options the model cannot take or a
        question over max_question_len."""
        if isinstance(questions, str) != isinstance(contexts, str):
            raise TypeError("give questions and contexts both as strings or both as lists of strings")
        if isinstance(questions, str):
            return self.answer([questions], [contexts], adapter=adapter, watch=watch, options=options)[0]
        results = self.answer_each(questions, contexts, adapter=adapter, watch=watch, options=options)
        failed = next((i for i, r in enumerate(results) if isinstance(r, OptionError)), None)
        if failed is not None:
            raise OptionError(f"question {failed}: {results[failed]}")
        return results


def _check_inputs(questions: list[str], contexts: list[str]) -> None:
    if len(questions) != len(contexts):
        raise ValueError(f"{len(questions)} questions but {len(contexts)} contexts")
    for i, (q, c) in enumerate(zip(questions, contexts)):
        if not isinstance(q, str) or not isinstance(c, str):
            raise TypeError(f"question and context {i} must be strings, got {type(q).__name__} and {type(c).__name__}")
        if not q.strip() or not c.strip():
            raise ValueError(f"question {i} has an empty {'question' if not q.strip() else 'context'}")
