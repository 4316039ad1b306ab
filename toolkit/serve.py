"""serve-batch: a JSONL stream of questions in, one JSONL answer line per input line out, in order.

Input lines hold ``question``, ``context`` and optionally ``id`` (the line number otherwise) and, when
several adapters share one base (AdapterEngines), ``adapter`` (the default adapter otherwise). A line
that cannot be answered gets an ``error`` naming the problem and never affects the others; a line's
cost is bounded (bytes read, context tokens). Lines are read in chunks, so memory stays bounded
whatever the file size; within a chunk, windows are bucketed by length.

The output is written, chunk by chunk, to a hidden partial file beside it (``.NAME.partial``, with
``.NAME.partial.json`` saying which input, model and settings it belongs to) and renamed into place
at the end, so nothing half-written is ever visible under the output's name. After a crash or kill,
``resume`` keeps the partial's whole chunks and answers only the rest: the same chunks hold the same
lines, so the final file is byte for byte that of an uninterrupted run.
"""

import hashlib
import json
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Iterator

from tqdm.auto import tqdm

from toolkit.engine import AdapterEngines, QAEngine, Stopwatch
from toolkit.features import question_lengths


class ServeError(ValueError):
    """A serve-batch job that cannot start or resume as asked; the message says why."""


@dataclass
class ServeConfig:
    chunk_size: int = 1024  # lines read, answered and written at a time
    max_line_bytes: int = 1 << 20  # a longer input line is an error, never read into memory whole
    max_context_tokens: int = 4096  # a longer context is an error (SQuAD's longest is ~850 tokens)
    resume: bool = False  # continue from the partial output of an interrupted run


@dataclass
class Query:
    line: int
    id: str
    question: str = ""
    context: str = ""
    adapter: str | None = None
    error: str | None = None


@dataclass
class Summary:
    lines: int = 0
    answered: int = 0
    no_answer: int = 0
    errors: int = 0
    resumed_lines: int = 0  # lines kept from an interrupted run's partial output
    seconds: float = 0.0
    questions_per_second: float = 0.0  # lines answered (not errors) in this run / its seconds
    provider: str = ""
    variant: str = ""
    output: str = ""
    # where this run's wall time went: read (reading and parsing lines), checks (token limits), tokenise,
    # infer, postprocess, format (answer lines as JSON), write; "other" is the rest (progress bar, setup)
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def count(self, row: dict) -> None:
        self.lines += 1
        if "error" in row:
            self.errors += 1
        elif row["no_answer"]:
            self.no_answer += 1
        else:
            self.answered += 1


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
    if "adapter" in record:
        if not isinstance(record["adapter"], str):
            query.error = f"field 'adapter' must be a string, got {type(record['adapter']).__name__}"
            return query
        query.adapter = record["adapter"]
    return query


def read_lines(stream: IO[bytes], max_bytes: int) -> Iterator[bytes | int]:
    """Each line without its line end; for a line longer than max_bytes, its size in bytes instead
    (the line is skipped in pieces, never held whole)."""
    while True:
        raw = stream.readline(max_bytes + 2)  # room for the line's own b"\r\n"
        if not raw:
            return
        line = raw.rstrip(b"\r\n")
        if len(line) <= max_bytes and (raw.endswith(b"\n") or len(raw) <= max_bytes):
            yield line
            continue
        size = len(raw)
        while not raw.endswith(b"\n"):
            raw = stream.readline(1 << 20)
            if not raw:
                break
            size += len(raw)
        yield size - (2 if raw.endswith(b"\r\n") else 1 if raw.endswith(b"\n") else 0)


def read_chunks(stream: IO[bytes], cfg: ServeConfig, skip: int = 0, first: int = 0) -> Iterator[list[Query]]:
    """Parsed queries, cfg.chunk_size at a time, after the first ``skip`` lines (still counted); the stream's
    first line is line ``first + 1`` (a reader that starts in the middle of the file)."""
    chunk = []
    for n, item in enumerate(read_lines(stream, cfg.max_line_bytes), first + 1):
        if n <= skip:
            continue
        if isinstance(item, int):
            chunk.append(Query(line=n, id=str(n), error=f"line too long: {item} bytes "
                                                        f"(at most {cfg.max_line_bytes}; see --max-line-bytes)"))
        else:
            chunk.append(parse_line(item, n))
        if len(chunk) == cfg.chunk_size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def check_sizes(engine: QAEngine, queries: list[Query], max_context_tokens: int) -> None:
    """Mark questions and contexts over their token limits as errors. A context of at most
    max_context_tokens UTF-8 bytes cannot have more tokens, so only longer ones are tokenised."""
    limit = engine.qa.max_question_tokens
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


def by_engine(engine: QAEngine | AdapterEngines, queries: list[Query]) -> dict[str | None, list[Query]]:
    """The queries each engine answers (key None: a single model); a line naming an adapter that is not
    served, or any adapter when a single model is served, is marked as an error."""
    if isinstance(engine, QAEngine):
        for q in queries:
            if q.adapter is not None:
                q.error = f"unknown adapter '{q.adapter}': this model serves no adapters"
        return {None: [q for q in queries if q.error is None]}
    groups: dict[str | None, list[Query]] = {}
    for q in queries:
        name = q.adapter if q.adapter is not None else engine.default
        if name not in engine.engines:
            q.error = f"unknown adapter '{name}' (served: {', '.join(engine.engines)})"
            continue
        groups.setdefault(name, []).append(q)
    return groups


def answer_chunk(engine: QAEngine | AdapterEngines, chunk: list[Query],
                 max_context_tokens: int = ServeConfig.max_context_tokens, watch: Stopwatch | None = None) -> list[dict]:
    watch = watch or Stopwatch()
    answers = {}
    for name, group in by_engine(engine, [q for q in chunk if q.error is None]).items():
        one = engine if name is None else engine.engines[name]
        with watch("checks"):
            check_sizes(one, group, max_context_tokens)
        group = [q for q in group if q.error is None]
        answers.update(zip((q.line for q in group),
                           one.answer([q.question for q in group], [q.context for q in group], watch)))
    out = []
    for q in chunk:
        if q.error is not None:
            out.append({"id": q.id, "line": q.line, "error": q.error})
            continue
        a = answers[q.line]
        adapter = {} if isinstance(engine, QAEngine) else {"adapter": q.adapter or engine.default}
        out.append({"id": q.id, "line": q.line, **adapter, "answer": None if a.no_answer else a.text,
                    "start": None if a.no_answer else a.start, "end": None if a.no_answer else a.end,
                    "score": _finite(a.score), "start_confidence": a.start_confidence,
                    "end_confidence": a.end_confidence, "null_score_diff": _finite(a.null_score_diff),
                    "no_answer": a.no_answer, "no_answer_probability": a.no_answer_probability,
                    "best_span": a.text if a.start is not None else None})
    return out


def _finite(x: float) -> float | None:
    return x if x == x and abs(x) != float("inf") else None


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))


def check_paths(input_path: str, output_path: str) -> None:
    """Refuse an output that is the input file (same path, symlink or hard link) before anything is read."""
    if input_path != "-" and not Path(input_path).is_file():
        raise FileNotFoundError(f"input file not found: {input_path}")
    if "-" in (input_path, output_path):
        return
    output = Path(output_path)
    if Path(input_path).resolve() == output.resolve() or (output.exists() and os.path.samefile(input_path, output)):
        raise ServeError(f"the output {output_path} is the input file {input_path}: answering would replace the "
                         "questions; choose another -o")


def partial_paths(output_path: str) -> tuple[Path, Path]:
    target = Path(output_path)
    partial = target.with_name(f".{target.name}.partial")
    return partial, partial.with_name(partial.name + ".json")


def job_identity(engine: QAEngine | AdapterEngines, input_path: str, cfg: ServeConfig) -> dict:
    """What the output depends on: the input's bytes, the model's files and every setting that shapes batches."""
    digest = hashlib.sha256()
    with open(input_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    engines = {None: engine} if isinstance(engine, QAEngine) else engine.engines
    qa = {name or "": asdict(e.qa) for name, e in engines.items()}
    return {"input": {"path": str(Path(input_path).resolve()), "sha256": digest.hexdigest()},
            "model": engine.source, "qa_config": qa.get("", qa), "batches": asdict(next(iter(engines.values())).settings),
            "settings": {"chunk_size": cfg.chunk_size, "max_line_bytes": cfg.max_line_bytes,
                         "max_context_tokens": cfg.max_context_tokens}}


def keep_whole_chunks(partial: Path, chunk_size: int, summary: Summary) -> int:
    """Cut the partial output back to its last whole chunk; count what is kept. Returns lines kept."""
    kept, offset, keep_offset, rows = 0, 0, 0, []
    with open(partial, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            try:
                row = json.loads(raw)
            except json.JSONDecodeError:
                break
            if row.get("line") != kept + len(rows) + 1:
                raise ServeError(f"--resume: {partial} is not a serve-batch partial output (line {kept + len(rows) + 1} "
                                 f"holds line {row.get('line')}); rerun without --resume")
            rows.append(row)
            offset += len(raw)
            if len(rows) == chunk_size:
                for r in rows:
                    summary.count(r)
                kept, rows = kept + chunk_size, []
                keep_offset = offset
    with open(partial, "r+b") as f:
        f.truncate(keep_offset)
    return kept


def start_partial(identity: dict | None, output_path: str, cfg: ServeConfig, summary: Summary) -> tuple[Path, int]:
    """The partial file to append to, and how many input lines it already answers."""
    partial, meta = partial_paths(output_path)
    partial.parent.mkdir(parents=True, exist_ok=True)
    if cfg.resume:
        if identity is None:
            raise ServeError("--resume needs an input file, not standard input")
        if partial.exists() and meta.exists():
            saved = json.loads(meta.read_text())
            changed = sorted(k for k in identity if saved.get(k) != identity[k])
            if changed:
                raise ServeError(f"--resume: the partial output {partial} belongs to another job (its {', '.join(changed)} "
                                 "differ); rerun without --resume to start over")
            done = keep_whole_chunks(partial, cfg.chunk_size, summary)
            summary.resumed_lines = done
            print(f"resuming after {done} lines kept from {partial}", file=sys.stderr)
            return partial, done
        print(f"--resume: no partial output at {partial}; starting from the first line", file=sys.stderr)
    partial.write_bytes(b"")
    if identity is not None:
        meta.write_text(json.dumps(identity, indent=2) + "\n")
    elif meta.exists():
        meta.unlink()
    return partial, 0


@contextmanager
def job_output(identity: dict | None, output_path: str, cfg: ServeConfig, summary: Summary) -> Iterator[tuple[IO[str], int]]:
    """Where the answers go, and how many input lines are already answered there.

    For a file: its partial file (resumed, or new), renamed into place when the block ends, and kept
    for --resume when the block raises. identity is job_identity's (None for standard input)."""
    if output_path == "-":
        yield sys.stdout, 0
        return
    partial, done = start_partial(identity, output_path, cfg, summary)
    with open(partial, "a", encoding="utf-8") as sink:
        try:
            yield sink, done
        except BaseException:
            print(f"serve-batch stopped; the partial output is kept at {partial}: rerun the same command with "
                  "--resume to continue from it", file=sys.stderr)
            raise
    os.replace(partial, output_path)
    partial_paths(output_path)[1].unlink(missing_ok=True)


def serve_batch(engine: QAEngine | AdapterEngines, input_path: str, output_path: str, cfg: ServeConfig | None = None,
                progress: bool | None = None) -> Summary:
    """Answer every line of input_path (a file or -) into output_path (a file or -)."""
    cfg = cfg or ServeConfig()
    if cfg.chunk_size < 1 or cfg.max_line_bytes < 1 or cfg.max_context_tokens < 1:
        raise ServeError("chunk size, --max-line-bytes and --max-context-tokens must be positive")
    check_paths(input_path, output_path)
    if cfg.resume and output_path == "-":
        raise ServeError("--resume needs an output file, not standard output")
    summary = Summary(provider=engine.predictor.provider, variant=engine.predictor.variant, output=output_path)
    if progress is None:
        progress = sys.stderr.isatty()
    total = _count_lines(Path(input_path)) if input_path != "-" and progress else None
    identity = job_identity(engine, input_path, cfg) if input_path != "-" and output_path != "-" else None
    watch = Stopwatch()
    started = time.perf_counter()
    fresh = 0  # lines answered (not errors) by this run
    source = sys.stdin.buffer if input_path == "-" else open(input_path, "rb")
    try:
        with job_output(identity, output_path, cfg, summary) as (sink, done), \
                tqdm(total=total, initial=done, unit="q", disable=not progress, file=sys.stderr) as bar:
            chunks = read_chunks(source, cfg, skip=done)
            while True:
                with watch("read"):
                    chunk = next(chunks, None)
                if chunk is None:
                    break
                rows = answer_chunk(engine, chunk, cfg.max_context_tokens, watch)
                with watch("format"):
                    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
                with watch("write"):
                    sink.write(text)
                    sink.flush()  # whole chunks reach the file: what --resume keeps
                for row in rows:
                    summary.count(row)
                    fresh += "error" not in row
                bar.update(len(chunk))
    finally:
        if source is not sys.stdin.buffer:
            source.close()
    summary.seconds = time.perf_counter() - started
    summary.questions_per_second = fresh / summary.seconds if summary.seconds > 0 else 0.0
    summary.stage_seconds = {**watch.seconds, "other": summary.seconds - sum(watch.seconds.values())}
    return summary
