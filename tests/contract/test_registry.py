"""The registries check each plugin against its protocol when it loads, name a
missing optional extra, and only warn about a broken plugin nobody asked for."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from recforge import registry
from recforge.errors import MissingExtra, RecforgeError
from recforge.protocols import Encoder, Reranker
from recforge.registry import Registry


class GoodReranker:
    oof_scores: np.ndarray | None

    def fit(self, candidates, labels, groups):
        return self

    def rerank(self, candidates):
        return np.zeros(len(candidates))

    def feature_importance(self):
        raise NotImplementedError

    def save(self, directory):
        pass

    @classmethod
    def load(cls, directory):
        return cls()


class NoImportance(GoodReranker):
    feature_importance = None  # type: ignore[assignment]


class Nameless:
    """An encoder without ``name`` (and without save/load)."""

    dim = 3

    def fit(self, texts):
        return self

    def encode(self, texts, *, batch_size=64):
        return np.zeros((len(texts), 3), np.float32)


def _write_module(directory: Path, name: str, source: str) -> None:
    (directory / f"{name}.py").write_text(source)


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for module in [m for m in sys.modules if m.startswith("rf_test_plugin_")]:
        del sys.modules[module]


def test_every_built_in_plugin_satisfies_its_protocol():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a built-in that failed its check would only warn in available()
        for group in registry.ALL.values():
            for name, cls in group.available().items():
                assert registry.missing_members(cls, group.protocol) == [], (group.group, name)


def test_a_plugin_missing_a_method_is_rejected_with_its_name(plugin_dir):
    _write_module(plugin_dir, "rf_test_plugin_a", "from tests.contract.test_registry import NoImportance\n")
    rerankers = Registry("recforge.test_rerankers", Reranker)
    rerankers.register("lazy", "rf_test_plugin_a:NoImportance")
    with pytest.raises(RecforgeError, match=r"does not implement Reranker: missing feature_importance\(\)"):
        rerankers.get("lazy")
    with pytest.raises(RecforgeError, match="feature_importance"):
        rerankers.create("lazy")
    with pytest.raises(RecforgeError, match="feature_importance"):
        rerankers.register("eager", NoImportance)
    rerankers.register("good", GoodReranker)
    assert rerankers.get("good") is GoodReranker


def test_missing_attributes_and_methods_are_all_named():
    encoders = Registry("recforge.test_encoders", Encoder)
    with pytest.raises(RecforgeError) as error:
        encoders.register("nameless", Nameless)
    message = str(error.value)
    assert "missing name, save(), load()" in message and "Nameless" in message
    with pytest.raises(RecforgeError, match="a class"):
        encoders.register("instance", Nameless())


def test_a_missing_optional_dependency_names_the_extra(plugin_dir, monkeypatch):
    monkeypatch.setitem(registry.EXTRA_OF_MODULE, "rf_absent_dependency", "fancy")
    _write_module(plugin_dir, "rf_test_plugin_b", "import rf_absent_dependency\n\nclass Thing:\n    pass\n")
    group = Registry("recforge.test_encoders", Encoder)
    group.register("fancy_encoder", "rf_test_plugin_b:Thing")
    with pytest.raises(MissingExtra, match=r"pip install 'recforge\[fancy\]'") as error:
        group.get("fancy_encoder")
    assert "rf_absent_dependency" in str(error.value) and "fancy_encoder" in str(error.value)
    # available() leaves it out quietly (a log line, no warning): it is an extra, not a fault
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert group.available() == {}


def test_a_broken_unrelated_plugin_only_warns(plugin_dir):
    _write_module(plugin_dir, "rf_test_plugin_c", "raise RuntimeError('broken at import')\n")
    _write_module(plugin_dir, "rf_test_plugin_d", "from tests.contract.test_registry import NoImportance\n")
    group = Registry("recforge.test_rerankers", Reranker)
    group.register("good", GoodReranker)
    group.register("broken", "rf_test_plugin_c:Anything")
    group.register("incomplete", "rf_test_plugin_d:NoImportance")
    with pytest.warns(UserWarning) as caught:
        plugins = group.available()
    assert plugins == {"good": GoodReranker}
    messages = " | ".join(str(w.message) for w in caught)
    assert "broken at import" in messages and "feature_importance()" in messages
    assert group.create("good").rerank([1, 2]).shape == (2,)  # the rest still works
    with pytest.raises(RuntimeError, match="broken at import"):  # asked for by name: the real error
        group.get("broken")
