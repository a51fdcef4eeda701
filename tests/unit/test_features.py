"""Re-ranker features on a tiny hand-made case where every value is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recforge.candidates import candidate_frame, feature_columns, group_sizes, labels_for
from recforge.features import PartData, build_features, transition_matrix
from recforge.interactions import IdMaps, Interactions

DAY = 86_400


@pytest.fixture
def tiny():
    # users 10, 20, 30; items 100..104 (dense 0..4)
    items = pd.DataFrame(
        {
            "item_id": [100, 101, 102, 103, 104],
            "title": ["Alpha", "Beta", "Gamma", "Delta", "Epsilon"],
            "genres": ["Action|Drama", "Drama", "Comedy", "Action", "Comedy|Drama"],
            "text": ["robots space", "family", "jokes", "robots", "jokes family"],
        }
    )
    events = pd.DataFrame(
        {
            "user_id": [10, 10, 10, 20, 20, 30],
            "item_id": [100, 101, 102, 100, 101, 103],
            "timestamp": [1 * DAY, 2 * DAY, 3 * DAY, 10 * DAY, 11 * DAY, 5 * DAY],
            "rating": [5.0, 4.0, 3.0, 2.0, 4.0, 5.0],
        }
    )
    maps = IdMaps.build(events, items)
    history = Interactions.from_frame(events, maps)
    lists = {
        "a": pd.DataFrame(
            {"user_id": [10, 10, 20], "item_id": [103, 104, 102], "rank": [1, 2, 1], "score": [0.9, 0.5, 2.0]}
        ),
        "b-x": pd.DataFrame(
            {"user_id": [10, 20, 20], "item_id": [104, 102, 103], "rank": [1, 1, 2], "score": [3.0, 1.0, 0.0]}
        ),
    }
    embeddings = np.eye(5, dtype=np.float32)
    data = PartData(part="val", history=history, maps=maps, items=items, lists=lists, embeddings={"onehot": embeddings})
    return data


def row(frame: pd.DataFrame, user_id, item_id) -> pd.Series:
    return frame[(frame["user_id"] == user_id) & (frame["item_id"] == item_id)].iloc[0]


def test_candidate_union_scores_ranks_and_missing(tiny):
    frame = candidate_frame(tiny.lists, tiny.maps, per_model=5)
    assert list(zip(frame["user_id"], frame["item_id"])) == [(10, 103), (10, 104), (20, 102), (20, 103)]
    # the model name is made feature-safe; a model that did not propose an item gives NaN
    r = row(frame, 10, 103)
    assert r["a_rank"] == 1 and r["a_score"] == pytest.approx(0.9) and np.isnan(r["b_x_rank"])
    assert row(frame, 10, 104)["a_gap"] == pytest.approx(-0.4)
    assert row(frame, 10, 104)["b_x_rank"] == 1
    # per_model keeps only the top of each list
    assert len(candidate_frame(tiny.lists, tiny.maps, per_model=1)) == 3
    assert group_sizes(frame).tolist() == [2, 2]


def test_known_feature_values(tiny):
    frame = build_features(candidate_frame(tiny.lists, tiny.maps, per_model=5), tiny)
    r = row(frame, 10, 104)
    assert r["n_models"] == 2 and r["rrf"] == pytest.approx(1 / 12 + 1 / 11)
    assert row(frame, 10, 103)["n_models"] == 1
    assert r["user_history"] == 3
    assert r["user_span_days"] == pytest.approx(2.0)
    # item 103 (dense 3) has one history event (user 30, day 5): popularity log1p(1)
    assert row(frame, 10, 103)["item_pop"] == pytest.approx(np.log1p(1))
    assert row(frame, 10, 104)["item_pop"] == 0
    # user 10's last event is day 3; item 103's only event is on day 5, after that cut-off: the timeline
    # features read nothing of it (no age, no recent events, no last event), like an unseen item (104)
    r103 = row(frame, 10, 103)
    assert np.isnan(r103["item_age_days"]) and np.isnan(r103["item_last_gap_days"])
    assert r103["item_pop_recent"] == 0 and r103["item_pop_user_window"] == 0 and r103["item_pop_day"] == 0
    assert np.isnan(row(frame, 10, 104)["item_age_days"])
    # user 20's last event is day 11: item 103 (day 5) is 6 days old and was last seen 6 days before
    r = row(frame, 20, 103)
    assert r["item_age_days"] == pytest.approx(6.0) and r["item_last_gap_days"] == pytest.approx(6.0)
    assert r["item_pop_recent"] == pytest.approx(np.log1p(1)) and r["item_pop_day"] == 0
    # user 20's last event is day 11; item 102 was seen on day 3 -> 8 days old, within a 30-day window
    assert row(frame, 20, 102)["item_age_days"] == pytest.approx(8.0)
    assert row(frame, 20, 102)["item_pop_user_window"] == pytest.approx(np.log1p(1))
    assert row(frame, 20, 102)["item_rating"] == pytest.approx(3.0)
    # transitions: 100->101 (users 10, 20), 101->102 (user 10); user 20's last item is 101
    assert row(frame, 20, 102)["trans_last1"] == pytest.approx(1.0)
    assert row(frame, 20, 103)["trans_last1"] == 0.0
    # one-hot embeddings: similarity to the last item is 0, to the mean of the last two (100, 101) also 0
    assert row(frame, 20, 102)["sim_onehot_last1"] == pytest.approx(0.0)
    # genres: user 20 watched Action|Drama and Drama; item 103 (Action) -> share 1/2
    assert row(frame, 20, 103)["genre_overlap"] == pytest.approx(0.5)
    # item 104 (Comedy|Drama) for user 10 (Action|Drama, Drama, Comedy): (2/3 + 1/3) / 2
    assert row(frame, 10, 104)["genre_overlap"] == pytest.approx(0.5)
    assert "user" not in feature_columns(frame) and "n_models" in feature_columns(frame)


def test_similarity_features_with_known_embeddings(tiny):
    vectors = np.array([[1, 0], [0, 1], [1, 0], [1, 0], [0.6, 0.8]], dtype=np.float32)
    tiny.embeddings = {"e": vectors}
    frame = build_features(candidate_frame(tiny.lists, tiny.maps, per_model=5), tiny)
    # user 10 last item = 102 ([1,0]); candidate 104 = [0.6, 0.8]
    assert row(frame, 10, 104)["sim_e_last1"] == pytest.approx(0.6)
    # max over the last 5 (100, 101, 102): max(0.6, 0.8, 0.6)
    assert row(frame, 10, 104)["sim_e_max5"] == pytest.approx(0.8)
    # mean of last five embeddings = [2/3, 1/3] -> dot [0.6, 0.8] = 0.4 + 0.2667
    assert row(frame, 10, 104)["sim_e_last5"] == pytest.approx(0.4 + 0.8 / 3, abs=1e-6)


def test_transition_matrix_counts_consecutive_pairs(tiny):
    matrix = transition_matrix(tiny.history).toarray()
    assert matrix[0, 1] == 2 and matrix[1, 2] == 1 and matrix.sum() == 3


def test_transition_features_same_from_the_dense_and_the_sparse_table(tiny, monkeypatch):
    import recforge.features as features

    dense = build_features(candidate_frame(tiny.lists, tiny.maps, per_model=5), tiny)
    monkeypatch.setattr(features, "DENSE_TRANSITIONS_MAX", 0)  # as for a catalogue too large for a dense table
    sparse = build_features(candidate_frame(tiny.lists, tiny.maps, per_model=5), tiny)
    # user 20's last item is 101, and 101 -> 102 happened once
    assert row(dense, 20, 102)["trans_last1"] == 1.0
    pd.testing.assert_frame_equal(dense, sparse)


def test_labels_mark_only_truth_pairs(tiny):
    frame = candidate_frame(tiny.lists, tiny.maps, per_model=5)
    truth = pd.DataFrame({"user_id": [10, 20, 30], "item_id": [104, 101, 100]})
    assert labels_for(frame, truth).tolist() == [0, 1, 0, 0]


def test_llm_scorer_prompts_top_candidates_and_caches(tiny, tmp_path):
    from recforge.llm_scorer import LLMScorer
    from recforge.params import load_params
    from tests.conftest import tmp_overrides

    params = load_params(None, tmp_overrides(tmp_path) + ["rerank.llm_candidates=1", "rerank.llm_history=2"])
    calls: list[list[str]] = []

    class CountingScorer(LLMScorer):
        def score(self, texts, keys=None):  # the language model replaced by option counts; caching is tested
            calls.append(list(texts))
            out = [[0.0] * (t.count("\n") - 2) for t in texts]
            self.cache.update(zip(keys or [], out, strict=False))
            return out

    frame = build_features(candidate_frame(tiny.lists, tiny.maps, per_model=5), tiny)
    scorer = CountingScorer(params)
    values = scorer(frame, tiny)
    # one option per user (the best by rrf), the rest NaN; the prompt names the last two history titles
    assert np.isfinite(values).sum() == 2
    assert any("A. Epsilon" in t and "History: Gamma; Beta." in t for t in calls[0])
    again = CountingScorer(params)(frame, tiny)
    np.testing.assert_array_equal(again, values)
    assert len(calls) == 1  # the second scorer read every score from the on-disk cache


# ---- every feature against a slow recomputation from its documented definition ------------------------------


def _reference_features(data: PartData, lists: dict, per_model: int, profiles: dict) -> pd.DataFrame:
    """The candidate table and every feature, computed row by row from the definitions in FeatureContext.add."""
    from recforge.candidates import safe_name
    from recforge.features import item_keywords
    from recforge.profiles import item_genres

    h, maps = data.history, data.maps
    events = pd.DataFrame(
        {"u": h.user_ids, "i": h.item_ids, "t": h.timestamps, "r": h.ratings, "s": np.asarray(data.sentiment)}
    )
    # consecutive (same user) pairs in time order
    pairs: dict[tuple[int, int], int] = {}
    for _, g in events.groupby("u", sort=True):
        seq = g["i"].tolist()
        for a, b in zip(seq, seq[1:]):
            pairs[(a, b)] = pairs.get((a, b), 0) + 1
    genres = [set(g) for g in item_genres(data.items)]
    keywords = [set(k) for k in item_keywords(data.items, data.text_fields)]

    per_list = {}
    for name, frame in lists.items():
        rows = {}
        for r in frame[frame["rank"] <= per_model].itertuples():
            u, i = maps.user_index([r.user_id])[0], maps.item_index([r.item_id])[0]
            if u >= 0 and i >= 0 and (u, i) not in rows:
                rows[(u, i)] = (float(r.score), float(r.rank))
        best = {}
        for (u, _), (score, _) in rows.items():
            best[u] = max(best.get(u, -np.inf), score)
        per_list[safe_name(name)] = (rows, best)
    keys = sorted({key for rows, _ in per_list.values() for key in rows})

    out = []
    for u, i in keys:
        mine = events[events["u"] == u].sort_values(["t", "i"], kind="stable")
        of_item = events[events["i"] == i]
        last = mine["i"].tolist()[::-1][:LAST]
        row = {"user": u, "item": i, "user_id": maps.user_ids[u], "item_id": maps.item_ids[i]}
        ranks = []
        for key, (rows, best) in per_list.items():
            score, rank = rows.get((u, i), (np.nan, np.nan))
            row[f"{key}_score"], row[f"{key}_rank"] = score, rank
            row[f"{key}_gap"] = score - best[u] if (u, i) in rows else np.nan
            if (u, i) in rows:
                ranks.append(rank)
        row["n_models"] = len(ranks)
        row["rrf"] = sum(1 / (10 + r) for r in ranks)
        last_t = int(mine["t"].max()) if len(mine) else 0
        row["user_history"] = len(mine)
        row["user_span_days"] = (last_t - int(mine["t"].min())) / DAY if len(mine) else 0.0
        row["item_pop"] = np.log1p(len(of_item))
        before = of_item[of_item["t"] <= last_t]  # the item's events up to the user's cut-off
        for name, days in (("item_pop_day", 1), ("item_pop_user_window", 30), ("item_pop_recent", 90)):
            row[name] = np.log1p(int((before["t"] > last_t - days * DAY).sum()))
        row["item_last_gap_days"] = (last_t - int(before["t"].max())) / DAY if len(before) else np.nan
        row["item_age_days"] = (last_t - int(before["t"].min())) / DAY if len(before) else np.nan
        row["item_rating"] = of_item["r"].mean() if len(of_item) else np.nan
        row["trans_last1"] = float(pairs.get((last[0], i), 0)) if last else 0.0
        row["trans_last5"] = sum(pairs.get((a, i), 0) for a in last) / max(len(last), 1)
        for name, vectors in data.embeddings.items():
            key, cand = safe_name(name), vectors[i].astype(np.float64)
            dots = [float(vectors[a].astype(np.float64) @ cand) for a in last]
            row[f"sim_{key}_profile"] = float(profiles[name][u] @ cand)
            row[f"sim_{key}_last1"] = dots[0] if dots else 0.0
            row[f"sim_{key}_last5"] = sum(dots) / max(len(dots), 1)
            row[f"sim_{key}_max5"] = max(dots) if dots else np.nan
        distinct = set(mine["i"])
        for name, terms in (("genre_overlap", genres), ("keyword_overlap", keywords)):
            shares = [sum(term in terms[a] for a in distinct) / max(len(distinct), 1) for term in terms[i]]
            row[name] = float(np.mean(shares)) if shares else np.nan
        row["sent_item"] = of_item["s"].mean() if len(of_item) else np.nan
        row["sent_user"] = mine["s"].mean() if len(mine) else np.nan
        out.append(row)
    return pd.DataFrame(out)


LAST = 5


def test_every_feature_equals_its_definition_on_random_histories():
    # catches any feature computed wrongly: a window bound off by one (30 / 90 days, strict vs inclusive),
    # a wrong last-5 slice or weight, trans_last5 zeroed, a timeline feature reading past the user's cut-off,
    # item_pop_recent wrong, sim_profile negated,
    # keyword_overlap computing genre overlap, gaps against the wrong best score, a duplicate list row
    # counted twice, unknown ids or ranks beyond per_model kept, sentiment averaged over the wrong events
    from recforge.features import FeatureContext

    rng = np.random.default_rng(5)
    n_users, n_items = 9, 14
    words = ["robots", "space", "family", "jokes", "heist", "ocean", "dragons", "trains"]
    items = pd.DataFrame(
        {
            "item_id": [1000 + i for i in range(n_items)],
            "title": [f"Title {i}" for i in range(n_items)],
            "genres": [
                "|".join(rng.choice(["A", "B", "C", "D"], size=rng.integers(0, 3), replace=False))
                for _ in range(n_items)
            ],
            "text": [" ".join(rng.choice(words, size=rng.integers(0, 4), replace=False)) for _ in range(n_items)],
        }
    )
    n_events = 90
    events = pd.DataFrame(
        {
            "user_id": rng.integers(0, n_users, n_events) * 7,
            "item_id": 1000 + rng.integers(0, n_items - 1, n_events),  # the last item never occurs
            "timestamp": rng.integers(0, 200, n_events) * DAY + DAY,  # whole days: window bounds are hit exactly
            "rating": rng.integers(1, 6, n_events).astype(float),
        }
    )
    # short histories: user 63 has 1 event (on an item nobody else has), user 70 three, user 77 none at all
    short = pd.DataFrame(
        {
            "user_id": [63, 70, 70, 70],
            "item_id": [1012, 1001, 1002, 1001],
            "timestamp": [DAY * 3, DAY, DAY * 40, DAY * 41],
            "rating": [4.0, 1.0, 2.0, 3.0],
        }
    )
    events = pd.concat([events, short], ignore_index=True)
    maps = IdMaps(user_ids=pd.Index(sorted(set(events["user_id"]) | {77})), item_ids=pd.Index(items["item_id"]))
    n_users = len(maps.user_ids)
    history = Interactions.from_frame(events, maps)
    sentiment = rng.uniform(-1, 1, len(history))
    sentiment[::7] = np.nan  # no review: counts as 0
    vectors = {
        "enc-1": rng.normal(size=(n_items, 4)).astype(np.float32),
        "e2": rng.normal(size=(n_items, 3)).astype(np.float32),
    }
    profiles = {name: rng.normal(size=(n_users, v.shape[1])).astype(np.float32) for name, v in vectors.items()}
    lists = {}
    for name in ("pop", "knn.x", "mf"):
        rows = [(int(u), 1000 + int(i)) for u in maps.user_ids for i in rng.choice(n_items, 6, replace=False)]
        frame = pd.DataFrame(rows, columns=["user_id", "item_id"])
        frame["rank"] = frame.groupby("user_id").cumcount() + 1
        frame["score"] = rng.normal(size=len(frame)).round(2)
        # a duplicate row (the first occurrence counts) and ids the maps do not know (dropped)
        extra = pd.DataFrame(
            {
                "user_id": [0, 999, 7, 63],
                "item_id": [frame["item_id"].iloc[0], 1000, 5, 1012],
                "rank": [2, 1, 1, 1],
                "score": [9.0, 1.0, 1.0, 0.5],
            }
        )
        lists[name] = pd.concat([frame, extra], ignore_index=True)
    data = PartData(
        part="val",
        history=history,
        maps=maps,
        items=items,
        lists=lists,
        embeddings=vectors,
        sentiment=sentiment,
        text_fields=("title", "text"),
        profiles=profiles,
    )
    data_for_reference = PartData(**{**data.__dict__, "sentiment": np.nan_to_num(sentiment)})
    frame = FeatureContext(data).add(candidate_frame(lists, maps, per_model=4))
    expected = _reference_features(data_for_reference, lists, 4, profiles)
    assert list(frame.columns) == list(expected.columns)
    assert frame[["user", "item"]].values.tolist() == expected[["user", "item"]].values.tolist()
    assert (frame["user_id"].tolist(), frame["item_id"].tolist()) == (
        expected["user_id"].tolist(),
        expected["item_id"].tolist(),
    )
    for column in expected.columns[4:]:
        assert frame[column].dtype == np.float32, column
        np.testing.assert_allclose(
            frame[column].to_numpy(np.float64),
            expected[column].to_numpy(np.float64),
            rtol=2e-5,
            atol=2e-6,
            err_msg=column,
        )


def test_features_keep_the_frame_index_for_any_block(tiny):
    # catches features aligned by position instead of the block's own index (a block that does not start at
    # user 0 / row 0 would get NaN or another row's features) and the overlap block offset (users - lo)
    whole = build_features(candidate_frame(tiny.lists, tiny.maps, per_model=5), tiny)
    block = candidate_frame(tiny.lists, tiny.maps, per_model=5).iloc[2:]  # user 20 only, index 2, 3
    from recforge.features import FeatureContext

    part = FeatureContext(tiny).add(block)
    assert part.index.tolist() == [2, 3]
    pd.testing.assert_frame_equal(part, whole.iloc[2:])


def test_an_empty_block_gets_every_column(tiny):
    # catches the overlap features computed on an empty block (min() of nothing) or given a fake row
    from recforge.features import FeatureContext

    frame = candidate_frame(tiny.lists, tiny.maps, per_model=5)
    empty = FeatureContext(tiny).add(frame.iloc[:0])
    assert len(empty) == 0
    assert list(empty.columns) == list(build_features(frame, tiny).columns)


def test_no_ratings_no_rating_feature(tiny):
    # catches item_rating computed from a history without ratings (counts would pass for mean ratings)
    h = tiny.history
    tiny.history = Interactions(h.user_ids, h.item_ids, h.timestamps, None, h.n_users, h.n_items)
    frame = build_features(candidate_frame(tiny.lists, tiny.maps, per_model=5), tiny)
    assert "item_rating" not in frame.columns and "item_pop" in frame.columns


def test_llm_scorer_column_gets_the_scorers_values(tiny):
    # catches the LLM feature dropped, renamed, or computed without the featured frame or the part's data
    seen = {}

    def scorer(frame, data):
        seen["columns"], seen["data"] = list(frame.columns), data
        return np.arange(len(frame), dtype=np.float64) / 2

    frame = build_features(candidate_frame(tiny.lists, tiny.maps, per_model=5), tiny, llm_scorer=scorer)
    assert frame["llm_logprob"].tolist() == [0.0, 0.5, 1.0, 1.5] and frame["llm_logprob"].dtype == np.float32
    assert "rrf" in seen["columns"] and seen["data"] is tiny


def test_profiles_computed_with_the_parts_settings(tiny):
    # catches the profile settings ignored when the encode stage wrote no profiles for an encoder
    from recforge.profiles import ProfileSettings, profile_vectors

    vectors = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    tiny.embeddings = {"e": vectors}
    tiny.profile_settings = ProfileSettings(half_life_events=1.0, rating_weight=0.0)
    frame = build_features(candidate_frame(tiny.lists, tiny.maps, per_model=5), tiny)
    profiles = profile_vectors(tiny.history, vectors, tiny.profile_settings)
    expected = np.einsum("ij,ij->i", profiles[frame["user"]], vectors[frame["item"]])
    np.testing.assert_allclose(frame["sim_e_profile"], expected, rtol=1e-5)
    default = profile_vectors(tiny.history, vectors, ProfileSettings())
    assert not np.allclose(default[frame["user"]], profiles[frame["user"]])


def test_user_window_includes_an_event_at_time_zero_and_excludes_exactly_30_days():
    # catches the window keys shifted (an event at timestamp 0 falling out of its item's key range or below
    # the clamped lower bound) and a window closed at its start: (last - 30 days, last]
    from recforge.features import FeatureContext

    items = pd.DataFrame({"item_id": [1, 2]})
    events = pd.DataFrame(
        {
            "user_id": [5, 5, 6, 7, 7],
            "item_id": [1, 1, 2, 2, 1],
            "timestamp": [0, 10 * DAY, 29 * DAY, 39 * DAY, 40 * DAY],
        }
    )
    maps = IdMaps.build(events, items)
    history = Interactions.from_frame(events, maps)
    lists = {"m": pd.DataFrame({"user_id": [6, 7], "item_id": [1, 1], "rank": [1, 1], "score": [1.0, 1.0]})}
    data = PartData(part="val", history=history, maps=maps, items=items, lists=lists)
    frame = FeatureContext(data).add(candidate_frame(lists, maps, per_model=1))
    # user 6 (last event day 29): item 1 on days 0 and 10 are inside (-1, 29]; user 7 (day 40): day 10 is
    # exactly 30 days before, so only day 40 counts
    assert np.expm1(frame["item_pop_user_window"]).round().tolist() == [2.0, 1.0]


def test_small_helpers():
    # catches: safe_name replacing upper-case letters, model_columns missing or inverted, feature_columns
    # keeping an id or the label (a model trained on ids or on the answer), group_sizes' int64 (LightGBM),
    # labels_for ignoring a precomputed truth_keys index, the 'no candidate lists' message lost
    from recforge.candidates import model_columns, safe_name, truth_keys

    assert safe_name("B-x.Model") == "B_x_Model"
    frame = pd.DataFrame(
        {
            "user": [0, 0, 1],
            "item": [1, 2, 1],
            "user_id": [1, 1, 2],
            "item_id": [5, 6, 5],
            "B_x_score": [1.0] * 3,
            "B_x_rank": [1.0] * 3,
            "label": [1, 0, 0],
        }
    )
    assert model_columns(frame, "B-x") == ["B_x_score", "B_x_rank"]
    assert feature_columns(frame) == ["B_x_score", "B_x_rank"]
    assert group_sizes(frame).tolist() == [2, 1] and group_sizes(frame).dtype == np.int64
    truth = pd.DataFrame({"user_id": [2, 1], "item_id": [5, 9]})
    assert labels_for(frame, truth_keys(truth)).tolist() == labels_for(frame, truth).tolist() == [0, 0, 1]
    assert labels_for(frame, truth).dtype == np.int32
    with pytest.raises(ValueError, match=r"^no candidate lists$"):
        candidate_frame({}, IdMaps(pd.Index([1]), pd.Index([5])), 5)


def test_item_keywords_are_the_content_words_of_descriptive_fields():
    # catches title/genres counted as keywords, a configured field missing from the table crashing, missing
    # text read as a word, fields glued into one word, stop words kept, short words or numbers kept
    from recforge.features import item_keywords

    items = pd.DataFrame(
        {
            "title": ["Robots", "Sea"],
            "genres": ["Drama", "Comedy"],
            "text": ["the sky and 2001 robots ok", None],
            "tags": ["ocean", "heist"],
        }
    )
    words = item_keywords(items, ("title", "genres", "text", "tags", "missing"))
    assert [sorted(w) for w in words] == [["ocean", "robots", "sky"], ["heist"]]
    assert item_keywords(items, ("title",)) == [[], []]  # only a title: no keyword field


def test_context_for_a_history_gives_the_features_of_the_user_with_that_history(tiny):
    # catches a user-side table of the session context left from the whole history (another user's
    # last items, span, profile or seen items), or an item-side one rebuilt from the session alone
    from recforge.features import FeatureContext

    tiny.sentiment = np.linspace(-1.0, 1.0, len(tiny.history))
    context = FeatureContext(tiny)
    frame = candidate_frame(tiny.lists, tiny.maps, per_model=5)
    known = context.add(frame)
    h = tiny.history
    for user in np.unique(frame["user"]):
        rows = slice(h.bounds[user], h.bounds[user + 1])
        session = context.for_history(h.item_ids[rows], timestamps=h.timestamps[rows], ratings=h.ratings[rows])
        mine = frame[frame["user"] == user]
        online = session.add(mine.assign(user=0))
        expected = known.loc[mine.index].drop(columns=["user", "sent_user"])
        got = online.drop(columns=["user", "sent_user"])
        pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-6)
        assert (online["sent_user"] == 0).all()  # a session has no reviews
    # without timestamps the session ends "now" (the history's last event), one second apart
    session = context.for_history(np.array([0, 1]))
    assert session.last_ts.tolist() == [h.last_timestamp()] and session.first_ts.tolist() == [h.last_timestamp() - 1]
    assert context.counts.tolist() == [3.0, 2.0, 1.0]  # the shared context is untouched


def test_similarities_in_row_chunks_equal_the_whole(monkeypatch) -> None:
    """The similarity features are computed SIM_ROWS candidate rows at a time (bounded memory); chunks of 7 rows give
    exactly the one-chunk values (catches a chunk written at the wrong offset or a row's last items misaligned)."""
    import types

    import recforge.features as features

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((40, 8)).astype(np.float32)
    profiles = rng.standard_normal((12, 8)).astype(np.float32)
    n = 100
    users, items = rng.integers(0, 12, n), rng.integers(0, 40, n)
    last = rng.integers(-1, 40, (n, features.LAST_N))
    present = last >= 0
    weights = 1.0 / np.maximum(present.sum(axis=1), 1)
    context = types.SimpleNamespace(embeddings={"enc": (vectors, profiles)})
    whole, chunked = {}, {}
    features.FeatureContext._similarities(context, whole, users, items, last, present, weights)
    monkeypatch.setattr(features, "SIM_ROWS", 7)
    features.FeatureContext._similarities(context, chunked, users, items, last, present, weights)
    assert set(whole) == {"sim_enc_profile", "sim_enc_last1", "sim_enc_last5", "sim_enc_max5"}
    for name, values in whole.items():
        np.testing.assert_array_equal(chunked[name], values, err_msg=name)
    np.testing.assert_allclose(
        whole["sim_enc_profile"], np.einsum("ij,ij->i", profiles[users], vectors[items]), rtol=1e-6
    )
