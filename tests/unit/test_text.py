"""Text preprocessing: markup, Unicode, case, punctuation, stop words, CJK, item fields."""

from __future__ import annotations

import html
import random
import re
import time

import pandas as pd
import pytest

from recforge.text import MAX_CHARS, clean, item_texts, item_titles, normalize, strip_markup, tokenize


def test_strip_markup_removes_tags_scripts_entities_links_and_urls():
    text = (
        '<p>Great <b>film</b> &amp; more</p><script>var x = "<b>";</script> see [the site](http://a.b) https://x.org/y'
    )
    out = strip_markup(text)
    assert "<" not in out and "script" not in out and "var x" not in out
    assert "&amp;" not in out and "&" in out
    assert "the site" in out and "http" not in out and "x.org" not in out


def test_normalize_applies_nfkc_case_folding_and_whitespace():
    assert normalize("Ｆｕｌｌ\u3000ＷＩＤＴＨ  ﬁne\n") == "full width fine"
    assert normalize("Straße") == "strasse"
    assert normalize("MiXeD", lower=False) == "MiXeD"


def test_clean_handles_missing_values():
    assert clean(None) == ""
    assert clean(float("nan")) == ""
    assert clean(42) == "42"


def test_tokenize_drops_punctuation_and_keeps_contractions_whole():
    assert tokenize("Hello, World!!! It's... sci-fi (1999)") == ["hello", "world", "its", "sci", "fi", "1999"]


def test_tokenize_optional_stop_words():
    assert tokenize("the story of a robot") == ["the", "story", "of", "a", "robot"]
    assert tokenize("the story of a robot", stop_words=True) == ["story", "robot"]
    assert tokenize("the story of a robot", stop_words={"robot"}) == ["the", "story", "of", "a"]


def test_tokenize_splits_cjk_characters_and_keeps_latin_words():
    assert tokenize("我爱北京") == ["我", "爱", "北", "京"]
    assert tokenize("テスト movie映画") == ["テ", "ス", "ト", "movie", "映", "画"]
    # Hangul is written with spaces between words: kept as words
    assert tokenize("한국 영화") == ["한국", "영화"]
    # full-width digits and letters become ASCII (NFKC)
    assert tokenize("ＡＢＣ１２３") == ["abc123"]


def test_tokenize_min_length_keeps_cjk_characters():
    assert tokenize("a bb ccc 猫", min_length=2) == ["bb", "ccc", "猫"]


def test_item_texts_uses_chosen_fields_in_order_and_skips_missing():
    items = pd.DataFrame(
        {
            "item_id": [1, 2],
            "title": ["Alien (1979)", "Heat"],
            "genres": ["Horror|Sci-Fi", None],
            "text": ["<b>space</b> monster", ""],
        }
    )
    texts = item_texts(items, ["title", "genres", "description", "text"])
    assert texts[0] == "Alien (1979). Horror, Sci-Fi. space monster"
    assert texts[1] == "Heat"
    assert item_texts(items, ["description"]) == ["Alien (1979)", "Heat"]  # falls back to the title


def test_item_titles_fall_back_to_ids():
    assert item_titles(pd.DataFrame({"item_id": [1, 2], "title": ["A", "B"]})) == ["A", "B"]
    assert item_titles(pd.DataFrame({"item_id": [1, 2]})) == ["1", "2"]


# ---- linear time, same result as the old patterns ----------------------------------------------------------

OLD_SCRIPT = re.compile(r"<(script|style)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
OLD_MD_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
OLD_TAG = re.compile(r"<[^>]{0,500}>")
OLD_URL = re.compile(r"https?://\S+|www\.\S+")


def old_strip_markup(text: str) -> str:
    """strip_markup as it was with the quadratic patterns (the reference for equal results)."""
    text = OLD_SCRIPT.sub(" ", text)
    text = OLD_TAG.sub(" ", text)
    text = html.unescape(text)
    text = OLD_MD_LINK.sub(r"\1", text)
    return OLD_URL.sub(" ", text)


PIECES = [
    "[",
    "]",
    "(",
    ")",
    "<",
    ">",
    "/",
    "script",
    "SCRIPT",
    "style",
    "Style",
    "</script>",
    "</style >",
    "<script>",
    "<style x=1>",
    "</script",
    "a",
    " ",
    "\n",
    "[a](b)",
    "http://x.y",
    "&amp;",
    "scripts",
    "é",
]


def test_strip_markup_equals_the_old_patterns_on_markdown_and_html():
    documents = [
        '<p>Great <b>film</b> &amp; more</p><script>var x = "<b>";</script> see [the site](http://a.b) https://x.org/y',
        "# Title\n\nSee [docs](https://example.com/docs) and [more [nested]](x) or [broken](no close",
        "<STYLE type='text/css'>p {color: red}</style ><Script>alert(1)</SCRIPT>text after<br/>",
        "<script>never closed <b>bold</b> [link](target) and <style>a{}</style> end",
        "[a] (b) [c](d) ]( [[x](y)] <scripts>not a script</scripts> www.site.org done",
    ]
    for document in documents:
        assert strip_markup(document) == old_strip_markup(document), document


def test_strip_markup_equals_the_old_patterns_on_random_markup():
    rng = random.Random(0)
    for _ in range(5000):
        document = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 30)))
        assert strip_markup(document) == old_strip_markup(document), document


@pytest.mark.parametrize(
    "adversarial",
    [
        "[" * 50_000,
        "[a](" * 12_500,
        "<script " * 6_250,
        "<style</scrip" * 3_850,
        "<" * 50_000,
        "](" * 25_000,
        "http://" * 7_000,
        "<script>" + "[" * 49_990,
    ],
)
def test_strip_markup_is_linear_time(adversarial):
    started = time.perf_counter()
    clean(adversarial)
    tokenize(adversarial)
    assert time.perf_counter() - started < 0.5, "50,000 characters of markup took too long (quadratic pattern?)"


def test_clean_reads_at_most_max_chars():
    assert len(clean("a" * (MAX_CHARS + 1000))) == MAX_CHARS
