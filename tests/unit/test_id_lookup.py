"""Ids from requests are looked up by their one ASCII decimal spelling (issue 11: "١" resolved to user 1)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recforge.interactions import IdMaps, parse_int_id


@pytest.fixture
def maps() -> IdMaps:
    return IdMaps(
        user_ids=pd.Index(np.array([1, 2, 10, -5], dtype=np.int64), name="user_id"),
        item_ids=pd.Index(np.array(["a", "1", "007"], dtype=object), name="item_id"),
    )


@pytest.mark.parametrize(
    "raw, user", [("1", 0), (1, 0), (np.int64(2), 1), ("10", 2), ("-5", 3), (-5, 3), (np.float64(10.0), 2)]
)
def test_integer_ids_as_strings_or_integers(maps, raw, user):
    assert maps.lookup_user(raw) == user


@pytest.mark.parametrize(
    "raw",
    [
        "\u0661",  # ARABIC-INDIC DIGIT ONE
        "\uff11",  # FULLWIDTH DIGIT ONE
        "\U0001d7cf",  # MATHEMATICAL BOLD DIGIT ONE
        "\u00b9",  # SUPERSCRIPT ONE (isdigit() is True)
        " 1",
        "1 ",
        "+1",
        "01",
        "1_0",
        "-0",
        "1.0",
        True,
        1.5,
        float("nan"),
        None,
        [1],
        10**30,
        "9" * 5000,  # int() would refuse over 4,300 digits with a ValueError
    ],
)
def test_other_spellings_match_nothing(maps, raw):
    assert maps.lookup_user(raw) == -1


def test_string_ids_match_exactly_then_by_integer(maps):
    assert maps.lookup_item("007") == 2  # an existing string id is found as it is
    assert maps.lookup_item("7") == -1
    assert maps.lookup_item(1) == 1  # an integer finds its decimal string
    assert maps.lookup_item("\u0661") == -1


def test_parse_int_id_is_ascii_only_and_int64():
    assert parse_int_id("123") == 123 and parse_int_id("-9223372036854775808") == -(2**63)
    assert parse_int_id("9223372036854775808") is None
    assert parse_int_id("\u0661\u0662") is None and int("\u0661\u0662") == 12  # what int() alone would do
