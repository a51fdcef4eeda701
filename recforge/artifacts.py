"""Artifacts on disk: atomic writes, JSON, checksums and model directories.

A stage killed mid-way leaves either the previous output or the new one, never
a half-written file. Directories are staged the same way and swapped in.

A model directory holds the plugin's own files plus ``meta.json`` (at least
``plugin`` and ``checksums``, the sha256 of every other file):
:func:`write_meta` writes it, :func:`read_meta` reads and verifies it and
:func:`load_model_dir` loads the plugin through its registry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recforge.errors import RecforgeError

META = "meta.json"


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary file path beside ``target``; rename it over ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield an empty staging directory; swap it in place of ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield staging
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(staging, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def write_parquet(frame: pd.DataFrame, target: str | Path) -> None:
    with atomic_path(target) as tmp:
        frame.to_parquet(tmp, index=False)


def write_json(data: Any, target: str | Path) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_text(text: str, target: str | Path) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_npy(array: np.ndarray, target: str | Path) -> None:
    with atomic_path(target) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checksums(directory: str | Path, *, skip: str = META) -> dict[str, str]:
    """sha256 of every file under ``directory`` (relative paths) but the top-level ``skip`` file.

    ``skip`` is the file that records the checksums: a model's meta.json, a package's manifest.json.
    """
    directory = Path(directory)
    return {
        str(path.relative_to(directory)): sha256_file(path)
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.relative_to(directory) != Path(skip)
    }


def verify_checksums(directory: str | Path, expected: dict[str, str]) -> None:
    for name, digest in expected.items():
        path = Path(directory) / name
        if not path.exists() or sha256_file(path) != digest:
            raise RecforgeError(f"{path}: checksum mismatch or missing file; retrain or repackage")


def write_meta(directory: str | Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Write ``directory``/meta.json: ``meta`` plus the checksums of every file already in ``directory``."""
    meta = {**meta, "checksums": checksums(directory)}
    (Path(directory) / META).write_text(json.dumps(meta, indent=2, default=str))
    return meta


def read_meta(directory: str | Path, *, missing: str = "no trained model", verify: bool = True) -> dict[str, Any]:
    """``directory``/meta.json, its checksums verified; RecforgeError ``"<directory>: <missing>"`` when absent."""
    path = Path(directory) / META
    if not path.exists():
        raise RecforgeError(f"{directory}: {missing}")
    meta = read_json(path)
    if verify:
        verify_checksums(directory, meta["checksums"])
    return meta


def load_model_dir(
    directory: str | Path,
    registry_group: Any,
    context: Any = None,
    *,
    meta: dict[str, Any] | None = None,
    missing: str = "no trained model",
    verify: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """(the plugin instance, its meta) for a model directory.

    Reads and verifies meta.json (unless ``meta`` was read already) and calls
    ``registry_group.get(meta["plugin"]).load(directory)``, with ``context=``
    when given (recommenders take a FitContext, re-rankers do not).
    """
    directory = Path(directory)
    if meta is None:
        meta = read_meta(directory, missing=missing, verify=verify)
    cls = registry_group.get(meta["plugin"])
    model = cls.load(directory) if context is None else cls.load(directory, context=context)
    return model, meta


def plain(value: Any) -> Any:
    """``value`` as a plain Python/JSON value: numpy scalars and arrays, Paths; anything else unchanged."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return value


def _json_default(value: Any) -> Any:
    converted = plain(value)
    if converted is value:
        raise TypeError(f"not JSON serialisable: {type(value).__name__}")
    return converted
