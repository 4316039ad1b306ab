"""Hugging Face's question-answering task on the wire: a request body -> Queries and parameters, an Answer -> its
JSON ({"answer", "score", "start", "end"} plus ours), and the errors a request can meet, each with its status."""

import json
import math

from fastapi import Request

from toolkit.options import DEFAULT_OPTIONS, OptionError, json_type
from toolkit.postprocess import Answer
from toolkit.serving.requests import Problem, Query, answer_fields, query_from_record, span_fields

STATUS = {"invalid": 422, "too_long": 422, "unknown_adapter": 404}  # Problem.kind -> HTTP status


class RequestError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def problem_error(problem: Problem, where: str = "") -> RequestError:
    """The HTTP error of a question that could not be answered, its status from the problem's kind."""
    return RequestError(STATUS[problem.kind], where + problem.message)


def hf_answer(a: Answer, adapter: str | None) -> dict | list[dict]:
    """Hugging Face's answer fields and ours (answer_fields): "" at 0..0 when there is no answer, as the
    transformers pipeline does; with top_k > 1, a list: this answer, then the alternatives."""
    fields = answer_fields(a)
    alternatives = fields.pop("alternatives", None)
    if a.no_answer:
        fields.update(answer="", start=0, end=0)
    if adapter:
        fields["adapter"] = adapter
    if alternatives is None:
        return fields
    spans = ([span_fields(a.best_span)] if a.no_answer and a.best_span else []) + alternatives
    return [fields, *({**span, "no_answer": False, **({"adapter": adapter} if adapter else {})} for span in spans)]


def parse_body(raw: bytes, max_inputs: int, path_adapter: str | None) -> tuple[list[Query], bool]:
    """(queries, whether a list was sent) from a request body, or a RequestError naming the field: 400 for what
    is not JSON, 422 for JSON of the wrong shape or a parameter that cannot be honoured."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise RequestError(400, f"invalid UTF-8 at byte {e.start}") from None
    except json.JSONDecodeError as e:
        raise RequestError(400, f"malformed JSON: {e.msg} at column {e.colno}") from None
    if not isinstance(body, dict) or "inputs" not in body:
        raise RequestError(422, "expected a JSON object with 'inputs': {'question', 'context'} or a list of them")
    parameters = body.get("parameters")
    parameters = {} if parameters is None else parameters
    if not isinstance(parameters, dict):
        raise RequestError(422, f"field 'parameters' must be an object, got {json_type(parameters)}")
    adapter = parameters.get("adapter") or path_adapter
    if adapter is not None and not isinstance(adapter, str):
        raise RequestError(422, f"parameter 'adapter' must be a string, got {json_type(adapter)}")
    try:
        options = DEFAULT_OPTIONS.with_parameters({k: v for k, v in parameters.items() if k != "adapter"})
    except OptionError as e:
        raise RequestError(422, str(e)) from None
    listed = isinstance(body["inputs"], list)
    inputs = body["inputs"] if listed else [body["inputs"]]
    if not inputs or len(inputs) > max_inputs:
        raise RequestError(422 if not inputs else 413, f"'inputs' must hold 1 to {max_inputs} questions, got {len(inputs)}")
    queries = []
    for i, record in enumerate(inputs):
        if isinstance(record, dict) and "parameters" in record:
            raise RequestError(422, f"inputs[{i}]: 'parameters' belong beside 'inputs', not inside them")
        q = query_from_record(record, i, options)
        if q.error:
            raise RequestError(422, f"inputs[{i}]: {q.error.message}" if listed else f"inputs: {q.error.message}")
        q.adapter = q.adapter or adapter
        queries.append(q)
    return queries, listed


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is longer than limit (never read whole into memory)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"body of {declared} bytes is over the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"body over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def request_deadline(request: Request, default_s: float) -> float:
    """Seconds the caller gives this request: its X-Request-Timeout header, at most the server's --timeout."""
    header = request.headers.get("x-request-timeout")
    if header is None:
        return default_s
    try:
        seconds = float(header)
    except ValueError:
        raise RequestError(400, f"header X-Request-Timeout must be a number of seconds, got {header!r}") from None
    if not 0 < seconds < math.inf:
        raise RequestError(400, f"header X-Request-Timeout must be a positive number of seconds, got {header!r}")
    return min(seconds, default_s)
