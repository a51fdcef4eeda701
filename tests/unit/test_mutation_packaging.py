"""recforge.packaging: hashes, the manifest's guards, checked copies, build_package and Package.

Packages are built in the tests (packaging.py is what is mutated) from tiny trained workspaces cached on disk
(tests/unit/tiny_workspace.py: popularity, tfidf embeddings and profiles; and a two-stage one with a small
re-ranker). A test that tampers with a workspace copies it first (about 1 MB). Each test names the bug it catches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from datetime import UTC
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from recforge import packaging
from recforge.artifacts import sha256_file
from recforge.errors import RecforgeError
from recforge.packaging import Package, build_package
from recforge.params import load_params
from recforge.workspace import Workspace
from tests.conftest import tmp_overrides
from tests.unit import tiny_workspace
from tests.unit.tiny_workspace import workspace_params


@pytest.fixture(autouse=True)
def _one_openmp_thread():
    """LightGBM (the re-ranker's scoring) on one OpenMP thread: mutmut forks a process per mutant from one
    that already ran LightGBM, and libgomp's thread pool does not survive a fork (the child hangs)."""
    with threadpool_limits(1, user_api="openmp"):
        yield


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _own_workspace(tmp_path: Path, *, rerank: bool = False, extra: tuple[str, ...] = ()):
    """A copy of the cached workspace under tmp_path/ws (to tamper with) and its params."""
    source = Path(workspace_params(rerank=rerank).paths.cache_dir).parent
    root = tmp_path / "ws"
    shutil.copytree(source, root, ignore=shutil.ignore_patterns("*.lock", ".recforge-cache"))
    overrides = tiny_workspace.RERANK_OVERRIDES if rerank else tiny_workspace.OVERRIDES
    return root, load_params(None, tmp_overrides(root) + overrides + list(extra))


@pytest.fixture
def built(tmp_path):
    """(params, package directory, manifest) of the plain workspace's package. Built for each test, not once per
    module: mutmut runs, for a mutant, only the tests that called the mutated function themselves, and a module
    fixture's build would count for its first test only."""
    params = workspace_params()
    directory = tmp_path / "built" / "package"
    manifest = build_package(params, directory)
    return params, directory, manifest


@pytest.fixture
def package(built) -> Path:
    """The built package, to tamper with."""
    return built[1]


def _rewrite_manifest(directory: Path, change) -> None:
    manifest = json.loads((directory / "manifest.json").read_text())
    change(manifest)
    (directory / "manifest.json").write_text(json.dumps(manifest))


# ---- hashes ----------------------------------------------------------------------------------------------


def test_params_hash_is_the_sha256_of_the_trained_sections():
    # catches a section left out of (or added to) the hash, the keys not sorted, and the hash of something else
    params = workspace_params()
    data = {k: v for k, v in params.to_dict().items() if k not in ("paths", "serve", "orchestration", "feedback")}
    expected = _sha(json.dumps(data, sort_keys=True, default=str).encode())
    assert packaging.params_hash(params) == expected


def test_params_hash_ignores_where_files_live_and_how_it_is_served(tmp_path):
    # catches each of the unhashed sections hashed (a new serving port or store path would be a new version)
    # and a trained setting left out
    base = packaging.params_hash(workspace_params())
    moved = tmp_overrides(tmp_path)  # paths and feedback's url / spans
    same = workspace_params(*moved, "serve.port=4000", "orchestration.dask_workers=7", "feedback.staleness_s=9")
    assert packaging.params_hash(same) == base
    for change in (
        "paths.reports_dir=/elsewhere",
        "serve.port=4001",
        "orchestration.runner=dask",
        "feedback.foldin=true",
    ):
        assert packaging.params_hash(workspace_params(change)) == base, change
    assert packaging.params_hash(workspace_params("seed=1")) != base
    assert packaging.params_hash(workspace_params("promote.floor=0.5")) != base


def test_data_hash_covers_the_split_and_the_items():
    # catches a file left out, the order changed, or the file names not hashed with the digests
    params = workspace_params()
    digest = hashlib.sha256()
    split, canonical = Path(params.paths.split_dir), Path(params.paths.canonical_dir)
    for path in (split / "train.parquet", split / "val.parquet", split / "test.parquet", canonical / "items.parquet"):
        digest.update(path.name.encode())
        digest.update(sha256_file(path).encode())
    assert packaging.data_hash(params) == digest.hexdigest()
    version = packaging.model_version(params)
    assert version == f"d{digest.hexdigest()[:12]}-p{packaging.params_hash(params)[:12]}"


def test_data_hash_without_the_split_names_the_file(tmp_path):
    # catches the missing-file error changed or hashing on without the split
    params = workspace_params(f"paths.split_dir={tmp_path}")
    with pytest.raises(RecforgeError) as info:
        packaging.data_hash(params)
    assert str(info.value) == (
        f"{tmp_path / 'train.parquet'}: not found; run the pipeline (`recforge run`) before packaging"
    )


def test_content_hash_and_model_tag_exactly():
    # catches the content hash not over the sorted (name, digest) pairs, and the tag's parts or widths changed
    files = {"b": "2" * 64, "a": "1" * 64}
    expected = _sha(json.dumps([["a", "1" * 64], ["b", "2" * 64]]).encode())
    assert packaging.content_hash(files) == expected
    manifest = {"version": "dabc-pdef", "content_hash": "0123456789abcdef"}
    assert packaging.model_tag(manifest) == "recforge-model:dabc-pdef-c0123456789ab"


# ---- the file list -----------------------------------------------------------------------------------------


def _tree(root: Path) -> Path:
    for name, text in {
        "b.txt": "b",
        "manifest.json": "{}",
        "model.yaml": "m",
        "sub/manifest.json": "inner",
        "sub/model.yaml": "inner",
        "sub/deeper/a.bin": "a",
    }.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "empty").mkdir()
    return root


def test_package_files_skip_only_the_top_level_manifest_and_store_record(tmp_path):
    # catches the skip applied at every level, the store's model.yaml packaged, the names not sorted or not
    # relative POSIX paths, and directories listed as files
    root = _tree(tmp_path)
    assert packaging.package_files(root) == ["b.txt", "sub/deeper/a.bin", "sub/manifest.json", "sub/model.yaml"]
    assert packaging.package_files(root, skip=()) == [
        "b.txt",
        "manifest.json",
        "model.yaml",
        "sub/deeper/a.bin",
        "sub/manifest.json",
        "sub/model.yaml",
    ]
    assert packaging.package_checksums(root) == {
        "b.txt": _sha(b"b"),
        "sub/deeper/a.bin": _sha(b"a"),
        "sub/manifest.json": _sha(b"inner"),
        "sub/model.yaml": _sha(b"inner"),
    }


@pytest.mark.parametrize("kind", ["file link", "dir link", "fifo"])
def test_package_files_refuse_links_and_special_files(tmp_path, kind):
    # catches a link (to a file or to a directory) or a special file accepted in a package, and the message
    root = _tree(tmp_path / "p")
    where = root / "sub" / "x"
    if kind == "file link":
        where.symlink_to(root / "b.txt")
    elif kind == "dir link":
        where.symlink_to(root / "empty", target_is_directory=True)
    else:
        os.mkfifo(where)
    with pytest.raises(RecforgeError) as info:
        packaging.package_files(root)
    assert str(info.value) == f"{where}: a link or special file; a package holds regular files only"


# ---- check_manifest --------------------------------------------------------------------------------------


def _listed(root: Path) -> dict:
    return {"checksums": packaging.package_checksums(root)}


def test_check_manifest_accepts_exactly_the_files(tmp_path):
    # catches a correct manifest refused
    root = _tree(tmp_path)
    packaging.check_manifest(root, _listed(root))


@pytest.mark.parametrize("checksums", [None, {}, [], "x"])
def test_check_manifest_without_files(tmp_path, checksums):
    # catches an empty or malformed file list accepted (nothing would be verified) and the message
    with pytest.raises(RecforgeError) as info:
        packaging.check_manifest(tmp_path, {"checksums": checksums})
    assert str(info.value) == f"{tmp_path}: the manifest lists no files; repackage (`recforge package`)"
    with pytest.raises(RecforgeError, match="lists no files"):
        packaging.check_manifest(tmp_path, {})


@pytest.mark.parametrize("digest", [5, "0" * 63, "0" * 65, None])
def test_check_manifest_needs_a_sha256_per_file(tmp_path, digest):
    # catches a digest that is not a 64-character string accepted, and the message
    root = _tree(tmp_path)
    manifest = _listed(root)
    manifest["checksums"]["b.txt"] = digest
    with pytest.raises(RecforgeError) as info:
        packaging.check_manifest(root, manifest)
    assert str(info.value) == f"{root}/manifest.json: 'b.txt' has no sha256"


def test_check_manifest_refuses_keys_outside(tmp_path):
    # catches the key check dropped (a manifest pointing outside the package) and where it names
    root = _tree(tmp_path)
    manifest = _listed(root)
    manifest["checksums"]["../b.txt"] = "0" * 64
    with pytest.raises(RecforgeError) as info:
        packaging.check_manifest(root, manifest)
    assert str(info.value) == f"{root}/manifest.json: '../b.txt' is not a relative path inside the directory"


def test_check_manifest_missing_and_unlisted_files_name_five(tmp_path):
    # catches a missing or an unlisted file accepted, the names not sorted or not capped at five, the messages
    root = _tree(tmp_path)
    manifest = _listed(root)
    for i in range(6):
        manifest["checksums"][f"gone{i}"] = "0" * 64
    with pytest.raises(RecforgeError) as info:
        packaging.check_manifest(root, manifest)
    assert str(info.value) == (
        f"{root}: listed in the manifest but missing: gone0, gone1, gone2, gone3, gone4; repackage"
    )
    manifest = _listed(root)
    for i in range(6):
        (root / f"new{i}").write_text("x")
    with pytest.raises(RecforgeError) as info:
        packaging.check_manifest(root, manifest, verify=False)  # the list is checked without verify too
    assert str(info.value) == f"{root}: files not in the manifest: new0, new1, new2, new3, new4; repackage"


def test_check_manifest_verifies_the_digests_only_with_verify(tmp_path):
    # catches the sha256s not checked by default, or checked with verify=False
    root = _tree(tmp_path)
    manifest = _listed(root)
    (root / "b.txt").write_text("changed")
    packaging.check_manifest(root, manifest, verify=False)
    with pytest.raises(RecforgeError, match="checksum mismatch"):
        packaging.check_manifest(root, manifest)


# ---- checked copies --------------------------------------------------------------------------------------


def test_copy_file_checked_copies_and_returns_the_sha256(tmp_path):
    # catches a copy that writes nothing or part (block size), a missing parent directory, the wrong digest
    data = os.urandom((1 << 20) + 17)  # more than one block
    (tmp_path / "src").write_bytes(data)
    dest = tmp_path / "a" / "b" / "dst"
    assert packaging._copy_file_checked(tmp_path / "src", dest) == _sha(data)
    assert dest.read_bytes() == data
    with pytest.raises(FileExistsError):  # never over an existing file
        packaging._copy_file_checked(tmp_path / "src", dest)


def test_copy_file_checked_refuses_links_and_directories(tmp_path):
    # catches a link followed into the package (or a directory treated as a file), and the message
    (tmp_path / "real").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    for source in (tmp_path / "link", tmp_path, tmp_path / "none"):
        with pytest.raises(RecforgeError) as info:
            packaging._copy_file_checked(source, tmp_path / "out" / "f")
        assert str(info.value) == f"{source}: not a regular file; refusing to package it"
    assert not (tmp_path / "out").exists()


def test_copy_checked_tree_and_file(tmp_path):
    # catches the keys not the copies' paths, a tree copied flat, a file copied as a tree
    src = _tree(tmp_path / "src")
    copied = packaging._copy_checked(src, tmp_path / "dst")
    assert copied == {(tmp_path / "dst" / name).as_posix(): digest for name, digest in _all(src).items()}
    assert (tmp_path / "dst" / "sub" / "deeper" / "a.bin").read_text() == "a"
    one = packaging._copy_checked(src / "b.txt", tmp_path / "one.txt")
    assert one == {(tmp_path / "one.txt").as_posix(): _sha(b"b")}


def _all(root: Path) -> dict:
    return {name: sha256_file(root / name) for name in packaging.package_files(root, skip=())}


def test_copy_checked_recorded_verifies_the_model_before_and_after(tmp_path):
    # catches a model copied without its meta.json checksums verified, and the default "no trained model"
    from recforge.artifacts import write_meta

    model = tmp_path / "model"
    model.mkdir()
    (model / "w.bin").write_bytes(b"weights")
    write_meta(model, {"plugin": "x"})
    assert set(packaging._copy_checked(model, tmp_path / "ok", recorded=True)) == {
        (tmp_path / "ok" / "meta.json").as_posix(),
        (tmp_path / "ok" / "w.bin").as_posix(),
    }
    (model / "w.bin").write_bytes(b"tampered")
    with pytest.raises(RecforgeError, match="checksum mismatch"):
        packaging._copy_checked(model, tmp_path / "bad", recorded=True)
    assert not (tmp_path / "bad").exists()  # checked before anything is copied
    with pytest.raises(RecforgeError) as info:
        packaging._copy_checked(tmp_path / "empty", tmp_path / "x", recorded=True)
    assert str(info.value) == f"{tmp_path / 'empty'}: no trained model"
    with pytest.raises(RecforgeError) as info:
        packaging._copy_checked(tmp_path / "empty", tmp_path / "x", recorded=True, missing="gone")
    assert str(info.value) == f"{tmp_path / 'empty'}: gone"


# ---- building a package ----------------------------------------------------------------------------------


def test_trained_models_in_order_and_missing_named(tmp_path):
    # catches the models reordered or an untrained model packaged silently, and the message
    params = workspace_params()
    assert packaging._trained_models(params) == ["popularity"]
    more = workspace_params("recommenders={itemknn: {}, popularity: {}, gru: {plugin: sequential}}")
    with pytest.raises(RecforgeError) as info:
        packaging._trained_models(more)
    assert str(info.value) == "models not trained: itemknn, gru; run `recforge stage train`"


def test_build_package_manifest(built):
    # catches any manifest field wrong or renamed: format, name, version and hashes, models and their plugins,
    # encoders, rerank, counts, the busiest user as example, the content hash over exactly the files, the tag
    params, directory, manifest = built
    workspace = Workspace(params)
    events = workspace.events("train+val")
    files = packaging.package_checksums(directory)
    busiest = workspace.maps.user_ids[int(np.argmax(np.diff(events.bounds)))]
    assert set(manifest) == {
        "format", "name", "version", "data_hash", "params_hash", "created", "models", "encoders", "rerank",
        "counts", "example_user_id", "content_hash", "checksums", "tag",
    }  # fmt: skip
    assert manifest["format"] == 1 and manifest["name"] == "recforge-model"
    assert manifest["version"] == packaging.model_version(params)
    assert manifest["data_hash"] == packaging.data_hash(params)
    assert manifest["params_hash"] == packaging.params_hash(params)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", manifest["created"])
    assert manifest["models"] == {"popularity": "popularity"} and manifest["encoders"] == ["tfidf"]
    assert manifest["rerank"] is False
    assert manifest["counts"] == {"users": events.n_users, "items": events.n_items, "interactions": len(events)}
    assert manifest["example_user_id"] == busiest and type(manifest["example_user_id"]) is int
    assert manifest["checksums"] == files and manifest["content_hash"] == packaging.content_hash(files)
    assert manifest["tag"] == packaging.model_tag(manifest)
    assert (directory / "manifest.json").read_text() == json.dumps(manifest, indent=2, default=str)
    assert sorted(files) == [
        "embeddings/encoders/tfidf/tfidf.json",
        "embeddings/encoders/tfidf/tfidf.npz",
        "embeddings/tfidf.npy",
        "history.npz",
        "items.parquet",
        "metrics.json",
        "models/popularity/config.json",
        "models/popularity/meta.json",
        "models/popularity/popularity.npz",
        "params.json",
        "profiles/tfidf.npz",
        "profiles/users.json",
        "users.parquet",
    ]


def test_build_package_copies_equal_what_was_trained(built):
    # catches a packaged file that differs from the workspace's (models, embeddings, encoder state, profiles),
    # the items or users tables changed, params or metrics not what was trained
    params, directory, _ = built
    models, embeddings = Path(params.paths.models_dir), Path(params.paths.embeddings_dir)
    profiles = Path(params.paths.profiles_dir) / "full"
    pairs = {
        "models/popularity/popularity.npz": models / "popularity" / "full" / "popularity.npz",
        "models/popularity/meta.json": models / "popularity" / "full" / "meta.json",
        "embeddings/tfidf.npy": embeddings / "tfidf.npy",
        "embeddings/encoders/tfidf/tfidf.npz": embeddings / "encoders" / "tfidf" / "tfidf.npz",
        "profiles/users.json": profiles / "users.json",
        "profiles/tfidf.npz": profiles / "tfidf.npz",
    }
    for packaged, source in pairs.items():
        assert (directory / packaged).read_bytes() == source.read_bytes(), packaged
    workspace = Workspace(params)
    pd.testing.assert_frame_equal(pd.read_parquet(directory / "items.parquet"), workspace.items)
    assert pd.read_parquet(directory / "users.parquet")["user_id"].tolist() == workspace.maps.user_ids.tolist()
    metrics = json.loads(Path(params.paths.metrics_file).read_text())
    assert (directory / "metrics.json").read_text() == json.dumps(metrics, indent=2)
    assert json.loads((directory / "params.json").read_text()) == params.to_dict()


def test_build_package_history_is_train_plus_val_in_time_order(built):
    # catches the history of another part, a field dropped (timestamps, ratings) or of the wrong dtype
    params, directory, _ = built
    events = Workspace(params).events("train+val")
    with np.load(directory / "history.npz") as data:
        assert sorted(data.files) == ["indptr", "items", "ratings", "timestamps"]
        assert data["indptr"].dtype == np.int64 and data["indptr"].tolist() == events.bounds.tolist()
        assert data["items"].dtype == np.int32 and data["items"].tolist() == events.item_ids.tolist()
        assert data["timestamps"].dtype == np.int64 and data["timestamps"].tolist() == events.timestamps.tolist()
        assert data["ratings"].dtype == np.float32 and np.allclose(data["ratings"], events.ratings)


def test_build_package_never_bakes_the_api_token(tmp_path):
    # catches the bearer token written into params.json (a secret in an artifact)
    params = workspace_params("serve.api_token=s3cret-token")
    (tmp_path / "p").mkdir()  # an existing empty directory is a valid destination too
    build_package(params, tmp_path / "p")
    text = (tmp_path / "p" / "params.json").read_text()
    assert "s3cret-token" not in text and json.loads(text)["serve"]["api_token"] is None
    assert text == json.dumps({**params.to_dict(), "serve": {**params.to_dict()["serve"], "api_token": None}}, indent=2)


def test_copy_artifacts_returns_every_copied_file(tmp_path):
    # catches the copied files' record losing earlier entries (each model, the re-ranker, embeddings, encoder
    # states, profiles must all be there): it is what "changed while packaging" is checked against
    for params in (workspace_params(), workspace_params(rerank=True)):
        dest = tmp_path / ("rerank" if params.rerank.enabled else "plain")
        encoders, copied = packaging._copy_artifacts(params, list(params.recommenders), dest)
        assert encoders == ["tfidf"]
        assert copied == packaging.package_checksums(dest)
        assert {name.split("/")[0] for name in copied} == {"models", "embeddings", "profiles"} | (
            {"rerank"} if params.rerank.enabled else set()
        )


def test_build_package_tables_without_an_index_column(built):
    # catches the items or users table written with its pandas index as an extra column
    import pyarrow.parquet as pq

    params, directory, _ = built
    assert pq.read_schema(directory / "items.parquet").names == list(Workspace(params).items.columns)
    assert pq.read_schema(directory / "users.parquet").names == ["user_id"]


def test_build_package_created_is_utc(tmp_path, monkeypatch):
    # catches the creation time written in local time while labelled Z
    import time
    from datetime import datetime

    monkeypatch.setenv("TZ", "Asia/Kolkata")  # UTC+05:30
    time.tzset()
    try:
        manifest = build_package(workspace_params(), tmp_path / "p")
    finally:
        monkeypatch.undo()
        time.tzset()
    created = datetime.strptime(manifest["created"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - created).total_seconds()) < 600


def test_build_package_without_metrics_or_embeddings(tmp_path):
    # catches a workspace without metrics.json, embeddings or profiles refused (or packaged with stale ones)
    params = workspace_params(
        f"paths.metrics_file={tmp_path / 'none.json'}",
        f"paths.embeddings_dir={tmp_path / 'no-emb'}",
        f"paths.profiles_dir={tmp_path / 'no-prof'}",
    )
    manifest = build_package(params, tmp_path / "p")
    assert json.loads((tmp_path / "p" / "metrics.json").read_text()) == {}
    assert manifest["encoders"] == [] and not (tmp_path / "p" / "embeddings").exists()
    assert not (tmp_path / "p" / "profiles").exists()


def test_build_package_refuses_embeddings_of_the_wrong_shape(tmp_path):
    # catches embeddings with a row per item missing packaged, and the message
    root, params = _own_workspace(tmp_path)
    path = root / "artifacts" / "embeddings" / "tfidf.npy"
    rows = np.load(path)
    np.save(path, rows[:-1])
    with pytest.raises(RecforgeError) as info:
        build_package(params, tmp_path / "p")
    assert str(info.value) == (f"{path}: {len(rows) - 1} rows for {len(rows)} items; re-run `recforge stage encode`")


def test_build_package_refuses_unreadable_profiles(tmp_path):
    # catches profiles that do not load packaged anyway, and the message
    root, params = _own_workspace(tmp_path)
    users = root / "artifacts" / "profiles" / "full" / "users.json"
    meta = json.loads(users.read_text())
    del meta["genres"]
    users.write_text(json.dumps(meta))
    with pytest.raises(RecforgeError) as info:
        build_package(params, tmp_path / "p")
    assert str(info.value) == (
        f"{root / 'artifacts' / 'profiles' / 'full'}: unreadable profiles ('genres'); re-run `recforge stage encode`"
    )


def test_build_package_refuses_a_tampered_model(tmp_path):
    # catches a model whose files differ from its meta.json checksums packaged
    root, params = _own_workspace(tmp_path)
    npz = root / "artifacts" / "models" / "popularity" / "full" / "popularity.npz"
    npz.write_bytes(npz.read_bytes()[:-1] + b"!")
    with pytest.raises(RecforgeError, match="checksum mismatch"):
        build_package(params, tmp_path / "p")


# ---- the re-ranker ---------------------------------------------------------------------------------------


@pytest.fixture
def rerank_built(tmp_path):
    params = workspace_params(rerank=True)
    directory = tmp_path / "rerank" / "package"
    return params, directory, build_package(params, directory)


def _offline(params) -> pd.DataFrame:
    return pd.read_parquet(Path(params.paths.lists_dir) / "rerank" / "test.parquet")


def _served_lists(directory: Path, params) -> pd.DataFrame:
    indptr, items, scores, length = Package.open(directory).rerank_lists()
    maps = Workspace(params).maps
    users = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    rank = np.arange(len(items)) - indptr[users] + 1
    frame = pd.DataFrame(
        {"user_id": maps.user_ids[users], "item_id": maps.item_ids[items], "rank": rank, "score": scores}
    )
    return frame, length


def test_build_package_precomputes_the_rerank_stage_lists(rerank_built):
    # catches the precomputed lists not the rerank stage's (order within a user, users mixed up, scores or
    # dtypes wrong, the list length not evaluate.list_length), and the re-ranker not packaged
    params, directory, manifest = rerank_built
    assert manifest["rerank"] is True and manifest["models"] == {"popularity": "popularity", "itemknn": "itemknn"}
    assert {"rerank/meta.json", "rerank_lists.npz"} <= set(manifest["checksums"])
    with np.load(directory / "rerank_lists.npz") as data:
        assert data["indptr"].dtype == np.int64 and data["items"].dtype == np.int32
        assert data["scores"].dtype == np.float32 and data["length"] == 5
    served, length = _served_lists(directory, params)
    indptr, items, scores, length = Package.open(directory).rerank_lists()
    assert items.dtype == np.int64 and type(length) is int and length == 5  # what the service indexes with
    offline = _offline(params).sort_values(["user_id", "rank"]).reset_index(drop=True)
    expected = offline.sort_values("user_id", key=lambda s: Workspace(params).maps.user_index(s), kind="stable")
    pd.testing.assert_frame_equal(
        served.reset_index(drop=True), expected.reset_index(drop=True), check_dtype=False, atol=1e-6
    )


def test_build_package_scores_known_users_without_test_lists(tmp_path, rerank_built, caplog):
    # catches users without test events left without a precomputed list, or scored otherwise than the rerank
    # stage scores (its own code path: the same lists as the stage's), the log line, and the scores stored at
    # the lists file's precision instead of float32
    params = workspace_params(f"paths.lists_dir={tmp_path / 'lists'}", rerank=True)
    offline = _offline(workspace_params(rerank=True))
    dropped = offline["user_id"].drop_duplicates().iloc[[0, 5, 7]].tolist()
    (tmp_path / "lists" / "rerank").mkdir(parents=True)
    kept = offline[~offline["user_id"].isin(dropped)].astype({"score": "float64"})  # scores stored as float32
    kept.to_parquet(tmp_path / "lists" / "rerank" / "test.parquet")
    with caplog.at_level(logging.INFO, logger="recforge.packaging"):
        build_package(params, tmp_path / "p")
    assert "package: scoring 3 known users without test events through the re-ranker" in caplog.messages
    with np.load(tmp_path / "p" / "rerank_lists.npz") as data:
        assert data["scores"].dtype == np.float32
    served, _ = _served_lists(tmp_path / "p", params)
    full, _ = _served_lists(rerank_built[1], params)
    pd.testing.assert_frame_equal(served, full, check_dtype=False, atol=1e-5)


def test_build_package_without_the_rerank_lists_warns(tmp_path, caplog):
    # catches a missing rerank test list failing the package (the re-ranker still answers online) or leaving a
    # stale lists file, and the warning
    params = workspace_params(f"paths.lists_dir={tmp_path / 'lists'}", rerank=True)
    with caplog.at_level(logging.WARNING, logger="recforge.packaging"):
        manifest = build_package(params, tmp_path / "p")
    path = tmp_path / "lists" / "rerank" / "test.parquet"
    assert caplog.messages == [f"{path}: not found; no precomputed re-ranked lists (run `recforge stage rerank`)"]
    assert manifest["rerank"] is True and "rerank_lists.npz" not in manifest["checksums"]
    assert Package.open(tmp_path / "p").rerank_lists() is None


def test_build_package_refuses_lists_of_unknown_ids(tmp_path):
    # catches lists of users or items the id maps do not know packaged (dense index -1), and the message
    params = workspace_params(f"paths.lists_dir={tmp_path / 'lists'}", rerank=True)
    offline = _offline(workspace_params(rerank=True))
    (tmp_path / "lists" / "rerank").mkdir(parents=True)
    path = tmp_path / "lists" / "rerank" / "test.parquet"
    for column in ("user_id", "item_id"):
        bad = offline.copy()
        bad.loc[0, column] = 999999
        bad.to_parquet(path)
        with pytest.raises(RecforgeError) as info:
            build_package(params, tmp_path / column)
        assert str(info.value) == f"{path}: ids not in the workspace's id maps; re-run `recforge stage rerank`"


def test_build_package_fallback_reranker_has_no_lists(tmp_path):
    # catches the precomputed lists written for a fallback re-ranker (it ranks by one model, online)
    root, params = _own_workspace(tmp_path, rerank=True)
    folder = root / "artifacts" / "models" / "rerank"
    meta = json.loads((folder / "meta.json").read_text())
    meta["fallback"] = "popularity"
    (folder / "meta.json").write_text(json.dumps(meta))
    manifest = build_package(params, tmp_path / "p")
    assert manifest["rerank"] is True and not (tmp_path / "p" / "rerank_lists.npz").exists()


def test_build_package_rerank_needs_its_meta_and_the_setting(tmp_path):
    # catches a re-ranker without meta.json packaged (and its message), and one packaged with rerank disabled
    root, params = _own_workspace(tmp_path, rerank=True)
    folder = root / "artifacts" / "models" / "rerank"
    off = build_package(
        load_params(None, tmp_overrides(root) + tiny_workspace.RERANK_OVERRIDES + ["rerank.enabled=false"]),
        tmp_path / "off",
    )
    assert off["rerank"] is False and not (tmp_path / "off" / "rerank").exists()
    (folder / "meta.json").unlink()
    with pytest.raises(RecforgeError) as info:
        build_package(params, tmp_path / "p")
    assert str(info.value) == f"{folder}: no trained re-ranker; run `recforge stage rerank`"


# ---- opening a package -----------------------------------------------------------------------------------


def test_open_reads_what_was_built(built):
    # catches the manifest, params or verify flag not what the package holds, and the readers reading the wrong
    # file: items, id maps, metrics, encoders, history, events, profiles, embeddings
    params, directory, manifest = built
    package = Package.open(directory)
    assert package.directory == directory and package.manifest == manifest and package.verify is True
    assert Package.open(str(directory), verify=False).verify is False
    assert package.params.to_dict() == {**params.to_dict(), "serve": {**params.to_dict()["serve"], "api_token": None}}
    workspace = Workspace(params)
    pd.testing.assert_frame_equal(package.items, workspace.items)
    assert package.maps.user_ids.tolist() == workspace.maps.user_ids.tolist()
    assert package.maps.item_ids.tolist() == workspace.maps.item_ids.tolist()
    assert package.maps.user_ids.name == "user_id" and package.maps.item_ids.name == "item_id"
    assert package.metrics == json.loads(Path(params.paths.metrics_file).read_text())
    assert package.encoders == ["tfidf"]
    assert package.rerank_lists() is None
    assert package.profiles_dir == directory / "profiles"
    assert np.array_equal(package.embeddings("tfidf"), workspace.embeddings("tfidf"))


def test_open_history_and_events(built):
    # catches the history or events not the train+val interactions (users, items, times, ratings, sizes)
    params, directory, _ = built
    package = Package.open(directory)
    events = Workspace(params).events("train+val")
    indptr, items = package.history()
    assert indptr.tolist() == events.bounds.tolist() and items.tolist() == events.item_ids.tolist()
    loaded = package.events()
    assert loaded.n_users == events.n_users and loaded.n_items == len(package.items)
    assert loaded.user_ids.tolist() == events.user_ids.tolist() and loaded.user_ids.dtype == np.int32
    assert loaded.item_ids.tolist() == events.item_ids.tolist()
    assert loaded.timestamps.tolist() == events.timestamps.tolist()
    assert np.allclose(loaded.ratings, events.ratings)


def test_open_events_without_timestamps_or_ratings(package):
    # catches a history written without timestamps or ratings (an older package) failing to load
    with np.load(package / "history.npz") as data:
        indptr, items = data["indptr"], data["items"]
    np.savez(package / "history.npz", indptr=indptr, items=items)
    loaded = Package.open(package, verify=False).events()
    assert loaded.timestamps.tolist() == [0] * len(items) and loaded.timestamps.dtype == np.int64
    assert loaded.ratings is None


def test_open_profiles_embeddings_models_and_encoder(built, caplog):
    # catches packaged profiles or models not loaded, a missing encoder's embeddings not named, and an
    # encoder that cannot load failing the service instead of a warning and None
    from recforge import registry
    from recforge.profiles import UserProfiles

    params, directory, _ = built
    package = Package.open(directory)
    vectors = package.profiles(["tfidf", "word2vec"])
    assert list(vectors) == ["tfidf"]
    assert np.array_equal(vectors["tfidf"], UserProfiles.load(directory / "profiles", ["tfidf"]).vectors["tfidf"])
    assert package.profiles(["word2vec"]) == {}
    with pytest.raises(RecforgeError) as info:
        package.embeddings("word2vec")
    assert (
        str(info.value)
        == f"{directory / 'embeddings' / 'word2vec.npy'}: no embeddings for encoder 'word2vec' in the package"
    )
    models = package.load_models(Workspace(workspace_params("device=cpu")).context())
    assert list(models) == ["popularity"]
    assert isinstance(models["popularity"], registry.recommenders.get("popularity"))  # the model, not its meta
    assert isinstance(package.load_encoder("tfidf"), registry.encoders.get("tfidf"))
    with caplog.at_level(logging.WARNING, logger="recforge.packaging"):
        assert package.load_encoder("no-such-encoder") is None
    [message] = caplog.messages
    assert message.startswith("text encoder no-such-encoder unavailable (unknown encoder plugin 'no-such-encoder'")
    assert message.endswith("); /recommend/text falls back to popular")


def test_open_models_verify_their_files_unless_told_not_to(package, built):
    # catches the package's verify flag not passed on to the models' own meta.json checksum checks
    meta_path = package / "models" / "popularity" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["checksums"]["config.json"] = "0" * 64  # the model's record disagrees; the manifest is made to agree
    meta_path.write_text(json.dumps(meta))
    _rewrite_manifest(package, lambda m: m["checksums"].update({"models/popularity/meta.json": sha256_file(meta_path)}))
    context = Workspace(workspace_params("device=cpu")).context()
    with pytest.raises(RecforgeError, match="checksum mismatch"):
        Package.open(package).load_models(context)
    assert list(Package.open(package, verify=False).load_models(context)) == ["popularity"]


def test_open_refuses_what_is_not_a_package(tmp_path, package):
    # catches a directory without manifest or with another format opened, and the messages
    with pytest.raises(RecforgeError) as info:
        Package.open(tmp_path / "none")
    assert str(info.value) == f"{tmp_path / 'none'}: not a recforge package (no manifest.json); run `recforge package`"
    _rewrite_manifest(package, lambda m: m.__setitem__("format", 2))
    with pytest.raises(RecforgeError) as info:
        Package.open(package)
    assert str(info.value) == f"{package}: package format 2 is not 1"
    (package / "manifest.json").write_text("[1]")
    with pytest.raises(RecforgeError) as info:
        Package.open(package)
    assert str(info.value) == f"{package}: package format None is not 1"


def test_open_checks_the_file_list_even_without_verify(package):
    # catches Package.open skipping the manifest check, or verifying the digests with verify=False
    (package / "metrics.json").write_text('{"changed": 1}')
    assert Package.open(package, verify=False).metrics == {"changed": 1}
    with pytest.raises(RecforgeError, match="checksum mismatch"):
        Package.open(package)
    (package / "planted").write_text("x")
    with pytest.raises(RecforgeError, match="files not in the manifest: planted"):
        Package.open(package, verify=False)


def test_open_never_unpickles_package_files(package):
    # catches a package's arrays loaded with pickle allowed: a crafted package would run code when served
    hostile = np.array([{"a": 1}, None], dtype=object)
    np.save(package / "embeddings" / "tfidf.npy", hostile)
    np.savez(package / "history.npz", indptr=hostile, items=hostile)
    np.savez(package / "rerank_lists.npz", indptr=hostile, items=hostile, scores=hostile, length=hostile)
    opened = Package(directory=package, manifest={"encoders": []}, params=None, verify=False)
    for read in (lambda: opened.embeddings("tfidf"), opened.history, opened.events, opened.rerank_lists):
        with pytest.raises(ValueError, match="allow_pickle=False"):
            read()
