"""qa-toolkit serve: the HTTP API (Hugging Face's question-answering task) over the same engine and request
checks as serve-batch, with dynamic batching, bounds, auth, metrics and a graceful stop."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.conftest import fixture_lines, reranked_export, write_jsonl
from tests.fakes import NullWins, Peak, Spread, free_port, uvicorn_thread
from toolkit import load
from toolkit.config import QAConfig
from toolkit.inference import Engine, EngineError, Served
from toolkit.inference.loading import server_variant
from toolkit.options import AnswerOptions
from toolkit.serving.app import ServerConfig, create_app
from toolkit.serving.batcher import BatcherConfig

CONTEXT = "alpha beta gamma delta"  # [CLS] q ? [SEP] alpha beta ...: token 5 = beta, 6 = gamma


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
        assert adapters["adapters"][0]["no_answer_threshold"] == 0.5  # sigmoid(0): uncalibrated
        assert adapters["adapters"][0]["null_score_threshold"] == 0.0 and not adapters["adapters"][0]["calibrated"]
        assert adapters["adapters"][0]["threshold_tuned_on"] == "fixture"


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, "malformed JSON"), (b"\xff\xfe", 400, "invalid UTF-8"),
    (b"[]", 422, "'inputs'"), (json.dumps({"inputs": {"question": 3, "context": "c"}}).encode(), 422,
                               "field 'question' must be a string"),
    (json.dumps({"inputs": {"question": " ", "context": "c"}}).encode(), 422, "empty field 'question'"),
    (json.dumps({"inputs": {"context": "c"}}).encode(), 422, "missing field 'question'"),
    (json.dumps({"inputs": [{"question": "q?", "context": "c"}, 7]}).encode(), 422, "inputs[1]: expected a JSON object"),
    (json.dumps({"inputs": []}).encode(), 422, "1 to 64 questions"),
    (json.dumps(ask(top_k="1")).encode(), 422, "parameter 'top_k' must be an integer, got string"),
    (json.dumps(ask(top_k=0)).encode(), 422, "parameter 'top_k' must be at least 1, got 0"),
    (json.dumps(ask(top_k=21)).encode(), 422, "at most 20"),
    (json.dumps(ask(max_answer_len="abc")).encode(), 422, "parameter 'max_answer_len' must be an integer, got string"),
    (json.dumps(ask(align_to_words=1)).encode(), 422, "parameter 'align_to_words' must be true or false, got integer"),
    (json.dumps(ask(max_seq_len=4096)).encode(), 422, "max_seq_len 4096 is over the 512 tokens"),
    (json.dumps(ask(max_seq_len=64, max_question_len=62)).encode(), 422, "leaves no room for the context"),
    (json.dumps(ask(max_seq_len=64, doc_stride=60)).encode(), 422, "doc_stride (60) must be smaller"),
    (json.dumps(ask(max_question_len=1)).encode(), 422, "question too long: 2 tokens (at most 1;"),
    (json.dumps(ask(adapter=None, top_k=[1])).encode(), 422, "got array"),
    (json.dumps({"inputs": {"question": None, "context": "c"}}).encode(), 422, "must be a string, got null"),
    (json.dumps(ask(temperature=1)).encode(), 422, "unknown parameter"),
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
    engine = Engine.single(NullWins(5), tokenizer, QAConfig(base_model="t", model_type="bert", max_question_tokens=8))
    with TestClient(create_app(engine, ServerConfig())) as client:
        no = client.post("/", json=ask()).json()
        assert (no["answer"], no["start"], no["end"], no["no_answer"], no["best_span"]) == ("", 0, 0, True, "beta")
        assert no["score"] == pytest.approx(no["no_answer_probability"]) and no["no_answer_probability"] > 0.5
        assert no["best_span_start"] == CONTEXT.index("beta") and 0 < no["start_confidence"] < 1
        assert no["no_answer_probability"] > no["no_answer_threshold"] and not no["calibrated"]
        forced = client.post("/", json=ask(handle_impossible_answer=False)).json()
        assert forced["answer"] == "beta" and not forced["no_answer"] and forced["no_answer_threshold"] == 1.0
        assert forced["score"] == pytest.approx(forced["start_confidence"] * forced["end_confidence"])  # uncalibrated
        assert client.post("/", json=ask(handle_impossible_answer=True)).json()["no_answer"]
    engine = Engine.single(NullWins(5), tokenizer, QAConfig(base_model="t", model_type="bert", max_question_tokens=8))
    with TestClient(create_app(engine.with_threshold(float("inf")), ServerConfig())) as client:  # --no-answer-threshold never
        assert client.post("/", json=ask()).json()["answer"] == "beta"


def test_top_k_max_answer_len_and_align_to_words_are_honoured(tokenizer):
    engine = Engine.single(Spread(5), tokenizer, QAConfig(base_model="t", model_type="bert", max_question_tokens=8))
    with TestClient(create_app(engine, ServerConfig())) as client:
        one = client.post("/", json=ask()).json()
        assert one["answer"] == "beta gamma delta"
        three = client.post("/", json=ask(top_k=3)).json()
        assert isinstance(three, list) and len(three) == 3 and three[0] == one
        assert len({(a["start"], a["end"]) for a in three}) == 3 and all(not a["no_answer"] for a in three)
        assert three[1]["score"] >= three[2]["score"]
        short = client.post("/", json=ask(max_answer_len=1)).json()
        assert short["answer"] in ("beta", "gamma", "delta")
        assert client.post("/", json=ask(max_answer_len=2)).json()["answer"] in ("beta gamma", "gamma delta")
        listed = client.post("/", json={"inputs": [ask()["inputs"]] * 2, "parameters": {"top_k": 2}}).json()
        assert [len(x) for x in listed] == [2, 2] and listed[0][0] == one
        assert client.post("/", json=ask(top_k=None)).json() == one  # null: the default, as in the pipeline


def test_doc_stride_and_max_seq_len_change_the_windows(tokenizer):
    """A context of ~150 tokens in windows of 64: more windows with a larger stride; every answer still the
    peak token's word, whatever the windows."""
    engine = Engine.single(Peak(5), tokenizer, QAConfig(base_model="t", model_type="bert", max_question_tokens=8))
    context = " ".join(["alpha beta gamma delta"] * 38)
    windows = {stride: len(engine.features(["q?"], [context], options=AnswerOptions(max_seq_len=64, doc_stride=stride)))
               for stride in (8, 40)}
    assert windows[40] > windows[8] > 1
    with TestClient(create_app(engine, ServerConfig())) as client:
        for parameters in ({}, {"max_seq_len": 64}, {"max_seq_len": 64, "doc_stride": 40}):
            response = client.post("/", json=ask(context=context, **parameters))
            assert response.status_code == 200 and response.json()["answer"] == "beta", parameters


def test_api_key_everywhere_but_probes_and_the_page(tokenizer):
    """/health and /ready answer probes without credentials; the page (GET /) is public and asks for the key,
    which every question (POST) needs."""
    with TestClient(create_app(fake_engine(tokenizer), ServerConfig(api_key="s3cret"))) as client:
        for path in ("/health", "/ready", "/"):
            assert client.get(path).status_code == 200, path
        for path in ("/metrics", "/adapters"):
            assert client.get(path).status_code == 401, path
        assert client.post("/", json=ask()).status_code == 401
        wrong = client.post("/", json=ask(), headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "API key" in wrong.json()["error"]
        right = client.post("/", json=ask(), headers={"Authorization": "Bearer s3cret"})
        assert right.status_code == 200 and right.json()["answer"] == "beta"
        assert "access-control-allow-origin" not in right.headers  # CORS off unless configured


def test_busy_queue_503_slow_answer_504_and_no_traceback(tokenizer):
    predictor = Peak(5)
    slow = Engine.single(predictor, tokenizer, QAConfig(base_model="t", model_type="bert", max_question_tokens=8))
    cfg = ServerConfig(request_timeout_s=0.2, batcher=BatcherConfig(max_queue=1, max_batch_questions=1))
    with TestClient(create_app(slow, cfg)) as client:
        predictor.delay = 0.5  # slower than the rate measured at warm-up: accepted requests run out of time
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
        assert 'qa_requests_total{adapter="-",method="POST",path="/",status="200"} 16.0' in metrics
        client.get("/")  # the page: counted apart from the API
        assert 'qa_requests_total{adapter="-",method="GET",path="/",status="200"} 1.0' in client.get("/metrics").text
        assert "qa_batch_questions_bucket" in metrics and "qa_windows_total" in metrics
        stages = {line.split('"')[1]: float(line.split()[-1]) for line in metrics.splitlines()
                  if line.startswith("qa_engine_stage_seconds_total{")}
        assert {"checks", "tokenise", "infer", "postprocess"} <= set(stages) and stages["infer"] > 0
        total = next(float(line.split()[-1]) for line in metrics.splitlines()
                     if line.startswith("qa_inference_seconds_total "))
        assert sum(stages.values()) <= total  # the stages are parts of the engine calls
        assert "qa_queue_questions" in metrics and "qa_request_seconds_bucket" in metrics


def test_the_batcher_waits_for_the_clients_it_answered_last_and_no_one_else(tokenizer):
    """A batch waits (up to max_wait_ms) only for clients answered in the last batch to send their next question."""
    from toolkit.serving import Query
    from toolkit.serving.batcher import Batcher

    engine = fake_engine(tokenizer)
    calls = engine.served().predictor.batches

    async def ask_as(batcher, *clients, after=0.0):
        await asyncio.sleep(after)
        await asyncio.gather(*(batcher.submit([Query(i, c, "q?", CONTEXT)], c) for i, c in enumerate(clients)))

    async def timed(*steps):
        started, before = time.perf_counter(), len(calls)
        await asyncio.gather(*steps)
        return time.perf_counter() - started, len(calls) - before

    async def scenario():
        batcher = Batcher(engine, BatcherConfig(max_wait_ms=1500, max_batch_questions=8))
        batcher.start()
        lone = await timed(ask_as(batcher, "a"))  # no one answered before: goes at once
        again = await timed(ask_as(batcher, "a"))  # the client answered last is back: goes at once
        await timed(ask_as(batcher, "a", "b", "c"))  # three answered together
        back = await timed(ask_as(batcher, "a"), ask_as(batcher, "b", "c", after=0.1))  # waits for b and c
        gone = await timed(ask_as(batcher, "a"), ask_as(batcher, "b"))  # c does not come back: waits max_wait_ms
        await batcher.stop()
        return lone, again, back, gone

    lone, again, back, gone = asyncio.run(scenario())
    # Bounds far from the 1.5 s wait, so that a loaded machine cannot flip them: a lone client does not wait it
    # out, nor do the three who all came back; a batch waiting for one who never does waits it out.
    assert lone[0] < 1.0 and again[0] < 1.0 and lone[1] == again[1] == 1, (lone, again)
    assert back[0] < 1.0 and back[1] == 1, back  # one engine call for the three
    assert gone[0] >= 1.5 and gone[1] == 1, gone


def test_server_default_variant_is_batch_invariant(exported_bert, tmp_path):
    """An export whose measured ranking puts dynamic int8 first: the server picks the fastest gated variant whose
    answers cannot depend on the batch, and they really do not."""
    from toolkit.inference import EngineSpec

    measured = QAConfig.load(exported_bert / "onnx").cpu_ranking
    onnx = reranked_export(exported_bert / "onnx", tmp_path / "onnx",
                           ["int8", "int8-u8", *[v for v in measured if not v.startswith("int8")]])
    manifest = json.loads((onnx / "export_manifest.json").read_text())
    chosen = server_variant(EngineSpec(model=str(onnx)))
    assert not chosen.startswith("int8") and manifest["variants"][chosen]["passed"]
    engine = load(onnx, variant=chosen, device="cpu")  # and its answers really are batch-invariant
    lines = fixture_lines()
    questions, contexts = [r["question"] for r in lines], [r["context"] for r in lines]
    alone = [engine.answer([q], [c])[0] for q, c in zip(questions, contexts)]
    assert alone == engine.answer(questions, contexts)
    assert server_variant(EngineSpec(model=str(onnx), variant="int8")) == "int8"  # asked for


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
        for r, first in zip(lines, alone):  # top_k: distinct spans, the first the top_k=1 answer, alone or batched
            three = client.question_answering(question=r["question"], context=r["context"], top_k=3,
                                              handle_impossible_answer=False)
            assert isinstance(three, list) and len(three) == 3 and len({(a.start, a.end) for a in three}) == 3
            assert (three[0].answer, three[0].start, three[0].end) == (first.answer, first.start, first.end)
            bounded = client.question_answering(question=r["question"], context=r["context"], max_answer_len=1,
                                                handle_impossible_answer=False)
            assert len(engine.tokenizer(bounded.answer, add_special_tokens=False)["input_ids"]) <= 2  # one token, widened to its word


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
    from toolkit.inference.loading import server_spec

    spec = server_spec(EngineSpec(model=str(exported_bert / "onnx")))
    session = load_engine(spec).served().predictor.session
    assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    batch = load_engine(EngineSpec(model=str(exported_bert / "onnx"))).served().predictor.session
    with pytest.raises(RuntimeError, match="does not have configuration"):  # serve-batch keeps the spinning default
        batch.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")


def test_the_server_engine_batches_windows_by_their_own_length(exported_bert, tokenizer):
    """A server call holds the few questions that arrived together: their windows are padded to a multiple of 16
    tokens and batched by length, not padded to the call's longest (serve-batch sorts whole chunks instead)."""
    from toolkit.inference import EngineSpec, load_engine
    from toolkit.inference.loading import SERVER_BUCKET, server_spec

    served = load_engine(server_spec(EngineSpec(model=str(exported_bert / "onnx"))))
    assert served.settings.bucket == SERVER_BUCKET
    assert load_engine(EngineSpec(model=str(exported_bert / "onnx"))).settings.bucket is None
    assert load_engine(server_spec(EngineSpec(model=str(exported_bert / "onnx"), bucket=32))).settings.bucket == 32
    torch = load_engine(server_spec(EngineSpec(model=str(exported_bert / "merged"), engine="torch", device="cpu")))
    assert torch.settings.bucket == SERVER_BUCKET  # every engine the server builds, not only ONNX Runtime's
    for spec in (EngineSpec(model=str(exported_bert / "onnx"), bucket=0),
                 server_spec(EngineSpec(model=str(exported_bert / "onnx"), bucket=0))):
        with pytest.raises(EngineError, match="bucket must be at least 1"):
            load_engine(spec)
    questions = ["Who keeps the lighthouse?", "When was it built, and by whom, and for which harbour?"]
    context = "The lighthouse was built in 1802 by the harbour guild, and Ada keeps it."
    alone = [served.answer([q], [context])[0] for q in questions]
    together = served.answer(questions, [context] * 2)
    assert [(a.text, a.no_answer) for a in alone] == [(a.text, a.no_answer) for a in together]


def test_python_api_takes_strings_options_and_refuses_empty_questions(tokenizer):
    engine = Engine.single(Spread(5), tokenizer, QAConfig(base_model="t", model_type="bert", max_question_tokens=8))
    one = engine.answer("q?", CONTEXT)
    assert one.text == "beta gamma delta" and one.alternatives == []
    assert [a.text for a in engine.answer(["q?"], [CONTEXT])] == [one.text]
    three = engine.answer("q?", CONTEXT, options=AnswerOptions(top_k=3, max_answer_len=2))
    assert three.text in ("beta gamma", "gamma delta") and len(three.alternatives) == 2
    with pytest.raises(ValueError, match="empty question"):
        engine.answer(" ", CONTEXT)
    with pytest.raises(TypeError, match="both as strings or both as lists"):
        engine.answer("q?", [CONTEXT])


def test_serve_says_serving_only_after_loading_and_binding(exported_bert, tmp_path):
    """A bad --model or a port in use is the error, with no 'serving' line before it."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = subprocess.run([sys.executable, "-m", "toolkit.cli", "serve", "--model", str(exported_bert / "onnx"),
                               "--port", str(port)], capture_output=True, text=True, timeout=120)
    assert busy.returncode != 0 and f"cannot listen on 127.0.0.1:{port}" in busy.stderr
    assert '"serving"' not in busy.stderr
    missing = subprocess.run([sys.executable, "-m", "toolkit.cli", "serve", "--model", str(tmp_path / "nothing")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0 and '"serving"' not in missing.stderr and "model directory not found" in missing.stderr


def test_requests_that_would_miss_their_deadline_are_shed_at_once(tokenizer):
    """At 0.25 s a question and one at a time, a request with a 0.6 s deadline behind two others is refused at
    once with Retry-After; every request accepted is answered within its deadline (no 504)."""
    slow = Engine.single(Peak(5, delay=0.25), tokenizer, QAConfig(base_model="t", model_type="bert", max_question_tokens=8))
    cfg = ServerConfig(request_timeout_s=5.0, batcher=BatcherConfig(max_batch_questions=1))
    with TestClient(create_app(slow, cfg)) as client:
        def timed(_):
            started = time.perf_counter()
            response = client.post("/", json=ask(), headers={"X-Request-Timeout": "0.6"})
            return response, time.perf_counter() - started

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(timed, range(8)))
        statuses = [r.status_code for r, _ in results]
        assert 200 in statuses and 503 in statuses and 504 not in statuses, statuses
        for response, seconds in results:
            if response.status_code == 503:
                assert "of the deadline of 0.6 s" in response.json()["error"]
                assert int(response.headers["Retry-After"]) >= 1
            else:
                assert seconds < 0.6 + 0.25, seconds  # the deadline, and one engine call of slack for the measure
        assert 'qa_shed_total' in client.get("/metrics").text
        bad = client.post("/", json=ask(), headers={"X-Request-Timeout": "soon"})
        assert bad.status_code == 400 and "X-Request-Timeout" in bad.json()["error"]


def test_a_dead_batcher_turns_ready_false_and_fails_requests_at_once(tokenizer):
    app = create_app(fake_engine(tokenizer), ServerConfig())
    with TestClient(app) as client:
        assert client.get("/ready").status_code == 200
        app.state.batcher.queue.put_nowait(None)  # a bug outside the engine call: the loop dies on it
        deadline = time.time() + 1.0
        while client.get("/ready").status_code == 200 and time.time() < deadline:
            time.sleep(0.02)
        ready = client.get("/ready")
        assert ready.status_code == 503 and "batcher died" in ready.json()["error"]
        started = time.perf_counter()
        refused = client.post("/", json=ask())
        assert refused.status_code == 503 and time.perf_counter() - started < 0.5
        assert client.get("/health").status_code == 200  # alive, not ready: the supervisor's call


def test_top_k_after_a_no_answer_lists_the_best_span_too(tokenizer):
    engine = Engine.single(NullWins(5), tokenizer, QAConfig(base_model="t", model_type="bert", max_question_tokens=8))
    with TestClient(create_app(engine, ServerConfig())) as client:
        listed = client.post("/", json=ask(top_k=2)).json()
        assert listed[0]["answer"] == "" and listed[0]["no_answer"] and listed[1]["answer"] == "beta"


def test_a_dead_batcher_fails_the_batch_it_was_answering_at_once(tokenizer):
    """The loop dies while a request's batch runs: that request is failed at once (503), not left to its deadline."""
    from toolkit.serving import Query
    from toolkit.serving.batcher import Batcher, Unavailable

    engine = Engine.single(Peak(5, delay=0.3), tokenizer, QAConfig(base_model="t", model_type="bert", max_question_tokens=8))

    async def scenario():
        batcher = Batcher(engine, BatcherConfig())
        batcher.start()
        future = batcher.submit([Query(0, "a", "q?", CONTEXT)])
        await asyncio.sleep(0.1)  # its batch is running
        died = asyncio.get_running_loop().create_future()  # what the loop's task holds when a bug ends it
        died.set_exception(RuntimeError("a bug outside the engine call"))
        batcher._died(died)
        with pytest.raises(Unavailable):
            await asyncio.wait_for(future, 0.05)

    asyncio.run(scenario())


def test_admission_keeps_30_percent_of_the_deadline_in_reserve(tokenizer):
    """0.6 s expected (6 questions at 0.1 s): refused at a 0.8 s deadline (0.6 > 0.7 x 0.8), admitted at 0.9 s."""
    from toolkit.serving import Query
    from toolkit.serving.batcher import Batcher, Overloaded

    async def scenario():
        batcher = Batcher(fake_engine(tokenizer), BatcherConfig())
        batcher.start()
        batcher.seconds_per_question, batcher.in_flight = 0.1, 5
        with pytest.raises(Overloaded, match="of the deadline of 0.8 s"):
            batcher.submit([Query(0, "a", "q?", CONTEXT)], deadline_s=0.8)
        future = batcher.submit([Query(0, "a", "q?", CONTEXT)], deadline_s=0.9)
        await asyncio.wait_for(future, 5)
        await batcher.stop()

    asyncio.run(scenario())
