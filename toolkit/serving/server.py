"""`qa-toolkit serve`: the app (serving.app) in one process under uvicorn: load the engine the server runs
(loading.server_spec), bind the port, serve until SIGINT/SIGTERM, and exit non-zero if the batcher died."""

import dataclasses
import json
import logging
import signal

from toolkit.inference import EngineError, EngineSpec
from toolkit.inference.loading import server_spec
from toolkit.serving.app import ServerConfig, create_app


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
