"""MkDocs hook: the pages and tables that are generated at build time rather than copied by hand.

- results/recorded/NAME.md for every bench/results/NAME/ (its results.md under the machine, date and command that
  produced it) and results/recorded/index.md listing them;
- markers in any page, replaced by generated Markdown:
    <!-- results: NAME -->            bench/results/NAME/results.md (without its title), with its provenance
    <!-- results: NAME table=N -->    only its N-th table (1-based)
    <!-- scores: NAME -->             every official score (EM, F1, ...) in bench/results/NAME/results.json, as a table
    <!-- eval-table: RUN -->          the eval table a shipped run wrote (models/RUN/reports/eval_table.json)
    <!-- fields: qa_config -->        qa_config.json's fields, from toolkit.config.QAConfig
    <!-- fields: train_config -->     train --config's settings, from toolkit.TrainConfig, with their flags
    <!-- cli: reference -->           every command of `qa-toolkit`, its arguments and options, from click

A marker in backticks is text, not a marker. A marker that names nothing known, or a results directory whose command is not known, is a warning (a failure
under `mkdocs build --strict`).
"""

import ast
import dataclasses
import functools
import json
import logging
import re
import subprocess
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
log = logging.getLogger("mkdocs.hooks.generate")

HELD_OUT = '"squad2-slice?split=heldout"'
# The command that wrote each results directory whose results.json does not say it (newer ones record it).
COMMANDS = {
    "adapters-cpu": "python bench/adapters.py",
    "answerability-cpu": "python bench/answerability.py --train --steps 1500",
    "batch-shapes-epyc-bf16": "python bench/batch_shapes.py --export models/minilm-squad2-lora/export-ov "
                              "--name batch-shapes-epyc-bf16",
    "calibration-minilm-squad-lora": "python bench/calibration.py --adapter models/minilm-squad-lora/adapter "
                                     "--name calibration-minilm-squad-lora --write",
    "calibration-minilm-squad2-lora": "python bench/calibration.py --adapter models/minilm-squad2-lora/adapter "
                                      "--name calibration-minilm-squad2-lora --write",
    "cpu-tuning-epyc-bf16": "python bench/cpu_tuning.py --export models/minilm-squad2-lora/export-ov "
                            "--name cpu-tuning-epyc-bf16",
    "cpu-variants-epyc-bf16": f"qa-toolkit bench --model models/minilm-squad2-lora/export-ov --eval-file {HELD_OUT} "
                              "--eval-samples 1200 --variants torch,torch-bf16,onnx-fp32,onnx-int8,ov-bf16,ov-int8,"
                              "ov-int8-bf16 --batch-sizes 1,8 --seq-lens real --peers pipeline-torch,pipeline-ort,"
                              "pipeline-ov-fp32 --name cpu-variants-epyc-bf16",
    "gpu-check-h200": "python bench/gpu_check.py --out bench/results/gpu-check-h200",
    "int8-variants-cpu": "python bench/int8_variants.py --export models/minilm-squad-lora/export",
    "minilm-reference-cpu": f"qa-toolkit bench --model models/minilm-reference/export --eval-file {HELD_OUT} "
                            "--name minilm-reference-cpu",
    "negatives": "python bench/negatives.py --train",
    "ray-serve-cpu": "python bench/ray_serve.py",
    "recipes": "python bench/recipes.py --train",
    "reference-pair-epyc-bf16": "python bench/reference_pair.py --fast models/minilm-squad2-lora/export "
                                "--accurate models/mpnet-squad2-lora/export --v11-samples 600 "
                                "--name reference-pair-epyc-bf16",
    "serve-heldout-epyc-bf16": "python bench/serve_squad_dev.py --export models/minilm-squad2-lora/export-ov "
                               f"--source {HELD_OUT} --samples 1200 --peers pipeline-ov-fp32,pipeline-ort "
                               "--name serve-heldout-epyc-bf16",
    "serve-load-cpu": "python bench/serve_load.py --export models/minilm-squad2-lora/export",
    "serve-load-epyc-bf16": "python bench/serve_load.py --export models/minilm-squad2-lora/export-ov "
                            "--name serve-load-epyc-bf16",
    "serve-squad-v1.1-dev": "python bench/serve_squad_dev.py --export models/minilm-squad-lora/export --samples 3000",
    "train-lora-vs-full": "qa-toolkit bench --train --name train-lora-vs-full",
    "train-speed-cpu": "qa-toolkit bench --train --name train-speed-cpu",
    "unanswerable-cpu": "python bench/unanswerable.py --train --steps 1000",
}

# The machine of runs whose results.json does not name it, as the text recorded with them states it.
MACHINES = {"ray-serve-cpu": "AMD EPYC, 2 threads, no GPU (the box of adapters-cpu)"}

MARKER = re.compile(r"(?<!`)<!-- (results|scores|eval-table|fields|cli): ([\w.\-]+)(?: table=(\d+))? -->")


# --- recorded results ---------------------------------------------------------------------------------------


def recorded() -> list[str]:
    """The names of the results directories that hold a results.md or a results.json."""
    return sorted(d.name for d in RESULTS.iterdir()
                  if d.is_dir() and ((d / "results.md").exists() or (d / "results.json").exists()))


def load_json(name: str) -> dict:
    path = RESULTS / name / "results.json"
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError:
        log.warning("bench/results/%s/results.json is not valid JSON", name)
        return {}


def machine_text(machine) -> str:
    if isinstance(machine, str):
        return machine
    if not isinstance(machine, dict):
        return "not recorded"
    parts = [machine.get("cpu") or machine.get("processor") or "CPU not named"]
    if machine.get("physical_cores"):
        parts.append(f"{machine['physical_cores']} physical cores")
    if machine.get("memory_gb"):
        parts.append(f"{machine['memory_gb']} GB")
    if machine.get("threads"):
        parts.append(f"{machine['threads']} threads")
    features = [name for key, name in (("native_bf16", "native bf16"), ("int8_vnni", "VNNI"), ("amx", "AMX"))
                if machine.get(key)]
    if features:
        parts.append(", ".join(features))
    parts.append(f"GPU {machine['gpu']}" if machine.get("gpu") else "no GPU")
    return ", ".join(parts)


def git_date(name: str) -> str | None:
    """The date the results were committed (for directories whose results.json does not record a date)."""
    try:
        out = subprocess.run(["git", "log", "-1", "--format=%cs", "--", f"bench/results/{name}"], cwd=ROOT,
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


@functools.cache
def provenance(name: str) -> dict:
    """machine, date, command and versions of one results directory."""
    data = load_json(name)
    commands = data.get("commands") or data.get("command")
    if isinstance(commands, list):
        commands = "; ".join(commands)
    command = commands or COMMANDS.get(name)
    if command is None:
        log.warning("bench/results/%s: no command recorded; name it in docs/hooks/generate.py COMMANDS", name)
    date = data.get("date")
    if not date:
        committed = git_date(name)
        date = f"{committed} (committed; the run's own date was not recorded)" if committed else "not recorded"
    machine = data.get("machine") or MACHINES.get(name)
    if machine is None:
        body = (RESULTS / name / "results.md").read_text() if (RESULTS / name / "results.md").exists() else ""
        stated = re.search(r"^Machine: (.+?)(?:\.|$)", body, re.M)
        machine = stated.group(1) if stated else "not recorded in results.json (see the text)"
    versions = data.get("versions") or {}
    return {"machine": machine_text(machine), "date": date, "command": command or "not recorded",
            "versions": ", ".join(f"{k} {v}" for k, v in versions.items())}


def results_body(name: str) -> str:
    """results.md without its first-level title (the page gives its own)."""
    path = RESULTS / name / "results.md"
    if not path.exists():
        return "*This run recorded results.json only:*\n\n```json\n" + json.dumps(load_json(name), indent=1)[:6000] + \
               "\n```\n"
    lines = path.read_text().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    return "\n".join(lines).strip() + "\n"


def tables(markdown: str) -> list[str]:
    """The Markdown tables of a text, in order."""
    out, current = [], []
    for line in markdown.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            out.append("\n".join(current))
            current = []
    return out


def score_rows(data, path=()):
    """(path, scores) for every dict holding official SQuAD scores (exact and f1) in a results.json."""
    if isinstance(data, dict):
        if "exact" in data and "f1" in data:
            yield " / ".join(path), data
        for key, value in data.items():
            if isinstance(value, dict) and not ("exact" in data and "f1" in data):
                yield from score_rows(value, (*path, key))


def scores_table(name: str) -> str:
    def num(x):
        return "–" if x is None else f"{x:.2f}"

    out = ["| scores | EM | F1 | HasAns EM / F1 | NoAns | no-answer AUC | questions |", "|---|---|---|---|---|---|---|"]
    for path, r in score_rows(load_json(name)):
        has = f"{num(r.get('HasAns_exact'))} / {num(r.get('HasAns_f1'))}" if "HasAns_exact" in r else "–"
        out.append(f"| {path.replace('_', ' ')} | {num(r['exact'])} | {num(r['f1'])} | {has} | {num(r.get('NoAns_exact'))} "
                   f"| {num(r.get('no_answer_auc'))} | {r.get('total', '–')} |")
    if len(out) == 2:
        log.warning("scores marker: bench/results/%s/results.json holds no scores", name)
    return "\n".join(out)


def caption(name: str) -> str:
    p = provenance(name)
    return (f"*Recorded {p['date']} on {p['machine']}: `{p['command']}` "
            f"([all of this run](../results/recorded/{name}.md)).*")


def recorded_page(name: str) -> str:
    p = provenance(name)
    images = sorted(f.name for f in (RESULTS / name).glob("*.png"))
    out = [f"# {name}", "",
           "Generated from `bench/results/" + name + "/` at build time.", "",
           f"- **Date:** {p['date']}", f"- **Machine:** {p['machine']}", f"- **Command:** `{p['command']}`"]
    if p["versions"]:
        out.append(f"- **Versions:** {p['versions']}")
    out += ["", results_body(name)]
    out += [f"![{image}]({image})\n" for image in images]
    return "\n".join(out)


def recorded_index(names: list[str]) -> str:
    out = ["# Every recorded run", "",
           "One page per directory of `bench/results/`, generated at build time from its `results.md` and "
           "`results.json`. The narrative pages of this section say what the figures mean.", "",
           "| run | date | machine | command |", "|---|---|---|---|"]
    for name in names:
        p = provenance(name)
        out.append(f"| [{name}]({name}.md) | {p['date']} | {p['machine']} | `{p['command']}` |")
    return "\n".join(out) + "\n"


# --- tables from the code and the shipped runs ------------------------------------------------------------------


def eval_table(run: str) -> str:
    path = ROOT / "models" / run / "reports" / "eval_table.json"
    if not path.exists():
        log.warning("eval-table marker: %s not found", path.relative_to(ROOT))
        return f"*({path.relative_to(ROOT)} not found)*"
    rows = json.loads(path.read_text())

    def pct(x):
        return "–" if x is None else f"{100 * x:.1f}"

    def num(x, digits=2):
        return "–" if x is None else f"{x:.{digits}f}"

    out = ["| step | train loss | val loss | start acc | end acc | pos. EM | EM | F1 | HasAns F1 | NoAns F1 |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['step']} | {num(r.get('train_loss'), 3)} | {num(r.get('val_loss'), 3)} | "
                   f"{pct(r.get('start_acc'))} | {pct(r.get('end_acc'))} | {pct(r.get('position_exact'))} | "
                   f"{num(r.get('exact'))} | {num(r.get('f1'))} | {num(r.get('HasAns_f1'))} | {num(r.get('NoAns_f1'))} |")
    return "\n".join(out) + f"\n\n*From `models/{run}/reports/eval_table.json` (3 tuning articles, threshold 0).*"


def field_comments(cls) -> dict[str, str]:
    """A dataclass's fields -> the comment that ends their line in its source."""
    import inspect

    source = inspect.getsource(cls)
    lines = source.splitlines()
    comments = {}
    for node in ast.parse(source).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            line = lines[node.lineno - 1]
            comments[node.target.id] = line.split("  # ", 1)[1].strip() if "  # " in line else ""
    return comments


def default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return json.dumps(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return json.dumps(f.default_factory())
    return "required"


def type_text(f: dataclasses.Field) -> str:
    return str(f.type).replace("typing.", "")


def fields_table(kind: str) -> str:
    import_toolkit()
    if kind == "qa_config":
        from toolkit.config import QAConfig

        comments = field_comments(QAConfig)
        out = ["| field | type | default | what it holds |", "|---|---|---|---|"]
        for f in dataclasses.fields(QAConfig):
            out.append(f"| `{f.name}` | `{type_text(f)}` | `{default_text(f)}` | {comments.get(f.name, '')} |")
        return "\n".join(out)
    if kind == "train_config":
        from toolkit import TrainConfig
        from toolkit.cli import main

        flags = {}
        for param in main.commands["train"].params:
            flags[param.name] = ", ".join(f"`{o}`" for o in param.opts)
        flags["lora_targets"] = "`--lora-targets`"
        comments = field_comments(TrainConfig)
        out = ["| setting | type | default | flag | note (from the code) |", "|---|---|---|---|---|"]
        for f in dataclasses.fields(TrainConfig):
            out.append(f"| `{f.name}` | `{type_text(f)}` | `{default_text(f)}` | {flags.get(f.name, 'config file only')} "
                       f"| {comments.get(f.name, '')} |")
        return "\n".join(out)
    log.warning("fields marker: unknown kind %r (qa_config, train_config)", kind)
    return ""


# --- the command line, from click ----------------------------------------------------------------------------


def import_toolkit():
    import sys

    if str(ROOT) not in sys.path:
        sys.path.append(str(ROOT))


def cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def type_name(param) -> str:
    import click

    if getattr(param, "is_flag", False):
        return "flag"
    kind = param.type
    if isinstance(kind, click.Choice):
        name = " \\| ".join(f"`{c}`" for c in kind.choices)
    elif isinstance(kind, click.IntRange):
        name = f"integer {kind.min}-{kind.max}"
    else:
        name = {"text": "text", "integer": "integer", "float": "number", "path": "path", "boolean": "boolean"}.get(
            kind.name, kind.name)
    return name + (" (repeatable)" if getattr(param, "multiple", False) else "")


def default_of(param) -> str:
    default = param.to_info_dict().get("default")
    if default is None or default == () or getattr(param, "is_flag", False) and default is False \
            and not param.secondary_opts:
        return "–"
    if isinstance(default, bool) and param.secondary_opts:
        return f"`{param.opts[0] if default else param.secondary_opts[0]}`"
    return f"`{default}`"


def cli_reference() -> str:
    """Every command: its summary, usage, arguments and options (names, type, default, help), from click."""
    import click

    import_toolkit()
    from toolkit.cli import main

    out = []
    group_ctx = click.Context(main, info_name="qa-toolkit")
    out += ["| command | what it does |", "|---|---|"]
    for name, command in sorted(main.commands.items()):
        out.append(f"| [`{name}`](#{name}) | {cell(command.get_short_help_str(limit=200))} |")
    for name, command in sorted(main.commands.items()):
        ctx = click.Context(command, info_name=name, parent=group_ctx)
        out += ["", f"## {name}", "", "```text", f"qa-toolkit {name} {' '.join(command.collect_usage_pieces(ctx))}",
                "```", "", (command.help or "").strip(), ""]
        arguments = [p for p in command.params if isinstance(p, click.Argument)]
        if arguments:
            out += ["| argument | type |", "|---|---|"]
            out += [f"| `{p.make_metavar(ctx)}` | {type_name(p)} |" for p in arguments]
            out.append("")
        out += ["| option | type | default | what it does |", "|---|---|---|---|"]
        for p in command.params:
            if isinstance(p, click.Option) and not p.hidden:
                names = " / ".join(", ".join(f"`{o}`" for o in opts) for opts in (p.opts, p.secondary_opts) if opts)
                out.append(f"| {names} | {type_name(p)} | {default_of(p)} | {cell(p.help or '')} |")
        out.append("| `--help` | flag | – | Show the help and exit. |")
    return "\n".join(out) + "\n"


def replace_marker(match: re.Match, page_path: str) -> str:
    kind, name, table = match.group(1), match.group(2), match.group(3)
    if kind == "results":
        if not (RESULTS / name).is_dir():
            log.warning("%s: results marker names bench/results/%s, which does not exist", page_path, name)
            return ""
        body = results_body(name)
        if table:
            found = tables(body)
            if not 1 <= int(table) <= len(found):
                log.warning("%s: bench/results/%s/results.md has %d tables, not %s", page_path, name, len(found),
                            table)
                return ""
            body = found[int(table) - 1]
        return body + "\n\n" + caption(name).replace("../results/recorded/", recorded_link(page_path)) + "\n"
    if kind == "eval-table":
        return eval_table(name)
    if kind == "scores":
        if not (RESULTS / name / "results.json").exists():
            log.warning("%s: scores marker names bench/results/%s/results.json, which does not exist", page_path, name)
            return ""
        return scores_table(name) + "\n\n" + caption(name).replace("../results/recorded/", recorded_link(page_path))
    if kind == "cli":
        return cli_reference()
    return fields_table(name)


def recorded_link(page_path: str) -> str:
    """The relative path from a page to results/recorded/."""
    depth = page_path.count("/")
    return "../" * depth + "results/recorded/"


# --- MkDocs events ----------------------------------------------------------------------------------------------


def on_files(files, config):
    provenance.cache_clear()  # `mkdocs serve` rebuilds in one process: read the results afresh
    names = recorded()
    files.append(File.generated(config, "results/recorded/index.md", content=recorded_index(names)))
    for name in names:
        files.append(File.generated(config, f"results/recorded/{name}.md", content=recorded_page(name)))
        for image in sorted((RESULTS / name).glob("*.png")):
            files.append(File.generated(config, f"results/recorded/{name}-{image.name}", abs_src_path=str(image)))
    return files


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri.startswith("results/recorded/") and page.file.src_uri != "results/recorded/index.md":
        name = page.file.src_uri.rsplit("/", 1)[1][:-3]
        markdown = re.sub(r"!\[([^\]]+)\]\(([^)]+\.png)\)", lambda m: f"![{m.group(1)}]({name}-{m.group(2)})",
                          markdown)
    return MARKER.sub(lambda m: replace_marker(m, page.file.src_uri), markdown)
