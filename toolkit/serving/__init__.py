"""Serving: requests and their bounds, shared by every front end (requests); answer files: the resumable job over
a JSONL file (answer_file, its output in partial_output) and the same job on Ray actors (answer_file_ray); the
online server: Hugging Face's wire format (wire), the app and its routes (app), the Guard middleware (guard),
the dynamic batcher with deadline admission (batcher), Prometheus metrics (metrics), one process under uvicorn
(server) or Ray Serve replicas (ray_serve)."""

from toolkit.serving.answer_file import ServeConfig, Summary, job_identity, serve_batch, serve_job
from toolkit.serving.partial_output import ServeError, check_paths, partial_paths
from toolkit.serving.requests import Query, answer_queries, parse_line, query_from_record

__all__ = ["Query", "ServeConfig", "ServeError", "Summary", "answer_queries", "check_paths", "job_identity",
           "parse_line", "partial_paths", "query_from_record", "serve_batch", "serve_job"]
