from __future__ import annotations

from pathlib import Path

import pytest

from recforge.errors import RecforgeError
from recforge.params import load_params

ROOT = Path(__file__).resolve().parents[2]


def test_project_params_file_is_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.data.format == "synthetic"
    assert params.recommenders


def test_unknown_key_names_key_and_file(tmp_path):
    file = tmp_path / "p.yaml"
    file.write_text("data:\n  fromat: synthetic\n")
    with pytest.raises(RecforgeError, match=r"p\.yaml.*unknown key 'data\.fromat'"):
        load_params(file)


def test_wrong_type_names_key(tmp_path):
    file = tmp_path / "p.yaml"
    file.write_text("evaluate:\n  k: ten\n")
    with pytest.raises(RecforgeError, match=r"'evaluate\.k'"):
        load_params(file)


def test_overrides_use_dvc_syntax_and_parse_yaml():
    params = load_params(None, ["split.seed=7", "evaluate.ks=[5, 10]", "recommenders.pop2={plugin: popularity}"])
    assert params.split.seed == 7
    assert params.evaluate.ks == [5, 10]
    assert params.plugin_of("pop2") == "popularity"


def test_bad_override_and_missing_file(tmp_path):
    with pytest.raises(RecforgeError, match="section.key=value"):
        load_params(None, ["novalue"])
    with pytest.raises(RecforgeError, match="not found"):
        load_params(tmp_path / "missing.yaml")


def test_invalid_yaml(tmp_path):
    file = tmp_path / "p.yaml"
    file.write_text("data: [unclosed\n")
    with pytest.raises(RecforgeError, match="not valid YAML"):
        load_params(file)


def test_validate_section_round_trips_under_its_name():
    params = load_params(None, ["validate.min_interactions_per_user=4"])
    assert params.validate_.min_interactions_per_user == 4
    assert params.to_dict()["validate"]["min_interactions_per_user"] == 4
