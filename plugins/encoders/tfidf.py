"""TF-IDF bag of words reduced with truncated SVD (latent semantic analysis)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from recforge.errors import RecforgeError
from recforge.text import tokenize

from recforge_plugins.encoders._common import l2_normalize


class TfidfEncoder:
    """scikit-learn TF-IDF (sublinear tf, smooth idf) then TruncatedSVD to ``dim``.

    ``dim`` is capped by the vocabulary and corpus size at ``fit``. The fitted
    state (vocabulary, idf, SVD components) saves as JSON + npz, so a served
    model can embed free text exactly as it embedded the items.
    """

    name = "tfidf"

    def __init__(
        self,
        dim: int = 128,
        stop_words: bool = True,
        min_df: int = 1,
        max_df: float = 0.9,
        max_features: int | None = 50_000,
        ngrams: int = 1,
        seed: int = 0,
    ) -> None:
        self.requested_dim = int(dim)
        self.stop_words = stop_words
        self.min_df = min_df
        self.max_df = max_df
        self.max_features = max_features
        self.ngrams = ngrams
        self.seed = seed
        self.vocabulary: dict[str, int] | None = None
        self.idf: np.ndarray | None = None
        self.components: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return self.requested_dim if self.components is None else int(self.components.shape[0])

    def _tokens(self, text: str) -> list[str]:
        return tokenize(text, stop_words=self.stop_words)

    def fit(self, texts: Sequence[str]) -> TfidfEncoder:
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        texts = list(texts)
        max_df = self.max_df if len(texts) >= 10 else 1.0  # tiny corpora: keep every word
        vectorizer = TfidfVectorizer(
            tokenizer=self._tokens,
            preprocessor=None,
            lowercase=False,
            token_pattern=None,
            min_df=self.min_df,
            max_df=max_df,
            max_features=self.max_features,
            ngram_range=(1, self.ngrams),
            sublinear_tf=True,
            dtype=np.float64,
        )
        try:
            matrix = vectorizer.fit_transform(texts)
        except ValueError as exc:  # empty vocabulary
            raise RecforgeError(f"tfidf: cannot fit on this corpus ({exc})") from None
        self.vocabulary = {term: int(i) for term, i in vectorizer.vocabulary_.items()}
        self.idf = vectorizer.idf_.astype(np.float64)
        n_components = max(1, min(self.requested_dim, matrix.shape[1] - 1, matrix.shape[0] - 1))
        if n_components < 1 or matrix.shape[1] < 2:
            self.components = np.eye(1, matrix.shape[1])
        else:
            svd = TruncatedSVD(n_components=n_components, algorithm="randomized", n_iter=7, random_state=self.seed)
            svd.fit(matrix)
            self.components = svd.components_.astype(np.float64)
        return self

    def _tfidf(self, texts: Sequence[str]) -> sp.csr_matrix:
        from sklearn.feature_extraction.text import CountVectorizer

        counts = CountVectorizer(
            tokenizer=self._tokens,
            lowercase=False,
            token_pattern=None,
            vocabulary=self.vocabulary,
            ngram_range=(1, self.ngrams),
            dtype=np.float64,
        ).transform(list(texts))
        counts.data = 1.0 + np.log(counts.data)  # sublinear tf, as at fit
        matrix = counts @ sp.diags(self.idf)
        norms = np.sqrt(matrix.multiply(matrix).sum(axis=1)).A1
        norms[norms == 0] = 1.0
        return sp.csr_matrix(sp.diags(1.0 / norms) @ matrix)

    def encode(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        if self.components is None:
            raise RecforgeError("tfidf: call fit(corpus) before encode")
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return l2_normalize(np.asarray(self._tfidf(texts) @ self.components.T))

    def config(self) -> dict:
        return {
            "dim": self.requested_dim,
            "stop_words": self.stop_words,
            "min_df": self.min_df,
            "max_df": self.max_df,
            "max_features": self.max_features,
            "ngrams": self.ngrams,
            "seed": self.seed,
        }

    def save(self, directory: Path) -> None:
        """Vocabulary and settings as JSON, idf and SVD components as npz."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "tfidf.json").write_text(json.dumps({"config": self.config(), "vocabulary": self.vocabulary}))
        np.savez(directory / "tfidf.npz", idf=self.idf, components=self.components)

    @classmethod
    def load(cls, directory: Path) -> TfidfEncoder:
        directory = Path(directory)
        state = json.loads((directory / "tfidf.json").read_text())
        encoder = cls(**state["config"])
        encoder.vocabulary = {str(k): int(v) for k, v in state["vocabulary"].items()}
        with np.load(directory / "tfidf.npz", allow_pickle=False) as data:
            encoder.idf = data["idf"]
            encoder.components = data["components"]
        return encoder
