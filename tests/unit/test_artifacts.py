"""recforge.artifacts: checksums, model directories (meta.json) and JSON conversion."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recforge.artifacts import checksums, load_model_dir, plain, read_meta, write_json, write_meta
from recforge.errors import RecforgeError


class Plugin:
    def __init__(self, directory: Path, context: object = None) -> None:
        self.directory, self.context = directory, context

    @classmethod
    def load(cls, directory: Path, **kwargs: object) -> Plugin:
        return cls(directory, kwargs.get("context"))


class Group:
    def get(self, name: str) -> type[Plugin]:
        assert name == "toy"
        return Plugin


def model_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "model"
    (directory / "sub").mkdir(parents=True)
    (directory / "weights.npy").write_bytes(b"abc")
    (directory / "sub" / "meta.json").write_text("{}")  # only the top-level meta.json is skipped
    write_meta(directory, {"plugin": "toy"})
    return directory


def test_checksums_skip_only_the_top_level_record(tmp_path):
    directory = model_dir(tmp_path)
    assert sorted(checksums(directory)) == ["sub/meta.json", "weights.npy"]
    assert "meta.json" in checksums(directory, skip="manifest.json")


def test_meta_round_trip_and_plugin_load(tmp_path):
    directory = model_dir(tmp_path)
    meta = read_meta(directory)
    assert meta["plugin"] == "toy" and set(meta["checksums"]) == {"sub/meta.json", "weights.npy"}
    model, loaded = load_model_dir(directory, Group(), context="ctx")
    assert model.context == "ctx" and loaded == meta
    model, _ = load_model_dir(directory, Group())
    assert model.context is None


def test_tampered_or_missing_model_is_refused(tmp_path):
    directory = model_dir(tmp_path)
    (directory / "weights.npy").write_bytes(b"abd")
    with pytest.raises(RecforgeError, match="checksum mismatch"):
        load_model_dir(directory, Group())
    assert read_meta(directory, verify=False)["plugin"] == "toy"
    with pytest.raises(RecforgeError, match="nothing here; run it"):
        read_meta(tmp_path / "absent", missing="nothing here; run it")


def test_plain_and_json(tmp_path):
    assert plain(np.int64(3)) == 3 and type(plain(np.float32(0.5))) is float
    assert plain(np.arange(2)) == [0, 1] and plain(Path("a/b")) == "a/b"
    marker = object()
    assert plain(marker) is marker
    write_json({"n": np.int32(2), "v": np.array([1.5])}, tmp_path / "x.json")
    assert json.loads((tmp_path / "x.json").read_text()) == {"n": 2, "v": [1.5]}
    with pytest.raises(TypeError, match="not JSON serialisable"):
        write_json({"x": marker}, tmp_path / "y.json")
