"""Questions and contexts -> token windows ("features"), the one path for training, eval and serving.

A long context is split into windows of at most ``max_length`` tokens that overlap by
``doc_stride`` tokens; each window keeps, per token, its character span in the context (None for
question and special tokens) so that logits can be mapped back to context text. With answers given,
each window also gets start/end token labels ([CLS] = position 0 when the answer is not inside it).
"""

from dataclasses import dataclass, field

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class FeatureConfig:
    max_length: int = 384
    doc_stride: int = 128
    max_question_tokens: int = 64


@dataclass
class Features:
    inputs: dict[str, list[list[int]]]  # model inputs, one list of ids per window, unpadded
    example_index: list[int]  # which question each window belongs to
    offsets: list[list[tuple[int, int] | None]]
    words: list[list[int | None]] = field(default_factory=list)  # per token: its word in the context, None outside
    start_positions: list[int] = field(default_factory=list)  # labels, when answers were given
    end_positions: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.example_index)

    def rows(self) -> list[dict[str, list[int] | int]]:
        """One dict per window with the model inputs and, when present, the labels."""
        out = []
        for i in range(len(self)):
            row = {name: ids[i] for name, ids in self.inputs.items()}
            if self.start_positions:
                row["start_positions"] = self.start_positions[i]
                row["end_positions"] = self.end_positions[i]
            out.append(row)
        return out


def check_config(cfg: FeatureConfig, special_tokens: int = 3) -> None:
    """special_tokens: what the tokenizer adds to a pair (3 for BERT's [CLS] q [SEP] c [SEP], 4 for MPNet's and
    RoBERTa's <s> q </s></s> c </s>: tokenizer.num_special_tokens_to_add(pair=True))."""
    room = cfg.max_length - cfg.max_question_tokens - special_tokens
    if room <= 0 or cfg.doc_stride >= room:
        raise ValueError(
            f"doc_stride ({cfg.doc_stride}) must be smaller than max_length ({cfg.max_length}) - "
            f"max_question_tokens ({cfg.max_question_tokens}) - {special_tokens} special tokens = {room}")


def question_lengths(tokenizer, questions: list[str]) -> list[int]:
    return token_counts(tokenizer, [q.lstrip() for q in questions])


def token_counts(tokenizer, texts: list[str]) -> list[int]:
    """Tokens of each text alone. verbose=False: a text longer than the model's window is not an error here
    (it is windowed), so transformers' "sequence length is longer than" warning would mislead."""
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]]


def build_features(tokenizer, questions: list[str], contexts: list[str], cfg: FeatureConfig,
                   answers: list[tuple[int, str] | None] | None = None) -> Features:
    """Tokenise question/context pairs into windows; ``answers`` (char start, text) adds labels.

    Callers must first reject questions longer than ``cfg.max_question_tokens`` (question_lengths).
    """
    if tokenizer.padding_side != "right":
        raise ValueError("the tokenizer must pad on the right (question first, then context)")
    enc = tokenizer([q.lstrip() for q in questions], contexts, truncation="only_second",
                    max_length=cfg.max_length, stride=cfg.doc_stride, return_overflowing_tokens=True,
                    return_offsets_mapping=True, padding=False)
    names = [n for n in MODEL_INPUTS if n in tokenizer.model_input_names and n in enc]
    feats = Features(inputs={n: enc[n] for n in names}, example_index=list(enc["overflow_to_sample_mapping"]),
                     offsets=[])
    for i, offsets in enumerate(enc["offset_mapping"]):
        sequence_ids = enc.sequence_ids(i)
        window = [tuple(o) if s == 1 else None for o, s in zip(offsets, sequence_ids)]
        feats.offsets.append(window)
        feats.words.append([w if s == 1 else None for w, s in zip(enc.word_ids(i), sequence_ids)])
        if answers is not None:
            start, end = _label(window, answers[feats.example_index[i]])
            feats.start_positions.append(start)
            feats.end_positions.append(end)
    return feats


def _label(window: list[tuple[int, int] | None], answer: tuple[int, str] | None) -> tuple[int, int]:
    """Token start/end of the answer in this window, or (0, 0) when it is not wholly inside."""
    if answer is None:
        return 0, 0
    start_char, text = answer
    end_char = start_char + len(text)
    context_tokens = [i for i, o in enumerate(window) if o is not None]
    if not context_tokens:
        return 0, 0
    first, last = context_tokens[0], context_tokens[-1]
    if window[first][0] > start_char or window[last][1] < end_char:
        return 0, 0
    start = first
    while start <= last and window[start][1] <= start_char:
        start += 1
    end = last
    while end >= first and window[end][0] >= end_char:
        end -= 1
    return start, end
