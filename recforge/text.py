"""Text preprocessing shared by the encoders, the user profiles and the explanations.

``clean`` strips markup and normalises Unicode (NFKC) and case; ``tokenize``
also drops punctuation (and, optionally, English stop words) and splits CJK
text into single characters, since Chinese and Japanese do not separate words
with spaces. ``item_texts`` builds one document per item from a per-dataset
choice of fields (``encode.fields`` in params.yaml).
"""

from __future__ import annotations

import bisect
import html
import re
import unicodedata
from collections.abc import Iterable, Sequence
from functools import lru_cache

import pandas as pd

# Han (incl. extension A and compatibility ideographs), Hiragana, Katakana.
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\u31f0-\u31ff"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")
# Every pattern here runs in linear time: the tag pattern is bounded, the URL, apostrophe, space and token
# patterns cannot backtrack across a failed start; script/style bodies and Markdown links, whose obvious
# patterns (``<(script|style)\b.*?</\1\s*>``, ``\[([^\]]*)\]\([^)]*\)``) backtrack to the end of the text
# from every failed start (quadratic: 50,000 "[" took seconds), are scanned by hand with the same result.
_TAG = re.compile(r"<[^>]{0,500}>")
_SCRIPT_OPEN = re.compile(r"<(script|style)\b", re.IGNORECASE)
_SCRIPT_CLOSE = re.compile(r"</(script|style)\s*>", re.IGNORECASE)
_URL = re.compile(r"https?://\S+|www\.\S+")
_APOSTROPHE = re.compile(r"(?<=\w)['’](?=\w)")
_SPACE = re.compile(r"\s+")

MAX_CHARS = 100_000  # clean() reads at most this many characters of one text (before any pattern runs)


@lru_cache(maxsize=1)
def english_stop_words() -> frozenset[str]:
    """English stop words (scikit-learn's list), loaded on first use."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


def strip_markup(text: str) -> str:
    """Remove HTML/XML tags (and script/style bodies), Markdown link syntax and URLs; unescape entities.

    Linear in the length of ``text``.
    """
    text = _strip_scripts(text)
    text = _TAG.sub(" ", text)
    text = html.unescape(text)
    text = _strip_md_links(text)
    text = _URL.sub(" ", text)
    return text


def _strip_scripts(text: str) -> str:
    """Each ``<script ...>...</script>`` / ``<style>...</style>`` (any case) becomes one space.

    The same result as ``re.sub(r"<(script|style)\\b.*?</\\1\\s*>", " ", text, flags=re.I | re.S)``: the
    leftmost opening whose name closes later, up to the first closing of that name; in one pass over
    precomputed closing positions instead of a scan to the end of the text from every opening.
    """
    if "<" not in text:
        return text
    closings: dict[str, list[tuple[int, int]]] = {"script": [], "style": []}
    for match in _SCRIPT_CLOSE.finditer(text):
        closings[match.group(1).lower()].append((match.start(), match.end()))
    if not closings["script"] and not closings["style"]:
        return text
    starts = {name: [start for start, _ in spans] for name, spans in closings.items()}
    parts, pos = [], 0
    for match in _SCRIPT_OPEN.finditer(text):
        if match.start() < pos:  # inside a body already removed
            continue
        name = match.group(1).lower()
        index = bisect.bisect_left(starts[name], match.end())
        if index == len(starts[name]):
            continue
        parts += [text[pos : match.start()], " "]
        pos = closings[name][index][1]
    parts.append(text[pos:])
    return "".join(parts)


def _strip_md_links(text: str) -> str:
    """``[label](target)`` becomes ``label``.

    The same result as ``re.sub(r"\\[([^\\]]*)\\]\\([^)]*\\)", r"\\1", text)``: from an ``[``, the first
    ``]`` must be followed by ``(`` and a later ``)``. Every ``[`` before a ``]`` that is not followed by
    ``(`` fails the same way, so the scan jumps past it; with no ``]`` or ``)`` left, nothing more matches.
    """
    parts, pos, start = [], 0, text.find("[")
    while start >= 0:
        close = text.find("]", start + 1)
        if close < 0:
            break
        if text.startswith("(", close + 1):
            end = text.find(")", close + 2)
            if end < 0:
                break
            parts += [text[pos:start], text[start + 1 : close]]
            pos = end + 1
            start = text.find("[", pos)
        else:
            start = text.find("[", close + 1)
    if not parts:
        return text
    parts.append(text[pos:])
    return "".join(parts)


def normalize(text: str, *, lower: bool = True) -> str:
    """NFKC normalisation (full-width forms, ligatures), case folding and collapsed whitespace."""
    text = unicodedata.normalize("NFKC", text)
    if lower:
        text = text.casefold()
    return _SPACE.sub(" ", text).strip()


def clean(text: object, *, lower: bool = True) -> str:
    """Markup stripped, Unicode-normalised, optionally lower-cased text ('' for None/NaN).

    Only the first :data:`MAX_CHARS` characters are read.
    """
    if text is None or (isinstance(text, float) and text != text):
        return ""
    return normalize(strip_markup(str(text)[:MAX_CHARS]), lower=lower)


def tokenize(text: object, *, stop_words: bool | Iterable[str] = False, min_length: int = 1) -> list[str]:
    """Word tokens of ``text`` after :func:`clean`, punctuation dropped.

    CJK ideographs and kana become one token each; ``stop_words`` is True for
    the English list or any iterable of words to drop; tokens shorter than
    ``min_length`` characters are dropped (a CJK character always counts).
    """
    cleaned = _APOSTROPHE.sub("", clean(text))
    tokens = _TOKEN.findall(cleaned)
    if stop_words:
        stops = english_stop_words() if stop_words is True else frozenset(stop_words)
        tokens = [t for t in tokens if t not in stops]
    if min_length > 1:
        tokens = [t for t in tokens if len(t) >= min_length or _is_cjk(t)]
    return tokens


def _is_cjk(token: str) -> bool:
    return len(token) == 1 and re.match(rf"[{_CJK}]", token) is not None


def item_titles(items: pd.DataFrame) -> list[str]:
    """Per item, its title (the item id where the table has no title column)."""
    return [str(t) for t in (items["title"] if "title" in items.columns else items["item_id"]).tolist()]


def item_texts(items: pd.DataFrame, fields: Sequence[str]) -> list[str]:
    """One document per item from ``fields`` (missing columns skipped; '|' lists become words).

    Markup is stripped and Unicode normalised, but case is kept: sentence
    encoders use it. Items with no text fall back to their title or id.
    """
    present = [f for f in fields if f in items.columns]
    if not present:
        present = ["title"] if "title" in items.columns else []
    if not present:
        return [str(i) for i in items["item_id"]]
    parts = [items[f].astype("string").fillna("").str.replace("|", ", ", regex=False) for f in present]
    documents = []
    for values in zip(*parts):
        pieces = [clean(v, lower=False) for v in values]
        documents.append(". ".join(p for p in pieces if p))
    return documents
