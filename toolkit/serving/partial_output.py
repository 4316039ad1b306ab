"""A batch job's output file: refused when it is the input, written to a hidden partial file with a record of
the job it belongs to, cut back to whole chunks and continued on --resume, renamed into place when done."""

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


class ServeError(ValueError):
    """A serve-batch job that cannot start or resume as asked; the message says why."""


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


def keep_whole_chunks(partial: Path, chunk_size: int, summary) -> int:
    """Cut the partial output back to its last whole chunk; count what is kept (summary.count(row) per
    row). Returns the input lines kept."""
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


def start_partial(identity: dict | None, output_path: str, chunk_size: int, resume: bool, summary) -> tuple[Path, int]:
    """The partial file to append to, and how many input lines it already answers."""
    partial, meta = partial_paths(output_path)
    partial.parent.mkdir(parents=True, exist_ok=True)
    if resume:
        if identity is None:
            raise ServeError("--resume needs an input file, not standard input")
        if partial.exists() and meta.exists():
            saved = json.loads(meta.read_text())
            changed = sorted(k for k in identity if saved.get(k) != identity[k])
            if changed:
                raise ServeError(f"--resume: the partial output {partial} belongs to another job (its {', '.join(changed)} "
                                 "differ); rerun without --resume to start over")
            done = keep_whole_chunks(partial, chunk_size, summary)
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
def job_output(identity: dict | None, output_path: str, chunk_size: int, resume: bool,
               summary) -> Iterator[tuple[IO[str], int]]:
    """Where the answers go, and how many input lines are already answered there.

    For a file: its partial file (resumed, or new), renamed into place when the block ends, and kept
    for --resume when the block raises. identity is job_identity's (None for standard input)."""
    if output_path == "-":
        yield sys.stdout, 0
        return
    partial, done = start_partial(identity, output_path, chunk_size, resume, summary)
    with open(partial, "a", encoding="utf-8") as sink:
        try:
            yield sink, done
        except BaseException:
            print(f"serve-batch stopped; the partial output is kept at {partial}: rerun the same command with "
                  "--resume to continue from it", file=sys.stderr)
            raise
    os.replace(partial, output_path)
    partial_paths(output_path)[1].unlink(missing_ok=True)
