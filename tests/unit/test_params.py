from __future__ import annotations

import json
from pathlib import Path

import pytest

from recforge.errors import RecforgeError
from recforge.params import load_params, paths_under

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


# ---- mutation-found gaps: each test names the wrong behaviour it catches ------------------------------------


def test_errors_name_the_validate_section_as_the_user_wrote_it():
    # catches the internal field name leaking: the user wrote 'validate', not pydantic's 'validate_'
    with pytest.raises(RecforgeError, match=r"^<defaults>: 'validate\.rating_min': ") as error:
        load_params(None, ["validate.rating_min=.nan"])
    assert "validate_" not in str(error.value)


def test_every_problem_is_listed_separated_by_semicolons(tmp_path):
    # catches problems glued together unreadably (or only the first reported)
    file = tmp_path / "p.yaml"
    file.write_text("data:\n  fromat: synthetic\nevaluate:\n  k: 0\n")
    with pytest.raises(RecforgeError) as error:
        load_params(file)
    message = str(error.value)
    assert message.startswith(f"{file}: ")
    problems = message[len(f"{file}: ") :].split("; ")
    assert problems[0] == "unknown key 'data.fromat'" and problems[1].startswith("'evaluate.k': ")
    assert len(problems) == 2


def test_nested_override_sets_the_deepest_key_and_keeps_its_siblings(tmp_path):
    # catches walking only the first key of a.b.c (the value lands in the wrong section) and a section
    # replaced by an empty one instead of updated (losing what the file set beside the overridden key)
    file = tmp_path / "p.yaml"
    file.write_text("data:\n  synthetic:\n    num_users: 77\n    num_items: 33\n")
    params = load_params(file, ["data.synthetic.num_users=12"])
    assert params.data.synthetic.num_users == 12
    assert params.data.synthetic.num_items == 33


def test_override_below_a_value_names_the_key_that_is_not_a_section():
    # catches the error message lost: the user must learn which key is a value, not a section
    with pytest.raises(RecforgeError, match=r"^override 'seed\.x=1': 'seed' is not a section$"):
        load_params(None, ["seed=3", "seed.x=1"])


def test_override_value_may_contain_an_equals_sign():
    # catches splitting at the last '=' (the key would swallow part of the value)
    assert load_params(None, ["serve.api_token=abc=def"]).serve.api_token == "abc=def"


@pytest.mark.parametrize("name", ["../escape", "1model", "a b", "x" * 65])
def test_bad_recommender_names_are_refused_with_the_rule(name):
    # catches the name check weakened to `and` (a string that breaks the rule slipping through into a
    # directory name and dvc.yaml) and the rule missing from the message
    with pytest.raises(RecforgeError, match="use 1-64 letters, digits, '_' or '-', starting with a letter"):
        load_params(None, [f"recommenders={{'{name}': {{}}}}"])


def test_reserved_recommender_names_say_why():
    # catches the reason dropped from the message
    with pytest.raises(RecforgeError, match="is reserved"):
        load_params(None, ["recommenders={rerank: {}}"])


def test_top_level_must_be_a_mapping(tmp_path):
    # catches the message dropped for a params file that is a list or a scalar
    file = tmp_path / "p.yaml"
    file.write_text("- data\n- split\n")
    with pytest.raises(RecforgeError, match=r"p\.yaml: expected a mapping of sections at the top level$"):
        load_params(file)


def test_missing_default_params_file_means_defaults(tmp_path, monkeypatch):
    # catches the missing default params.yaml treated as an error (only an explicitly named file must exist)
    monkeypatch.chdir(tmp_path)
    assert load_params().data.format == "synthetic"


def test_paths_under_moves_every_output_path(tmp_path):
    # catches an output left in the project (tests and flows would write into the working tree)
    params = load_params(None, paths_under(tmp_path))
    for key, value in params.paths.model_dump().items():
        assert Path(value).is_relative_to(tmp_path), key
    assert Path(params.paths.metrics_file) == tmp_path / "metrics/metrics.json"


def test_plugin_and_options_of_a_model():
    # catches the plugin defaulting to something other than the model's own name, and 'plugin' passed on
    # to the plugin's constructor as an option
    params = load_params(None, ["recommenders={popularity: {}, knn2: {plugin: itemknn, k: 5}}"])
    assert params.plugin_of("popularity") == "popularity"
    assert params.plugin_of("knn2") == "itemknn"
    assert params.model_options("knn2") == {"k": 5}


def test_to_dict_is_plain_json_even_for_yaml_dates_in_options():
    # catches to_dict dumping Python objects: YAML reads 2030-01-01 in a free-form option as a date, and
    # to_dict feeds JSON files (meta.json, the params hash) that cannot hold one
    params = load_params(None, ["recommenders={popularity: {since: 2030-01-01}}", "rerank.options={until: 2031-02-03}"])
    data = params.to_dict()
    assert data["recommenders"]["popularity"]["since"] == "2030-01-01"
    assert data["rerank"]["options"]["until"] == "2031-02-03"
    assert json.loads(json.dumps(data)) == data


def test_feedback_section_errors_name_the_key():
    # catches a typo in the feedback section accepted silently, a password in the store URL accepted (it would
    # reach the process list and the Bento's arguments) and a negative staleness bound
    with pytest.raises(RecforgeError, match=r"unknown key 'feedback\.implied_ratings\.like'"):
        load_params(None, ["feedback.implied_ratings={like: 4}"])
    with pytest.raises(RecforgeError, match=r"'feedback\.url': .*no password in the URL"):
        load_params(None, ["feedback.url=postgresql://me:pw@db/feedback"])
    with pytest.raises(RecforgeError, match=r"'feedback\.staleness_s'"):
        load_params(None, ["feedback.staleness_s=-1"])
    params = load_params(ROOT / "params.yaml")
    assert params.feedback.url == "feedback/events.sqlite3" and params.feedback.implied_ratings.purchase == 5.0
