"""The stage table is the one description of the stages: dvc.yaml and Prefect's cache keys follow it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from flows import cache
from recforge import stages
from recforge.errors import RecforgeError
from recforge.params import load_params
from recforge.stages import STAGES, get_stage
from tests.flows.conftest import PROJECT_ROOT


def _paths(entries: list) -> list[str]:
    """dvc.yaml lists: plain strings or one-key mappings (``path: {cache: false}``)."""
    return [entry if isinstance(entry, str) else next(iter(entry)) for entry in entries or []]


def _dvc_stages() -> dict[str, dict]:
    raw = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    return {name: body.get("do", body) | {"foreach": body.get("foreach")} for name, body in raw.items()}


def test_dvc_yaml_has_exactly_the_table_stages() -> None:
    assert list(_dvc_stages()) == [stage.name for stage in STAGES if stage.dvc]


@pytest.mark.parametrize("stage", [s for s in STAGES if s.dvc], ids=lambda s: s.name)
def test_dvc_yaml_agrees_with_the_table(stage) -> None:
    body = _dvc_stages()[stage.name]
    assert body["cmd"] == stage.cmd()
    assert _paths(body.get("deps")) == list(stage.deps)
    assert _paths(body.get("outs")) == list(stage.outs)
    assert _paths(body.get("params")) == list(stage.params)
    assert _paths(body.get("metrics")) == list(stage.metrics)
    assert _paths(body.get("plots")) == list(stage.plots)
    assert body["foreach"] == (f"${{{stage.variants}}}" if stage.foreach else None)


def test_dvcignore_lists_the_inputs_a_stage_writes_itself() -> None:
    lines = {line.strip() for line in (PROJECT_ROOT / ".dvcignore").read_text().splitlines()}
    assert set(stages.IGNORED_INPUTS) <= lines


def test_every_code_dep_exists_where_installed() -> None:
    for stage in STAGES:
        for path in stage.code_deps():
            assert path.exists(), f"stage {stage.name}: {path} does not exist"


def test_variants_are_arguments_and_unknown_ones_are_one_line_errors(tmp_path: Path) -> None:
    params = load_params(None, ["recommenders.popularity={}", "recommenders.pop_b={plugin: popularity}"])
    assert get_stage("train").variant_names(params) == ["popularity", "pop_b"]
    assert get_stage("train").params_keys(params, "pop_b")[:2] == ["recommenders.pop_b", "encode.fields"]
    outs = get_stage("train").out_paths(params, "pop_b")
    assert outs == [Path(params.paths.models_dir) / "pop_b", Path(params.paths.lists_dir) / "pop_b"]
    with pytest.raises(RecforgeError, match="unknown variant 'nope'"):
        get_stage("train").run(params, "nope")
    with pytest.raises(RecforgeError, match="unknown variant"):
        get_stage("split").run(params, "x")
    with pytest.raises(RecforgeError, match="unknown stage 'trian'"):
        get_stage("trian")


def test_editing_a_code_dep_changes_the_cache_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The drift that made Prefect reuse a stale rerank: features.py is part of rerank's key."""
    params = load_params(None, [f"paths.{k}={tmp_path / k}" for k in ("canonical_dir", "split_dir", "lists_dir")])
    copy = tmp_path / "code"
    shutil.copytree(PROJECT_ROOT / "recforge", copy / "recforge", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(PROJECT_ROOT / "plugins", copy / "plugins", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(stages, "code_path", lambda dep: copy / dep)
    before = {name: cache.stage_key(params, name) for name in ("encode", "rerank", "evaluate")}
    with open(copy / "recforge" / "features.py", "a") as handle:
        handle.write("\n# edited\n")
    after = {name: cache.stage_key(params, name) for name in ("encode", "rerank", "evaluate")}
    assert after["rerank"] != before["rerank"]
    assert after["encode"] == before["encode"] and after["evaluate"] == before["evaluate"]
    with open(copy / "plugins" / "encoders" / "tfidf.py", "a") as handle:
        handle.write("\n# edited\n")
    assert cache.stage_key(params, "encode") != before["encode"]


def test_the_rerank_key_ignores_the_rerankers_own_lists(tmp_path: Path) -> None:
    lists = tmp_path / "lists"
    (lists / "popularity").mkdir(parents=True)
    (lists / "popularity" / "val.parquet").write_bytes(b"a")
    params = load_params(None, [f"paths.lists_dir={lists}"])
    before = cache.stage_key(params, "rerank")
    (lists / "rerank").mkdir()
    (lists / "rerank" / "val.parquet").write_bytes(b"written by rerank")
    assert cache.stage_key(params, "rerank") == before
    (lists / "popularity" / "val.parquet").write_bytes(b"b")
    assert cache.stage_key(params, "rerank") != before


def test_every_params_key_of_the_table_is_written_in_params_yaml() -> None:
    """dvc repro refuses a params key that params.yaml does not spell out."""
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    for stage in STAGES:
        if not stage.dvc:
            continue
        for key in stage.params:
            node = raw
            for part in key.replace("${key}", next(iter(raw["recommenders"]))).split("."):
                assert isinstance(node, dict) and part in node, f"stage {stage.name}: '{key}' not in params.yaml"
                node = node[part]


def test_no_foreach_key_reaches_dvcs_shell() -> None:
    for stage in STAGES:
        assert "${" not in stage.cmd(), f"stage {stage.name}: a params value would be templated into a shell command"
    assert stages.dvc_variant("train@itemknn") == "itemknn"
    assert stages.dvc_variant("sub/dvc.yaml:train@pop_b") == "pop_b"
    with pytest.raises(RecforgeError, match="DVC_STAGE"):
        stages.dvc_variant(None)


def test_a_hostile_recommender_name_runs_nothing_under_dvc_repro(tmp_path: Path) -> None:
    """The issue's probe: a key `x'; touch ...; '` executed under dvc repro when the key was in the command."""
    import os
    import subprocess

    from tests.flows.conftest import bin_path

    marker = tmp_path / "PWNED"
    stage = get_stage("train")
    (tmp_path / "dvc.yaml").write_text(
        yaml.safe_dump({"stages": {"train": {"foreach": "${recommenders}", "do": {"cmd": stage.cmd()}}}})
    )
    hostile = f"x'; touch {marker}; echo '"
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({"recommenders": {"good": {"plugin": "popularity"}, hostile: {}}})
    )
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "PATH": f"{Path(bin_path('dvc')).parent}{os.pathsep}{os.environ['PATH']}",
    }
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([bin_path("dvc"), "init", "-q"], cwd=tmp_path, env=env, check=True)
    done = subprocess.run(
        [bin_path("dvc"), "repro"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode != 0
    assert "recommender name" in done.stdout + done.stderr
    assert not marker.exists()
