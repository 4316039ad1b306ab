"""serve-batch on Ray Data: the same job as toolkit.serve, answered by a pool of Ray actors.

The driver scans the input once for the byte offset of every chunk (``chunk_size`` lines, as in the
single-process path) and builds a dataset of (chunk number, offset) rows. Each actor loads one engine
(once), reads its chunks from the input file itself, parses and answers them with the single-process
code (``read_chunks`` + ``answer_chunk``), and returns each chunk's output lines. The driver writes
the chunks in input order to the same hidden partial file, renamed into place at the end, so the output
is byte for byte that of ``serve_batch`` (same chunks, same batches) and ``resume`` works the same way.

The input file must be readable at the same path on every node (a local file on one machine, shared
storage on a cluster); standard input cannot be scattered this way.
"""

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from toolkit.serve import ServeConfig, ServeError, Summary, answer_chunk, check_paths, job_identity, job_output, \
    read_chunks, read_lines


@dataclass
class RayConfig:
    address: str = "auto"  # auto: the running cluster (RAY_ADDRESS, `ray start`), else a local instance; or an address
    workers: int = 2  # actors, each with its own engine
    threads_per_worker: int = 1  # intra-op threads of each actor's engine, and the CPUs it reserves
    gpus_per_worker: float = 0.0  # > 0: GPU actors (the engine then runs on CUDA)
    object_store_mb: int = 512  # for a local instance only
    engine_args: dict = field(default_factory=dict)  # load_engine / load_torch_adapters arguments


def chunk_offsets(input_path: str, cfg: ServeConfig, skip_chunks: int) -> list[tuple[int, int]]:
    """(chunk number, byte offset) of every chunk after the first skip_chunks, read as read_chunks reads."""
    out = []
    with open(input_path, "rb") as f:
        offset, n = 0, 0
        for n, _ in enumerate(read_lines(f, cfg.max_line_bytes)):
            if n % cfg.chunk_size == 0 and n // cfg.chunk_size >= skip_chunks:
                out.append((n // cfg.chunk_size, offset))
            offset = f.tell()
    return out


def build_engine(engine_args: dict):
    from toolkit.engine import load_engine, load_torch_adapters

    args = dict(engine_args)
    if "adapters" in args:
        return load_torch_adapters({k: Path(v) for k, v in args.pop("adapters").items()}, **args)
    return load_engine(**args)


class ChunkAnswerer:
    """A Ray Data actor: one engine, loaded once; answers whole chunks read from the shared input file."""

    def __init__(self, input_path: str, serve: dict, engine_args: dict):
        self.input_path = input_path
        self.cfg = ServeConfig(**serve)
        self.engine = build_engine(engine_args)

    def __call__(self, batch: dict) -> dict:
        out = {"text": [], "lines": [], "answered": [], "no_answer": [], "errors": []}
        with open(self.input_path, "rb") as f:
            for chunk_number, offset in zip(batch["chunk"], batch["offset"]):
                f.seek(int(offset))
                chunk = next(read_chunks(f, self.cfg, first=int(chunk_number) * self.cfg.chunk_size))
                rows = answer_chunk(self.engine, chunk, self.cfg.max_context_tokens)
                tally = Summary()
                for row in rows:
                    tally.count(row)
                out["text"].append("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
                for name in ("lines", "answered", "no_answer", "errors"):
                    out[name].append(getattr(tally, name))
        return out


def connect(cfg: RayConfig):
    """ray.init for this job: the given or running cluster, else a local instance sized from cfg."""
    import ray

    env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(cfg.threads_per_worker)}}
    if ray.is_initialized():
        return ray
    if cfg.address != "auto":
        ray.init(address=cfg.address, runtime_env=env, log_to_driver=False)
        return ray
    try:
        ray.init(address="auto", runtime_env=env, log_to_driver=False)
    except ConnectionError:
        ray.init(num_cpus=max(os.cpu_count() or 1, cfg.workers * cfg.threads_per_worker),
                 object_store_memory=cfg.object_store_mb << 20, include_dashboard=False, runtime_env=env,
                 log_to_driver=False)
    return ray


def serve_batch_ray(input_path: str, output_path: str, cfg: ServeConfig, ray_cfg: RayConfig,
                    progress: bool | None = None) -> Summary:
    """serve_batch's contract, answered by ray_cfg.workers Ray actors."""
    try:
        import ray
    except ImportError:
        raise ServeError("--ray needs the ray extra: pip install 'qa-toolkit[ray]'") from None
    if input_path == "-":
        raise ServeError("--ray reads the input file on every worker: pass a file, not standard input")
    if ray_cfg.workers < 1 or ray_cfg.threads_per_worker < 1:
        raise ServeError("--workers and --threads-per-worker must be at least 1")
    check_paths(input_path, output_path)
    engine = build_engine(ray_cfg.engine_args)  # fails here, before Ray starts, on a bad model; names the job
    summary = Summary(provider=engine.predictor.provider, variant=engine.predictor.variant, output=output_path)
    identity = job_identity(engine, input_path, cfg) if output_path != "-" else None
    del engine
    started = time.perf_counter()
    fresh = 0
    with job_output(identity, output_path, cfg, summary) as (sink, done):
        offsets = chunk_offsets(input_path, cfg, done // cfg.chunk_size)
        if offsets:
            connect(ray_cfg)
            context = ray.data.DataContext.get_current()
            context.execution_options.preserve_order = True
            context.enable_progress_bars = False
            dataset = ray.data.from_items([{"chunk": c, "offset": o} for c, o in offsets])
            serve = {"chunk_size": cfg.chunk_size, "max_line_bytes": cfg.max_line_bytes,
                     "max_context_tokens": cfg.max_context_tokens}
            answered = dataset.map_batches(
                ChunkAnswerer, batch_size=1, compute=ray.data.ActorPoolStrategy(size=ray_cfg.workers),
                fn_constructor_args=(str(Path(input_path).resolve()), serve, ray_cfg.engine_args),
                num_cpus=ray_cfg.threads_per_worker, num_gpus=ray_cfg.gpus_per_worker or None)
            show = sys.stderr.isatty() if progress is None else progress
            with tqdm(total=len(offsets), unit="chunk", disable=not show, file=sys.stderr) as bar:
                for row in answered.iter_rows():
                    sink.write(row["text"])
                    sink.flush()
                    for name in ("lines", "answered", "no_answer", "errors"):
                        setattr(summary, name, getattr(summary, name) + int(row[name]))
                    fresh += int(row["answered"]) + int(row["no_answer"])
                    bar.update(1)
    summary.seconds = time.perf_counter() - started
    summary.questions_per_second = fresh / summary.seconds if summary.seconds > 0 else 0.0
    return summary
