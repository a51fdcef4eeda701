"""Prefect's cache for the stages: keys from the stage table, stamps beside the outputs.

- ``stage_key``: a hash of everything a stage (or one variant) reads, from the
  stage table (``recforge.stages.STAGES``): the values of its params keys, the
  contents of its input paths and of its code (the same deps dvc.yaml lists).
- ``write_stamp`` / ``stamp_valid``: a cached result is used only while the
  outputs on disk are the ones written for that key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from fnmatch import fnmatch
from pathlib import Path

from recforge.artifacts import read_json, sha256_file, write_json
from recforge.params import Params
from recforge.stages import IGNORED_INPUTS, get_stage, select


def _ignored(relative: str) -> bool:
    name = relative.rsplit("/", 1)[-1]
    return any(
        fnmatch(relative, pattern) or fnmatch(f"x/{relative}", pattern) or fnmatch(name, pattern)
        for pattern in IGNORED_INPUTS
    )


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(
            f
            for f in path.rglob("*")
            if f.is_file()
            and not f.name.startswith(".")
            and "__pycache__" not in f.parts
            and not _ignored(f.relative_to(path).as_posix())
        )
    return []


def hash_paths(paths: Iterable[Path]) -> str:
    """sha256 over the contents (and relative names) of every file under ``paths``."""
    digest = hashlib.sha256()
    for root in paths:
        root = Path(root)
        digest.update(f"\x00{root.name}".encode())
        for file in _files(root):
            digest.update(
                f"\x01{file.relative_to(root) if file != root else file.name}\x02{sha256_file(file)}".encode()
            )
    return digest.hexdigest()


def _plugin_source(params: Params, model: str) -> str:
    """The source of the recommender plugin behind ``model`` (a third-party one lives outside plugins/)."""
    import inspect

    from recforge import registry

    try:
        return inspect.getsource(inspect.getmodule(registry.recommenders.get(params.plugin_of(model))))
    except Exception:  # a broken plugin fails loudly in the stage itself, not here
        return f"<unknown plugin {params.plugin_of(model)}>"


def stage_key(params: Params, stage: str, variant: str | None = None) -> str:
    """A hash of everything ``stage`` (or one ``variant``) reads: params keys, input files and code."""
    spec = get_stage(stage)
    keys = spec.params_keys(params, variant)
    payload = {
        "stage": stage,
        "variant": variant,
        "params": {key: select(params, key) for key in keys},
        "inputs": hash_paths(spec.data_deps(params, variant)),
        "code": hash_paths(spec.code_deps()),
        "plugin": _plugin_source(params, variant) if stage == "train" and variant else "",
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def outputs_digest(paths: Iterable[Path]) -> str:
    """A cheap fingerprint (names, sizes, mtimes) of the outputs; a missing output changes it."""
    digest = hashlib.sha256()
    for root in paths:
        files = _files(Path(root))
        digest.update(f"{root}\x00{len(files)}\n".encode())
        for file in files:
            stat = file.stat()
            digest.update(f"{file}\x00{stat.st_size}\x00{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _stamp_path(params: Params, stage: str, variant: str | None) -> Path:
    return Path(params.paths.cache_dir) / "stages" / (f"{stage}-{variant}.json" if variant else f"{stage}.json")


def write_stamp(params: Params, stage: str, key: str, variant: str | None = None) -> None:
    """Record that the outputs now on disk were written for ``key``."""
    outs = get_stage(stage).out_paths(params, variant)
    write_json({"key": key, "outputs": outputs_digest(outs)}, _stamp_path(params, stage, variant))


def stamp_valid(params: Params, stage: str, key: str, variant: str | None = None) -> bool:
    """True when the outputs on disk are exactly those written for ``key`` (so skipping is safe)."""
    path = _stamp_path(params, stage, variant)
    if not path.exists():
        return False
    try:
        stamp = read_json(path)
    except (OSError, ValueError):
        return False
    outs = get_stage(stage).out_paths(params, variant)
    return stamp.get("key") == key and stamp.get("outputs") == outputs_digest(outs)
