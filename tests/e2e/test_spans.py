"""Data spans: `recforge data add-span` in a subprocess, ingest reading spans, `dvc repro` seeing a new span."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from recforge.params import load_params
from recforge.stages.ingest import run_ingest
from tests.conftest import PROJECT_ROOT, TINY, tmp_overrides

RECFORGE = str(Path(sys.executable).parent / "recforge")
DVC = str(Path(sys.executable).parent / "dvc")


def recforge(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([RECFORGE, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def span_frame(start: int, users=range(1, 40), items=range(1, 60), n: int = 200, seed: int = 0) -> pd.DataFrame:
    """Events after the synthetic base data (its timestamps start at 1.6e9 and span under a year)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "user_id": rng.choice(list(users), n),
            "item_id": rng.choice(list(items), n),
            # the synthetic data's rating shares (1 to 5 stars), so the span does not drift
            "rating": rng.choice([1.0, 2.0, 3.0, 4.0, 5.0], n, p=[0.02, 0.08, 0.16, 0.14, 0.6]),
            "timestamp": start + np.arange(n) * 60,
        }
    )


def _sets(root: Path, extra: list[str] = ()) -> list[str]:
    flags = []
    for override in [*tmp_overrides(root), *TINY, f"data.spans={root / 'spans'}", *extra]:
        flags += ["-S", override]
    return flags


def test_add_span_checks_the_file_and_adds_it_atomically(tmp_path: Path) -> None:
    good = tmp_path / "0001.csv"
    span_frame(1_700_000_000).to_csv(good, index=False)
    added = recforge("data", "add-span", str(good), *_sets(tmp_path), cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    assert "200 events" in added.stdout
    assert (tmp_path / "spans" / "0001.csv").read_bytes() == good.read_bytes()
    assert not [p for p in (tmp_path / "spans").iterdir() if p.name.startswith(".")]  # no staging left
    again = recforge("data", "add-span", str(good), *_sets(tmp_path), cwd=tmp_path)
    assert again.returncode == 0 and "already there" in again.stdout

    # the same name with other events, a name that climbs out of the directory, a file the loader cannot read,
    # a span that sorts before an existing one: each one line, exit 2, nothing written
    other = tmp_path / "other" / "0001.csv"
    other.parent.mkdir()
    span_frame(1_700_000_000, seed=1).to_csv(other, index=False)
    garbage = tmp_path / "0002.csv"
    garbage.write_text("who,what\n1,2\n")
    early = tmp_path / "0000.csv"
    span_frame(1_700_000_000).to_csv(early, index=False)
    cases = {
        "holds other events": [str(other)],
        "span name '../escape.csv'": [str(good), "--name", "../escape.csv"],
        "user_id": [str(garbage)],
        "sorts before '0001.csv'": [str(early)],
    }
    for message, args in cases.items():
        done = recforge("data", "add-span", *args, *_sets(tmp_path), cwd=tmp_path)
        assert done.returncode == 2, (message, done.stdout, done.stderr)
        assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert sorted(p.name for p in (tmp_path / "spans").iterdir()) == ["0001.csv"]
    assert not (tmp_path / "escape.csv").exists()


def test_ingest_reads_spans_in_order_and_holds_out_the_newest(tmp_path: Path) -> None:
    spans = tmp_path / "spans"
    spans.mkdir()
    first, second = span_frame(1_700_000_000), span_frame(1_710_000_000, seed=2)
    first.to_csv(spans / "0001.csv", index=False)
    second.to_parquet(spans / "0002.parquet", index=False)
    overrides = [*tmp_overrides(tmp_path), *TINY, f"data.spans={spans}", "data.duplicates=keep"]
    base = load_params(None, [*overrides, "data.spans_held_out=2"])
    run_ingest(base)
    base_events = len(pd.read_parquet(tmp_path / "data/canonical/interactions.parquet"))

    params = load_params(None, overrides)  # spans_held_out: 1 (the default)
    run_ingest(params)
    canonical = pd.read_parquet(tmp_path / "data/canonical/interactions.parquet")
    assert len(canonical) == base_events + len(first)
    assert canonical["timestamp"].max() == first["timestamp"].max()
    manifest = json.loads((tmp_path / "data/canonical/spans.json").read_text())
    assert [s["name"] for s in manifest["spans"]] == ["0001.csv"]
    assert [s["name"] for s in manifest["held_out"]] == ["0002.parquet"]
    record = manifest["spans"][0]
    assert record["events"] == 200
    assert (record["time_min"], record["time_max"]) == (1_700_000_000, int(first["timestamp"].max()))
    import hashlib

    assert record["sha256"] == hashlib.sha256((spans / "0001.csv").read_bytes()).hexdigest()

    run_ingest(load_params(None, [*overrides, "data.spans_held_out=0"]))
    canonical = pd.read_parquet(tmp_path / "data/canonical/interactions.parquet")
    assert len(canonical) == base_events + len(first) + len(second)


def test_a_span_named_to_escape_is_refused_at_ingest(tmp_path: Path) -> None:
    spans = tmp_path / "spans"
    spans.mkdir()
    (spans / "bad name;rm.csv").write_text("user_id,item_id,timestamp\n1,1,1700000000\n")
    params = load_params(None, [*tmp_overrides(tmp_path), *TINY, f"data.spans={spans}", "data.spans_held_out=0"])
    from recforge.errors import RecforgeError

    with pytest.raises(RecforgeError, match="span name 'bad name;rm.csv'"):
        run_ingest(params)
    assert not (tmp_path / "data/canonical").exists()


def test_dvc_repro_reruns_ingest_when_a_span_arrives(tmp_path: Path) -> None:
    """The project's dvc.yaml: ingest depends on the span directory."""
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(PROJECT_ROOT / name, root / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("recforge", "plugins"):
        shutil.copytree(PROJECT_ROOT / name, root / name, ignore=ignore)
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["data"]["synthetic"].update(num_users=120, num_items=80, num_interactions=2400, num_topics=4)
    params["data"]["spans_held_out"] = 0
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "data" / "spans").mkdir(parents=True)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(DVC).parent}{os.pathsep}{os.environ['PATH']}"}

    def run(*args: str) -> str:
        done = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr

    run("git", "init", "-q")
    run(DVC, "init", "-q")
    assert "Running stage 'ingest'" in run(DVC, "repro", "ingest")
    assert "Running stage 'ingest'" not in run(DVC, "repro", "ingest")
    span_frame(1_700_000_000).to_csv(tmp_path / "0001.csv", index=False)
    run(RECFORGE, "data", "add-span", str(tmp_path / "0001.csv"))
    assert "Running stage 'ingest'" in run(DVC, "repro", "ingest")
    manifest = json.loads((root / "data/canonical/spans.json").read_text())
    assert [s["name"] for s in manifest["spans"]] == ["0001.csv"]
