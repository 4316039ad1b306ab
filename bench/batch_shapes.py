"""Where the server's throughput at concurrency 16 goes: the same questions' padded batches, as serve-batch forms
them (1,024-line chunks) and as 16-question engine calls form them (in the order sent, and sorted by length), run
through the server's predictor call by call and all at once, with no HTTP and no tokenising. Per-window length
buckets make the padded tokens the same in every arrangement, so what differs is only how many windows each batch
holds and how the batches are scheduled.

    python bench/batch_shapes.py --export models/minilm-squad2-lora/export-ov [--questions 1000] [--per-call 16]
        [--rounds 3] [--name batch-shapes-cpu]

The arrangements alternate within each round (the box's speed drifts); each ratio is serve-batch's call-by-call
time over the arrangement's, within a round, then the median. The engine's own stage times (tokenise, infer,
postprocess) for the whole file and for 16-question calls complete the picture. Writes bench/results/<name>/results.json and results.md.
"""

import argparse
import statistics
import time
from pathlib import Path

from toolkit import data, load
from toolkit.benchmarking.results import machine_line, stamp, write_results
from toolkit.inference import EngineSpec, Stopwatch
from toolkit.inference.loading import server_variant
from toolkit.inference.padding import batch_logits, padded_batches
from toolkit.serving.answer_file import ServeConfig


def padded_calls(engine, questions, contexts, calls: list[list[int]]) -> list[list[dict]]:
    """Each engine call's padded batches, as the engine forms them for those questions."""
    return [list(padded_batches(engine.features([questions[i] for i in call], [contexts[i] for i in call]),
                                engine.tokenizer.pad_token_id, engine.settings)[1]) for call in calls]


def arrangements(engine, questions, contexts, per_call: int) -> dict[str, list[list[dict]]]:
    """serve-batch's chunks, per_call questions per call in the order sent, and the same sorted by length."""
    n, chunk = len(questions), ServeConfig().chunk_size
    features = engine.features(questions, contexts)
    first_window = {}
    for w, example in enumerate(features.example_index):
        first_window.setdefault(example, len(features.inputs["input_ids"][w]))
    by_length = sorted(range(n), key=lambda i: first_window[i])
    return {"serve-batch chunks": padded_calls(engine, questions, contexts,
                                               [list(range(i, min(i + chunk, n))) for i in range(0, n, chunk)]),
            f"{per_call} per call, as sent": padded_calls(engine, questions, contexts,
                                                          [list(range(i, min(i + per_call, n)))
                                                           for i in range(0, n, per_call)]),
            f"{per_call} per call, sorted by length": padded_calls(engine, questions, contexts,
                                                                   [by_length[i:i + per_call]
                                                                    for i in range(0, n, per_call)])}


def seconds(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def replay(predictor, calls: list[list[dict]]) -> dict[str, float]:
    """Seconds to run the batches call by call (as the engine does) and all in one call."""
    return {"call_by_call": seconds(lambda: [list(batch_logits(predictor, c)) for c in calls]),
            "all_at_once": seconds(lambda: list(batch_logits(predictor, [b for c in calls for b in c])))}


def engine_stages(engine, questions, contexts, per_call: int) -> dict[str, float]:
    """The engine's ms per question by stage, answering per_call questions per call."""
    watch = Stopwatch()
    for i in range(0, len(questions), per_call):
        engine.answer(questions[i:i + per_call], contexts[i:i + per_call], watch=watch)
    return {stage: 1000 * s / len(questions) for stage, s in watch.seconds.items()}


def shape_stats(calls: list[list[dict]]) -> dict:
    sizes = [b["input_ids"].shape[0] for c in calls for b in c]
    return {"calls": len(calls), "batches": len(sizes), "windows": sum(sizes),
            "windows_per_batch": sum(sizes) / len(sizes),
            "padded_tokens": sum(b["input_ids"].size for c in calls for b in c)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", required=True, help="export directory (merged/ + onnx/)")
    parser.add_argument("--source", default="squad-v1.1-dev")
    parser.add_argument("--questions", type=int, default=1000)
    parser.add_argument("--per-call", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--name", default="batch-shapes-cpu")
    parser.add_argument("--results-dir", default="bench/results")
    args = parser.parse_args()
    onnx_dir = Path(args.export) / "onnx"
    examples, _ = data.load_examples([args.source], cache_dir=data.default_cache_dir(), seed=42,
                                     limit=args.questions, default_split="validation")
    questions, contexts = [e.question for e in examples], [e.context for e in examples]
    variant = server_variant(EngineSpec(model=str(onnx_dir)))
    engine = load(onnx_dir, variant=variant, device="cpu", threads=args.threads)
    layouts = arrangements(engine, questions, contexts, args.per_call)
    rounds = measure(engine, questions, contexts, layouts, args.per_call, args.rounds)
    results = {**stamp(args.name, args.threads), "variant": variant, "questions": len(questions),
               "source": args.source, "per_call": args.per_call, "rounds": args.rounds, "per_round": rounds,
               **summarise(layouts, rounds)}
    print(write_results(args.results_dir, results, markdown(results)))
    print(markdown(results))


def measure(engine, questions, contexts, layouts: dict, per_call: int, n_rounds: int) -> list[dict]:
    """Each round: every arrangement replayed (alternating the order between rounds), then the engine's stages."""
    predictor = engine.served().predictor
    for calls in layouts.values():  # a first pass over every shape, untimed
        replay(predictor, calls)
    rounds = []
    for r in range(n_rounds):
        order = list(layouts) if r % 2 == 0 else list(layouts)[::-1]
        rounds.append({name: replay(predictor, layouts[name]) for name in order})
        rounds[-1]["stages"] = {"whole file": engine_stages(engine, questions, contexts, ServeConfig().chunk_size),
                                f"{per_call} per call": engine_stages(engine, questions, contexts, per_call)}
        print(f"round {r + 1}/{n_rounds}: " + ", ".join(
            f"{name} {t['call_by_call']:.2f}/{t['all_at_once']:.2f} s" for name, t in rounds[-1].items()
            if name != "stages"), flush=True)
    return rounds


def summarise(layouts: dict, rounds: list[dict]) -> dict:
    """Per arrangement: its shapes and, call by call and all at once, the median seconds and the ratio of
    serve-batch's call-by-call time to it within each round."""
    ceiling = next(iter(layouts))  # serve-batch's chunks
    out = {"arrangements": {}}
    for name, calls in layouts.items():
        row = shape_stats(calls)
        for how in ("call_by_call", "all_at_once"):
            ratios = [r[ceiling]["call_by_call"] / r[name][how] for r in rounds]
            row[how] = {"seconds": statistics.median(r[name][how] for r in rounds),
                        "x_serve_batch": statistics.median(ratios), "x_serve_batch_per_round": ratios}
        out["arrangements"][name] = row
    out["stages_ms_per_question"] = {k: {s: statistics.median(r["stages"][k][s] for r in rounds)
                                         for s in rounds[0]["stages"][k]} for k in rounds[0]["stages"]}
    return out


def markdown(r: dict) -> str:
    lines = [f"# The server's batches replayed without HTTP ({r['date']})", "", machine_line(r) + f" Variant "
             f"{r['variant']}, {r['questions']} questions ({r['source']}), {r['rounds']} rounds, arrangements "
             "alternating within each round; ratios to the same round's serve-batch batches, then the median.", "",
             "| arrangement | engine calls | batches | windows per batch | padded tokens | call by call: s | "
             "x serve-batch (per round) | all at once: s | x serve-batch (per round) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, a in r["arrangements"].items():
        cells = []
        for how in ("call_by_call", "all_at_once"):
            per_round = ", ".join(f"{x:.2f}" for x in a[how]["x_serve_batch_per_round"])
            cells.append(f"{a[how]['seconds']:.2f} | {a[how]['x_serve_batch']:.2f} ({per_round})")
        lines.append(f"| {name} | {a['calls']} | {a['batches']} | {a['windows_per_batch']:.1f} | "
                     f"{a['padded_tokens']:,} | " + " | ".join(cells) + " |")
    lines += ["", "The engine's own stages, ms per question (medians over rounds):", "",
              "| calls | " + " | ".join(next(iter(r["stages_ms_per_question"].values()))) + " |",
              "|---|" + "---|" * len(next(iter(r["stages_ms_per_question"].values())))]
    for calls, stages in r["stages_ms_per_question"].items():
        lines.append(f"| {calls} | " + " | ".join(f"{ms:.2f}" for ms in stages.values()) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
