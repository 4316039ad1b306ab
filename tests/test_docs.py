"""The documentation site (docs/, mkdocs.yml) and the README front page.

- The site builds with `mkdocs build --strict` (no broken link, anchor or reference; every recorded run named
  with its command).
- The command-line reference lists every option of every command's `--help`.
- The reference pages name every field serve-batch writes, every HTTP route and every Prometheus metric.
- Every bash/python block of the getting-started page and the guides is marked: run by this test, or shown
  only (with a title that says so). The marked ones run as written, page by page (two pages at a time), each
  page in a scratch copy of the checkout's root (the shipped adapters and configs/), with .venv/bin on the PATH.
"""

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLE_PAGES = ["getting-started.md", *sorted(f"guides/{p.name}" for p in (DOCS / "guides").glob("*.md"))]
NOT_RUN = "not run by the docs tests"
FENCE = re.compile(r"^```(?P<lang>[\w-]*)(?P<info>[^\n]*)\n(?P<code>.*?)^```[ \t]*$", re.S | re.M)
MARKER = re.compile(r"<!-- docs-test: (?P<how>run|shown)(?: expect='(?P<expect>[^']*)')? -->\s*$")
BLOCK_TIMEOUT_S = 300


def examples(page: str) -> list[dict]:
    """The bash and python blocks of a page: language, code, how the marker above says to treat it, its title."""
    text = (DOCS / page).read_text()
    out = []
    for match in FENCE.finditer(text):
        if match.group("lang") not in ("bash", "python"):
            continue
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = MARKER.search(before)
        title = re.search(r'title="([^"]*)"', match.group("info"))
        out.append({"page": page, "line": text[:match.start()].count("\n") + 1, "lang": match.group("lang"),
                    "code": match.group("code"), "how": marker.group("how") if marker else None,
                    "expect": marker.group("expect") if marker else None, "title": title.group(1) if title else ""})
    return out


def test_every_example_says_whether_it_runs():
    """A block runs here (<!-- docs-test: run -->), or is shown only (<!-- docs-test: shown -->) under a title
    that tells the reader it is not run; a title saying so on a block that runs would be false."""
    problems = []
    for page in EXAMPLE_PAGES:
        for ex in examples(page):
            where = f"{page}:{ex['line']}"
            if ex["how"] is None:
                problems.append(f"{where}: no <!-- docs-test: run|shown --> marker on the line above")
            elif ex["how"] == "shown" and NOT_RUN not in ex["title"]:
                problems.append(f"{where}: a block not run needs a title saying '({NOT_RUN}...)'")
            elif ex["how"] == "run" and NOT_RUN in ex["title"]:
                problems.append(f"{where}: runs, but its title says it does not")
    assert not problems, "\n".join(problems)
    assert sum(ex["how"] == "run" for page in EXAMPLE_PAGES for ex in examples(page)) >= 10


def test_readme_is_a_front_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for command in ("make demo", "make test"):  # the two set-up commands stay the README's
        assert re.search(rf"^\s*{command}\s*$", readme, re.M), command
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / link).exists(), f"README links to {link}, which does not exist"


def test_reference_names_every_route_and_metric():
    """Routes and metrics are read from the code's text, wherever the modules live."""
    code = "\n".join(p.read_text() for p in (ROOT / "toolkit").rglob("*.py"))
    page = (DOCS / "reference" / "http-api.md").read_text()
    routes = set(re.findall(r'@app\.(get|post)\("([^"]+)"\)', code))
    metrics = set(re.findall(r'(?:Counter|Gauge|Histogram)\(\s*"(qa_\w+)"', code))
    assert routes and metrics
    for method, route in sorted(routes):
        assert f"`{method.upper()} {route}`" in page, f"{method.upper()} {route} is not in reference/http-api.md"
    for name in sorted(metrics):
        assert f"`{name}`" in page, f"metric {name} is not in reference/http-api.md"


def hook_module():
    pytest.importorskip("mkdocs", reason="the docs extra: pip install -e '.[docs]'")
    spec = importlib.util.spec_from_file_location("docs_hook", DOCS / "hooks" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_recorded_run_has_its_command_machine_and_date():
    hook = hook_module()
    names = hook.recorded()
    assert names == sorted(d.name for d in (ROOT / "bench" / "results").iterdir() if d.is_dir())
    for name in names:
        p = hook.provenance(name)
        assert p["command"] != "not recorded", name
        assert p["date"] != "not recorded", name


def require_mkdocs():
    """CI installs the docs extra before the tests; elsewhere the site tests skip without it."""
    try:
        import mkdocs  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("the docs extra is not installed: pip install -c constraints.txt -e '.[docs]'")


@pytest.fixture(scope="session")
def site(tmp_path_factory) -> Path:
    require_mkdocs()
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.mark.slow
def test_site_builds_strict(site):
    for page in ("index.html", "getting-started/index.html", "reference/cli/index.html",
                 "reference/python-api/index.html", "results/recorded/index.html"):
        assert (site / page).exists(), page


def page_text(site: Path, page: str) -> str:
    import html

    raw = (site / page / "index.html").read_text()
    body = raw[raw.index("<article"):raw.index("</article>")]
    return html.unescape(re.sub(r"<[^>]+>", " ", body))


def help_options(args: list[str]) -> list[str]:
    """The option names a --help prints: -o, --output, --merge, --no-merge, ..."""
    from toolkit.cli import main

    result = CliRunner().invoke(main, [*args, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    options = result.output.split("Options:", 1)[1]
    names = []
    for line in options.splitlines():
        head = line.strip().split("  ", 1)[0]
        if head.startswith("-"):
            names += [n for part in head.split(" / ") for n in re.findall(r"(?:^|[ ,/])(--?[\w-]+)", part)]
    return names


@pytest.mark.slow
def test_cli_reference_lists_every_option_of_every_command(site):
    from toolkit.cli import main

    text = page_text(site, "reference/cli")
    sections = dict(re.findall(r"\n\s*([\w-]+)\s*¶(.*?)(?=\n\s*[\w-]+\s*¶|\Z)", text, re.S))
    assert set(main.commands) <= set(sections), sorted(set(main.commands) - set(sections))
    for name in main.commands:
        options = help_options([name])
        assert "--help" in options and len(options) >= 2, (name, options)
        missing = [o for o in options if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", sections[name])]
        assert not missing, f"qa-toolkit {name}: {missing} not in the reference"


@pytest.mark.slow
def test_python_api_reference_documents_the_public_names(site):
    import toolkit

    text = page_text(site, "reference/python-api")
    for name in toolkit.__all__:
        assert f"toolkit.{name}" in text, name


@pytest.mark.slow
def test_jsonl_reference_names_every_field_serve_batch_writes(tmp_path):
    """Answer lines (one adapter and several, with alternatives) and error lines, from the shipped adapters."""
    from toolkit.cli import main

    lines = [{"id": "a", "question": "Where is Normandy?", "context": "Normandy is a region in France.",
              "parameters": {"top_k": 2}},
             {"id": "b", "question": "", "context": "Empty question."}]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))
    rows = []
    for model in (["--model", str(ROOT / "models/minilm-squad2-lora/adapter")],
                  ["--adapters", f"new={ROOT / 'models/minilm-squad2-lora/adapter'},"
                                 f"old={ROOT / 'models/minilm-squad-lora/adapter'}"]):
        out = tmp_path / "out.jsonl"
        result = CliRunner().invoke(main, ["serve-batch", str(src), *model, "-o", str(out)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        rows += [json.loads(x) for x in out.read_text().splitlines()]
    fields = {k for row in rows for k in row} | {f"alternatives[].{k}" for row in rows
                                                 for alt in row.get("alternatives", []) for k in alt}
    assert {"adapter", "error", "error_kind", "alternatives[].answer"} <= fields
    page = (DOCS / "reference" / "jsonl.md").read_text()
    documented = set(re.findall(r"^\| `([\w\[\].]+)`", page, re.M))
    assert not fields - documented, f"written but not documented: {sorted(fields - documented)}"


def scratch_checkout(base: Path) -> Path:
    """A directory laid out like the checkout's root for the examples: the shipped adapters and configs/ linked,
    everything the examples write kept apart."""
    work = base / "checkout"
    (work / "models").mkdir(parents=True)
    for run in ("minilm-squad2-lora", "minilm-squad-lora", "mpnet-squad2-lora"):
        (work / "models" / run).symlink_to(ROOT / "models" / run)
    (work / "configs").symlink_to(ROOT / "configs")
    return work


def run_block(ex: dict, work: Path, n: int) -> str | None:
    """Runs one block; returns why it failed, or None."""
    script = work / f".example-{n}.{'sh' if ex['lang'] == 'bash' else 'py'}"
    script.write_text(ex["code"])
    command = ["bash", "-euo", "pipefail", script.name] if ex["lang"] == "bash" else [sys.executable, script.name]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    process = subprocess.Popen(command, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    where = f"{ex['page']}:{ex['line']}"
    try:
        output, _ = process.communicate(timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        return f"{where} ran over {BLOCK_TIMEOUT_S} s:\n{output[-3000:]}"
    finally:
        try:  # whatever the block left running in the background (a server it did not stop)
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    if process.returncode != 0:
        return f"{where} failed ({process.returncode}):\n{output[-3000:]}"
    if ex["expect"] and ex["expect"] not in output:
        return f"{where}: {ex['expect']!r} not in its output:\n{output[-3000:]}"
    return None


def run_page(page: str, base: Path) -> tuple[str, float, str | None]:
    """A page's runnable blocks in order, in a scratch checkout of its own: (page, seconds, failure or None)."""
    started = time.monotonic()
    work = scratch_checkout(base)
    for n, ex in enumerate(e for e in examples(page) if e["how"] == "run"):
        failure = run_block(ex, work, n)
        if failure:
            return page, time.monotonic() - started, failure
    return page, time.monotonic() - started, None


@pytest.mark.slow
def test_examples_run_as_written(tmp_path):
    """Two pages at a time: most of an example's time is a process importing torch on one core."""
    runs = {p: [ex for ex in examples(p) if ex["how"] == "run"] for p in EXAMPLE_PAGES}
    # the longest first (about: the processes they start), so that the two workers end together
    pages = sorted((p for p in runs if runs[p]), key=lambda p: -sum(
        ex["code"].count("qa-toolkit ") + ex["code"].count("toolkit.load") for ex in runs[p]))
    assert "getting-started.md" in pages and len(pages) >= 6
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda i_page: run_page(i_page[1], tmp_path / str(i_page[0])), enumerate(pages)))
    print("\n".join(f"{page}: {seconds:.1f} s" for page, seconds, _ in results))
    failures = [failure for _, _, failure in results if failure]
    assert not failures, "\n\n".join(failures)
