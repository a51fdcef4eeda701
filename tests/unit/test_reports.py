"""recforge.reports.markdown_table."""

from __future__ import annotations

import numpy as np
import pandas as pd

from recforge.reports import markdown_table


def test_frame_floats_ints_and_header():
    frame = pd.DataFrame({"model": ["a", "b"], "ndcg": [0.12345, np.nan], "n": [20, 3]})
    assert markdown_table(frame) == ("| model | ndcg | n |\n|---|---|---|\n| a | 0.1235 | 20 |\n| b | nan | 3 |\n")


def test_pipes_and_line_breaks_are_escaped():
    text = markdown_table([{"a|b": "x | y", "c": "two\nlines"}])
    assert text.splitlines()[0] == "| a\\|b | c |"
    assert text.splitlines()[2] == "| x \\| y | two lines |"
    assert len(text.splitlines()) == 3


def test_dict_rows_none_and_raw_floats():
    text = markdown_table([{"k": 1, "v": None}, {"k": 2, "v": 0.05}], floatfmt=None)
    assert text.splitlines()[2:] == ["| 1 |  |", "| 2 | 0.05 |"]
    assert markdown_table([]) == "(no rows)\n"
