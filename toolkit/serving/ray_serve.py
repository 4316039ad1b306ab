"""`qa-toolkit serve --ray-serve`: the same app as a Ray Serve deployment, past one machine.

Each replica builds its own engine (at threads_per_replica threads) and the same FastAPI app as the single
process server, batcher included (our dynamic batching, one engine per replica); Ray Serve's proxy spreads
requests over the replicas. Same routes, same answers, same errors.
"""

import dataclasses
import signal
import threading
from dataclasses import dataclass

from toolkit.inference import EngineSpec
from toolkit.inference.loading import server_spec
from toolkit.serving.app import ServerConfig, create_app
from toolkit.serving.partial_output import ServeError


@dataclass
class RayServeConfig:
    address: str = "auto"  # auto: the running cluster (RAY_ADDRESS, `ray start`), else a local instance; or an address
    replicas: int = 2
    threads_per_replica: int = 1  # intra-op threads of each replica's engine, and the CPUs it reserves

    def check(self) -> None:
        if self.replicas < 1 or self.threads_per_replica < 1:
            raise ServeError("--replicas and --threads-per-replica must be at least 1")


def application(spec: EngineSpec, cfg: ServerConfig, ray_cfg: RayServeConfig):
    """The Ray Serve application: a deployment whose replicas each build the engine and the app."""
    from ray import serve

    spec = dataclasses.replace(server_spec(spec), threads=ray_cfg.threads_per_replica)

    def build_app():  # runs in each replica
        from toolkit.inference import load_engine

        return create_app(load_engine(spec), cfg)

    deployment = serve.deployment(serve.ingress(build_app)(), name="qa-toolkit", num_replicas=ray_cfg.replicas,
                                  ray_actor_options={"num_cpus": ray_cfg.threads_per_replica},
                                  max_ongoing_requests=cfg.batcher.max_queue)
    return deployment.bind()


def start(spec: EngineSpec, cfg: ServerConfig, ray_cfg: RayServeConfig, host: str, port: int) -> None:
    """Connect to (or start) Ray, start Serve's proxy on host:port and run the application; returns once it
    is ready."""
    try:
        import ray
        from ray import serve
    except ImportError:
        raise ServeError("--ray-serve needs the ray extra: pip install 'qa-toolkit[ray]'") from None
    ray_cfg.check()
    env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(ray_cfg.threads_per_replica)}}
    if not ray.is_initialized():
        if ray_cfg.address == "auto":
            try:
                ray.init(address="auto", runtime_env=env, log_to_driver=False)
            except ConnectionError:
                ray.init(runtime_env=env, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=ray_cfg.address, runtime_env=env, log_to_driver=False)
    serve.start(http_options={"host": host, "port": port})
    serve.run(application(spec, cfg, ray_cfg), name="qa-toolkit", route_prefix="/")


def serve_until_stopped(spec: EngineSpec, cfg: ServerConfig, ray_cfg: RayServeConfig, host: str, port: int) -> None:
    """start(), then wait for SIGINT/SIGTERM and shut Serve down (its replicas finish what they hold)."""
    from ray import serve

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    start(spec, cfg, ray_cfg, host, port)
    stop.wait()
    serve.shutdown()
