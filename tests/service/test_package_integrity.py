"""Package integrity: the manifest lists exactly the package's files, what is copied in is checked, and a
model-store tag derives from the content and is never rewritten. A real package from a tiny synthetic run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recforge.artifacts import sha256_file, write_meta
from recforge.errors import RecforgeError
from recforge.packaging import Package, build_package, content_hash, model_tag, package_files
from recforge.params import load_params
from recforge.pipeline import run_pipeline
from tests.conftest import PROJECT_ROOT, TINY, tmp_overrides

EXTRA = ["encode.encoders=[tfidf]"]  # embeddings, an encoder state and profiles in the package


def _params(root: Path, *extra: str):
    return load_params(None, tmp_overrides(root) + TINY + EXTRA + list(extra))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("integrity")
    run_pipeline(_params(root / "ws"))
    build_package(_params(root / "ws"), root / "package")
    return root


@pytest.fixture
def package(workspace, tmp_path) -> Path:
    """A fresh copy of the package to tamper with."""
    copy = tmp_path / "package"
    shutil.copytree(workspace / "package", copy)
    return copy


@pytest.fixture
def own_workspace(workspace, tmp_path) -> Path:
    """A copy of the trained workspace to tamper with (its params: _params(root))."""
    root = tmp_path / "ws"
    shutil.copytree(workspace / "ws", root)
    return root


def _manifest(directory: Path) -> dict:
    return json.loads((directory / "manifest.json").read_text())


def _rewrite_manifest(directory: Path, change) -> None:
    manifest = _manifest(directory)
    change(manifest)
    (directory / "manifest.json").write_text(json.dumps(manifest))


# ---- the manifest covers the package exactly -------------------------------------------------------------


def test_the_manifest_lists_exactly_every_packaged_file(workspace):
    directory = workspace / "package"
    manifest = _manifest(directory)
    listed = set(manifest["checksums"])
    assert (
        listed
        == set(package_files(directory))
        == {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file() and p.name != "manifest.json"}
    )
    assert {"embeddings/tfidf.npy", "profiles/users.json", "models/popularity/meta.json"} <= listed
    assert any(name.startswith("embeddings/encoders/tfidf/") for name in listed)
    assert manifest["content_hash"] == content_hash(manifest["checksums"])
    tag = f"recforge-model:{manifest['version']}-c{manifest['content_hash'][:12]}"
    assert model_tag(manifest) == manifest["tag"] == tag
    Package.open(directory)


def test_the_model_store_record_beside_a_package_is_allowed(package):
    (package / "model.yaml").write_text("name: recforge-model\n")  # what BentoML writes in a store entry
    Package.open(package)
    (package / "models" / "model.yaml").write_text("x")  # only at the top level
    with pytest.raises(RecforgeError, match="not in the manifest: models/model.yaml"):
        Package.open(package)


def _outside_file(package: Path) -> tuple[Path, str]:
    outside = package.parent / "outside.bin"
    outside.write_bytes(b"secret")
    return outside, sha256_file(outside)


def test_an_unlisted_file_is_an_error(package):
    (package / "models" / "popularity" / "extra.npz").write_bytes(b"planted")
    with pytest.raises(RecforgeError, match="not in the manifest: models/popularity/extra.npz"):
        Package.open(package)
    with pytest.raises(RecforgeError, match="not in the manifest"):
        Package.open(package, verify=False)  # the file list is checked even without the sha256s


def test_a_missing_file_is_an_error(package):
    (package / "embeddings" / "tfidf.npy").unlink()
    with pytest.raises(RecforgeError, match="missing: embeddings/tfidf.npy"):
        Package.open(package)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "dot", "backslash"])
def test_keys_outside_the_package_are_errors(package, kind):
    outside, digest = _outside_file(package)
    key = {
        "dotdot": "../outside.bin",
        "absolute": str(outside),
        "dot": "./metrics.json",
        "backslash": "models\\popularity\\meta.json",
    }[kind]
    _rewrite_manifest(package, lambda m: m["checksums"].__setitem__(key, digest))
    with pytest.raises(RecforgeError, match="is not a relative path inside the directory"):
        Package.open(package)


@pytest.mark.parametrize("checksums", [{}, None, [], {"items.parquet": 5}])
def test_an_empty_or_malformed_manifest_is_an_error(package, checksums):
    _rewrite_manifest(package, lambda m: m.__setitem__("checksums", checksums))
    with pytest.raises(RecforgeError, match="lists no files|has no sha256"):
        Package.open(package)


def test_a_link_in_the_package_is_an_error(package):
    target = package / "metrics.json"
    real = package.parent / "metrics.json"
    shutil.move(target, real)
    target.symlink_to(real)  # same content, so the sha256 would match
    with pytest.raises(RecforgeError, match="a link or special file"):
        Package.open(package)


def test_the_content_hash_covers_every_file_name_and_digest():
    files = {"a": "1" * 64, "b/c": "2" * 64}
    assert content_hash(files) == content_hash(dict(reversed(files.items())))
    assert content_hash(files) != content_hash({**files, "a": "3" * 64})
    assert content_hash(files) != content_hash({"a": "1" * 64, "b/d": "2" * 64})
    assert content_hash(files) != content_hash({**files, "e": "4" * 64})


def test_a_changed_file_is_still_an_error(package):
    (package / "metrics.json").write_text("{}")
    with pytest.raises(RecforgeError, match="checksum mismatch"):
        Package.open(package)


def test_a_dotdot_key_in_a_model_meta_is_an_error(own_workspace):
    model = own_workspace / "artifacts/models/popularity/full"
    meta = json.loads((model / "meta.json").read_text())
    meta["checksums"]["../../../../data/split/train.parquet"] = sha256_file(own_workspace / "data/split/train.parquet")
    (model / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(RecforgeError, match="is not a relative path inside the directory"):
        build_package(_params(own_workspace), own_workspace / "package")


# ---- what is copied in is checked ------------------------------------------------------------------------


def test_a_tampered_model_is_not_packaged(own_workspace):
    npz = next((own_workspace / "artifacts/models/popularity/full").glob("*.npz"))
    npz.write_bytes(npz.read_bytes()[:-3] + b"xyz")
    with pytest.raises(RecforgeError, match="checksum mismatch"):
        build_package(_params(own_workspace), own_workspace / "package")


def test_embeddings_of_the_wrong_shape_are_not_packaged(own_workspace):
    path = own_workspace / "artifacts/embeddings/tfidf.npy"
    np.save(path, np.load(path)[:-1])
    with pytest.raises(RecforgeError, match="rows for"):
        build_package(_params(own_workspace), own_workspace / "package")


@pytest.mark.parametrize("where", ["artifacts/profiles/full/users.json", "artifacts/embeddings/encoders/tfidf"])
def test_links_in_copied_artifacts_are_not_followed(own_workspace, where):
    path = own_workspace / where
    if path.is_dir():
        path = next(p for p in path.iterdir() if p.is_file())
    secret = own_workspace / "secret.txt"
    secret.write_text("not for the package")
    path.unlink()
    path.symlink_to(secret)
    with pytest.raises(RecforgeError, match="link"):
        build_package(_params(own_workspace), own_workspace / "package")


def test_missing_profiles_of_an_encoder_are_not_packaged(own_workspace):
    (own_workspace / "artifacts/profiles/full/tfidf.npz").unlink()
    with pytest.raises(RecforgeError, match="no profiles for encoder 'tfidf'"):
        build_package(_params(own_workspace), own_workspace / "package")


def test_the_reranker_is_copied_against_its_recorded_checksums(own_workspace):
    rerank = own_workspace / "artifacts/models/rerank"  # the stage, disabled, left it empty
    params = _params(own_workspace, "rerank.enabled=true")
    with pytest.raises(RecforgeError, match="no trained re-ranker"):
        build_package(params, own_workspace / "package0")
    (rerank / "model.txt").write_text("tree 0\n")
    write_meta(rerank, {"plugin": "lightgbm"})
    manifest = build_package(params, own_workspace / "package")
    assert manifest["rerank"] and {"rerank/model.txt", "rerank/meta.json"} <= set(manifest["checksums"])
    (rerank / "model.txt").write_text("tree 1\n")
    with pytest.raises(RecforgeError, match="checksum mismatch"):
        build_package(params, own_workspace / "package2")


# ---- model-store tags ------------------------------------------------------------------------------------

STORE = """
import json, sys
from pathlib import Path
from recforge.errors import RecforgeError
from recforge.bento import store_package
from recforge.params import load_params

overrides = json.loads(sys.argv[1])
try:
    tag, manifest = store_package(load_params(None, overrides))
    print(json.dumps({"tag": tag, "content_hash": manifest["content_hash"]}))
except RecforgeError as exc:
    print(json.dumps({"error": str(exc)}))
"""


def _store(root: Path, home: Path, *extra: str) -> dict:
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
    overrides = tmp_overrides(root) + TINY + EXTRA + list(extra)
    done = subprocess.run(
        [sys.executable, "-c", STORE, json.dumps(overrides)],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _entry(home: Path, tag: str) -> Path:
    name, version = tag.split(":")
    return home / "models" / name / version


def test_a_tag_names_one_content_and_is_never_rewritten(own_workspace, tmp_path):
    home = tmp_path / "bentoml"
    first = _store(own_workspace, home)
    assert first["tag"].endswith(f"-c{first['content_hash'][:12]}")
    entry = _entry(home, first["tag"])
    before = {p: sha256_file(entry / p) for p in package_files(entry)}

    again = _store(own_workspace, home)  # the same files: the same tag, the entry reused
    assert again == first
    assert {p: sha256_file(entry / p) for p in package_files(entry)} == before

    # a serve-only change (params.json in the package) is other content: a new tag, the old entry untouched
    served = _store(own_workspace, home, "serve.workers=3")
    assert served["tag"] != first["tag"] and served["tag"].split("-c")[0] == first["tag"].split("-c")[0]
    assert {p: sha256_file(entry / p) for p in package_files(entry)} == before
    assert json.loads((entry / "params.json").read_text())["serve"]["workers"] != 3
    assert json.loads((_entry(home, served["tag"]) / "params.json").read_text())["serve"]["workers"] == 3

    # an entry whose files are not those its tag names is refused, not replaced
    (entry / "metrics.json").write_text('{"tampered": true}')
    refused = _store(own_workspace, home)
    assert "never rewritten" in refused["error"] and first["tag"] in refused["error"]
    assert json.loads((entry / "metrics.json").read_text()) == {"tampered": True}
