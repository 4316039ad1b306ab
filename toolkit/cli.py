"""The `qa-toolkit` command: parse options, call the library, print. Nothing else lives here."""

import dataclasses
import functools
import json
import sys
from pathlib import Path

import click

from toolkit.config import DEFAULT_MODEL, TrainConfig
from toolkit.exporting import ExportError
from toolkit.inference import VARIANTS, EngineError
from toolkit.inference.variants import EXPORTED, listing

USER_ERRORS = (ValueError, FileNotFoundError, EngineError, ExportError)  # DataError, ModelError, ... are ValueErrors


def fail_clearly(fn):
    """Turn the library's user-facing errors into one 'Error: ...' line and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            raise click.ClickException(str(e)) from None
    return wrapper


ENGINE_OPTIONS = [
    click.option("--model", type=click.Path(),
                 help="An export's onnx/ directory (ONNX engine; an `export --adapters` one serves each of its "
                      "adapters) or an adapter/merged model directory (torch engine)."),
    click.option("--adapters", help="Torch engine, instead of --model: several adapters on one base, name=DIR,... "
                                    "(a line or request picks one with its \"adapter\" field)."),
    click.option("--default-adapter", help="The adapter for lines or requests that name none. Default: the first."),
    click.option("--engine", type=click.Choice(["auto", "onnx", "torch"]), default="auto", show_default=True,
                 help="auto: ONNX when the directory holds ONNX files, torch otherwise."),
    click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                 help="auto picks CUDA only where it really works; cuda without CUDA is an error."),
    click.option("--variant", help=f"{listing(tuple(VARIANTS))}. Default: for an export, serve-batch runs its fastest "
                                   "gated variant that runs here as gated (serve: see its help); torch-fp32 otherwise."),
    click.option("--batch-size", type=int, help="Most windows per forward pass. Default: 8 on CPU, 64 on CUDA."),
    click.option("--max-batch-tokens", type=int,
                 help="Most padded tokens per forward pass (bucketed by length). Default: 4096 on CPU, 32768 on CUDA."),
    click.option("--threads", type=int, help="Intra-op threads. Default: physical cores."),
    click.option("--no-answer-threshold", default="tuned", show_default=True,
                 help="tuned: each model's threshold from its qa_config.json; never: always the best span "
                      "(questions that always have an answer); a number: 'no answer' when null score - span score "
                      "is above it."),
]


def engine_options(fn):
    """The options that say which model answers and how, shared by serve-batch and serve."""
    for option in reversed(ENGINE_OPTIONS):
        fn = option(fn)
    return fn


def engine_spec(model, adapters, default_adapter, engine, device, variant, batch_size, max_batch_tokens, threads,
                no_answer_threshold):
    from toolkit.config import no_answer_threshold as parse_threshold
    from toolkit.inference import EngineSpec
    from toolkit.modeling import parse_adapters

    return EngineSpec(model=model, adapters={k: str(v) for k, v in parse_adapters(adapters).items()} if adapters else None,
                      engine=engine, device=device, variant=variant, default_adapter=default_adapter,
                      batch_size=batch_size, max_batch_tokens=max_batch_tokens, threads=threads,
                      no_answer_threshold=parse_threshold(no_answer_threshold))


ANSWER_OPTIONS = [
    click.option("--top-k", type=int, default=1, show_default=True,
                 help="Answers per question: the decision, then the next best distinct spans (\"alternatives\")."),
    click.option("--max-answer-len", type=int, help="Most tokens in an answer. Default: the model's (30)."),
    click.option("--handle-impossible-answer/--always-answer", default=True, show_default=True,
                 help="--always-answer: always the best span, never 'no answer'."),
    click.option("--doc-stride", type=int, help="Tokens shared by two windows of a long context. Default: the model's."),
    click.option("--max-seq-len", type=int, help="Tokens in a window, question included. Default: the model's (384)."),
    click.option("--max-question-len", type=int,
                 help="A question with more tokens gets an error line. Default: the model's (64)."),
    click.option("--align-to-words/--no-align-to-words", default=True, show_default=True,
                 help="Widen a span that starts or ends inside a word to whole words."),
]


def answer_options(fn):
    """Hugging Face's question-answering parameters as defaults for every line (a line's "parameters" win)."""
    for option in reversed(ANSWER_OPTIONS):
        fn = option(fn)
    return fn


def answer_defaults(top_k, max_answer_len, handle_impossible_answer, doc_stride, max_seq_len, max_question_len,
                    align_to_words):
    from toolkit.options import AnswerOptions

    return AnswerOptions().with_parameters(
        {"top_k": top_k, "max_answer_len": max_answer_len, "handle_impossible_answer": handle_impossible_answer,
         "doc_stride": doc_stride, "max_seq_len": max_seq_len, "max_question_len": max_question_len,
         "align_to_words": align_to_words})


ANSWER_FLAGS = ("top_k", "max_answer_len", "handle_impossible_answer", "doc_stride", "max_seq_len", "max_question_len",
                "align_to_words")
ENGINE_FLAGS = ("model", "adapters", "default_adapter", "engine", "device", "variant", "batch_size", "max_batch_tokens",
                "threads", "no_answer_threshold")


@click.group()
@click.version_option(package_name="qa-toolkit")
def main():
    """Extractive question answering: LoRA fine-tuning, ONNX export, batch serving, benchmarks."""


@main.command()
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="JSON file of TrainConfig settings (same names as the flags, with _); flags win.")
@click.option("--model", help=f"Base model: local path or hub name. Default: {DEFAULT_MODEL} (offline all-MiniLM-L6-v2).")
@click.option("--train-file", "train_files", multiple=True,
              help="Training source, repeatable: SQuAD .json (v1.1/v2.0), flat .jsonl, hub dataset name, or "
                   "squad-v1.1-train (offline mirror). Selectors: ?articles=A,B&exclude-articles=C&samples=N&split=S"
                   "&negatives=R&negative-kind=paragraph|sentence|swap|mix (or a comma list)&repeat=K. Default: "
                   "squad-v1.1-train?negatives=0.33.")
@click.option("--eval-file", help="Evaluation source (same forms). Default: squad-v1.1-dev?samples=1000.")
@click.option("--train-samples", type=int, help="Seeded random subset of the mixed training questions. Default 5000.")
@click.option("--eval-samples", type=int, help="Seeded random subset of the eval questions. Default: all.")
@click.option("--epochs", type=float, help="Training epochs. Default 1.")
@click.option("--max-steps", type=int, help="Stop after this many optimiser steps (overrides --epochs).")
@click.option("--eval-steps", type=int, help="Evaluate, log and checkpoint every N steps. Default 200.")
@click.option("--batch-size", type=int, help="Per-device batch size. Default 8.")
@click.option("--grad-accum", "gradient_accumulation_steps", type=int, help="Gradient accumulation steps. Default 1.")
@click.option("--lr", "learning_rate", type=float, help="Peak learning rate. Default 1e-3.")
@click.option("--warmup-steps", type=int, help="Linear warm-up steps. Default 100.")
@click.option("--seed", type=int, help="Seed for subsets, head init and training. Default 42.")
@click.option("--output-dir", help="Run directory (adapter/, reports/, checkpoints/, manifest.json). Default models/run.")
@click.option("--resume", is_flag=True, help="Continue the run in --output-dir from its latest checkpoint.")
@click.option("--lora-targets", help="all-linear (default: every linear layer of the encoder), attention (the "
                                     "query/key/value/output projections, looked up per architecture), or "
                                     "comma-separated module names.")
@click.option("--lora-r", type=int, help="LoRA rank. Default 32.")
@click.option("--lora-alpha", type=int, help="LoRA alpha. Default 64.")
@click.option("--full-finetune", is_flag=True, default=None, help="Train every weight instead of a LoRA adapter.")
@click.option("--init-adapter", type=click.Path(), help="Continue training this adapter directory (its LoRA weights, "
                                                       "settings and QA head) on new data in a new run; --lora-* are "
                                                       "then the adapter's. Unlike --resume, which goes on with the same run.")
@click.option("--teacher", type=click.Path(), help="Distil from this model directory (an export, adapter or merged "
                                                   "model, of any base): its logits on the training windows are soft "
                                                   "targets beside the gold labels.")
@click.option("--distill-alpha", type=float, help="Weight of the teacher's term, in (0, 1]. Default 0.5.")
@click.option("--distill-temperature", type=float, help="Softmax temperature of the teacher's term. Default 2.")
@click.option("--bf16", type=click.Choice(["auto", "on", "off"]),
              help="bf16 autocast. auto (default): on a CPU with native bf16 (AVX512-BF16/AMX); CUDA keeps fp16.")
@click.option("--eval-batch-size", type=int, help="Windows per eval batch. Default 32.")
@click.option("--max-length", type=int, help="Tokens per window. Default 384.")
@click.option("--doc-stride", type=int, help="Overlap between windows of a long context. Default 128.")
@click.option("--max-question-tokens", type=int, help="Longest question kept, in tokens. Default 64.")
@click.option("--cache-dir", help="Cache for the offline SQuAD v1.1 mirror. Default ~/.cache/qa-toolkit.")
@fail_clearly
def train(config_file, resume, lora_targets, **flags):
    """Fine-tune an encoder for extractive QA (LoRA by default) and evaluate it."""
    from toolkit.training import train as run

    cfg = TrainConfig.from_file(config_file) if config_file else TrainConfig()
    given = {k: v for k, v in flags.items() if v is not None and v != ()}
    if "train_files" in given:
        given["train_files"] = list(given["train_files"])
    if lora_targets:
        given["lora_targets"] = [t.strip() for t in lora_targets.split(",") if t.strip()]
    cfg = dataclasses.replace(cfg, **given)
    manifest = run(cfg, resume=resume)
    if manifest is None:  # a process other than the first of a distributed run
        return
    click.echo(json.dumps({"output_dir": cfg.output_dir, "null_threshold": manifest["null_threshold"],
                           "metrics": manifest["final_metrics"]["tuned"], "timing": manifest["timing"]}, indent=2))


@main.command()
@click.option("--merge/--no-merge", default=False,
              help="Merge a LoRA adapter (--adapter) into its base first. Without it, export --model as is.")
@click.option("--adapter", type=click.Path(), help="A training run's adapter directory (with --merge).")
@click.option("--model", help="Without --merge: a merged or fully fine-tuned model directory, or a hub name.")
@click.option("--adapters", help="Instead of --merge: several adapters of one base, name=DIR,name=DIR,...: one ONNX "
                                 "base graph taking the LoRA weights as inputs + one .onnx_adapter file and "
                                 "qa_config.json per adapter (needs --output-dir).")
@click.option("--default-adapter", help="With --adapters: the adapter for lines that name none. Default: the first.")
@click.option("--output-dir", help="Export directory (merged/, onnx/, export_manifest.json). Default: <run>/export.")
@click.option("--variants", default=",".join(EXPORTED), show_default=True,
              help=f"Among {listing(EXPORTED)}. opt: fused by ONNX Runtime's transformer optimizer; int8, int8-u8: "
                   "the fused graph, dynamic int8 per channel, weights s8 or u8; ov-*: OpenVINO IR, ov-int8*: NNCF "
                   "static int8. Each is gated where it runs; those that cannot run here are skipped, saying why.")
@click.option("--calibration-file", help="Training questions whose windows calibrate the static int8 variants "
                                         "(never the eval set). Default: the training run's first source.")
@click.option("--calibration-samples", type=int, default=128, show_default=True, help="Calibration questions.")
@click.option("--optimization-level", type=click.IntRange(0, 2), default=2, show_default=True,
              help="ORTOptimizer level for 'opt' (O3 is not offered: its GELU approximation changes outputs).")
@click.option("--eval-file", help="Parity set (same forms as train). Default: the training run's eval set.")
@click.option("--eval-samples", type=int, default=2000, show_default=True, help="Parity questions (seeded subset).")
@click.option("--max-drop", type=float, default=1.0, show_default=True,
              help="A variant losing more EM or F1 points than this vs PyTorch (with the no-answer threshold, or "
                   "on best spans alone) is marked failed. The CPU default is the fastest variant that passes.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --output-dir.")
@fail_clearly
def export(merge, adapter, model, adapters, default_adapter, output_dir, variants, calibration_file, calibration_samples,
           optimization_level, eval_file, eval_samples, max_drop, overwrite):
    """Export a model to ONNX variants through Optimum and check each against PyTorch."""
    if adapters:
        from toolkit.exporting import AdapterExportConfig, export_adapters
        from toolkit.modeling import parse_adapters

        if merge or adapter or model or not output_dir:
            raise click.UsageError("--adapters takes --output-dir and no --merge, --adapter or --model")
        cfg = AdapterExportConfig(adapters={k: str(v) for k, v in parse_adapters(adapters).items()},
                                  output_dir=output_dir, default=default_adapter, eval_file=eval_file,
                                  eval_samples=eval_samples, overwrite=overwrite)
        manifest = export_adapters(cfg)
        click.echo(json.dumps({"default": manifest["default"], "adapters": {
            name: {k: v[k] for k in ("max_abs_logit_diff", "answer_agreement", "span_agreement", "exact", "f1",
                                     "adapter_file_bytes")} for name, v in manifest["adapters"].items()},
            "graph_size_bytes": manifest["graph_size_bytes"], "wall_seconds": manifest["wall_seconds"]}, indent=2))
        return
    from toolkit.exporting import ExportConfig
    from toolkit.exporting import export as run

    cfg = ExportConfig(adapter=adapter, model=model, output_dir=output_dir, merge=merge,
                       variants=[v.strip() for v in variants.split(",") if v.strip()],
                       optimization_level=optimization_level, eval_file=eval_file, calibration_file=calibration_file,
                       calibration_samples=calibration_samples, eval_samples=eval_samples, max_drop=max_drop,
                       overwrite=overwrite)
    manifest = run(cfg)
    table = {name: {k: v[k] for k in ("verdict", "passed", "size_bytes", "max_abs_logit_diff", "answer_agreement",
                                      "span_agreement", "delta_exact", "delta_f1", "forced_delta_exact", "forced_delta_f1",
                                      "questions_per_second") if k in v} | ({"reason": v["reason"]} if "reason" in v else {})
             for name, v in manifest["variants"].items()}
    click.echo(json.dumps({"default_variant": manifest["default_variant"], "variants": table,
                           "cpu_ranking": manifest["cpu_ranking"], "measured_on": manifest["measured_on"],
                           "wall_seconds": manifest["wall_seconds"]}, indent=2))


@main.command("serve-batch")
@click.argument("input_path", metavar="INPUT.jsonl")
@engine_options
@answer_options
@click.option("-o", "--output", help="Output JSONL, or - for stdout. Default: INPUT with .answers.jsonl.")
@click.option("--chunk-size", type=int, default=1024, show_default=True,
              help="Lines read, answered and written at a time (bounds memory).")
@click.option("--max-line-bytes", type=int, default=1 << 20, show_default=True,
              help="A longer input line gets an error line (and is never read into memory whole).")
@click.option("--max-context-tokens", type=int, default=4096, show_default=True,
              help="A context with more tokens gets an error line (SQuAD's longest has ~850).")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted run from its partial output (same input, model and settings).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="auto", default=None,
              help="Answer on Ray actors (extra 'ray'): --ray alone or --ray auto joins the running cluster or "
                   "starts a local one; --ray ADDRESS joins that cluster. INPUT must be a file every node can read.")
@click.option("--workers", type=int, default=2, show_default=True, help="With --ray: actors, one engine each.")
@click.option("--threads-per-worker", type=int, default=1, show_default=True,
              help="With --ray: intra-op threads (and CPUs reserved) per actor.")
@click.option("--summary-json", type=click.Path(), help="Also write the run summary to this JSON file.")
@fail_clearly
def serve_batch(input_path, output, chunk_size, max_line_bytes, max_context_tokens, resume, ray_address, workers,
                threads_per_worker, summary_json, **flags):
    """Answer every line of INPUT.jsonl ({"id"?, "question", "context", "adapter"?, "parameters"?}) into one output
    line each. A line's "parameters" are Hugging Face's question-answering parameters, over the flags' defaults."""
    from dataclasses import asdict

    from toolkit.serving import ServeConfig, serve_job

    if output is None:
        output = "-" if input_path == "-" else str(Path(input_path).with_suffix(".answers.jsonl"))
    from toolkit.config import no_answer_threshold

    spec = engine_spec(**{k: flags[k] for k in ENGINE_FLAGS if k != "no_answer_threshold"}, no_answer_threshold="tuned")
    options = dataclasses.replace(answer_defaults(**{k: flags[k] for k in ANSWER_FLAGS}),
                                  no_answer_threshold=no_answer_threshold(flags["no_answer_threshold"]))
    cfg = ServeConfig(chunk_size=chunk_size, max_line_bytes=max_line_bytes, max_context_tokens=max_context_tokens,
                      resume=resume, options=options)
    if ray_address is None:
        summary = asdict(serve_job(spec, input_path, output, cfg, log=lambda m: click.echo(m, err=True)))
    else:
        from toolkit.serving.answer_file_ray import RayConfig, serve_batch_ray

        summary = asdict(serve_batch_ray(spec, input_path, output, cfg, RayConfig(
            address=ray_address, workers=workers, threads_per_worker=threads_per_worker,
            gpus_per_worker=1.0 if flags["device"] == "cuda" else 0.0)))
    click.echo(json.dumps(summary), err=True)
    if summary_json:
        Path(summary_json).write_text(json.dumps(summary, indent=2) + "\n")


@main.command()
@engine_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (0.0.0.0: every one).")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--max-batch-questions", type=int, default=32, show_default=True,
              help="Most questions the dynamic batcher answers in one engine call.")
@click.option("--max-wait-ms", type=float, default=2.0, show_default=True,
              help="How long a batch waits for the clients answered last to send again (after the latest arrival).")
@click.option("--max-queue", type=int, default=256, show_default=True,
              help="Most questions waiting; more gets 503 with Retry-After.")
@click.option("--timeout", "request_timeout_s", type=float, default=30.0, show_default=True,
              help="Seconds a request may wait for its answer; then 504.")
@click.option("--max-body-bytes", type=int, default=1 << 20, show_default=True, help="Larger bodies get 413.")
@click.option("--max-context-tokens", type=int, default=4096, show_default=True,
              help="A longer context gets 422 (questions: the model's max_question_tokens).")
@click.option("--api-key-file", type=click.Path(exists=True, dir_okay=False),
              help="Every route but /health needs 'Authorization: Bearer <the file's first line>'. "
                   "Or set QA_TOOLKIT_API_KEY.")
@click.option("--cors-origin", "cors_origins", multiple=True, help="Allow browser calls from this origin (repeatable).")
@click.option("--ray-serve", "ray_address", is_flag=False, flag_value="auto", default=None,
              help="Serve the same app as a Ray Serve deployment (extra 'ray'): --ray-serve alone joins the running "
                   "cluster or starts a local one; --ray-serve ADDRESS joins that cluster.")
@click.option("--replicas", type=int, default=2, show_default=True, help="With --ray-serve: replicas, one engine each.")
@click.option("--threads-per-replica", type=int, default=1, show_default=True,
              help="With --ray-serve: intra-op threads (and CPUs reserved) per replica.")
@fail_clearly
def serve(host, port, max_batch_questions, max_wait_ms, max_queue, request_timeout_s, max_body_bytes,
          max_context_tokens, api_key_file, cors_origins, ray_address, replicas, threads_per_replica, **flags):
    """Answer questions over HTTP (Hugging Face question-answering API), with dynamic batching. Without --variant
    it serves the export's CPU/CUDA default when that cannot make a request's answer depend on its batch-mates,
    else the fastest gated variant that cannot (never dynamic int8; OpenVINO's pad each window on its own)."""
    import os

    from toolkit.serving.app import ServerConfig
    from toolkit.serving.batcher import BatcherConfig
    from toolkit.serving.server import serve as run

    spec = engine_spec(**{k: flags[k] for k in ENGINE_FLAGS})
    key = Path(api_key_file).read_text().strip().splitlines()[0] if api_key_file else os.environ.get("QA_TOOLKIT_API_KEY")
    if api_key_file and not key:
        raise click.UsageError(f"--api-key-file {api_key_file} is empty")
    cfg = ServerConfig(max_body_bytes=max_body_bytes, request_timeout_s=request_timeout_s, api_key=key or None,
                       cors_origins=tuple(cors_origins),
                       batcher=BatcherConfig(max_batch_questions=max_batch_questions, max_wait_ms=max_wait_ms,
                                             max_queue=max_queue, max_context_tokens=max_context_tokens))
    if ray_address is None:
        run(spec, cfg, host, port)
        return
    from toolkit.serving.ray_serve import RayServeConfig, serve_until_stopped

    serve_until_stopped(spec, cfg, RayServeConfig(ray_address, replicas, threads_per_replica), host, port)


@main.command()
@click.option("--model", help="Export directory (merged/ + onnx/) or its onnx/ dir; with --train: a base model.")
@click.option("--eval-file", help="Questions to time and score (same forms as train). With --train: batch source.")
@click.option("--variants", default="torch-fp32,torch-bf16,fp32,opt,int8,int8-u8,fp16,ov-bf16,ov-int8,ov-int8-bf16",
              show_default=True,
              help=f"Among {listing(tuple(VARIANTS))}; each runs where it is gated (its first device); those that "
                   "cannot run here are skipped, saying why.")
@click.option("--batch-sizes", default="1,8,32", show_default=True, help="Latency batch sizes.")
@click.option("--seq-lens", default="real,384", show_default=True,
              help="'real' pads each batch to its longest window; a number pads every batch to it.")
@click.option("--eval-samples", type=int, help="Seeded subset of the eval questions. Default: all.")
@click.option("--latency-batches", type=int, default=20, show_default=True, help="Timed batches per cell.")
@click.option("--threads", type=int, help="Threads for torch and ONNX Runtime alike. Default: physical cores.")
@click.option("--peers", default="pipeline-torch,pipeline-ort,pipeline-ov-fp32,pipeline-ov-int8", show_default=True,
              help="The transformers QA pipeline over torch, Optimum ORTModel, optimum-intel OVModel fp32 and NNCF "
                   "int8 (OpenVINO ones need the peers extra; reported as not run without it); 'none' for no peers.")
@click.option("--calibration-file", default="squad-v1.1-train", show_default=True,
              help="Training questions whose windows calibrate the int8 peer (never the eval set).")
@click.option("--name", default="latest", show_default=True, help="Results go to bench/results/NAME/.")
@click.option("--results-dir", default="bench/results", show_default=True)
@click.option("--train", "train_mode", is_flag=True,
              help="Instead: s/step and peak memory of training modes (LoRA vs full fine-tuning, AdamW implementation, "
                   "torch.compile, bf16) on the same batch, and the eval pass per eval batch size.")
@click.option("--train-modes", help="With --train: comma-separated modes (default: all of "
                                    "lora,full,seed-lora,lora-foreach,lora-fused,full-fused,lora-compile,lora-bf16).")
@click.option("--steps", type=int, default=10, show_default=True, help="With --train: timed steps per mode.")
@click.option("--batch-size", type=int, default=8, show_default=True, help="With --train: the batch size.")
@fail_clearly
def bench(model, eval_file, variants, batch_sizes, seq_lens, eval_samples, latency_batches, threads, peers, calibration_file, name,
          results_dir, train_mode, train_modes, steps, batch_size):
    """Benchmark PyTorch against ONNX Runtime: latency, throughput, memory, size and EM/F1, side by side."""
    from toolkit.benchmarking.inference import BenchConfig, run_bench

    if train_mode:
        from toolkit.benchmarking.training import TRAIN_MODES, TrainBenchConfig, run_train_bench

        cfg = TrainBenchConfig(model=model or DEFAULT_MODEL, eval_file=eval_file or "squad-v1.1-train",
                               name=name if name != "latest" else "train-latest", results_dir=results_dir,
                               modes=tuple(train_modes.split(",")) if train_modes else tuple(TRAIN_MODES),
                               batch_size=batch_size, steps=steps, threads=threads)
        results = run_train_bench(cfg)
        click.echo(json.dumps({k: results[k] for k in ("modes", "eval", "x_lora") if k in results}, indent=2))
        return
    if not model or not eval_file:
        raise click.UsageError("bench needs --model (an export directory) and --eval-file")
    cfg = BenchConfig(model=model, eval_file=eval_file, name=name, results_dir=results_dir,
                      variants=[v.strip() for v in variants.split(",") if v.strip()],
                      batch_sizes=[int(b) for b in batch_sizes.split(",")], seq_lens=seq_lens.split(","),
                      latency_batches=latency_batches, eval_samples=eval_samples, threads=threads,
                      peers=[] if peers == "none" else [p.strip() for p in peers.split(",") if p.strip()],
                      calibration_file=calibration_file)
    results = run_bench(cfg)
    click.echo((Path(results_dir) / name / "results.md").read_text())


@main.command("to-jsonl")
@click.argument("source")
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--samples", type=int, help="Seeded subset of the questions.")
@fail_clearly
def to_jsonl(source, output, samples):
    """Write a SQuAD source (file, hub name or squad-v1.1-dev) as flat JSONL, answers included."""
    from toolkit import data

    examples, _ = data.load_examples([source], cache_dir=data.default_cache_dir(), seed=42,
                                     limit=samples, default_split="validation")
    data.write_jsonl(examples, Path(output))
    click.echo(f"{len(examples)} questions -> {output}", err=True)


@main.command()
@click.argument("answers", type=click.Path(exists=True, dir_okay=False))
@click.option("--references", required=True, help="The SQuAD source the questions came from.")
@click.option("--best-span", is_flag=True,
              help="Score each line's best span, ignoring the no-answer threshold (SQuAD v1.1: all answerable).")
@click.option("--examples", type=int, default=0, help="Also print this many answers beside their references.")
@click.option("--reliability", type=click.Path(dir_okay=False),
              help="Write the reliability diagram of the no-answer probability and answer confidence to this PNG.")
@fail_clearly
def score(answers, references, best_span, examples, reliability):
    """Official SQuAD EM/F1 (HasAns/NoAns), no-answer AUC and the calibration (ECE) of a serve-batch output file."""
    from toolkit import data
    from toolkit.scoring import sample_answers, score_answer_file

    rows, _ = data.load_examples([references], cache_dir=data.default_cache_dir(), seed=42,
                                 limit=None, default_split="validation")
    for line in sample_answers(answers, rows, examples):
        click.echo(line)
    click.echo(json.dumps(score_answer_file(answers, data.references(rows), best_span, reliability), indent=2))


@main.command()
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--eval-file", required=True,
              help="Questions held out from training, with unanswerable ones (e.g. the slice's 3 tuning articles).")
@click.option("--retune", is_flag=True, help="Also tune the no-answer threshold again (max F1) on these questions.")
@fail_clearly
def calibrate(model_dir, eval_file, retune):
    """Fit the calibrated no-answer probability and answer confidence of a model (an adapter directory or an
    export's onnx/ directory) on held-out questions, and store them in its qa_config.json."""
    from toolkit.calibrating import calibrate_model

    click.echo(json.dumps(calibrate_model(model_dir, eval_file, retune), indent=2))


if __name__ == "__main__":
    sys.exit(main())
