"""AnswerOptions: what a caller may ask of one answer, the parameters of Hugging Face's question-answering task,
parsed once from wherever they come (an HTTP body, a serve-batch line or its flags, a Python call) and handed
to the engine whole. Each is honoured, or refused with the reason (OptionError); none is ignored.

    top_k                     answers per question: the decision first, then the next best distinct spans
    max_answer_len            tokens in an answer (default: the model's, 30)
    handle_impossible_answer  false: always the best span, never "no answer" (default true: the tuned threshold)
    doc_stride                tokens shared by two windows of a long context (default: the model's, 128)
    max_seq_len               tokens in a window, question included (default: the model's, 384; at most what
                              the model's position embeddings take)
    max_question_len          tokens in a question; a longer one is refused, not truncated (default: 64)
    align_to_words            widen a span that starts or ends inside a word to whole words (default true)
"""

import dataclasses
from dataclasses import dataclass

from toolkit.config import QAConfig
from toolkit.features import FeatureConfig, check_config
from toolkit.postprocess import Decoding

MAX_TOP_K = 20  # the post-processor searches 20 start x 20 end tokens per window

# name -> (type, smallest value); ints are bounded above by the model where they are tokens.
HF_PARAMETERS = {"top_k": (int, 1), "max_answer_len": (int, 1), "handle_impossible_answer": (bool, None),
                 "doc_stride": (int, 1), "max_seq_len": (int, 16), "max_question_len": (int, 1),
                 "align_to_words": (bool, None)}


def json_type(value) -> str:
    """A JSON value's type as JSON names it (null, not NoneType)."""
    return {type(None): "null", bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(value), type(value).__name__)


class OptionError(ValueError):
    """An option that cannot be honoured for this model or request; the message names it and says why."""


@dataclass(frozen=True)
class AnswerOptions:
    top_k: int = 1
    max_answer_len: int | None = None  # None: the model's max_answer_length
    handle_impossible_answer: bool = True
    no_answer_threshold: float | None = None  # null_score_diff above it: no answer; None: the model's tuned one
    doc_stride: int | None = None  # None: the model's
    max_seq_len: int | None = None
    max_question_len: int | None = None
    align_to_words: bool = True

    def with_parameters(self, parameters: dict) -> "AnswerOptions":
        """These options with HF parameters (a decoded JSON object) laid over them, each type-checked; JSON null
        is the default, as the transformers pipeline reads None."""
        unknown = sorted(set(parameters) - set(HF_PARAMETERS))
        if unknown:
            raise OptionError(f"unknown parameter(s) {unknown}; known: {sorted(HF_PARAMETERS)}")
        try:
            return dataclasses.replace(self, **{k: v for k, v in parameters.items() if v is not None})
        except OptionError as e:
            raise OptionError(f"parameter {e}") from None

    def __post_init__(self):
        for name, (kind, low) in HF_PARAMETERS.items():
            value = getattr(self, name)
            if value is None:
                continue
            if kind is bool and not isinstance(value, bool) or kind is int and (
                    not isinstance(value, int) or isinstance(value, bool)):
                raise OptionError(f"'{name}' must be {'true or false' if kind is bool else 'an integer'}, "
                                  f"got {json_type(value)}")
            if low is not None and value < low:
                raise OptionError(f"'{name}' must be at least {low}, got {value}")
        if self.top_k > MAX_TOP_K:
            raise OptionError(f"'top_k' must be at most {MAX_TOP_K}, got {self.top_k}")

    def features(self, qa: QAConfig, max_positions: int, special_tokens: int = 3) -> FeatureConfig:
        """The windows these options ask for, on a model whose windows take at most max_positions tokens, of
        which special_tokens are the tokenizer's own."""
        max_length = self.max_seq_len or qa.max_length
        if max_length > max_positions:
            raise OptionError(f"max_seq_len {max_length} is over the {max_positions} tokens this model's "
                              "position embeddings take")
        question = self.max_question_len or qa.max_question_tokens
        room = max_length - question - special_tokens
        if room <= 0:
            raise OptionError(f"max_seq_len {max_length} leaves no room for the context after max_question_len "
                              f"{question} (+{special_tokens} special tokens); lower max_question_len or raise max_seq_len")
        # The model's stride, lowered to half the room when a shorter window leaves less (as the pipeline does).
        stride = self.doc_stride or min(qa.doc_stride, room // 2)
        config = FeatureConfig(max_length, stride, question)
        try:
            check_config(config, special_tokens)
        except ValueError as e:
            raise OptionError(str(e)) from None
        return config

    def decoding(self, qa: QAConfig, calibration) -> Decoding:
        threshold = qa.null_threshold if self.no_answer_threshold is None else self.no_answer_threshold
        return Decoding(n_best=qa.n_best, max_answer_length=self.max_answer_len or qa.max_answer_length,
                        null_threshold=threshold if self.handle_impossible_answer else float("inf"),
                        top_k=self.top_k, align_to_words=self.align_to_words, calibration=calibration)


DEFAULT_OPTIONS = AnswerOptions()
