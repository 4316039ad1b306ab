"""The public Python API: the few names toolkit exports, and README's example, run as written."""

import contextlib
import io
import os
import re
from pathlib import Path

import toolkit

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- api-example: tests/test_api.py runs it -->\s*```python\n(.*?)```", text, re.S)
    assert match, "README's Python API example (marked for this test) is missing"
    return match.group(1)


def test_public_names_are_few_and_documented():
    assert set(toolkit.__all__) == {"Answer", "AnswerOptions", "Span", "TrainConfig", "export", "load", "score", "train"}
    for name in ("load", "train", "export", "score"):
        assert getattr(toolkit, name).__doc__, name


def test_readme_example_runs_as_written():
    """Loads the shipped reference adapter (the offline base model, PyTorch engine) and answers."""
    code = readme_example()
    assert len(code.strip().splitlines()) <= 6
    out = io.StringIO()
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, "README.md", "exec"), {})
    finally:
        os.chdir(cwd)
    assert "France" in out.getvalue()
