"""recforge.explain: the one evidence function and the template sentence (moved from test_features/test_rerank)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from recforge.explain import ItemTable, evidence, explain_recommendation, template_explanation
from recforge.params import load_params
from recforge.pipeline import run_pipeline
from tests.conftest import TINY, tmp_overrides

ITEMS = pd.DataFrame(
    {
        "item_id": [100, 101, 102, 103, 104],
        "title": ["Alpha", "Beta", "Gamma", "Delta", "Epsilon"],
        "genres": ["Action|Drama", "Drama", "Comedy", "Action", "Comedy|Drama"],
        "text": ["robots space", "family", "jokes", "robots", "jokes family comedy"],
    }
)
HISTORY = np.array([0, 1, 2])  # user 10 of test_features' tiny data: Alpha, Beta, Gamma


def test_evidence_picks_most_similar_history():
    vectors = np.array([[1, 0], [0, 1], [0.8, 0.6], [1, 0], [0.6, 0.8]], dtype=np.float32)
    found = evidence(ItemTable.build(ITEMS, ["text"], vectors), HISTORY, 4, k=2)
    assert [h["title"] for h in found["history"]] == ["Gamma", "Beta"]  # 0.96 > 0.8
    assert found["shared_genres"] == ["Comedy", "Drama"]
    # "comedy" is a word of Epsilon's text and of a shared genre: genre words are not keywords
    assert found["shared_keywords"] == ["family", "jokes"]
    assert found["history_length"] == 3 and found["item_id"] == 104
    # without vectors: shared genres/keywords decide
    plain = evidence(ItemTable.build(ITEMS, ["text"]), HISTORY, 4, k=1)
    assert plain["history"][0]["title"] in {"Beta", "Gamma"}


def test_template_sentence_names_items_and_shared_terms():
    found = evidence(ItemTable.build(ITEMS, ["text"]), HISTORY, 4)
    text = template_explanation(found)
    assert text.startswith('"Epsilon" is recommended because you enjoyed')
    assert all(f'"{h["title"]}"' in text for h in found["history"])
    assert "popular" in template_explanation(evidence(ItemTable.build(ITEMS, ["text"]), np.array([], int), 4))


def test_explain_recommendation_names_history_items(tmp_path):
    params = load_params(
        None, tmp_overrides(tmp_path) + TINY + ["recommenders={popularity: {}}", "rerank.enabled=false"]
    )
    run_pipeline(params, stages=["ingest", "validate", "split", "encode", "train", "evaluate"])
    recs = pd.read_parquet(next((Path(params.paths.lists_dir) / "popularity").glob("*.parquet")))
    user_id, item_id = recs.iloc[0]["user_id"], recs.iloc[0]["item_id"]
    result = explain_recommendation(params, user_id, item_id, ["template"])
    titles = [h["title"] for h in result["evidence"]["history"]]
    assert titles and all(title in result["explanations"]["template"] for title in titles)
