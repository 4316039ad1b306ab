"""SQuAD-format records -> validated Examples: the nested (v1.1/v2.0 .json) and flat (.jsonl) forms, answers
checked against their contexts; and Examples back to flat JSONL and references for scoring."""

import json
from dataclasses import dataclass, field
from pathlib import Path


class DataError(ValueError):
    """A source or record that cannot be used; the message names the source and the problem."""


@dataclass
class Example:
    id: str
    question: str
    context: str
    answer_texts: list[str] = field(default_factory=list)  # [] = unanswerable
    answer_starts: list[int] = field(default_factory=list)
    title: str = ""

    @property
    def is_impossible(self) -> bool:
        return not self.answer_texts


@dataclass
class SourceReport:
    spec: str
    path: str  # the file read, or the hub dataset name
    sha256: str | None  # of the file read; None for a hub dataset
    examples: int  # kept after selection and validation
    answerable: int
    mismatched_answers: int  # answers whose text is not the context at answer_start (dropped)
    dropped_examples: int  # answerable records left without a valid answer (not used)
    dropped_ids: list[str] = field(default_factory=list)
    synthetic_negatives: dict[str, int] = field(default_factory=dict)  # kind -> questions added
    repeat: int = 1  # times the selected questions are used (examples counts every copy)


def _require(record: dict, key: str, kind: type, where: str):
    if key not in record:
        raise DataError(f"{where}: missing field '{key}'")
    value = record[key]
    if not isinstance(value, kind):
        names = "/".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__
        raise DataError(f"{where}: field '{key}' must be {names}, got {type(value).__name__}")
    return value


def _from_nested(data: dict, where: str) -> list[Example]:
    articles = _require(data, "data", list, where)
    examples = []
    for a, article in enumerate(articles):
        title = article.get("title", "")
        for p, paragraph in enumerate(_require(article, "paragraphs", list, f"{where} data[{a}]")):
            at = f"{where} data[{a}].paragraphs[{p}]"
            context = _require(paragraph, "context", str, at)
            for q, qa in enumerate(_require(paragraph, "qas", list, at)):
                qat = f"{at}.qas[{q}]"
                answers = [] if qa.get("is_impossible") else _require(qa, "answers", list, qat)
                for answer in answers:
                    _require(answer, "text", str, qat + ".answers")
                    _require(answer, "answer_start", int, qat + ".answers")
                examples.append(Example(
                    id=str(_require(qa, "id", str, qat)), question=_require(qa, "question", str, qat),
                    context=context, answer_texts=[x["text"] for x in answers],
                    answer_starts=[x["answer_start"] for x in answers], title=title))
    return examples


def _from_flat(record: dict, where: str) -> Example:
    answers = _require(record, "answers", dict, where)
    texts = _require(answers, "text", list, where + ".answers")
    starts = _require(answers, "answer_start", list, where + ".answers")
    if len(texts) != len(starts) or not all(isinstance(t, str) for t in texts) \
            or not all(isinstance(s, int) for s in starts):
        raise DataError(f"{where}: answers.text (strings) and answers.answer_start (ints) must pair up")
    return Example(id=str(_require(record, "id", (str, int), where)),
                   question=_require(record, "question", str, where),
                   context=_require(record, "context", str, where),
                   answer_texts=list(texts), answer_starts=list(starts), title=record.get("title", ""))


def _parse_json(raw: bytes, where: str):
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: invalid UTF-8 at byte {e.start}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e})") from None


def validate(examples: list[Example]) -> tuple[list[Example], int, list[str]]:
    """Drop answers whose text is not found at answer_start; drop examples left with none.

    Returns the kept examples, the number of mismatched answers and the ids of dropped examples.
    """
    kept, mismatched, dropped = [], 0, []
    for ex in examples:
        pairs = [(t, s) for t, s in zip(ex.answer_texts, ex.answer_starts)
                 if t and ex.context[s:s + len(t)] == t]
        mismatched += len(ex.answer_texts) - len(pairs)
        if ex.answer_texts and not pairs:
            dropped.append(ex.id)
            continue
        ex.answer_texts = [t for t, _ in pairs]
        ex.answer_starts = [s for _, s in pairs]
        kept.append(ex)
    return kept, mismatched, dropped


def write_jsonl(examples: list[Example], path: Path) -> None:
    """Flat JSONL, one question per line (the format serve-batch reads, answers included)."""
    with open(path, "w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps({"id": ex.id, "question": ex.question, "context": ex.context,
                                "answers": {"text": ex.answer_texts, "answer_start": ex.answer_starts}},
                               ensure_ascii=False) + "\n")


def references(examples: list[Example]) -> dict[str, list[str]]:
    return {ex.id: ex.answer_texts for ex in examples}

