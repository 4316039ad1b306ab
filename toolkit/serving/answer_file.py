"""serve-batch: a JSONL stream of questions in, one JSONL answer line per input line out, in order.

Input lines hold ``question``, ``context`` and optionally ``id`` (the line number otherwise) and, when
several adapters share one base, ``adapter`` (the default adapter otherwise). A line that cannot be
answered gets an ``error`` naming the problem and never affects the others; a line's cost is bounded
(bytes read, context tokens). Lines are read in chunks, so memory stays bounded whatever the file size;
within a chunk, windows are bucketed by length.

The output is written, chunk by chunk, to a hidden partial file beside it (``.NAME.partial``, with
``.NAME.partial.json`` saying which input, model and settings it belongs to) and renamed into place
at the end, so nothing half-written is ever visible under the output's name. After a crash or kill,
``resume`` keeps the partial's whole chunks and answers only the rest: the same chunks hold the same
lines, so the final file is byte for byte that of an uninterrupted run.
"""

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Iterator

from tqdm.auto import tqdm

from toolkit.inference import Engine, EngineSpec, Stopwatch, load_engine
from toolkit.options import AnswerOptions
from toolkit.serving.partial_output import ServeError, check_paths, job_output
from toolkit.serving.requests import MAX_CONTEXT_TOKENS, Query, answer_queries, parse_line


@dataclass
class ServeConfig:
    chunk_size: int = 1024  # lines read, answered and written at a time
    max_line_bytes: int = 1 << 20  # a longer input line is an error, never read into memory whole
    max_context_tokens: int = MAX_CONTEXT_TOKENS  # a longer context is an error
    resume: bool = False  # continue from the partial output of an interrupted run
    options: AnswerOptions = field(default_factory=AnswerOptions)  # every line's, unless its "parameters" say more

    def check(self) -> None:
        if self.chunk_size < 1 or self.max_line_bytes < 1 or self.max_context_tokens < 1:
            raise ServeError("chunk size, --max-line-bytes and --max-context-tokens must be positive")

    def bounds(self) -> dict:
        """The settings every chunk is read and checked with (a resumed job must use the same)."""
        return {"chunk_size": self.chunk_size, "max_line_bytes": self.max_line_bytes,
                "max_context_tokens": self.max_context_tokens, "options": asdict(self.options)}

    @classmethod
    def from_bounds(cls, bounds: dict) -> "ServeConfig":
        """The settings bounds() gave (on another process: a Ray worker)."""
        return cls(**{**bounds, "options": AnswerOptions(**bounds["options"])})


COUNTS = ("lines", "answered", "no_answer", "errors")


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
    # where the answering time went: read (reading and parsing lines), checks (token limits), tokenise,
    # infer, postprocess, format (answer lines as JSON), write; "other" is the rest of the wall time
    # (progress bar, setup). On Ray the stages are summed over the workers, and "other" is not given.
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def count(self, row: dict) -> None:
        self.lines += 1
        if "error" in row:
            self.errors += 1
        elif row["no_answer"]:
            self.no_answer += 1
        else:
            self.answered += 1

    def add_counts(self, other: dict) -> None:
        """Add another tally's counts (a chunk answered elsewhere)."""
        for name in COUNTS:
            setattr(self, name, getattr(self, name) + int(other[name]))

    def finish(self, started: float, fresh: int) -> "Summary":
        self.seconds = time.perf_counter() - started
        self.questions_per_second = fresh / self.seconds if self.seconds > 0 else 0.0
        return self


def tally(rows: list[dict]) -> dict:
    counted = Summary()
    for row in rows:
        counted.count(row)
    return {name: getattr(counted, name) for name in COUNTS}


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
            chunk.append(Query(line=n, id=str(n)).fail("too_long", f"line too long: {item} bytes "
                                                                   f"(at most {cfg.max_line_bytes}; see --max-line-bytes)"))
        else:
            chunk.append(parse_line(item, n, cfg.options))
        if len(chunk) == cfg.chunk_size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def job_identity(engine: Engine, input_path: str, cfg: ServeConfig) -> dict:
    """What the output depends on: the input's bytes, the model's files and every setting that shapes batches."""
    digest = hashlib.sha256()
    with open(input_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    qa = {name: asdict(served.qa) for name, served in engine.models.items()}
    return {"input": {"path": str(Path(input_path).resolve()), "sha256": digest.hexdigest()},
            "model": engine.source, "qa_config": qa.get("", qa), "batches": asdict(engine.settings),
            "settings": cfg.bounds()}


def answer_chunk_rows(engine: Engine, chunk: list[Query], cfg: ServeConfig, watch: Stopwatch) -> tuple[str, list[dict]]:
    """A chunk's output text (one JSON line per query) and its rows."""
    rows = answer_queries(engine, chunk, cfg.max_context_tokens, watch)
    with watch("format"):
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return text, rows


def serve_batch(engine: Engine, input_path: str, output_path: str, cfg: ServeConfig | None = None,
                progress: bool | None = None) -> Summary:
    """Answer every line of input_path (a file or -) into output_path (a file or -)."""
    cfg = cfg or ServeConfig()
    cfg.check()
    check_paths(input_path, output_path)
    if cfg.resume and output_path == "-":
        raise ServeError("--resume needs an output file, not standard output")
    default = engine.served().predictor
    summary = Summary(provider=default.provider, variant=default.variant, output=output_path)
    progress = sys.stderr.isatty() if progress is None else progress
    total = _count_lines(Path(input_path)) if input_path != "-" and progress else None
    identity = job_identity(engine, input_path, cfg) if input_path != "-" and output_path != "-" else None
    watch = Stopwatch()
    started = time.perf_counter()
    fresh = 0  # lines answered (not errors) by this run
    source = sys.stdin.buffer if input_path == "-" else open(input_path, "rb")
    try:
        with job_output(identity, output_path, cfg.chunk_size, cfg.resume, summary) as (sink, done), \
                tqdm(total=total, initial=done, unit="q", disable=not progress, file=sys.stderr) as bar:
            chunks = read_chunks(source, cfg, skip=done)
            while True:
                with watch("read"):
                    chunk = next(chunks, None)
                if chunk is None:
                    break
                text, rows = answer_chunk_rows(engine, chunk, cfg, watch)
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
    summary.finish(started, fresh)
    summary.stage_seconds = {**watch.seconds, "other": summary.seconds - sum(watch.seconds.values())}
    return summary


def serve_job(spec: EngineSpec, input_path: str, output_path: str, cfg: ServeConfig,
              log=lambda m: print(m, file=sys.stderr)) -> Summary:
    """The whole serve-batch command in this process: load the engine described by spec and answer the file with
    it (answer_file_ray.serve_batch_ray is the same on Ray actors)."""
    engine = load_engine(spec)
    default = engine.served().predictor
    log(f"engine: {default.variant} on {default.provider}")
    return serve_batch(engine, input_path, output_path, cfg)


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))

