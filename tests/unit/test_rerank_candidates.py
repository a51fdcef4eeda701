"""recforge.rerank's candidate tables on a hand-written workspace (fast: no training, no pipeline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recforge import rerank
from recforge.errors import RecforgeError
from recforge.params import load_params
from recforge.workspace import Workspace
from tests.conftest import tmp_overrides

MODELS = "recommenders={pop: {plugin: popularity}, knn: {plugin: itemknn}}"


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    params = load_params(
        None,
        tmp_overrides(tmp_path)
        + [MODELS, "encode.encoders=[e]", "rerank.candidates_per_model=2", "rerank.sentiment=false"],
    )
    items = pd.DataFrame({"item_id": [100, 101, 102, 103, 104], "title": list("ABCDE"), "text": ["x"] * 5})
    train = pd.DataFrame(
        {"user_id": [1, 1, 2, 2, 3], "item_id": [100, 101, 100, 102, 103], "timestamp": [1, 2, 1, 2, 1]}
    )
    val = pd.DataFrame({"user_id": [1, 2, 3], "item_id": [102, 103, 104], "timestamp": [3, 3, 2]})
    test = pd.DataFrame({"user_id": [1, 2], "item_id": [103, 104], "timestamp": [4, 4]})
    canonical = Path(params.paths.canonical_dir)
    canonical.mkdir(parents=True)
    items.to_parquet(canonical / "items.parquet")
    pd.concat([train, val, test]).to_parquet(canonical / "interactions.parquet")
    split = Path(params.paths.split_dir)
    split.mkdir(parents=True)
    for name, frame in (("train", train), ("val", val), ("test", test)):
        frame.to_parquet(split / f"{name}.parquet")
    for model, shift in (("pop", 0), ("knn", 1)):
        for part in ("val", "test"):
            rows = [(u, 100 + (u + r + shift) % 5, r + 1, 1.0 - r / 10) for u in (1, 2, 3) for r in range(3)]
            frame = pd.DataFrame(rows, columns=["user_id", "item_id", "rank", "score"])
            (Path(params.paths.lists_dir) / model).mkdir(parents=True, exist_ok=True)
            frame.to_parquet(Path(params.paths.lists_dir) / model / f"{part}.parquet")
    Path(params.paths.embeddings_dir).mkdir(parents=True)
    np.save(Path(params.paths.embeddings_dir) / "e.npy", np.eye(5, dtype=np.float32))
    return Workspace(params)


def test_candidate_models_default_subset_and_unknown():
    # catches rerank.models ignored (all models used) and an unconfigured model accepted silently
    assert rerank.candidate_models(load_params(None, [MODELS])) == ["pop", "knn"]
    assert rerank.candidate_models(load_params(None, [MODELS, "rerank.models=[knn]"])) == ["knn"]
    with pytest.raises(RecforgeError, match=r"rerank\.models names unconfigured recommenders: \['mf'\]"):
        rerank.candidate_models(load_params(None, [MODELS, "rerank.models=[knn, mf]"]))


def test_feature_encoders_fall_back_only_when_unset():
    # catches an explicit empty list (no similarity features) replaced by encode.encoders
    assert rerank.feature_encoders(load_params(None, ["encode.encoders=[a, b]"])) == ["a", "b"]
    assert rerank.feature_encoders(load_params(None, ["encode.encoders=[a]", "rerank.encoders=[]"])) == []
    assert rerank.feature_encoders(load_params(None, ["encode.encoders=[a]", "rerank.encoders=[c]"])) == ["c"]


def test_missing_lists_name_the_file_and_the_stage(workspace):
    # catches a missing list read as no candidates instead of an error that says what to run
    with pytest.raises(RecforgeError, match=r"mf/val\.parquet: not found; run `recforge stage train` first"):
        rerank.read_lists(workspace.params, ["mf"], "val")


def test_a_list_file_without_a_list_column_or_not_parquet_names_the_file(workspace):
    # catches a foreign or truncated list file reaching pyarrow's or candidate_frame's own errors (a KeyError on
    # 'score' in the middle of the stage) instead of a one-line error naming the file and what is wrong
    path = Path(workspace.params.paths.lists_dir) / "pop" / "val.parquet"
    pd.read_parquet(path).drop(columns="score").to_parquet(path)
    with pytest.raises(
        RecforgeError, match=r"pop/val\.parquet: a candidate list needs the columns .*missing \['score'\]"
    ):
        rerank.list_paths(workspace.params, ["pop"], "val")
    path.write_bytes(b"not parquet")
    with pytest.raises(RecforgeError, match=r"pop/val\.parquet: not a readable parquet file"):
        rerank.read_lists(workspace.params, ["pop"], "val")


def test_part_data_never_reads_the_parts_own_events(workspace):
    # catches the leak the issue is about: val features built from a history that contains val, or test
    # features from one without val; lists must be those of the part
    val, test = rerank.part_data(workspace, "val", ["pop", "knn"]), rerank.part_data(workspace, "test", ["pop"])
    assert len(val.history) == 5 and len(test.history) == 8
    assert val.part == "val" and test.part == "test" and list(test.lists) == ["pop"]
    assert set(val.lists) == {"pop", "knn"} and list(val.embeddings) == ["e"]
    assert val.profiles == {}  # the encode stage wrote no profiles here


def test_blocks_of_users_concatenate_to_the_whole_table(workspace):
    # catches users lost or repeated between blocks, and candidates beyond candidates_per_model kept
    whole = rerank.build_part(workspace, "val", ["pop", "knn"])
    blocks = list(rerank.iter_part(workspace, "val", ["pop", "knn"], block_users=1))
    assert [b["user_id"].unique().tolist() for b in blocks] == [[1], [2], [3]]
    pd.testing.assert_frame_equal(pd.concat(blocks, ignore_index=True), whole)
    assert whole["pop_rank"].max() == 2 and whole["knn_rank"].max() == 2
    # pop proposes items u, u+1; knn u+1, u+2 (mod 5): three distinct candidates per user
    assert whole.groupby("user_id").size().tolist() == [3, 3, 3]


def test_blocks_are_the_same_when_the_lists_are_not_in_user_order(workspace, caplog):
    # catches a block given the rows of other users when a list file is not sorted by user (the block's
    # rows taken in file order instead of block order, or the file streamed as if it were in order), and
    # the whole read not said
    whole = rerank.build_part(workspace, "val", ["pop", "knn"])
    for model in ("pop", "knn"):
        path = Path(workspace.params.paths.lists_dir) / model / "val.parquet"
        frame = pd.read_parquet(path)
        frame.sort_values(["user_id", "rank"], ascending=[False, True]).to_parquet(path)  # users 3, 2, 1
    assert not rerank._in_dense_order(path, workspace.maps)
    blocks = list(rerank.iter_part(workspace, "val", ["pop", "knn"], block_users=1))
    assert [b["user_id"].unique().tolist() for b in blocks] == [[1], [2], [3]]
    pd.testing.assert_frame_equal(pd.concat(blocks, ignore_index=True), whole)
    warned = [r.getMessage() for r in caplog.records if "dense order" in r.getMessage()]
    assert (
        warned[-1] == f"{path}: users not in dense order, so the list is read whole; `recforge stage train` rewrites it"
    )


@pytest.mark.parametrize("block_users", [1, 2, 5])
def test_list_files_read_a_few_rows_at_a_time_give_the_frames_blocks(workspace, monkeypatch, caplog, block_users):
    # catches a list file's rows lost or repeated where a batch ends inside a block (the pending rows dropped,
    # or yielded twice), blocks yielded out of turn, rows of users unknown to the maps kept, and a file in
    # dense order read whole instead of streamed: batches of 2 rows split every user's 3 rows
    for model in ("pop", "knn"):
        path = Path(workspace.params.paths.lists_dir) / model / "val.parquet"
        frame = pd.read_parquet(path)
        if model == "knn":  # knn proposes nothing to user 2: its block needs the file's empty frame
            frame = frame[frame["user_id"] != 2]
        unknown = pd.DataFrame({"user_id": [0, 0, 99], "item_id": [100] * 3, "rank": [1] * 3, "score": [9.0] * 3})
        # a first batch of unknown users only, and a column no one reads
        pd.concat([unknown.iloc[:2], frame, unknown.iloc[2:]], ignore_index=True).assign(note="x").to_parquet(path)
    monkeypatch.setattr(rerank, "LIST_BATCH_ROWS", 2)
    in_memory = rerank.read_lists(workspace.params, ["pop", "knn"], "val")
    want = list(rerank.iter_part(workspace, "val", ["pop", "knn"], block_users=block_users, lists=in_memory))
    got = list(rerank.iter_part(workspace, "val", ["pop", "knn"], block_users=block_users))
    assert len(got) == len(want) == -(-3 // block_users)
    for g, w in zip(got, want, strict=True):
        pd.testing.assert_frame_equal(g, w)
    assert sorted(pd.concat(got)["user_id"].unique()) == [1, 2, 3]
    assert "read whole" not in caplog.text


def test_list_batches_cut_at_the_rank_and_read_a_file_in_pieces(workspace, monkeypatch):
    # catches the rank cut dropped or off by one, a file read whole or in pieces of another size than asked
    # (LIST_BATCH_ROWS when no size is given), and a frame cut into pieces
    path = Path(workspace.params.paths.lists_dir) / "pop" / "val.parquet"  # 3 users x ranks 1, 2, 3
    monkeypatch.setattr(rerank, "LIST_BATCH_ROWS", 4)
    pieces = list(rerank.list_batches(path, 2))
    assert [len(p) for p in pieces] == [3, 3, 0]  # raw pieces of 4, 4, 1 rows, rank 3 dropped from each
    assert pd.concat(pieces)["rank"].max() == 2 and list(pieces[0].columns) == rerank.LIST_COLUMNS
    pd.read_parquet(path).assign(note="x").to_parquet(path)  # a column no one reads is not read
    assert list(next(rerank.list_batches(path, 2)).columns) == rerank.LIST_COLUMNS
    assert [len(p) for p in rerank.list_batches(path, 3, rows=2)] == [2, 2, 2, 2, 1]
    frame = pd.read_parquet(path)
    whole = list(rerank.list_batches(frame, 1))
    assert len(whole) == 1 and whole[0]["user_id"].tolist() == [1, 2, 3]


def test_dense_order_is_checked_across_batches_and_ignores_unknown_users(workspace, monkeypatch):
    # catches the order checked within each batch only (the last user of the previous batch forgotten), and
    # users unknown to the maps (-1) counted as out of order
    path = Path(workspace.params.paths.lists_dir) / "pop" / "val.parquet"
    frame = pd.read_parquet(path)
    monkeypatch.setattr(rerank, "LIST_BATCH_ROWS", 3)  # one user a batch
    frame.sort_values("user_id", ascending=False, kind="stable").to_parquet(path)
    assert not rerank._in_dense_order(path, workspace.maps)
    with_unknown = pd.concat([frame.iloc[:4], frame.iloc[:1].assign(user_id=99), frame.iloc[4:]])
    with_unknown.to_parquet(path)
    assert rerank._in_dense_order(path, workspace.maps)
    pd.concat([frame.iloc[3:], frame.iloc[:3]]).to_parquet(path)  # users 2, 3, then 1: dense 0 out of order
    assert not rerank._in_dense_order(path, workspace.maps)


def test_a_list_file_out_of_order_while_streamed_is_an_error(workspace):
    # catches a file that turns out of order mid-read being streamed on (blocks would miss rows silently)
    path = Path(workspace.params.paths.lists_dir) / "pop" / "val.parquet"
    blocks = rerank._Blocks(path, workspace.maps, 1, 2)
    frame = pd.read_parquet(path)
    backwards = iter([frame[frame["user_id"] == 2], frame[frame["user_id"] == 1]])
    with pytest.raises(RecforgeError, match="users are not in dense order; run `recforge stage train` again"):
        list(blocks._from_file(backwards))
    within = iter([frame.iloc[::-1]])
    with pytest.raises(RecforgeError, match="not in dense order"):
        list(blocks._from_file(within))


def test_list_files_list_their_users_in_dense_order(workspace):
    # catches part_users (the users the train stage writes lists for, in that order) returning the split's
    # order or repeating a user: the rerank stage could then not stream the lists
    from recforge.stages.train import part_users

    split = Path(workspace.params.paths.split_dir) / "val.parquet"
    pd.read_parquet(split).iloc[[2, 0, 1, 2]].to_parquet(split)  # users 3, 1, 2, 3
    users = part_users(Workspace(workspace.params), "val")
    assert users.tolist() == [1, 2, 3]


def test_training_table_labels_are_the_validation_targets(workspace):
    # catches labels taken from another part, and group sizes that do not match the rows
    frame, labels, groups = rerank.training_table(workspace)
    positives = frame.loc[labels == 1, ["user_id", "item_id"]].values.tolist()
    assert positives == [[1, 102], [2, 103], [3, 104]]
    assert groups.tolist() == [3, 3, 3]


def test_ranked_lists_break_ties_by_item_and_cut_at_k():
    # catches ties broken by row order, the cut at k missing, and the list dtypes
    frame = pd.DataFrame(
        {"user": [0, 0, 0, 1], "user_id": [7, 7, 7, 8], "item": [3, 1, 2, 0], "item_id": [13, 11, 12, 10]}
    )
    lists = rerank.ranked_lists(frame, np.array([0.5, 0.5, 0.9, 0.1]), 2)
    assert lists[["user_id", "item_id", "rank"]].values.tolist() == [[7, 12, 1], [7, 11, 2], [8, 10, 1]]
    assert lists["rank"].dtype == np.int32 and lists["score"].dtype == np.float32


def test_make_reranker_passes_the_settings(monkeypatch):
    # catches a setting (folds, leaves, rate, rounds, seed, the Dask address) not reaching the plugin, and
    # rerank.options not overriding them
    captured = {}
    monkeypatch.setattr(
        rerank.registry.rerankers, "create", lambda name, **options: captured.update(name=name, **options)
    )
    params = load_params(
        None,
        [
            "seed=4",
            "rerank.folds=2",
            "rerank.num_leaves=7",
            "rerank.learning_rate=0.2",
            "rerank.num_boost_round=9",
            "rerank.early_stopping_rounds=3",
            "rerank.distributed=true",
            "orchestration.dask_address=tcp://127.0.0.1:1",
            "orchestration.dask_workers=3",
            "rerank.options={num_leaves: 5, min_data_in_leaf: 2}",
        ],
    )
    rerank.make_reranker(params, features=["rrf"])
    assert captured == {
        "name": "lambdarank",
        "folds": 2,
        "repeats": 1,
        "num_leaves": 5,
        "learning_rate": 0.2,
        "num_boost_round": 9,
        "early_stopping_rounds": 3,
        "seed": 4,
        "distributed": True,
        "dask_address": "tcp://127.0.0.1:1",
        "dask_workers": 3,
        "min_data_in_leaf": 2,
        "features": ["rrf"],
    }
    captured.clear()
    rerank.make_reranker(load_params(None, []))
    assert "distributed" not in captured and "features" not in captured


def test_load_reranker_says_what_is_missing(tmp_path):
    # catches a missing or fallback re-ranker loaded as if trained
    from recforge.artifacts import write_meta

    params = load_params(None, tmp_overrides(tmp_path))
    with pytest.raises(RecforgeError, match="no trained re-ranker; run `recforge stage rerank`"):
        rerank.load_reranker(params)
    directory = Path(params.paths.models_dir) / "rerank"
    directory.mkdir(parents=True)
    write_meta(directory, {"fallback": "pop"})
    with pytest.raises(RecforgeError, match=r"no re-ranker was trained \(too little validation data; lists use pop\)"):
        rerank.load_reranker(params)


def test_ranked_lists_with_maps_equal_a_pandas_reference_over_ties_and_unsorted_rows():
    # catches ids looked up by row instead of by dense index after the cut, ranks that restart in the wrong place
    # when a user's rows are not contiguous, and ties broken by row order (the reference: a stable pandas sort)
    from recforge.interactions import IdMaps

    rng = np.random.default_rng(3)
    n = 400
    pairs = rng.permutation(40 * 30)[:n]
    users, items = pairs // 30, pairs % 30
    scores = rng.integers(0, 4, n) / 4.0  # many ties
    maps = IdMaps(user_ids=pd.Index([f"u{u}" for u in range(40)]), item_ids=pd.Index(1000 + np.arange(30)))
    frame = pd.DataFrame({"user": users, "item": items})
    got = rerank.ranked_lists(frame, scores, 5, maps=maps)
    table = frame.assign(score=scores).sort_values(["user", "score", "item"], ascending=[True, False, True])
    table["rank"] = table.groupby("user").cumcount() + 1
    table = table[table["rank"] <= 5]
    assert got["user_id"].tolist() == [f"u{u}" for u in table["user"]]
    assert got["item_id"].tolist() == (1000 + table["item"]).tolist()
    assert got["rank"].tolist() == table["rank"].tolist() and got["score"].tolist() == table["score"].tolist()
    with_ids = frame.assign(user_id=maps.user_ids.to_numpy()[users], item_id=maps.item_ids.to_numpy()[items])
    pd.testing.assert_frame_equal(rerank.ranked_lists(with_ids, scores, 5), got)
    empty = rerank.ranked_lists(frame.iloc[:0], scores[:0], 5, maps=maps)
    assert empty.empty and list(empty.columns) == ["user_id", "item_id", "rank", "score"]
