"""Mean-pooled last hidden states of a local causal language model (default SmolLM2-135M-Instruct)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recforge.errors import RecforgeError
from recforge.text import clean

from recforge_plugins.encoders._common import l2_normalize, resolve_device

log = logging.getLogger(__name__)


class _StopForward(Exception):
    """Raised by a forward hook to skip the decoder layers above the pooled one."""


class LLMEncoder:
    """Embeds texts with the decoder of a causal LM (see recforge.llm), mean-pooled over tokens.

    Options: ``model`` (a local Hugging Face directory or .gguf file; default
    SmolLM2, fetched and converted once by ``make models``), ``max_length``
    (tokens per text; 64 keeps all MovieLens items feasible on a CPU),
    ``device`` (auto | cpu | cuda), ``layer`` (pool the output of decoder
    layer ``layer`` instead of the final normed state; the layers above it are
    not run, so ``layer`` = half the depth halves the cost). Texts are sorted
    by length and batched so padding costs little; the LM head is never run.
    """

    name = "llm"

    def __init__(
        self, model: str | None = None, max_length: int = 64, device: str = "auto", layer: int | None = None
    ) -> None:
        self.model_path = model
        self.max_length = int(max_length)
        self.device = device
        self.layer = None if layer is None else int(layer)
        self._pair: tuple[Any, Any] | None = None

    def _load(self) -> tuple[Any, Any]:
        if self._pair is None:
            from recforge.llm import load_causal_lm

            self._pair = load_causal_lm(self.model_path, device=resolve_device(self.device))
        return self._pair

    @property
    def dim(self) -> int:
        return int(self._load()[1].config.hidden_size)

    def fit(self, texts: Sequence[str]) -> LLMEncoder:
        return self

    def encode(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        import torch

        tokenizer, model = self._load()
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if len(texts) == 0:
            return out
        cleaned = [clean(t, lower=False) or " " for t in texts]
        ids = tokenizer(cleaned, add_special_tokens=False, truncation=True, max_length=self.max_length)["input_ids"]
        ids = [row if row else [tokenizer.eos_token_id] for row in ids]
        order = np.argsort([len(row) for row in ids], kind="stable")
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
        device = next(model.parameters()).device
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        started, reported = time.perf_counter(), time.perf_counter()
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                if time.perf_counter() - reported > 30:
                    reported = time.perf_counter()
                    log.info("llm encoder: %d/%d texts (%.1f texts/s)", start, len(order), start / (reported - started))
                rows = order[start : start + batch_size]
                width = max(len(ids[r]) for r in rows)
                input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for i, r in enumerate(rows):
                    input_ids[i, : len(ids[r])] = torch.tensor(ids[r])
                    mask[i, : len(ids[r])] = 1
                hidden = self._hidden(decoder, input_ids.to(device), mask.to(device))
                mask_f = mask.to(device).unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask_f).sum(dim=1) / mask_f.sum(dim=1).clamp(min=1.0)
                out[rows] = pooled.float().cpu().numpy()
        return l2_normalize(out)

    def _hidden(self, decoder: Any, input_ids: Any, mask: Any) -> Any:
        if self.layer is None:
            return decoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
        layers = decoder.layers
        if not 1 <= self.layer <= len(layers):
            raise RecforgeError(f"llm encoder: layer must be in 1..{len(layers)}, not {self.layer}")
        captured: dict[str, Any] = {}

        def stop(module: Any, args: Any, output: Any) -> None:
            captured["hidden"] = output[0] if isinstance(output, tuple) else output
            raise _StopForward

        handle = layers[self.layer - 1].register_forward_hook(stop)
        try:
            decoder(input_ids=input_ids, attention_mask=mask)
        except _StopForward:
            pass
        finally:
            handle.remove()
        norm = getattr(decoder, "norm", None)  # the final RMSNorm tames the residual stream's outlier dimensions
        return norm(captured["hidden"]) if norm is not None else captured["hidden"]

    def config(self) -> dict:
        return {"model": self.model_path, "max_length": self.max_length, "device": self.device, "layer": self.layer}

    def save(self, directory: Path) -> None:
        """Only the settings: the weights stay in the model cache."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "llm.json").write_text(json.dumps({"config": self.config()}))

    @classmethod
    def load(cls, directory: Path) -> LLMEncoder:
        return cls(**json.loads((Path(directory) / "llm.json").read_text())["config"])
