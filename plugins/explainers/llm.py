"""LLM explainer: a local causal LM (default SmolLM2-135M-Instruct) writes one or two
sentences grounded in the same evidence as the template explainer.

Speed (2 CPU cores, measured in docs/serving.md "Generated explanations"): a
short prompt (titles without year or alternate title, at most three history
items, a few shared terms and the user's profile keywords), the answer primed
with ``You may like "<item>" because, like "<closest history item>", it`` (the
model only continues it: fewer tokens, and it starts grounded), greedy
decoding of at most ``max_new_tokens`` tokens, stopped as soon as the
``sentences``-th sentence ends (default 1: at 2 sentences and 40 tokens the
second one was mostly cut off, or repeated the first, on ml-latest-small). A static KV cache did not help on CPU (measured), so generation
uses the default dynamic cache. On CUDA the model runs in bfloat16 (float16
where bfloat16 is unsupported).

Grounding (:meth:`LLMExplainer.grounded`, strict): the text must name the
recommended item, and every title it mentions (each span in quotes, and each
run of two or more capitalised words outside quotes) must be the recommended
item or one of the evidence's history items; a quoted shared genre or keyword
is allowed too. Anything else (a title the model made up, a wrong year) is
rejected. On any failure, an empty or over-budget answer or an ungrounded one,
the template explanation is returned instead; ``last_source`` says which.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from recforge_plugins.explainers.template import TemplateExplainer

log = logging.getLogger(__name__)

YEAR = re.compile(r"\((\d{4})\)")
ARTICLE = re.compile(r"^(.*),\s*(the|a|an|les|la|le|l'|il|el|die|der|das)$", re.IGNORECASE)
QUOTED = re.compile(r"[\"“”]([^\"“”]{1,200})[\"“”]")
WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
SENTENCE_END = re.compile(r"[.!?][\"'”’)]*(?=\s|$)")
# lower-case words that may join the capitalised words of one title ("Lord of the Rings")
CONNECTORS = {"of", "the", "and", "a", "an", "in", "on", "at", "to", "for", "with", "from", "de", "la", "le", "&"}
# common first words of a sentence: "If Toy Story ..." may be checked without them
SENTENCE_STARTERS = {
    "i",
    "it",
    "if",
    "like",
    "you",
    "they",
    "this",
    "the",
    "and",
    "but",
    "both",
    "its",
    "as",
    "with",
    "also",
    "in",
    "for",
    "so",
    "just",
    "these",
    "those",
    "while",
    "because",
    "since",
    "all",
    "fans",
    "a",
    "an",
    "their",
    "your",
    "unlike",
    "after",
    "when",
    "from",
    "then",
    "plus",
    "much",
    "similar",
    "even",
}
MAX_TITLE_WORDS = 8  # titles in the prompt are cut to this many words


def words(text: str) -> list[str]:
    return [w.replace("’", "'") for w in WORD.findall(text.lower())]


def display_title(title: str) -> str:
    """A title as people write it: no year, no alternate title in parentheses, the article in front
    ("Shawshank Redemption, The (1994)" -> "The Shawshank Redemption"), at most MAX_TITLE_WORDS words."""
    text = YEAR.sub("", str(title))
    text = re.sub(r"\([^)]*\)", "", text)  # "(a.k.a. Se7en)", "(Dikiy Zapad)"
    text = " ".join(text.split()).strip(" ,")
    match = ARTICLE.match(text)
    if match:
        article = match.group(2)
        joiner = "" if article.endswith("'") else " "
        text = f"{article.capitalize()}{joiner}{match.group(1)}"
    if len(text.split()) > MAX_TITLE_WORDS and ":" in text:
        text = text.split(":")[0].strip()  # "The Lord of the Rings: The Return of the King" -> its main part
    parts = text.split()
    return " ".join(parts[:MAX_TITLE_WORDS]) if parts else str(title)


def title_forms(title: str) -> list[list[str]]:
    """The word sequences that count as naming ``title``: the full title (article moved to the front,
    year dropped), its display form, and its main part before a colon."""
    shown = display_title(title)
    forms = [words(YEAR.sub("", str(title))), words(shown), words(shown.split(":")[0])]
    without_article = [f[1:] if f and f[0] in ("the", "a", "an") and len(f) > 1 else f for f in forms]
    out: list[list[str]] = []
    for form in forms + without_article:
        if form and form not in out:
            out.append(form)
    return out


def _contains(haystack: list[str], needle: list[str]) -> bool:
    n = len(needle)
    return n > 0 and any(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


class _SentenceStop:
    """A StoppingCriteria: stop once the generated text holds ``sentences`` sentence ends."""

    def __init__(self, tokenizer: Any, start: int, sentences: int = 2) -> None:
        self.tokenizer, self.start, self.sentences = tokenizer, start, sentences

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        text = self.tokenizer.decode(input_ids[0, self.start :], skip_special_tokens=True)
        ends = [m for m in SENTENCE_END.finditer(text) if text[: m.start()].count('"') % 2 == 0]
        done = len(ends) >= self.sentences
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


class LLMExplainer:
    """``explain`` with a local generative model and a template fallback."""

    def __init__(
        self,
        model: str | None = None,
        max_new_tokens: int = 32,
        max_chars: int = 280,
        time_budget_s: float = 20.0,
        device: str = "cpu",
        require_grounding: bool = True,
        kind: str = "movie",
        prime: bool = True,
        dtype: str | None = None,
        sentences: int = 1,
    ) -> None:
        self.model = model
        self.max_new_tokens = int(max_new_tokens)
        self.max_chars = int(max_chars)
        self.time_budget_s = float(time_budget_s)
        self.device = device
        self.require_grounding = require_grounding
        self.kind = kind
        self.prime = bool(prime)
        self.dtype = dtype  # None: float32 on CPU, bfloat16 (else float16) on CUDA
        self.sentences = max(1, int(sentences))  # generation stops when this many sentences are complete
        self.fallback = TemplateExplainer()
        self.last_source = "template"
        self.last_tokens = 0  # tokens the last generation produced

    # ---- prompt and generation ---------------------------------------------------------------------------

    def system(self) -> str:
        return f"You explain a {self.kind} recommendation in one or two short sentences. Mention only the titles given."

    def prompt(self, evidence: dict[str, Any]) -> str:
        """The user message: the recommended item, the closest history items, shared terms, the user's keywords."""
        history = ", ".join(f'"{display_title(h["title"])}"' for h in evidence.get("history", [])[:3])
        shared = list(evidence.get("shared_genres", []))[:3] + list(evidence.get("shared_keywords", []))[:3]
        likes = list(evidence.get("user_keywords", []))[:4]
        text = f'Recommended: "{display_title(evidence.get("item_title", ""))}". They liked: {history}.'
        if shared:
            text += f" Shared: {', '.join(shared)}."
        if likes:
            text += f" Likes: {', '.join(likes)}."
        return text

    def primer(self, evidence: dict[str, Any]) -> str:
        """The start of the answer the model continues (empty when ``prime`` is off): it names the
        recommended item and the closest history item, the model says what they have in common."""
        if not self.prime:
            return ""
        text = f'You may like "{display_title(evidence.get("item_title", ""))}" because'
        history = evidence.get("history", [])
        if history:
            text += f', like "{display_title(history[0]["title"])}", it'
        return text

    def _dtype(self) -> str:
        if self.dtype:
            return self.dtype
        if str(self.device).startswith("cuda"):
            import torch

            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return "float32"

    def _load(self) -> tuple[Any, Any]:
        from recforge.llm import load_causal_lm

        return load_causal_lm(self.model, device=self.device, dtype=self._dtype())

    def generate(self, text: str, primer: str = "") -> str:
        """The model's answer to user message ``text``, starting with ``primer`` (which is included)."""
        import torch
        from transformers import StoppingCriteriaList

        tokenizer, model = self._load()
        if getattr(tokenizer, "chat_template", None):
            chat = tokenizer.apply_chat_template(
                [{"role": "system", "content": self.system()}, {"role": "user", "content": text}],
                tokenize=False,
                add_generation_prompt=True,
            )
        else:
            chat = f"{self.system()}\n{text}\n"
        inputs = tokenizer(chat + primer, return_tensors="pt").to(model.device)
        start = inputs["input_ids"].shape[1]
        with torch.inference_mode():
            output = model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                max_time=self.time_budget_s,
                pad_token_id=tokenizer.pad_token_id,
                stopping_criteria=StoppingCriteriaList([_SentenceStop(tokenizer, start, self.sentences)]),
            )
        self.last_tokens = int(output.shape[1] - start)
        return primer + tokenizer.decode(output[0, start:], skip_special_tokens=True)

    def clean(self, text: str) -> str:
        """At most two sentences, at most ``max_chars`` characters, cut at a word boundary."""
        text = " ".join(text.split())
        # sentence ends outside quotes only: a quoted title may hold a period ("E.T. the Extra-Terrestrial")
        sentences, start = [], 0
        for match in re.finditer(r"(?<=[.!?])\s+|(?<=[.!?][\"”])\s+", text):
            if text[: match.start()].count('"') % 2 == 0 and not text[match.end() : match.end() + 1].islower():
                sentences.append(text[start : match.start()])
                start = match.end()
        sentences.append(text[start:])
        sentences = sentences[: self.sentences]
        if sentences and not re.search(r"[.!?][\"'”’)]*$", sentences[-1]):
            sentences = sentences[:-1]  # drop a sentence cut off by the token or time limit
        text = " ".join(sentences).strip()
        if len(text) > self.max_chars:
            text = text[: self.max_chars].rsplit(" ", 1)[0].rstrip(",;:") + "..."
        return text

    # ---- grounding ---------------------------------------------------------------------------------------

    def grounding_errors(self, text: str, evidence: dict[str, Any]) -> list[str]:
        """Why ``text`` is not grounded in ``evidence`` (empty: it is).

        1. It names the recommended item: one of its :func:`title_forms` appears as consecutive words.
        2. Every span in quotes is the recommended item or a history item (one of their title forms,
           with the same year when it gives one), or a shared genre / keyword / profile keyword.
        3. Outside quotes, every run of two or more capitalised words (lower-case connectors like "of the"
           may join them; a sentence's first word may be dropped) lies inside the recommended item's or a
           history item's title.
        """
        errors = []
        item = str(evidence.get("item_title") or "")
        titles = [item] + [str(h["title"]) for h in evidence.get("history", [])]
        forms = [(form, YEAR.search(t)) for t in titles if t for form in title_forms(t)]
        terms = {
            " ".join(words(str(t)))
            for key in ("shared_genres", "shared_keywords", "user_keywords", "item_genres")
            for t in evidence.get(key, [])
        }
        spoken = words(text)
        if item and not any(_contains(spoken, form) for form in title_forms(item)):
            errors.append(f"does not name the recommended item {item!r}")
        for span in QUOTED.findall(text):
            span_words = words(YEAR.sub("", span))
            year = YEAR.search(span)
            if " ".join(span_words) in terms:
                continue
            ok = any(
                span_words == form and (year is None or found is None or year.group(1) == found.group(1))
                for form, found in forms
            )
            if not ok:
                errors.append(f"quotes {span!r}, not an evidence title")
        outside = QUOTED.sub(" . ", text)
        term_words = {w for t in terms for w in t.split()}
        for run, at_start in self._capitalised_runs(outside):
            if self._run_allowed(run, at_start, [form for form, _ in forms], term_words):
                continue
            errors.append(f"names {' '.join(run)!r}, not an evidence title")
        return errors

    @staticmethod
    def _run_allowed(run: list[str], at_start: bool, forms: list[list[str]], term_words: set[str]) -> bool:
        candidates = [run]
        if at_start and run[0] in SENTENCE_STARTERS:
            rest = run[1:]
            while rest and rest[0] in CONNECTORS:
                rest = rest[1:]
            if sum(w not in CONNECTORS for w in rest) < 2:
                return True  # "If Pixar ..." - one capitalised word after a common first word: no title
            candidates.append(rest)

        def allowed(part: list[str]) -> bool:
            return any(_contains(form, part) for form in forms) or all(
                w in term_words or w in CONNECTORS
                for w in part  # "Sci Fi", "Film Noir": evidence genres, keywords
            )

        for candidate in candidates:
            if allowed(candidate):
                return True
            # "Toy Story and Lord of the Rings": two titles joined by "and"; a one-word part can be no title
            parts = re.split(r" (?:and|&) ", " ".join(candidate))
            if len(parts) > 1 and all(len(p.split()) < 2 or allowed(p.split()) for p in parts):
                return True
        return False

    @staticmethod
    def _capitalised_runs(text: str) -> list[tuple[list[str], bool]]:
        """(words, starts a sentence) of each run of two or more capitalised words (a number may follow
        one, lower-case connectors like "of the" may join them), the title-like mentions outside quotes."""
        runs: list[tuple[list[str], bool]] = []
        current: list[str] = []
        capitals = 0
        sentence_start = True
        starts_run = False

        def close() -> None:
            nonlocal current, capitals
            while current and current[-1] in CONNECTORS:
                current.pop()
            if capitals >= 2:
                runs.append((current, starts_run))
            current, capitals = [], 0

        for token in re.findall(r"[^\W_]+(?:['’][^\W_]+)*|[.!?;:,()]", text):
            if token in ".!?;:,()":
                close()
                sentence_start = token in ".!?"
                continue
            word = token.replace("’", "'")
            if word[0].isupper() or (current and word.isdigit()):
                if not current:
                    starts_run = sentence_start
                current.append(word.lower())
                capitals += 1
            elif current and word.lower() in CONNECTORS:
                current.append(word.lower())
            else:
                close()
            sentence_start = False
        close()
        return runs

    def grounded(self, text: str, evidence: dict[str, Any]) -> bool:
        """True when :meth:`grounding_errors` finds nothing."""
        return not self.grounding_errors(text, evidence)

    # ---- explain -----------------------------------------------------------------------------------------

    def explain(self, user: Any, item: Any, *, evidence: dict[str, Any]) -> str:
        self.last_source = "template"
        self.last_tokens = 0
        if not evidence.get("history"):
            return self.fallback.explain(user, item, evidence=evidence)
        try:
            self._load()  # loading (once per process) is not part of the budget
            started = time.perf_counter()
            text = self.clean(self.generate(self.prompt(evidence), self.primer(evidence)))
        except Exception as exc:  # any model failure falls back; the reason goes to the log
            log.warning("llm explainer failed (%s: %s); using the template", type(exc).__name__, exc)
            return self.fallback.explain(user, item, evidence=evidence)
        elapsed = time.perf_counter() - started
        errors = self.grounding_errors(text, evidence) if self.require_grounding and text else []
        if not text or elapsed > self.time_budget_s * 1.1 or errors:
            log.info("llm explanation rejected (%.1fs, %s): %r; using the template", elapsed, errors, text[:120])
            return self.fallback.explain(user, item, evidence=evidence)
        self.last_source = "llm"
        return text
