"""qa-toolkit serve: the HTTP API (Hugging Face's question-answering task) over the same engine and request
checks as serve-batch, with dynamic batching, bounds, auth, metrics and a graceful stop."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.conftest import fixture_lines, write_jsonl
from toolkit import load
from toolkit.config import QAConfig
from toolkit.inference import Engine, Served
from toolkit.serving.batcher import BatcherConfig
from toolkit.serving.server import BATCH_VARIANT_INVARIANT, ServerConfig, create_app, server_variant

CONTEXT = "alpha beta gamma delta"  # [CLS] q ? [SEP] alpha beta ...: token 5 = beta, 6 = gamma


class Peak:
    """A predictor whose best span is token `peak` in every window; it can be slow, or fail."""
    provider, device = "test", "cpu"

    def __init__(self, peak: int, variant: str = "fake", delay: float = 0.0, fail_after: int | None = None):
        self.peak, self.variant, self.delay, self.fail_after, self.batches = peak, variant, delay, fail_after, []

    def logits(self, batch):
        if self.fail_after is not None and len(self.batches) >= self.fail_after:
            raise RuntimeError("secret internal detail")
        time.sleep(self.delay)
        self.batches.append(batch["input_ids"].shape[0])
        start = np.full(batch["input_ids"].shape, -5.0, np.float32)
        start[:, self.peak] = 5.0
        return start, start.copy()


def fake_engine(tokenizer, **peaks) -> Engine:
    qa = QAConfig(base_model="test", model_type="bert", max_question_tokens=8, null_threshold=0.0,
                  null_threshold_tuned_on="fixture")
    if not peaks:
        return Engine.single(Peak(5), tokenizer, qa)
    return Engine({name: Served(p, qa) for name, p in peaks.items()}, tokenizer)


def ask(question="q?", context=CONTEXT, **parameters):
    return {"inputs": {"question": question, "context": context}, **({"parameters": parameters} if parameters else {})}


def test_answers_lists_adapters_and_unknown_adapters(tokenizer):
    engine = fake_engine(tokenizer, news=Peak(5), law=Peak(6))
    with TestClient(create_app(engine, ServerConfig())) as client:
        one = client.post("/", json=ask())
        assert one.status_code == 200 and one.json()["answer"] == "beta" and one.json()["adapter"] == "news"
        assert one.json()["start"] == CONTEXT.index("beta") and one.json()["end"] == CONTEXT.index("beta") + 4
        assert client.post("/", json=ask(adapter="law")).json()["answer"] == "gamma"
        assert client.post("/adapters/law", json=ask()).json()["answer"] == "gamma"
        listed = client.post("/", json={"inputs": [ask()["inputs"]] * 3}).json()
        assert isinstance(listed, list) and [a["answer"] for a in listed] == ["beta"] * 3
        missing = client.post("/adapters/sport", json=ask())
        assert missing.status_code == 404 and "unknown adapter 'sport' (served: news, law)" in missing.json()["error"]
        missing = client.post("/", json=ask(adapter="sport"))
        assert missing.status_code == 404 and "served: news, law" in missing.json()["error"]
        adapters = client.get("/adapters").json()
        assert adapters["default"] == "news" and [a["name"] for a in adapters["adapters"]] == ["news", "law"]
        assert adapters["adapters"][0]["no_answer_threshold"] == 0.0
        assert adapters["adapters"][0]["threshold_tuned_on"] == "fixture"


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, "malformed JSON"), (b"\xff\xfe", 400, "invalid UTF-8"),
    (b"[]", 422, "'inputs'"), (json.dumps({"inputs": {"question": 3, "context": "c"}}).encode(), 422,
                               "field 'question' must be a string"),
    (json.dumps({"inputs": {"question": " ", "context": "c"}}).encode(), 422, "empty field 'question'"),
    (json.dumps({"inputs": {"context": "c"}}).encode(), 422, "missing field 'question'"),
    (json.dumps({"inputs": [{"question": "q?", "context": "c"}, 7]}).encode(), 422, "inputs[1]: expected a JSON object"),
    (json.dumps({"inputs": []}).encode(), 422, "1 to 64 questions"),
    (json.dumps(ask(top_k=3)).encode(), 422, "top_k"), (json.dumps(ask(temperature=1)).encode(), 422, "unknown parameter"),
    (json.dumps(ask(question="why " * 30 + "?")).encode(), 422, "question too long"),
    (json.dumps(ask(context="word " * 300)).encode(), 422, "context too long: 300 tokens (at most 100"),
    (json.dumps(ask(context="x" * 3000)).encode(), 413, "over the limit of 2048 bytes")])
def test_bad_requests_get_a_json_error_naming_the_problem(tokenizer, body, status, message):
    cfg = ServerConfig(max_body_bytes=2048, batcher=BatcherConfig(max_context_tokens=100))
    with TestClient(create_app(fake_engine(tokenizer), cfg)) as client:
        response = client.post("/", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == status and message in response.json()["error"], response.text
        assert client.post("/", json=ask()).json()["answer"] == "beta"  # and the next good request is answered


def test_handle_impossible_answer_and_the_threshold(tokenizer):
    class NullWins(Peak):
        def logits(self, batch):
            start, end = super().logits(batch)
            start[:, 0] = end[:, 0] = 6.0  # null score 12 > span score 10: no answer at threshold 0
            return start, end

    engine = Engine.single(NullWins(5), tokenizer, QAConfig(base_model="t", model_type="bert", max_question_tokens=8))
    with TestClient(create_app(engine, ServerConfig())) as client:
        no = client.post("/", json=ask()).json()
        assert (no["answer"], no["start"], no["end"], no["no_answer"], no["best_span"]) == ("", 0, 0, True, "beta")
        assert no["score"] == pytest.approx(no["no_answer_probability"]) and no["no_answer_probability"] > 0.5
        assert no["best_span_start"] == CONTEXT.index("beta") and 0 < no["start_confidence"] < 1
        forced = client.post("/", json=ask(handle_impossible_answer=False)).json()
        assert forced["answer"] == "beta" and not forced["no_answer"]
        assert forced["score"] == pytest.approx(forced["start_confidence"] * forced["end_confidence"])
        assert client.post("/", json=ask(handle_impossible_answer=True)).json()["no_answer"]
    engine = Engine.single(NullWins(5), tokenizer, QAConfig(base_model="t", model_type="bert", max_question_tokens=8))
    with TestClient(create_app(engine.with_threshold(float("inf")), ServerConfig())) as client:  # --no-answer-threshold never
        assert client.post("/", json=ask()).json()["answer"] == "beta"


def test_api_key_everywhere_but_health(tokenizer):
    with TestClient(create_app(fake_engine(tokenizer), ServerConfig(api_key="s3cret"))) as client:
        assert client.get("/health").status_code == 200
        for path in ("/", "/ready", "/metrics", "/adapters"):
            assert client.get(path).status_code == 401, path
        assert client.post("/", json=ask()).status_code == 401
        wrong = client.post("/", json=ask(), headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "API key" in wrong.json()["error"]
        right = client.post("/", json=ask(), headers={"Authorization": "Bearer s3cret"})
        assert right.status_code == 200 and right.json()["answer"] == "beta"
        assert "access-control-allow-origin" not in right.headers  # CORS off unless configured


def test_busy_queue_503_slow_answer_504_and_no_traceback(tokenizer):
    slow = Engine.single(Peak(5, delay=0.5), tokenizer, QAConfig(base_model="t", model_type="bert", max_question_tokens=8))
    cfg = ServerConfig(request_timeout_s=0.2, batcher=BatcherConfig(max_queue=1, max_batch_questions=1))
    with TestClient(create_app(slow, cfg)) as client:
        with ThreadPoolExecutor(4) as pool:
            responses = list(pool.map(lambda _: client.post("/", json=ask()), range(4)))
        statuses = sorted(r.status_code for r in responses)
        assert 503 in statuses and 504 in statuses, statuses
        busy = next(r for r in responses if r.status_code == 503)
        assert busy.headers["Retry-After"] == "1" and "server busy" in busy.json()["error"]
    broken = Engine.single(Peak(5, fail_after=1), tokenizer,  # the warm-up passes, then every call fails
                           QAConfig(base_model="t", model_type="bert", max_question_tokens=8))
    with TestClient(create_app(broken, ServerConfig()), raise_server_exceptions=False) as client:
        response = client.post("/", json=ask())
        assert response.status_code == 500 and response.json()["request_id"] == response.headers["X-Request-ID"]
        assert "Traceback" not in response.text and "secret" not in response.text
        assert client.get("/health").status_code == 200


def test_concurrent_requests_are_batched_together_and_answered_alike(tokenizer):
    engine = fake_engine(tokenizer)
    cfg = ServerConfig(batcher=BatcherConfig(max_wait_ms=50, max_batch_questions=64))
    with TestClient(create_app(engine, cfg)) as client:
        predictor = engine.served().predictor
        predictor.batches.clear()
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: client.post("/", json=ask()).json()["answer"], range(16)))
        assert answers == ["beta"] * 16
        assert sum(predictor.batches) == 16 and len(predictor.batches) < 16  # several requests per forward pass
        metrics = client.get("/metrics").text
        assert 'qa_requests_total{adapter="-",path="/",status="200"} 16.0' in metrics
        assert "qa_batch_questions_bucket" in metrics and "qa_windows_total" in metrics
        assert "qa_queue_questions" in metrics and "qa_request_seconds_bucket" in metrics


def test_the_batcher_waits_for_the_clients_it_answered_last_and_no_one_else(tokenizer):
    """A batch waits (up to max_wait_ms) only for clients answered in the last batch to send their next question."""
    from toolkit.serving import Query
    from toolkit.serving.batcher import Batcher

    engine = fake_engine(tokenizer)
    calls = engine.served().predictor.batches

    async def ask_as(batcher, *clients, after=0.0):
        await asyncio.sleep(after)
        await asyncio.gather(*(batcher.submit([Query(i, c, "q?", CONTEXT)], None, c) for i, c in enumerate(clients)))

    async def timed(*steps):
        started, before = time.perf_counter(), len(calls)
        await asyncio.gather(*steps)
        return time.perf_counter() - started, len(calls) - before

    async def scenario():
        batcher = Batcher(engine, BatcherConfig(max_wait_ms=400, max_batch_questions=8))
        batcher.start()
        lone = await timed(ask_as(batcher, "a"))  # no one answered before: goes at once
        again = await timed(ask_as(batcher, "a"))  # the client answered last is back: goes at once
        await timed(ask_as(batcher, "a", "b", "c"))  # three answered together
        back = await timed(ask_as(batcher, "a"), ask_as(batcher, "b", "c", after=0.1))  # waits for b and c
        gone = await timed(ask_as(batcher, "a"), ask_as(batcher, "b"))  # c does not come back: waits max_wait_ms
        await batcher.stop()
        return lone, again, back, gone

    lone, again, back, gone = asyncio.run(scenario())
    assert lone[0] < 0.2 and again[0] < 0.2, (lone, again)
    assert 0.1 <= back[0] < 0.4 and back[1] == 1, back  # one engine call for the three, without waiting it out
    assert gone[0] >= 0.4 and gone[1] == 1, gone


def test_server_default_variant_is_batch_invariant(exported_bert):
    from toolkit.inference import EngineSpec

    manifest = json.loads((exported_bert / "onnx" / "export_manifest.json").read_text())
    chosen = server_variant(EngineSpec(model=str(exported_bert / "onnx")))
    assert chosen in BATCH_VARIANT_INVARIANT and not chosen.startswith("int8") and manifest["variants"][chosen]["passed"]
    assert server_variant(EngineSpec(model=str(exported_bert / "onnx"), variant="int8")) == "int8"  # asked for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def uvicorn_thread(app):
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def test_hugging_face_client_gets_the_answers_serve_batch_gives(exported_bert, tmp_path, monkeypatch):
    """huggingface_hub's InferenceClient, pointed at the server, answers the fixture questions as serve-batch does
    for the same model and variant; concurrent requests (batched together) answer as each alone."""
    from click.testing import CliRunner
    from huggingface_hub import InferenceClient, constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the tests' offline mode also blocks our local URL

    from toolkit.cli import main

    lines = fixture_lines()
    src = write_jsonl(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(main, ["serve-batch", str(src), "--model", str(exported_bert / "onnx"),
                                       "--variant", "fp32", "-o", str(out), "--no-answer-threshold", "never"])
    assert result.exit_code == 0, result.output
    batch = [json.loads(row) for row in out.read_text().splitlines()]
    engine = load(exported_bert / "onnx", variant="fp32", device="cpu")
    with uvicorn_thread(create_app(engine, ServerConfig(batcher=BatcherConfig(max_wait_ms=20)))) as url:
        client = InferenceClient(model=url)
        alone = [client.question_answering(question=r["question"], context=r["context"], handle_impossible_answer=False)
                 for r in lines]
        for got, want in zip(alone, batch):
            assert (got.answer, got.start, got.end) == (want["answer"], want["start"], want["end"]), want["id"]
        with ThreadPoolExecutor(6) as pool:
            together = list(pool.map(lambda r: client.question_answering(question=r["question"], context=r["context"],
                                                                         handle_impossible_answer=False), lines * 3))
        for got, want in zip(together, alone * 3):
            assert (got.answer, got.start, got.end) == (want.answer, want.start, want.end)
            assert got.score == pytest.approx(want.score, abs=1e-5)


def test_sigterm_finishes_what_is_in_flight_and_exits_0(exported_bert, tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "toolkit.cli", "serve", "--model", str(exported_bert / "onnx"),
                             "--port", str(port), "--threads", "1", "--max-wait-ms", "20", "--max-queue", "1000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        inputs = [{"question": r["question"], "context": r["context"]} for r in fixture_lines()] * 6  # 54 each
        expected = httpx.post(url, json={"inputs": inputs}, timeout=60).json()
        with ThreadPoolExecutor(6) as pool:  # six requests in flight (queued or answering) when SIGTERM comes
            futures = [pool.submit(httpx.post, url, json={"inputs": inputs}, timeout=60) for _ in range(6)]
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            responses = [f.result() for f in futures]
        assert [r.status_code for r in responses] == [200] * 6
        assert all([a["best_span"] for a in r.json()] == [a["best_span"] for a in expected] for r in responses)
        assert proc.wait(60) == 0
        with pytest.raises(httpx.HTTPError):  # no longer accepting
            httpx.get(f"{url}/health", timeout=2)
        logged = [json.loads(line) for line in proc.stderr.read().splitlines() if line.startswith("{")]
        posts = [entry for entry in logged if entry.get("path") == "/" and entry.get("method") == "POST"]
        assert len(posts) == 7 and all(entry["request_id"] and entry["status"] == 200 for entry in posts)
        assert len({entry["request_id"] for entry in posts}) == 7
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_server_engine_does_not_spin_wait(exported_bert):
    """ONNX Runtime's threads spin between ops by default; the server shares their cores with its event loop."""
    from toolkit.inference import EngineSpec, load_engine
    from toolkit.serving.server import server_spec

    spec = server_spec(EngineSpec(model=str(exported_bert / "onnx")))
    session = load_engine(spec).served().predictor.session
    assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    batch = load_engine(EngineSpec(model=str(exported_bert / "onnx"))).served().predictor.session
    with pytest.raises(RuntimeError, match="does not have configuration"):  # serve-batch keeps the spinning default
        batch.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
