"""serve-batch: a JSONL stream of questions in, one JSONL answer line per input line out, in order.

Input lines hold ``question``, ``context`` and optionally ``id`` (the line number otherwise). A line
that cannot be answered gets an ``error`` naming the problem and never affects the others. Lines are
read in chunks, so memory stays bounded whatever the file size; within a chunk, windows are bucketed
by length. The output goes to a temporary file renamed into place at the end (or to stdout with ``-``).
"""

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

from tqdm.auto import tqdm

from toolkit.engine import QAEngine
from toolkit.features import question_lengths


@dataclass
class Query:
    line: int
    id: str
    question: str = ""
    context: str = ""
    error: str | None = None


@dataclass
class Summary:
    lines: int = 0
    answered: int = 0
    no_answer: int = 0
    errors: int = 0
    seconds: float = 0.0
    questions_per_second: float = 0.0
    provider: str = ""
    variant: str = ""
    output: str = ""


def parse_line(raw: bytes, line: int) -> Query:
    query = Query(line=line, id=str(line))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        query.error = f"invalid UTF-8 at byte {e.start}"
        return query
    if not text.strip():
        query.error = "empty line"
        return query
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        query.error = f"malformed JSON: {e.msg} at column {e.colno}"
        return query
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
    return query


def read_chunks(stream: IO[bytes], size: int) -> Iterator[list[Query]]:
    chunk = []
    for n, raw in enumerate(stream, 1):
        chunk.append(parse_line(raw.rstrip(b"\r\n"), n))
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def answer_chunk(engine: QAEngine, chunk: list[Query]) -> list[dict]:
    limit = engine.qa.max_question_tokens
    good = [q for q in chunk if q.error is None]
    for q, n in zip(good, question_lengths(engine.tokenizer, [q.question for q in good])):
        if n > limit:
            q.error = f"question too long: {n} tokens (at most {limit})"
    good = [q for q in good if q.error is None]
    answers = dict(zip((q.line for q in good), engine.answer([q.question for q in good], [q.context for q in good])))
    out = []
    for q in chunk:
        if q.error is not None:
            out.append({"id": q.id, "line": q.line, "error": q.error})
            continue
        a = answers[q.line]
        out.append({"id": q.id, "line": q.line, "answer": None if a.no_answer else a.text,
                    "start": None if a.no_answer else a.start, "end": None if a.no_answer else a.end,
                    "score": _finite(a.score), "start_confidence": a.start_confidence,
                    "end_confidence": a.end_confidence, "null_score_diff": _finite(a.null_score_diff),
                    "no_answer": a.no_answer, "best_span": a.text if a.start is not None else None})
    return out


def _finite(x: float) -> float | None:
    return x if x == x and abs(x) != float("inf") else None


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))


def serve_batch(engine: QAEngine, input_path: str, output_path: str, chunk_size: int = 1024,
                progress: bool | None = None) -> Summary:
    """Answer every line of input_path (a file or -) into output_path (a file or -)."""
    if input_path != "-" and not Path(input_path).is_file():
        raise FileNotFoundError(f"input file not found: {input_path}")
    summary = Summary(provider=engine.predictor.provider, variant=engine.predictor.variant, output=output_path)
    if progress is None:
        progress = sys.stderr.isatty()
    total = _count_lines(Path(input_path)) if input_path != "-" and progress else None
    started = time.perf_counter()
    source = sys.stdin.buffer if input_path == "-" else open(input_path, "rb")
    if output_path == "-":
        sink, temp = sys.stdout, None
    else:
        target = Path(output_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
        sink = os.fdopen(fd, "w", encoding="utf-8")
    try:
        with tqdm(total=total, unit="q", disable=not progress, file=sys.stderr) as bar:
            for chunk in read_chunks(source, chunk_size):
                for row in answer_chunk(engine, chunk):
                    sink.write(json.dumps(row, ensure_ascii=False) + "\n")
                    summary.lines += 1
                    if "error" in row:
                        summary.errors += 1
                    elif row["no_answer"]:
                        summary.no_answer += 1
                    else:
                        summary.answered += 1
                bar.update(len(chunk))
        sink.flush()
        if temp is not None:
            sink.close()
            os.replace(temp, output_path)
    except BaseException:
        if temp is not None:
            sink.close()
            os.unlink(temp)
        raise
    finally:
        if source is not sys.stdin.buffer:
            source.close()
    summary.seconds = time.perf_counter() - started
    answered = summary.lines - summary.errors
    summary.questions_per_second = answered / summary.seconds if summary.seconds > 0 else 0.0
    return summary

