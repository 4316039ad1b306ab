"""The middleware around every HTTP request: its id, the API key, a JSON 500 instead of a traceback, metrics and
one JSON log line."""

import hmac
import json
import logging
import time
import uuid

from fastapi.responses import JSONResponse

from toolkit.serving.metrics import ServerMetrics

# Open without the API key: liveness and readiness (probes carry no credentials) and the page itself (it asks
# for the key and sends it with each question).
OPEN_ROUTES = {("GET", "/health"), ("GET", "/ready"), ("GET", "/"), ("HEAD", "/")}


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


def authorised(header: bytes, key: str) -> bool:
    scheme, _, token = header.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(token, key.encode())
