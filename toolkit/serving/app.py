"""The online server's ASGI app over one engine: the routes, the dynamic batcher behind them (admission by
deadline, see batcher) and the Guard around them.

    POST /                  {"inputs": {"question", "context"} or a list of them, "parameters": {...}}
    POST /adapters/{name}   the same, answered by that adapter (or "parameters": {"adapter": name})
    GET  /adapters          the adapters served, with their no-answer thresholds
    GET  /health /ready /metrics, and GET / (a page to try the model)

Requests are checked as serve-batch checks its lines (same bounds, wire), queued to the batcher and answered
off the event loop; errors are JSON {"error": ...} naming the problem, never a traceback.
"""

import asyncio
import logging
import math
import os
import signal
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from toolkit.calibration import from_config
from toolkit.inference import Engine, EngineError
from toolkit.serving.batcher import Batcher, BatcherConfig, Overloaded, Unavailable
from toolkit.serving.guard import Guard
from toolkit.serving.metrics import ServerMetrics
from toolkit.serving.requests import Query, finite
from toolkit.serving.wire import RequestError, hf_answer, parse_body, problem_error, read_body, request_deadline

PAGE = Path(__file__).with_name("static") / "page.html"


@dataclass
class ServerConfig:
    max_body_bytes: int = 1 << 20  # serve-batch's --max-line-bytes
    max_inputs: int = 64  # questions in one request
    request_timeout_s: float = 30.0  # the deadline of a request that names none (X-Request-Timeout: seconds)
    api_key: str | None = None  # every route but OPEN_ROUTES needs "Authorization: Bearer <key>"
    cors_origins: tuple[str, ...] = ()
    batcher: BatcherConfig = field(default_factory=BatcherConfig)
    stop_when_batcher_dies: bool = False  # serve(): SIGTERM itself, so that a supervisor restarts the process


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
            raise problem_error(failed.error, where)
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


def keep_alive_client(request: Request):
    """The connection a client may send its next question on once answered (None when it said it will not)."""
    if request.scope.get("http_version") == "1.0" or request.headers.get("connection", "").lower() == "close":
        return None
    return request.scope.get("client")


async def until_disconnected(receive) -> None:
    """Returns when the client hangs up: once the body is read, the server's next message is http.disconnect."""
    while (await receive())["type"] != "http.disconnect":
        pass
