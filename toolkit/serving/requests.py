"""Requests every front end shares: a question record -> Query, its bounds (question and context tokens),
the adapter it picks, and its answer as a JSON-ready row. serve-batch reads records from JSONL lines; the
online server from request bodies; both answer with answer_queries and the same row fields."""

import json
from dataclasses import dataclass, field

from toolkit.inference import Engine, EngineError, Stopwatch
from toolkit.options import DEFAULT_OPTIONS, AnswerOptions, OptionError, json_type
from toolkit.postprocess import Answer, Span

MAX_CONTEXT_TOKENS = 4096  # SQuAD's longest context has ~850 tokens


PROBLEM_KINDS = ("invalid", "too_long", "unknown_adapter")


@dataclass(frozen=True)
class Problem:
    """Why a question is not answered: its kind decides the HTTP status, its message is shown as is."""
    kind: str  # one of PROBLEM_KINDS
    message: str

    def __post_init__(self):
        if self.kind not in PROBLEM_KINDS:
            raise ValueError(f"unknown problem kind {self.kind!r}; known: {PROBLEM_KINDS}")



@dataclass
class Query:
    line: int
    id: str
    question: str = ""
    context: str = ""
    adapter: str | None = None
    options: AnswerOptions = field(default_factory=AnswerOptions)
    error: Problem | None = None

    def fail(self, kind: str, message: str) -> "Query":
        self.error = Problem(kind, message)
        return self


def query_from_record(record, line: int, defaults: AnswerOptions = DEFAULT_OPTIONS) -> Query:
    """A Query from a decoded JSON value: an object with question, context and optionally id, adapter and
    parameters (HF's question-answering parameters, over defaults); anything else gets a Query whose error
    names the field and the problem."""
    query = Query(line=line, id=str(line), options=defaults)
    if not isinstance(record, dict):
        return query.fail("invalid", f"expected a JSON object, got {json_type(record)}")
    if "id" in record:
        if not isinstance(record["id"], (str, int)) or isinstance(record["id"], bool):
            return query.fail("invalid", f"field 'id' must be a string or integer, got {json_type(record['id'])}")
        query.id = str(record["id"])
    for name in ("question", "context"):
        if name not in record:
            return query.fail("invalid", f"missing field '{name}'")
        if not isinstance(record[name], str):
            return query.fail("invalid", f"field '{name}' must be a string, got {json_type(record[name])}")
        if not record[name].strip():
            return query.fail("invalid", f"empty field '{name}'")
    query.question, query.context = record["question"], record["context"]
    if "adapter" in record:
        if not isinstance(record["adapter"], str):
            return query.fail("invalid", f"field 'adapter' must be a string, got {json_type(record['adapter'])}")
        query.adapter = record["adapter"]
    if record.get("parameters") is not None:
        if not isinstance(record["parameters"], dict):
            return query.fail("invalid", f"field 'parameters' must be an object, got {json_type(record['parameters'])}")
        try:
            query.options = defaults.with_parameters(record["parameters"])
        except OptionError as e:
            return query.fail("invalid", str(e))
    return query


def parse_line(raw: bytes, line: int, defaults: AnswerOptions = DEFAULT_OPTIONS) -> Query:
    """One JSONL line (without its line end) -> Query."""
    query = Query(line=line, id=str(line), options=defaults)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return query.fail("invalid", f"invalid UTF-8 at byte {e.start}")
    if not text.strip():
        return query.fail("invalid", "empty line")
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        return query.fail("invalid", f"malformed JSON: {e.msg} at column {e.colno}")
    return query_from_record(record, line, defaults)


def groups(engine: Engine, queries: list[Query]) -> dict[tuple[str, AnswerOptions], list[Query]]:
    """The queries answered together: one served model and one set of options each. A query naming an
    adapter that is not served is marked."""
    out: dict[tuple[str, AnswerOptions], list[Query]] = {}
    for q in queries:
        try:
            out.setdefault((engine.resolve(q.adapter), q.options), []).append(q)
        except EngineError as e:
            q.fail("unknown_adapter", str(e))
    return out


def finite(x: float) -> float | None:
    return x if x == x and abs(x) != float("inf") else None


def span_fields(span: Span) -> dict:
    return {"answer": span.text, "score": span.probability, "start": span.start, "end": span.end,
            "start_confidence": span.start_confidence, "end_confidence": span.end_confidence}


def answer_fields(a: Answer) -> dict:
    """The fields of one answer, as serve-batch writes them (and the server, in HF's form: hf_answer).
    score: the probability that the answer is right (of "no answer" when there is none); alternatives
    (with top_k > 1): the next best distinct spans."""
    span = a.best_span
    fields = {"answer": None if a.no_answer else a.text, "start": a.start, "end": a.end,
              "score": finite(a.confidence), "no_answer": a.no_answer,
              "no_answer_probability": a.no_answer_probability, "no_answer_threshold": a.no_answer_threshold,
              "calibrated": a.calibrated,
              "start_confidence": span.start_confidence if span else 0.0,
              "end_confidence": span.end_confidence if span else 0.0, "null_score_diff": finite(a.null_score_diff),
              "best_span": span.text if span else None, "best_span_start": span.start if span else None,
              "best_span_end": span.end if span else None}
    if a.alternatives:
        fields["alternatives"] = [span_fields(s) for s in a.alternatives]
    return fields


def answer_row(q: Query, a: Answer, adapter: str | None) -> dict:
    """One serve-batch output line: the question's id and line, its adapter when several are served, its answer."""
    return {"id": q.id, "line": q.line, **({"adapter": adapter} if adapter else {}), **answer_fields(a)}


def error_row(q: Query) -> dict:
    return {"id": q.id, "line": q.line, "error": q.error.message, "error_kind": q.error.kind}


def answer_checked(engine: Engine, queries: list[Query], *, max_context_tokens: int = MAX_CONTEXT_TOKENS,
                   watch: Stopwatch | None = None) -> dict[int, Answer]:
    """line -> Answer for every query that passes its checks (adapter, options, and the engine's token bounds);
    the others get their error set. Each adapter's queries are answered together, never in a batch with another's, and so are
    the queries of one set of options."""
    watch = watch or Stopwatch()
    answers = {}
    for (name, options), group in groups(engine, [q for q in queries if q.error is None]).items():
        adapter = name or None  # SINGLE: the engine's one model
        with watch("checks"):
            try:
                engine.feature_config(options, adapter)
            except OptionError as e:
                for q in group:
                    q.fail("invalid", str(e))
                continue
        results = engine.answer_each([q.question for q in group], [q.context for q in group], adapter=adapter,
                                     watch=watch, options=options, max_context_tokens=max_context_tokens)
        for q, result in zip(group, results):
            if isinstance(result, OptionError):
                q.fail("too_long", str(result))
            else:
                answers[q.line] = result
    return answers


def answer_queries(engine: Engine, queries: list[Query], max_context_tokens: int = MAX_CONTEXT_TOKENS,
                   watch: Stopwatch | None = None) -> list[dict]:
    """One row per query, in order: its answer, or its error."""
    answers = answer_checked(engine, queries, max_context_tokens=max_context_tokens, watch=watch)
    named = bool(engine.adapters)
    return [error_row(q) if q.error is not None
            else answer_row(q, answers[q.line], (q.adapter or engine.default) if named else None) for q in queries]
