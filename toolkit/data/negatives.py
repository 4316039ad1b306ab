"""Synthetic unanswerable questions (the negatives=R selector): an answerable question paired with another
paragraph of its article, with its own paragraph without the answer's sentence(s), or with one of its names
or numbers swapped for one of the same kind from another article (SQuAD 2.0's "entity swap", by rule)."""

import random
import re

from toolkit.data.records import DataError, Example

NEGATIVE_KINDS = ("paragraph", "sentence", "swap")
CLASSIC_NEGATIVES = ("paragraph", "sentence")  # "mix", and the fallback of every kind
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
NAME = re.compile(r"\b[A-Z][\w'-]*(?: [A-Z][\w'-]*)*")  # capitalised words in a row
NUMBER = re.compile(r"\b\d(?:[\d,.]*\d)?\b")


def negative_ratio(value: str, spec: str) -> float:
    try:
        ratio = float(value)
    except ValueError:
        raise DataError(f"{spec}: negatives must be a number in [0, 1), got '{value}'") from None
    if not 0 <= ratio < 1:
        raise DataError(f"{spec}: negatives must be in [0, 1), got {ratio}")
    return ratio


def _holds_answer(context: str, answers: list[str]) -> bool:
    lowered = context.lower()
    return any(a.lower() in lowered for a in answers)


def other_paragraph(example: Example, paragraphs: list[str], rng: random.Random) -> str | None:
    """A paragraph of the same article that holds none of the example's answers, or None."""
    candidates = [p for p in paragraphs if p != example.context and not _holds_answer(p, example.answer_texts)]
    return rng.choice(candidates) if candidates else None


def without_answer_sentence(example: Example) -> str | None:
    """The example's context without every sentence that overlaps an answer, or None if nothing is left
    or an answer text still occurs in what is left."""
    spans = [(s, s + len(t)) for s, t in zip(example.answer_starts, example.answer_texts)]
    kept, position = [], 0
    for sentence in SENTENCE_END.split(example.context):
        begin = example.context.index(sentence, position)
        position = begin + len(sentence)
        if not any(begin < end and start < position for start, end in spans):
            kept.append(sentence)
    context = " ".join(kept)
    if not context.strip() or _holds_answer(context, example.answer_texts):
        return None
    return context


def question_terms(question: str) -> list[tuple[int, int, str]]:
    """(start, end, kind) of the names and numbers in a question; kind also holds the word or digit count,
    so that a year is swapped for a year and a two-word name for a two-word name. The first word is
    skipped: it is capitalised as the sentence's start."""
    first = question.find(" ") + 1
    terms = [(m.start(), m.end(), f"name{m.group().count(' ') + 1}") for m in NAME.finditer(question, first)]
    return terms + [(m.start(), m.end(), f"number{sum(c.isdigit() for c in m.group())}")
                    for m in NUMBER.finditer(question)]


def swapped_question(example: Example, terms: dict[str, list[tuple[str, str]]], rng: random.Random,
                     tries: int = 10) -> str | None:
    """The question with one of its names or numbers that its context holds (and that is no answer) replaced
    by a term of the same kind from another article's questions that the context does not hold, or None.

    ``terms``: kind -> (article title, term) over the source's questions."""
    lowered = example.context.lower()
    answers = [a.lower() for a in example.answer_texts]
    spans = [(start, end, kind) for start, end, kind in question_terms(example.question)
             if (term := example.question[start:end].lower()) in lowered
             and not any(term in a or a in term for a in answers)]
    if not spans:
        return None
    start, end, kind = rng.choice(spans)
    for _ in range(tries):
        title, other = rng.choice(terms[kind])
        if title != example.title and other.lower() not in lowered:
            return example.question[:start] + other + example.question[end:]
    return None


def negative_kinds(value: str, spec: str) -> tuple[str, ...]:
    kinds = CLASSIC_NEGATIVES if value == "mix" else tuple(value.split(","))
    unknown = [k for k in kinds if k not in NEGATIVE_KINDS]
    if unknown:
        raise DataError(f"{spec}: negative-kind must be 'mix' or a comma list of {list(NEGATIVE_KINDS)}, "
                        f"got '{value}'")
    return kinds


def add_negatives(examples: list[Example], pool: list[Example], ratio: float, kind: str, seed: int,
                  spec: str) -> tuple[list[Example], dict[str, int]]:
    """Add unanswerable copies of answerable questions until ``ratio`` of the result is unanswerable.

    ``pool`` (the whole source) supplies the other paragraphs of each article and the names and numbers
    to swap in. The kinds take turns; a question where its kind is impossible (one-paragraph article,
    answer in every sentence, nothing to swap) gets a classic kind instead.
    """
    kinds = negative_kinds(kind, spec)
    unanswerable = sum(ex.is_impossible for ex in examples)
    wanted = max(0, round((ratio * len(examples) - unanswerable) / (1 - ratio)))
    answerable = [ex for ex in examples if not ex.is_impossible]
    if wanted > len(answerable):
        raise DataError(f"{spec}: negatives={ratio} needs {wanted} synthetic questions but the source has "
                        f"only {len(answerable)} answerable ones to make them from")
    paragraphs: dict[str, list[str]] = {}
    terms: dict[str, list[tuple[str, str]]] = {}
    for ex in pool:
        if ex.context not in paragraphs.setdefault(ex.title, []):
            paragraphs[ex.title].append(ex.context)
        if "swap" in kinds:
            for start, end, term_kind in question_terms(ex.question):
                terms.setdefault(term_kind, []).append((ex.title, ex.question[start:end]))
    rng = random.Random(f"negatives:{seed}")
    negatives, added = [], dict.fromkeys(kinds + CLASSIC_NEGATIVES, 0)
    for ex in rng.sample(answerable, len(answerable)):
        if len(negatives) == wanted:
            break
        turn = kinds[len(negatives) % len(kinds)]
        for chosen in (turn, *(k for k in CLASSIC_NEGATIVES if k != turn)):
            question, context = ex.question, ex.context
            if chosen == "swap":
                question = swapped_question(ex, terms, rng)
            elif chosen == "paragraph":
                context = other_paragraph(ex, paragraphs[ex.title], rng)
            else:
                context = without_answer_sentence(ex)
            if question is not None and context is not None:
                negatives.append(Example(id=f"{ex.id}-neg", question=question, context=context, title=ex.title))
                added[chosen] += 1
                break
    if len(negatives) < wanted:
        raise DataError(f"{spec}: could make only {len(negatives)} of {wanted} synthetic unanswerable questions")
    return examples + negatives, added

