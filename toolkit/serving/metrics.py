"""The server's Prometheus metrics, in a registry of its own (one per app, no process-wide state)."""

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from toolkit.inference import Engine
from toolkit.serving.batcher import BatchRecord

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, engine: Engine):
        self.registry = CollectorRegistry()
        self.requests = Counter("qa_requests_total", "HTTP requests by method, path, status and adapter",
                                ["method", "path", "status", "adapter"], registry=self.registry)
        self.latency = Histogram("qa_request_seconds", "Request latency by method and path", ["method", "path"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_questions = Histogram("qa_batch_questions", "Questions per engine call", buckets=BATCH_BUCKETS,
                                         registry=self.registry)
        self.batch_seconds = Histogram("qa_batch_seconds", "Seconds per engine call", buckets=LATENCY_BUCKETS,
                                       registry=self.registry)
        self.windows = Counter("qa_windows_total", "Token windows inferred (windows/s: its rate)", registry=self.registry)
        self.inference_seconds = Counter("qa_inference_seconds_total", "Seconds spent in engine calls",
                                         registry=self.registry)
        self.stage_seconds = Counter("qa_engine_stage_seconds_total", "Seconds spent in engine calls by stage: "
                                     "checks, tokenise, infer, postprocess", ["stage"], registry=self.registry)
        self.shed = Counter("qa_shed_total", "Requests refused at once (503): they could not be answered by their "
                            "deadline at the measured rate, or the queue was full", registry=self.registry)
        self.queue_depth = Gauge("qa_queue_questions", "Questions waiting for a batch", registry=self.registry)
        info = Gauge("qa_model_info", "What is served", ["adapter", "variant", "provider"], registry=self.registry)
        for name, served in engine.models.items():
            info.labels(name or "-", served.predictor.variant, served.predictor.provider).set(1)

    def observe_request(self, method: str, path: str, status: int, seconds: float, adapter: str | None) -> None:
        """One request, under its method and route: the page's GET / apart from the API's POST /."""
        route = path if path in ("/", "/health", "/ready", "/metrics", "/adapters") else (
            "/adapters/{name}" if path.startswith("/adapters/") else "other")
        method = method if method in ("GET", "POST", "HEAD", "OPTIONS") else "other"
        self.requests.labels(method, route, str(status), adapter or "-").inc()
        self.latency.labels(method, route).observe(seconds)

    def observe_batch(self, record: BatchRecord) -> None:
        self.batch_questions.observe(record.questions)
        self.batch_seconds.observe(record.seconds)
        self.inference_seconds.inc(record.seconds)
        self.windows.inc(record.windows)
        for stage, seconds in record.stages.items():
            self.stage_seconds.labels(stage).inc(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
