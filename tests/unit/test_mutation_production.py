"""recforge.production: the production registry (register, promote, rollback, history) on a real registry file and a
real BentoML model store in a temporary directory (fast; each test names the bug it catches).

The store entries are tiny stand-in packages (a manifest, params.json and one file): production only checks that
an entry opens as a package and reads its content hash; it never loads a model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from recforge import production
from recforge.errors import RecforgeError
from recforge.params import load_params
from recforge.production import Production

TAG_A = "recforge-model:a1"
TAG_B = "recforge-model:b2"
TAG_C = "recforge-model:c3"


@pytest.fixture
def store(tmp_path):
    """A real BentoML model store under tmp_path, for this test only; returns a function that adds an entry."""
    import bentoml
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore

    from recforge import packaging

    defaults = json.dumps(load_params(None, []).to_dict())

    def add(tag: str, payload: bytes = b"weights") -> tuple[str, str]:
        source = tmp_path / "staging" / tag.replace(":", "-")
        source.mkdir(parents=True)
        (source / "params.json").write_text(defaults)
        (source / "weights.bin").write_bytes(payload)
        files = packaging.package_checksums(source)
        manifest = {
            "format": packaging.PACKAGE_FORMAT,
            "checksums": files,
            "content_hash": packaging.content_hash(files),
        }
        (source / "manifest.json").write_text(json.dumps(manifest))
        with bentoml.models.create(tag) as entry:
            shutil.copytree(source, entry.path, dirs_exist_ok=True)
        return str(bentoml.models.get(tag).path), manifest["content_hash"]

    with BentoMLContainer.model_store.patch(ModelStore(str(tmp_path / "models"))):
        yield add


@pytest.fixture
def params(tmp_path):
    return load_params(None, [f"promote.registry={tmp_path / 'reg' / 'deeper' / 'production.json'}"])


def registry_file(params) -> Path:
    return Path(params.promote.registry)


# ---- where the registry lives ------------------------------------------------------------------------------


def test_registry_path_is_the_configured_one(tmp_path):
    # catches the configured path being ignored (a cycle writing another registry than the server reads)
    params = load_params(None, [f"promote.registry={tmp_path / 'r.json'}"])
    assert production.registry_path(params) == tmp_path / "r.json"


def test_registry_path_defaults_beside_the_model_store(tmp_path, monkeypatch):
    # catches the default moving away from $BENTOML_HOME/recforge/production.json, and an empty BENTOML_HOME
    # being taken as a directory (the `or` dropped) instead of falling back to ~/bentoml
    params = load_params(None, [])
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "home"))
    assert production.registry_path(params) == tmp_path / "home" / "recforge" / "production.json"
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    for unset in ("", None):
        if unset is None:
            monkeypatch.delenv("BENTOML_HOME")
        else:
            monkeypatch.setenv("BENTOML_HOME", unset)
        assert production.registry_path(params) == tmp_path / "user" / "bentoml" / "recforge" / "production.json"


# ---- tags and reasons --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tag",
    [
        "recforge-model:a",
        "recforge-model:" + "v" * 128,
        "recforge-model:0a_b.c-d",
        "recforge-model:Z",
    ],
)
def test_check_tag_accepts_model_store_tags(tag):
    # catches the version pattern narrowed (upper case, digits, '.', '_', '-' or the 128-character limit refused)
    assert production.check_tag(tag) == tag


@pytest.mark.parametrize(
    "tag",
    [
        "recforge-model:",
        "recforge-model:" + "v" * 129,
        "recforge-model:.a",
        "recforge-model:-a",
        "recforge-model:a/b",
        "other:a",
        "recforge-model:a\n",
        "xrecforge-model:a",
        5,
        None,
    ],
)
def test_check_tag_refuses_anything_else(tag):
    # catches a partial match (search/match instead of fullmatch), a longer version, a leading '.'/'-', another
    # model name, a non-string reaching the regex; the message says what a tag looks like
    with pytest.raises(RecforgeError) as info:
        production.check_tag(tag)
    assert str(info.value) == f"model tag {tag!r}: expected recforge-model:<version> (letters, digits, '.', '_', '-')"


def test_reason_is_collapsed_and_bounded():
    # catches whitespace not collapsed (a multi-line reason breaking the history's one-line entries), the empty
    # reason accepted, and the 500-character bound off by one either way
    assert production._reason("  roll\n back\t now ") == "roll back now"
    assert production._reason(7) == "7"
    assert production._reason("x" * 500) == "x" * 500
    for bad in ("", " \n\t ", "x" * 501):
        with pytest.raises(RecforgeError) as info:
            production._reason(bad)
        assert str(info.value) == "a promotion needs a reason of 1 to 500 characters"


def test_now_is_utc_iso_seconds():
    # catches another time format in the history (servers and reports parse these)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", production._now())


def test_run_id_names_the_prefect_run_or_the_process(monkeypatch):
    # catches the Prefect run id lost from the history, or the process fallback not naming pid and host
    monkeypatch.setenv("PREFECT__FLOW_RUN_ID", "abc-123")
    assert production.run_id() == "prefect:abc-123"
    monkeypatch.setenv("PREFECT__FLOW_RUN_ID", "")
    assert production.run_id() == f"pid:{os.getpid()}@{os.uname().nodename}"
    monkeypatch.delenv("PREFECT__FLOW_RUN_ID")
    assert production.run_id() == f"pid:{os.getpid()}@{os.uname().nodename}"


# ---- reading the registry ----------------------------------------------------------------------------------


def test_read_without_a_file_is_the_empty_registry(params, tmp_path):
    # catches the empty registry's shape or format changing (a first promotion then writes a registry that
    # read() refuses) and current() not being None before the first promotion
    empty = {"format": 1, "serial": 0, "versions": {}, "lineage": [], "history": []}
    assert production.read(params) == empty
    assert production.read(tmp_path / "absent.json") == empty
    assert production.current(params) is None
    assert production.current_version(params) is None
    assert production.seen_spans(params) == set()


def test_read_refuses_an_oversized_file(tmp_path):
    # catches the 16 MiB bound moved or inverted: a file of exactly 16 MiB is read (and refused as JSON), one
    # byte more is refused before it is read
    path = tmp_path / "big.json"
    with open(path, "wb") as handle:
        handle.truncate(16 << 20)
    with pytest.raises(RecforgeError) as info:
        production.read(path)
    assert str(info.value) == f"{path}: not valid JSON; restore it or remove it (production is then unset)"
    with open(path, "ab") as handle:
        handle.write(b" ")
    with pytest.raises(RecforgeError) as info:
        production.read(path)
    assert str(info.value) == f"{path}: larger than 16,777,216 bytes; not a recforge registry"


@pytest.mark.parametrize("text", ['{"format": 2, "serial": 0}', '{"serial": 0}', "[1]", '"format"', '{"format": "1"}'])
def test_read_refuses_what_is_not_a_registry(tmp_path, text):
    # catches the format check dropped or loosened (another format, or a non-mapping, read as a registry)
    path = tmp_path / "r.json"
    path.write_text(text)
    with pytest.raises(RecforgeError) as info:
        production.read(path)
    assert str(info.value) == f"{path}: not a recforge production registry (format 1)"


def test_read_refuses_broken_json_with_one_line(tmp_path):
    # catches the JSON error escaping as a traceback-length message (or chained) instead of the one-line advice
    path = tmp_path / "r.json"
    path.write_text("{not json")
    with pytest.raises(RecforgeError) as info:
        production.read(path)
    assert str(info.value) == f"{path}: not valid JSON; restore it or remove it (production is then unset)"
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_current_names_the_last_promotion(tmp_path):
    # catches current() reading the first lineage entry, the first history entry of the tag instead of its
    # latest promotion, the wrong fields of the version, or the serial not converted to int
    body = {
        "format": 1,
        "serial": "7",
        "versions": {
            TAG_A: {"package_path": "/a", "content_hash": "ha", "spans": ["s1"], "evaluated_on": ["s2"]},
            TAG_B: {"package_path": "/b", "content_hash": "hb", "spans": None},
        },
        "lineage": [TAG_A, TAG_B],
        "history": [
            {"at": "t1", "tag": TAG_B},
            {"at": "t2", "tag": TAG_A},
            {"at": "t3", "tag": TAG_B},
            {"at": "t4", "tag": TAG_C},
        ],
    }
    path = tmp_path / "r.json"
    path.write_text(json.dumps(body))
    assert production.current(path) == Production(TAG_B, "/b", "hb", 7, "t3")
    assert isinstance(production.current(path).serial, int)
    params = load_params(None, [f"promote.registry={path}"])
    assert production.current(params) == Production(TAG_B, "/b", "hb", 7, "t3")
    assert production.current_version(params) == body["versions"][TAG_B]
    assert production.seen_spans(params) == {"s1", "s2"}  # a version with spans None adds nothing


def test_current_without_a_promotion_record(tmp_path):
    # catches a missing history entry raising instead of leaving promoted_at unset
    body = {"format": 1, "serial": 1, "versions": {TAG_A: {"package_path": "/a", "content_hash": "h"}}}
    body.update(lineage=[TAG_A], history=[{"at": "t", "tag": TAG_B}])
    path = tmp_path / "r.json"
    path.write_text(json.dumps(body))
    assert production.current(path).promoted_at is None


# ---- the model store -----------------------------------------------------------------------------------------


def test_store_entry_reads_path_and_content_hash(store):
    # catches the entry's path or content hash swapped or not the store's (the server would load another package)
    path, content = store(TAG_A)
    assert production.store_entry(TAG_A) == (path, content)
    assert Path(path).is_dir() and len(content) == 64


def test_store_entry_of_an_unknown_or_bad_tag(store):
    # catches a missing entry surfacing as BentoML's NotFound (a traceback) instead of a one-line error, and the
    # tag not checked before the store is asked
    with pytest.raises(RecforgeError) as info:
        production.store_entry(TAG_A)
    assert str(info.value) == f"model {TAG_A} is not in the BentoML model store (`bentoml models list`)"
    assert info.value.__cause__ is None and info.value.__suppress_context__
    with pytest.raises(RecforgeError, match="expected recforge-model:<version>"):
        production.store_entry("recforge-model:../x")


# ---- changing the registry -----------------------------------------------------------------------------------


def test_register_adds_and_updates_a_version(params, store):
    # catches register() not creating the registry's directory, the serial not incremented by one, an optional
    # field written when not given (erasing what an earlier call recorded) or dropped when given, and an update
    # resetting registered_at/run
    path_a, content_a = store(TAG_A)
    body = production.register(params, TAG_A, run="r1")
    assert body == production.read(params)
    assert body["serial"] == 1 and body["lineage"] == [] and body["history"] == []
    first = body["versions"][TAG_A]
    assert set(first) == {"registered_at", "run", "package_path", "content_hash"}
    assert first["run"] == "r1" and first["package_path"] == path_a and first["content_hash"] == content_a
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", first["registered_at"])

    first["registered_at"] = "earlier"
    registry_file(params).write_text(json.dumps(body))
    body = production.register(
        params,
        TAG_A,
        run="r2",
        metrics={"ndcg@10": 0.5},
        blessing={"decision": "blessed"},
        spans=("s1", "s2"),
        evaluated=("s3",),
        infra={"ok": True},
    )
    entry = body["versions"][TAG_A]
    assert body["serial"] == 2
    assert entry == {
        "registered_at": "earlier",
        "run": "r1",
        "package_path": path_a,
        "content_hash": content_a,
        "metrics": {"ndcg@10": 0.5},
        "blessing": {"decision": "blessed"},
        "spans": ["s1", "s2"],
        "evaluated_on": ["s3"],
        "infra_validation": {"ok": True},
    }
    assert production.seen_spans(params) == {"s1", "s2", "s3"}

    body = production.register(params, TAG_A, run="r3")  # nothing given: nothing erased
    assert body["versions"][TAG_A] == entry and body["serial"] == 3


def test_register_refuses_a_tag_not_in_the_store(params, store):
    # catches a version registered without its store entry (a path that does not exist); nothing is written
    with pytest.raises(RecforgeError, match="is not in the BentoML model store"):
        production.register(params, TAG_A, run="r")
    assert not registry_file(params).exists()


def test_promote_then_rollback(params, store):
    # catches promotion records with a wrong previous/tag/action/run/reason, lineage not appended or not popped,
    # an existing version's record replaced on promotion, the serial not counting every change, and a rollback
    # naming the removed version as production
    path_a, content_a = store(TAG_A)
    path_b, content_b = store(TAG_B, b"other weights")
    production.register(params, TAG_A, run="r0", metrics={"m": 1})

    first = production.promote(params, TAG_A, reason=" first\nmodel ", run="r1")
    assert set(first) == {"at", "action", "tag", "previous", "run", "reason"}
    assert first["action"] == "promote" and first["tag"] == TAG_A and first["previous"] is None
    assert first["run"] == "r1" and first["reason"] == "first model"
    assert production.current(params) == Production(TAG_A, path_a, content_a, 2, first["at"])
    assert production.current_version(params)["metrics"] == {"m": 1}  # setdefault kept the registered entry

    second = production.promote(params, TAG_B, reason="better", run="r2")
    assert second["previous"] == TAG_A and second["tag"] == TAG_B and second["action"] == "promote"
    body = production.read(params)
    assert body["lineage"] == [TAG_A, TAG_B] and body["serial"] == 3
    assert body["versions"][TAG_B]["run"] == "r2" and body["versions"][TAG_B]["content_hash"] == content_b
    assert body["history"] == [first, second]
    assert production.current(params).package_path == path_b

    back = production.rollback(params, reason="worse online", run="r3")
    assert back["action"] == "rollback" and back["tag"] == TAG_A and back["previous"] == TAG_B
    assert back["run"] == "r3" and back["reason"] == "worse online"
    body = production.read(params)
    assert body["lineage"] == [TAG_A] and body["serial"] == 4 and body["history"][-1] == back
    assert set(body["versions"]) == {TAG_A, TAG_B}
    assert production.current(params) == Production(TAG_A, path_a, content_a, 4, back["at"])

    with pytest.raises(RecforgeError) as info:
        production.rollback(params, reason="again", run="r4")
    assert str(info.value) == "no earlier production version to roll back to"
    assert production.read(params) == body  # a refused change writes nothing


def test_promote_refuses_before_touching_the_registry(params, store):
    # catches the reason or the store entry checked after the registry is written (a half-made promotion)
    store(TAG_A)
    with pytest.raises(RecforgeError, match="a promotion needs a reason"):
        production.promote(params, TAG_A, reason=" ", run="r")
    with pytest.raises(RecforgeError, match="is not in the BentoML model store"):
        production.promote(params, TAG_B, reason="x", run="r")
    with pytest.raises(RecforgeError, match="a promotion needs a reason"):
        production.rollback(params, reason="", run="r")
    assert not registry_file(params).exists()


def test_promoting_the_same_tag_again_keeps_one_version(params, store):
    # catches a repeated promotion losing the lineage (rollback must go back through it) or the version record
    store(TAG_A)
    production.promote(params, TAG_A, reason="one", run="r1")
    again = production.promote(params, TAG_A, reason="two", run="r2")
    assert again["previous"] == TAG_A
    body = production.read(params)
    assert body["lineage"] == [TAG_A, TAG_A] and list(body["versions"]) == [TAG_A]
    assert body["versions"][TAG_A]["run"] == "r1"


def test_edit_writes_under_the_lock_in_the_registry_directory(params, store):
    # catches the lock taken elsewhere than beside the registry (two writers of one registry not serialised)
    store(TAG_A)
    production.promote(params, TAG_A, reason="x", run="r")
    assert (registry_file(params).parent / "workspace.lock").exists()
    assert sorted(p.name for p in registry_file(params).parent.iterdir()) == ["production.json", "workspace.lock"]


def test_a_change_waits_60_s_for_a_held_registry_lock(params, store, monkeypatch):
    # catches the lock's timeout dropped (a promotion behind a stuck writer waits forever) or changed; the
    # registry lock is held for real (flock), only the clock the wait reads is a fake that runs 0.2 s a sleep
    import fcntl

    from recforge import locking

    class Clock:
        now = 0.0

        @classmethod
        def monotonic(cls) -> float:
            return cls.now

        @classmethod
        def sleep(cls, seconds: float) -> None:
            cls.now += seconds
            assert cls.now < 1000, "still waiting after 1000 s"

    store(TAG_A)
    folder = registry_file(params).parent
    folder.mkdir(parents=True)
    monkeypatch.setattr(locking, "time", Clock)
    with open(folder / "workspace.lock", "a+") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RecforgeError) as info:
            production.promote(params, TAG_A, reason="x", run="r")
    assert str(info.value) == f"another recforge run still holds {(folder / 'workspace.lock').resolve()} after 60s"
    assert 60 < Clock.now <= 60.6
    assert not registry_file(params).exists()


def test_promotion_records_are_stamped_in_utc(params, store, monkeypatch):
    # catches a new version promoted without registered_at, a history entry without its time, and local time
    # (time.strftime without gmtime) written where UTC is stated
    import time

    monkeypatch.setenv("TZ", "Etc/GMT+5")
    time.tzset()
    try:
        store(TAG_A)
        store(TAG_B)
        before = time.gmtime()
        first = production.promote(params, TAG_A, reason="x", run="r")
        production.promote(params, TAG_B, reason="y", run="r")
        back = production.rollback(params, reason="z", run="r")
        after = time.gmtime()
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    allowed = {time.strftime("%Y-%m-%dT%H:%M:%SZ", t) for t in (before, after)}
    entry = production.read(params)["versions"][TAG_A]
    assert entry["registered_at"] in allowed and entry["run"] == "r"
    assert first["at"] in allowed and back["at"] in allowed
