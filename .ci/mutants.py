#!/usr/bin/env python3
"""Mutation check: each test below can fail. For every mutant (a small, realistic bug put into the code, never
into a test), a fresh copy of the repository's tracked files gets that one replacement and runs the tests meant
to catch it. The tests must fail there: "killed". A mutant whose tests still pass "survived": those tests could
not see that bug.

    python .ci/mutants.py                  # every mutant (about 8 minutes on 2 busy cores)
    python .ci/mutants.py --only NAME      # one mutant (comma-separated for several); --list names them

Run from the repository root; stdlib only. The copy is of HEAD (git archive), so commit the tests first, or pass
--worktree to copy the tracked files as they are now, uncommitted edits included. The tests run with the repo's
.venv python (--python to choose another). First the chosen tests run once unmutated: they must pass, or no kill
means anything (exit 2). Exit 1 when a mutant survived or could not be judged (a replacement whose old text is not
found exactly once, or pytest ending other than pass/fail); 0 when every mutant was killed. A mutant whose tests
run past its timeout counts as killed: the bug hangs them.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # relative to the repository root
    old: str  # must occur exactly once in the file
    new: str
    tests: tuple[str, ...]
    why: str  # the bug, and what the tests must notice
    timeout: int = 300  # seconds for the mutant's tests


SERVER = "tests/test_server.py::"
OPENVINO = "tests/test_openvino.py::"
DEFAULT_VARIANT_TESTS = (SERVER + "test_server_default_variant_is_batch_invariant",
                         OPENVINO + "test_server_never_defaults_to_a_variant_whose_answers_depend_on_the_batch")
DEADLINE_TEST = SERVER + "test_requests_that_would_miss_their_deadline_are_shed_at_once"
DEAD_BATCHER_TEST = SERVER + "test_a_dead_batcher_turns_ready_false_and_fails_requests_at_once"
EXPORT_TEST = "tests/test_export.py::test_export_merge_writes_every_cpu_variant_with_parity"
OV_BATCH_TEST = OPENVINO + "test_openvino_answers_do_not_depend_on_the_batch"

MUTANTS = [
    Mutant("postprocess-start-end-swapped", "toolkit/postprocess.py",
           "start, end = np.asarray(start_logits[:n], dtype=np.float64), np.asarray(end_logits[:n], dtype=np.float64)",
           "end, start = np.asarray(start_logits[:n], dtype=np.float64), np.asarray(end_logits[:n], dtype=np.float64)",
           ("tests/test_postprocess.py::test_end_before_start_is_never_a_span",),
           "start and end logits swapped: the span becomes 'Paris is the capital of France' (score 10), which the "
           "old test accepted; the new one wants 'Paris' at 6.5"),
    Mutant("batcher-admits-everything", "toolkit/serving/batcher.py",
           "        if expected > HEADROOM * deadline_s and self.waiting + self.in_flight > 0:",
           "        if False and expected > HEADROOM * deadline_s and self.waiting + self.in_flight > 0:",
           (DEADLINE_TEST,),
           "deadline admission off: requests that cannot finish in time are queued and time out (504) instead of "
           "an immediate 503 with Retry-After"),
    Mutant("batcher-wait-ignores-the-queue", "toolkit/serving/batcher.py",
           "        return (self.waiting + self.in_flight + questions) * (self.seconds_per_question or 0.0)",
           "        return questions * (self.seconds_per_question or 0.0)",
           (DEADLINE_TEST,),
           "the expected wait leaves out the questions ahead, so nothing is ever shed (504s instead of 503s)"),
    Mutant("batcher-on-death-not-called", "toolkit/serving/batcher.py",
           "        self.waiting = 0\n        self.on_death(error)",
           "        self.waiting = 0",
           (DEAD_BATCHER_TEST,),
           "a dead loop never tells the app: /ready no longer says why (no 'batcher died')"),
    Mutant("batcher-dead-loop-still-alive", "toolkit/serving/batcher.py",
           "        return self.task is not None and not self.task.done()",
           "        return self.task is not None",
           (DEAD_BATCHER_TEST,),
           "alive ignores a finished loop: requests are queued to nobody (504 after 30 s, not 503 at once), and "
           "stop() then waits forever; killed by its timeout", timeout=60),
    Mutant("batcher-strands-the-running-batch", "toolkit/serving/batcher.py",
           "        stranded = list(self.current)",
           "        stranded = []",
           (SERVER + "test_a_dead_batcher_fails_the_batch_it_was_answering_at_once",),
           "the batch being answered when the loop dies is left to its deadline instead of failing at once"),
    Mutant("train-lora-b-zeroed-before-save", "toolkit/training/run.py",
           "    model.save_pretrained(model_dir)\n",
           "    with torch.no_grad():  # mutant: the trained lora_B weights are lost before saving\n"
           "        for name, param in model.named_parameters():\n"
           "            if \"lora_B\" in name:\n"
           "                param.zero_()\n"
           "    model.save_pretrained(model_dir)\n",
           ("tests/test_train.py::test_adapter_reloads_with_the_trained_weights",),
           "the saved adapter is an untrained one (lora_B all zero, as PEFT initialises it); saved == reloaded "
           "still holds, the non-zero lora_B check does not"),
    Mutant("variant-int8-marked-batch-invariant", "toolkit/inference/variants.py",
           '"model_quantized.onnx", "quantize-s8", batch_invariant=False,',
           '"model_quantized.onnx", "quantize-s8", batch_invariant=True,',
           DEFAULT_VARIANT_TESTS,
           "dynamic int8 (activation scales per batch) allowed as the server default; the test_openvino one forces "
           "an int8 default and always catches it, the test_server one only when int8 is measured fastest"),
    Mutant("server-variant-is-the-export-default", "toolkit/inference/loading.py",
           "    if VARIANTS[chosen].batch_invariant:\n        return chosen",
           "    if True:\n        return chosen",
           DEFAULT_VARIANT_TESTS,
           "batch_invariant_variant returns the export's default unconditionally, int8 included"),
    Mutant("server-variant-slowest-invariant", "toolkit/inference/loading.py",
           'return max(passed, key=lambda v: passed[v]["questions_per_second"]) if passed else "fp32"',
           'return min(passed, key=lambda v: passed[v]["questions_per_second"]) if passed else "fp32"',
           (DEFAULT_VARIANT_TESTS[1],),
           "the fallback picks the slowest batch-invariant variant instead of the fastest"),
    Mutant("registry-int8-u8-shares-int8-file", "toolkit/inference/variants.py",
           'Variant("int8-u8", ONNXRUNTIME, "int8", ("cpu",), "model_quantized_u8.onnx", "quantize-u8",',
           'Variant("int8-u8", ONNXRUNTIME, "int8", ("cpu",), "model_quantized.onnx", "quantize-u8",',
           (EXPORT_TEST,),
           "copy-pasted file name: the u8 build overwrites the s8 file, so 'int8' serves u8 weights"),
    Mutant("registry-ov-int8-shares-ov-fp32-file", "toolkit/inference/variants.py",
           'Variant("ov-int8", OPENVINO, "int8", ("cpu",), "openvino_model_int8.xml", "openvino-int8",',
           'Variant("ov-int8", OPENVINO, "int8", ("cpu",), "openvino_model.xml", "openvino-int8",',
           (EXPORT_TEST,),
           "copy-pasted file name: the static int8 IR is written over the fp32 IR (or export fails where "
           "ov-int8-bf16 still names the int8 file)"),
    Mutant("openvino-no-length-buckets", "toolkit/inference/padding.py",
           "return cls(batch_size or 32, max_batch_tokens or 4096, bucket=16)",
           "return cls(batch_size or 32, max_batch_tokens or 4096, bucket=None)",
           (OV_BATCH_TEST,),
           "OpenVINO batches pad windows to the batch's longest again; caught by the test's settings.bucket == 16 "
           "check; the padding itself: openvino-pads-to-the-longest below"),
    Mutant("bench-speedup-against-itself", "toolkit/benchmarking/inference.py",
           'k: rows[baseline]["latency"][k]["mean_ms"] / rows[v]["latency"][k]["mean_ms"]',
           'k: rows[v]["latency"][k]["mean_ms"] / rows[v]["latency"][k]["mean_ms"]',
           ("tests/test_bench.py::test_bench_writes_json_markdown_and_plot",),
           "every speed-up vs the baseline is 1.0 (a row compared with itself)"),
    # The gaps the first mutation run found (at 6160fbc these survived), closed by 7e94003's tests.
    Mutant("batcher-no-headroom", "toolkit/serving/batcher.py",
           "HEADROOM = 0.7  #", "HEADROOM = 1.0  #",
           ("tests/test_server.py::test_admission_keeps_30_percent_of_the_deadline_in_reserve",),
           "admission back to the whole deadline (before 8c5b761), which let a quarter of the accepted requests "
           "time out at 2x capacity"),
    Mutant("openvino-pads-to-the-longest", "toolkit/inference/padding.py",
           "    widths = [settings.pad_to or (bucketed(lengths[rows[0]], settings.bucket)"
           " if settings.bucket else None)\n"
           "              for rows in groups]",
           "    widths = [settings.pad_to for rows in groups]",
           ("tests/test_openvino.py::test_openvino_batching_pads_each_window_to_its_own_length",),
           "batches still grouped by bucket but padded to their longest window: a window's padded length is no "
           "longer its own, so bf16 and static int8 answers would move with their batch-mates"),
    Mutant("registry-int8-file-renamed", "toolkit/inference/variants.py",
           'Variant("int8", ONNXRUNTIME, "int8", ("cpu",), "model_quantized.onnx", "quantize-s8",',
           'Variant("int8", ONNXRUNTIME, "int8", ("cpu",), "model_quantized_s8.onnx", "quantize-s8",',
           (EXPORT_TEST,),
           "a consistent rename of an on-disk name: every existing export would stop loading int8"),
    Mutant("int8-invariant-server-test-alone", "toolkit/inference/variants.py",
           '"model_quantized.onnx", "quantize-s8", batch_invariant=False,',
           '"model_quantized.onnx", "quantize-s8", batch_invariant=True,',
           (DEFAULT_VARIANT_TESTS[0],),
           "dynamic int8 marked batch-invariant: the server would serve answers that depend on the batch"),
]


def copy_repo(repo: Path, target: Path, worktree: bool) -> None:
    """The tracked files of HEAD (or, with worktree, as they are now) under target."""
    if not worktree:
        archive = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", "HEAD"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
        return
    listed = subprocess.run(["git", "-C", str(repo), "ls-files", "-z"], check=True, capture_output=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = repo / name
        if source.is_file():  # a tracked file deleted in the working tree stays deleted
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def run_tests(python: str, root: Path, tests: tuple[str, ...], timeout: int, log: Path) -> tuple[str, float]:
    """(outcome, seconds): "passed", "failed", "timeout" or "pytest exit N"; output in log."""
    env = {**os.environ, "PYTHONPATH": str(root)}  # the copy's toolkit, also in subprocesses, never the checkout's
    command = [python, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    started = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # its own process group, to end it with its children
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return "timeout", time.perf_counter() - started
    outcome = {0: "passed", 1: "failed"}.get(code, f"pytest exit {code}")
    return outcome, time.perf_counter() - started


def tail(log: Path, lines: int = 25) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def apply(root: Path, mutant: Mutant) -> str:
    """Put the mutant in; returns the file's original text."""
    path = root / mutant.path
    text = path.read_text()
    found = text.count(mutant.old)
    if found != 1:
        raise ValueError(f"{mutant.name}: the old text occurs {found} times in {mutant.path}, not once")
    path.write_text(text.replace(mutant.old, mutant.new))
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated mutant names")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--python", help="the python that runs pytest (default: .venv/bin/python)")
    parser.add_argument("--worktree", action="store_true", help="copy the tracked files as they are now, not HEAD")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of the tests")
    args = parser.parse_args()

    repo = Path.cwd()
    if not (repo / ".git").exists() or not (repo / "toolkit").is_dir():
        parser.error("run from the repository root (the directory holding .git and toolkit/)")
    if args.list:
        for m in MUTANTS:
            print(f"{m.name}: {m.path}; {', '.join(m.tests)}\n    {m.why}")
        return 0
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(names) - {m.name for m in MUTANTS})
        if unknown:
            parser.error(f"unknown mutant(s) {unknown}; --list names them")
        chosen = [m for m in MUTANTS if m.name in names]
    else:
        chosen = list(MUTANTS)
    python = args.python or str(repo / ".venv" / "bin" / "python")
    if not Path(python).exists():
        parser.error(f"{python} not found (pass --python)")

    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mutants-") as tmp:
        root = Path(tmp) / "repo"
        root.mkdir()
        copy_repo(repo, root, args.worktree)
        log = Path(tmp) / "pytest.log"
        if not args.no_baseline:
            tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
            print(f"baseline: {len(tests)} test(s) unmutated", flush=True)
            outcome, seconds = run_tests(python, root, tests, 1800, log)
            if outcome != "passed":
                print(f"{tail(log)}\nbaseline {outcome} after {seconds:.0f} s: the tests fail without a mutant, "
                      "so a kill would mean nothing", file=sys.stderr)
                return 2
            print(f"baseline passed in {seconds:.0f} s", flush=True)
        for m in chosen:
            try:
                original = apply(root, m)
            except ValueError as e:
                print(f"ERROR {e}", file=sys.stderr)
                rows.append((m, "ERROR: old text not found once", 0.0))
                continue
            try:
                outcome, seconds = run_tests(python, root, m.tests, m.timeout, log)
            finally:
                (root / m.path).write_text(original)
            result = {"failed": "killed", "timeout": "killed (timeout)", "passed": "SURVIVED"}.get(
                outcome, f"ERROR: {outcome}")
            print(f"{result:<17} {seconds:6.0f} s  {m.name}", flush=True)
            if not result.startswith("killed"):
                print(tail(log), file=sys.stderr)
            rows.append((m, result, seconds))

    width = max((len(m.name) for m, _, _ in rows), default=6)
    result_width = max((len(result) for _, result, _ in rows), default=6)
    print(f"\n{'mutant':<{width}}  {'result':<{result_width}} {'s':>5}  tests")
    for m, result, seconds in rows:
        print(f"{m.name:<{width}}  {result:<{result_width}} {seconds:5.0f}  "
              f"{' '.join(t.split('/')[-1] for t in m.tests)}")
    bad = [(m, result) for m, result, _ in rows if not result.startswith("killed")]
    print(f"\n{len(rows) - len(bad)} of {len(rows)} mutants killed in {time.perf_counter() - started:.0f} s")
    for m, result in bad:
        print(f"{result}: {m.name} ({m.path}): {m.why}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
