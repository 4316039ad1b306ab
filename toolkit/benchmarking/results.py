"""The one way benchmark results are written: results.json (with date, machine and versions) and results.md
under results_dir/name, for the bench commands and the scripts in bench/ alike."""

import json
import os
import shlex
import sys
import time
from pathlib import Path

from toolkit.runtime import machine_info, package_versions


def stamp(name: str, threads: int) -> dict:
    """What every results file starts with: its name, the command that made it, when, on what machine, with
    which packages."""
    return {"name": name, "command": invocation(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": machine_info(threads), "versions": package_versions()}


def invocation() -> str:
    """This process's command line as a reader would type it: `python bench/x.py ...` or `qa-toolkit ...`."""
    program = Path(sys.argv[0])
    if program.suffix == ".py":
        head = ["python", os.path.relpath(program) if program.is_absolute() else str(program)]
    else:
        head = ["qa-toolkit" if program.name in ("qa-toolkit", "cli.py", "__main__.py") else program.name]
    return shlex.join([*head, *sys.argv[1:]])


def machine_line(results: dict) -> str:
    """The machine in one line, for the head of every table (CPU named, as every table must)."""
    m = results["machine"]
    features = ", ".join(f for f, on in (("native bf16", m.get("native_bf16")), ("VNNI", m.get("int8_vnni")),
                                         ("AMX", m.get("amx"))) if on)
    return (f"Machine: {m.get('cpu') or m['processor']} ({features or 'AVX2-class: no native bf16, no VNNI'}), "
            f"{m['physical_cores']} physical cores, {m['memory_gb']} GB, {m['threads']} threads"
            + (f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU") + ".")


def write_results(results_dir: str | Path, results: dict, markdown: str) -> Path:
    """results.json and results.md in results_dir/<results['name']>; returns that directory."""
    out = Path(results_dir) / results["name"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "results.md").write_text(markdown if markdown.endswith("\n") else markdown + "\n")
    return out


def qa_command() -> list[str]:
    """The qa-toolkit command of the running interpreter, for scripts that run it as a subprocess."""
    return [sys.executable, "-m", "toolkit.cli"]
