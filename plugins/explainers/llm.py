"""LLM explainer: a local causal LM (default SmolLM2-135M-Instruct) writes one or two
sentences grounded in the same evidence as the template explainer.

Greedy decoding, ``max_new_tokens`` and ``max_chars`` cap the length, the
``time_budget_s`` is passed to generation (``max_time``) and checked after it;
on any failure, an empty or over-budget answer, or an answer that names none
of the evidence titles, the template explanation is returned instead.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from recforge_plugins.explainers.template import TemplateExplainer

log = logging.getLogger(__name__)


class LLMExplainer:
    """``explain`` with a local generative model and a template fallback."""

    def __init__(
        self,
        model: str | None = None,
        max_new_tokens: int = 60,
        max_chars: int = 280,
        time_budget_s: float = 20.0,
        device: str = "cpu",
        require_grounding: bool = True,
    ) -> None:
        self.model = model
        self.max_new_tokens = int(max_new_tokens)
        self.max_chars = int(max_chars)
        self.time_budget_s = float(time_budget_s)
        self.device = device
        self.require_grounding = require_grounding
        self.fallback = TemplateExplainer()
        self.last_source = "template"

    def prompt(self, evidence: dict[str, Any]) -> str:
        history = evidence.get("history", [])
        lines = [f'- "{h["title"]}"' for h in history]
        shared = list(evidence.get("shared_genres", [])) + list(evidence.get("shared_keywords", []))
        return (
            "You explain movie recommendations in one or two short sentences.\n"
            f'Recommended: "{evidence.get("item_title")}".\n'
            "The user liked:\n"
            + "\n".join(lines)
            + "\n"
            + (f"Shared: {', '.join(shared[:6])}.\n" if shared else "")
            + "Explain why the user may like the recommended movie, mentioning the movies they liked."
        )

    def generate(self, text: str) -> str:
        import torch

        from recforge.llm import load_causal_lm

        tokenizer, model = load_causal_lm(self.model, device=self.device)
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
        inputs = tokenizer(text, return_tensors="pt").to(model.device)
        with torch.inference_mode():
            output = model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                max_time=self.time_budget_s,
                pad_token_id=tokenizer.pad_token_id,
            )
        return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    def clean(self, text: str) -> str:
        """At most two sentences, at most ``max_chars`` characters, cut at a word boundary."""
        text = " ".join(text.split())
        sentences = re.split(r"(?<=[.!?])\s+", text)
        sentences = sentences[:2]
        if sentences and not re.search(r"[.!?][\"')]?$", sentences[-1]):
            sentences = sentences[:-1]  # drop a sentence cut off by the token or time limit
        text = " ".join(sentences).strip()
        if len(text) > self.max_chars:
            text = text[: self.max_chars].rsplit(" ", 1)[0].rstrip(",;:") + "..."
        return text

    def grounded(self, text: str, evidence: dict[str, Any]) -> bool:
        """True when the text names at least one evidence title (its first two words, any punctuation)."""

        def words(value: str) -> list[str]:
            value = re.sub(r"\(\d{4}\)", "", str(value)).lower()
            value = re.sub(r",\s*(the|a|an)\s*$", "", value.strip())  # "Terminator, The" -> "terminator"
            return re.findall(r"[a-z0-9']+", value)

        spoken = " " + " ".join(words(text)) + " "
        titles = [evidence.get("item_title", "")] + [h["title"] for h in evidence.get("history", [])]
        for title in titles:
            head = words(title)[:2]
            if head and f" {' '.join(head)} " in spoken:
                return True
        return False

    def explain(self, user: Any, item: Any, *, evidence: dict[str, Any]) -> str:
        self.last_source = "template"
        if not evidence.get("history"):
            return self.fallback.explain(user, item, evidence=evidence)
        try:
            from recforge.llm import load_causal_lm

            load_causal_lm(self.model, device=self.device)  # loading (once per process) is not part of the budget
            started = time.perf_counter()
            text = self.clean(self.generate(self.prompt(evidence)))
        except Exception as exc:  # any model failure falls back; the reason goes to the log
            log.warning("llm explainer failed (%s: %s); using the template", type(exc).__name__, exc)
            return self.fallback.explain(user, item, evidence=evidence)
        elapsed = time.perf_counter() - started
        if (
            not text
            or elapsed > self.time_budget_s * 1.1
            or (self.require_grounding and not self.grounded(text, evidence))
        ):
            log.info("llm explanation rejected (%.1fs): %r; using the template", elapsed, text[:120])
            return self.fallback.explain(user, item, evidence=evidence)
        self.last_source = "llm"
        return text
