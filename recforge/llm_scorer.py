"""The LLM re-rank feature: a listwise verbalizer pass per user (LlamaRec style).

One prompt per user lists their last ``rerank.llm_history`` history titles and
their top ``rerank.llm_candidates`` candidates (by reciprocal-rank fusion) as
lettered options; one forward pass reads the logits of the option letters at
the answer position. The feature ``llm_logprob`` is each option's
log-probability among the options, minus the mean log-probability of that
option position over all scored users (the model's preference for early
letters is a position prior, not a judgement of the item). Candidates beyond
the top ``llm_candidates`` get NaN.

Cost: one forward pass of ~100-250 tokens per user instead of one prompt per
(user, candidate) pair. Prompts are batched (left padding), run on CUDA in
bfloat16 when ``device`` resolves to cuda, on the CPU in float32 with all of
torch's threads otherwise, and the raw option scores are cached on disk by
prompt content (``<cache_dir>/rerank-llm/<model hash>.json``), so a re-run or
a second experiment on the same lists costs nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import string
import time
from pathlib import Path

import numpy as np
import pandas as pd

from recforge.artifacts import write_json
from recforge.features import PartData
from recforge.params import Params
from recforge.text import item_titles

log = logging.getLogger(__name__)

LETTERS = string.ascii_uppercase  # option labels; rerank.llm_candidates is at most 26
SYSTEM = "You recommend what a person will choose next."
QUESTION = "Which option will the user choose next? Answer with the letter."
_YEAR = re.compile(r"\s*\(\d{4}\)\s*$")
_ARTICLE = re.compile(r",\s*(The|A|An)$")


def short_title(title: str, words: int) -> str:
    """A title cut for the prompt: no trailing "(1995)", "Matrix, The" -> "The Matrix", at most ``words`` words."""
    title = _YEAR.sub("", str(title)).strip()
    article = _ARTICLE.search(title)
    if article:
        title = f"{article.group(1)} {title[: article.start()]}"
    return " ".join(title.split()[:words])


def user_prompt(history: list[str], options: list[str]) -> str:
    """The user turn of one listwise prompt (history newest first, options lettered in rank-fusion order)."""
    lines = [f"{LETTERS[i]}. {title}" for i, title in enumerate(options)]
    return "History: " + "; ".join(history) + ".\nOptions:\n" + "\n".join(lines) + "\n" + QUESTION


class LLMScorer:
    """``llm_logprob`` for each user's top ``llm_candidates`` candidates from one forward pass per user."""

    def __init__(self, params: Params) -> None:
        self.params = params
        cfg = params.rerank
        self.model = cfg.llm_model
        self.top = min(cfg.llm_candidates, len(LETTERS))
        self.history = cfg.llm_history
        self.batch_size = cfg.llm_batch_size
        self.title_words = cfg.llm_title_words
        key = hashlib.sha256(f"listwise:{self.model or 'smollm2'}".encode()).hexdigest()[:12]
        self.cache_path = Path(params.paths.cache_dir) / "rerank-llm" / f"{key}.json"
        self.cache: dict[str, list[float]] = json.loads(self.cache_path.read_text()) if self.cache_path.exists() else {}
        self.stats: dict[str, float] = {}

    def prompts(self, frame: pd.DataFrame, data: PartData) -> tuple[list[np.ndarray], list[str]]:
        """Per user with candidates: (the frame rows of their options in letter order, the user turn)."""
        titles = [short_title(t, self.title_words) for t in item_titles(data.items)]
        order = frame.assign(_r=-frame["rrf"]).sort_values(["user", "_r"], kind="stable")
        chosen = order.groupby("user", sort=True).head(self.top)
        sequences = data.history.sequences
        rows, texts = [], []
        for user, group in chosen.groupby("user", sort=True):
            recent = [titles[i] for i in sequences[int(user)][-self.history :][::-1]]
            rows.append(group.index.to_numpy())
            texts.append(user_prompt(recent, [titles[int(i)] for i in group["item"]]))
        return rows, texts

    def __call__(self, frame: pd.DataFrame, data: PartData) -> np.ndarray:
        out = np.full(len(frame), np.nan)
        if frame.empty:
            return out
        rows, texts = self.prompts(frame, data)
        keys = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
        todo = sorted({key: text for key, text in zip(keys, texts, strict=True) if key not in self.cache}.items())
        started = time.perf_counter()
        if todo:
            self.score([text for _, text in todo], keys=[key for key, _ in todo])
            write_json(self.cache, self.cache_path)
        self.stats = {
            "users": len(texts),
            "scored": len(todo),
            "cached": len(texts) - len(todo),
            "seconds": round(time.perf_counter() - started, 2),
        }
        scores = [np.asarray(self.cache[key], dtype=np.float64) for key in keys]
        # the position prior: mean log-probability of each letter over the users with that many options
        prior = np.zeros(self.top)
        counts = np.zeros(self.top)
        for s in scores:
            prior[: len(s)] += s
            counts[: len(s)] += 1
        prior = prior / np.maximum(counts, 1)
        positions = frame.index.get_indexer(np.concatenate(rows))
        out[positions] = np.concatenate([s - prior[: len(s)] for s in scores])
        return out

    def score(self, texts: list[str], keys: list[str] | None = None) -> list[list[float]]:
        """Log-probabilities of the option letters (among the options) per user turn; cached when keyed."""
        import torch

        from recforge.llm import load_causal_lm
        from recforge.workspace import resolve_device

        device = resolve_device(self.params.device)
        tokenizer, model = load_causal_lm(self.model, device=device)
        tokenizer.padding_side = "left"
        letters = [tokenizer.encode(c, add_special_tokens=False)[0] for c in LETTERS]
        chats = [self._chat(tokenizer, t) for t in texts]
        counts = [t.count("\n") - 2 for t in texts]  # option lines: all lines but the history and the question
        # similar lengths in a batch: less padding
        order = sorted(range(len(chats)), key=lambda i: len(chats[i]))
        results: list[list[float]] = [[] for _ in texts]
        started, reported = time.perf_counter(), 0
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            for start in range(0, len(order), self.batch_size):
                batch_ids = order[start : start + self.batch_size]
                batch = tokenizer([chats[i] for i in batch_ids], return_tensors="pt", padding=True).to(model.device)
                logits = model(**batch).logits[:, -1, :].float()
                for row, i in enumerate(batch_ids):
                    option_logits = logits[row, letters[: counts[i]]]
                    results[i] = torch.log_softmax(option_logits, dim=-1).cpu().tolist()
                    if keys is not None:
                        self.cache[keys[i]] = results[i]
                done = start + len(batch_ids)
                if done - reported >= max(len(chats) // 10, 1) or done == len(chats):
                    elapsed = time.perf_counter() - started
                    log.info(
                        "llm scorer: %d/%d users, %.0f s (%.1f users/s), about %.0f s left",
                        done,
                        len(chats),
                        elapsed,
                        done / elapsed,
                        elapsed / done * (len(chats) - done),
                    )
                    reported = done
                    if keys is not None:  # progress survives an interruption
                        write_json(self.cache, self.cache_path)
        return results

    @staticmethod
    def _chat(tokenizer, text: str) -> str:
        if getattr(tokenizer, "chat_template", None):
            messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return f"{SYSTEM}\n{text}\nAnswer:"
