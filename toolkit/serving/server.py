"""`qa-toolkit serve`: the engine behind HTTP, compatible with Hugging Face's question-answering task.

    POST /                  {"inputs": {"question", "context"} or a list of them, "parameters": {...}}
    POST /adapters/{name}   the same, answered by that adapter (or "parameters": {"adapter": name})
    GET  /adapters          the adapters served, with their no-answer thresholds
    GET  /health /ready /metrics, and GET / (a page to try the model)

Each answer is Hugging Face's {"answer", "score", "start", "end"} plus ours: start/end confidences of the best
span, no_answer and no_answer_probability, null_score_diff, the best span and its offsets, the adapter.
Requests are checked as serve-batch checks its lines (same bounds), queued to the dynamic batcher and
answered off the event loop; errors are JSON {"error": ...} naming the problem, never a traceback.
"""

import asyncio
import dataclasses
import hmac
import json
import logging
import math
import os
import signal
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from toolkit.calibration import from_config
from toolkit.config import QAConfig
from toolkit.inference import Engine, EngineError, EngineSpec
from toolkit.inference.loading import default_variant
from toolkit.inference.openvino import unusable_here
from toolkit.options import DEFAULT_OPTIONS, OptionError, json_type
from toolkit.postprocess import Answer
from toolkit.serving.batcher import Batcher, BatcherConfig, Overloaded, Unavailable
from toolkit.serving.metrics import ServerMetrics
from toolkit.serving.requests import Query, answer_fields, finite, query_from_record, span_fields

PAGE = Path(__file__).with_name("static") / "page.html"
# Open without the API key: liveness and readiness (probes carry no credentials) and the page itself (it asks
# for the key and sends it with each question).
OPEN_ROUTES = {("GET", "/health"), ("GET", "/ready"), ("GET", "/"), ("HEAD", "/")}
STATUS = {"invalid": 422, "too_long": 422, "unknown_adapter": 404}  # Problem.kind -> HTTP status


@dataclass
class ServerConfig:
    max_body_bytes: int = 1 << 20  # serve-batch's --max-line-bytes
    max_inputs: int = 64  # questions in one request
    request_timeout_s: float = 30.0  # the deadline of a request that names none (X-Request-Timeout: seconds)
    api_key: str | None = None  # every route but OPEN_ROUTES needs "Authorization: Bearer <key>"
    cors_origins: tuple[str, ...] = ()
    batcher: BatcherConfig = field(default_factory=BatcherConfig)
    stop_when_batcher_dies: bool = False  # serve(): SIGTERM itself, so that a supervisor restarts the process


class RequestError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def hf_answer(a: Answer, adapter: str | None) -> dict | list[dict]:
    """Hugging Face's answer fields and ours (answer_fields): "" at 0..0 when there is no answer, as the
    transformers pipeline does; with top_k > 1, a list: this answer, then the alternatives."""
    fields = answer_fields(a)
    alternatives = fields.pop("alternatives", None)
    if a.no_answer:
        fields.update(answer="", start=0, end=0)
    if adapter:
        fields["adapter"] = adapter
    if alternatives is None:
        return fields
    spans = ([span_fields(a.best_span)] if a.no_answer and a.best_span else []) + alternatives
    return [fields, *({**span, "no_answer": False, **({"adapter": adapter} if adapter else {})} for span in spans)]


def parse_body(raw: bytes, max_inputs: int, path_adapter: str | None) -> tuple[list[Query], bool]:
    """(queries, whether a list was sent) from a request body, or a RequestError naming the field: 400 for what
    is not JSON, 422 for JSON of the wrong shape or a parameter that cannot be honoured."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise RequestError(400, f"invalid UTF-8 at byte {e.start}") from None
    except json.JSONDecodeError as e:
        raise RequestError(400, f"malformed JSON: {e.msg} at column {e.colno}") from None
    if not isinstance(body, dict) or "inputs" not in body:
        raise RequestError(422, "expected a JSON object with 'inputs': {'question', 'context'} or a list of them")
    parameters = body.get("parameters")
    parameters = {} if parameters is None else parameters
    if not isinstance(parameters, dict):
        raise RequestError(422, f"field 'parameters' must be an object, got {json_type(parameters)}")
    adapter = parameters.get("adapter") or path_adapter
    if adapter is not None and not isinstance(adapter, str):
        raise RequestError(422, f"parameter 'adapter' must be a string, got {json_type(adapter)}")
    try:
        options = DEFAULT_OPTIONS.with_parameters({k: v for k, v in parameters.items() if k != "adapter"})
    except OptionError as e:
        raise RequestError(422, str(e)) from None
    listed = isinstance(body["inputs"], list)
    inputs = body["inputs"] if listed else [body["inputs"]]
    if not inputs or len(inputs) > max_inputs:
        raise RequestError(422 if not inputs else 413, f"'inputs' must hold 1 to {max_inputs} questions, got {len(inputs)}")
    queries = []
    for i, record in enumerate(inputs):
        if isinstance(record, dict) and "parameters" in record:
            raise RequestError(422, f"inputs[{i}]: 'parameters' belong beside 'inputs', not inside them")
        q = query_from_record(record, i, options)
        if q.error:
            raise RequestError(422, f"inputs[{i}]: {q.error.message}" if listed else f"inputs: {q.error.message}")
        q.adapter = q.adapter or adapter
        queries.append(q)
    return queries, listed


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is longer than limit (never read whole into memory)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"body of {declared} bytes is over the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"body over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(engine: Engine, cfg: ServerConfig, log: logging.Logger | None = None) -> FastAPI:
    """The ASGI app over one engine; the batcher starts (and the engine is warmed) when the app starts."""
    log = log or logging.getLogger("qa-toolkit.serve")
    metrics = ServerMetrics(engine)
    state = {"ready": False}

    def batcher_died(error: BaseException | None) -> None:
        state["ready"], app.state.batcher_died = False, repr(error)
        if cfg.stop_when_batcher_dies:
            os.kill(os.getpid(), signal.SIGTERM)

    batcher = Batcher(engine, cfg.batcher, metrics.observe_batch, batcher_died, log)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        for name in engine.adapters or [None]:  # warm every model: the first call pays for allocations
            await batcher.submit([Query(0, "warm-up", "What is warm?", "Warm-up text.", name)])
        state["ready"] = True
        yield
        state["ready"] = False
        await batcher.stop()

    app = FastAPI(title="qa-toolkit", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher, app.state.batcher_died = batcher, None
    if cfg.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cfg.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    app.add_middleware(Guard, api_key=cfg.api_key, metrics=metrics, log=log)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, e: RequestError):
        return JSONResponse({"error": e.message}, e.status, headers=e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        return JSONResponse({"error": str(e.detail)}, e.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError):
        return JSONResponse({"error": str(e.errors()[:3])}, 422)

    async def answer(request: Request, path_adapter: str | None):
        raw = await read_body(request, cfg.max_body_bytes)
        queries, listed = parse_body(raw, cfg.max_inputs, path_adapter)
        request.state.log.update(questions=len(queries), adapter=queries[0].adapter)
        deadline = request_deadline(request, cfg.request_timeout_s)
        try:
            future = batcher.submit(queries, keep_alive_client(request), deadline)
        except Overloaded as e:
            metrics.shed.inc()
            raise RequestError(503, f"server busy: {e}; retry later",
                               {"Retry-After": str(math.ceil(e.retry_after))}) from None
        except Unavailable as e:
            raise RequestError(503, str(e)) from None
        hangup = asyncio.ensure_future(until_disconnected(request.receive))
        done, _ = await asyncio.wait({future, hangup}, timeout=deadline, return_when=asyncio.FIRST_COMPLETED)
        hangup.cancel()
        if future not in done:
            future.cancel()  # dropped from the queue if its batch has not started
            if hangup in done:
                request.state.log["client"] = "hung up"
                return Response(status_code=499)
            raise RequestError(504, f"not answered within {deadline:g} s")
        try:
            answers = future.result()
        except Unavailable as e:
            raise RequestError(503, str(e)) from None
        failed = next((q for q in queries if q.error), None)
        if failed is not None:
            where = f"inputs[{failed.line}]: " if listed else ""
            raise RequestError(STATUS[failed.error.kind], where + failed.error.message)
        named = bool(engine.adapters)
        out = [hf_answer(answers[q.line], engine.resolve(q.adapter) if named else None) for q in queries]
        return JSONResponse(out if listed else out[0])

    @app.post("/")
    async def answer_default(request: Request):
        return await answer(request, None)

    @app.post("/adapters/{name}")
    async def answer_with_adapter(request: Request, name: str):
        try:
            engine.resolve(name)
        except EngineError as e:  # its message names the adapters served
            raise RequestError(404, str(e)) from None
        return await answer(request, name)

    @app.get("/adapters")
    async def adapters():
        return {"default": engine.default or None, "adapters": [
            {"name": name or None,
             "no_answer_threshold": from_config(served.qa.calibration).no_answer_probability(served.qa.null_threshold),
             "null_score_threshold": finite(served.qa.null_threshold),  # inf (never) is not JSON: null
             "threshold_tuned_on": served.qa.null_threshold_tuned_on, "calibrated": served.qa.calibration is not None,
             "variant": served.predictor.variant,
             "provider": served.predictor.provider} for name, served in engine.models.items()]}

    @app.get("/health")
    async def health():
        return {"status": "alive"}

    @app.get("/ready")
    async def ready():
        ok = state["ready"] and batcher.alive
        died = app.state.batcher_died
        body = {"ready": ok, **({"error": f"batcher died: {died}"} if died else {})}
        return JSONResponse(body, 200 if ok else 503)

    @app.get("/metrics")
    async def prometheus():
        metrics.queue_depth.set(batcher.waiting)
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/")
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    return app


class Guard:
    """ASGI middleware around every HTTP request: its id (X-Request-ID, kept from the client or made), the API key
    (every route but /health; 401), a JSON 500 instead of any traceback, metrics and one JSON log line. Plain ASGI
    rather than Starlette's BaseHTTPMiddleware: no extra task and stream per request."""

    def __init__(self, app, api_key: str | None, metrics: ServerMetrics, log: logging.Logger):
        self.app, self.api_key, self.metrics, self.log = app, api_key, metrics, log

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        headers = dict(scope["headers"])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1") or uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"], state["log"] = request_id, {}
        status = None

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id.encode("latin-1"))]
            await send(message)

        path = scope["path"]
        if self.api_key and (scope["method"], path) not in OPEN_ROUTES and scope["method"] != "OPTIONS" \
                and not authorised(headers.get(b"authorization", b""), self.api_key):
            await JSONResponse({"error": "missing or wrong API key: send Authorization: Bearer <key>"}, 401,
                               headers={"WWW-Authenticate": "Bearer"})(scope, receive, send_with_id)
        else:
            try:
                await self.app(scope, receive, send_with_id)
            except Exception:  # noqa: BLE001 - never a traceback to the client; logged here
                self.log.exception("request %s failed", request_id)
                if status is None:
                    await JSONResponse({"error": "internal error; see the server log", "request_id": request_id},
                                       500)(scope, receive, send_with_id)
        seconds = time.perf_counter() - started
        self.metrics.observe_request(scope["method"], path, status or 500, seconds, state["log"].get("adapter"))
        self.log.info(json.dumps({"request_id": request_id, "method": scope["method"], "path": path,
                                  "status": status or 500, "ms": round(1000 * seconds, 2), **state["log"]}))


def request_deadline(request: Request, default_s: float) -> float:
    """Seconds the caller gives this request: its X-Request-Timeout header, at most the server's --timeout."""
    header = request.headers.get("x-request-timeout")
    if header is None:
        return default_s
    try:
        seconds = float(header)
    except ValueError:
        raise RequestError(400, f"header X-Request-Timeout must be a number of seconds, got {header!r}") from None
    if not 0 < seconds < math.inf:
        raise RequestError(400, f"header X-Request-Timeout must be a positive number of seconds, got {header!r}")
    return min(seconds, default_s)


def keep_alive_client(request: Request):
    """The connection a client may send its next question on once answered (None when it said it will not)."""
    if request.scope.get("http_version") == "1.0" or request.headers.get("connection", "").lower() == "close":
        return None
    return request.scope.get("client")


def authorised(header: bytes, key: str) -> bool:
    scheme, _, token = header.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(token, key.encode())


async def until_disconnected(receive) -> None:
    """Returns when the client hangs up: once the body is read, the server's next message is http.disconnect."""
    while (await receive())["type"] != "http.disconnect":
        pass


# Variants whose answers do not depend on what a request is batched with (measured on 300 held-out questions, alone
# vs in batches of 8: fp32 logits move by < 1e-4 with the padded length). Dynamic int8 quantises activations per
# batch (27 spans and 12 decisions of 300 changed). OpenVINO's bf16 and static int8 would move by up to 0.3 of a
# logit with the batch's padding, but their engines pad each window to its own multiple of 16 tokens
# (BatchSettings.for_openvino), and then give the same logits bit for bit alone or batched.
BATCH_VARIANT_INVARIANT = ("opt", "fp32", "fp16", "ov-fp32", "ov-bf16", "ov-int8", "ov-int8-bf16")


def server_variant(spec: EngineSpec) -> str | None:
    """The variant the server runs when none is asked for: the export's default when its answers cannot depend
    on what a request is batched with, else the fastest variant that passed the export's parity gate among
    those that cannot and run here as gated."""
    if spec.variant is not None or spec.model is None:
        return spec.variant
    manifest = Path(spec.model) / "export_manifest.json"
    if not manifest.exists():
        return None  # not a merged export (adapters, torch): the engine's own default
    record = json.loads(manifest.read_text())
    device = "cuda" if spec.device == "cuda" else "cpu"
    chosen = default_variant(QAConfig.load(spec.model), device)
    if chosen in BATCH_VARIANT_INVARIANT:
        return chosen
    passed = {v: r for v, r in record["variants"].items() if r.get("passed") and v in BATCH_VARIANT_INVARIANT
              and (v == "fp16") == (device == "cuda") and unusable_here(v) is None}
    return max(passed, key=lambda v: passed[v]["questions_per_second"]) if passed else "fp32"


def server_spec(spec: EngineSpec) -> EngineSpec:
    """The engine the server runs: a batch-invariant variant, and ONNX Runtime threads that do not spin-wait
    (the event loop shares their cores: 61 against 48 q/s at concurrency 16 on the 2-core EPYC)."""
    return dataclasses.replace(spec, variant=server_variant(spec), spinning=False)


def serve(spec: EngineSpec, cfg: ServerConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Load the engine, bind the port, say where it serves, and serve with uvicorn until SIGINT/SIGTERM: then
    stop accepting, finish what is in flight, and return. A bad model or a port in use fails before any 'serving'."""
    import socket

    import uvicorn

    from toolkit.inference import load_engine

    log = logging.getLogger("qa-toolkit.serve")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    engine = load_engine(server_spec(spec))
    for name, served in engine.models.items():
        log.info(json.dumps({"event": "loaded", "adapter": name or None, "variant": served.predictor.variant,
                             "provider": served.predictor.provider, "threshold": served.qa.null_threshold,
                             "calibrated": served.qa.calibration is not None}))
    cfg = dataclasses.replace(cfg, stop_when_batcher_dies=True)
    app = create_app(engine, cfg, log)
    config = uvicorn.Config(app, host=host, port=port, access_log=False, log_level="warning",
                            timeout_graceful_shutdown=int(cfg.request_timeout_s) + 5)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise EngineError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    log.info(json.dumps({"event": "serving", "url": f"http://{host}:{port}", "api_key": cfg.api_key is not None}))
    # uvicorn stops gracefully on SIGTERM, then raises the signal again for the handler it found: a SIGTERM
    # that ended a graceful stop is a normal exit (0), not a death by signal.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    if not server.started:
        raise EngineError("the server did not start (its warm-up failed); see the log above")
    if app.state.batcher_died:
        raise EngineError(f"stopped: the batcher died ({app.state.batcher_died}); see the log")
