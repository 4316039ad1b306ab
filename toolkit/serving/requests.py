"""Requests every front end shares: a question record -> Query, its bounds (question and context tokens),
the adapter it picks, and its answer as a JSON-ready row. serve-batch reads records from JSONL lines; the
online server from request bodies; both answer with answer_queries and the same row fields."""

import json
from dataclasses import dataclass

from toolkit.features import question_lengths
from toolkit.inference import Engine, EngineError, Stopwatch
from toolkit.postprocess import Answer

MAX_CONTEXT_TOKENS = 4096  # SQuAD's longest context has ~850 tokens


@dataclass
class Query:
    line: int
    id: str
    question: str = ""
    context: str = ""
    adapter: str | None = None
    error: str | None = None


def query_from_record(record, line: int) -> Query:
    """A Query from a decoded JSON value: an object with question, context and optionally id and adapter;
    anything else gets a Query whose error names the field and the problem."""
    query = Query(line=line, id=str(line))
    if not isinstance(record, dict):
        query.error = f"expected a JSON object, got {type(record).__name__}"
        return query
    if "id" in record:
        if not isinstance(record["id"], (str, int)) or isinstance(record["id"], bool):
            query.error = f"field 'id' must be a string or integer, got {type(record['id']).__name__}"
            return query
        query.id = str(record["id"])
    for name in ("question", "context"):
        if name not in record:
            query.error = f"missing field '{name}'"
            return query
        if not isinstance(record[name], str):
            query.error = f"field '{name}' must be a string, got {type(record[name]).__name__}"
            return query
        if not record[name].strip():
            query.error = f"empty field '{name}'"
            return query
    query.question, query.context = record["question"], record["context"]
    if "adapter" in record:
        if not isinstance(record["adapter"], str):
            query.error = f"field 'adapter' must be a string, got {type(record['adapter']).__name__}"
            return query
        query.adapter = record["adapter"]
    return query


def parse_line(raw: bytes, line: int) -> Query:
    """One JSONL line (without its line end) -> Query."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return Query(line=line, id=str(line), error=f"invalid UTF-8 at byte {e.start}")
    if not text.strip():
        return Query(line=line, id=str(line), error="empty line")
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        return Query(line=line, id=str(line), error=f"malformed JSON: {e.msg} at column {e.colno}")
    return query_from_record(record, line)


def check_sizes(engine: Engine, adapter: str | None, queries: list[Query], max_context_tokens: int) -> None:
    """Mark questions and contexts over their token limits as errors. A context of at most
    max_context_tokens UTF-8 bytes cannot have more tokens, so only longer ones are tokenised."""
    limit = engine.served(adapter).qa.max_question_tokens
    for q, n in zip(queries, question_lengths(engine.tokenizer, [q.question for q in queries])):
        if n > limit:
            q.error = f"question too long: {n} tokens (at most {limit})"
    suspects = [q for q in queries if q.error is None and len(q.context.encode("utf-8")) > max_context_tokens]
    if suspects:
        counts = engine.tokenizer([q.context for q in suspects], add_special_tokens=False)["input_ids"]
        for q, ids in zip(suspects, counts):
            if len(ids) > max_context_tokens:
                q.error = (f"context too long: {len(ids)} tokens "
                           f"(at most {max_context_tokens}; see --max-context-tokens)")


def by_adapter(engine: Engine, queries: list[Query]) -> dict[str, list[Query]]:
    """The queries each served model answers; a query naming an adapter that is not served is marked."""
    groups: dict[str, list[Query]] = {}
    for q in queries:
        try:
            groups.setdefault(engine.resolve(q.adapter), []).append(q)
        except EngineError as e:
            q.error = str(e)
    return groups


def finite(x: float) -> float | None:
    return x if x == x and abs(x) != float("inf") else None


def answer_row(q: Query, a: Answer, adapter: str | None) -> dict:
    """The fields of one answer, as serve-batch writes them and the server returns them."""
    return {"id": q.id, "line": q.line, **({"adapter": adapter} if adapter else {}),
            "answer": None if a.no_answer else a.text,
            "start": None if a.no_answer else a.start, "end": None if a.no_answer else a.end,
            "score": finite(a.score), "start_confidence": a.start_confidence, "end_confidence": a.end_confidence,
            "null_score_diff": finite(a.null_score_diff), "no_answer": a.no_answer,
            "no_answer_probability": a.no_answer_probability, "best_span": a.text if a.start is not None else None}


def answer_checked(engine: Engine, queries: list[Query], max_context_tokens: int = MAX_CONTEXT_TOKENS,
                   watch: Stopwatch | None = None, threshold: float | None = None) -> dict[int, Answer]:
    """line -> Answer for every query that passes its checks (adapter, token bounds); the others get their
    error set. Each adapter's queries are answered together, never in a batch with another's."""
    watch = watch or Stopwatch()
    answers = {}
    for name, group in by_adapter(engine, [q for q in queries if q.error is None]).items():
        adapter = name or None  # SINGLE: the engine's one model
        with watch("checks"):
            check_sizes(engine, adapter, group, max_context_tokens)
        group = [q for q in group if q.error is None]
        answers.update(zip((q.line for q in group), engine.answer([q.question for q in group],
                                                                 [q.context for q in group], adapter, watch,
                                                                 threshold)))
    return answers


def answer_queries(engine: Engine, queries: list[Query], max_context_tokens: int = MAX_CONTEXT_TOKENS,
                   watch: Stopwatch | None = None) -> list[dict]:
    """One row per query, in order: its answer, or its error."""
    answers = answer_checked(engine, queries, max_context_tokens, watch)
    named = bool(engine.adapters)
    return [{"id": q.id, "line": q.line, "error": q.error} if q.error is not None
            else answer_row(q, answers[q.line], (q.adapter or engine.default) if named else None) for q in queries]
