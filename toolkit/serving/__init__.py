"""Serving: request parsing and bounds shared by every front end (requests), the resumable batch job over a
JSONL file (jobs, batch) and the same job on Ray actors (ray_batch)."""

from toolkit.serving.batch import ServeConfig, Summary, job_identity, serve_batch, serve_job
from toolkit.serving.jobs import ServeError, check_paths, partial_paths
from toolkit.serving.requests import Query, answer_queries, parse_line, query_from_record

__all__ = ["Query", "ServeConfig", "ServeError", "Summary", "answer_queries", "check_paths", "job_identity",
           "parse_line", "partial_paths", "query_from_record", "serve_batch", "serve_job"]
