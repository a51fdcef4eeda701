"""recforge.artifacts: the guards of what is written and read back (fast; each test names the bug it catches)."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recforge import artifacts
from recforge.errors import RecforgeError

# ---- recorded file names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["", ".", "/etc/passwd", "a/../b", "..", "./a", "a//b", "a/", "a\\b", "a\0b", 5, None],
)
def test_check_relative_key_refuses_each_kind_of_escape(name):
    # catches any one clause of the guard dropped or merged with another (an absolute path, a `..` part, a
    # non-canonical spelling, a backslash or NUL each on its own must be refused), and a non-string key
    # reaching PurePosixPath; the message names where the key was found and the key
    with pytest.raises(RecforgeError) as info:
        artifacts.check_relative_key(name, where="models/x")
    assert str(info.value) == f"models/x: {name!r} is not a relative path inside the directory"


@pytest.mark.parametrize("name", ["a", "dir/file.npy", "a..b", "x."])
def test_check_relative_key_accepts_plain_relative_names(name):
    # catches a guard that refuses names checksums() itself writes (`..` inside a name is not a `..` part)
    artifacts.check_relative_key(name, where="d")


def test_verify_checksums_names_the_directory(tmp_path):
    # catches the error messages losing the directory (the user cannot tell which model is broken)
    with pytest.raises(RecforgeError, match=r"^.*: checksums are not a mapping of file names to sha256$") as info:
        artifacts.verify_checksums(tmp_path, ["a"])
    assert str(info.value).startswith(f"{tmp_path}: ")
    with pytest.raises(RecforgeError) as info:
        artifacts.verify_checksums(tmp_path, {"../x": "0"})
    assert str(info.value) == f"{tmp_path}: '../x' is not a relative path inside the directory"


# ---- meta.json and model directories ---------------------------------------------------------------------


class _Plugin:
    loaded: list = []

    @classmethod
    def load(cls, directory, context=None):
        cls.loaded.append((directory, context))
        return "model"


class _Group:
    def get(self, name):
        assert name == "fake"
        return _Plugin


def _model_dir(tmp_path) -> Path:
    directory = tmp_path / "m"
    directory.mkdir()
    (directory / "weights.bin").write_bytes(b"abc")
    artifacts.write_meta(directory, {"plugin": "fake", "path": Path("/p")})
    return directory


def test_read_meta_default_message_and_verification(tmp_path):
    # catches the default 'no trained model' message changed, and checksums not verified by default (a
    # tampered model file loaded silently)
    with pytest.raises(RecforgeError) as info:
        artifacts.read_meta(tmp_path / "none")
    assert str(info.value) == f"{tmp_path / 'none'}: no trained model"
    directory = _model_dir(tmp_path)
    (directory / "weights.bin").write_bytes(b"tampered")
    with pytest.raises(RecforgeError, match="checksum mismatch"):
        artifacts.read_meta(directory)
    assert artifacts.read_meta(directory, verify=False)["plugin"] == "fake"


class _NoContextPlugin:
    @classmethod
    def load(cls, directory):
        return ("reranker", directory)


def test_load_model_dir_without_context_calls_load_without_it(tmp_path):
    # catches `context=None` passed to plugins whose load takes no context (re-rankers): a TypeError
    directory = _model_dir(tmp_path)
    group = type("G", (), {"get": lambda self, name: _NoContextPlugin})()
    assert artifacts.load_model_dir(directory, group)[0] == ("reranker", directory)


def test_load_model_dir_passes_message_verification_directory_and_context(tmp_path):
    # catches load_model_dir ignoring its `missing` message or `verify` flag, and the plugin loaded from
    # another directory or without the FitContext a recommender needs
    with pytest.raises(RecforgeError) as info:
        artifacts.load_model_dir(tmp_path / "none", _Group())
    assert str(info.value) == f"{tmp_path / 'none'}: no trained model"
    with pytest.raises(RecforgeError) as info:
        artifacts.load_model_dir(tmp_path / "none", _Group(), missing="run train")
    assert str(info.value) == f"{tmp_path / 'none'}: run train"
    directory = _model_dir(tmp_path)
    _Plugin.loaded.clear()
    model, meta = artifacts.load_model_dir(directory, _Group())
    assert model == "model" and meta["path"] == "/p"  # write_meta writes a Path with str()
    context = object()
    artifacts.load_model_dir(str(directory), _Group(), context)
    assert _Plugin.loaded == [(directory, None), (directory, context)]
    (directory / "weights.bin").write_bytes(b"tampered")
    with pytest.raises(RecforgeError, match="checksum mismatch"):
        artifacts.load_model_dir(directory, _Group())
    assert artifacts.load_model_dir(directory, _Group(), verify=False)[0] == "model"


# ---- atomic writers --------------------------------------------------------------------------------------


def test_writers_round_trip(tmp_path):
    # catches write_parquet / write_text not writing their input to the target, and the parquet file keeping
    # the frame's index as an extra column (readers would see `__index_level_0__`)
    frame = pd.DataFrame({"a": [1, 2]}, index=[5, 7])
    artifacts.write_parquet(frame, tmp_path / "f.parquet")
    back = pd.read_parquet(tmp_path / "f.parquet")
    assert list(back.columns) == ["a"] and back.index.tolist() == [0, 1] and back["a"].tolist() == [1, 2]
    artifacts.write_text("hello", tmp_path / "t.txt")
    assert (tmp_path / "t.txt").read_text() == "hello"


def test_write_json_keeps_key_order_one_key_per_line(tmp_path):
    # catches keys sorted (the writer's order, e.g. a metrics table's model order, is lost) and the
    # indentation changed (versioned JSON outputs are diffed line by line under DVC / git)
    artifacts.write_json({"b": 1, "a": np.int64(2)}, tmp_path / "x.json")
    assert (tmp_path / "x.json").read_text() == '{\n  "b": 1,\n  "a": 2\n}\n'
    with pytest.raises(TypeError, match="^not JSON serialisable: object$"):
        artifacts.write_json({"x": object()}, tmp_path / "y.json")


def test_write_meta_keeps_paths_and_indents(tmp_path):
    # catches meta.json failing on a Path (default=str dropped) and its layout changed (one key per line)
    meta = artifacts.write_meta(tmp_path, {"plugin": "x", "where": Path("/a")})
    text = (tmp_path / "meta.json").read_text()
    assert text == json.dumps({"plugin": "x", "where": "/a", "checksums": {}}, indent=2)
    assert meta["where"] == Path("/a")


def test_write_npy_refuses_object_arrays(tmp_path):
    # catches pickles allowed into .npy files (loading them needs allow_pickle=True: arbitrary code)
    with pytest.raises(ValueError, match="allow_pickle=False"):
        artifacts.write_npy(np.array([{"a": 1}], dtype=object), tmp_path / "x.npy")
    assert not (tmp_path / "x.npy").exists()


# ---- umask and modes -------------------------------------------------------------------------------------


def test_current_umask_reads_proc_without_swapping(monkeypatch):
    # catches the /proc read broken (wrong file or line prefix): the os.umask swap then runs, which briefly
    # changes the umask of every thread of the process
    old = os.umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", lambda mask: pytest.fail("os.umask swapped"))
        assert artifacts.current_umask() == 0o027
    finally:
        monkeypatch.undo()
        os.umask(old)


def test_current_umask_fallback_restores_the_mask(monkeypatch):
    # catches the fallback (no /proc) returning nothing or leaving the umask changed
    old = os.umask(0o027)
    try:
        monkeypatch.setattr(
            artifacts, "open", lambda *a, **kw: (_ for _ in ()).throw(OSError("no /proc")), raising=False
        )
        assert artifacts.current_umask() == 0o027
        monkeypatch.undo()
        assert artifacts.current_umask() == 0o027
    finally:
        os.umask(old)


def test_give_umask_mode_ignores_a_vanished_path(tmp_path):
    # catches a staging path removed meanwhile turning into an error
    artifacts._give_umask_mode(tmp_path / "gone")


# ---- renames ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(artifacts._renameat2 is None, reason="no renameat2 here")
def test_renameat2_loaded_with_errno_and_int_result(tmp_path):
    # catches renameat2 loaded without errno capture (errors unreadable) or with a void result
    function = artifacts._load_renameat2()
    assert function is not None and function.restype is ctypes.c_int
    result = function(-100, os.fsencode(tmp_path / "missing"), -100, os.fsencode(tmp_path / "x"), 0)
    assert result == -1 and ctypes.get_errno() == errno.ENOENT


@pytest.mark.skipif(artifacts._renameat2 is None, reason="no renameat2 here")
def test_rename2_errors_and_unsupported_flags(tmp_path):
    # catches the OSError losing its code, text or paths, and an unsupported flag (EINVAL) reported as done
    with pytest.raises(FileNotFoundError) as info:
        artifacts.rename2(tmp_path / "missing", tmp_path / "x", artifacts.RENAME_NOREPLACE)
    exc = info.value
    assert (exc.errno, exc.strerror) == (errno.ENOENT, os.strerror(errno.ENOENT))
    assert (exc.filename, exc.filename2) == (str(tmp_path / "missing"), str(tmp_path / "x"))
    (tmp_path / "a").mkdir()
    assert artifacts.rename2(tmp_path / "a", tmp_path / "b", 0xFFFF) is False
    assert (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_swap_in_retries_when_the_target_vanishes(tmp_path, monkeypatch):
    # catches a target removed between the two renames ending the loop with an error instead of retrying
    calls = []

    def rename2(source, dest, flags):
        calls.append(flags)
        if len(calls) == 1:
            raise FileExistsError
        if len(calls) == 2:
            raise FileNotFoundError  # the other writer's output was removed meanwhile
        return True

    monkeypatch.setattr(artifacts, "rename2", rename2)
    staging = tmp_path / "s"
    assert artifacts.swap_in(staging, tmp_path / "t") == staging
    assert calls == [artifacts.RENAME_NOREPLACE, artifacts.RENAME_EXCHANGE, artifacts.RENAME_NOREPLACE]


def test_swap_in_gives_up_with_a_message(tmp_path, monkeypatch):
    # catches the give-up error losing its message (which target, why)
    def rename2(source, dest, flags):
        raise FileExistsError if flags == artifacts.RENAME_NOREPLACE else FileNotFoundError

    monkeypatch.setattr(artifacts, "rename2", rename2)
    with pytest.raises(RecforgeError) as info:
        artifacts.swap_in(tmp_path / "s", tmp_path / "t")
    assert str(info.value) == f"{tmp_path / 't'}: could not replace it (other writers kept replacing it)"


def _two_renames(tmp_path, monkeypatch, failures):
    """The fallback path: target and staging directories, os.rename failing ``failures`` times for staging."""
    target, staging = tmp_path / "t", tmp_path / "s"
    target.mkdir()
    (target / "old").write_text("old")
    staging.mkdir()
    (staging / "new").write_text("new")
    real = os.rename
    left = [failures]

    def rename(source, dest):
        if Path(source) == staging and left[0]:
            left[0] -= 1
            Path(dest).mkdir()  # another writer put its output there in between
            raise OSError(errno.ENOTEMPTY, "not empty")
        real(source, dest)

    monkeypatch.setattr(artifacts.os, "rename", rename)
    return target, staging


def test_two_renames_retry_after_another_writer(tmp_path, monkeypatch):
    # catches the fallback giving up (or raising) when another writer's output lands between its renames,
    # and the aside copy of the first try left behind
    target, staging = _two_renames(tmp_path, monkeypatch, failures=1)
    aside = artifacts._swap_in_two_renames(staging, target)
    assert (target / "new").read_text() == "new" and aside.exists()
    assert re.fullmatch(rf"\.t\.{os.getpid()}-[0-9a-f]+\.tmp", aside.name)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["t", aside.name])  # the first aside (old output) was removed


def test_two_renames_other_errors_propagate_and_give_up_message(tmp_path, monkeypatch):
    # catches any rename error treated as a race (retried forever), and the give-up error without a message
    target, staging = tmp_path / "t", tmp_path / "missing"
    with pytest.raises(FileNotFoundError):
        artifacts._swap_in_two_renames(staging, target)
    sub = tmp_path / "race"
    sub.mkdir()
    target, staging = _two_renames(sub, monkeypatch, 10**6)
    with pytest.raises(RecforgeError) as info:
        artifacts._swap_in_two_renames(staging, target)
    assert str(info.value) == f"{target}: could not replace it (other writers kept replacing it)"


# ---- stale staging ---------------------------------------------------------------------------------------


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_stale_staging_symlink_removed_not_followed(tmp_path):
    # catches the staging entry's stat following a symlink: a dangling staging link of a dead writer is then
    # skipped forever instead of removed
    link = tmp_path / f".out.{_dead_pid()}-abc.tmp"
    link.symlink_to(tmp_path / "nowhere")
    assert artifacts.clean_stale_staging(tmp_path) == [link]
    assert not os.path.lexists(link)


def test_legacy_staging_age_boundary(tmp_path, monkeypatch):
    # catches staging without a pid kept when exactly LEGACY_STAGING_AGE_S old (removal starts at the age)
    path = tmp_path / ".out.abcdefgh.tmp"
    path.write_text("x")
    now = 1_000_000.0
    os.utime(path, (now - artifacts.LEGACY_STAGING_AGE_S, now - artifacts.LEGACY_STAGING_AGE_S))
    monkeypatch.setattr(artifacts.time, "time", lambda: now)
    assert artifacts.clean_stale_staging(tmp_path) == [path]


@pytest.fixture
def child():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    yield process
    process.kill()
    process.wait()


def test_owner_alive_boundary_two_seconds(monkeypatch, child):
    # catches the pid-reuse tolerance changed: a live process that started up to 2 s after the staging was
    # last modified is still its owner (clock granularity); one that started later reused the pid; and the
    # liveness probe sending a real signal (it must be signal 0: the owner is left running)
    monkeypatch.setattr(artifacts, "_process_start", lambda pid: 102.0)
    assert artifacts._owner_alive(child.pid, 100.0) is True
    monkeypatch.setattr(artifacts, "_process_start", lambda pid: 102.5)
    assert artifacts._owner_alive(child.pid, 100.0) is False
    time.sleep(0.2)
    assert child.poll() is None


def test_clean_stale_staging_goes_on_past_live_and_vanished_entries(tmp_path, monkeypatch, child):
    # catches the scan stopping at the first staging whose owner is alive, at young staging without a pid,
    # or at an entry removed between the listing and its stat, so later stale staging is never cleaned
    vanished = tmp_path / f".a.{_dead_pid()}-x.tmp"
    young = tmp_path / ".a0.abcdefgh.tmp"
    live = tmp_path / f".b.{child.pid}-x.tmp"
    stale = tmp_path / f".c.{_dead_pid()}-x.tmp"
    for path in (vanished, young, live, stale):
        path.write_text("x")
    real = os.scandir

    def scandir(directory):
        entries = sorted(real(directory), key=lambda e: e.name)
        vanished.unlink()
        return iter(entries)

    monkeypatch.setattr(artifacts.os, "scandir", scandir)
    assert artifacts.clean_stale_staging(tmp_path) == [stale]
    assert live.exists() and young.exists() and not stale.exists()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_process_start_of_a_fresh_child_with_a_paren_in_its_name(tmp_path):
    # catches the start time read from the wrong field (the command name may hold ')' and spaces, so the
    # fields start after the last ')'), or the boot time subtracted instead of added
    program = tmp_path / "a) b c"
    program.symlink_to(sys.executable)
    before = time.time()
    process = subprocess.Popen([str(program), "-c", "import time; time.sleep(5)"])
    try:
        time.sleep(0.1)
        assert Path(f"/proc/{process.pid}/comm").read_text().strip() == "a) b c"
        started = artifacts._process_start(process.pid)
        assert before - 1.5 <= started <= time.time() + 1.5
    finally:
        process.kill()
        process.wait()
