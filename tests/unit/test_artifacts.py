"""recforge.artifacts: atomic writes (swaps with a reader and racing writers, stale staging, modes),
checksums, model directories (meta.json) and JSON conversion."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from recforge import artifacts
from recforge.artifacts import (
    atomic_dir,
    atomic_path,
    checksums,
    clean_stale_staging,
    clean_stale_staging_around,
    load_model_dir,
    plain,
    read_meta,
    staging_owner,
    write_json,
    write_meta,
    write_npy,
)
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


# ---- atomic writes: swaps, racing writers, stale staging, modes ------------------------------------------

READER = """
import sys, time
from pathlib import Path
target, stop = Path(sys.argv[1]), Path(sys.argv[2])
reads = missing = torn = 0
while not stop.exists():
    try:
        data = (target / "part.bin").read_bytes()
        torn += len(data) != 4096 or len(set(data)) != 1
    except FileNotFoundError:
        missing += 1
    reads += 1
print(reads, missing, torn)
"""

WRITER = """
import sys
from pathlib import Path
from recforge.artifacts import atomic_dir
target, tag, count = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
for i in range(count):
    with atomic_dir(target) as staging:
        (staging / "part.bin").write_bytes(bytes([tag]) * 4096)
        (staging / "other.bin").write_bytes(bytes([i % 256]) * 100)
"""


def _debris(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name.startswith("."))


def _write_generation(target: Path, value: int) -> None:
    with atomic_dir(target) as staging:
        (staging / "part.bin").write_bytes(bytes([value % 256]) * 4096)


def test_a_reader_never_finds_the_directory_missing_during_swaps(tmp_path):
    target = tmp_path / "out"
    _write_generation(target, 0)
    stop = tmp_path / "stop"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(target), str(stop)], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)  # the reader is reading
        for i in range(1, 501):
            _write_generation(target, i)
    finally:
        stop.touch()
        out, _ = reader.communicate(timeout=60)
    reads, missing, torn = map(int, out.split())
    assert reads > 500 and missing == 0 and torn == 0, (reads, missing, torn)
    assert _debris(tmp_path) == [] and (target / "part.bin").read_bytes() == bytes([500 % 256]) * 4096


def test_racing_writers_neither_fail_nor_leave_debris(tmp_path):
    target = tmp_path / "out"
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(tag), "150"], stderr=subprocess.PIPE)
        for tag in (1, 2)
    ]
    errors = [w.communicate(timeout=120)[1] for w in writers]
    assert [w.returncode for w in writers] == [0, 0], errors
    assert sorted(p.name for p in target.iterdir()) == ["other.bin", "part.bin"]
    assert (target / "part.bin").read_bytes() in (bytes([1]) * 4096, bytes([2]) * 4096)
    assert _debris(tmp_path) == []


def test_without_renameat2_the_two_rename_fallback_still_replaces(tmp_path, monkeypatch):
    monkeypatch.setattr(artifacts, "_renameat2", None)
    assert not artifacts.rename2(tmp_path / "a", tmp_path / "b", artifacts.RENAME_EXCHANGE)
    target = tmp_path / "out"
    for i in range(3):
        _write_generation(target, i)
    assert (target / "part.bin").read_bytes() == bytes([2]) * 4096 and _debris(tmp_path) == []


def test_a_failed_write_keeps_the_previous_output(tmp_path):
    target = tmp_path / "out"
    _write_generation(target, 7)
    with pytest.raises(RuntimeError), atomic_dir(target) as staging:
        (staging / "part.bin").write_bytes(b"half")
        raise RuntimeError("killed")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "file.json") as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert (target / "part.bin").read_bytes() == bytes([7]) * 4096
    assert not (tmp_path / "file.json").exists() and _debris(tmp_path) == []


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_staging_of_dead_processes_is_removed_live_staging_kept(tmp_path):
    dead = _dead_pid()
    stale_dir = tmp_path / f".out.{dead}-abc123_x.tmp"
    (stale_dir / "sub").mkdir(parents=True)
    (stale_dir / "sub" / "x.parquet").write_bytes(b"half")
    stale_file = tmp_path / f".file.json.{dead}-zzzzzzzz.tmp"
    stale_file.write_text("half")
    stale_old = tmp_path / f".out.old-{dead}"  # what the two-rename swap used to leave
    stale_old.mkdir()
    live = tmp_path / f".out.{os.getpid()}-livelive.tmp"  # another thread of this process is writing
    live.mkdir()
    reused = tmp_path / f".out.{os.getpid()}-reusedpi.tmp"  # same pid, but older than this process
    reused.mkdir()
    os.utime(reused, (1_000_000, 1_000_000))
    unrelated = [tmp_path / "out.tmp", tmp_path / ".hidden", tmp_path / ".x.notapid-abc.tmp"]
    for path in unrelated:
        path.write_text("keep")
    legacy_young, legacy_old = tmp_path / ".out.abcdefgh.tmp", tmp_path / ".out.ijklmnop.tmp"
    legacy_young.mkdir()
    legacy_old.mkdir()
    old = time.time() - artifacts.LEGACY_STAGING_AGE_S - 60
    os.utime(legacy_old, (old, old))

    assert clean_stale_staging(tmp_path, name="file.json") == [stale_file]
    removed = clean_stale_staging(tmp_path)
    assert sorted(removed) == sorted([stale_dir, stale_old, reused, legacy_old])
    assert live.exists() and legacy_young.exists() and all(p.exists() for p in unrelated)
    assert staging_owner(stale_dir.name) == dead and staging_owner("out") is None


def test_writing_an_output_cleans_its_stale_staging(tmp_path):
    dead = _dead_pid()
    (tmp_path / "models").mkdir()
    stale = [tmp_path / "models" / f".pop.{dead}-aaaaaaaa.tmp", tmp_path / f".f.json.{dead}-bbbbbbbb.tmp"]
    stale[0].mkdir()
    stale[1].write_text("{")
    other = tmp_path / "models" / f".other.{dead}-cccccccc.tmp"
    other.mkdir()
    _write_generation(tmp_path / "models" / "pop", 1)
    write_json({"a": 1}, tmp_path / "f.json")
    assert not any(p.exists() for p in stale) and other.exists()  # only the written output's staging
    assert clean_stale_staging_around([tmp_path / "models" / "pop"]) == [other]


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_outputs_follow_the_umask(tmp_path, mask):
    previous = os.umask(mask)
    try:
        assert artifacts.current_umask() == mask
        write_json({"a": 1}, tmp_path / "f.json")
        _write_generation(tmp_path / "d", 1)
        write_npy(np.zeros(2), tmp_path / "d" / "x.npy")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "f.json").stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o777 & ~mask
    assert stat.S_IMODE((tmp_path / "d" / "x.npy").stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE((tmp_path / "d" / "part.bin").stat().st_mode) == 0o666 & ~mask
