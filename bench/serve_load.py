"""qa-toolkit serve under load, on loopback: a closed-loop concurrency sweep, the offline ceiling (serve-batch on
the same questions, variant and threads), peers (the naive service a user writes: FastAPI + the transformers
pipeline over ORTModelForQuestionAnswering, one request at a time; Ray Serve over our engine), batching
invariance (each question alone vs under load, for the server's variant and for dynamic int8), overload (open
loop at 2x the measured capacity) and a fuzz of hostile requests.

    python bench/serve_load.py --export models/minilm-squad2-lora/export-ov [--questions 1000] [--rounds 3]
        [--levels 1,4,16,64] [--overload-seconds 60] [--fuzz 5000] [--only-sweep] [--name serve-load-cpu]

Every server is a separate process (`python -m toolkit.cli serve`, or uvicorn for the naive peer) at --threads;
the load generator is one asyncio process with a lean keep-alive HTTP/1.1 client. Writes
bench/results/<name>/results.json and results.md.
"""

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from toolkit import data, load
from toolkit.benchmarking.results import machine_line, qa_command, stamp, write_results
from toolkit.inference.loading import server_variant
from toolkit.serving import ServeConfig, serve_batch

NAIVE_APP = '''
import os, threading
from fastapi import FastAPI, Request
from optimum.onnxruntime import ORTModelForQuestionAnswering
from transformers import AutoTokenizer, pipeline
import onnxruntime as ort
options = ort.SessionOptions(); options.intra_op_num_threads = int(os.environ["THREADS"])
model = ORTModelForQuestionAnswering.from_pretrained(os.environ["ONNX_DIR"], file_name="model.onnx", session_options=options)
qa = pipeline("question-answering", model=model, tokenizer=AutoTokenizer.from_pretrained(os.environ["ONNX_DIR"]))
lock = threading.Lock()
app = FastAPI()
@app.post("/")
def answer(body: dict):
    with lock:
        return qa(question=body["inputs"]["question"], context=body["inputs"]["context"], handle_impossible_answer=True)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server process on a free port, ready when /ready (or /docs for the naive peer) answers."""

    def __init__(self, command: list[str], ready_path: str = "/ready", env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([*command, "--port", str(self.port)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})}, start_new_session=True)
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                if httpx.get(self.url + ready_path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited: {' '.join(command)}")
            time.sleep(0.5)
        raise SystemExit(f"server not ready: {' '.join(command)}")

    def rss_mb(self) -> float:
        procs = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        return sum(p.memory_info().rss for p in procs) / 2 ** 20

    def stop(self) -> int:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return -9


def body(example) -> dict:
    return {"inputs": {"question": example.question, "context": example.context}}


class Connection:
    """One keep-alive HTTP/1.1 connection on loopback: a JSON POST out, (status, body) back. The load generator
    shares the box's cores with the server, so it must cost little: this client takes about 0.1-0.3 ms of CPU a
    request where httpx took 1.7-2.3 ms (measured at concurrency 16 and 1 on the 2-core EPYC), which at 100 q/s
    was a sixth of a core taken from the server being measured."""

    def __init__(self, url: str):
        self.host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
        self.port, self.path = int(port), "/" + url.split("//", 1)[1].partition("/")[2]
        self.reader = self.writer = None

    async def post(self, payload: bytes, headers: dict | None = None) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items()).encode()
        self.writer.write(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                          b"%s\r\n" % (self.path.encode(), self.host.encode(), len(payload), extra) + payload)
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
        status = int(head[9:12])
        fields = dict(line.split(": ", 1) for line in head.split("\r\n")[1:] if ": " in line)
        if "content-length" in fields:
            content = await self.reader.readexactly(int(fields["content-length"]))
        else:  # chunked
            content = b""
            while size := int((await self.reader.readuntil(b"\r\n")).strip(), 16):
                content += (await self.reader.readexactly(size + 2))[:-2]
            await self.reader.readuntil(b"\r\n")
        if fields.get("connection") == "close":
            self.close()
        return status, content

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


async def closed_loop(url: str, examples, concurrency: int) -> dict:
    """Each of `concurrency` workers, on its own connection, sends its next question when its last one is
    answered."""
    queue = list(reversed(examples))
    latencies, answers, statuses = [], {}, {}

    async def worker():
        connection = Connection(url)
        while queue:
            example = queue.pop()
            payload = json.dumps(body(example)).encode()
            started = time.perf_counter()
            status, content = await connection.post(payload)
            latencies.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                answers[example.id] = json.loads(content)
        connection.close()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    q = statistics.quantiles(latencies, n=100)
    return {"concurrency": concurrency, "questions": len(examples), "seconds": seconds,
            "questions_per_second": len(examples) / seconds, "mean_ms": 1000 * statistics.mean(latencies),
            "p50_ms": 1000 * q[49], "p95_ms": 1000 * q[94],
            "p99_ms": 1000 * q[98], "statuses": statuses, "answers": answers}


STAGES = ("checks", "tokenise", "infer", "postprocess")


def engine_counters(url: str) -> dict[str, float]:
    """The server's own engine-call tallies from /metrics: calls, seconds in them (and in each of their stages),
    questions answered."""
    wanted = ("qa_batch_seconds_count", "qa_batch_seconds_sum", "qa_batch_questions_sum")
    lines = httpx.get(url + "/metrics", timeout=10).text.splitlines()
    counters = {name: float(value) for name, value in (line.split() for line in lines if line.startswith(wanted))}
    for line in lines:
        if line.startswith("qa_engine_stage_seconds_total{"):
            counters[line.split('"')[1]] = float(line.split()[-1])
    return counters


def sweep(url: str, examples, levels) -> list[dict]:
    """The closed loop at each level, with what the server's engine did meanwhile: questions per engine call,
    and the mean time of one call, which at concurrency 1 splits a request's latency into the engine's part and
    the server's (HTTP, checks, queue, the hop to the inference thread and back)."""
    rows = []
    for c in levels:
        before = engine_counters(url)
        row = asyncio.run(closed_loop(url, examples, c))
        after = {k: v - before.get(k, 0.0) for k, v in engine_counters(url).items()}
        calls = after["qa_batch_seconds_count"]
        rows.append({**row, "questions_per_engine_call": after["qa_batch_questions_sum"] / calls,
                     "engine_call_mean_ms": 1000 * after["qa_batch_seconds_sum"] / calls,
                     "engine_busy_share": after["qa_batch_seconds_sum"] / row["seconds"],
                     "stage_share": {stage: after.get(stage, 0.0) / row["seconds"] for stage in STAGES}})
    return rows


async def open_loop(server: Server, examples, rate: float, seconds: float, expected: dict) -> dict:
    """Requests at a fixed rate whatever the answers, each on its own connection: shed (503) and accepted, their
    latency and rightness."""
    results, rss = [], [server.rss_mb()]

    async def one(example):
        connection, started = Connection(server.url), time.perf_counter()
        try:
            status, content = await asyncio.wait_for(connection.post(json.dumps(body(example)).encode()), 120)
            results.append((example.id, status, time.perf_counter() - started,
                            json.loads(content) if status == 200 else None))
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
            results.append((example.id, type(e).__name__, time.perf_counter() - started, None))
        finally:
            connection.close()
    tasks, started, n = [], time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        tasks.append(asyncio.create_task(one(examples[n % len(examples)])))
        n += 1
        if n % int(max(rate, 1)) == 0:
            rss.append(server.rss_mb())
        await asyncio.sleep(max(0.0, started + n / rate - time.perf_counter()))
    await asyncio.gather(*tasks)
    accepted = [r for r in results if r[1] == 200]
    wrong = sum(r[3]["best_span"] != expected[r[0]]["best_span"] for r in accepted)
    lat = statistics.quantiles([r[2] for r in accepted], n=100) if len(accepted) > 2 else [0] * 99
    shed = [r[2] for r in results if r[1] == 503]
    shed_lat = statistics.quantiles(shed, n=100) if len(shed) > 2 else [0] * 99
    codes = {}
    for r in results:
        codes[str(r[1])] = codes.get(str(r[1]), 0) + 1
    return {"rate": rate, "seconds": seconds, "sent": len(results), "statuses": codes,
            "shed_rate": codes.get("503", 0) / len(results), "accepted": len(accepted), "wrong_answers": wrong,
            "accepted_p50_ms": 1000 * lat[49], "accepted_p99_ms": 1000 * lat[98], "accepted_max_ms": 1000 * max(
                (r[2] for r in accepted), default=0), "shed_p50_ms": 1000 * shed_lat[49], "shed_p99_ms": 1000 * shed_lat[98],
            "rss_mb_start": rss[0], "rss_mb_max": max(rss), "rss_growth": max(rss) / rss[0] - 1}


def hostile_requests(n: int, rng: random.Random, good: dict) -> list[tuple[str, bytes, dict]]:
    """(kind, body, headers) of n hostile requests, of every kind in turn."""
    text = json.dumps(good).encode()
    kinds = [("truncated JSON", lambda: text[:rng.randrange(1, len(text))], {}),
             ("wrong types", lambda: json.dumps({"inputs": {"question": rng.choice([3, None, [], {}]),
                                                           "context": "c"}}).encode(), {}),
             ("huge body", lambda: b'{"inputs": {"question": "q", "context": "' + b"x" * (2 << 20) + b'"}}', {}),
             ("invalid UTF-8", lambda: b'{"inputs": {"question": "\xff\xfe", "context": "c"}}', {}),
             ("unknown adapter", lambda: json.dumps({**good, "parameters": {"adapter": "nope"}}).encode(), {}),
             ("missing auth", lambda: text, {"Authorization": ""}),
             ("wrong auth", lambda: text, {"Authorization": "Bearer wrong"}),
             ("not an object", lambda: json.dumps(rng.choice([[], 1, "x", None])).encode(), {}),
             ("empty fields", lambda: json.dumps({"inputs": {"question": "", "context": ""}}).encode(), {}),
             ("question too long", lambda: json.dumps({"inputs": {"question": "why " * 100, "context": "c"}}).encode(), {})]
    return [(kind, make(), headers) for kind, make, headers in (kinds[i % len(kinds)] for i in range(n))]


async def fuzz(url: str, key: str, n: int, good: dict, expected: dict) -> dict:
    rng = random.Random(0)
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    outcome, bad = {}, []
    async with httpx.AsyncClient(timeout=60) as client:
        for kind, payload, headers in hostile_requests(n, rng, good):
            response = await client.post(url, content=payload, headers={**auth, **headers})
            named = response.headers.get("content-type", "").startswith("application/json") and "error" in response.json()
            outcome.setdefault(kind, {}).setdefault(str(response.status_code), 0)
            outcome[kind][str(response.status_code)] += 1
            if response.status_code < 400 or not named:
                bad.append((kind, response.status_code))
        # slow bodies: a request whose body trickles in, cut off before it is whole
        slow = 0
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as s:
                s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 400\r\n"
                          + f"Authorization: Bearer {key}\r\n\r\n".encode() + b'{"inputs": {"quest')
                time.sleep(0.05)
                slow += 1
        after = await client.post(url, json=good, headers=auth)
    return {"requests": n + slow, "outcomes": outcome, "slow_bodies_cut": slow, "not_a_named_error": bad,
            "server_answers_after": after.status_code == 200 and after.json()["best_span"] == expected["best_span"]}


def invariance(url: str, examples) -> dict:
    """Each question asked alone (one at a time) and again under load (64 concurrent, batched with others)."""
    alone = asyncio.run(closed_loop(url, examples, 1))["answers"]
    loaded = asyncio.run(closed_loop(url, examples, 64))["answers"]
    spans = sum(alone[q]["best_span"] != loaded[q]["best_span"] for q in alone)
    decisions = sum(alone[q]["no_answer"] != loaded[q]["no_answer"] for q in alone)
    drift = max(abs(alone[q]["null_score_diff"] - loaded[q]["null_score_diff"]) for q in alone
                if alone[q]["null_score_diff"] is not None and loaded[q]["null_score_diff"] is not None)
    return {"questions": len(alone), "best_span_changed": spans, "decision_changed": decisions,
            "max_null_score_diff_change": drift}


def measure_round(engine, url: str, examples, questions: Path, answers: Path, levels: list[int]) -> dict:
    """One round: serve-batch over the questions (the offline ceiling), the engine alone on 16 questions per call
    (the batches concurrency 16 forms: what batching single-question requests costs before any HTTP) and one
    question at a time, and the server's closed-loop sweep, back to back, all on the same questions."""
    summary = serve_batch(engine, str(questions), str(answers), ServeConfig(), progress=False)
    started = time.perf_counter()
    for i in range(0, len(examples), 16):
        engine.answer([e.question for e in examples[i:i + 16]], [e.context for e in examples[i:i + 16]])
    in_sixteens = len(examples) / (time.perf_counter() - started)
    alone = []
    for e in examples:  # the sweep's questions: the first 200 alone have contexts a quarter shorter on average
        started = time.perf_counter()
        engine.answer([e.question], [e.context])
        alone.append(time.perf_counter() - started)
    return {"serve_batch_questions_per_second": summary.questions_per_second,
            "engine_16_per_call_questions_per_second": in_sixteens,
            "engine_single_question_ms": 1000 * statistics.median(alone),
            "engine_single_question_mean_ms": 1000 * statistics.mean(alone), "sweep": sweep(url, examples, levels)}


def paired(peer_url: str, our_url: str, examples, rounds: int, concurrency: int = 16) -> dict:
    """A peer at concurrency 16, each time right beside ours on the same questions: the peer's medians, and ours
    over the peer's per round (the box's speed drifts between rounds, not within a pair)."""
    pairs = [(asyncio.run(closed_loop(peer_url, examples, concurrency)),
              asyncio.run(closed_loop(our_url, examples, concurrency))) for _ in range(rounds)]
    peer = {k: statistics.median(p[k] for p, _ in pairs) for k in ("questions_per_second", "p50_ms", "p95_ms", "p99_ms")}
    ratios = [o["questions_per_second"] / p["questions_per_second"] for p, o in pairs]
    return {"concurrency": concurrency, "questions": len(examples), **peer, "statuses": pairs[0][0]["statuses"],
            "ours_questions_per_second": statistics.median(o["questions_per_second"] for _, o in pairs),
            "ours_over_peer": statistics.median(ratios), "ours_over_peer_per_round": ratios}


def summarise_rounds(rounds: list[dict]) -> dict:
    """Medians over the rounds: each level's q/s, its ratio to the same round's ceiling, its latencies, and the
    p50 at concurrency 1 over the same round's engine-alone median."""
    med = statistics.median
    out = {"rounds": len(rounds), "serve_batch": {"questions_per_second": med(
        r["serve_batch_questions_per_second"] for r in rounds), "per_round": [
        r["serve_batch_questions_per_second"] for r in rounds]},
        "engine_single_question_ms": med(r["engine_single_question_ms"] for r in rounds),
        "engine_single_question_mean_ms": med(r["engine_single_question_mean_ms"] for r in rounds), "sweep": []}
    sixteens = [r["engine_16_per_call_questions_per_second"] for r in rounds]
    out["engine_16_per_call"] = {"questions_per_second": med(sixteens), "x_serve_batch": med(
        x / r["serve_batch_questions_per_second"] for x, r in zip(sixteens, rounds))}
    for i, first in enumerate(rounds[0]["sweep"]):
        rows = [r["sweep"][i] for r in rounds]
        ratios = [row["questions_per_second"] / r["serve_batch_questions_per_second"] for row, r in zip(rows, rounds)]
        over = [row["p50_ms"] - r["engine_single_question_ms"] for row, r in zip(rows, rounds)]
        out["sweep"].append({"concurrency": first["concurrency"], "questions": first["questions"],
                             **{k: med(row[k] for row in rows) for k in ("questions_per_second", "p50_ms", "p95_ms",
                                                                          "p99_ms")},
                             "x_serve_batch": med(ratios), "x_serve_batch_per_round": ratios,
                             "p50_over_engine_ms": med(over), "statuses": first["statuses"],
                             "questions_per_engine_call": med(row["questions_per_engine_call"] for row in rows),
                             "mean_ms": med(row["mean_ms"] for row in rows),
                             "engine_call_mean_ms": med(row["engine_call_mean_ms"] for row in rows),
                             "engine_busy_share": med(row["engine_busy_share"] for row in rows),
                             "stage_share": {stage: med(row["stage_share"][stage] for row in rows) for stage in STAGES}})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", required=True, help="export directory (merged/ + onnx/)")
    parser.add_argument("--source", default="squad-v1.1-dev")
    parser.add_argument("--questions", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--levels", default="1,4,16,64")
    parser.add_argument("--rounds", type=int, default=3, help="ceiling + sweep measured this many times (medians)")
    parser.add_argument("--overload-seconds", type=float, default=60)
    parser.add_argument("--fuzz", type=int, default=5000)
    parser.add_argument("--timeout", type=float, default=30.0, help="the server's --timeout (request deadline)")
    parser.add_argument("--only-sweep", action="store_true",
                        help="only: the rounds of serve-batch, the engine alone and the sweep, with the breakdown")
    parser.add_argument("--only-overload", action="store_true",
                        help="only: capacity at concurrency 16, then the open loop at 2x it (deadline admission)")
    parser.add_argument("--name", default="serve-load-cpu")
    parser.add_argument("--results-dir", default="bench/results")
    args = parser.parse_args()
    onnx_dir, work = Path(args.export) / "onnx", Path(args.export) / "serve-load"
    work.mkdir(parents=True, exist_ok=True)
    examples, _ = data.load_examples([args.source], cache_dir=data.default_cache_dir(), seed=42,
                                     limit=args.questions, default_split="validation")
    from toolkit.inference import EngineSpec

    variant = server_variant(EngineSpec(model=str(onnx_dir)))
    levels = [int(c) for c in args.levels.split(",")]
    serve = [*qa_command(), "serve", "--model", str(onnx_dir), "--threads", str(args.threads), "--max-queue", "512",
             "--timeout", str(args.timeout)]
    results = {**stamp(args.name, args.threads), "variant": variant, "questions": len(examples), "source": args.source,
               "timeout_s": args.timeout}
    if args.only_overload:
        overload_only(serve, examples, args, results)
        return

    questions = work / "questions.jsonl"
    data.write_jsonl(examples, questions)
    engine = load(onnx_dir, variant=variant, device="cpu", threads=args.threads)
    ours = Server(serve)
    rounds = []
    for r in range(args.rounds):  # the box's speed drifts: each round measures the ceiling beside the sweep
        print(f"round {r + 1}/{args.rounds}: serve-batch (offline ceiling), engine alone, server ({variant}) "
              f"sweep {levels}", flush=True)
        rounds.append(measure_round(engine, ours.url, examples, questions, work / "answers.jsonl", levels))
    del engine
    results.update(summarise_rounds(rounds))
    rows = rounds[0]["sweep"]
    expected = rows[0]["answers"]
    offline = {row["id"]: row for row in map(json.loads, (work / "answers.jsonl").read_text().splitlines())}
    results["same_as_serve_batch"] = sum(offline[q]["best_span"] == a["best_span"]
                                         and offline[q]["no_answer"] == a["no_answer"] for q, a in expected.items())
    if args.only_sweep:
        results["sigterm_exit_code"] = ours.stop()
        write_results(args.results_dir, results, markdown(results))
        print(markdown(results))
        return
    capacity = max(r["questions_per_second"] for r in results["sweep"])
    print(f"overload: open loop at {2 * capacity:.0f} q/s for {args.overload_seconds:g} s", flush=True)
    results["overload"] = asyncio.run(open_loop(ours, examples, 2 * capacity, args.overload_seconds, expected))
    results["invariance"] = {variant: invariance(ours.url, examples[:300])}
    print("peer: naive FastAPI + pipeline over ORTModelForQuestionAnswering, paired with ours", flush=True)
    (work / "naive_app.py").write_text(NAIVE_APP)
    naive = Server([sys.executable, "-m", "uvicorn", "naive_app:app", "--app-dir", str(work), "--log-level", "warning"],
                   ready_path="/openapi.json", env={"ONNX_DIR": str(onnx_dir), "THREADS": str(args.threads)})
    results["peers"] = {"naive FastAPI + pipeline (ORT fp32)": paired(naive.url, ours.url, examples[:300], args.rounds)}
    naive.stop()
    results["sigterm_exit_code"] = ours.stop()

    int8 = Server([*serve, "--variant", "int8"])
    results["invariance"]["int8"] = invariance(int8.url, examples[:300])
    int8.stop()

    key = "bench-key"
    (work / "key").write_text(key + "\n")
    guarded = Server([*serve, "--api-key-file", str(work / "key")], ready_path="/health")
    print(f"fuzz: {args.fuzz} hostile requests", flush=True)
    results["fuzz"] = asyncio.run(fuzz(guarded.url, key, args.fuzz, body(examples[0]), expected[examples[0].id]))
    results["fuzz"]["rss_mb_after"] = guarded.rss_mb()
    guarded.stop()

    print("peer: Ray Serve over our engine, 2 replicas x 1 thread", flush=True)
    on_ray = Server([*qa_command(), "serve", "--model", str(onnx_dir), "--ray-serve", "--replicas", "2",
                     "--threads-per-replica", "1"])
    results["peers"]["Ray Serve, our app, 2 replicas x 1 thread"] = {
        k: v for k, v in asyncio.run(closed_loop(on_ray.url, examples, 16)).items() if k != "answers"}
    on_ray.stop()
    write_results(args.results_dir, results, markdown(results))
    print(markdown(results))


def overload_only(serve: list[str], examples, args, results: dict) -> None:
    """Capacity (closed loop at concurrency 16), then the open loop at twice it for --overload-seconds."""
    ours = Server(serve)
    at_16 = asyncio.run(closed_loop(ours.url, examples, 16))
    expected = asyncio.run(closed_loop(ours.url, examples, 1))["answers"]
    capacity = at_16["questions_per_second"]
    print(f"capacity {capacity:.1f} q/s; overload: open loop at {2 * capacity:.0f} q/s for {args.overload_seconds:g} s",
          flush=True)
    results.update(capacity_questions_per_second=capacity,
                   overload=asyncio.run(open_loop(ours, examples, 2 * capacity, args.overload_seconds, expected)))
    results["sigterm_exit_code"] = ours.stop()
    o = results["overload"]
    text = (f"# qa-toolkit serve at 2x capacity ({results['date']})\n\n{machine_line(results)} Variant "
            f"{results['variant']}, --timeout {args.timeout:g} s (deadline admission), capacity {capacity:.1f} q/s "
            f"(closed loop, concurrency 16). Open loop at {o['rate']:.0f} q/s for {o['seconds']:g} s: {o['sent']} sent, "
            f"statuses {o['statuses']}; {o['accepted']} accepted: p50 {o['accepted_p50_ms']:.0f} ms, p99 "
            f"{o['accepted_p99_ms']:.0f} ms, max {o['accepted_max_ms']:.0f} ms, wrong answers {o['wrong_answers']}; "
            f"shed (503): p50 {o['shed_p50_ms']:.1f} ms, p99 {o['shed_p99_ms']:.1f} ms; RSS {o['rss_mb_start']:.0f} -> "
            f"max {o['rss_mb_max']:.0f} MB; SIGTERM exit code {results['sigterm_exit_code']}.\n")
    write_results(args.results_dir, results, text)
    print(text)


def markdown(r: dict) -> str:
    ceiling = r["serve_batch"]["questions_per_second"]
    lines = [f"# qa-toolkit serve under load ({r['date']})", "", machine_line(r) + f" Variant {r['variant']}, "
             f"{r['questions']} questions ({r['source']}), {r['rounds']} rounds (each: serve-batch, the engine alone, "
             f"then the sweep; medians, ratios within a round). Engine alone, one question at a time: "
             f"{r['engine_single_question_ms']:.1f} ms (median). Server answers at concurrency 1 the same as "
             f"serve-batch's (best span and decision): {r['same_as_serve_batch']} of {r['questions']}.", "",
             "| row | concurrency | q/s | × serve-batch (per round) | questions per engine call | p50 ms | "
             "p50 − engine alone | p95 ms | p99 ms | statuses |",
             "|---|---|---|---|---|---|---|---|---|---|",
             f"| serve-batch (offline ceiling) | – | {ceiling:.1f} | 1.00 | | | | | | |",
             f"| engine alone, 16 questions per call (no HTTP) | – | {r['engine_16_per_call']['questions_per_second']:.1f} "
             f"| {r['engine_16_per_call']['x_serve_batch']:.2f} | 16 | | | | | |"]
    for row in r["sweep"]:
        per_round = ", ".join(f"{x:.2f}" for x in row["x_serve_batch_per_round"])
        lines.append(f"| qa-toolkit serve | {row['concurrency']} | {row['questions_per_second']:.1f} | "
                     f"{row['x_serve_batch']:.2f} ({per_round}) | {row['questions_per_engine_call']:.1f} | {row['p50_ms']:.1f} | "
                     f"{row['p50_over_engine_ms']:+.1f} | {row['p95_ms']:.1f} | {row['p99_ms']:.1f} | {row['statuses']} |")
    for name, row in r.get("peers", {}).items():
        lines.append(f"| peer: {name} | {row['concurrency']} | {row['questions_per_second']:.1f} | "
                     f"{row['questions_per_second'] / ceiling:.2f} | | {row['p50_ms']:.1f} | | {row['p95_ms']:.1f} | "
                     f"{row['p99_ms']:.1f} | {row['statuses']} |")
    lines += ["", "Where the server's seconds go at each concurrency (share of the wall time, medians over rounds): "
              "the inference thread's engine calls by stage, and the rest, when the engine waits for its next batch "
              "(HTTP, JSON, the event loop, the clients' round trips).", "",
              "| concurrency | " + " | ".join(STAGES) + " | engine busy | engine waiting |",
              "|---|" + "---|" * (len(STAGES) + 2)]
    for row in r["sweep"]:
        lines.append(f"| {row['concurrency']} | " + " | ".join(f"{100 * row['stage_share'][stage]:.1f} %"
                                                               for stage in STAGES)
                     + f" | {100 * row['engine_busy_share']:.1f} % | {100 * (1 - row['engine_busy_share']):.1f} % |")
    one = r["sweep"][0]
    if one["concurrency"] == 1:
        lines += ["", f"At concurrency 1 a request takes {one['mean_ms']:.1f} ms on average, of which the server's engine "
                  f"call (request checks and the engine) {one['engine_call_mean_ms']:.1f} ms: the server and HTTP add "
                  f"{one['mean_ms'] - one['engine_call_mean_ms']:.1f} ms (medians over rounds). The engine alone in the "
                  f"load generator's process, one question at a time: {r['engine_single_question_mean_ms']:.1f} ms on "
                  f"average."]
    if "overload" not in r:  # --only-sweep
        return "\n".join(lines) + "\n"
    naive_name, naive = next(iter(r["peers"].items()))
    per_pair = ", ".join(f"{x:.2f}" for x in naive["ours_over_peer_per_round"])
    lines += ["", f"Ours over the {naive_name} peer, each pair back to back on its {naive['questions']} questions at "
              f"concurrency {naive['concurrency']}: {naive['ours_over_peer']:.2f}x (per pair {per_pair}; ours "
              f"{naive['ours_questions_per_second']:.1f} q/s)."]
    o, f = r["overload"], r["fuzz"]
    lines += [f"Overload (open loop at {o['rate']:.0f} q/s = 2x capacity, {o['seconds']:g} s): {o['sent']} sent, "
              f"shed {100 * o['shed_rate']:.1f}% (503), {o['accepted']} accepted with p50 {o['accepted_p50_ms']:.0f} ms / "
              f"p99 {o['accepted_p99_ms']:.0f} ms, wrong answers among accepted: {o['wrong_answers']}, RSS "
              f"{o['rss_mb_start']:.0f} -> max {o['rss_mb_max']:.0f} MB ({100 * o['rss_growth']:+.1f}%); statuses {o['statuses']}.",
              f"Fuzz: {f['requests']} hostile requests; every one a JSON error: {not f['not_a_named_error']}; "
              f"outcomes {f['outcomes']}; the next good request answered right: {f['server_answers_after']}; "
              f"RSS after {f['rss_mb_after']:.0f} MB.",
              f"SIGTERM after the load: exit code {r['sigterm_exit_code']}.", "",
              "Batching invariance (300 questions alone, then under 64 concurrent requests):", "",
              "| variant | best span changed | decision changed | max Δ null_score_diff |", "|---|---|---|---|"]
    for variant, inv in r["invariance"].items():
        lines.append(f"| {variant} | {inv['best_span_changed']} | {inv['decision_changed']} | "
                     f"{inv['max_null_score_diff_change']:.2e} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
