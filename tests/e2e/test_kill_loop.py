"""kill -9 at random moments of real stages, many times, then a rerun: the outputs equal a clean run's, no debris.

The driver (this file run as a script) imports recforge once, then forks one
child per attempt that runs the CLI in-process exactly as `recforge stage`
does (``split``, ``encode``, ``train popularity`` on a tiny synthetic
workspace, under the workspace lock) and SIGKILLs it after a random delay
within a clean run's duration. After every kill each output that exists must be
complete (readable tables, model directories whose checksums verify); after
the loop one rerun must end cleanly, every output must equal that of a clean
run in another workspace (sha256 of every file; meta.json without its timing)
and nothing may be left that a stage staged (``*.tmp``, ``.old-*``).

    python -m tests.e2e.test_kill_loop ROOT [KILLS] [SEED]   prints a JSON summary
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import PROJECT_ROOT, TINY, tmp_overrides

KILLS = 40
STAGES = (["split"], ["encode"], ["train", "popularity"])
# fast and deterministic: no data gate (ingest runs once, unkilled), one cheap encoder, one model
EXTRA = [*TINY, "validate.enabled=false", "encode.encoders=[tfidf]", "recommenders={popularity: {}}"]
OUTPUTS = ("data/split", "artifacts", "metrics")


def _argv(root: Path, command: list[str]) -> list[str]:
    flags = []
    for override in tmp_overrides(root) + EXTRA:
        flags += ["-S", override]
    return ["stage", *command, *flags]


def _fork_stages(root: Path, commands: list[list[str]], log: Path) -> int:
    """Fork a child that runs ``commands`` through the CLI in ``root``; its pid."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.chdir(root)
        from recforge.cli import app

        for command in commands:
            app(_argv(root, command), standalone_mode=False)
        code = 0
    except BaseException:  # noqa: BLE001 - the child reports through its exit code and log
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def _wait(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _files(root: Path) -> dict[str, str]:
    """sha256 of every output file (meta.json without fit_seconds: a timing, not an output)."""
    from recforge.artifacts import sha256_file

    digests = {}
    for top in OUTPUTS:
        for path in sorted((root / top).rglob("*")):
            if not path.is_file():
                continue
            name = str(path.relative_to(root))
            if path.name == "meta.json":
                meta = json.loads(path.read_text())
                meta.pop("fit_seconds", None)
                digests[name] = json.dumps(meta, sort_keys=True)
            else:
                digests[name] = sha256_file(path)
    return digests


def _debris(root: Path) -> list[str]:
    return sorted(
        str(path.relative_to(root)) for path in root.rglob("*") if path.name.endswith(".tmp") or ".old-" in path.name
    )


WATCHED = ("data", "artifacts", "artifacts/models", "artifacts/lists/popularity", "artifacts/embeddings")


def _await_staging(root: Path, pid: int, timeout: float = 10.0) -> int | None:
    """Return as soon as staging appears beside an output: None, or the child's exit code if it ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ended, status = os.waitpid(pid, os.WNOHANG)
        if ended:
            return os.waitstatus_to_exitcode(status)
        for directory in WATCHED:
            with contextlib.suppress(FileNotFoundError):
                if any(entry.name.endswith(".tmp") for entry in os.scandir(root / directory)):
                    return None
        time.sleep(0.0005)
    return None


def _complete(root: Path) -> list[str]:
    """What is wrong with the outputs in place (each may be absent, but not half-written)."""
    import numpy as np
    import pandas as pd

    from recforge.artifacts import read_meta

    problems = []
    split = root / "data/split"
    if split.exists():
        names = sorted(p.name for p in split.iterdir())
        if names != ["test.parquet", "train.parquet", "val.parquet"]:
            problems.append(f"split holds {names}")
        for path in split.glob("*.parquet"):
            pd.read_parquet(path)
    for part in ("val", "full"):
        directory = root / "artifacts/models/popularity" / part
        if (root / "artifacts/models/popularity").exists():
            try:
                read_meta(directory)
            except Exception as exc:  # noqa: BLE001
                problems.append(f"{directory}: {exc}")
    for path in (root / "artifacts").rglob("*"):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue  # staging
        if path.suffix == ".parquet":
            pd.read_parquet(path)
        elif path.suffix == ".npy":
            np.load(path, allow_pickle=False)
    return problems


def drive(root: Path, kills: int = KILLS, seed: int = 0) -> dict:
    # imported once, before the children are forked, so that a kill lands in a stage rather than in an import
    import importlib

    for module in ("recforge.cli", "recforge.stages.encode", "recforge.stages.split", "recforge.stages.train"):
        importlib.import_module(module)
    for module in ("sklearn.feature_extraction.text", "torch", "recforge_plugins.recommenders"):
        with contextlib.suppress(ImportError):
            importlib.import_module(module)

    rng = random.Random(seed)
    killed, clean = root / "killed", root / "clean"
    killed.mkdir(parents=True)
    clean.mkdir(parents=True)
    log = root / "children.log"
    started = time.monotonic()
    assert _wait(_fork_stages(killed, [["ingest"]], log)) == 0, log.read_text()[-3000:]
    shutil.copytree(killed / "data/canonical", clean / "data/canonical", dirs_exist_ok=True)

    # the reference: a clean run in its own workspace; a second one (caches warm, as in the loop) is timed
    assert _wait(_fork_stages(clean, list(STAGES), log)) == 0, log.read_text()[-3000:]
    t0 = time.monotonic()
    assert _wait(_fork_stages(clean, list(STAGES), log)) == 0, log.read_text()[-3000:]
    clean_s = time.monotonic() - t0

    done = finished = staged_after_kill = 0
    bound = clean_s
    problems: list[str] = []
    while done < kills and done + finished < 3 * kills:
        pid = _fork_stages(killed, list(STAGES), log)
        time.sleep(rng.uniform(0.0, bound))
        status = None
        if (done + finished) % 2:
            status = _await_staging(killed, pid)  # every other kill lands while a stage is writing
        if status is None:
            os.kill(pid, signal.SIGKILL)
            status = _wait(pid)
        if status == -signal.SIGKILL:
            done += 1
            staged_after_kill += bool(_debris(killed))
        else:
            finished += 1  # the run ended before the kill: not counted, and the next delays are shorter
            bound *= 0.8
        problems += _complete(killed)

    assert _wait(_fork_stages(killed, list(STAGES), log)) == 0, log.read_text()[-3000:]
    expected, got = _files(clean), _files(killed)
    return {
        "kills": done,
        "finished_before_kill": finished,
        "kills_with_staging_left": staged_after_kill,
        "clean_run_s": round(clean_s, 2),
        "half_written_after_kill": problems,
        "differing_files": sorted(k for k in expected.keys() | got.keys() if expected.get(k) != got.get(k)),
        "files_compared": len(expected),
        "debris": _debris(killed),
        "total_s": round(time.monotonic() - started, 1),
    }


def test_kill_loop_then_rerun_equals_a_clean_run(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "tests.e2e.test_kill_loop", str(tmp_path), str(KILLS), "11"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    print(summary)
    assert summary["kills"] >= 20, summary
    assert summary["half_written_after_kill"] == [], summary
    assert summary["files_compared"] > 10 and summary["differing_files"] == [], summary
    assert summary["debris"] == [], summary


if __name__ == "__main__":
    target = Path(sys.argv[1])
    result = drive(
        target,
        int(sys.argv[2]) if len(sys.argv) > 2 else KILLS,
        int(sys.argv[3]) if len(sys.argv) > 3 else 0,
    )
    print(json.dumps(result))
