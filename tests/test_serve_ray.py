"""serve-batch on Ray Data (extra 'ray'): the same bytes as the single-process run, bad lines included."""

import json

import pytest
from click.testing import CliRunner

from tests.conftest import fixture_lines
from toolkit.cli import main

ray = pytest.importorskip("ray", reason="the 'ray' extra is not installed")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, object_store_memory=256 << 20, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    yield
    ray.shutdown()


def mixed_file(path):
    good = [json.dumps(line, ensure_ascii=False).encode() for line in fixture_lines()]
    bad = [b"not json", b"\xff\xfe broken utf-8", b'{"question": "no context"}', b"", b"[1, 2]",
           b'{"id": 7, "question": "q?", "context": "' + b"x" * 3000 + b'"}']
    lines = []
    for i in range(5):
        lines += good[i:] + [bad[i]] + good[:i]
    lines += [bad[5]]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, len(lines)


def serve(*args):
    return CliRunner().invoke(main, ["serve-batch", *args], catch_exceptions=False)


def test_ray_output_is_byte_for_byte_the_single_process_output(exported_bert, tmp_path):
    src, n = mixed_file(tmp_path / "in.jsonl")
    common = ["--model", str(exported_bert / "onnx"), "--variant", "fp32", "--chunk-size", "4",
              "--max-line-bytes", "2048"]
    single = serve(str(src), *common, "--threads", "1", "-o", str(tmp_path / "single.jsonl"),
                   "--summary-json", str(tmp_path / "single.json"))
    assert single.exit_code == 0, single.output
    on_ray = serve(str(src), *common, "--ray", "--workers", "2", "--threads-per-worker", "1",
                   "-o", str(tmp_path / "ray.jsonl"), "--summary-json", str(tmp_path / "ray.json"))
    assert on_ray.exit_code == 0, on_ray.output
    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "single.jsonl").read_bytes()
    rows = [json.loads(line) for line in (tmp_path / "ray.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rows] == list(range(1, n + 1))
    assert sum("error" in r for r in rows) == 6 and "line too long" in rows[-1]["error"]
    a, b = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("single", "ray"))
    assert {k: a[k] for k in ("lines", "answered", "no_answer", "errors")} == \
           {k: b[k] for k in ("lines", "answered", "no_answer", "errors")}
    assert not list(tmp_path.glob(".*partial*"))


def test_ray_resumes_an_interrupted_job(exported_bert, tmp_path):
    import toolkit
    from toolkit.serving import ServeConfig, job_identity, partial_paths

    src, _ = mixed_file(tmp_path / "in.jsonl")
    common = ["--model", str(exported_bert / "onnx"), "--variant", "fp32", "--chunk-size", "4"]
    assert serve(str(src), *common, "--threads", "1", "-o", str(tmp_path / "single.jsonl")).exit_code == 0
    whole = (tmp_path / "single.jsonl").read_bytes().splitlines(keepends=True)
    # what a run killed in its third chunk leaves: its record, two whole chunks and part of a line
    out = tmp_path / "ray.jsonl"
    partial, meta = partial_paths(str(out))
    partial.write_bytes(b"".join(whole[:9]) + whole[9][:10])
    engine = toolkit.load(exported_bert / "onnx", variant="fp32", threads=1)
    meta.write_text(json.dumps(job_identity(engine, str(src), ServeConfig(chunk_size=4))))
    result = serve(str(src), *common, "--ray", "--threads-per-worker", "1", "-o", str(out), "--resume",
                   "--summary-json", str(tmp_path / "s.json"))
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "s.json").read_text())["resumed_lines"] == 8
    assert out.read_bytes() == b"".join(whole)


def test_ray_refuses_standard_input(exported_bert):
    result = serve("-", "--model", str(exported_bert / "onnx"), "--ray")
    assert result.exit_code == 1 and "not standard input" in result.output
