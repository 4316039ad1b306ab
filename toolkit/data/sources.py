"""Source specs -> examples: the built-in sources (toolkit.data.builtin), files, hub datasets; the selectors
after '?'; the mix of several sources with unique ids."""

import dataclasses
import random
import re
import sys
from pathlib import Path
from urllib.parse import parse_qs

from toolkit.cache import sha256_file
from toolkit.data.builtin import builtin_file, builtin_name, split_articles
from toolkit.data.negatives import add_negatives, negative_ratio
from toolkit.data.records import DataError, Example, SourceReport, _from_flat, _from_nested, _parse_json, validate

SELECTORS = {"articles", "exclude-articles", "samples", "split", "negatives", "negative-kind", "repeat"}


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    base, _, query = spec.partition("?")
    options = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    unknown = set(options) - SELECTORS
    if unknown:
        raise DataError(f"{spec}: unknown selector(s) {sorted(unknown)}; known: {sorted(SELECTORS)}")
    return base, options


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


def article_titles(value: str) -> set[str]:
    """A comma list of article titles. SQuAD titles are Wikipedia's, with '_' for spaces, so a comma inside a
    title is followed by '_' (Fresno,_California) and does not separate titles."""
    return set(filter(None, re.split(r",(?!_)", value)))


def load_source(spec: str, cache_dir: Path, seed: int, default_split: str) -> tuple[list[Example], SourceReport]:
    base, options = parse_spec(spec)
    name = builtin_name(base)
    hub = not name and not (base.endswith((".json", ".jsonl")) or Path(base).exists())
    if name:
        path, digest = builtin_file(name, cache_dir)
        examples, where = _read_file(path, spec), f"{name} ({path})"
    elif hub:
        examples, where, digest = _read_hub(base, options.get("split", default_split)), base, None
    else:
        path = Path(base)
        examples, where = _read_file(path, spec), str(path.resolve())
        digest = sha256_file(path)
    if "split" in options and not hub:
        if "articles" in options or "exclude-articles" in options:
            raise DataError(f"{spec}: split= and articles=/exclude-articles= both choose articles; give one")
        options["articles"] = ",".join(split_articles(name, options.pop("split"), spec))
    if "articles" in options or "exclude-articles" in options:
        wanted, unwanted = article_titles(options.get("articles", "")), article_titles(options.get("exclude-articles", ""))
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


def subset(examples: list[Example], n: int, seed: int, what: str) -> list[Example]:
    """A seeded random subset of n examples, in the source's order (all if n >= len)."""
    if n <= 0:
        raise DataError(f"{what}: sample count must be positive, got {n}")
    if n >= len(examples):
        return examples
    chosen = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in chosen]


def load_examples(specs: list[str], *, cache_dir: Path, seed: int, limit: int | None,
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

