"""Files the toolkit fetches once and keeps: where they live, and the sha256 every one of them is checked by."""

import hashlib
from pathlib import Path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "qa-toolkit"
