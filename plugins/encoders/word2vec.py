"""Word2vec trained on the dataset's own text; a document is the IDF-weighted mean of its words."""

from __future__ import annotations

import json
import logging
import math
import zlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from recforge.errors import RecforgeError
from recforge.text import tokenize

from recforge_plugins.encoders._common import l2_normalize


def _stable_hash(text: str) -> int:
    """gensim seeds word vectors with ``hash``, which Python salts per process; crc32 is stable."""
    return zlib.crc32(text.encode("utf-8"))


class Word2VecEncoder:
    """gensim Word2Vec (skip-gram by default) fitted on the corpus passed to ``fit``.

    One worker thread and a stable hash make it deterministic across runs.
    Texts without any known word encode to the zero vector. The fitted word
    vectors, vocabulary and idf save as npz + JSON.
    """

    name = "word2vec"

    def __init__(
        self,
        dim: int = 100,
        window: int = 5,
        min_count: int = 1,
        epochs: int = 20,
        sg: bool = True,
        negative: int = 5,
        stop_words: bool = True,
        seed: int = 0,
    ) -> None:
        self._dim = int(dim)
        self.window = window
        self.min_count = min_count
        self.epochs = epochs
        self.sg = sg
        self.negative = negative
        self.stop_words = stop_words
        self.seed = seed
        self.index: dict[str, int] | None = None
        self.vectors: np.ndarray | None = None
        self.idf: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return self._dim

    def _tokens(self, text: str) -> list[str]:
        return tokenize(text, stop_words=self.stop_words)

    def fit(self, texts: Sequence[str]) -> Word2VecEncoder:
        from gensim.models import Word2Vec

        logging.getLogger("gensim").setLevel(max(logging.WARNING, logging.getLogger("gensim").level))
        sentences = [self._tokens(t) for t in texts]
        if not any(sentences):
            raise RecforgeError("word2vec: the corpus has no words")
        model = Word2Vec(
            sentences=sentences,
            vector_size=self._dim,
            window=self.window,
            min_count=self.min_count,
            sg=int(bool(self.sg)),
            negative=self.negative,
            epochs=self.epochs,
            workers=1,
            seed=self.seed,
            hashfxn=_stable_hash,
        )
        words = list(model.wv.index_to_key)
        self.index = {w: i for i, w in enumerate(words)}
        self.vectors = np.asarray(model.wv.vectors, dtype=np.float32)
        document_frequency = Counter(w for s in sentences for w in set(s) if w in self.index)
        n = len(sentences)
        self.idf = np.array([math.log((1 + n) / (1 + document_frequency[w])) + 1.0 for w in words], dtype=np.float32)
        return self

    def encode(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        if self.vectors is None:
            raise RecforgeError("word2vec: call fit(corpus) before encode")
        out = np.zeros((len(texts), self._dim), dtype=np.float64)
        for row, text in enumerate(texts):
            ids = [self.index[w] for w in self._tokens(text) if w in self.index]
            if ids:
                weights = self.idf[ids].astype(np.float64)
                out[row] = weights @ self.vectors[ids] / weights.sum()
        return l2_normalize(out)

    def config(self) -> dict:
        return {
            "dim": self._dim,
            "window": self.window,
            "min_count": self.min_count,
            "epochs": self.epochs,
            "sg": self.sg,
            "negative": self.negative,
            "stop_words": self.stop_words,
            "seed": self.seed,
        }

    def save(self, directory: Path) -> None:
        """Settings and vocabulary as JSON; word vectors and idf as npz."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        words = sorted(self.index, key=self.index.__getitem__)
        (directory / "word2vec.json").write_text(json.dumps({"config": self.config(), "words": words}))
        np.savez(directory / "word2vec.npz", vectors=self.vectors, idf=self.idf)

    @classmethod
    def load(cls, directory: Path) -> Word2VecEncoder:
        directory = Path(directory)
        state = json.loads((directory / "word2vec.json").read_text())
        encoder = cls(**state["config"])
        encoder.index = {w: i for i, w in enumerate(state["words"])}
        with np.load(directory / "word2vec.npz", allow_pickle=False) as data:
            encoder.vectors = data["vectors"]
            encoder.idf = data["idf"]
        return encoder
