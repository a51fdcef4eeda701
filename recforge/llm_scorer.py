"""The LLM re-rank feature: log P(Yes) - log P(No) from a local causal LM (SmolLM2 by default)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from recforge.artifacts import write_json
from recforge.features import PartData
from recforge.params import Params
from recforge.text import item_titles

log = logging.getLogger(__name__)


class LLMScorer:
    """TALLRec/LlamaRec-style feature: log P(Yes) - log P(No) that the user will enjoy the item.

    The prompt lists the user's last ``rerank.llm_history`` history titles and
    asks about the candidate; only each user's top ``rerank.llm_candidates``
    candidates (by reciprocal-rank fusion) are scored, the rest get NaN.
    Prompts are batched; scores are cached on disk by prompt hash
    (``<cache_dir>/rerank-llm/<model hash>.json``).
    """

    def __init__(self, params: Params) -> None:
        self.params = params
        cfg = params.rerank
        self.model = cfg.llm_model
        self.top = cfg.llm_candidates
        self.history = cfg.llm_history
        self.batch_size = cfg.llm_batch_size
        key = hashlib.sha256(str(self.model or "smollm2").encode()).hexdigest()[:12]
        self.cache_path = Path(params.paths.cache_dir) / "rerank-llm" / f"{key}.json"
        self.cache: dict[str, float] = json.loads(self.cache_path.read_text()) if self.cache_path.exists() else {}

    def prompts(self, frame: pd.DataFrame, data: PartData) -> tuple[np.ndarray, list[str]]:
        titles = item_titles(data.items)
        order = frame.assign(_r=-frame["rrf"]).sort_values(["user", "_r"], kind="stable")
        chosen = order.groupby("user").head(self.top).index.to_numpy()
        sequences = data.history.sequences
        texts = []
        for row in chosen:
            user, item = int(frame.at[row, "user"]), int(frame.at[row, "item"])
            recent = "; ".join(titles[i] for i in sequences[user][-self.history :][::-1])
            texts.append(
                f'A user recently watched: {recent}.\nWill this user enjoy "{titles[item]}"? Answer Yes or No.'
            )
        return chosen, texts

    def __call__(self, frame: pd.DataFrame, data: PartData) -> np.ndarray:
        rows, texts = self.prompts(frame, data)
        out = np.full(len(frame), np.nan)
        keys = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
        todo = sorted({key: text for key, text in zip(keys, texts, strict=True) if key not in self.cache}.items())
        if todo:
            scores = self.score([text for _, text in todo])
            self.cache.update({key: float(s) for (key, _), s in zip(todo, scores, strict=True)})
            write_json(self.cache, self.cache_path)
        out[frame.index.get_indexer(rows)] = [self.cache[key] for key in keys]
        return out

    def score(self, texts: list[str]) -> np.ndarray:
        """log P(" Yes") - log P(" No") for the assistant's first token, per prompt."""
        import torch

        from recforge.llm import load_causal_lm
        from recforge.workspace import resolve_device

        tokenizer, model = load_causal_lm(self.model, device=resolve_device(self.params.device))
        tokenizer.padding_side = "left"
        yes = tokenizer.encode("Yes", add_special_tokens=False)[0]
        no = tokenizer.encode("No", add_special_tokens=False)[0]
        chats = [
            tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
            if getattr(tokenizer, "chat_template", None)
            else t + "\nAnswer:"
            for t in texts
        ]
        scores = np.empty(len(texts))
        started, reported = time.perf_counter(), 0
        with torch.inference_mode():
            for start in range(0, len(chats), self.batch_size):
                batch = tokenizer(chats[start : start + self.batch_size], return_tensors="pt", padding=True).to(
                    model.device
                )
                logits = model(**batch).logits[:, -1, :].float()
                logp = torch.log_softmax(logits, dim=-1)
                scores[start : start + len(batch["input_ids"])] = (logp[:, yes] - logp[:, no]).cpu().numpy()
                done = start + len(batch["input_ids"])
                if done - reported >= max(len(chats) // 10, 1) or done == len(chats):  # progress in the stage log
                    elapsed = time.perf_counter() - started
                    log.info(
                        "llm scorer: %d/%d prompts, %.0f s, about %.0f s left",
                        done,
                        len(chats),
                        elapsed,
                        elapsed / done * (len(chats) - done),
                    )
                    reported = done
        return scores
