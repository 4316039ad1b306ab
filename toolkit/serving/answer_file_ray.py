"""serve-batch on Ray Data: the same job as serving.batch, answered by a pool of Ray actors.

The driver scans the input once for the byte offset of every chunk (``chunk_size`` lines, as in the
single-process path) and builds a dataset of (chunk number, offset) rows. Each actor loads one engine
(once), reads its chunks from the input file itself, parses and answers them with the single-process
code, and returns each chunk's output lines, counts and stage times. The driver writes the chunks in
input order to the same hidden partial file, renamed into place at the end, so the output is byte for
byte that of ``serve_batch`` (same chunks, same batches) and ``resume`` works the same way.

The input file must be readable at the same path on every node (a local file on one machine, shared
storage on a cluster); standard input cannot be scattered this way.
"""

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from toolkit.inference import EngineSpec, Stopwatch, load_engine
from toolkit.serving.answer_file import (
    ServeConfig,
    Summary,
    answer_chunk_rows,
    job_identity,
    read_chunks,
    read_lines,
    tally,
)
from toolkit.serving.partial_output import ServeError, check_paths, job_output


@dataclass
class RayConfig:
    address: str = "auto"  # auto: the running cluster (RAY_ADDRESS, `ray start`), else a local instance; or an address
    workers: int = 2  # actors, each with its own engine
    threads_per_worker: int = 1  # intra-op threads of each actor's engine, and the CPUs it reserves
    gpus_per_worker: float = 0.0  # > 0: GPU actors (the engine then runs on CUDA)
    object_store_mb: int = 512  # for a local instance only

    def check(self) -> None:
        if self.workers < 1 or self.threads_per_worker < 1:
            raise ServeError("--workers and --threads-per-worker must be at least 1")


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


class ChunkAnswerer:
    """A Ray Data actor: one engine, loaded once; answers whole chunks read from the shared input file."""

    def __init__(self, input_path: str, serve: dict, spec: dict):
        self.input_path = input_path
        self.cfg = ServeConfig.from_bounds(serve)
        self.engine = load_engine(EngineSpec(**spec))

    def __call__(self, batch: dict) -> dict:
        out = {"text": [], "counts": [], "stages": []}
        with open(self.input_path, "rb") as f:
            for chunk_number, offset in zip(batch["chunk"], batch["offset"]):
                watch = Stopwatch()
                f.seek(int(offset))
                with watch("read"):
                    chunk = next(read_chunks(f, self.cfg, first=int(chunk_number) * self.cfg.chunk_size))
                text, rows = answer_chunk_rows(self.engine, chunk, self.cfg, watch)
                out["text"].append(text)
                out["counts"].append(json.dumps(tally(rows)))
                out["stages"].append(json.dumps(watch.seconds))
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


def serve_batch_ray(spec: EngineSpec, input_path: str, output_path: str, cfg: ServeConfig, ray_cfg: RayConfig,
                    progress: bool | None = None) -> Summary:
    """serve_batch's contract, answered by ray_cfg.workers Ray actors, each with an engine built from spec
    (at threads_per_worker threads)."""
    try:
        import ray
    except ImportError:
        raise ServeError("--ray needs the ray extra: pip install 'qa-toolkit[ray]'") from None
    if input_path == "-":
        raise ServeError("--ray reads the input file on every worker: pass a file, not standard input")
    ray_cfg.check()
    cfg.check()
    check_paths(input_path, output_path)
    spec = dataclasses.replace(spec, threads=ray_cfg.threads_per_worker)
    engine = load_engine(spec)  # fails here, before Ray starts, on a bad model; names the job
    default = engine.served().predictor
    summary = Summary(provider=default.provider, variant=default.variant, output=output_path)
    identity = job_identity(engine, input_path, cfg) if output_path != "-" else None
    del engine
    started, fresh, watch = time.perf_counter(), 0, Stopwatch()
    with job_output(identity, output_path, cfg.chunk_size, cfg.resume, summary) as (sink, done):
        offsets = chunk_offsets(input_path, cfg, done // cfg.chunk_size)
        if offsets:
            connect(ray_cfg)
            context = ray.data.DataContext.get_current()
            context.execution_options.preserve_order = True
            context.enable_progress_bars = False
            dataset = ray.data.from_items([{"chunk": c, "offset": o} for c, o in offsets])
            answered = dataset.map_batches(
                ChunkAnswerer, batch_size=1, compute=ray.data.ActorPoolStrategy(size=ray_cfg.workers),
                fn_constructor_args=(str(Path(input_path).resolve()), cfg.bounds(), dataclasses.asdict(spec)),
                num_cpus=ray_cfg.threads_per_worker, num_gpus=ray_cfg.gpus_per_worker or None)
            show = sys.stderr.isatty() if progress is None else progress
            with tqdm(total=len(offsets), unit="chunk", disable=not show, file=sys.stderr) as bar:
                for row in answered.iter_rows():
                    with watch("write"):
                        sink.write(row["text"])
                        sink.flush()
                    counts = json.loads(row["counts"])
                    summary.add_counts(counts)
                    watch.add(json.loads(row["stages"]))
                    fresh += counts["answered"] + counts["no_answer"]
                    bar.update(1)
    summary.stage_seconds = watch.seconds
    return summary.finish(started, fresh)
