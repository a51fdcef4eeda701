"""Text preprocessing: markup, Unicode, case, punctuation, stop words, CJK, item fields."""

from __future__ import annotations

import pandas as pd

from recforge.text import clean, item_texts, item_titles, normalize, strip_markup, tokenize


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
