"""What a GPU machine with no network needs for bench/gpu_check.py, gathered on a CPU machine and cut into pieces
small enough to travel one per device call; and, on the GPU machine, the step that joins, verifies and installs
them into a private directory (never into the image's environment).

    python bench/gpu_payload.py build --out .gpu-payload          # on a CPU machine, in the checkout
    python3 bench/gpu_payload.py join .gpu-payload --target /tmp/gpu   # on the GPU machine, in the checkout; then
    export PYTHONPATH=/tmp/gpu/site:$PWD     # the payload's packages before the image's, and the checkout's toolkit

build writes DIR/payload.tar.000, .001, ... (each at most --piece-mb MiB: by default what fits beside the
checkout's tracked files in one device call) and DIR/payload.json (each piece's size and sha256, the archive's
sha256, what it holds); it prints the carry sequence. The archive holds:

- wheels/: onnxruntime-gpu (ORT_GPU) and the project's own pins (constraints.txt) of the packages the GPU image
  lacks or holds at other versions (IMAGE_DIFFERS), for CPython 3.12 manylinux; installed with
  pip install --no-index --no-deps --target;
- models/LABEL/: each adapter merged and exported (an export's onnx/ directory: tokenizer, qa_config.json,
  export_manifest.json and the chosen ONNX files: fp32 model.onnx, fp16 model_fp16.onnx built here with ONNX
  Runtime's transformer optimizer) and, where asked for (precision "torch"), models/LABEL/merged/: the merged
  PyTorch model (fp32 safetensors) for torch on CUDA;
- questions.jsonl (--questions seeded held-out questions, default 1,000 of squad2-slice?split=heldout), their
  references.json, about.json (where they came from) and answers/LABEL.cpu-fp32.jsonl: serve-batch's answers to them from each fp32 export on this CPU, the reference
  the GPU's answers are compared with.

join checks every piece (size, sha256) before it joins anything, names the missing or corrupt ones, checks the
joined archive's sha256, unpacks it into --target and installs the wheels into --target/site. It imports nothing
outside the standard library: it runs before the payload's packages are installed.
"""

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20
DEVICE_CARRY_MIB = 64  # the device tool's limit on what one call carries, the checkout's tracked files included
ORT_GPU = "onnxruntime-gpu==1.31.1"  # the CUDA 13 build for CPython 3.12
# In the GPU image (Python 3.12, transformers 5.x, huggingface_hub 1.x, tokenizers 0.23, no fastapi/uvicorn/
# optimum): the packages toolkit needs at the versions constraints.txt pins, where the image's differ or are missing.
# fastapi needs opentelemetry-api; the image holds what the rest need (anyio, h11, click, annotated-doc, ...).
IMAGE_DIFFERS = ("transformers", "tokenizers", "huggingface_hub", "peft", "optimum", "optimum-onnx", "fastapi",
                 "starlette", "pydantic", "pydantic_core", "annotated-types", "typing-inspection", "uvicorn",
                 "opentelemetry-api")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
ONNX_FILES = {"fp32": "model.onnx", "fp16": "model_fp16.onnx"}
TORCH = "torch"  # the merged PyTorch model, as a precision of --adapter
DEFAULT_ADAPTERS = ("fast=models/minilm-squad2-lora/adapter:fp32,fp16,torch",
                    "accurate=models/mpnet-squad2-lora/adapter:fp16")


class PayloadError(RuntimeError):
    """A payload that cannot be built or joined; the message names the piece or step."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MIB), b""):
            digest.update(block)
    return digest.hexdigest()


# --- build (CPU machine) ---------------------------------------------------------------------------------------


def tracked_bytes() -> int:
    """What the checkout's tracked files weigh: every device call carries them."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return sum((ROOT / name).stat().st_size for name in listed.decode().split("\0") if name and (ROOT / name).is_file())


def default_piece_mib() -> int:
    """The largest whole MiB a piece can have for one call to carry it beside the tracked files (2 MiB spare)."""
    room = DEVICE_CARRY_MIB - 2 - -(-tracked_bytes() // MIB)
    if room < 1:
        raise PayloadError(f"the tracked files alone fill the device's {DEVICE_CARRY_MIB} MiB carry")
    return room


def pinned(names: tuple[str, ...]) -> list[str]:
    """name==version for each name, as constraints.txt pins it."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep:
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    missing = [n for n in names if n.lower().replace("_", "-") not in pins]
    if missing:
        raise PayloadError(f"constraints.txt pins none of {missing}")
    return [f"{n}=={pins[n.lower().replace('_', '-')]}" for n in names]


def download_wheels(requirements: list[str], target: Path) -> None:
    platforms = [flag for p in PLATFORMS for flag in ("--platform", p)]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(target), *requirements]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise PayloadError(f"pip download of {requirements} failed: {done.stderr.strip()[-1500:]}")


def qa(*args: str) -> None:
    from toolkit.benchmarking.results import qa_command

    done = subprocess.run([*qa_command(), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise PayloadError(f"qa-toolkit {' '.join(args[:2])} failed:\n{done.stderr[-3000:]}")


def write_questions(source: str, staged: Path) -> None:
    """questions.jsonl (serve-batch's input) and references.json (id -> reference answers, for scoring there)."""
    from toolkit import data

    examples, _ = data.load_examples([source], cache_dir=data.default_cache_dir(), seed=42, limit=None,
                                     default_split="validation")
    data.write_jsonl(examples, staged / "questions.jsonl")
    (staged / "references.json").write_text(json.dumps(data.references(examples)))
    (staged / "about.json").write_text(json.dumps({"source": source, "questions": len(examples)}))


def parse_adapter(value: str) -> tuple[str, Path, list[str]]:
    """LABEL=DIR:precisions -> (label, adapter directory, ["fp32", "fp16"])."""
    label, sep, rest = value.partition("=")
    directory, _, precisions = rest.rpartition(":") if ":" in rest else (rest, "", "fp32,fp16")
    chosen = [p for p in precisions.split(",") if p]
    if not sep or not label or not directory or set(chosen) - {*ONNX_FILES, TORCH} or not chosen:
        raise PayloadError(f"--adapter takes LABEL=DIR:PRECISIONS (precisions from {', '.join(ONNX_FILES)}, {TORCH}), "
                           f"not '{value}'")
    if not Path(directory).is_dir():
        raise PayloadError(f"--adapter {label}: no adapter directory {directory}")
    return label, Path(directory), chosen


def export_for_gpu(label: str, adapter: Path, precisions: list[str], source: str, work: Path, staged: Path) -> Path:
    """The adapter merged and exported in fp32 (gated on 50 questions), its fp16 file built from it; the
    export's small files, the chosen ONNX files and (torch) the merged model staged under staged/models/label.
    Returns the fp32 export's directory."""
    from toolkit.exporting.variants import build_files

    exported = work / label
    qa("export", "--merge", "--adapter", str(adapter), "--variants", "fp32", "--eval-file", source,
       "--eval-samples", "50", "--output-dir", str(exported))
    onnx_dir = exported / "onnx"
    if "fp16" in precisions:  # export's own fp16 build: ONNX Runtime's optimizer converts offline, no GPU needed
        build_files(["fp16"], onnx_dir, optimization_level=2, calibration=[],
                    log=lambda message: print(f"{label}: {message}", file=sys.stderr))
    model_files = {f.name for f in onnx_dir.iterdir() if f.suffix in (".onnx", ".xml", ".bin", ".onnx_data")}
    target = staged / "models" / label
    target.mkdir(parents=True)
    for f in onnx_dir.iterdir():
        if f.is_file() and (f.name not in model_files or f.name in {ONNX_FILES.get(p) for p in precisions}):
            shutil.copy2(f, target / f.name)
    if TORCH in precisions:
        shutil.copytree(exported / "merged", target / "merged")
    return onnx_dir


def build(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise PayloadError(f"{out} is not empty; build into a new directory")
    adapters = [parse_adapter(a) for a in args.adapter]
    piece_mib = args.piece_mb or default_piece_mib()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".build-") as tmp:
        work, staged = Path(tmp) / "work", Path(tmp) / "payload"
        (staged / "answers").mkdir(parents=True)
        (staged / "wheels").mkdir()
        for wheel in args.wheel:
            shutil.copy2(wheel, staged / "wheels")
        if args.wheels == "pinned":
            print(f"downloading {ORT_GPU} and {len(IMAGE_DIFFERS)} pinned packages for CPython 3.12", file=sys.stderr)
            download_wheels([ORT_GPU, *pinned(IMAGE_DIFFERS)], staged / "wheels")
        source = f"{args.source}&samples={args.questions}" if "?" in args.source else \
            f"{args.source}?samples={args.questions}"
        write_questions(source, staged)
        for label, adapter, precisions in adapters:
            print(f"{label}: merge, export, fp32 answers on this CPU", file=sys.stderr)
            fp32_dir = export_for_gpu(label, adapter, precisions, args.source, work, staged)
            qa("serve-batch", str(staged / "questions.jsonl"), "--model", str(fp32_dir), "--variant", "fp32",
               "-o", str(staged / "answers" / f"{label}.cpu-fp32.jsonl"))
        archive = Path(tmp) / "payload.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(staged, arcname="payload")
        manifest = {"archive_sha256": sha256_of(archive), "archive_bytes": archive.stat().st_size,
                    "piece_mib": piece_mib, "source": source, "questions": args.questions,
                    "adapters": {label: {"adapter": str(a), "precisions": p} for label, a, p in adapters},
                    "wheels": sorted(w.name for w in (staged / "wheels").iterdir()),
                    "pieces": split(archive, out, piece_mib * MIB)}
    (out / "payload.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def split(archive: Path, out: Path, piece_bytes: int) -> list[dict]:
    pieces = []
    with open(archive, "rb") as f:
        for n in range(10_000):
            block = f.read(piece_bytes)
            if not block:
                break
            piece = out / f"payload.tar.{n:03d}"
            piece.write_bytes(block)
            pieces.append({"name": piece.name, "bytes": len(block), "sha256": hashlib.sha256(block).hexdigest()})
    return pieces


def carry_plan(out: Path, manifest: dict) -> str:
    pieces = manifest["pieces"]
    lines = [f"{len(pieces)} pieces of at most {manifest['piece_mib']} MiB ({manifest['archive_bytes'] / MIB:.0f} MiB "
             f"in all). Device calls, back to back (a warm machine keeps what earlier calls carried):"]
    for i, piece in enumerate(pieces[:-1]):
        lines.append(f"  {i + 1}. carry ['{out}/{piece['name']}'], command: ls -l {out}")
    lines.append(f"  {len(pieces)}. carry ['{out}/{pieces[-1]['name']}', '{out}/payload.json'], command: "
                 f"python3 bench/gpu_payload.py join {out} --target /tmp/gpu && PYTHONPATH=/tmp/gpu/site:$PWD "
                 f"python3 bench/gpu_check.py --payload /tmp/gpu/payload --out $OUT/gpu-check")
    return "\n".join(lines)


# --- join (GPU machine: standard library only) ------------------------------------------------------------------


def check_pieces(directory: Path, manifest: dict) -> None:
    wrong = []
    for piece in manifest["pieces"]:
        path = directory / piece["name"]
        if not path.exists():
            wrong.append(f"{piece['name']} is missing")
        elif path.stat().st_size != piece["bytes"]:
            wrong.append(f"{piece['name']} has {path.stat().st_size} bytes, not {piece['bytes']}")
        elif sha256_of(path) != piece["sha256"]:
            wrong.append(f"{piece['name']} is corrupt (sha256 {sha256_of(path)[:12]}..., expected "
                         f"{piece['sha256'][:12]}...)")
    if wrong:
        raise PayloadError("; ".join(wrong) + f": carry {'it' if len(wrong) == 1 else 'them'} again")


def join(directory: Path, target: Path) -> Path:
    """Checks, joins and unpacks the pieces into target/payload, installs its wheels into target/site."""
    manifest_path = directory / "payload.json"
    if not manifest_path.exists():
        raise PayloadError(f"{manifest_path} is missing: carry it with the last piece")
    manifest = json.loads(manifest_path.read_text())
    check_pieces(directory, manifest)
    target.mkdir(parents=True, exist_ok=True)
    archive = target / "payload.tar"
    digest = hashlib.sha256()
    with open(archive, "wb") as joined:
        for piece in manifest["pieces"]:
            block = (directory / piece["name"]).read_bytes()
            digest.update(block)
            joined.write(block)
    if digest.hexdigest() != manifest["archive_sha256"]:
        raise PayloadError(f"the joined archive's sha256 is not payload.json's ({manifest['archive_sha256'][:12]}...)")
    shutil.rmtree(target / "payload", ignore_errors=True)
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    archive.unlink()
    wheels = sorted((target / "payload" / "wheels").glob("*.whl"))
    if wheels:
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                               "--no-compile", "--upgrade", "--target", str(target / "site"), *map(str, wheels)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise PayloadError(f"pip install --target {target / 'site'} failed: {done.stderr.strip()[-1500:]}")
    print(f"joined {len(manifest['pieces'])} pieces (sha256 {manifest['archive_sha256'][:12]}...) into "
          f"{target / 'payload'}; {len(wheels)} wheels in {target / 'site'}: in the checkout, "
          f"export PYTHONPATH={target / 'site'}:$PWD")
    return target / "payload"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    b = commands.add_parser("build", help="on a CPU machine: gather, export, answer, split")
    b.add_argument("--out", default=".gpu-payload", help="a new or empty directory (git-ignored in the checkout)")
    b.add_argument("--adapter", action="append", help=f"LABEL=DIR:PRECISIONS, repeatable (default: {' '.join(DEFAULT_ADAPTERS)})")
    b.add_argument("--source", default="squad2-slice?split=heldout", help="where the questions come from")
    b.add_argument("--questions", type=int, default=1000)
    b.add_argument("--wheels", choices=("pinned", "none"), default="pinned",
                   help=f"pinned: download {ORT_GPU} and the pinned packages the image lacks; none: only --wheel files")
    b.add_argument("--wheel", action="append", default=[], help="a local wheel file to add, repeatable")
    b.add_argument("--piece-mb", type=int, help="piece size in MiB (default: what fits one device call)")
    j = commands.add_parser("join", help="on the GPU machine: verify, join, unpack, install")
    j.add_argument("pieces", help="the directory holding payload.json and the pieces")
    j.add_argument("--target", default="/tmp/gpu")
    args = parser.parse_args()
    try:
        if args.command == "build":
            args.adapter = args.adapter or list(DEFAULT_ADAPTERS)
            manifest = build(args)
            print(carry_plan(Path(args.out), manifest))
        else:
            join(Path(args.pieces), Path(args.target))
    except PayloadError as e:
        print(f"gpu_payload: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
