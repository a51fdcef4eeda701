"""Artifacts on disk: atomic writes, JSON, checksums and model directories.

A stage killed mid-way leaves either the previous output or the new one, never
a half-written file, and a reader never finds the output missing:

- a file is written to a staging file beside it and renamed over it;
- a directory is written to a staging directory beside it and swapped in with
  one exchange rename (Linux ``renameat2(RENAME_EXCHANGE)``: the path always
  names a complete directory, the old one or the new one); the previous
  output, now under the staging name, is then removed. Where the kernel or the
  file system has no exchange rename, two plain renames are the fallback (a
  short window where the path is missing).

Staging is named ``.<name>.<pid>-<random>.tmp``: staging left by a process that
is gone (``kill -9``, a crash, a power cut) is removed the next time the same
output is written, and by :func:`clean_stale_staging` at the start of each
stage. Outputs get the mode the umask gives a new file or directory (not the
0600/0700 of ``mkstemp``/``mkdtemp``).

A model directory holds the plugin's own files plus ``meta.json`` (at least
``plugin`` and ``checksums``, the sha256 of every other file):
:func:`write_meta` writes it, :func:`read_meta` reads and verifies it and
:func:`load_model_dir` loads the plugin through its registry.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from recforge.errors import RecforgeError

META = "meta.json"

# ---- staging names, stale staging ------------------------------------------------------------------------

# .<name>.<pid>-<random>.tmp (mkstemp/mkdtemp's random part is [a-z0-9_])
_STAGING = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[a-z0-9_]+\.tmp$")
# left by older versions: .<name>.<random>.tmp (no pid) and .<name>.old-<pid>
_LEGACY_STAGING = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")
_LEGACY_OLD = re.compile(r"^\.(?P<name>.+)\.old-(?P<pid>\d+)$")
# staging without a pid is only removed when nothing has touched it for this long
LEGACY_STAGING_AGE_S = 3600.0


def _staging_prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}-"


def staging_owner(name: str) -> int | None:
    """The pid recorded in a staging name (None when ``name`` is not staging with a pid)."""
    match = _STAGING.match(name) or _LEGACY_OLD.match(name)
    return int(match.group("pid")) if match else None


def _boot_time() -> float | None:
    try:
        with open("/proc/stat") as handle:
            for line in handle:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), where /proc tells."""
    boot = _boot_time()
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    if boot is None:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def _owner_alive(pid: int, modified: float) -> bool:
    """Whether the process that made staging ``pid`` (last modified at ``modified``) may still use it.

    A pid that is alive but started after the staging was last modified is
    another process that reused the pid: the staging's owner is gone.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    started = _process_start(pid)
    return started is None or started <= modified + 2.0


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def clean_stale_staging(directory: str | Path, *, name: str | None = None) -> list[Path]:
    """Remove staging in ``directory`` (only for output ``name`` when given) whose process is gone.

    Staging whose pid is alive is left alone (another writer's, or another
    thread's of this process). Returns what was removed.
    """
    directory = Path(directory)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    now = time.time()
    for entry in entries:
        match = _STAGING.match(entry.name) or _LEGACY_OLD.match(entry.name)
        legacy = None if match else _LEGACY_STAGING.match(entry.name)
        found = match or legacy
        if found is None or (name is not None and found.group("name") != name):
            continue
        try:
            modified = entry.stat(follow_symlinks=False).st_mtime
        except FileNotFoundError:
            continue
        if match is not None and _owner_alive(int(match.group("pid")), modified):
            continue
        if legacy is not None and now - modified < LEGACY_STAGING_AGE_S:
            continue
        _remove(Path(entry.path))
        removed.append(Path(entry.path))
    return removed


def clean_stale_staging_around(paths: Iterable[str | Path]) -> list[Path]:
    """:func:`clean_stale_staging` beside each of ``paths`` and inside those that are directories."""
    directories = set()
    for path in map(Path, paths):
        directories.add(path.parent)
        if path.is_dir():
            directories.add(path)
    removed: list[Path] = []
    for directory in sorted(directories):
        removed += clean_stale_staging(directory)
    return removed


# ---- modes -----------------------------------------------------------------------------------------------

_umask_guard = threading.Lock()


def current_umask() -> int:
    """The process umask (read from /proc where it can be; os.umask swaps it otherwise)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _umask_guard:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _give_umask_mode(path: Path) -> None:
    """chmod a staging file to 0666 & ~umask, a staging directory to 0777 & ~umask (what open/mkdir give)."""
    base = 0o777 if path.is_dir() else 0o666
    with contextlib.suppress(FileNotFoundError):
        os.chmod(path, base & ~current_umask())


# ---- renames ---------------------------------------------------------------------------------------------

_AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def _load_renameat2() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_renameat2 = _load_renameat2()


def rename2(source: str | Path, dest: str | Path, flags: int) -> bool:
    """``renameat2(source, dest, flags)``: True when done, False where the system or file system lacks it.

    Raises OSError (FileExistsError, FileNotFoundError, ...) as rename does.
    """
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(dest), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(source), None, str(dest))


def swap_in(staging: Path, target: Path) -> Path:
    """Put directory ``staging`` at ``target`` with no moment where ``target`` is missing.

    Returns the path that now holds what ``target`` held before (it may hold
    nothing): the caller removes it. Safe against another writer swapping the
    same target at the same time (the last swap wins, nothing is left behind).
    """
    for _ in range(1000):
        try:
            done = rename2(staging, target, RENAME_NOREPLACE)  # there was no target
        except FileExistsError:
            try:
                done = rename2(staging, target, RENAME_EXCHANGE)
            except FileNotFoundError:
                continue  # removed meanwhile: the plain rename again
        return staging if done else _swap_in_two_renames(staging, target)
    raise RecforgeError(f"{target}: could not replace it (other writers kept replacing it)")


def _swap_in_two_renames(staging: Path, target: Path) -> Path:
    """The fallback without renameat2: move ``target`` aside to a staging name, then rename
    ``staging`` in (``target`` is missing in between); returns the aside path."""
    for _ in range(1000):
        aside = target.with_name(f"{_staging_prefix(target)}{secrets.token_hex(4)}.tmp")
        with contextlib.suppress(FileNotFoundError):
            os.rename(target, aside)
        try:
            os.rename(staging, target)
        except OSError as exc:  # another writer put its output there in between
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            _remove(aside)
            continue
        return aside
    raise RecforgeError(f"{target}: could not replace it (other writers kept replacing it)")


# ---- atomic files and directories ------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary file path beside ``target``; rename it over ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(target.parent, name=target.name)
    fd, tmp = tempfile.mkstemp(prefix=_staging_prefix(target), suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _give_umask_mode(tmp_path)
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield an empty staging directory; swap it in place of ``target`` on success (one exchange rename)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(target.parent, name=target.name)
    staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(target), suffix=".tmp", dir=target.parent))
    previous = None
    try:
        yield staging
        _give_umask_mode(staging)
        previous = swap_in(staging, target)
    finally:
        _remove(staging)
        if previous is not None:
            _remove(previous)


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


def check_relative_key(name: Any, *, where: str | Path) -> None:
    """A recorded file name must be a plain relative path inside its directory: not absolute, no
    ``..``, ``.`` or empty parts (what :func:`checksums` writes)."""
    path = PurePosixPath(name) if isinstance(name, str) else None
    if (
        path is None
        or not path.parts
        or path.is_absolute()
        or ".." in path.parts
        or path.as_posix() != name
        or "\\" in name
        or "\0" in name
    ):
        raise RecforgeError(f"{where}: {name!r} is not a relative path inside the directory")


def verify_checksums(directory: str | Path, expected: dict[str, str]) -> None:
    """Every file named in ``expected`` exists under ``directory`` with that sha256 (names checked first)."""
    if not isinstance(expected, dict):
        raise RecforgeError(f"{directory}: checksums are not a mapping of file names to sha256")
    for name in expected:
        check_relative_key(name, where=directory)
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
